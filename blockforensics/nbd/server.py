"""A read-only NBD server: a Disk (a chain point, any image a reader opens) served to
QEMU, ``qemu-img`` or ``nbdinfo`` without export or restore.

Fixed newstyle negotiation with ``NBD_OPT_GO``, ``NBD_OPT_INFO``,
``NBD_OPT_EXPORT_NAME``, ``NBD_OPT_LIST`` and ``NBD_OPT_ABORT`` (other options
are answered ``NBD_REP_ERR_UNSUP``, so clients fall back to simple replies);
in transmission ``NBD_CMD_READ`` and ``NBD_CMD_DISC``; every command that would
change the disk is refused with ``EPERM`` (the export says ``READ_ONLY``); a read
that fails its check (a damaged block) is answered ``EIO`` and named on stderr.  The
disk is served as the bytes of a :class:`~blockforensics.formats.layout.FileLayout`
(raw by default: the disk's bytes, its size rounded up to a whole sector), one
thread per connection, reads serialised by a lock (a Disk need not be
thread-safe).  Wire layouts come from :mod:`blockforensics.nbd.protocol`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blockforensics.errors import BlockforensicsError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout
from blockforensics.nbd import protocol as p

#: the export's transmission flags: read-only, and safe for several connections at once
TRANSMISSION_FLAGS = p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_READ_ONLY | p.NBD_FLAG_CAN_MULTI_CONN
#: block sizes advertised in NBD_INFO_BLOCK_SIZE: any byte range, 4 KiB preferred
MIN_BLOCK, PREFERRED_BLOCK = 1, 4096
#: the default export's name (clients that give no name get it too)
DEFAULT_EXPORT = ""
#: commands that would write: refused with EPERM
WRITES = {p.NBD_CMD_WRITE, p.NBD_CMD_TRIM, p.NBD_CMD_WRITE_ZEROES}


class Closed(Exception):
    """The client went away (or must be dropped)."""


class _Connection(socketserver.BaseRequestHandler):
    """One client: negotiation, then requests until NBD_CMD_DISC or the socket closes."""

    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            no_zeroes = self._negotiate(sock)
            if no_zeroes is not None:
                self._transmit(sock)
        except (Closed, ConnectionError, OSError):
            pass

    # ------------------------------------------------------------ negotiation
    def _negotiate(self, sock: socket.socket) -> bool | None:
        """Options until the client starts transmission (returns whether it asked for no
        zero padding) or leaves (None)."""
        sock.sendall(p.HANDSHAKE.pack(p.NBDMAGIC, p.IHAVEOPT,
                                      p.NBD_FLAG_FIXED_NEWSTYLE | p.NBD_FLAG_NO_ZEROES))
        (client_flags,) = p.CLIENT_FLAGS.unpack(_recv(sock, p.CLIENT_FLAGS.size))
        no_zeroes = bool(client_flags & p.NBD_FLAG_C_NO_ZEROES)
        layout = self.server.layout
        while True:
            magic, option, length = p.OPTION_HEADER.unpack(_recv(sock, p.OPTION_HEADER.size))
            if magic != p.IHAVEOPT or length > p.NBD_MAX_BUFFER_SIZE:
                raise Closed
            data = _recv(sock, length)
            if option == p.NBD_OPT_EXPORT_NAME:
                if data.decode(errors="replace") not in self.server.names:
                    raise Closed  # the protocol's only answer to an unknown name
                sock.sendall(p.EXPORT_NAME_REPLY.pack(layout.file_size, TRANSMISSION_FLAGS)
                             + (b"" if no_zeroes else bytes(p.EXPORT_NAME_ZEROES)))
                return no_zeroes
            if option in (p.NBD_OPT_GO, p.NBD_OPT_INFO):
                try:
                    name, _ = p.unpack_string(data)
                except (ValueError, UnicodeDecodeError, IndexError):
                    sock.sendall(p.pack_option_reply(option, p.NBD_REP_ERR_INVALID))
                    continue
                if name not in self.server.names:
                    sock.sendall(p.pack_option_reply(option, p.NBD_REP_ERR_UNKNOWN))
                    continue
                infos = [
                    p.INFO_EXPORT.pack(p.NBD_INFO_EXPORT, layout.file_size, TRANSMISSION_FLAGS),
                    p.INFO_BLOCK_SIZE.pack(p.NBD_INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK,
                                           p.NBD_MAX_BUFFER_SIZE),
                ]
                sock.sendall(b"".join(p.pack_option_reply(option, p.NBD_REP_INFO, info)
                                      for info in infos)
                             + p.pack_option_reply(option, p.NBD_REP_ACK))
                if option == p.NBD_OPT_GO:
                    return no_zeroes
            elif option == p.NBD_OPT_LIST:
                sock.sendall(b"".join(p.pack_option_reply(option, p.NBD_REP_SERVER,
                                                          p.pack_string(name))
                                      for name in self.server.names if name)
                             + p.pack_option_reply(option, p.NBD_REP_ACK))
            elif option == p.NBD_OPT_ABORT:
                with contextlib.suppress(OSError):
                    sock.sendall(p.pack_option_reply(option, p.NBD_REP_ACK))
                return None
            else:
                sock.sendall(p.pack_option_reply(option, p.NBD_REP_ERR_UNSUP))

    # ----------------------------------------------------------- transmission
    def _transmit(self, sock: socket.socket) -> None:
        layout, lock = self.server.layout, self.server.lock
        buffer = bytearray()
        while True:
            magic, _flags, kind, cookie, offset, length = p.REQUEST.unpack(
                _recv(sock, p.REQUEST.size))
            if magic != p.NBD_REQUEST_MAGIC:
                raise Closed
            if kind == p.NBD_CMD_DISC:
                return
            if kind == p.NBD_CMD_WRITE:
                _recv(sock, length)  # the payload, discarded
            error = 0
            if kind in WRITES:
                error = p.NBD_EPERM
            elif kind == p.NBD_CMD_READ:
                if length > p.NBD_MAX_BUFFER_SIZE:
                    error = p.NBD_EOVERFLOW
                elif offset + length > layout.file_size:
                    error = p.NBD_EINVAL
            elif kind not in (p.NBD_CMD_FLUSH, p.NBD_CMD_CACHE):
                error = p.NBD_EINVAL
            header = p.SIMPLE_REPLY.pack(p.NBD_SIMPLE_REPLY_MAGIC, error, cookie)
            if kind != p.NBD_CMD_READ or error:
                sock.sendall(header)
                continue
            if len(buffer) < length:
                buffer = bytearray(length)
            view = memoryview(buffer)[:length]
            try:
                with lock:
                    layout.readinto(offset, view)
            except BlockforensicsError as exc:  # a damaged block: the client gets EIO
                print(f"blockforensics: error: {exc}", file=sys.stderr, flush=True)
                self.server.failed = self.server.failed or str(exc)
                sock.sendall(p.SIMPLE_REPLY.pack(p.NBD_SIMPLE_REPLY_MAGIC, p.NBD_EIO, cookie))
                continue
            _send_both(sock, header, view)


def _send_both(sock: socket.socket, header: bytes, data: memoryview) -> None:
    """``header`` then ``data`` in one system call where the socket takes it all."""
    sent = sock.sendmsg([header, data])
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent - len(header) < len(data):
        sock.sendall(data[sent - len(header):])


def _recv(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or Closed."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise Closed
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    layout: FileLayout
    lock: threading.Lock
    names: frozenset[str]
    failed: str  # the first read that failed its check ("" if none)


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class _TcpServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True


class NbdServer:
    """Serves ``disk`` read-only over NBD on a Unix socket (``socket_path``) or TCP
    (``port`` on ``bind``, 127.0.0.1 unless told otherwise).  Listening starts in the
    constructor, so clients can connect as soon as it returns; :meth:`serve_forever`
    answers them (or :meth:`start` in a thread); :meth:`close` stops and removes the
    socket file.  ``export`` is the export's name; the default export ('') is the
    same disk."""

    def __init__(self, disk: Disk, *, socket_path: str | os.PathLike[str] | None = None,
                 port: int | None = None, bind: str = "127.0.0.1", export: str = "disk",
                 layout: FileLayout | None = None):
        from blockforensics.export import RawLayout

        if (socket_path is None) == (port is None):
            raise UsageError("serve: give exactly one of a socket path or a port")
        self.disk = disk
        self.layout = layout or RawLayout(disk)
        self.socket_path = Path(socket_path) if socket_path is not None else None
        server: _Server
        try:
            if self.socket_path is not None:
                if self.socket_path.exists():
                    raise UsageError(f"{self.socket_path}: already exists")
                server = _UnixServer(str(self.socket_path), _Connection)
            else:
                server = _TcpServer((bind, int(port or 0)), _Connection)
        except OSError as exc:
            where = self.socket_path or f"{bind}:{port}"
            raise UsageError(f"{where}: cannot listen ({exc.strerror or exc})") from exc
        server.layout, server.lock, server.failed = self.layout, threading.Lock(), ""
        server.names = frozenset({DEFAULT_EXPORT, export})
        self._server = server
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The NBD URI QEMU opens (``nbd+unix:///?socket=…`` or ``nbd://host:port``)."""
        if self.socket_path is not None:
            return f"nbd+unix:///?socket={self.socket_path}"
        address = self._server.server_address
        assert isinstance(address, tuple)
        return f"nbd://{address[0]!s}:{address[1]}"

    @property
    def failed(self) -> str:
        """Why the first read that failed its check failed ("" if none did); the client
        was answered EIO."""
        return self._server.failed

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> NbdServer:
        """Serve in a daemon thread (for boot, tests and notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="nbd-server",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def served(disk: Disk) -> Iterator[NbdServer]:
    """``disk`` served over NBD on a private Unix socket, in a thread, for a ``with``
    block (what ``boot CHAIN --point P`` and ``verify --fs`` use)."""
    with tempfile.TemporaryDirectory(prefix="bf-nbd-") as work, \
            NbdServer(disk, socket_path=Path(work, "nbd.sock")).start() as server:
        yield server


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT to end :func:`serve_until_signal`."""


def serve_until_signal(server: NbdServer) -> None:
    """Answer clients until SIGTERM or SIGINT, then close the server (main thread only)."""

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()

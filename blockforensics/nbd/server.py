"""A read-only NBD server: a Disk (a chain point, any image a reader opens) served to
QEMU, ``qemu-img`` or ``nbdinfo`` without export or restore.

Fixed newstyle negotiation with ``NBD_OPT_GO``, ``NBD_OPT_INFO``,
``NBD_OPT_EXPORT_NAME``, ``NBD_OPT_LIST``, ``NBD_OPT_STRUCTURED_REPLY`` and
``NBD_OPT_ABORT`` (other options are answered ``NBD_REP_ERR_UNSUP``); in transmission
``NBD_CMD_READ`` and ``NBD_CMD_DISC``; every command that would change the disk is
refused with ``EPERM`` (the export says ``READ_ONLY``); a read that fails its check (a
damaged block) is answered ``EIO`` and named on stderr.  The disk is served as the
bytes of a :class:`~blockforensics.formats.layout.FileLayout` (raw by default: the
disk's bytes, its size rounded up to a whole sector), one thread per connection.

Reads: a request is cut into pieces of :data:`PIECE` bytes that the server's worker
threads (one per core) read and check into buffers of their own while the connection's
thread sends the pieces already checked, in order; a sequential reader's next pieces are
read ahead.  With structured replies, runs that read as zeros whatever the disk holds
(absent and zero blocks: :meth:`FileLayout.zero_runs`) go out as holes, and a piece
that fails its check ends the reply with an error chunk (the pieces before it were
sent, checked); with simple replies the whole request is checked before its header
goes out.  A Disk that is not :attr:`~blockforensics.disk.Disk.thread_safe` is read in
turns.  Wire layouts come from :mod:`blockforensics.nbd.protocol`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blockforensics import batch
from blockforensics.errors import BlockforensicsError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout
from blockforensics.nbd import protocol as p

#: the export's transmission flags: read-only, safe for several connections at once, and
#: "don't fragment" honoured (one data chunk per read when a client asks)
TRANSMISSION_FLAGS = (p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_READ_ONLY | p.NBD_FLAG_CAN_MULTI_CONN
                      | p.NBD_FLAG_SEND_DF)
#: block sizes advertised in NBD_INFO_BLOCK_SIZE: any byte range, 4 KiB preferred
MIN_BLOCK, PREFERRED_BLOCK = 1, 4096
#: the default export's name (clients that give no name get it too)
DEFAULT_EXPORT = ""
#: commands that would write: refused with EPERM
WRITES = {p.NBD_CMD_WRITE, p.NBD_CMD_TRIM, p.NBD_CMD_WRITE_ZEROES}
#: bytes read and checked per piece of a request (by one worker thread; its check is split
#: over the cores in turn).  Smaller pieces cost more than they overlap: per MiB, 1 MiB
#: pieces took a third more CPU than 4 MiB ones (GIL hand-offs between the threads)
PIECE = 4 << 20
#: bytes read ahead of a sequential reader: twice its last request, at most this
READ_AHEAD = 8 << 20
#: bytes asked of the socket per recv
RECV_CHUNK = 1 << 20
#: buffers per sendmsg (Linux's IOV_MAX)
IOV_MAX = 1024
#: connections served at once by default: each may hold a request's pieces and its
#: read-ahead (up to NBD_MAX_BUFFER_SIZE + READ_AHEAD bytes, 40 MiB) while its client does
#: not read the replies; one more is closed before the handshake, with a line on stderr
MAX_CLIENTS = 16
#: seconds a client has from connecting to starting transmission (qemu-nbd's
#: ``--handshake-limit`` defaults to 10 s too): one that says nothing must not hold a slot
HANDSHAKE_LIMIT = 10.0
#: a structured chunk's header followed by an OFFSET_DATA or OFFSET_HOLE payload
DATA_CHUNK = struct.Struct(p.STRUCTURED_REPLY.format + p.OFFSET_DATA.format[1:])
HOLE_CHUNK = struct.Struct(p.STRUCTURED_REPLY.format + p.OFFSET_HOLE.format[1:])


class Closed(Exception):
    """The client went away (or must be dropped)."""


class _Connection(socketserver.BaseRequestHandler):
    """One client: negotiation, then requests until NBD_CMD_DISC or the socket closes."""

    server: _Server
    structured = False  # the client negotiated structured replies

    def handle(self) -> None:
        sock: socket.socket = self.request
        reads = _Reads(self.server)
        # past the limit the socket is shut: the negotiation's next recv ends it
        limit = threading.Timer(self.server.handshake_limit, _shut, (sock,))
        limit.start()
        try:
            no_zeroes = self._negotiate(sock)
            limit.cancel()
            if no_zeroes is not None:
                self._transmit(sock, reads)
        except (Closed, ConnectionError, OSError, CancelledError):  # or the server closed
            pass
        finally:
            limit.cancel()
            reads.drop()

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
            elif option == p.NBD_OPT_STRUCTURED_REPLY:
                self.structured = not data
                sock.sendall(p.pack_option_reply(option, p.NBD_REP_ACK if self.structured
                                                 else p.NBD_REP_ERR_INVALID))
            elif option == p.NBD_OPT_ABORT:
                with contextlib.suppress(OSError):
                    sock.sendall(p.pack_option_reply(option, p.NBD_REP_ACK))
                return None
            else:
                sock.sendall(p.pack_option_reply(option, p.NBD_REP_ERR_UNSUP))

    # ----------------------------------------------------------- transmission
    def _transmit(self, sock: socket.socket, reads: _Reads) -> None:
        file_size = self.server.layout.file_size
        while True:
            magic, flags, kind, cookie, offset, length = p.REQUEST.unpack(
                _recv(sock, p.REQUEST.size))
            if magic != p.NBD_REQUEST_MAGIC:
                raise Closed
            if kind == p.NBD_CMD_DISC:
                return
            if kind == p.NBD_CMD_WRITE:
                _discard(sock, length)  # the payload (up to 4 GiB), never held whole
            error = 0
            if kind in WRITES:
                error = p.NBD_EPERM
            elif kind == p.NBD_CMD_READ:
                if length > p.NBD_MAX_BUFFER_SIZE:
                    error = p.NBD_EOVERFLOW
                elif offset + length > file_size:
                    error = p.NBD_EINVAL
            elif kind not in (p.NBD_CMD_FLUSH, p.NBD_CMD_CACHE):
                error = p.NBD_EINVAL
            if kind != p.NBD_CMD_READ:
                sock.sendall(p.SIMPLE_REPLY.pack(p.NBD_SIMPLE_REPLY_MAGIC, error, cookie))
            elif error:
                self._error(sock, cookie, error, "")
            elif self.structured and not flags & p.NBD_CMD_FLAG_DF:
                self._send_structured(sock, reads, cookie, offset, length)
            else:
                self._send_whole(sock, reads, cookie, offset, length)

    def _send_structured(self, sock: socket.socket, reads: _Reads, cookie: int,
                         offset: int, length: int) -> None:
        """Each piece as soon as it is checked: its data runs as OFFSET_DATA chunks, its
        zero runs as OFFSET_HOLE chunks; a piece that fails its check ends the reply
        with an error chunk at its offset."""
        end = offset + length
        if not length:
            _send(sock, [p.STRUCTURED_REPLY.pack(p.NBD_STRUCTURED_REPLY_MAGIC,
                                                 p.NBD_REPLY_FLAG_DONE, p.NBD_REPLY_TYPE_NONE,
                                                 cookie, 0)])
            return
        for piece, a, b in reads.take(offset, length):
            try:
                zero_starts, zero_lengths = piece.done.result()
            except BlockforensicsError as exc:
                reads.drop()
                self._error(sock, cookie, p.NBD_EIO, self._failed(exc), a)
                return
            _send(sock, _chunks(cookie, piece, a, b, zero_starts, zero_lengths, b == end))
            reads.sent(piece, b)

    def _send_whole(self, sock: socket.socket, reads: _Reads, cookie: int, offset: int,
                    length: int) -> None:
        """The request's bytes after all of them passed their check: a simple reply, or
        one OFFSET_DATA chunk (structured, "don't fragment")."""
        parts = list(reads.take(offset, length))
        try:
            for piece, _, _ in parts:
                piece.done.result()
        except BlockforensicsError as exc:
            reads.drop()
            self._error(sock, cookie, p.NBD_EIO, self._failed(exc))
            return
        if self.structured:
            header = DATA_CHUNK.pack(p.NBD_STRUCTURED_REPLY_MAGIC, p.NBD_REPLY_FLAG_DONE,
                                     p.NBD_REPLY_TYPE_OFFSET_DATA, cookie,
                                     p.OFFSET_DATA.size + length, offset)
        else:
            header = p.SIMPLE_REPLY.pack(p.NBD_SIMPLE_REPLY_MAGIC, 0, cookie)
        _send(sock, [header, *(piece.view[a - piece.start : b - piece.start]
                               for piece, a, b in parts)])
        for piece, _, b in parts:
            reads.sent(piece, b)

    def _error(self, sock: socket.socket, cookie: int, error: int, message: str,
               offset: int | None = None) -> None:
        """A read's error: a simple reply, or an error chunk (at ``offset`` if given) that
        ends the structured reply."""
        if not self.structured:
            sock.sendall(p.SIMPLE_REPLY.pack(p.NBD_SIMPLE_REPLY_MAGIC, error, cookie))
            return
        text = message.encode()[:4096]
        kind = p.NBD_REPLY_TYPE_ERROR if offset is None else p.NBD_REPLY_TYPE_ERROR_OFFSET
        tail = b"" if offset is None else p.ERROR_OFFSET.pack(offset)
        payload = p.ERROR_CHUNK.pack(error, len(text)) + text + tail
        sock.sendall(p.STRUCTURED_REPLY.pack(p.NBD_STRUCTURED_REPLY_MAGIC,
                                             p.NBD_REPLY_FLAG_DONE, kind, cookie,
                                             len(payload)) + payload)

    def _failed(self, exc: BlockforensicsError) -> str:
        """Name a damaged block on stderr (the first one is what :attr:`NbdServer.failed`
        says); returns the message."""
        print(f"blockforensics: error: {exc}", file=sys.stderr, flush=True)
        self.server.failed = self.server.failed or str(exc)
        return str(exc)


def _chunks(cookie: int, piece: _Piece, a: int, b: int, zero_starts: np.ndarray,
            zero_lengths: np.ndarray, last: bool) -> list[bytes | memoryview]:
    """The structured chunks of bytes ``a .. b`` of ``piece`` (file offsets): data runs
    straight from its buffer, zero runs as holes; the last chunk says DONE if ``last``."""
    ends = np.minimum(zero_starts + zero_lengths, b)
    starts = np.maximum(zero_starts, a)
    keep = ends > starts
    out: list[bytes | memoryview] = []
    pos = a
    holes = list(zip(starts[keep].tolist(), ends[keep].tolist()))
    for i, (hole, hole_end) in enumerate([*holes, (b, b)]):
        if hole > pos:
            done = p.NBD_REPLY_FLAG_DONE if last and i == len(holes) else 0
            out += [DATA_CHUNK.pack(p.NBD_STRUCTURED_REPLY_MAGIC, done,
                                    p.NBD_REPLY_TYPE_OFFSET_DATA, cookie,
                                    p.OFFSET_DATA.size + hole - pos, pos),
                    piece.view[pos - piece.start : hole - piece.start]]
        if hole_end > hole:
            done = p.NBD_REPLY_FLAG_DONE if last and hole_end == b else 0
            out.append(HOLE_CHUNK.pack(p.NBD_STRUCTURED_REPLY_MAGIC, done,
                                       p.NBD_REPLY_TYPE_OFFSET_HOLE, cookie,
                                       p.OFFSET_HOLE.size, hole, hole_end - hole))
        pos = hole_end
    return out


@dataclass
class _Piece:
    """File bytes ``start .. end`` read (and checked) into ``view`` by a worker; ``done``
    gives their zero runs (:meth:`FileLayout.zero_runs`) or raises what the read did."""

    start: int
    end: int
    buffer: bytearray
    view: memoryview
    done: Future[tuple[np.ndarray, np.ndarray]]


class _Reads:
    """One connection's reads: pieces in file order, each read and checked by the
    server's workers into a buffer of its own; those a request has not taken yet were
    read ahead.  Buffers go back to a free list once sent."""

    def __init__(self, server: _Server):
        self.server = server
        self.queue: deque[_Piece] = deque()  # contiguous, from the next byte to send
        self.free: list[bytearray] = []
        self.next = 0  # where a sequential reader's next request starts

    def take(self, offset: int, length: int) -> Iterator[tuple[_Piece, int, int]]:
        """``(piece, a, b)``: the pieces holding bytes ``offset .. offset+length`` and
        the part ``a .. b`` (file offsets) of each that the request covers, in order;
        the caller hands each back with :meth:`sent`.  Pieces read ahead are used when
        the request starts where they do, dropped otherwise; a request that starts where
        the last one ended has the next ``2 * length`` (at most READ_AHEAD) read ahead.
        Pieces are read at most READ_AHEAD bytes past the one yielded: a client that
        does not read its replies holds that much of the server (and its socket's
        buffers) until it does, not all it asked for."""
        end = offset + length
        if self.queue and self.queue[0].start != offset:
            self.drop()
        ahead = min(end + min(2 * length, READ_AHEAD), self.server.layout.file_size) \
            if offset == self.next else end
        self.next = end
        at = offset
        while at < end:
            self._fill(at, min(end, at + READ_AHEAD))  # a piece ends where the request does
            self._fill(at, min(ahead, at + READ_AHEAD))
            piece = next(piece for piece in self.queue if piece.start <= at < piece.end)
            yield piece, at, min(piece.end, end)
            at = min(piece.end, end)

    def sent(self, piece: _Piece, upto: int) -> None:
        """The bytes of ``piece`` before ``upto`` were sent: its buffer is free when all
        were, else the rest waits for the next request."""
        if upto >= piece.end:
            self.queue.popleft()
            self.free.append(piece.buffer)
        else:
            piece.view, piece.start = piece.view[upto - piece.start :], upto

    def drop(self) -> None:
        """Forget every piece (waiting for those a worker is reading: their buffers)."""
        while self.queue:
            piece = self.queue.popleft()
            if not piece.done.cancel():
                with contextlib.suppress(Exception):
                    piece.done.result()
            self.free.append(piece.buffer)

    def _fill(self, offset: int, end: int) -> None:
        """Queue pieces from the queue's end (or ``offset``, when it is empty) up to byte
        ``end``, cut at multiples of PIECE."""
        at = self.queue[-1].end if self.queue else offset
        while at < end:
            stop = min(end, (at // PIECE + 1) * PIECE)
            buffer = self.free.pop() if self.free else bytearray(PIECE)
            view = memoryview(buffer)[: stop - at]
            self.queue.append(_Piece(at, stop, buffer, view,
                                     self.server.workers().submit(self._read, at, view)))
            at = stop

    def _read(self, start: int, view: memoryview) -> tuple[np.ndarray, np.ndarray]:
        layout = self.server.layout
        with self.server.lock:
            layout.readinto(start, view)
        return layout.zero_runs(start, len(view))


def _shut(sock: socket.socket) -> None:
    """End a connection from another thread: its blocked recv returns nothing."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _send(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """All of ``parts``, in order, with as few system calls as the socket allows
    (sendmsg of up to IOV_MAX buffers; nothing is joined or copied)."""
    views = [memoryview(part) for part in parts if len(part)]
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i : i + IOV_MAX])
        while i < len(views) and sent >= len(views[i]):
            sent -= len(views[i])
            i += 1
        if sent:
            views[i] = views[i][sent:]


def _recv(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or Closed."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, RECV_CHUNK))
        if not chunk:
            raise Closed
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _discard(sock: socket.socket, n: int) -> None:
    """Read and drop ``n`` bytes, a MiB at a time; Closed if the client leaves first."""
    buffer = bytearray(min(n, RECV_CHUNK))
    while n:
        got = sock.recv_into(buffer, min(n, len(buffer)))
        if not got:
            raise Closed
        n -= got


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    #: connections waiting to be accepted: a burst of clients must not make the next
    #: one's connect fail (a Unix socket refuses it at once when the queue is full)
    request_queue_size = socket.SOMAXCONN
    layout: FileLayout
    lock: contextlib.AbstractContextManager[Any]  # held while reading (a no-op if thread-safe)
    names: frozenset[str]
    failed: str  # the first read that failed its check ("" if none)
    max_clients: int  # connections served at once; one more is closed at once
    handshake_limit = HANDSHAKE_LIMIT  # seconds from connecting to transmission
    clients = 0  # connections being served
    _workers: ThreadPoolExecutor | None = None
    _count_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own, unless ``max_clients`` are served
        already: then close it before the handshake (a line on stderr says so)."""
        with self._count_lock:
            full = self.clients >= self.max_clients
            self.clients += not full
        if full:
            print(f"blockforensics: refused a client: {self.max_clients} connections are "
                  "served already (--max-clients)", file=sys.stderr, flush=True)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the slot is free again
            self._left()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._left()

    def _left(self) -> None:
        with self._count_lock:
            self.clients -= 1

    def workers(self) -> ThreadPoolExecutor:
        """The threads that read and check pieces, one per core (started on first use)."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(batch.threads(), thread_name_prefix="nbd-read")
        return self._workers


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
    same disk.  At most ``max_clients`` connections are served at once; one that has
    not begun transmission ``handshake_limit`` seconds after connecting is closed."""

    def __init__(self, disk: Disk, *, socket_path: str | os.PathLike[str] | None = None,
                 port: int | None = None, bind: str = "127.0.0.1", export: str = "disk",
                 layout: FileLayout | None = None, max_clients: int = MAX_CLIENTS,
                 handshake_limit: float = HANDSHAKE_LIMIT):
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
        server.layout, server.failed, server.max_clients = self.layout, "", max_clients
        server.handshake_limit = handshake_limit
        server._count_lock = threading.Lock()
        server.lock = contextlib.nullcontext() if disk.thread_safe else threading.Lock()
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
        if self._server._workers is not None:
            self._server._workers.shutdown(cancel_futures=True)
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


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT to end :func:`serve_until_signal`; not
    an Exception, as KeyboardInterrupt is not: socketserver catches every Exception while
    it takes a connection in, and would print this one and serve on."""


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

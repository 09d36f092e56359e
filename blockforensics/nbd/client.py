"""An NBD client: fixed newstyle negotiation, structured replies, reads and block status.

``NbdConnection.open(address, contexts=[...])`` negotiates structured replies,
asks for the given metadata contexts (``base:allocation``,
``qemu:dirty-bitmap:NAME``) and enters transmission with ``NBD_OPT_GO``.  Reads
land straight in the caller's buffer; block-status replies are parsed into numpy
arrays and turned into :class:`BlockMap` s (a block is set when any byte of it lies
in an extent whose status has the asked bit).  Requests run one at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError, UsageError
from blockforensics.nbd import SCHEMES
from blockforensics.nbd import protocol as p

DEFAULT_PORT = 10809
#: bytes asked per NBD_CMD_READ (servers must accept 32 MiB; QEMU's maximum too)
MAX_READ = 32 << 20
#: bytes asked per NBD_CMD_BLOCK_STATUS (the reply may cover less)
MAX_STATUS = 1 << 30


class NbdError(FormatError):
    """The server refused an option or a command, or broke the protocol."""


@dataclass(frozen=True)
class NbdAddress:
    """Where an export lives: a Unix socket path or a TCP host and port, and its name."""

    export: str = ""
    socket_path: str | None = None
    host: str = "localhost"
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, uri: str) -> NbdAddress:
        """``nbd+unix:///EXPORT?socket=PATH`` or ``nbd://HOST[:PORT]/EXPORT``."""
        try:
            parts = urlsplit(uri)
            port = parts.port  # ValueError for a port out of range or not a number
        except ValueError as exc:
            raise UsageError(f"{uri}: not a valid NBD URI ({exc})") from None
        export = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
        if parts.scheme == "nbd+unix":
            sockets = parse_qs(parts.query).get("socket")
            if not sockets:
                raise UsageError(f"{uri}: an nbd+unix URI needs ?socket=PATH")
            return cls(export=export, socket_path=sockets[0])
        if parts.scheme == "nbd":
            if not parts.hostname:
                raise UsageError(f"{uri}: an nbd URI needs a host")
            return cls(export=export, host=parts.hostname, port=port or DEFAULT_PORT)
        raise UsageError(f"{uri}: not an NBD URI (schemes: {', '.join(SCHEMES)})")

    def uri(self) -> str:
        if self.socket_path is not None:
            return f"nbd+unix:///{self.export}?socket={self.socket_path}"
        return f"nbd://{self.host}:{self.port}/{self.export}"

    def connect(self, timeout: float) -> socket.socket:
        try:
            if self.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(self.socket_path)
                return sock
            return socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise UsageError(f"{self.uri()}: cannot connect ({exc.strerror or exc})") from exc


class NbdConnection:
    """One negotiated connection to one export."""

    def __init__(self, sock: socket.socket, address: NbdAddress):
        self._sock = sock
        self.address = address
        self.size = 0
        self.flags = 0
        self.block_sizes = (1, 4096, MAX_READ)
        self.contexts: dict[str, int] = {}
        self.structured = False
        self._cookies = itertools.count(1)

    # ---------------------------------------------------------------- negotiation
    @classmethod
    def open(cls, address: NbdAddress | str, *, contexts: tuple[str, ...] = (),
             required: bool = True, timeout: float = 60.0) -> NbdConnection:
        """Connect and negotiate; every context in ``contexts`` must be granted unless
        ``required`` is false (then :attr:`contexts` says which were)."""
        if isinstance(address, str):
            address = NbdAddress.parse(address)
        conn = cls(address.connect(timeout), address)
        try:
            conn._negotiate(contexts, required)
        except BaseException:
            conn._sock.close()
            raise
        return conn

    def _negotiate(self, contexts: tuple[str, ...], required: bool) -> None:
        magic, opt_magic, flags = p.HANDSHAKE.unpack(self._recv(p.HANDSHAKE.size))
        if magic != p.NBDMAGIC or opt_magic != p.IHAVEOPT:
            raise NbdError(f"{self.address.uri()}: not a newstyle NBD server")
        if not flags & p.NBD_FLAG_FIXED_NEWSTYLE:
            raise NbdError(f"{self.address.uri()}: server lacks fixed newstyle negotiation")
        client = p.NBD_FLAG_C_FIXED_NEWSTYLE | (flags & p.NBD_FLAG_NO_ZEROES)
        self._sock.sendall(p.CLIENT_FLAGS.pack(client))
        reply, _ = self._option(p.NBD_OPT_STRUCTURED_REPLY)[-1]
        self.structured = reply == p.NBD_REP_ACK
        if contexts and self.structured:
            data = p.pack_meta_queries(self.address.export, list(contexts))
            for reply, payload in self._option(p.NBD_OPT_SET_META_CONTEXT, data,
                                               check=required):
                if reply == p.NBD_REP_META_CONTEXT:
                    (cid,) = p.META_CONTEXT_ID.unpack_from(payload)
                    self.contexts[bytes(payload[p.META_CONTEXT_ID.size:]).decode()] = cid
        if required and contexts:
            missing = [c for c in contexts if c not in self.contexts]
            if missing:
                raise NbdError(f"{self.address.uri()}: the server has no context "
                               f"{', '.join(missing)}")
        go = p.pack_go(self.address.export, [p.NBD_INFO_BLOCK_SIZE])
        for reply, payload in self._option(p.NBD_OPT_GO, go, check=True):
            if reply != p.NBD_REP_INFO:
                continue
            (info,) = p.INFO_TYPE.unpack_from(payload)
            if info == p.NBD_INFO_EXPORT:
                _, self.size, self.flags = p.INFO_EXPORT.unpack_from(payload)
            elif info == p.NBD_INFO_BLOCK_SIZE:
                self.block_sizes = p.INFO_BLOCK_SIZE.unpack_from(payload)[1:]

    def _option(self, option: int, data: bytes = b"", *,
                check: bool = False) -> list[tuple[int, memoryview]]:
        """Send an option; its replies up to the final one (ACK or an error)."""
        self._sock.sendall(p.pack_option(option, data))
        replies = []
        while True:
            magic, got, reply, length = p.OPTION_REPLY_HEADER.unpack(
                self._recv(p.OPTION_REPLY_HEADER.size))
            if magic != p.NBD_REP_MAGIC or got != option:
                raise NbdError(f"{self.address.uri()}: bad option reply")
            payload = memoryview(self._recv(length))
            replies.append((reply, payload))
            if reply & p.NBD_REP_FLAG_ERROR:
                if check:
                    message = bytes(payload).decode(errors="replace") or hex(reply)
                    raise NbdError(f"{self.address.uri()}: option {option} refused: {message}")
                return replies
            if reply == p.NBD_REP_ACK:
                return replies

    # ---------------------------------------------------------------- transmission
    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` (a writable byte buffer) with the export's bytes from ``offset``."""
        out = out.cast("B") if out.format != "B" else out
        for at in range(0, len(out), MAX_READ):
            self._read_once(offset + at, out[at : at + MAX_READ])

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def _read_once(self, offset: int, out: memoryview) -> None:
        cookie = self._request(p.NBD_CMD_READ, offset, len(out))
        if not self.structured:
            self._simple_reply(cookie)
            self._recv_into(out)
            return
        done = False
        while not done:
            flags, kind, length = self._chunk(cookie)
            done = bool(flags & p.NBD_REPLY_FLAG_DONE)
            if kind == p.NBD_REPLY_TYPE_OFFSET_DATA:
                (at,) = p.OFFSET_DATA.unpack(self._recv(p.OFFSET_DATA.size))
                start = at - offset
                self._recv_into(out[start : start + length - p.OFFSET_DATA.size])
            elif kind == p.NBD_REPLY_TYPE_OFFSET_HOLE:
                at, hole = p.OFFSET_HOLE.unpack(self._recv(length))
                np.frombuffer(out, dtype=np.uint8)[at - offset : at - offset + hole] = 0
            elif kind == p.NBD_REPLY_TYPE_NONE:
                self._recv(length)
            else:
                raise NbdError(f"{self.address.uri()}: unexpected reply chunk {kind} to a read")

    def block_status(self, context: str, offset: int = 0,
                     length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offsets, lengths, flags)`` of the extents of ``context`` over the range."""
        cid = self.contexts[context]
        end = self.size if length is None else offset + length
        offsets, lengths, flags = [], [], []
        at = offset
        while at < end:
            cookie = self._request(p.NBD_CMD_BLOCK_STATUS, at, min(MAX_STATUS, end - at))
            covered = 0
            done = False
            while not done:
                chunk_flags, kind, size = self._chunk(cookie)
                done = bool(chunk_flags & p.NBD_REPLY_FLAG_DONE)
                payload = self._recv(size)
                if kind != p.NBD_REPLY_TYPE_BLOCK_STATUS:
                    continue
                got, desc = p.unpack_descriptors(payload)
                if got != cid:
                    continue
                ext_lengths = desc["length"].astype(np.int64)
                offsets.append(at + np.r_[0, np.cumsum(ext_lengths)[:-1]])
                lengths.append(ext_lengths)
                flags.append(desc["flags"].astype(np.uint32))
                covered = int(ext_lengths.sum())
            if covered == 0:
                raise NbdError(f"{self.address.uri()}: empty block status at {at}")
            at += covered
        if not offsets:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.uint32)
        o, n, f = np.concatenate(offsets), np.concatenate(lengths), np.concatenate(flags)
        n = np.minimum(n, end - o)   # the last extent may reach past the range
        return o, n, f

    def status_map(self, context: str, bit: int, block_size: int, *,
                   when_set: bool = True) -> BlockMap:
        """Blocks touched by an extent whose status has ``bit`` set (or clear)."""
        offsets, lengths, flags = self.block_status(context)
        pick = (flags & bit).astype(bool) == when_set
        return BlockMap.from_byte_ranges(self.size, offsets[pick], lengths[pick], block_size)

    def dirty_map(self, bitmap: str, block_size: int) -> BlockMap:
        """The blocks QEMU's dirty bitmap ``bitmap`` marks (context qemu:dirty-bitmap:NAME)."""
        return self.status_map(p.QEMU_DIRTY_BITMAP + bitmap, p.NBD_STATE_DIRTY, block_size)

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            self._request(p.NBD_CMD_DISC, 0, 0)
        self._sock.close()

    def __enter__(self) -> NbdConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- wire helpers
    def _request(self, command: int, offset: int, length: int) -> int:
        cookie = next(self._cookies)
        self._sock.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, command, cookie, offset, length))
        return cookie

    def _simple_reply(self, cookie: int) -> None:
        magic, error, got = p.SIMPLE_REPLY.unpack(self._recv(p.SIMPLE_REPLY.size))
        if magic != p.NBD_SIMPLE_REPLY_MAGIC or got != cookie:
            raise NbdError(f"{self.address.uri()}: bad reply")
        if error:
            raise NbdError(f"{self.address.uri()}: the server answered error {error}")

    def _chunk(self, cookie: int) -> tuple[int, int, int]:
        """The next structured chunk's ``(flags, type, length)``; error chunks raise."""
        head = self._recv(4)
        (magic,) = p.STRING_LENGTH.unpack(head)
        if magic == p.NBD_SIMPLE_REPLY_MAGIC:   # allowed for errors
            rest = self._recv(p.SIMPLE_REPLY.size - 4)
            _, error, _ = p.SIMPLE_REPLY.unpack(head + rest)
            raise NbdError(f"{self.address.uri()}: the server answered error {error}")
        magic, flags, kind, got, length = p.STRUCTURED_REPLY.unpack(
            head + self._recv(p.STRUCTURED_REPLY.size - 4))
        if magic != p.NBD_STRUCTURED_REPLY_MAGIC or got != cookie:
            raise NbdError(f"{self.address.uri()}: bad structured reply")
        if kind in (p.NBD_REPLY_TYPE_ERROR, p.NBD_REPLY_TYPE_ERROR_OFFSET):
            payload = self._recv(length)
            error, size = p.ERROR_CHUNK.unpack_from(payload)
            message = payload[p.ERROR_CHUNK.size : p.ERROR_CHUNK.size + size].decode(
                errors="replace")
            raise NbdError(f"{self.address.uri()}: error {error}: {message}")
        return flags, kind, length

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise NbdError(f"{self.address.uri()}: the server closed the connection")
            got += n

"""The read-only NBD server, checked with qemu-img and with raw protocol exchanges."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import flip_stored_bit, require_tools

from blockforensics.errors import UsageError
from blockforensics.export import FLAT
from blockforensics.export import layout as export_layout
from blockforensics.formats.raw import RawDisk
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.nbd import protocol as p
from blockforensics.nbd.client import NbdConnection, NbdError
from blockforensics.nbd.server import MAX_CLIENTS, NbdServer, served
from blockforensics.volume import Volume

MiB = 1 << 20


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A raw disk whose size is not a whole sector (the export rounds it up with zeros)."""
    path = tmp_path / "src.raw"
    path.write_bytes(np.random.default_rng(0).bytes(3 * MiB + 100))
    return path


def recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "server closed the connection"
        data += chunk
    return data


def option_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    magic, option, kind, length = p.OPTION_REPLY_HEADER.unpack(
        recv(sock, p.OPTION_REPLY_HEADER.size))
    assert magic == p.NBD_REP_MAGIC
    return option, kind, recv(sock, length)


def connect(server: NbdServer | Path) -> socket.socket:
    """A raw connection to ``server`` (or the Unix socket at a path), past the greeting."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(server.socket_path if isinstance(server, NbdServer) else server))
    magic, opt, flags = p.HANDSHAKE.unpack(recv(sock, p.HANDSHAKE.size))
    assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT) and flags & p.NBD_FLAG_FIXED_NEWSTYLE
    sock.sendall(p.CLIENT_FLAGS.pack(p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES))
    return sock


def test_qemu_img_reads_the_disk_rounded_to_a_sector(source: Path):
    require_tools("qemu-img")
    padded = source.parent / "padded.raw"
    padded.write_bytes(source.read_bytes() + bytes(412))
    with served(RawDisk(source)) as server:
        done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", padded,
                               server.url], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not server.socket_path.exists()  # removed on close


def test_go_info_list_read_and_refused_writes(source: Path):
    data = source.read_bytes()
    with served(RawDisk(source)) as server:
        sock = connect(server)
        sock.sendall(p.pack_option(p.NBD_OPT_LIST))
        assert option_reply(sock)[1:] == (p.NBD_REP_SERVER, p.pack_string("disk"))
        assert option_reply(sock)[1] == p.NBD_REP_ACK
        sock.sendall(p.pack_option(p.NBD_OPT_GO, p.pack_go("nope", [])))
        assert option_reply(sock)[1] == p.NBD_REP_ERR_UNKNOWN
        sock.sendall(p.pack_option(p.NBD_OPT_GO, p.pack_go("disk", [p.NBD_INFO_BLOCK_SIZE])))
        replies = [option_reply(sock)]
        while replies[-1][1] != p.NBD_REP_ACK:
            replies.append(option_reply(sock))
        export = next(d for _, kind, d in replies if kind == p.NBD_REP_INFO
                      and p.INFO_TYPE.unpack_from(d)[0] == p.NBD_INFO_EXPORT)
        _, size, flags = p.INFO_EXPORT.unpack(export)
        assert size == -(-len(data) // 512) * 512 and flags & p.NBD_FLAG_READ_ONLY

        def request(kind: int, offset: int, length: int, payload: bytes = b"") -> int:
            sock.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, kind, 7, offset, length)
                         + payload)
            magic, error, cookie = p.SIMPLE_REPLY.unpack(recv(sock, p.SIMPLE_REPLY.size))
            assert (magic, cookie) == (p.NBD_SIMPLE_REPLY_MAGIC, 7)
            return error

        assert request(p.NBD_CMD_READ, 1000, 5000) == 0
        assert recv(sock, 5000) == data[1000:6000]
        assert request(p.NBD_CMD_READ, len(data) - 10, 422) == 0  # the sector's zero tail
        assert recv(sock, 422) == data[-10:] + bytes(412)
        assert request(p.NBD_CMD_READ, size, 1) == p.NBD_EINVAL  # past the end
        assert request(p.NBD_CMD_WRITE, 0, 4, b"junk") == p.NBD_EPERM
        assert request(p.NBD_CMD_WRITE_ZEROES, 0, 4096) == p.NBD_EPERM
        assert request(p.NBD_CMD_TRIM, 0, 4096) == p.NBD_EPERM
        assert request(p.NBD_CMD_READ, 0, 4) == 0 and recv(sock, 4) == data[:4]  # unchanged
        sock.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.NBD_CMD_DISC, 8, 0, 0))
        assert sock.recv(1) == b""
        sock.close()
    assert source.read_bytes() == data


def test_export_name_option_of_older_clients(source: Path):
    with served(RawDisk(source)) as server:
        sock = connect(server)
        sock.sendall(p.pack_option(p.NBD_OPT_EXPORT_NAME, b""))
        size, flags = p.EXPORT_NAME_REPLY.unpack(recv(sock, p.EXPORT_NAME_REPLY.size))
        assert size == 3 * MiB + 512 and flags & p.NBD_FLAG_READ_ONLY
        sock.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.NBD_CMD_READ, 1, 0, 16))
        assert recv(sock, p.SIMPLE_REPLY.size + 16)[p.SIMPLE_REPLY.size:] == \
            source.read_bytes()[:16]
        sock.close()
        sock = connect(server)  # an unknown name: the connection is dropped
        sock.sendall(p.pack_option(p.NBD_OPT_EXPORT_NAME, b"other"))
        assert sock.recv(1) == b""
        sock.close()


def test_tcp_listens_on_localhost_only_by_default(source: Path):
    require_tools("qemu-img")
    with NbdServer(RawDisk(source), port=0).start() as server:
        host, port = server.url.removeprefix("nbd://").split(":")
        assert host == "127.0.0.1" and int(port) > 0
        done = subprocess.run(["qemu-img", "info", server.url], capture_output=True, text=True)
        assert done.returncode == 0 and str(3 * MiB + 512) in done.stdout


def test_needs_one_place_to_listen(source: Path, tmp_path: Path):
    with pytest.raises(UsageError, match="exactly one"):
        NbdServer(RawDisk(source))
    with pytest.raises(UsageError, match="exactly one"):
        NbdServer(RawDisk(source), socket_path=tmp_path / "s", port=1)


# ------------------------------------------------- a chain point: pieces, holes, checks
BS = 4096
N_BLOCKS = 2700  # ~10.5 MiB: reads cross the server's 4 MiB pieces and read-ahead windows


def chain_point(tmp_path: Path, compress: bool = False) -> tuple[Chain, bytes]:
    """A chain of a full and an incremental of a volume with random, zero (not stored:
    holes) and compressible runs; point 1's bytes."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (N_BLOCKS, BS), dtype=np.uint8)
    data[50:52] = 0
    data[300:900] = 0
    data[900:1500] = rng.integers(0, 4, (600, BS), dtype=np.uint8) * 64  # compressible
    data[1500:2100] = 0  # across the 8 MiB mark
    chain = Chain.create(tmp_path / "chain")
    backup(chain, Volume.from_bytes(data.reshape(-1), BS), compress=compress)
    data[1000:1010] = rng.integers(0, 256, (10, BS), dtype=np.uint8)
    data[1600] = 7
    backup(chain, Volume.from_bytes(data.reshape(-1), BS), compress=compress)
    return Chain.open(tmp_path / "chain"), data.tobytes()


def structured(server: NbdServer | Path) -> socket.socket:
    """A raw connection in transmission with structured replies."""
    sock = connect(server)
    sock.sendall(p.pack_option(p.NBD_OPT_STRUCTURED_REPLY))
    assert option_reply(sock)[1] == p.NBD_REP_ACK
    sock.sendall(p.pack_option(p.NBD_OPT_GO, p.pack_go("disk", [])))
    while option_reply(sock)[1] != p.NBD_REP_ACK:
        pass
    return sock


def chunks(sock: socket.socket, cookie: int) -> list[tuple[int, int, bytes]]:
    """``(flags, type, payload)`` of a structured reply's chunks, up to the DONE one."""
    out = []
    while not out or not out[-1][0] & p.NBD_REPLY_FLAG_DONE:
        magic, flags, kind, got, length = p.STRUCTURED_REPLY.unpack(
            recv(sock, p.STRUCTURED_REPLY.size))
        assert (magic, got) == (p.NBD_STRUCTURED_REPLY_MAGIC, cookie)
        out.append((flags, kind, recv(sock, length)))
    return out


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
def test_reads_across_pieces_and_read_ahead_equal_the_point(tmp_path: Path, compress: bool):
    """Sequential reads of odd sizes (pieces taken in parts, read ahead), jumps back and
    forth (read-ahead dropped), single bytes and the whole disk at once, through the
    project's client (structured replies, holes) and qemu-img; every block checked."""
    chain, data = chain_point(tmp_path, compress)
    with NbdServer(chain.disk(1), socket_path=tmp_path / "s.sock").start() as server, \
            NbdConnection.open(server.url) as nbd:
        assert nbd.structured and nbd.size == len(data)
        step = 3 * MiB + 12345
        assert b"".join(nbd.read(at, min(step, len(data) - at))
                        for at in range(0, len(data), step)) == data
        rng = np.random.default_rng(9)
        for at, length in [(0, len(data)), (len(data) - 1, 1), (4 * MiB - 1, 2),
                           *zip(rng.integers(0, len(data) - 2 * MiB, 20).tolist(),
                                rng.integers(1, 2 * MiB, 20).tolist())]:
            assert nbd.read(at, length) == data[at : at + length], (at, length)
        assert not server.failed
        if shutil.which("qemu-img"):
            (tmp_path / "point.raw").write_bytes(data)
            done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                                   tmp_path / "point.raw", server.url],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr


def test_absent_blocks_go_out_as_holes_and_df_as_one_chunk(tmp_path: Path):
    chain, data = chain_point(tmp_path)
    with NbdServer(chain.disk(1), socket_path=tmp_path / "s.sock").start() as server:
        sock = structured(server)

        def read(offset: int, length: int, flags: int = 0) -> list[tuple[int, int, bytes]]:
            sock.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, flags, p.NBD_CMD_READ, 3,
                                        offset, length))
            return chunks(sock, 3)

        hole = read(400 * BS, 400 * BS)  # all of it absent: one hole, nothing else
        assert hole == [(p.NBD_REPLY_FLAG_DONE, p.NBD_REPLY_TYPE_OFFSET_HOLE,
                         p.OFFSET_HOLE.pack(400 * BS, 400 * BS))]
        mixed = read(250 * BS + 100, 100 * BS)  # data, then a hole from block 300
        assert [(f, k) for f, k, _ in mixed] == [(0, p.NBD_REPLY_TYPE_OFFSET_DATA),
                                                 (p.NBD_REPLY_FLAG_DONE,
                                                  p.NBD_REPLY_TYPE_OFFSET_HOLE)]
        assert mixed[0][2] == p.OFFSET_DATA.pack(250 * BS + 100) + data[250 * BS + 100 : 300 * BS]
        assert mixed[1][2] == p.OFFSET_HOLE.pack(300 * BS, 50 * BS + 100)
        whole = read(250 * BS + 100, 100 * BS, p.NBD_CMD_FLAG_DF)  # "don't fragment"
        assert whole == [(p.NBD_REPLY_FLAG_DONE, p.NBD_REPLY_TYPE_OFFSET_DATA,
                          p.OFFSET_DATA.pack(250 * BS + 100)
                          + data[250 * BS + 100 : 350 * BS + 100])]
        (error,) = read(len(data), 1)  # past the end: an error chunk, never a simple reply
        assert error[:2] == (p.NBD_REPLY_FLAG_DONE, p.NBD_REPLY_TYPE_ERROR)
        assert p.ERROR_CHUNK.unpack_from(error[2])[0] == p.NBD_EINVAL
        sock.close()


def test_simple_replies_read_across_pieces(tmp_path: Path):
    """A client without structured replies gets every byte, zeros included, after all
    of them passed their check."""
    chain, data = chain_point(tmp_path)
    with NbdServer(chain.disk(1), socket_path=tmp_path / "s.sock").start() as server:
        sock = connect(server)
        sock.sendall(p.pack_option(p.NBD_OPT_GO, p.pack_go("disk", [])))
        while option_reply(sock)[1] != p.NBD_REP_ACK:
            pass
        for at, length in [(0, 5 * MiB), (5 * MiB, 5 * MiB + 7), (100, 9 * MiB)]:
            sock.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.NBD_CMD_READ, 4, at, length))
            assert p.SIMPLE_REPLY.unpack(recv(sock, p.SIMPLE_REPLY.size)) == \
                (p.NBD_SIMPLE_REPLY_MAGIC, 0, 4)
            assert recv(sock, length) == data[at : at + length]
        sock.close()


def test_damaged_block_read_ahead_fails_only_the_read_that_asks_for_it(tmp_path: Path):
    """Bit rot in a block the server read ahead: the reads before it succeed and nothing
    is reported; the read of it gets EIO (named once on stderr); the reads around it
    still succeed."""
    _, data = chain_point(tmp_path)
    flip_stored_bit(tmp_path / "chain" / "0000-full.bfi", 2200)
    with NbdServer(Chain.open(tmp_path / "chain").disk(1),
                   socket_path=tmp_path / "s.sock").start() as server, \
            NbdConnection.open(server.url) as nbd:
        for at in range(0, 2200 * BS - MiB, MiB):  # read ahead past block 2200
            assert nbd.read(at, MiB) == data[at : at + MiB]
        assert not server.failed
        with pytest.raises(NbdError, match=f"error {p.NBD_EIO}: .*block 2200"):
            nbd.read(2199 * BS, 2 * BS)
        assert "0000-full.bfi: block 2200:" in server.failed
        assert nbd.read(2201 * BS, MiB) == data[2201 * BS : 2201 * BS + MiB]
        assert nbd.read(2100 * BS, 100 * BS) == data[2100 * BS : 2200 * BS]


@pytest.mark.parametrize("fmt", FLAT)
def test_zero_runs_read_as_zeros_in_every_layout(tmp_path: Path, fmt: str):
    """What the server sends as holes reads as zeros in the layout's file, covers the
    volume's absent blocks, and is the same asked piece by piece."""
    chain, _ = chain_point(tmp_path)
    layout = export_layout(chain.disk(1), fmt)
    file = np.frombuffer(layout.read(0, layout.file_size), dtype=np.uint8)
    starts, lengths = layout.zero_runs(0, layout.file_size)
    zero = np.zeros(layout.file_size, dtype=bool)
    for start, length in zip(starts.tolist(), lengths.tolist()):
        zero[start : start + length] = True
    assert not file[zero].any()
    if fmt in ("raw", "vhd-fixed"):  # the disk's bytes in place: its absent runs are holes
        assert zero.sum() >= (2 + 600 + 600 - 1) * BS  # (block 1600 came back)
    else:  # sparse formats leave most absent bytes out of the file
        assert zero.any()
    step = 3 * MiB + 1000
    pieces = [layout.zero_runs(at, step) for at in range(0, layout.file_size, step)]
    cut = np.zeros(layout.file_size, dtype=bool)
    for piece_starts, piece_lengths in pieces:
        for start, length in zip(piece_starts.tolist(), piece_lengths.tolist()):
            cut[start : start + length] = True
    assert np.array_equal(cut, zero)


def _rss_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) >> 10


def test_a_hostile_write_payload_is_read_through_not_held(source: Path):
    """A write request declaring 4 GiB of payload: the server reads the payload away
    as it comes (its memory does not grow by what was sent: it held all of it), answers
    EPERM after it, and the connection and other clients go on reading."""
    data = source.read_bytes()
    with served(RawDisk(source)) as server:
        hostile = connect(server)
        hostile.sendall(p.pack_option(p.NBD_OPT_GO, p.pack_go("disk", [])))
        while option_reply(hostile)[1] != p.NBD_REP_ACK:
            pass
        hostile.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.NBD_CMD_WRITE, 1, 0,
                                       (1 << 32) - 1))
        before, chunk = _rss_mib(), bytes(MiB)
        for _ in range(384):
            hostile.sendall(chunk)
        grown = _rss_mib() - before
        hostile.close()
        small = connect(server)
        small.sendall(p.pack_option(p.NBD_OPT_GO, p.pack_go("disk", [])))
        while option_reply(small)[1] != p.NBD_REP_ACK:
            pass
        small.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.NBD_CMD_WRITE, 2, 0, 40 * MiB)
                      + bytes(40 * MiB)
                      + p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.NBD_CMD_READ, 3, 0, 4096))
        assert p.SIMPLE_REPLY.unpack(recv(small, p.SIMPLE_REPLY.size))[1:] == (p.NBD_EPERM, 2)
        assert p.SIMPLE_REPLY.unpack(recv(small, p.SIMPLE_REPLY.size))[1:] == (0, 3)
        assert recv(small, 4096) == data[:4096]
        small.close()
    assert grown < 64, f"{grown} MiB held for 384 MiB of payload"


def _handshake_or_closed(sock: socket.socket) -> bool:
    """Whether the server greeted ``sock`` (True) or closed it unanswered (False)."""
    data = sock.recv(p.HANDSHAKE.size, socket.MSG_WAITALL)
    assert len(data) in (0, p.HANDSHAKE.size), data
    return bool(data)


def test_a_burst_of_connections_does_not_refuse_the_next_client(source: Path, capfd):
    """200 clients connecting at once (and saying nothing): each connect succeeds (a
    Unix socket's connect fails at once, EAGAIN, when the listen queue is full — it held
    5); MAX_CLIENTS of them are greeted, each other is closed unanswered with a line on
    stderr; once they leave, a client after them reads."""
    data = source.read_bytes()
    with served(RawDisk(source)) as server:
        burst = []
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(server.socket_path))
            burst.append(sock)
        assert sum(_handshake_or_closed(sock) for sock in burst) == MAX_CLIENTS
        for sock in burst:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # the served ones' threads see them leave
            try:
                reader = structured(server)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "no client served after the burst left"
                time.sleep(0.05)
        reader.sendall(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, p.NBD_CMD_FLAG_DF, p.NBD_CMD_READ,
                                      9, 512, 1024))
        assert chunks(reader, 9)[0][2][8:] == data[512:1536]
        reader.close()
    refused = [line for line in capfd.readouterr().err.splitlines() if "refused" in line]
    assert len(refused) >= 200 - MAX_CLIENTS and refused[0] == (
        f"blockforensics: refused a client: {MAX_CLIENTS} connections are served "
        "already (--max-clients)")


def _stalled(sock: socket.socket, length: int) -> int:
    """Send READs of ``length`` bytes on ``sock`` and read no reply, until the socket takes
    no more (the server blocks on it); returns how many went."""
    sock.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while sent < 10_000:
            sock.send(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, 0, p.NBD_CMD_READ, sent, 0, length))
            sent += 1
    return sent


def test_clients_that_read_no_replies_hold_little_and_others_are_served(tmp_path: Path):
    """Clients that send 32 MiB READs and read no reply: the server blocks on each
    one's socket instead of queueing replies.  A structured reader held 41 MiB of the
    server (the whole request read, and the read-ahead), now a piece and READ_AHEAD past
    it; a simple one the request it must check whole.  Other clients go on reading, and
    past ``max_clients`` a connection is closed unanswered."""
    source = tmp_path / "big.raw"
    with source.open("wb") as fh:
        fh.truncate(96 * MiB)
        fh.write(np.random.default_rng(1).bytes(MiB))
    data = source.read_bytes()[:MiB]
    with NbdServer(RawDisk(source), socket_path=tmp_path / "s.sock", max_clients=3
                   ).start() as server:
        before = _rss_mib()
        stalled = structured(server)
        assert _stalled(stalled, p.NBD_MAX_BUFFER_SIZE) > 100  # all wait in its socket
        time.sleep(1)
        grown_structured = _rss_mib() - before
        simple = connect(server)
        simple.sendall(p.pack_option(p.NBD_OPT_GO, p.pack_go("disk", [])))
        while option_reply(simple)[1] != p.NBD_REP_ACK:
            pass
        _stalled(simple, p.NBD_MAX_BUFFER_SIZE)
        time.sleep(1)
        grown_both = _rss_mib() - before
        with NbdConnection.open(server.url) as nbd:  # the third: served
            assert nbd.read(0, MiB) == data
            fourth = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            fourth.settimeout(10)
            fourth.connect(str(server.socket_path))
            assert not _handshake_or_closed(fourth)
            fourth.close()
        for sock in (stalled, simple):
            sock.close()
    assert grown_structured < 20, f"{grown_structured} MiB held by a structured reader"
    assert grown_both < 20 + 40, f"{grown_both} MiB held by two readers"


def test_serve_max_clients_and_a_stalled_reader_measured_in_proc(tmp_path: Path):
    """``serve --max-clients 2``: a reader that reads no replies grows the server's RSS
    (/proc/PID/status) by a few pieces, not the 32 MiB it asked for; a second client
    reads; a third is closed unanswered, and stderr says why in one line."""
    source = tmp_path / "big.raw"
    with source.open("wb") as fh:
        fh.truncate(96 * MiB)
        fh.write(np.random.default_rng(2).bytes(MiB))
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen([sys.executable, "-m", "blockforensics.cli", "serve", str(source),
                             "--socket", str(sock), "--max-clients", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def rss_mib() -> int:
        with open(f"/proc/{proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status
                        if line.startswith("VmRSS")) >> 10

    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with NbdConnection.open(f"nbd+unix:///?socket={sock}") as nbd:
            assert nbd.read(0, MiB) == source.read_bytes()[:MiB]  # workers started
            before = rss_mib()
            stalled = structured(sock)
            assert _stalled(stalled, p.NBD_MAX_BUFFER_SIZE) > 100
            time.sleep(1)
            grown = rss_mib() - before
            assert nbd.read(MiB, 4096) == bytes(4096)
            third = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            third.settimeout(10)
            third.connect(str(sock))
            assert not _handshake_or_closed(third)
            third.close()
        stalled.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert grown < 20, f"{grown} MiB held for a reader that reads no replies"
    assert proc.returncode == 0 and err.splitlines() == [
        "blockforensics: refused a client: 2 connections are served already (--max-clients)"], err


def test_a_sigterm_while_a_connection_is_taken_in_ends_serve(tmp_path: Path):
    """SIGTERM ends ``serve`` wherever the main thread is, also while it takes a new
    connection in (where socketserver catches every Exception): there it was printed as
    a traceback and the server served on (CI, a stalled-reader test under load)."""
    source = tmp_path / "d.raw"
    source.write_bytes(bytes(MiB))
    sock = tmp_path / "s.sock"
    script = "\n".join([
        "import os, signal, sys",
        "from blockforensics.nbd import server",
        "take = server._Server.process_request",
        "def process_request(self, request, address):",
        "    os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, in this thread",
        "    take(self, request, address)",
        "server._Server.process_request = process_request",
        "from blockforensics.cli import run",
        "sys.argv = ['blockforensics', 'serve', sys.argv[1], '--socket', sys.argv[2]]",
        "run()"])
    proc = subprocess.Popen([sys.executable, "-c", script, str(source), str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        client.connect(str(sock))
        _, err = proc.communicate(timeout=20)
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_a_client_silent_past_the_handshake_limit_is_closed_and_frees_its_slot(tmp_path: Path):
    """With one slot, a client that connects and says nothing holds it only until the
    handshake limit: then it is closed, and the next client is greeted and reads; one
    that finished its handshake in time keeps its connection past the limit."""
    source = tmp_path / "d.raw"
    data = np.random.default_rng(2).bytes(MiB)
    source.write_bytes(data)
    limit = 2.0  # seconds: a handshake under a loaded CI machine's scheduler fits in it
    with NbdServer(RawDisk(source), socket_path=tmp_path / "s.sock", max_clients=1,
                   handshake_limit=limit).start() as server:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.settimeout(20)
        silent.connect(str(server.socket_path))
        assert _handshake_or_closed(silent)  # greeted, then says nothing
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server
        assert limit - 0.1 < time.monotonic() - started < limit + 10
        silent.close()
        # the slot is free once the connection's thread has ended (soon after the close)
        deadline = time.monotonic() + 10
        while server._server.clients and time.monotonic() < deadline:
            time.sleep(0.01)
        with NbdConnection.open(server.url) as nbd:
            time.sleep(limit + 0.5)  # past the limit: transmission is not cut
            assert nbd.read(0, MiB) == data


def test_serve_refuses_a_handshake_limit_that_is_no_positive_number(tmp_path: Path):
    source = tmp_path / "d.raw"
    source.write_bytes(bytes(MiB))
    for bad in ("0", "-1", "nan", "x"):
        run = subprocess.run([sys.executable, "-m", "blockforensics", "serve", str(source),
                              "--socket", str(tmp_path / "s.sock"), "--handshake-limit", bad],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, (bad, run.stderr)
        assert "--handshake-limit" in run.stderr and "Traceback" not in run.stderr

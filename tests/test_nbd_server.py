"""The read-only NBD server, checked with qemu-img and with raw protocol exchanges."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import require_tools

from blockforensics.errors import UsageError
from blockforensics.formats.raw import RawDisk
from blockforensics.nbd import protocol as p
from blockforensics.nbd.server import NbdServer, served

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


def connect(server: NbdServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(server.socket_path))
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
        sock.sendall(p.pack_option(p.NBD_OPT_STRUCTURED_REPLY))
        assert option_reply(sock)[1] == p.NBD_REP_ERR_UNSUP
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

"""The C FUSE server (blockforensics._fuseserve) over real mounts: the same files and bytes
as the Python layouts, every stored block checked, fallback to the Python server."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from chains import build_chain
from support import flip_stored_bit, mounted, require_tools, serving
from test_stored_checks import as_written_before

from blockforensics.crypto import KeySource
from blockforensics.expose import Served, _native_server, exposed, planned, served_files
from blockforensics.formats.byteplan import disk_plan
from blockforensics.formats.vhd import write_vhd
from blockforensics.image.chain import Chain

PINNED = {"unique_id": bytes(range(16)), "timestamp": datetime(2024, 5, 1, tzinfo=timezone.utc)}
MiB = 1 << 20
N_BLOCKS = 1300  # 5.1 MiB of 4 KiB blocks: three VHD blocks
SIZES = [N_BLOCKS * 4096 - 100, N_BLOCKS * 4096 + 3000, (N_BLOCKS - 400) * 4096 + 1536]
#: the server's two modes: files opened for direct I/O (the default where the kernel maps
#: them), and through the kernel's page cache
MODES = pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])


def kernel_maps_direct_io() -> bool:
    """True on Linux >= 6.6 (FUSE 7.39: FUSE_DIRECT_IO_ALLOW_MMAP)."""
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 6)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    require_tools("fusermount3", "qemu-img")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    assert _native_server() is not None, "blockforensics._fuseserve not built (libfuse3-dev)"
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """A chain of a full and two incrementals (the volume grows, then shrinks to an odd
    size), and each point's bytes."""
    directory = tmp_path_factory.mktemp("chain") / "chain"
    states = build_chain(directory, [None, 0, 1], n_blocks=N_BLOCKS + 1, sizes=SIZES)
    return directory, list(states.values())


def pread_all(path: Path, offset: int, size: int) -> bytes:
    """Bytes ``offset .. offset+size`` of ``path``, asked of the file system (the kernel's
    cache of the file dropped first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def served_bytes(path: Path, served: Served) -> bytes:
    """The whole of ``path``, a mounted file, checked against ``served``'s layout: equal
    but in its metadata, where VHDX and VMDK layouts take new ids each time (equal too for
    the others)."""
    got = path.read_bytes()
    mixed = np.frombuffer(bytearray(got), np.uint8)
    expected = np.frombuffer(served.layout.read(served.start, served.length), np.uint8)
    starts, lengths, source, _ = served.layout._extents
    if path.name in ("disk.vhdx", "disk.vmdk"):
        for start, length in zip(starts[source < 0], lengths[source < 0]):
            mixed[start : start + length] = expected[start : start + length]
    assert mixed.size == served.length and np.array_equal(mixed, expected), path.name
    return got


@MODES
def test_every_file_of_a_chain_point_is_the_layouts_bytes(chain, mountpoint, tmp_path, direct):
    directory, states = chain
    with Chain.open(directory) as opened:
        disk = opened.disk(2)  # blocks from all three images
        files = served_files(disk, partitions=False, **PINNED)
        assert planned(disk, files) is not None  # served by the C server
        export = write_vhd(disk, tmp_path / "export.vhd", **PINNED)
        with exposed(disk, mountpoint, partitions=False, direct=direct, **PINNED) as vhd:
            assert sorted(os.listdir(mountpoint)) == sorted(files)
            assert vhd.read_bytes() == export.read_bytes()
            for name, served in files.items():
                served_bytes(mountpoint / name, served)
            source = tmp_path / "point.raw"
            source.write_bytes(states[2])
            for name, fmt in [("disk.vhd", "vpc"), ("disk.vhdx", "vhdx"),
                              ("disk.vmdk", "vmdk"), ("disk.raw", "raw")]:
                done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt,
                                       str(source), str(mountpoint / name)],
                                      capture_output=True, text=True)
                assert done.returncode == 0, name + done.stdout + done.stderr


@MODES
def test_reads_at_odd_offsets_and_sizes_across_segments(chain, mountpoint, direct):
    """Reads starting and ending inside stored blocks, metadata and holes, crossing VHD
    blocks and images, each asked of the server, are the layout's bytes; so are reads
    with O_DIRECT (whole sectors at odd sector offsets) and shared mappings."""
    directory, _ = chain
    with Chain.open(directory) as opened:
        disk = opened.disk(1)
        files = served_files(disk, partitions=False, **PINNED)
        reads = [(0, 1), (511, 3 * 4096 + 7), (1536, 513), (2 * MiB - 5, MiB + 9000),
                 (MiB + 4095, 2), (3 * MiB + 100, 2 * MiB), (5, 5 * MiB)]
        sector_reads = [(512, 512), (3 * 512, 7 * 4096), (MiB - 512, MiB + 3 * 512),
                        (2 * MiB + 4096 * 5 + 512, 2 * MiB), (0, 6 * MiB)]
        buffer = mmap.mmap(-1, 6 * MiB)  # page-aligned, as O_DIRECT wants
        with exposed(disk, mountpoint, partitions=False, direct=direct, **PINNED):
            for name, served in files.items():
                path = mountpoint / name
                whole = served_bytes(path, served)
                for offset, size in [*reads, (served.length - 700, 4096)]:
                    expected = whole[offset : offset + size]
                    assert pread_all(path, offset, size) == expected, (name, offset)
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                try:
                    for offset, size in sector_reads:
                        got = os.preadv(fd, [memoryview(buffer)[:size]], offset)
                        assert buffer[:got] == whole[offset : offset + size], (name, offset)
                    with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ) as mapped:
                        assert mapped[:] == whole, name
                finally:
                    os.close(fd)
                assert np.memmap(path, np.uint8, "r").tobytes() == whole, name


@MODES
@pytest.mark.parametrize("digests", ["crc32", "sha256"])
def test_a_flipped_bit_fails_exactly_the_reads_of_its_block(chain, mountpoint, tmp_path, capfd,
                                                            digests, direct):
    """In an image of today (CRC-32 digests) or of before flag 16 (SHA-256/128).  In
    direct mode every read touching the block is EIO; through the page cache, the pages
    before it are read, so only reads starting in it fail and reads running into it are
    short."""
    directory, states = chain
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in directory.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    data = states[0] + bytes(-len(states[0]) % 512)  # disk.raw: whole sectors
    bad = 700  # a block of the full, which point 0 reads
    full = damaged / sorted(p.name for p in damaged.glob("*.bfi"))[0]
    if digests == "sha256":
        as_written_before(full)
    flip_stored_bit(full, bad)
    step, lo, hi = 64 * 1024, bad * 4096, (bad + 1) * 4096
    offsets = [*range(0, len(data), step), lo - 1000, lo + 17, hi - 1, hi, hi + 5]
    with Chain.open(damaged) as opened, exposed(opened.disk(0), mountpoint, partitions=False,
                                                direct=direct):
        assert bool(disk_plan(opened.disk(0)).files[0].crc.any()) == (digests == "crc32")
        raw = mountpoint / "disk.raw"
        failed = []
        for offset in offsets:
            try:
                got = pread_all(raw, offset, step)
            except OSError as exc:
                assert exc.errno == errno.EIO
                failed.append(offset)
                continue
            # a read running into the block ends before it (short), or at its own end
            assert got == data[offset : offset + len(got)], offset
            assert len(got) == min(step, len(data) - offset) or offset + len(got) <= lo
        touching = [o for o in offsets if o < hi and o + step > lo] if direct else [lo + 17,
                                                                                   hi - 1]
        assert failed == touching
        assert pread_all(raw, lo - 512, 512) == data[lo - 512 : lo]  # small reads: copied
        with pytest.raises(OSError) as small:
            pread_all(raw, hi - 512, 512)
        assert small.value.errno == errno.EIO
        request = raw.stat().st_blksize  # the server's largest request
        if direct and lo < request:  # the first request holds the block (4 MiB requests)
            with pytest.raises(OSError) as whole:
                pread_all(raw, 0, len(data))
            assert whole.value.errno == errno.EIO
        else:
            got = pread_all(raw, 0, len(data))  # short: up to the block (direct: the request)
            assert got == data[: len(got)] and lo - request < len(got) <= lo
    err = capfd.readouterr().err
    assert f"block {bad}: stored bytes do not match their digest" in err


@pytest.mark.parametrize("flags", [[], ["--page-cache"]], ids=["direct", "page-cache"])
def test_mount_exits_1_after_a_read_failed_its_check_as_serve_does(chain, mountpoint, tmp_path,
                                                                   flags):
    """A read answered EIO for a damaged block is a check that failed: once unmounted,
    ``mount`` exits 1 (it named the block on stderr), as ``serve`` does; 0 when every
    read was whole."""
    directory, states = chain
    damaged = tmp_path / "damaged"
    shutil.copytree(directory, damaged)
    bad = 700
    flip_stored_bit(damaged / sorted(p.name for p in damaged.glob("*.bfi"))[0], bad)
    for source, reads_bad in ((directory, False), (damaged, True)):
        argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(source),
                str(mountpoint), "--point", "0", *flags]
        with serving(argv, mountpoint) as server:
            if reads_bad:
                with pytest.raises(OSError) as failed:
                    pread_all(mountpoint / "disk.raw", bad * 4096, 4096)
                assert failed.value.errno == errno.EIO
            else:
                assert pread_all(mountpoint / "disk.raw", 0, len(states[0])) == states[0]
        assert server.proc.returncode == (1 if reads_bad else 0), server.err
        assert (f"block {bad}: stored bytes do not match their digest" in server.err) == reads_bad


@pytest.mark.parametrize("flags", [[], ["--page-cache"]], ids=["direct", "page-cache"])
def test_the_files_are_served_direct_where_the_kernel_maps_them(chain, mountpoint, flags):
    """``mount``: in direct mode (the default where the kernel maps such files) a whole
    read leaves none of the file in the page cache (each read is the server's), yet
    shared mappings work; with ``--page-cache`` the kernel keeps what was read."""
    require_tools("fincore")
    directory, states = chain
    direct = not flags and kernel_maps_direct_io()
    raw = mountpoint / "disk.raw"
    argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(directory),
            str(mountpoint), "--point", "1", *flags]
    with serving(argv, mountpoint):
        size = len(raw.read_bytes())
        done = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES",
                               str(raw)], capture_output=True, text=True, check=True)
        pages = -(-size // mmap.PAGESIZE)
        assert int(done.stdout) == (0 if direct else pages * mmap.PAGESIZE)
        with raw.open("rb") as fh, mmap.mmap(fh.fileno(), 0, mmap.MAP_SHARED,
                                             mmap.PROT_READ) as mapped:
            assert mapped[: len(states[1])] == states[1]


def rss_file(pid: int) -> int:
    """Bytes of files mapped in process ``pid``'s memory (RssFile)."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) << 10 for line in fh if line.startswith("RssFile:"))


def test_served_pages_leave_the_servers_memory_and_requests_are_as_large_as_allowed(
        mountpoint, tmp_path):
    """Reads of every size, first (blocks checked) and again, leave none of what was read
    mapped in the server (its RSS does not grow with what it served), and files say the
    largest request as their st_blksize: 1 MiB, up to 4 MiB as fs.fuse.max_pages_limit
    allows (readers sizing buffers by it, as cat and cp do, read that much at a time)."""
    directory = tmp_path / "big"
    states = build_chain(directory, [None], n_blocks=8192)  # 32 MiB
    limit = Path("/proc/sys/fs/fuse/max_pages_limit")
    pages = min(int(limit.read_text()), 1024) if limit.exists() else 256
    argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(directory),
            str(mountpoint)]
    with serving(argv, mountpoint) as server:
        vhd = mountpoint / "disk.vhd"
        assert vhd.stat().st_blksize == pages * mmap.PAGESIZE
        before = rss_file(server.proc.pid)
        for size in (4096, 128 << 10, 4 << 20, 4096):
            with vhd.open("rb", buffering=0) as fh:
                while fh.read(size):
                    pass
        grown = rss_file(server.proc.pid) - before
        assert (mountpoint / "disk.raw").read_bytes()[: len(states[next(iter(states))])] \
            == next(iter(states.values()))
    assert grown < 2 * MiB, grown


@pytest.mark.parametrize("how", ["fusermount3 -u", "SIGHUP", "SIGTERM"])
def test_the_server_ends_cleanly_when_unmounted_or_signalled(chain, mountpoint, how):
    directory, states = chain
    code = ("import sys; from blockforensics.expose import mount;"
            "from blockforensics.image.chain import Chain;"
            "mount(Chain.open(sys.argv[1]).disk(0), sys.argv[2], partitions=False);"
            "print('unmounted')")
    with serving([sys.executable, "-c", code, str(directory), str(mountpoint)],
                 mountpoint) as server:
        assert (mountpoint / "disk.raw").read_bytes()[: len(states[0])] == states[0]
        if how.startswith("SIG"):
            server.proc.send_signal(getattr(signal, how))
        else:
            subprocess.run([*how.split(), str(mountpoint)], check=True)
        server.proc.wait(timeout=10)
    assert server.proc.returncode == 0, server.err
    assert server.out.strip() == "unmounted"
    assert not mounted(mountpoint)


def test_an_encrypted_chain_is_served_by_the_python_server(mountpoint, tmp_path):
    key = KeySource.from_file(KeySource.generate_file(tmp_path / "key"))
    last = list(build_chain(tmp_path / "chain", [None, 0], key=key, n_blocks=200).values())[-1]
    with Chain.open(tmp_path / "chain", key) as opened:
        disk = opened.disk(1)
        assert planned(disk, served_files(disk, partitions=False)) is None
        with exposed(disk, mountpoint, partitions=False):
            served = (mountpoint / "disk.raw").read_bytes()
            assert served == last + bytes(len(served) - len(last))



def few_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans built a few rows at a time (``ROWS``): many windows of the index, batches
    and segments, by the code that builds the plans of points of any size."""
    from blockforensics.formats import byteplan

    monkeypatch.setattr(byteplan, "ROWS", 5)


def test_a_plan_built_a_few_rows_at_a_time_serves_the_point(chain, mountpoint, tmp_path,
                                                            monkeypatch):
    """Served from its spill's mappings (which the server drops every few hundred reads),
    a plan built a few rows at a time reads as the point's restore, whole and 4 KiB at a
    time, and ``disk.vhd`` as its export."""
    few_rows(monkeypatch)
    directory, states = chain
    data = states[2] + bytes(-len(states[2]) % 512)
    with Chain.open(directory) as opened:
        disk = opened.disk(2)
        export = write_vhd(disk, tmp_path / "export.vhd", **PINNED)
        with exposed(disk, mountpoint, partitions=False, **PINNED) as vhd:
            assert vhd.read_bytes() == export.read_bytes()
            raw = mountpoint / "disk.raw"
            assert raw.read_bytes() == data
            fd = os.open(raw, os.O_RDONLY)
            try:  # > 256 requests: the plans' pages are dropped between them
                got = b"".join(os.pread(fd, 4096, offset) for offset in range(0, len(data), 4096))
            finally:
                os.close(fd)
            assert got == data


@pytest.mark.parametrize("digests", ["crc32", "sha256"])
def test_a_plan_built_a_few_rows_at_a_time_fails_a_flipped_bit(chain, mountpoint, tmp_path,
                                                               monkeypatch, capfd, digests):
    """Read 4 KiB at a time, a point whose plan was built a few rows at a time fails
    exactly the block holding a flipped bit, naming it."""
    few_rows(monkeypatch)
    directory, states = chain
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in directory.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    bad = 700  # a block of the full that point 2 still reads from it
    full = damaged / sorted(p.name for p in damaged.glob("*.bfi"))[0]
    if digests == "sha256":
        as_written_before(full)
    flip_stored_bit(full, bad)
    data = states[2] + bytes(-len(states[2]) % 512)
    with Chain.open(damaged) as opened:
        disk = opened.disk(2)
        assert bad in disk_plan(disk).files[0].positions
        with exposed(disk, mountpoint, partitions=False) as vhd:
            fd = os.open(vhd.parent / "disk.raw", os.O_RDONLY)
            failed = []
            try:
                for offset in range(0, len(data), 4096):
                    try:
                        got = os.pread(fd, 4096, offset)
                    except OSError as exc:
                        assert exc.errno == errno.EIO
                        failed.append(offset // 4096)
                        continue
                    assert got == data[offset : offset + 4096], offset
            finally:
                os.close(fd)
            assert failed == [bad]
    assert f"block {bad}: stored bytes do not match their digest" in capfd.readouterr().err

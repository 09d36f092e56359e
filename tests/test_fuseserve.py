"""The C FUSE server (blockforensics._fuseserve) over real mounts: the same files and bytes
as the Python layouts, every stored block checked, fallback to the Python server."""

from __future__ import annotations

import errno
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from chains import build_chain
from support import flip_stored_bit, require_tools
from test_stored_checks import as_written_before

from blockforensics.crypto import KeySource
from blockforensics.expose import Served, _native_server, exposed, planned, served_files
from blockforensics.formats.byteplan import disk_plan
from blockforensics.formats.vhd import write_vhd
from blockforensics.image.chain import Chain

PINNED = {"unique_id": bytes(range(16)), "timestamp": datetime(2024, 5, 1, tzinfo=timezone.utc)}
N_BLOCKS = 1300  # 5.1 MiB of 4 KiB blocks: three VHD blocks
SIZES = [N_BLOCKS * 4096 - 100, N_BLOCKS * 4096 + 3000, (N_BLOCKS - 400) * 4096 + 1536]


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


def test_every_file_of_a_chain_point_is_the_layouts_bytes(chain, mountpoint, tmp_path):
    directory, states = chain
    with Chain.open(directory) as opened:
        disk = opened.disk(2)  # blocks from all three images
        files = served_files(disk, partitions=False, **PINNED)
        assert planned(disk, files) is not None  # served by the C server
        export = write_vhd(disk, tmp_path / "export.vhd", **PINNED)
        with exposed(disk, mountpoint, partitions=False, **PINNED) as vhd:
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


def test_reads_at_odd_offsets_and_sizes_across_segments(chain, mountpoint):
    """Reads starting and ending inside stored blocks, metadata and holes, crossing VHD
    blocks and images, each asked of the server, are the layout's bytes."""
    directory, _ = chain
    MiB = 1 << 20
    with Chain.open(directory) as opened:
        disk = opened.disk(1)
        files = served_files(disk, partitions=False, **PINNED)
        reads = [(0, 1), (511, 3 * 4096 + 7), (1536, 513), (2 * MiB - 5, MiB + 9000),
                 (MiB + 4095, 2), (3 * MiB + 100, 2 * MiB), (5, 5 * MiB)]
        with exposed(disk, mountpoint, partitions=False, **PINNED):
            for name, served in files.items():
                whole = served_bytes(mountpoint / name, served)
                for offset, size in [*reads, (served.length - 700, 4096)]:
                    expected = whole[offset : offset + size]
                    assert pread_all(mountpoint / name, offset, size) == expected, (name, offset)


@pytest.mark.parametrize("digests", ["crc32", "sha256"])
def test_a_flipped_bit_fails_exactly_the_reads_of_its_block(chain, mountpoint, tmp_path, capfd,
                                                            digests):
    """In an image of today (CRC-32 digests) or of before flag 16 (SHA-256/128)."""
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
    with Chain.open(damaged) as opened, exposed(opened.disk(0), mountpoint, partitions=False):
        assert bool(disk_plan(opened.disk(0)).files[0].crc.any()) == (digests == "crc32")
        raw = mountpoint / "disk.raw"
        failed = []
        for offset in [*range(0, len(data), step), lo - 1000, lo + 17, hi - 1, hi, hi + 5]:
            try:
                got = pread_all(raw, offset, step)
            except OSError as exc:
                assert exc.errno == errno.EIO
                failed.append(offset)
                continue
            # a read running into the block ends before it (short), or at its own end
            assert got == data[offset : offset + len(got)], offset
            assert len(got) == min(step, len(data) - offset) or offset + len(got) <= lo
        assert failed == [lo + 17, hi - 1]  # those starting in it
        assert pread_all(raw, 0, len(data))[:lo] == data[:lo]  # short: up to the block
    err = capfd.readouterr().err
    assert f"block {bad}: stored bytes do not match their digest" in err


def test_an_encrypted_chain_is_served_by_the_python_server(mountpoint, tmp_path):
    key = KeySource.from_file(KeySource.generate_file(tmp_path / "key"))
    last = list(build_chain(tmp_path / "chain", [None, 0], key=key, n_blocks=200).values())[-1]
    with Chain.open(tmp_path / "chain", key) as opened:
        disk = opened.disk(1)
        assert planned(disk, served_files(disk, partitions=False)) is None
        with exposed(disk, mountpoint, partitions=False):
            served = (mountpoint / "disk.raw").read_bytes()
            assert served == last + bytes(len(served) - len(last))

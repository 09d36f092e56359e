"""The FUSE-exposed disk.vhd, checked with qemu-img and against write_vhd (no mocks)."""

from __future__ import annotations

import ctypes.util
import errno
import filecmp
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from support import flip_stored_bit, mounted, require_tools, serving

from blockforensics import expose
from blockforensics.expose import ImageFileSystem, Served, exposed, partition_files, served_files
from blockforensics.formats.raw import RawDisk
from blockforensics.formats.vhd import VhdLayout, write_vhd
from blockforensics.fsck import check_filesystems
from blockforensics.image.chain import Chain

MiB = 1024 * 1024
PINNED = {"unique_id": bytes(range(16)), "timestamp": datetime(2024, 5, 1, tzinfo=timezone.utc)}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A sparse raw disk of an odd size (10 MiB + 7 sectors) with random runs."""
    path = tmp_path / "src.raw"
    rng = np.random.default_rng(5)
    with path.open("wb") as fh:
        fh.truncate(10 * MiB + 7 * 512)
        for offset in (0, 3 * MiB + 4096, 10 * MiB):
            fh.seek(offset)
            fh.write(rng.bytes(3584 if offset == 10 * MiB else 200_000))
    return path


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    require_tools("fusermount3", "qemu-img")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    path = tmp_path / "mnt"
    path.mkdir()
    return path


def test_exposed_file_is_the_export(source, mountpoint, tmp_path):
    disk = RawDisk(source)
    export = write_vhd(disk, tmp_path / "export.vhd", **PINNED)
    with exposed(disk, mountpoint, **PINNED) as vhd:
        assert vhd == mountpoint / "disk.vhd"
        assert sorted(os.listdir(mountpoint)) == ["disk.raw", "disk.vhd", "disk.vhdx",
                                                  "disk.vmdk"]
        assert vhd.stat().st_size == export.stat().st_size
        result = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vpc",
                                 str(source), str(vhd)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert filecmp.cmp(vhd, export, shallow=False)
        for name, fmt in [("disk.raw", "raw"), ("disk.vhdx", "vhdx"), ("disk.vmdk", "vmdk")]:
            result = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt,
                                     str(source), str(mountpoint / name)],
                                    capture_output=True, text=True)
            assert result.returncode == 0, name + result.stdout + result.stderr
    assert not mounted(mountpoint)


def test_reads_ahead_for_sequential_readers_and_serves_any_read_exactly(source, tmp_path):
    """Whatever the order of reads (sequential, overlapping, backwards, past the end),
    the file system returns exactly the exported file's bytes."""
    disk = RawDisk(source)
    export = write_vhd(disk, tmp_path / "export.vhd", **PINNED).read_bytes()
    fs = ImageFileSystem({"disk.vhd": Served(VhdLayout(disk, **PINNED))})
    piece = 128 * 1024
    sequential = [(offset, size) for size in (piece, MiB, MiB + 4096, 3 * MiB)  # some run
                  for offset in range(0, len(export) + size, size)]  # across windows
    scattered = [(5 * MiB + 3, 1000), (100, 4 * MiB + 17), (0, 512), (len(export) - 10, 100),
                 (7 * MiB, piece), (7 * MiB + piece, piece), (7 * MiB - 512, 2048)]
    for offset, size in sequential + scattered:
        assert bytes(fs.read("/disk.vhd", size, offset, 0)) == export[offset : offset + size]
    fs.destroy("/")


@pytest.fixture(scope="module")
def chain_point(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A chain (``backup --all-blocks``) of 12 MiB + 5 blocks of random bytes with a
    3 MiB hole, and those bytes."""
    work = tmp_path_factory.mktemp("chain")
    data = bytearray(np.random.default_rng(8).bytes(12 * MiB + 5 * 4096))
    data[5 * MiB : 8 * MiB] = bytes(3 * MiB)
    source = work / "src.raw"
    source.write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup", str(source),
                           str(work / "chain"), "--all-blocks"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "chain", bytes(data)


def test_large_and_odd_reads_over_the_mount_are_the_chains_bytes(chain_point, mountpoint):
    """Reads larger than a request, a read-ahead window or both, at odd offsets and
    sizes, sequential and not, read twice (the second time from the kernel's cache),
    give the point's bytes; the mount's read-ahead is raised when we may (root)."""
    chain, data = chain_point
    with serving([sys.executable, "-m", "blockforensics.cli", "mount", str(chain),
                  str(mountpoint)], mountpoint) as mount:
        raw = mountpoint / "disk.raw"
        for _ in range(2):
            with raw.open("rb", buffering=0) as fh:
                chunks = iter(lambda: fh.read(MiB + 4097), b"")
                assert b"".join(chunks) == data
        fd = os.open(raw, os.O_RDONLY)
        try:
            for offset, size in [(MiB - 3, 3 * MiB + 7), (4 * MiB - 1, 2), (len(data) - 100, 1000),
                                 (5 * MiB - 511, 6 * MiB + 1023), (0, 9 * MiB + 5), (12345, 1)]:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # ask the file system
                assert os.pread(fd, size, offset) == data[offset : offset + size], (offset, size)
        finally:
            os.close(fd)
        result = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vpc",
                                 str(chain.parent / "src.raw"), str(mountpoint / "disk.vhd")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        if os.geteuid() == 0:
            device = os.stat(mountpoint).st_dev
            setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
            assert int(setting.read_text()) == expose.READ_AHEAD_KB
    assert mount.proc.returncode == 0, mount.err


def test_a_sequential_reader_gets_requests_of_1_mib(source, mountpoint, tmp_path, monkeypatch):
    """Over libfuse 3, with the mount's read-ahead raised, the kernel asks the Python
    server (here instead of the C one) for 1 MiB at a time (libfuse 2, or the kernel's
    default read-ahead, keep requests at 128 KiB); and keeps what it read: a second read
    asks nothing."""
    if ctypes.util.find_library("fuse3") is None or os.geteuid() != 0:
        pytest.skip("needs libfuse 3, and root to raise a mount's read-ahead")
    assert expose.mfusepy.fuse_version_major == 3
    sizes = tmp_path / "sizes"
    read = ImageFileSystem.read

    def recorded(self, path, size, offset, fh):  # runs in the mount's process
        with sizes.open("a") as log:
            log.write(f"{size}\n")
        return read(self, path, size, offset, fh)

    monkeypatch.setattr(ImageFileSystem, "read", recorded)
    with exposed(RawDisk(source), mountpoint, native=False) as vhd:
        assert vhd.read_bytes()[-512:-504] == b"conectix"  # its footer
        asked = sizes.read_text()
        assert vhd.read_bytes()[-512:-504] == b"conectix"  # from the kernel's cache:
        assert sizes.read_text() == asked  # not asked again
    assert max(map(int, asked.split())) == MiB


def test_a_damaged_block_fails_only_the_reads_of_its_bytes(chain_point, tmp_path):
    """A damaged block in the read-ahead window (ahead of the reader) fails only the read
    that asks for its bytes: the reads before it and after it get the right bytes."""
    chain, data = chain_point
    damaged = tmp_path / "chain"
    damaged.mkdir()
    for image in chain.iterdir():
        (damaged / image.name).write_bytes(image.read_bytes())
    position = (11 * MiB + 5000) // 4096  # inside the window read from 9 MiB on
    flip_stored_bit(damaged / "0000-full.bfi", position)
    with Chain.open(damaged) as opened:
        fs = ImageFileSystem(served_files(opened.disk(0), partitions=False))
        failed = []
        for offset in range(0, len(data), MiB):
            try:
                got = bytes(fs.read("/disk.raw", MiB, offset, 0))
            except OSError as exc:
                assert exc.errno == errno.EIO
                failed.append(offset)
            else:
                assert got == data[offset : offset + MiB], offset
        fs.destroy("/")
    assert failed == [position * 4096 // MiB * MiB]


def test_exposed_file_is_read_only(source, mountpoint):
    with exposed(RawDisk(source), mountpoint) as vhd:
        attempts = [
            lambda: vhd.open("r+b"),
            lambda: (mountpoint / "new").write_bytes(b"x"),
            lambda: os.truncate(vhd, 0),
            lambda: vhd.unlink(),
            lambda: (mountpoint / "dir").mkdir(),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as err:
                attempt()
            assert err.value.errno == errno.EROFS
        assert vhd.stat().st_mode & 0o222 == 0
    assert not mounted(mountpoint)


def test_unmounted_even_when_the_body_raises(source, mountpoint):
    with pytest.raises(RuntimeError), exposed(RawDisk(source), mountpoint):
        raise RuntimeError("boom")
    assert not mounted(mountpoint)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_mount_unmounts_on_signal(source, mountpoint, sig):
    code = ("import sys; from blockforensics.expose import mount;"
            "from blockforensics.formats.raw import RawDisk;"
            "mount(RawDisk(sys.argv[1]), sys.argv[2]); print('unmounted')")
    with serving([sys.executable, "-c", code, str(source), str(mountpoint)],
                 mountpoint) as mount:
        assert (mountpoint / "disk.vhd").read_bytes()[-512:-504] == b"conectix"  # read ahead
        mount.proc.send_signal(sig)  # with its thread running
        mount.proc.wait(timeout=10)
    assert mount.proc.returncode == 0, mount.err
    assert mount.out.strip() == "unmounted"
    assert not mounted(mountpoint)


# ------------------------------------------------------------------ partitions
def table_disk(path: Path, size: int, script: str, cut_to: int | None = None) -> Path:
    """A sparse disk of ``size`` bytes partitioned by ``sfdisk`` from ``script`` (then
    cut to ``cut_to`` bytes: a truncated copy)."""
    require_tools("sfdisk")
    with path.open("wb") as fh:
        fh.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True,
                   capture_output=True)
    if cut_to is not None:
        os.truncate(path, cut_to)
    return path


def test_partitions_cut_off_or_past_the_end_of_the_image(tmp_path):
    disk = table_disk(tmp_path / "cut.img", 8 * MiB, "label: dos\nstart=2048, size=2048\n"
                      "start=4096, size=8192\nstart=14336, size=2048\n", cut_to=5 * MiB)
    with RawDisk(disk) as raw:
        table, files, notes = partition_files(raw)
        served = served_files(raw)
    assert table == "mbr"
    assert [(f.name, f.partition.start_byte, f.length) for f in files] == [
        ("part1.raw", MiB, MiB), ("part2.raw", 2 * MiB, 3 * MiB)]  # part2 cut at 5 MiB
    assert notes == ["partition 2 runs past the end of the image at byte 5242880: served "
                     "up to there", "partition 3 starts past the end of the image (5242880 "
                     "bytes): not served"]
    assert served["part2.raw"].length == 3 * MiB and "part3.raw" not in served


def test_ebr_loop_serves_each_logical_partition_once(tmp_path):
    disk = table_disk(tmp_path / "loop.img", 8 * MiB, "label: dos\nstart=2048, type=5\n"
                      "size=2048\nsize=2048\n")
    with RawDisk(disk) as raw:
        _, files, notes = partition_files(raw)
    assert [f.name for f in files] == ["part5.raw", "part6.raw"] and notes == []

    def lba(fh, at: int) -> int:
        fh.seek(at)
        return int.from_bytes(fh.read(4), "little")

    with disk.open("r+b") as fh:  # the last EBR links back to the first (its LBA 0 is
        extended = lba(fh, 0x1BE + 8)  # relative to the extended partition's start)
        second = extended + lba(fh, extended * 512 + 0x1BE + 16 + 8)
        fh.seek(second * 512 + 0x1BE + 16)
        fh.write(bytes(4) + b"\x05" + bytes(7) + (2048).to_bytes(4, "little"))
    with RawDisk(disk) as raw:
        _, looped, notes = partition_files(raw)
    assert looped == files
    assert notes == [f"extended partition: the EBR chain loops back to sector {extended}; "
                     "followed once"]


def test_protective_mbr_with_unreadable_gpt_serves_no_partition_and_says_why(
        tmp_path, mountpoint):
    require_tools("sgdisk")
    disk = tmp_path / "gpt.img"
    with disk.open("wb") as fh:
        fh.truncate(4 * MiB)
    subprocess.run(["sgdisk", "-n1:2048:4095", "-t1:8300", str(disk)], check=True,
                   capture_output=True)
    with disk.open("r+b") as fh:  # both headers gone; the 0xEE entry stays in sector 0
        for lba in (1, 4 * MiB // 512 - 1):
            fh.seek(lba * 512)
            fh.write(bytes(512))
    with RawDisk(disk) as raw:
        assert raw.read(0x1BE + 4, 1) == b"\xee"
        table, files, notes = partition_files(raw)
        assert (table, files) == ("gpt", [])
        assert notes[0].startswith("unreadable GPT partition table: no valid GPT header")
        assert not any(name.startswith("part") for name in served_files(raw))
        report = check_filesystems(raw)
    assert report.ok and report.notes == notes
    assert [str(c) for c in report.checks] == [
        "disk.raw at byte 0: unknown: not checked: no file system recognised"]

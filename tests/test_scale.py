"""Cost follows the data: sparse sources are read by their data extents only, an
incremental given a changed-block map reads only those blocks, and block maps of a
1 TiB volume (2^28 blocks) combine in tens of milliseconds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from support import serving

from blockforensics import BlockMap, Chain
from blockforensics.formats.raw import RawDisk
from blockforensics.image.backup import backup, batches, restore

GiB, MiB = 1 << 30, 1 << 20
SIZE = 64 * GiB
#: byte offsets of the data extents written into the sparse source (1 MiB each)
EXTENTS = (0, 5 * GiB + 1000, 40 * GiB + 123 * 4096 + 7, SIZE - MiB)


def bytes_read() -> int:
    """Bytes this process has read through read(2)-like calls so far (page cache or not)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def sha256_at(path: Path, offset: int, length: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return hashlib.sha256(fh.read(length)).hexdigest()


def data_extents(path: Path) -> list[tuple[int, int]]:
    """``(start, stop)`` byte ranges of a file's data, from SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset, found = os.fstat(fd).st_size, 0, []
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            found.append((start, offset))
        return found
    finally:
        os.close(fd)


@pytest.fixture()
def sparse(tmp_path: Path) -> Path:
    path = tmp_path / "sparse.img"
    rng = np.random.default_rng(16)
    with path.open("wb") as fh:
        fh.truncate(SIZE)
        for offset in EXTENTS:
            fh.seek(offset)
            fh.write(rng.integers(0, 256, MiB, dtype=np.uint8).tobytes())
    if len(data_extents(path)) < len(EXTENTS) - 1:
        pytest.skip("this file system does not report holes (SEEK_DATA/SEEK_HOLE)")
    return path


def test_sparse_source_backs_up_by_its_data_and_restores_exactly(sparse: Path,
                                                                 tmp_path: Path) -> None:
    chain = Chain.create(tmp_path / "chain")
    with RawDisk(sparse) as source:
        before, started = bytes_read(), time.perf_counter()
        backup(chain, source)
        seconds, read = time.perf_counter() - started, bytes_read() - before
    assert read < 16 * MiB, f"read {read} bytes of a 64 GiB volume holding 4 MiB of data"
    assert seconds < 2.0, f"backup of 4 MiB of data in a 64 GiB sparse file took {seconds:.2f} s"
    # 4 extents of 1 MiB; two of them start inside a block, so they touch one more
    assert chain.rows()[0]["blocks"] == 4 * 256 + 2

    out = restore(chain, 0, tmp_path / "restored.img")
    assert out.stat().st_size == SIZE
    for offset in EXTENTS:
        assert sha256_at(out, offset, MiB) == sha256_at(sparse, offset, MiB)
    # only the blocks holding data were written: the rest are holes, which read as zeros
    written = sum(stop - start for start, stop in data_extents(out))
    assert written <= 8 * MiB
    for start, stop in data_extents(out):
        assert any(start < e + MiB + 4096 and e - 4096 < stop for e in EXTENTS)
    with out.open("rb") as fh:
        for offset in (MiB, 20 * GiB, SIZE - 2 * MiB):
            fh.seek(offset)
            assert fh.read(MiB) == bytes(MiB)


def test_incremental_of_a_changed_map_reads_only_those_blocks(sparse: Path,
                                                              tmp_path: Path) -> None:
    chain = Chain.create(tmp_path / "chain")
    with RawDisk(sparse) as source:
        backup(chain, source)
    rng = np.random.default_rng(7)
    positions = np.sort(rng.choice(SIZE // 4096, 300, replace=False))
    with sparse.open("r+b") as fh:  # scattered writes, most of them into holes
        for position in positions.tolist():
            fh.seek(position * 4096)
            fh.write(rng.integers(1, 256, 4096, dtype=np.uint8).tobytes())
    changed = BlockMap.from_positions(SIZE // 4096, positions)
    with RawDisk(sparse) as source:
        before = bytes_read()
        point = backup(chain, source, changed=changed)
        read = bytes_read() - before
    assert read < 300 * 4096 + 4 * MiB, f"read {read} bytes for 300 changed blocks"
    assert chain.rows()[point]["blocks"] == 300
    disk = chain.disk(point)
    with RawDisk(sparse) as source:
        assert np.array_equal(disk.read_at(positions), source.read_at(positions))
        # without the map: the source's data and the parent's are compared, nothing else
        before = bytes_read()
        again = backup(chain, source)
        assert bytes_read() - before < 16 * MiB
    assert chain.rows()[again]["blocks"] == 0


def test_cli_backup_of_a_sparse_volume_is_fast(sparse: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup", str(sparse),
                    str(tmp_path / "chain")], check=True, capture_output=True)
    assert time.perf_counter() - started < 4.0


def test_batches_cover_a_map_in_order_without_whole_volume_arrays() -> None:
    n = 1 << 20
    rng = np.random.default_rng(3)
    starts = np.sort(rng.choice(n - 5000, 300, replace=False))
    bmap = BlockMap.from_run_arrays(n, starts, rng.integers(1, 5000, len(starts)))
    got = list(batches(bmap, 1024))
    assert np.array_equal(np.concatenate(got), bmap.positions())
    assert max(len(b) for b in got) <= 2 * 1024
    assert list(batches(BlockMap.empty(n), 1024)) == []


def test_block_maps_of_a_terabyte_combine_exactly() -> None:
    """Set algebra, counts and runs on maps of 2^28 blocks (their speed is measured by
    benchmarks/bench_scale.py, not asserted here)."""
    n = 1 << 28  # 1 TiB of 4 KiB blocks
    rng = np.random.default_rng(5)
    starts = np.sort(rng.choice(n - 1000, 20000, replace=False))
    a = BlockMap.from_run_arrays(n, starts, rng.integers(1, 100, len(starts)))
    b = BlockMap.from_run_arrays(n, starts + 50, np.full(len(starts), 70))
    pa, pb = a.positions(), b.positions()
    assert ((a | b) & ~(a - b)).positions().tolist() == pb.tolist()
    assert a.count() == len(pa)
    starts_a, lengths_a = a.run_arrays()
    assert BlockMap.from_run_arrays(n, starts_a, lengths_a) == a
    assert (a & b).count() == len(np.intersect1d(pa, pb, assume_unique=True))


# ------------------------------------------------------- memory at one tebibyte
TiB = 1 << 40
#: the bound issue 16 sets on every command's peak RSS, whatever the volume's size
RSS_BOUND = 256 * MiB


#: runs the command line and, at exit, writes its own VmHWM (the peak resident set of
#: the process's memory since its exec: ru_maxrss would count the forking parent's)
_MEASURED = ("import atexit, pathlib, runpy, sys\n"
             "out, sys.argv = pathlib.Path(sys.argv[1]), ['blockforensics', *sys.argv[2:]]\n"
             "status = lambda: pathlib.Path('/proc/self/status').read_text().splitlines()\n"
             "atexit.register(lambda: out.write_text(next(\n"
             "    l for l in status() if l.startswith('VmHWM:')).split()[1]))\n"
             "runpy.run_module('blockforensics', run_name='__main__')\n")


def peak_rss(*args: str | Path) -> int:
    """Run ``blockforensics ARGS`` to its end; its peak resident set, in bytes."""
    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as out:
        done = subprocess.run([sys.executable, "-c", _MEASURED, out.name, *map(str, args)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stderr)
        return int(Path(out.name).read_text()) * 1024


def serving_rss(chain: Path, mountpoint: Path, expected: dict[int, bytes]) -> int:
    """Mount ``chain``, read ``expected`` (byte offset -> bytes) back from disk.raw, and
    return the serving process's peak resident set (bytes)."""
    with serving([sys.executable, "-m", "blockforensics", "mount", str(chain),
                  str(mountpoint)], mountpoint, timeout=60) as mount:
        with (mountpoint / "disk.raw").open("rb") as fh:
            for offset, data in expected.items():
                fh.seek(offset)
                assert fh.read(len(data)) == data
        status = Path(f"/proc/{mount.proc.pid}/status").read_text()
        return next(int(line.split()[1]) * 1024 for line in status.splitlines()
                    if line.startswith("VmHWM:"))


@pytest.mark.slow
def test_every_command_stays_under_256_mib_at_one_tebibyte(tmp_path: Path) -> None:
    """Peak RSS of backup, incremental (with and without a changed map), restore, verify,
    diff, export, mount and consolidate of a 1 TiB sparse volume (2^28 blocks) stays
    under the bound: nothing is held per block of the volume."""
    source = tmp_path / "tera.img"
    rng = np.random.default_rng(40)
    extents = {0: rng.bytes(MiB), 300 * GiB + 4096: rng.bytes(MiB), TiB - MiB: rng.bytes(MiB)}
    with source.open("wb") as fh:
        fh.truncate(TiB)
        for offset, data in extents.items():
            fh.seek(offset)
            fh.write(data)
    if len(data_extents(source)) < 2:
        pytest.skip("this file system does not report holes (SEEK_DATA/SEEK_HOLE)")
    chain, changes = tmp_path / "chain", tmp_path / "changed.npz"
    rss = {"backup": peak_rss("backup", source, chain, "--all-blocks")}
    positions = np.sort(rng.choice(TiB // 4096, 200, replace=False))
    with source.open("r+b") as fh:
        for position in positions.tolist():
            fh.seek(position * 4096)
            fh.write(rng.bytes(4096))
    BlockMap.from_positions(TiB // 4096, positions).save(changes)
    rss["incremental --changed"] = peak_rss("backup", source, chain, "--all-blocks",
                                            "--changed", changes)
    rss["incremental"] = peak_rss("backup", source, chain, "--all-blocks")
    restored = tmp_path / "restored.img"
    rss["restore"] = peak_rss("restore", chain, restored)
    for offset, length in [(0, MiB), (300 * GiB, 2 * MiB), (TiB - MiB, MiB),
                           *((int(p) * 4096, 4096) for p in positions[:20])]:
        assert sha256_at(restored, offset, length) == sha256_at(source, offset, length)
    restored.unlink()
    rss["verify"] = peak_rss("verify", chain)
    rss["diff"] = peak_rss("diff", chain, "0", "1")
    rss["export vhd-dynamic"] = peak_rss("export", chain, tmp_path / "tera.vhd",
                                         "--format", "vhd-dynamic")
    (tmp_path / "tera.vhd").unlink()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with source.open("rb") as fh:
        expected = {}
        for offset in (300 * GiB, int(positions[7]) * 4096):
            fh.seek(offset)
            expected[offset] = fh.read(8192)
    rss["mount"] = serving_rss(chain, mountpoint, expected)
    rss["consolidate"] = peak_rss("consolidate", chain)
    report = ", ".join(f"{name} {value / MiB:.0f} MiB" for name, value in rss.items())
    print(f"peak RSS at 1 TiB: {report}")
    assert all(value < RSS_BOUND for value in rss.values()), report


# ------------------------------------------------- investigation of many files
#: peak RSS a file of the volume may add to an investigation command: its Entry in the
#: two listings compared (measured 4-5 KiB a file in all); a histogram and head kept per
#: file (10-80 KiB each) break it
RSS_PER_FILE = 8 << 10


def _many_files(tmp_path: Path, n_files: int) -> Path:
    """A chain of two points of an ext4 volume (``mkfs.ext4 -d``) of ``n_files`` small
    files in directories of 500: the full, then 20 of them appended to (in their own
    blocks: nothing else moves)."""
    from sample_disks import make_ext4

    tree, chain = tmp_path / f"tree{n_files}", tmp_path / f"chain{n_files}"
    for i in range(n_files):
        folder = tree / f"d{i // 500:03d}"
        if i % 500 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i:06d}.txt").write_bytes(b"line %d\n" % i * (1 + i % 40))
    with Chain.create(chain) as opened:
        for point in range(2):
            if point:
                for i in range(0, n_files, n_files // 20):
                    with (tree / f"d{i // 500:03d}" / f"f{i:06d}.txt").open("ab") as fh:
                        fh.write(b"changed\n")
            image = make_ext4(tmp_path / f"v{n_files}.img", 256 * MiB, tree, (),
                              ("-b", "4096", "-N", str(n_files + 4096)))
            with RawDisk(image) as disk:
                backup(opened, disk)
    return chain


@pytest.mark.slow
def test_investigation_memory_grows_only_by_the_listings(tmp_path: Path) -> None:
    """diff --files and triage (every point: the full's 2 000 or 10 000 files created)
    of volumes of 2 000 and 10 000 files: the peak RSS grows by less than
    :data:`RSS_PER_FILE` per file (what the listings hold), not by the histograms and
    head of every file read (timeline: 1.6 GiB at 100 000 files before)."""
    small, large = 2_000, 10_000
    chains = {n: _many_files(tmp_path, n) for n in (small, large)}
    for command in (("diff", "0", "1", "--files", "--json"), ("triage", "--json")):
        rss = {n: peak_rss(command[0], chain, *command[1:]) for n, chain in chains.items()}
        per_file = (rss[large] - rss[small]) / (large - small)
        assert per_file < RSS_PER_FILE, (command, rss)

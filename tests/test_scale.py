"""Cost follows the data: sparse sources are read by their data extents only, an
incremental given a changed-block map reads only those blocks, and block maps of a
1 TiB volume (2^28 blocks) combine in tens of milliseconds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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


def test_block_maps_of_a_terabyte_combine_in_tens_of_milliseconds() -> None:
    n = 1 << 28  # 1 TiB of 4 KiB blocks
    rng = np.random.default_rng(5)
    starts = np.sort(rng.choice(n - 1000, 20000, replace=False))
    a = BlockMap.from_run_arrays(n, starts, rng.integers(1, 100, len(starts)))
    b = BlockMap.from_run_arrays(n, starts + 50, np.full(len(starts), 70))

    def best(f: object) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            f()  # type: ignore[operator]
            times.append(time.perf_counter() - started)
        return min(times)

    assert best(lambda: (a | b) & ~(a - b)) < 0.3
    assert best(a.count) < 0.1
    assert best(a.run_arrays) < 0.5
    starts_a, lengths_a = a.run_arrays()
    assert BlockMap.from_run_arrays(n, starts_a, lengths_a) == a
    assert (a & b).count() == len(np.intersect1d(a.positions(), b.positions(),
                                                          assume_unique=True))

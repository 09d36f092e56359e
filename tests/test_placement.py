"""Placement and PlacedWriter: disk bytes written where a layout wants them, from files
and from buffers, by a writer thread whose failures reach the caller."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from blockforensics import batch
from blockforensics.formats.placement import (
    COPY_BUFFER,
    Packing,
    PlacedWriter,
    Placement,
    data_runs,
    split_at,
)

GRAIN = 8192


def test_split_at_cuts_runs_exactly_at_grain_multiples():
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 100_000, 200)
    lengths = rng.integers(1, 30_000, 200)
    parts, part_lengths, run = split_at(starts, lengths, GRAIN)
    expected = []
    for i, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        pos, stop = start, start + length
        while pos < stop:
            end = min(stop, (pos // GRAIN + 1) * GRAIN)
            expected.append((pos, end - pos, i))
            pos = end
    assert list(zip(parts.tolist(), part_lengths.tolist(), run.tolist())) == expected


def test_placement_maps_placed_pieces_and_refuses_the_rest():
    placement = Placement(GRAIN, np.array([1, 4]), np.array([0, 7 * GRAIN]))
    offsets = np.array([0, GRAIN, GRAIN + 5, 2 * GRAIN, 4 * GRAIN + 9, 5 * GRAIN])
    assert placement(offsets).tolist() == [-1, 0, 5, -1, 7 * GRAIN + 9, -1]
    assert Placement.identity()(np.array([0, 1 << 40])).tolist() == [0, 1 << 40]


def scattered(n_pieces: int, seed: int) -> Placement:
    """Pieces of the disk shuffled over a file, with gaps between them; some unplaced."""
    rng = np.random.default_rng(seed)
    bases = rng.permutation(n_pieces).astype(np.int64) * (GRAIN + 512) + 512
    pieces = np.flatnonzero(rng.random(n_pieces) >= 0.2)
    return Placement(GRAIN, pieces, bases[pieces])


def expected_file(disk: bytes, placement: Placement, runs: list[tuple[int, int]], limit: int,
                  size: int) -> bytes:
    out = bytearray(size)
    for start, length in runs:
        for d in range(start, min(start + length, limit)):
            at = int(placement(np.array([d]))[0])
            out[at] = disk[d]
    return bytes(out)


@pytest.mark.parametrize("from_file", [True, False], ids=["from-file", "from-buffer"])
def test_write_puts_every_byte_at_its_place_and_stops_at_the_limit(from_file, tmp_path: Path):
    n_pieces = 24
    placement = scattered(n_pieces, seed=1)
    disk = np.random.default_rng(2).bytes(n_pieces * GRAIN)
    limit = len(disk) - 1000  # the disk ends inside its last piece
    placed = placement.pieces
    # runs inside placed pieces, some spanning several consecutive placed pieces
    runs = [(int(p) * GRAIN + 100, 3 * GRAIN) for p in placed[:-1]
            if p + 3 < n_pieces and np.isin(np.arange(p, p + 4), placed).all()]
    runs.append((int(placed[-1]) * GRAIN, GRAIN))  # reaches past the limit when last
    runs = sorted(set(runs))
    size = n_pieces * (GRAIN + 512) + 512
    out = tmp_path / "out"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    seen: list[tuple[int, int]] = []
    starts = np.array([r[0] for r in runs])
    lengths = np.array([r[1] for r in runs])
    try:
        os.ftruncate(fd, size)
        with PlacedWriter(fd, limit, placement, lambda at, n: seen.append((at, n))) as writer:
            if from_file:
                (tmp_path / "disk").write_bytes(disk)
                src = os.open(tmp_path / "disk", os.O_RDONLY)
                try:
                    writer.copy(src, starts, starts, lengths)
                finally:
                    os.close(src)
            else:
                writer.put(memoryview(disk), starts, starts, lengths)
    finally:
        os.close(fd)
    assert out.read_bytes() == expected_file(disk, placement, runs, limit, size)
    assert sum(n for _, n in seen) == sum(min(s + n, limit) - s for s, n in runs)


def test_bytes_without_a_place_are_refused(tmp_path: Path):
    placement = Placement(GRAIN, np.array([0]), np.array([0]))  # piece 1 has no place
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(ValueError, match="outside"), \
                PlacedWriter(fd, 2 * GRAIN, placement) as writer:
            writer.put(memoryview(bytes(2 * GRAIN)), [GRAIN - 10], [0], [20])
        assert os.fstat(fd).st_size == 0  # nothing was written
    finally:
        os.close(fd)


def reference_runs(data: bytes, block: int) -> list[tuple[int, int]]:
    """(offset, length) of the runs of data not made of all-zero blocks, block by block."""
    keep = [any(data[i : i + block]) or len(data) - i < block for i in range(0, len(data), block)]
    runs: list[tuple[int, int]] = []
    for i, k in enumerate(keep):
        if k and runs and runs[-1][0] + runs[-1][1] == i * block:
            runs[-1] = (runs[-1][0], runs[-1][1] + min(block, len(data) - i * block))
        elif k:
            runs.append((i * block, min(block, len(data) - i * block)))
    return runs


@pytest.mark.parametrize("native", [True, False], ids=["c", "numpy"])
@pytest.mark.parametrize("block", [512, 4096, 24])
def test_data_runs_leave_out_exactly_the_all_zero_blocks(native: bool, block: int,
                                                         monkeypatch: pytest.MonkeyPatch):
    """Random buffers of odd lengths with zero blocks at the edges and inside, blocks
    zero but for their last byte or their first: the C scan and the numpy one agree with
    a block-by-block reference."""
    if native and getattr(batch.native, "nonzero_runs", None) is None:
        pytest.skip("the C extension is not built")
    if not native:
        monkeypatch.setattr(batch, "native", None)
    rng = np.random.default_rng(block)
    for n_blocks, tail in [(1, 0), (0, 7), (1, 5), (9, 0), (16, block - 1), (33, 3)]:
        for _ in range(8):
            data = bytearray(rng.integers(1, 256, n_blocks * block + tail, dtype=np.uint8))
            for i in range(n_blocks):
                kind = rng.integers(4)
                if kind == 0 or (i in (0, n_blocks - 1) and rng.integers(2)):
                    data[i * block : (i + 1) * block] = bytes(block)  # zero, edges often
                elif kind == 1:  # zero but for one byte at an end
                    data[i * block : (i + 1) * block] = bytes(block)
                    data[i * block + (block - 1 if rng.integers(2) else 0)] = 1
            if tail and rng.integers(2):
                data[n_blocks * block :] = bytes(tail)  # a zero partial block is kept
            offsets, lengths = data_runs(memoryview(data), block)
            assert list(zip(offsets, lengths)) == reference_runs(bytes(data), block)


def test_copies_leave_zero_blocks_out_and_packing_places_only_written_pieces(tmp_path: Path):
    """Copied with ``holes``: all-zero 4 KiB blocks are not written (holes read as zeros),
    and a Packing gives slots, in order, only to the pieces something was written to."""
    grain = COPY_BUFFER  # pieces 0..4: 0 random, 1 zero, 2 random with a zero block, 3 zero
    data = bytearray(np.random.default_rng(4).bytes(4 * grain + 100))
    data[grain : 2 * grain] = bytes(grain)
    data[2 * grain + 4096 : 2 * grain + 8192] = bytes(4096)
    data[3 * grain : 4 * grain] = bytes(grain)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    packing = Packing(grain, 4096, grain + 4096)  # file blocks stay aligned
    try:
        with PlacedWriter(fd, len(data), packing, holes=4096) as writer:
            writer.copy(src, [0], [0], [len(data)])
    finally:
        os.close(src)
        os.close(fd)
    placed = packing.placed()
    assert placed.pieces.tolist() == [0, 2, 4]  # the last: 100 bytes, a partial block
    assert placed.bases.tolist() == [4096, grain + 8192, 2 * grain + 12288]
    out = (tmp_path / "out").read_bytes()
    for piece, base in zip(placed.pieces.tolist(), placed.bases.tolist()):
        assert out[base : base + grain] == bytes(data[piece * grain : (piece + 1) * grain])
    assert out[:4096] == bytes(4096)
    # the zero block inside piece 2 is a hole, not written
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    try:
        hole = grain + 8192 + 4096
        assert os.lseek(fd, hole, os.SEEK_HOLE) == hole
    finally:
        os.close(fd)


def test_packing_refuses_a_piece_written_after_a_later_one(tmp_path: Path):
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(ValueError, match="outside"), \
                PlacedWriter(fd, 4 * GRAIN, Packing(GRAIN, 0, GRAIN)) as writer:
            writer.put(memoryview(bytes(GRAIN)), [2 * GRAIN], [0], [GRAIN])
            writer.put(memoryview(bytes(GRAIN)), [0], [0], [GRAIN])
    finally:
        os.close(fd)


def test_identity_copies_long_runs_through_the_buffers(tmp_path: Path):
    data = np.random.default_rng(3).bytes(5 * COPY_BUFFER + 12345)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with PlacedWriter(fd, len(data)) as writer:
            writer.copy(src, [0], [0], [len(data)])
    finally:
        os.close(src)
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == data


def test_a_failed_write_reaches_the_caller(tmp_path: Path):
    (tmp_path / "src").write_bytes(bytes(3 * COPY_BUFFER))
    src = os.open(tmp_path / "src", os.O_RDONLY)
    read_only = os.open(tmp_path / "src", os.O_RDONLY)  # every pwrite fails with EBADF
    try:
        with pytest.raises(OSError) as failure, PlacedWriter(read_only, 3 * COPY_BUFFER) as w:
            w.copy(src, [0], [0], [3 * COPY_BUFFER])
        assert failure.value.errno == errno.EBADF
    finally:
        os.close(src)
        os.close(read_only)


def test_the_callers_own_failure_is_what_it_sees(tmp_path: Path):
    """A reader that fails mid-way gets its own exception back, not a writer's, and
    leaving the writer does not wait on writes nobody will queue."""
    read_only = os.open(tmp_path, os.O_RDONLY)  # writes would fail too
    try:
        with pytest.raises(KeyError, match="the reader failed"), \
                PlacedWriter(read_only, 1 << 30) as writer:
            writer.put(memoryview(bytes(100)), [0], [0], [100])
            raise KeyError("the reader failed")
    finally:
        os.close(read_only)


def test_jobs_run_in_turn_with_the_writes_and_a_failed_one_stops_all_after_it(
        tmp_path: Path):
    """Jobs (which write into the file themselves) are started by the writer thread in the
    order they were handed over, between the buffers' writes, and each finished before
    the one after the next starts; ``written`` hears of each range a job wrote, in order;
    after a job fails nothing more is written, and leaving raises its error."""
    n, size, bad = 10, 64 * 1024, 5  # buffers even, jobs odd
    rng = np.random.default_rng(5)
    data = [rng.bytes(size) for _ in range(n)]
    events: list[tuple[str, int]] = []

    def job(i: int, fd: int) -> Callable[[], list[tuple[int, int]]]:
        events.append(("job", i))
        os.pwrite(fd, data[i], i * size)

        def finish() -> list[tuple[int, int]]:
            events.append(("finish", i))
            if i == bad:
                raise ValueError(f"job {i} failed")
            return [(i * size, size)]
        return finish

    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, n * size)
        with pytest.raises(ValueError, match=f"job {bad} failed"), \
                PlacedWriter(fd, n * size, written=lambda offset, nbytes:
                             events.append(("written", offset // size))) as writer:
            for i in range(n):
                with contextlib.suppress(ValueError):  # the failure may reach the caller first
                    if i % 2:
                        writer.run(functools.partial(job, i))
                    else:
                        writer.put(memoryview(data[i]), [i * size], [0], [size])
    finally:
        os.close(fd)
    out = (tmp_path / "out").read_bytes()
    written = [i for what, i in events if what == "written"]
    assert written == list(range(bad))
    assert [i for what, i in events if what == "job"] == [1, 3, 5]
    assert [i for what, i in events if what == "finish"] == [1, 3, 5]
    assert not [i for what, i in events if i > bad]
    for i in range(n):
        assert out[i * size : (i + 1) * size] == (data[i] if i <= bad else bytes(size))


def test_the_c_scan_refuses_a_short_out_and_a_bad_block():
    native = getattr(batch.native, "nonzero_runs", None)
    if native is None:
        pytest.skip("the C extension is not built")
    with pytest.raises(ValueError, match="out holds"):
        native(bytes(8192), 4096, np.empty(5, np.int64))
    with pytest.raises(ValueError, match="positive"):
        native(bytes(8192), 0, np.empty(6, np.int64))

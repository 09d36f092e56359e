"""Byte plans: a served image file as a table of segments read straight from files.

A :class:`~blockforensics.formats.layout.FileLayout` synthesises its file from a Disk,
block by block through Python.  When the disk's blocks sit verbatim in files (a plain
chain point, whose verbatim payloads *are* its blocks; a raw image file), each byte of
the served file is either a zero, a byte of the layout's metadata, or a byte at a known
offset of a known file.  A :class:`FilePlan` lists those segments in file order, and a
:class:`Source` lists the stored blocks of one file with the digests a reader must check
before handing their bytes out: what the C FUSE server (``blockforensics._fuseserve``)
serves from, with no Python per read.

Memory does not grow with the volume: a plan is built ``ROWS`` rows at a time from the
chain's index (in position order: no sort of the whole) into a
:class:`Spill`, an unlinked temporary file whose arrays are then handed out as read-only
mappings (25 bytes a stored block, 28 a segment: for 16 Mi blocks, 400 MiB of file, of
which a reader maps only what it touches, and the C server drops what it mapped as it
goes).  Units: bytes throughout, except block positions.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout

if TYPE_CHECKING:
    from blockforensics.image.reader import ChainDisk

#: rows built at a time: blocks of the chain's index (14 MiB of its records, 60 MiB of
#: numpy temporaries in all), pieces and extents of a file plan; whatever the volume's size
ROWS = 1 << 18
ZERO_CHUNK = 4096  # bytes of metadata tested for all zeros at a time (left out of plans)
ZEROS = -1  # a segment of zeros
METADATA = -2  # a segment of the plan's metadata blob


class Spill:
    """An unlinked temporary file holding a plan's arrays, each a :class:`Column` in a
    region of its own (sized by a bound on its rows; what is not written stays a hole),
    handed out as read-only shared mappings.

    It lies in the temporary directory (``$TMPDIR``, else ``/tmp``: ``tempfile``'s
    choice), not next to the chain: a chain may lie on read-only or evidence media that
    must not be written to, and ``$TMPDIR`` is where an operator points scratch data.  A
    file system with no room is a one-line :class:`UsageError` (exit 2)."""

    def __init__(self) -> None:
        self.directory = tempfile.gettempdir()
        self._fd = -1
        try:
            self._fd, path = tempfile.mkstemp(prefix="blockforensics-plan-",
                                              dir=self.directory)
        except OSError as exc:
            raise self._no_room(exc) from exc
        os.unlink(path)  # gone with the last descriptor or mapping of it
        self._end = 0  # bytes allotted to columns
        self.maps: list[mmap.mmap] = []  # every mapping handed out

    def _no_room(self, exc: OSError) -> UsageError:
        return UsageError(f"{self.directory}: no room for the byte plan ({exc.strerror}); "
                          "set TMPDIR to a directory with room (25 bytes per stored block)")

    def column(self, bound: int, dtype: type | np.dtype, width: int = 0) -> Column:
        """A new column of at most ``bound`` rows of ``dtype`` (``width`` of them a row
        when not 0)."""
        column = Column(self, self._end, max(bound, 0), np.dtype(dtype), width)
        self._end += -(-column.bound * column.row_bytes // mmap.ALLOCATIONGRANULARITY) \
            * mmap.ALLOCATIONGRANULARITY
        return column

    def write(self, data: np.ndarray, at: int) -> None:
        """Write ``data`` (contiguous) at byte ``at`` of the file."""
        view = data.data.cast("B")
        try:
            while view:
                done = os.pwrite(self._fd, view, at)
                view, at = view[done:], at + done
        except OSError as exc:
            raise self._no_room(exc) from exc

    def map(self, at: int, length: int) -> mmap.mmap:
        """Bytes ``at .. at+length`` of the file (``at`` a multiple of the mapping
        granularity), mapped read-only."""
        mapping = mmap.mmap(self._fd, length, access=mmap.ACCESS_READ, offset=at)
        self.maps.append(mapping)
        return mapping

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # the mappings keep the file

    def drop(self) -> None:
        """Drop the pages of every mapping from this process's (the page cache keeps
        them; a later touch maps them again): RSS stays that of what is in use."""
        for mapping in self.maps:
            mapping.madvise(mmap.MADV_DONTNEED)


@dataclass
class Column:
    """An array written ``append`` by ``append`` into a region of a :class:`Spill`."""

    spill: Spill
    at: int  # bytes: where its region starts in the spill
    bound: int  # rows the region holds
    dtype: np.dtype
    width: int  # items a row (0: a row is one item)
    rows: int = 0  # rows written
    _array: np.ndarray | None = field(default=None, repr=False)

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * max(self.width, 1)

    def append(self, values: np.ndarray) -> None:
        """Write ``values`` (rows of this column's shape) after the rows written."""
        values = np.ascontiguousarray(values, self.dtype)
        if not len(values):
            return
        if self.rows + len(values) > self.bound:
            raise ValueError(f"a plan's column overflows its bound of {self.bound} rows")
        self.spill.write(values, self.at + self.rows * self.row_bytes)
        self.rows += len(values)

    def array(self) -> np.ndarray:
        """The rows written, read-only (mapped from the spill; none: an empty array)."""
        if self._array is None:
            shape = (self.rows, self.width) if self.width else (self.rows,)
            if self.rows == 0:
                self._array = np.zeros(shape, self.dtype)
            else:
                mapping = self.spill.map(self.at, self.rows * self.row_bytes)
                self._array = np.frombuffer(mapping, self.dtype).reshape(shape)
        return self._array


@dataclass(frozen=True)
class Source:
    """A file the disk's bytes are read from, and the stored blocks in it to check.

    ``positions`` (ascending: the disk block each one is), ``digests`` ((n, 16) uint8,
    the stored digest) and ``crc`` (uint8: 1 where that digest is the CRC-32 form, 4
    little-endian bytes then zeros, else SHA-256/128) of each ``block_size``-byte stored
    block; a block is found through the plans' segments, which say which disk byte each
    of their bytes is.  None for a file with no digests (raw)."""

    fd: int
    name: str
    block_size: int
    positions: np.ndarray
    digests: np.ndarray
    crc: np.ndarray


@dataclass(frozen=True)
class DiskPlan:
    """Where each byte of a disk comes from: runs tiling ``[0, size)`` from ``starts``
    (ascending, the first 0), each reading ``sources[k]`` (an index into ``files``, or
    ``ZEROS``) from its byte ``offsets[k]``; a last run of zeros starts at ``size``.
    Its arrays are mapped from ``spill``."""

    size: int
    starts: np.ndarray
    sources: np.ndarray
    offsets: np.ndarray
    files: list[Source]
    spill: Spill


@dataclass(frozen=True)
class FilePlan:
    """A served file of ``size`` bytes as segments tiling it from ``starts`` (ascending,
    the first 0): ``kinds[k]`` is an index into the disk plan's files, ``ZEROS`` or
    ``METADATA``; ``offsets[k]`` the byte of that file (or of ``blob``) it starts at;
    ``disks[k]`` the disk byte it starts at (a segment of a file; else its own start).
    Its arrays are mapped from ``spill``."""

    size: int
    starts: np.ndarray
    kinds: np.ndarray
    offsets: np.ndarray
    disks: np.ndarray
    blob: np.ndarray
    spill: Spill

    def window(self, start: int, length: int) -> FilePlan:
        """The plan of bytes ``start .. start+length`` of this file, as a file of its own."""
        length = max(length, 0)
        first = max(0, int(np.searchsorted(self.starts, start, side="right")) - 1)
        stop = max(first + 1, int(np.searchsorted(self.starts, start + length, side="left")))
        if length == 0:
            stop = first
        out = _Segments(self.spill, stop - first, disks=True)
        for lo in range(first, stop, ROWS):
            hi = min(lo + ROWS, stop)
            starts, kinds = self.starts[lo:hi] - start, self.kinds[lo:hi]
            offsets, disks = self.offsets[lo:hi].copy(), self.disks[lo:hi].copy()
            if lo == first:  # the first segment, cut at the window's start
                offsets[0] += -starts[0] * (kinds[0] != ZEROS)
                disks[0] -= starts[0]
                starts[0] = 0
            out.write(starts, kinds, offsets, disks)
            self.spill.drop()
        starts, kinds, offsets, disks = out.arrays()
        return FilePlan(length, starts, kinds, offsets, disks, self.blob, self.spill)


class _Segments:
    """The columns of a table of segments (starts, kinds, offsets and, with ``disks``,
    disk bytes) of at most ``bound`` rows."""

    def __init__(self, spill: Spill, bound: int, disks: bool):
        self.columns = [spill.column(bound, np.int64), spill.column(bound, np.int32),
                        spill.column(bound, np.int64)]
        if disks:
            self.columns.append(spill.column(bound, np.int64))

    def write(self, *arrays: np.ndarray) -> None:
        for column, values in zip(self.columns, arrays):
            column.append(values)

    def arrays(self) -> list[np.ndarray]:
        return [column.array() for column in self.columns]


class _Tiling:
    """Segments tiling ``[0, size)``, written to a :class:`_Segments` as pieces come in
    file order (:meth:`add`): the gaps between them filled with zeros, and pieces that
    continue one another (the same kind, the next bytes of its file and of the disk)
    merged.  Memory: the pieces of one :meth:`add`."""

    def __init__(self, spill: Spill, bound: int, size: int, disks: bool):
        self.out = _Segments(spill, bound, disks)
        self.size = size
        self._disks = disks
        self._end = 0  # where the pieces so far end
        # the last segment, held back: the next piece may continue it
        self._last: list[np.ndarray] = [np.zeros(0, np.int64), np.zeros(0, np.int32),
                                        np.zeros(0, np.int64), np.zeros(0, np.int64)]

    def add(self, starts: np.ndarray, ends: np.ndarray, kinds: np.ndarray,
            offsets: np.ndarray, disks: np.ndarray | None = None) -> None:
        """Pieces ``[starts, ends)`` (ascending, not overlapping, from where the last
        ones ended), each reading kind ``kinds`` from ``offsets`` (disk bytes ``disks``;
        default: their starts)."""
        if not len(starts):
            return
        starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        disks = starts if disks is None else np.asarray(disks, np.int64)
        gap_starts = np.r_[self._end, ends[:-1]].astype(np.int64)
        gaps = gap_starts < starts
        # each piece after the gap before it, if any
        s = np.column_stack([gap_starts, starts]).ravel()
        k = np.column_stack([np.full(len(starts), ZEROS, np.int32),
                             np.asarray(kinds, np.int32)]).ravel()
        o = np.column_stack([np.zeros(len(starts), np.int64),
                             np.asarray(offsets, np.int64)]).ravel()
        d = np.column_stack([gap_starts, disks]).ravel()
        keep = np.column_stack([gaps, np.ones(len(starts), bool)]).ravel()
        s, k, o, d = (np.r_[held, new[keep]] for held, new in zip(self._last, (s, k, o, d)))
        step = s[1:] - s[:-1]
        continues = (k[1:] == k[:-1]) & ((k[1:] == ZEROS)
                                         | ((o[1:] - o[:-1] == step) & (d[1:] - d[:-1] == step)))
        keep = np.r_[True, ~continues]
        s, k, o, d = s[keep], k[keep], o[keep], d[keep]
        self.out.write(s[:-1], k[:-1], o[:-1], *([d[:-1]] if self._disks else []))
        self._last = [s[-1:], k[-1:], o[-1:], d[-1:]]
        self._end = int(ends[-1])

    def finish(self) -> list[np.ndarray]:
        """The segments' arrays, once zeros fill the file past the last piece."""
        if self._end < self.size:
            self.add(np.array([self._end]), np.array([self.size]), np.array([ZEROS]),
                     np.zeros(1, np.int64))
        last = self._last
        self.out.write(*(last if self._disks else last[:3]))
        return self.out.arrays()


def disk_plan(disk: Disk) -> DiskPlan | None:
    """The plan of ``disk`` when its bytes can be read from files as they are: a chain
    point with no encrypted or compressed block, or a raw image file; else None."""
    from blockforensics.formats.raw import RawDisk
    from blockforensics.image.reader import ChainDisk

    if isinstance(disk, RawDisk):
        spill = Spill()
        none = np.zeros(0, np.int64)
        raw = Source(disk.fileno(), disk.path, disk.block_size, none,
                     np.zeros((0, 16), np.uint8), np.zeros(0, np.uint8))
        tiling = _Tiling(spill, 2, disk.size, disks=False)
        tiling.add(np.zeros(1), np.array([disk.size]), np.zeros(1), np.zeros(1))
        starts, sources, offsets = tiling.finish()
        return DiskPlan(disk.size, starts, sources, offsets, [raw], spill)
    if isinstance(disk, ChainDisk):
        return _chain_plan(disk)
    return None


def _chain_plan(disk: ChainDisk) -> DiskPlan | None:
    from blockforensics.image.format import (
        DIGEST_SIZE,
        ENCODING_FLAGS,
        FLAG_CRC32,
        FLAG_ZERO,
        digest_rows,
    )
    from blockforensics.image.layout import contiguous_runs

    if disk.chain.codec.encrypted:
        return None
    layout, bs, spill = disk.layout, disk.block_size, Spill()
    # per image of the path: (positions, digests, crc) of the verbatim blocks it supplies
    # (25 bytes a block, not the index records' 56), in position order, window by window
    counts = [len(image.index) if disk.check else 0 for image in layout.images]
    found = [(spill.column(n, np.int64), spill.column(n, np.uint8, DIGEST_SIZE),
              spill.column(n, np.uint8)) for n in counts]
    tiling = _Tiling(spill, 2 * sum(len(image.index) for image in layout.images) + 2,
                     disk.size, disks=False)
    for start in range(0, layout.n_blocks, ROWS):
        window = layout.owners(start, ROWS)
        pieces = []
        for depth, rows, records in window.by_image():
            encoding = records["flags"] & ENCODING_FLAGS
            if np.any((encoding != 0) & (encoding != FLAG_ZERO)):
                return None  # compressed blocks: decoded by the Python reader
            mine = records.compress(encoding == 0)
            positions = window.start + rows[encoding == 0]
            if disk.check:
                found[depth][0].append(positions)
                found[depth][1].append(digest_rows(mine["stored_digest"]))
                found[depth][2].append((mine["flags"] & FLAG_CRC32) != 0)
            first, at, count = contiguous_runs(positions, mine["offset"].astype(np.int64), bs)
            pieces.append((first * bs, np.minimum((first + count) * bs, disk.size),
                           np.full(len(first), depth), at))
        if pieces:  # the last block's bytes past the disk's end: zeros
            starts, ends, kinds, offsets = (np.concatenate(part) for part in zip(*pieces))
            order = np.argsort(starts, kind="stable")
            tiling.add(starts[order], ends[order], kinds[order], offsets[order])
    files = [Source(image.fileno(), image.name, bs, *(column.array() for column in columns))
             for image, columns in zip(layout.images, found, strict=True)]
    starts, sources, offsets = tiling.finish()
    return DiskPlan(disk.size, starts, sources, offsets, files, spill)


def _runs_at(plan: DiskPlan, runs: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(starts, ends, sources, offsets)`` of the disk plan's runs ``runs`` (run
    ``len(plan.starts)``: the zeros past the disk's end, to no end)."""
    n = len(plan.starts)
    inside = np.minimum(runs, n - 1)
    past = runs >= n
    after = np.minimum(runs + 1, n - 1)
    starts = np.where(past, plan.size, plan.starts[inside])
    ends = np.where(runs + 1 >= n, np.where(past, np.iinfo(np.int64).max, plan.size),
                    plan.starts[after])
    return (starts, ends, np.where(past, ZEROS, plan.sources[inside]),
            np.where(past, 0, plan.offsets[inside]))


def _runs_of(plan: DiskPlan, d: np.ndarray, length: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(first, stop)``: the disk extents ``[d, d + length)`` meet runs ``first ..
    stop - 1`` of the plan (run ``len(plan.starts)`` being the zeros past its end)."""
    first = np.searchsorted(plan.starts, d, side="right") - 1 + (d >= plan.size)
    stop = np.searchsorted(plan.starts, d + length, side="left") + (d + length > plan.size)
    return first, np.maximum(stop, first + 1)


def file_plan(layout: FileLayout, plan: DiskPlan) -> FilePlan:
    """The plan of ``layout``'s file, its data read as ``plan`` says (``plan`` must be that
    of ``layout.disk``); built ``ROWS`` extents and pieces at a time."""
    starts, lengths, source, meta = layout._extents
    spill = plan.spill
    data = source >= 0
    # the bound of its segments: its pieces (each data extent's runs, each metadata
    # extent's chunks) and the gaps between them
    pieces = 0
    for lo in range(0, len(starts), ROWS):
        mine = data[lo : lo + ROWS]
        first, stop = _runs_of(plan, source[lo : lo + ROWS][mine], lengths[lo : lo + ROWS][mine])
        pieces += int((stop - first).sum())
        spill.drop()
    blob_bytes = sum(len(piece) for piece in meta)
    pieces += sum(-(-len(piece) // ZERO_CHUNK) for piece in meta)
    tiling = _Tiling(spill, 2 * pieces + 2, layout.file_size, disks=True)
    blob = spill.column(blob_bytes, np.uint8)
    for lo in range(0, len(starts), ROWS):
        hi = min(lo + ROWS, len(starts))
        mine = data[lo:hi]
        at, d, length = starts[lo:hi][mine], source[lo:hi][mine], lengths[lo:hi][mine]
        meta_start, meta_end, meta_offset, meta_bytes = _metadata_runs(
            starts[lo:hi], source[lo:hi], meta)
        meta_offset += blob.rows
        blob.append(np.frombuffer(meta_bytes, np.uint8))
        first, stop = _runs_of(plan, d, length)
        count = stop - first
        ends = np.cumsum(count)  # the chunk's pieces, numbered: extent i's end at ends[i]
        total = int(ends[-1]) if len(ends) else 0
        taken = 0  # metadata runs added
        for p in range(0, max(total, 1), ROWS):
            number = np.arange(p, min(p + ROWS, total), dtype=np.int64)
            extent = np.searchsorted(ends, number, side="right")
            run = first[extent] + number - (ends[extent] - count[extent])
            run_start, run_end, run_source, run_offset = _runs_at(plan, run)
            piece_disk = np.maximum(run_start, d[extent])
            piece_end = np.minimum(run_end, d[extent] + length[extent])
            piece_start = at[extent] + piece_disk - d[extent]
            piece_offset = np.where(run_source == ZEROS, 0, run_offset + piece_disk - run_start)
            # the metadata runs before the next batch's first piece
            until = (len(meta_start) if p + ROWS >= total else
                     int(np.searchsorted(meta_start, at[np.searchsorted(ends, p + ROWS,
                                                                        side="right")])))
            m = slice(taken, until)
            taken = until
            all_starts = np.r_[piece_start, meta_start[m]]
            order = np.argsort(all_starts, kind="stable")
            tiling.add(all_starts[order],
                       np.r_[piece_start + piece_end - piece_disk, meta_end[m]][order],
                       np.r_[run_source, np.full(until - m.start, METADATA)][order],
                       np.r_[piece_offset, meta_offset[m]][order],
                       np.r_[piece_disk, meta_start[m]][order])
            spill.drop()
    s, k, o, dk = tiling.finish()
    return FilePlan(layout.file_size, s, k, o, dk, blob.array(), spill)


def _metadata_runs(starts: np.ndarray, source: np.ndarray, meta: list[bytes | bytearray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """The metadata pieces (extents with ``source < 0``) but their all-zero
    ``ZERO_CHUNK``-byte chunks (the tables of a sparse disk), as runs: ``(file starts,
    file ends, offsets in the blob, the blob)``; what is left out reads as zeros."""
    run_starts: list[int] = []
    run_ends: list[int] = []
    parts: list[np.ndarray] = []
    for start, j in zip(starts[source < 0].tolist(), (-1 - source[source < 0]).tolist()):
        data = np.frombuffer(meta[j], np.uint8)
        whole = len(data) // ZERO_CHUNK * ZERO_CHUNK
        flags = np.r_[data[:whole].reshape(-1, ZERO_CHUNK).any(axis=1),
                      [data[whole:].any()] if len(data) > whole else []].astype(bool)
        edges = np.flatnonzero(np.diff(np.r_[False, flags, False])) * ZERO_CHUNK
        for lo, hi in zip(edges[0::2].tolist(), np.minimum(edges[1::2], len(data)).tolist()):
            run_starts.append(start + lo)
            run_ends.append(start + hi)
            parts.append(data[lo:hi])
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.cumsum(np.r_[0, lengths])[:-1].astype(np.int64)
    return (np.array(run_starts, dtype=np.int64), np.array(run_ends, dtype=np.int64),
            offsets, b"".join(part.data for part in parts))

"""Layout: where every block of one point comes from — the reading rule of docs/FORMAT.md
applied to the images on the point's path (root first)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.image.format import DIGEST_SIZE, FLAG_ZERO, digest_rows
from blockforensics.image.imagefile import ImageFile


def contiguous_runs(rows: np.ndarray, offsets: np.ndarray, step: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of records that sit at consecutive rows *and* at byte offsets ``step`` apart
    (``step``: bytes per record): ``(first rows, first offsets, lengths in records)`` —
    each run is one read or copy."""
    if len(rows) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    rows, offsets = np.asarray(rows, np.int64), np.asarray(offsets, np.int64)
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(offsets) != step)) + 1
    starts = np.r_[0, breaks]
    return rows[starts], offsets[starts], np.diff(np.r_[starts, len(rows)])


#: blocks resolved per window by the whole-point passes (present, digests, changed):
#: 1 Mi blocks = 10 MiB of holders (int16) and rows (int64), whatever the volume's size
WINDOW = 1 << 20


@functools.lru_cache(maxsize=4)
def _zeros(count: int, dtype: str) -> np.ndarray:
    out = np.zeros(count, dtype=dtype)
    out.flags.writeable = False
    return out


def _nobody(count: int, dtype: str) -> np.ndarray:
    """``count`` read-only zeros, shared: the holders and rows of an empty window
    (allocating and clearing megabytes per window would cost more than the window)."""
    return _zeros(max(WINDOW, count), dtype)[:count]


def spans(n_blocks: int) -> Iterator[tuple[int, int]]:
    """``(start, count)`` of the windows of ``WINDOW`` blocks covering ``n_blocks``."""
    for start in range(0, n_blocks, WINDOW):
        yield start, min(WINDOW, n_blocks - start)


@dataclass
class Owners:
    """Which image holds each block of one window of a point.

    ``holder[i]`` is 1 + the depth (0 = root) of the image holding block ``start + i``,
    or 0 where none does (the block reads as zeros); ``row[i]`` is the row of its
    record in ``records[holder[i] - 1]``, the records each image on the path holds in
    the window.  (Zero for "none" lets an empty window cost no memory writes.)
    """

    start: int  # blocks
    holder: np.ndarray  # int16, one per block of the window
    row: np.ndarray  # int64, one per block of the window
    records: list[np.ndarray]  # per depth: INDEX_DTYPE records inside the window

    @property
    def empty(self) -> bool:
        """No image holds a block of the window."""
        return not any(len(records) for records in self.records)

    def digests(self, count: int, zero_digest: np.ndarray) -> np.ndarray:
        """``(count, 16)`` content digests of the window's blocks (``count`` may reach
        past the point's end); blocks no image holds get ``zero_digest``."""
        out = np.empty((count, DIGEST_SIZE), dtype=np.uint8)
        out[:] = zero_digest
        for _, rows, records in self.by_image():
            out[rows] = digest_rows(records["content_digest"])
        return out

    def held(self) -> np.ndarray:
        """Rows (counted from ``start``) of the blocks some image holds, ascending."""
        return np.zeros(0, np.int64) if self.empty else np.flatnonzero(self.holder)

    def digests_of(self, rows: np.ndarray, zero_digest: np.ndarray) -> np.ndarray:
        """``(len(rows), 16)`` content digests of the window's blocks at ``rows``
        (ascending; rows past the point's end read as zeros); blocks no image holds get
        ``zero_digest``."""
        out = np.empty((len(rows), DIGEST_SIZE), dtype=np.uint8)
        out[:] = zero_digest
        if not self.empty:
            rows = rows[rows < len(self.holder)]
            holder = self.holder[rows]
            for depth in np.flatnonzero(np.bincount(holder)[1:]).tolist():
                at = np.flatnonzero(holder == depth + 1)
                records = self.records[depth].take(self.row[rows[at]])
                out[at] = digest_rows(records["content_digest"])
        return out

    def by_image(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(depth, rows, records)``: for each image holding some blocks of the window,
        their rows (counted from ``start``) and their records."""
        if self.empty:
            return
        # np.bincount, not np.unique: unique of int16 costs milliseconds even when small;
        # take, not fancy indexing: that copies records field by field, ten times slower
        for depth in np.flatnonzero(np.bincount(self.holder)[1:]).tolist():
            rows = np.flatnonzero(self.holder == depth + 1)
            records = self.records[depth]
            # all of an image's records hold blocks (none taken over): they are in the
            # order of their rows already (a full image's window: no copy of the records)
            yield depth, rows, records if len(rows) == len(records) else records.take(
                self.row[rows])


@dataclass
class Layout:
    """Where every block of one point comes from: the images on its path (root first),
    resolved window by window from their on-disk indexes, so memory does not grow with
    the volume."""

    images: list[ImageFile]  # the path, root first
    size: int  # bytes of the volume at this point
    block_size: int  # bytes

    @property
    def n_blocks(self) -> int:
        return -(-self.size // self.block_size)

    def owners(self, start: int, count: int) -> Owners:
        """The reading rule of docs/FORMAT.md for blocks ``start .. start+count-1``
        (clipped to the point): each image of the path, root first, takes over the blocks
        it holds; blocks past an image's ``inherit_blocks`` are no longer inherited."""
        start = max(0, start)
        count = max(0, min(count, self.n_blocks - start))
        end = start + count
        pieces = [img.index.read(*img.index.rows_between(start, end)) for img in self.images]
        if not any(len(records) for records in pieces):  # most windows of a sparse volume
            return Owners(start, _nobody(count, "int16"), _nobody(count, "int64"), pieces)
        holder = np.zeros(count, dtype=np.int16)
        row = np.zeros(count, dtype=np.int64)
        for depth, (img, records) in enumerate(zip(self.images, pieces)):
            cut = img.header.inherit_blocks
            if cut < end:
                holder[max(cut - start, 0):] = 0  # what lay past a shrink is gone
            if len(records):
                at = records["position"].astype(np.int64) - start
                holder[at] = depth + 1
                row[at] = np.arange(len(records))
        return Owners(start, holder, row, pieces)

    def windows(self) -> Iterator[Owners]:
        """:meth:`owners` of the whole point, a window of :data:`WINDOW` blocks at a time."""
        for start, count in spans(self.n_blocks):
            yield self.owners(start, count)

    def window(self, start: int, count: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(depth, rows, index records)`` of blocks ``start .. start+count-1``: for each
        image holding some of them, their rows (counted from ``start``) and records."""
        return self.owners(start, count).by_image()

    def present(self) -> BlockMap:
        """Blocks that hold stored, non-zero data at this point."""
        out = BlockMap.empty(self.n_blocks, self.block_size)
        for window in self.windows():
            if window.empty:
                continue
            flags = np.zeros(len(window.holder), dtype=bool)
            for depth, records in enumerate(window.records):  # their flags, not copies of
                if len(records):  # the whole records (56 MiB a window)
                    rows = np.flatnonzero(window.holder == depth + 1)
                    flags[rows] = (records["flags"].take(window.row[rows]) & FLAG_ZERO) == 0
            out.assign(window.start, flags)
        return out

    def supplied(self, depth: int) -> BlockMap:
        """Blocks whose record, at this point, comes from image ``depth`` of the path
        (zero blocks included)."""
        out = BlockMap.empty(self.n_blocks, self.block_size)
        for window in self.windows():
            if len(window.records[depth]):
                out.assign(window.start, window.holder == depth + 1)
        return out

    def digests(self, start: int, count: int, zero_digest: np.ndarray) -> np.ndarray:
        """``(count, 16)`` content digests of blocks ``start .. start+count-1``; absent
        blocks, and blocks past the point's end, get ``zero_digest``."""
        return self.owners(start, count).digests(max(count, 0), zero_digest)

    def digest_windows(self, zero_digest: np.ndarray, n_blocks: int | None = None
                       ) -> Iterator[np.ndarray]:
        """:meth:`digests` of blocks ``0 .. n_blocks-1`` (default: the point's), window by
        window (:func:`spans`; past the point's end: ``zero_digest``).  Windows that no
        image touches share one read-only array."""
        n_blocks = self.n_blocks if n_blocks is None else n_blocks
        blank: np.ndarray | None = None
        for start, count in spans(n_blocks):
            window = self.owners(start, count)
            if not window.empty:
                yield window.digests(count, zero_digest)
                continue
            if blank is None or len(blank) != count:
                blank = np.empty((count, DIGEST_SIZE), dtype=np.uint8)
                blank[:] = zero_digest
                blank.flags.writeable = False
            yield blank

    def digests_at(self, positions: np.ndarray, zero_digest: np.ndarray) -> np.ndarray:
        """``(len(positions), 16)`` content digests of the blocks at the ascending
        ``positions``; absent ones, and positions past the point's end, get
        ``zero_digest``.  Only the index rows around those positions are read."""
        positions = np.asarray(positions, np.int64)
        out = np.empty((len(positions), DIGEST_SIZE), dtype=np.uint8)
        out[:] = zero_digest
        inside = np.flatnonzero(positions < self.n_blocks)
        for img in self.images:  # the reading rule, as in owners()
            out[inside[positions[inside] >= img.header.inherit_blocks]] = zero_digest
            held, records = img.index.find(positions[inside])
            out[inside[held]] = digest_rows(records["content_digest"])
        return out

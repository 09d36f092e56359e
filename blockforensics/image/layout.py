"""Layout: where every block of one point comes from — the reading rule of docs/FORMAT.md
applied to the images on the point's path (root first)."""

from __future__ import annotations

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


def _depths(owner: np.ndarray) -> list[int]:
    """The image depths found in a slice of ``Layout.owner`` (-1: none), ascending.
    (``np.unique`` of int16 costs milliseconds even for a few elements in numpy 2.)"""
    return np.flatnonzero(np.bincount(owner[owner >= 0])).tolist()


@dataclass
class Layout:
    """Where every block of one point comes from.

    ``owner[p]`` is the depth (0 = root) on ``images`` of the image holding
    block ``p``, or -1 (zeros); ``entry[p]`` is the row of its index record.
    """

    images: list[ImageFile]  # the path, root first
    owner: np.ndarray  # int16, one per block
    entry: np.ndarray  # int64, one per block
    size: int  # bytes of the volume at this point
    block_size: int

    @property
    def n_blocks(self) -> int:
        return len(self.owner)

    def records(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, index records)`` that image ``depth`` contributes to this point."""
        positions = np.flatnonzero(self.owner == depth)
        return positions, self.images[depth].index[self.entry[positions]]

    def window(self, start: int, count: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(depth, rows, index records)`` of blocks ``start .. start+count-1``: for each
        image holding some of them, their rows (counted from ``start``) and records."""
        owner = self.owner[start : start + count]
        entry = self.entry[start : start + count]
        for depth in _depths(owner):
            rows = np.flatnonzero(owner == depth)
            yield depth, rows, self.images[depth].index[entry[rows]]

    def present(self) -> BlockMap:
        """Blocks that hold stored, non-zero data at this point."""
        flags = self.owner >= 0
        for depth, image in enumerate(self.images):  # records, not blocks, are scanned
            rows = np.flatnonzero(image.index["flags"] & FLAG_ZERO)
            positions = image.index["position"][rows].astype(np.int64)
            inside = positions < len(flags)
            rows, positions = rows[inside], positions[inside]
            used = (self.owner[positions] == depth) & (self.entry[positions] == rows)
            flags[positions[used]] = False
        return BlockMap.from_bools(flags, self.block_size)

    def content_digests(self, zero_digest: np.ndarray, n_blocks: int | None = None
                        ) -> np.ndarray:
        """``(n_blocks, 16)`` content digests of the point; absent blocks, and blocks past
        the point's end when ``n_blocks`` is larger, get ``zero_digest``."""
        n_blocks = self.n_blocks if n_blocks is None else n_blocks
        out = np.empty((n_blocks, DIGEST_SIZE), dtype=np.uint8)
        out[:] = zero_digest
        for depth in range(len(self.images)):
            positions, records = self.records(depth)
            keep = positions < n_blocks
            out[positions[keep]] = digest_rows(records["content_digest"])[keep]
        return out

    def digests_at(self, positions: np.ndarray, zero_digest: np.ndarray) -> np.ndarray:
        """``(len(positions), 16)`` content digests of the blocks at ``positions``; absent
        ones, and positions past the point's end, get ``zero_digest``."""
        out = np.empty((len(positions), DIGEST_SIZE), dtype=np.uint8)
        out[:] = zero_digest
        inside = np.flatnonzero(positions < self.n_blocks)
        owner = self.owner[positions[inside]]
        for depth in _depths(owner):
            rows = inside[owner == depth]
            records = self.images[depth].index[self.entry[positions[rows]]]
            out[rows] = digest_rows(records["content_digest"])
        return out

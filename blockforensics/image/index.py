"""ImageIndex: an image's block index, kept in its file and read a row range at a time.

The index holds one ``INDEX_DTYPE`` record (56 bytes) per stored block, sorted by
position (docs/FORMAT.md).  Held whole in memory it would grow with the data: 15 GiB
for a full 1 TiB volume of 4 KiB blocks.  So it stays in the file and is read with
``pread`` a row range at a time.  A *fence*, the position of every ``FENCE``-th
record (8 bytes per 1024 records), finds the rows of any position range with at most
two small reads.

Opening streams the index once, ``CHUNK`` records at a time, to check its SHA-256
and its structure and to build the fence.  Memory stays bounded by a constant (a
chunk) plus the fence.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError
from blockforensics.image.format import INDEX_DTYPE

#: records between two fence posts: a lookup reads at most this many records (56 KiB)
FENCE = 1024
#: records per piece when the whole index is streamed (896 KiB: a piece and the check's
#: temporaries stay in the CPU's caches; opening a 1 GiB image's index of 166 000 records
#: took 15.6 ms with pieces of 2^16 records, 9.6 ms with these)
CHUNK = 1 << 14
RECORD = INDEX_DTYPE.itemsize

#: checks one piece of the index: ``(records, position of the record before them or
#: -1) -> what is impossible about them, or ""``
PieceCheck = Callable[[np.ndarray, int], str]


class ImageIndex:
    """The block index of one image: ``count`` records at byte ``offset`` of file ``fd``.

    Rows are counted from 0 in position order.  Nothing but the fence is held in memory.
    """

    def __init__(self, fd: int, offset: int, count: int, name: str, fence: np.ndarray,
                 payload_bytes: int):
        self._fd = fd
        self.offset = offset  # bytes: where the first record lies in the file
        self.count = count
        self.name = name
        self._fence = fence  # uint64: position of rows 0, FENCE, 2*FENCE, ...
        self.payload_bytes = payload_bytes  # bytes: the payloads' lengths added up
        self._cached: tuple[int, np.ndarray] = (-1, np.zeros(0, INDEX_DTYPE))

    @classmethod
    def empty(cls, name: str) -> ImageIndex:
        """An index without records (a damaged image holds no blocks)."""
        return cls(-1, 0, 0, name, np.zeros(0, np.uint64), 0)

    @classmethod
    def open(cls, fd: int, offset: int, count: int, digest: bytes, name: str,
             check: PieceCheck) -> ImageIndex:
        """Stream the index once: FormatError unless its SHA-256 is ``digest`` and
        ``check`` finds nothing impossible in any piece of it."""
        index = cls(fd, offset, count, name, np.zeros(0, np.uint64), 0)
        state = hashlib.sha256()
        fence: list[np.ndarray] = []
        previous, payload = -1, 0
        problem = ""
        for first, records in index.chunks():
            state.update(records.data)
            problem = problem or check(records, previous)
            # a copy: a view would keep every piece read alive until the end (the whole
            # index, 56 bytes a record: 950 MiB at 17 Mi blocks)
            fence.append(records["position"][(-first) % FENCE :: FENCE].copy())
            payload += int(records["length"].sum(dtype=np.uint64))
            previous = int(records["position"][-1])
        if state.digest() != digest:
            raise FormatError(f"{name}: block index damaged (checksum mismatch)")
        if problem:
            raise FormatError(f"{name}: block index inconsistent with the file ({problem})")
        index._fence = np.concatenate(fence) if fence else np.zeros(0, np.uint64)
        index.payload_bytes = payload
        return index

    def __len__(self) -> int:
        return self.count

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Records of rows ``lo .. hi-1`` (a new array)."""
        lo, hi = max(lo, 0), min(hi, self.count)
        if hi <= lo:
            return np.zeros(0, INDEX_DTYPE)
        out = np.empty(hi - lo, INDEX_DTYPE)
        view = out.view(np.uint8).data
        if os.preadv(self._fd, [view], self.offset + lo * RECORD) != view.nbytes:
            raise FormatError(f"{self.name}: block index truncated (the file changed)")
        return out

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, records)`` of the whole index, :data:`CHUNK` records at a time."""
        size = CHUNK
        for lo in range(0, self.count, size):
            yield lo, self.read(lo, lo + size)

    def all(self) -> np.ndarray:
        """Every record at once: only for small images (a simulation, a test)."""
        return self.read(0, self.count)

    def _between_posts(self, post: int) -> np.ndarray:
        """Records of the rows between fence posts ``post`` and ``post + 1`` (the last
        ones read are kept: consecutive lookups mostly fall between the same posts; one
        tuple swapped at once, so threads reading at the same time never mix two)."""
        cached = self._cached
        if cached[0] != post:
            cached = (post, self.read(post * FENCE, (post + 1) * FENCE))
            self._cached = cached
        return cached[1]

    def row_of(self, position: int) -> int:
        """The first row whose position is ``position`` or more (``count`` if none)."""
        post = int(np.searchsorted(self._fence, np.uint64(max(position, 0)), "right")) - 1
        if post < 0:
            return 0
        stored = self._between_posts(post)["position"]
        return post * FENCE + int(np.searchsorted(stored, np.uint64(position)))

    def rows_between(self, start: int, end: int) -> tuple[int, int]:
        """Rows ``lo .. hi-1``: those of positions ``start .. end-1``."""
        if end <= start or not self.count:
            return 0, 0
        return self.row_of(start), self.row_of(end)

    def find(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(held, records)`` for ascending block ``positions``: which of them this index
        holds (bools) and, in order, the records of those; only the rows between the
        fence posts around them are read."""
        positions = np.asarray(positions, np.uint64)
        held = np.zeros(len(positions), dtype=bool)
        found: list[np.ndarray] = []
        if self.count and len(positions):
            posts = np.searchsorted(self._fence, positions, "right") - 1
            bounds = np.flatnonzero(np.diff(posts)) + 1
            for lo, hi in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(posts)].tolist()):
                if posts[lo] < 0:
                    continue
                between = self._between_posts(int(posts[lo]))
                at = np.searchsorted(between["position"], positions[lo:hi])
                at = np.minimum(at, len(between) - 1)
                hit = between["position"][at] == positions[lo:hi]
                held[lo:hi] = hit
                found.append(between[at[hit]])
        return held, np.concatenate(found) if found else np.zeros(0, INDEX_DTYPE)

    def blockmap(self, n_blocks: int, block_size: int) -> BlockMap:
        """The positions this index holds (below ``n_blocks``) as a BlockMap."""
        out = BlockMap.empty(n_blocks, block_size)
        for _, records in self.chunks():
            positions = records["position"]
            out.add(positions[positions < np.uint64(n_blocks)])
        return out

    def __repr__(self) -> str:
        return f"ImageIndex({self.name}: {self.count} records)"

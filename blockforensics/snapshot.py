"""Copy-on-write snapshots of a Volume, and quiescence writes into them.

A :class:`Snapshot` freezes a volume's content at the moment it is taken
without copying it: it is a write hook that, before the first live write to a
block after the snapshot, saves that block's original content in the
snapshot's store.  Its memory grows with the blocks preserved, not with the
volume size.

Writers fixing up a snapshot after it was taken (VSS writers rolling back
half-done transactions, say) write *into the snapshot*: these quiescence
writes are kept in a second store and recorded in the ``quiesced`` map.  The
snapshot is then readable two ways, both as a :class:`~blockforensics.formats.base.Disk`:
crash-consistent (the volume exactly as it was) and quiesced (with the
quiescence writes on top) — see :meth:`Snapshot.view`.

Units: positions and counts are in blocks, offsets and sizes in bytes.
"""

from __future__ import annotations

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk
from blockforensics.volume import Volume


class BlockStore:
    """Blocks kept by position in growable arrays (capacity doubles), memory ∝ blocks kept."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._positions = np.zeros(0, dtype=np.int64)  # in insertion order
        self._blocks = np.zeros((0, block_size), dtype=np.uint8)  # rows beyond len: spare
        self._order: np.ndarray | None = None  # argsort of _positions, rebuilt lazily

    @classmethod
    def adopt(cls, positions: np.ndarray, blocks: np.ndarray) -> BlockStore:
        """A store of ``blocks[i]`` for the unique ``positions[i]``, holding the arrays
        as they are (no copy)."""
        store = cls(blocks.shape[1])
        store._positions = np.asarray(positions, dtype=np.int64)
        store._blocks = blocks
        return store

    def __len__(self) -> int:
        return self._positions.size

    @property
    def nbytes(self) -> int:
        """Bytes allocated for block contents (spare capacity included)."""
        return self._blocks.nbytes

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The row of each position in the store, or -1 where it is not kept."""
        if not len(self):
            return np.full(len(positions), -1, dtype=np.int64)
        if self._order is None:
            self._order = np.argsort(self._positions, kind="stable")
        ordered = self._positions[self._order]
        at = np.searchsorted(ordered, positions)
        hit = at < ordered.size
        hit[hit] = ordered[at[hit]] == positions[hit]
        return np.where(hit, self._order[np.minimum(at, ordered.size - 1)], -1)

    def put(self, positions: np.ndarray, blocks: np.ndarray) -> None:
        """Keep ``blocks[i]`` for ``positions[i]`` (unique), replacing what was kept."""
        rows = self.rows(positions)
        old = rows >= 0
        self._blocks[rows[old]] = blocks[old]
        new_positions, new_blocks = positions[~old], blocks[~old]
        n, k = len(self), new_positions.size
        if n + k > len(self._blocks):
            grown = np.zeros((max(n + k, 2 * len(self._blocks), 16), self.block_size),
                             dtype=np.uint8)
            grown[:n] = self._blocks[:n]
            self._blocks = grown
        self._blocks[n : n + k] = new_blocks
        self._positions = np.concatenate([self._positions, new_positions])
        self._order = None

    def overlay(self, out: np.ndarray, start: int) -> None:
        """Replace rows of ``out`` (blocks ``start ..``) by the blocks kept for them."""
        rows = self.rows(np.arange(start, start + len(out)))
        kept = rows >= 0
        out[kept] = self._blocks[rows[kept]]


class OverlayDisk(Disk):
    """``base`` with some of its bytes replaced (a journal or log replayed for reading):
    reads come from ``base``, the blocks :meth:`write` changed from a
    :class:`BlockStore`; ``base`` is never written."""

    def __init__(self, base: Disk):
        self.base = base
        self.size, self.block_size = base.size, base.block_size
        self.store = BlockStore(base.block_size)

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        out = self.base.read_blocks(start, count)
        self.store.overlay(out, start)
        return out

    def write(self, offset: int, data: bytes) -> None:
        """Replace bytes ``offset .. offset + len(data)`` (read-modify-write of blocks)."""
        self.store.put(*self.patched(offset, data))

    def close(self) -> None:
        """The base disk belongs to the caller."""


class Snapshot:
    """A point-in-time, copy-on-write view of ``volume``, with quiescence writes."""

    def __init__(self, volume: Volume, label: str = ""):
        self.volume = volume
        self.label = label
        self.size = volume.size
        self.block_size = volume.block_size
        n, bs = volume.n_blocks, volume.block_size
        #: live blocks written after the snapshot, whose originals the store keeps
        self.preserved = BlockMap.empty(n, bs)
        #: blocks written into the snapshot by quiescence
        self.quiesced = BlockMap.empty(n, bs)
        self.originals = BlockStore(bs)
        self.quiescence = BlockStore(bs)
        self.released = False
        volume.add_hook(self._on_live_write)

    def _on_live_write(self, volume: Volume, positions: np.ndarray) -> None:
        fresh = positions[~self.preserved.contains(positions)]
        if fresh.size:
            self.originals.put(fresh, volume.read_at(fresh))
            self.preserved.add(fresh)

    # ------------------------------------------------------------ quiescence
    def quiesce_write(self, positions: np.ndarray, blocks: np.ndarray) -> None:
        """Write ``blocks[i]`` at block ``positions[i]`` of the snapshot (not of the volume);
        a position given twice keeps its last block.  As on a Volume, bytes past the
        volume's size (in a partial last block) are dropped: they read as zeros."""
        self._check_live()
        positions = np.asarray(positions, dtype=np.int64).ravel()
        blocks = np.array(blocks, dtype=np.uint8).reshape(positions.size, self.block_size)
        if positions.size and (positions.min() < 0 or positions.max() >= self.volume.n_blocks):
            raise IndexError(f"block positions outside [0, {self.volume.n_blocks})")
        last = self.volume.n_blocks - 1
        blocks[positions == last, self.size - last * self.block_size:] = 0
        newest = positions.size - 1 - np.unique(positions[::-1], return_index=True)[1]
        self.quiescence.put(positions[newest], blocks[newest])
        self.quiesced.add(positions)

    def write(self, offset: int, data: bytes) -> None:
        """Quiescence write of bytes at byte ``offset`` (read-modify-write of the quiesced view)."""
        self.quiesce_write(*self.view(quiesced=True).patched(offset, data))

    # --------------------------------------------------------------- reading
    def view(self, quiesced: bool = False) -> SnapshotView:
        """The snapshot as a Disk: crash-consistent, or with the quiescence writes."""
        return SnapshotView(self, quiesced)

    @property
    def store_blocks(self) -> int:
        """Blocks held by the snapshot: preserved originals plus quiescence writes."""
        return len(self.originals) + len(self.quiescence)

    def release(self) -> None:
        """Stop preserving (idempotent); the views are unreadable afterwards."""
        if not self.released:
            self.volume.remove_hook(self._on_live_write)
            self.released = True
            self.originals = BlockStore(self.block_size)
            self.quiescence = BlockStore(self.block_size)

    def _check_live(self) -> None:
        if self.released:
            raise UsageError(f"snapshot {self.label!r} was released")

    def __repr__(self) -> str:
        state = "released" if self.released else "live"
        name = f" {self.label!r}" if self.label else ""
        return (f"Snapshot{name}({state}, {self.volume.n_blocks} blocks × {self.block_size} B; "
                f"{self.preserved.count()} preserved, {self.quiesced.count()} quiesced)")


class SnapshotView(Disk):
    """A snapshot read as a Disk: live blocks, under the preserved originals, under the
    quiescence writes (the last layer only for the quiesced view)."""

    def __init__(self, snapshot: Snapshot, quiesced: bool):
        self.snapshot = snapshot
        self.quiesced = quiesced
        self.size = snapshot.size
        self.block_size = snapshot.block_size

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        self.snapshot._check_live()
        out = self.snapshot.volume.read_blocks(start, count)
        self.snapshot.originals.overlay(out, start)
        if self.quiesced:
            self.snapshot.quiescence.overlay(out, start)
        return out

    def __repr__(self) -> str:
        kind = "quiesced" if self.quiesced else "crash-consistent"
        return f"SnapshotView({kind} view of {self.snapshot!r})"

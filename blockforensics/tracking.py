"""Changed-block tracking (CBT) and head-start population of an incremental image.

A :class:`ChangeTracker` is a write hook on a :class:`~blockforensics.volume.Volume`:
it collects the block positions written since its last :meth:`~ChangeTracker.reset`,
which is what an incremental backup must copy.  Several trackers can watch one
volume independently (one per backup job, say).

:class:`HeadStart` is method 1 (docs/METHODS.md): between t1 and t2 it copies part
of the tracked blocks into the pending incremental image ahead of time and stops
tracking them; a block written again afterwards is tracked again and copied
again later (the image keeps the last copy).  At t2 it takes a snapshot, which
ends this point's tracking and starts the next point's, and copies the rest from
it.  The result equals a plain incremental of t2.

Units: positions, budgets and counts are in blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pandas as pd

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk
from blockforensics.image.chain import Chain, PointRef
from blockforensics.image.imagefile import ImageWriter
from blockforensics.snapshot import Snapshot
from blockforensics.volume import Volume

#: blocks read and written per piece when copying between a Disk and an image
COPY_CHUNK_BLOCKS = 4096

#: sequence number of blocks that are not tracked (sorts after every real one)
UNTRACKED = np.iinfo(np.int64).max


def copy_blocks(source: Disk, positions: np.ndarray | BlockMap, writer: ImageWriter) -> int:
    """Copy the blocks at ``positions`` (sorted, unique, or a map) of ``source`` into
    ``writer``, :data:`COPY_CHUNK_BLOCKS` at a time; returns the number of blocks copied."""
    if isinstance(positions, BlockMap):
        positions = positions.positions()
    for start in range(0, len(positions), COPY_CHUNK_BLOCKS):
        piece = positions[start : start + COPY_CHUNK_BLOCKS]
        writer.add(piece, source.read_at(piece))
    return len(positions)


class ChangeTracker:
    """The blocks of a volume written since the last :meth:`reset` (a write hook).

    With ``ordered=True`` it also keeps, per block, the sequence number of the
    first write since the block was last untracked (``first_write``; 8 bytes
    per block), so that callers can copy the oldest changes first.
    """

    def __init__(self, volume: Volume, *, ordered: bool = False):
        self.volume = volume
        self.changed = BlockMap.empty(volume.n_blocks, volume.block_size)
        self.first_write: np.ndarray | None = (
            np.full(volume.n_blocks, UNTRACKED, dtype=np.int64) if ordered else None)
        #: number of write calls seen since the tracker was attached
        self.writes = 0
        self.attached = True
        volume.add_hook(self._on_write)

    def _on_write(self, volume: Volume, positions: np.ndarray) -> None:
        self.writes += 1
        self.changed.add(positions)
        if self.first_write is not None:
            np.minimum.at(self.first_write, positions, self.writes)

    def untrack(self, positions: np.ndarray | BlockMap) -> None:
        """Forget that ``positions`` changed (they were copied); a later write tracks them again."""
        if isinstance(positions, BlockMap):
            positions = positions.positions()
        self.changed.discard(positions)
        if self.first_write is not None:
            self.first_write[positions] = UNTRACKED

    def reset(self) -> BlockMap:
        """The changed map so far; tracking starts afresh (e.g. after a backup)."""
        changed = self.changed
        self.changed = BlockMap.empty(changed.n_blocks, changed.block_size)
        if self.first_write is not None:
            self.first_write[:] = UNTRACKED
        return changed

    def detach(self) -> BlockMap:
        """Stop watching the volume (idempotent); the changed map is kept and returned."""
        if self.attached:
            self.volume.remove_hook(self._on_write)
            self.attached = False
        return self.changed

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (f"ChangeTracker({state}, {self.changed.count()} of {self.changed.n_blocks} "
                f"blocks changed, {self.writes} writes seen)")


# A policy orders the tracked positions: given (positions, first_write sequence numbers,
# random generator) it returns the positions in copy order.
Policy = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]

POLICIES: dict[str, Policy] = {
    "oldest": lambda pos, seq, rng: pos[np.lexsort((pos, seq))],
    "newest": lambda pos, seq, rng: pos[np.lexsort((pos, -seq))],
    "lowest": lambda pos, seq, rng: pos,
    "random": lambda pos, seq, rng: rng.permutation(pos),
}


class HeadStart:
    """Head-start population of one pending incremental image (method 1, docs/METHODS.md).

    From creation (t1) it tracks the writes to ``volume``.  Each
    :meth:`copy_step` copies up to a budget of tracked blocks from the live
    volume into the pending image and untracks them.  :meth:`snapshot` takes the
    t2 snapshot and, in the same moment, stops tracking for this point and starts
    tracking for the next one; :meth:`finish` copies the blocks still tracked
    from that snapshot, commits and appends the image to ``chain``; :meth:`next`
    returns the head start of the next point, whose tracking began at t2, so
    consecutive head-start points lose no write.
    """

    def __init__(self, chain: Chain, volume: Volume, *, parent: PointRef = -1,
                 created_ns: int | None = None, label: str = "head-start incremental",
                 seed: int = 0, tracker: ChangeTracker | None = None):
        self.chain = chain
        self.volume = volume
        self.parent = chain.point(parent)
        if tracker is not None and (tracker.volume is not volume or not tracker.attached
                                    or tracker.first_write is None):
            raise UsageError("a head start needs an attached, ordered tracker of its volume")
        header = chain.new_header(parent=self.parent, volume_size=volume.size,
                                  block_size=volume.block_size, created_ns=created_ns,
                                  label=label)
        #: the chain's writer lock, held from t1 until the image is appended or dropped,
        #: so no other command takes the pending image for a leftover
        self._hold = contextlib.ExitStack()
        self._hold.enter_context(chain.locked())
        self.writer: ImageWriter | None = chain.writer(header)
        #: writes since t1 not yet copied (this point's tracking; it stops at the snapshot)
        self.tracker = tracker if tracker is not None else ChangeTracker(volume, ordered=True)
        #: the t2 snapshot, once :meth:`snapshot` took it
        self.taken: Snapshot | None = None
        #: tracking for the next point, started at the t2 snapshot (see :meth:`next`)
        self.next_tracker: ChangeTracker | None = None
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        #: every block copied before the snapshot (union over the copy steps)
        self.copied_early = BlockMap.empty(volume.n_blocks, volume.block_size)
        #: blocks copied from the snapshot by :meth:`finish`
        self.copied_late = BlockMap.empty(volume.n_blocks, volume.block_size)
        #: block copies before the snapshot, counting a re-copied block each time
        self.copies_before = 0
        self._log: list[dict[str, object]] = []
        self.point: int | None = None
        self._successor: HeadStart | None = None

    def copy_step(self, budget_blocks: int, policy: str = "oldest") -> BlockMap:
        """Copy up to ``budget_blocks`` tracked blocks, chosen by ``policy`` (one of
        :data:`POLICIES`), from the live volume into the pending image; returns them.

        They are untracked *before* being read, the order that stays correct when
        writes run concurrently: a write racing the copy tracks its block again.
        """
        if policy not in POLICIES:
            raise UsageError(f"unknown head-start policy {policy!r}; "
                             f"choose from {', '.join(POLICIES)}")
        writer = self._pending()
        if self.taken is not None:
            raise UsageError("the t2 snapshot is taken: copy_step() comes before snapshot(); "
                             "run finish() next")
        tracked = self.tracker.changed.positions()
        assert self.tracker.first_write is not None
        order = POLICIES[policy](tracked, self.tracker.first_write[tracked], self._rng)
        chosen = np.sort(order[: max(0, budget_blocks)])
        self.tracker.untrack(chosen)
        copy_blocks(self.volume, chosen, writer)
        self.copies_before += chosen.size
        self.copied_early.add(chosen)
        self._log.append({"step": f"copy {len(self._log) + 1}", "policy": policy,
                          "copied": chosen.size, "still_tracked": self.tracker.changed.count()})
        return BlockMap.from_positions(self.volume.n_blocks, chosen, self.volume.block_size)

    def snapshot(self, label: str = "t2") -> Snapshot:
        """t2: take the copy-on-write snapshot, stop tracking for this point and start
        tracking for the next (all at one moment, so no write falls between); returns it.

        The caller releases the snapshot once :meth:`finish` (and any check) read it.
        """
        self._pending()
        if self.taken is not None:
            raise UsageError("the t2 snapshot was already taken; run finish() next")
        self.taken = Snapshot(self.volume, label=label)
        self.tracker.detach()
        self.next_tracker = ChangeTracker(self.volume, ordered=True)
        return self.taken

    @property
    def remaining(self) -> BlockMap:
        """Blocks tracked and not copied yet: after the snapshot, what :meth:`finish` copies."""
        return self.tracker.changed

    def finish(self) -> int:
        """Copy the still-tracked blocks from the t2 snapshot (crash-consistent view),
        commit the image and append it to the chain; returns the new point's index."""
        writer = self._pending()
        if self.taken is None:
            raise UsageError("take the t2 snapshot first: run snapshot(), then finish()")
        remaining = self.remaining
        copy_blocks(self.taken.view(), remaining, writer)
        self.copied_late = remaining.copy()
        self._log.append({"step": "finish", "policy": "snapshot", "copied": remaining.count(),
                          "still_tracked": 0})
        self.point = self.chain.append(writer.commit())
        self.writer = None
        self._hold.close()
        return self.point

    def next(self, *, created_ns: int | None = None,
             label: str = "head-start incremental") -> HeadStart:
        """The head start of the next point (parent: this one), tracking since t2."""
        if self.point is None or self.next_tracker is None:
            raise UsageError("next() follows finish(): run snapshot() and finish() first")
        if self._successor is not None:
            raise UsageError("next() was already called for this point; use the head start "
                             "it returned")
        self._successor = HeadStart(self.chain, self.volume, parent=self.point,
                                    created_ns=created_ns, label=label, seed=self._seed,
                                    tracker=self.next_tracker)
        return self._successor

    def abort(self) -> None:
        """Drop the pending image, stop tracking (also the next point's) and release the
        snapshot."""
        self.tracker.detach()
        if self.next_tracker is not None:
            self.next_tracker.detach()
        if self.taken is not None:
            self.taken.release()
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        self._hold.close()

    def _pending(self) -> ImageWriter:
        if self.writer is None:
            raise UsageError("the head-start image is already committed or aborted")
        return self.writer

    @property
    def copies_after(self) -> int:
        """Blocks copied from the snapshot at t2."""
        return self.copied_late.count()

    @property
    def recopied(self) -> BlockMap:
        """Blocks copied early and copied again after the snapshot (rewritten meanwhile)."""
        return self.copied_early & self.copied_late

    def log(self) -> pd.DataFrame:
        """One row per copy step: step, policy, copied (blocks), still_tracked (blocks)."""
        return pd.DataFrame(self._log, columns=["step", "policy", "copied", "still_tracked"])

    def __repr__(self) -> str:
        state = f"point {self.point}" if self.point is not None else "pending"
        return (f"HeadStart({state}, parent {self.parent}: {self.copies_before} blocks copied "
                f"before the snapshot, {self.copies_after} after, "
                f"{self.tracker.changed.count()} tracked)")

"""A seeded, file-like write workload over a Volume, with a simple extent allocator.

The workload creates, overwrites and deletes "files": lists of block positions
handed out by a next-fit allocator, so that its ``allocated`` map means what a
file system's allocation map means — the blocks a backup must copy.  Deleting
a file frees its blocks without writing them (like a real file system): the
old data stays on the volume, unallocated, and no change tracker sees it.

A small journal region at the start of the volume is always allocated; the
:meth:`Workload.quiesce` helper writes into a snapshot the way quiescing
writers do (journal blocks, plus a few blocks of a new log file).

Units: positions and sizes are in blocks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.snapshot import Snapshot
from blockforensics.volume import Volume

OPS = ("create", "overwrite", "delete")
_COLUMNS = ["op", "file", "n_blocks", "positions"]


class Workload:
    """Seeded creates/overwrites/deletes of files on ``volume``; ``allocated`` tracks them."""

    def __init__(self, volume: Volume, seed: int = 0, *, journal_blocks: int = 8,
                 file_blocks: tuple[int, int] = (2, 16),
                 weights: tuple[float, float, float] = (0.5, 0.35, 0.15)):
        if not 0 <= journal_blocks <= volume.n_blocks:
            raise UsageError(f"journal of {journal_blocks} blocks does not fit the volume")
        self.volume = volume
        self.rng = np.random.default_rng(seed)
        self.file_blocks = file_blocks
        self.weights = np.asarray(weights, dtype=float) / np.sum(weights)
        n, bs = volume.n_blocks, volume.block_size
        #: the journal region, blocks 0 .. journal_blocks-1 (always allocated)
        self.journal = BlockMap.empty(n, bs)
        self.journal.add_range(0, journal_blocks)
        #: blocks allocated to the journal and to live files
        self.allocated = self.journal.copy()
        #: live files: id -> sorted block positions
        self.files: dict[int, np.ndarray] = {}
        self._next_file = 1
        self._cursor = journal_blocks
        self._log: list[dict[str, object]] = []
        self._write(self.journal.positions())

    # --------------------------------------------------------------- helpers
    def _random_blocks(self, count: int) -> np.ndarray:
        return self.rng.integers(0, 256, size=(count, self.volume.block_size), dtype=np.uint8)

    def _write(self, positions: np.ndarray) -> None:
        self.volume.write_at(positions, self._random_blocks(positions.size))

    def _record(self, op: str, file: int, positions: np.ndarray) -> dict[str, object]:
        row = {"op": op, "file": file, "n_blocks": int(positions.size), "positions": positions}
        self._log.append(row)
        return row

    def _pick(self, file: int | None) -> int:
        if file is not None:
            if file not in self.files:
                raise UsageError(f"no live file {file}")
            return file
        if not self.files:
            raise UsageError("no live files")
        return int(self.rng.choice(list(self.files)))

    @property
    def free(self) -> int:
        """Number of unallocated blocks."""
        return self.volume.n_blocks - self.allocated.count()

    # ------------------------------------------------------------ operations
    def create(self, n_blocks: int) -> int:
        """Allocate ``n_blocks`` (next fit from the last allocation), fill them with random
        data, and return the new file's id."""
        free = np.flatnonzero(~self.allocated.to_bools())
        if n_blocks < 1 or n_blocks > free.size:
            raise UsageError(f"cannot create a file of {n_blocks} blocks "
                             f"({free.size} blocks free)")
        first = int(np.searchsorted(free, self._cursor)) % free.size
        taken = np.roll(free, -first)[:n_blocks]
        self._cursor = int(taken[-1]) + 1
        positions = np.sort(taken)
        file = self._next_file
        self._next_file += 1
        self.files[file] = positions
        self.allocated.add(positions)
        self._write(positions)
        self._record("create", file, positions)
        return file

    def overwrite(self, fraction: float = 0.5, file: int | None = None) -> int:
        """Rewrite a random ``fraction`` (at least one block) of a file, in place; its id."""
        file = self._pick(file)
        blocks = self.files[file]
        k = min(blocks.size, max(1, round(fraction * blocks.size)))
        positions = np.sort(self.rng.choice(blocks, k, replace=False))
        self._write(positions)
        self._record("overwrite", file, positions)
        return file

    def delete(self, file: int | None = None) -> int:
        """Free a file's blocks (their data stays, unallocated, unwritten); its id."""
        file = self._pick(file)
        positions = self.files.pop(file)
        self.allocated.discard(positions)
        self._record("delete", file, positions)
        return file

    def step(self, n_ops: int) -> pd.DataFrame:
        """``n_ops`` random operations (weights as given at creation); one row per
        operation: op, file, n_blocks, positions."""
        rows = []
        for op in self.rng.choice(OPS, size=n_ops, p=self.weights):
            size = int(self.rng.integers(self.file_blocks[0], self.file_blocks[1] + 1))
            if not self.files or (op == "create" and size <= self.free):
                self.create(min(size, self.free))
            elif op == "overwrite":
                self.overwrite(float(self.rng.uniform(0.1, 1.0)))
            else:
                self.delete()
            rows.append(self._log[-1])
        return pd.DataFrame(rows, columns=_COLUMNS)

    def quiesce(self, snapshot: Snapshot, n_blocks: int = 4) -> BlockMap:
        """Quiescence writes into ``snapshot``: about half into journal blocks, the rest
        into blocks that are free now (a new log file only the snapshot sees).

        Call it right after taking the snapshot, while ``allocated`` is that of the
        snapshot's time; returns the positions written.
        """
        journal = self.journal.positions()
        free = np.flatnonzero(~self.allocated.to_bools())
        in_journal = min(journal.size, (n_blocks + 1) // 2)
        in_free = min(free.size, n_blocks - in_journal)
        positions = np.sort(np.r_[self.rng.choice(journal, in_journal, replace=False),
                                  self.rng.choice(free, in_free, replace=False)])
        snapshot.quiesce_write(positions, self._random_blocks(positions.size))
        return BlockMap.from_positions(self.volume.n_blocks, positions, self.volume.block_size)

    # ------------------------------------------------------------ reporting
    def log(self) -> pd.DataFrame:
        """Every operation so far: op, file, n_blocks, positions."""
        return pd.DataFrame(self._log, columns=_COLUMNS)

    def file_table(self) -> pd.DataFrame:
        """Live files: file, n_blocks, extents (runs of consecutive blocks)."""
        return pd.DataFrame(
            [{"file": f, "n_blocks": p.size, "extents": int(np.sum(np.diff(p) != 1)) + 1}
             for f, p in self.files.items()], columns=["file", "n_blocks", "extents"])

    def __repr__(self) -> str:
        return (f"Workload({len(self.files)} files, {self.allocated.count()} of "
                f"{self.volume.n_blocks} blocks allocated, {len(self._log)} operations)")

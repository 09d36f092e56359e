"""Methods 1–3 of docs/METHODS.md, step by step, writing real images into a Chain.

Each method is a small class with one method per step, so a notebook can run
it a cell at a time and plot the block map every step made; ``run()`` does all
steps with sensible defaults.  The steps keep their order: a step run too early
or a second time raises :class:`StepOrderError`, whose message names the steps
that may run next (``live()`` may run at any time).  Everything a run did is kept in its
:class:`MethodRecord`: the block maps by name, the chain points written, extra
counts, the results of the final checks, and a ``steps`` DataFrame.

1. :class:`HeadStartIncremental` — copy tracked blocks ahead of t2, the rest from
   the t2 snapshot; equal to a plain incremental of t2.
2. :class:`QuiescedFullImage` — a full image of A | Q from the quiesced snapshot.
3. :class:`BranchingChain` — a crash-consistent trunk (full, I2) with the
   application-consistent points as leaves (I1, I3); :class:`NaiveLinearChain`
   is the contrast where quiescence writes leak into later points.

The live volume is driven by a :class:`~blockforensics.workload.Workload`,
whose ``allocated`` map plays the file system's allocation map.

Units: positions and counts are in blocks.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import pandas as pd

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.snapshot import Snapshot
from blockforensics.tracking import COPY_CHUNK_BLOCKS, ChangeTracker, HeadStart
from blockforensics.workload import Workload

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["BranchingChain", "HeadStartIncremental", "MethodRecord", "NaiveLinearChain",
           "QuiescedFullImage", "StepOrderError", "branching_chain", "differing_blocks",
           "head_start_incremental", "naive_linear_chain", "quiesced_full_image"]

_STEP_COLUMNS = ["step", "time", "what", "map", "blocks", "point"]

_F = TypeVar("_F", bound=Callable[..., object])


class StepOrderError(UsageError):
    """A method's step was called out of order or a second time."""


def _step(func: _F) -> _F:
    """Make ``func`` a step of its method: it runs only where the method's sequence
    allows it (steps it calls itself are not checked again)."""
    name = func.__name__

    @functools.wraps(func)
    def checked(self: _Method, *args: object, **kwargs: object) -> object:
        if self._running:
            return func(self, *args, **kwargs)
        after = self._allow(name)
        self._running = True
        try:
            result = func(self, *args, **kwargs)
        finally:
            self._running = False
        self._at = after
        self._done.append(name)
        return result

    return checked  # type: ignore[return-value]


def differing_blocks(a: Disk, b: Disk, on: BlockMap | None = None) -> BlockMap:
    """Positions (within ``on``, default all) where disks ``a`` and ``b`` hold different bytes."""
    n = a.n_blocks
    positions = on.positions() if on is not None else np.arange(n)
    flags = np.zeros(n, dtype=bool)
    for start in range(0, positions.size, COPY_CHUNK_BLOCKS):
        piece = positions[start : start + COPY_CHUNK_BLOCKS]
        flags[piece] = (a.read_at(piece) != b.read_at(piece)).any(axis=1)
    return BlockMap.from_bools(flags, a.block_size)


@dataclass(repr=False)
class MethodRecord:
    """Everything one run of a method did: maps, points, counts, checks, steps."""

    method: str
    chain: Chain
    #: block maps by name (A1, Q1, T, ...), in the order the steps made them
    maps: dict[str, BlockMap] = field(default_factory=dict)
    #: chain points written, by name (full, I1, ...)
    points: dict[str, int] = field(default_factory=dict)
    #: counts that are not the size of a map (blocks copied before the snapshot, ...)
    numbers: dict[str, int] = field(default_factory=dict)
    #: results of the final checks, by what they check
    checks: dict[str, bool] = field(default_factory=dict)
    _rows: list[dict[str, object]] = field(default_factory=list)

    def note(self, step: str, time: str, what: str, name: str | None = None,
             bmap: BlockMap | None = None, point: int | None = None) -> None:
        """Log one step; ``bmap`` and ``point`` are kept under ``name``."""
        if name is not None and bmap is not None:
            self.maps[name] = bmap
        if name is not None and point is not None:
            self.points[name] = point
        self._rows.append({"step": step, "time": time, "what": what, "map": name or "",
                           "blocks": bmap.count() if bmap is not None else None,
                           "point": point})

    @property
    def counts(self) -> dict[str, int]:
        """Blocks in every map, then the extra numbers."""
        return {name: m.count() for name, m in self.maps.items()} | self.numbers

    @property
    def steps(self) -> pd.DataFrame:
        """One row per step: step, time, what, map (name), blocks (in the map), point."""
        frame = pd.DataFrame(self._rows, columns=_STEP_COLUMNS)
        frame["blocks"] = frame["blocks"].astype("Int64")
        frame["point"] = frame["point"].astype("Int64")
        return frame

    @property
    def ok(self) -> bool:
        """True when checks were run and all passed."""
        return bool(self.checks) and all(self.checks.values())

    #: points written from a quiesced (application-consistent) view
    leaves: list[int] = field(default_factory=list)

    def stored(self, name: str) -> BlockMap:
        """The blocks the image of point ``name`` stores, read from its index."""
        image = self.chain.images[self.points[name]]
        return image.index.blockmap(image.header.n_blocks, image.header.block_size)

    def plot(self, names: list[str] | None = None, ax: Axes | None = None,
             **options: object) -> Axes:
        """The maps ``names`` (default all), one panel each, in the picture language of
        :mod:`blockforensics.plot`."""
        from blockforensics.plot import plot_blockmaps

        chosen = {name: self.maps[name] for name in (names or list(self.maps))}
        return plot_blockmaps(chosen, ax, title=options.pop("title", self.method),  # type: ignore[arg-type]
                              **options)  # type: ignore[arg-type]

    def plot_chain(self, ax: Axes | None = None, *, title: str | None = None) -> Axes:
        """The chain, its application-consistent points drawn as leaves."""
        from blockforensics.plot import plot_chain

        return plot_chain(self.chain, ax, leaves=self.leaves, title=title or self.method)

    def __repr__(self) -> str:
        def join(d: Mapping[str, object]) -> str:
            return ", ".join(f"{k}={v}" for k, v in d.items()) or "-"

        verdict = ("not checked" if not self.checks
                   else "all checks passed" if self.ok else "CHECKS FAILED")
        lines = [f"MethodRecord({self.method}: {len(self._rows)} steps, {verdict})",
                 f"  points: {join(self.points)}",
                 f"  blocks: {join(self.counts)}"]
        lines += [f"  {'ok  ' if passed else 'FAIL'} {check}"
                  for check, passed in self.checks.items()]
        return "\n".join(lines)


class _Method:
    """Shared steps: live writes, snapshots (with A = allocated), quiescence (Q)."""

    title: ClassVar[str]
    #: the steps in order; "name*" may run any number of times; live() runs at any time
    sequence: ClassVar[tuple[str, ...]]

    def __init__(self, chain: Chain, workload: Workload):
        self.chain = chain
        self.workload = workload
        self.volume = workload.volume
        self.record = MethodRecord(self.title, chain)
        self.snapshots: list[Snapshot] = []
        #: images written from a quiesced view -> the quiescence map of that snapshot
        self._quiesced_images: dict[int, BlockMap] = {}
        self._lives = 0
        self._at = 0  # index in ``sequence`` of the next step
        self._done: list[str] = []
        self._running = False

    def next_steps(self) -> list[str]:
        """The steps that may run now (besides live())."""
        allowed = []
        for item in self.sequence[self._at:]:
            allowed.append(item.rstrip("*"))
            if not item.endswith("*"):
                break
        return allowed

    def _allow(self, name: str) -> int:
        """Where the sequence stands after step ``name``, or StepOrderError saying why not."""
        if name == "live":
            return self._at
        for index in range(self._at, len(self.sequence)):
            item = self.sequence[index]
            if item.rstrip("*") == name:
                return index if item.endswith("*") else index + 1
            if not item.endswith("*"):
                break
        allowed = self.next_steps()
        later = [item.rstrip("*") for item in self.sequence[self._at:]]
        why = ("it comes later" if name in later else "it already ran" if name in self._done
               else "it is not a step of this method")
        then = (f"run next: {' or '.join(f'{step}()' for step in allowed)}" if allowed
                else f"the method is complete; make a new {type(self).__name__} to run again")
        raise StepOrderError(f"{type(self).__name__}.{name}() cannot run now: {why}; {then} "
                             "(live() may run at any time)")

    def _fresh(self) -> None:
        if self._done:
            raise StepOrderError(
                f"run() does every step from the start, but {', '.join(self._done)} already "
                f"ran; continue with {' or '.join(s + '()' for s in self.next_steps())}, or "
                f"make a new {type(self).__name__}")

    @property
    def _time(self) -> str:
        return f"after t{len(self.snapshots)}" if self.snapshots else "before t1"

    @_step
    def live(self, n_ops: int = 10) -> BlockMap:
        """Live writes: ``n_ops`` workload operations on the volume; the blocks written."""
        ops = self.workload.step(n_ops)
        written = ops.loc[ops["op"] != "delete", "positions"]
        bmap = BlockMap.from_positions(self.volume.n_blocks,
                                       np.concatenate([np.zeros(0, np.int64), *written]),
                                       self.volume.block_size)
        done = ", ".join(f"{n} {op}" for op, n in ops["op"].value_counts().items())
        self._lives += 1
        self.record.note("live", self._time, f"live writes ({done})", f"W{self._lives}", bmap)
        return bmap

    @_step
    def snapshot(self) -> BlockMap:
        """Take snapshot k (time tk) of the live volume; returns A_k, the allocated blocks."""
        k = len(self.snapshots) + 1
        self.snapshots.append(Snapshot(self.volume, label=f"t{k}"))
        allocated = self.workload.allocated.copy()
        self.record.note("snapshot", f"t{k}", f"copy-on-write snapshot {k}; A{k} = allocated",
                         f"A{k}", allocated)
        self.record.maps[f"Q{k}"] = self.snapshots[-1].quiesced.copy()  # none yet
        return allocated

    @_step
    def quiesce(self, n_blocks: int = 4) -> BlockMap:
        """Quiescence writes into the newest snapshot; returns Q_k."""
        k = len(self.snapshots)
        self.workload.quiesce(self.snapshots[-1], n_blocks)
        quiesced = self.snapshots[-1].quiesced.copy()
        self.record.note("quiesce", f"t{k}", f"quiescence writes into snapshot {k}",
                         f"Q{k}", quiesced)
        return quiesced

    def _image(self, step: str, name: str, what: str, source: Disk, *,
               parent: int | None = None, blocks: BlockMap,
               quiesced: BlockMap | None = None) -> int:
        """Write the ``blocks`` of ``source`` as image ``name`` (a full when no parent)."""
        point = backup(self.chain, source, parent=parent, full=parent is None,
                       only=blocks if parent is None else None,
                       changed=blocks if parent is not None else None,
                       block_size=self.volume.block_size, label=name)
        if quiesced is not None:
            self._quiesced_images[point] = quiesced
            self.record.leaves.append(point)
        self.record.note(step, f"t{len(self.snapshots)}", what, name, blocks, point)
        return point

    def quiescence_blocks(self, point: int, inherited_only: bool = False) -> BlockMap:
        """Blocks of ``point`` that hold quiescence writes, i.e. that an image written
        from a quiesced view supplies at a position of its snapshot's Q; with
        ``inherited_only``, only those supplied by an ancestor image."""
        layout = self.chain.layout(point)
        out = BlockMap.empty(layout.n_blocks, layout.block_size)
        path = self.chain.path(point)
        for depth, index in enumerate(path[:-1] if inherited_only else path):
            if index in self._quiesced_images:
                out |= layout.supplied(depth) & self._quiesced_images[index]
        return out

    def _check(self, what: str, point: int, expected: Disk, on: BlockMap) -> BlockMap:
        wrong = differing_blocks(self.chain.disk(point), expected, on)
        self.record.checks[what] = not wrong
        return wrong

    def release(self) -> None:
        """Release every snapshot (after the checks, which read them)."""
        for snap in self.snapshots:
            snap.release()


class HeadStartIncremental(_Method):
    """Method 1: an incremental populated ahead of time, finished from the t2 snapshot.

    Steps: :meth:`start` (t1: full backup, tracking starts), then any number of
    :meth:`live` and :meth:`head_start`, :meth:`snapshot` (t2), optional
    :meth:`live` (after t2: the snapshot keeps t2), :meth:`finish`,
    :meth:`plain_incremental` (the comparison), :meth:`verify`.
    """

    title = "Method 1 — head-start incremental"
    sequence = ("start", "head_start*", "snapshot", "finish", "plain_incremental", "verify")

    def __init__(self, chain: Chain, workload: Workload, *, budget: int = 8,
                 policy: str = "oldest", seed: int = 0):
        super().__init__(chain, workload)
        self.budget = budget
        self.policy = policy
        self.seed = seed
        self.head: HeadStart | None = None
        self.tracker: ChangeTracker | None = None
        self._copies = 0
        self._to_copy: list[dict[str, object]] = []

    def _count(self, step: str) -> None:
        """Note how many blocks are left to copy, with and without the head start."""
        if self.head is not None and self.tracker is not None and not self.snapshots:
            self._to_copy.append({"step": step, "with head start": self.head.remaining.count(),
                                  "without": self.tracker.changed.count()})

    def to_copy(self) -> pd.DataFrame:
        """Blocks left to copy after each step from t1 to t2: step, with head start (still
        tracked), without (a plain CBT's map); the last row is what the snapshot leaves."""
        return pd.DataFrame(self._to_copy, columns=["step", "with head start", "without"])

    @_step
    def live(self, n_ops: int = 10) -> BlockMap:
        """Live writes: ``n_ops`` workload operations on the volume; the blocks written."""
        written = super().live(n_ops)
        self._count(f"live {self._lives}")
        return written

    @_step
    def start(self) -> int:
        """t1: a full backup of the whole volume, then tracking starts; returns the point."""
        base = backup(self.chain, self.volume, full=True, block_size=self.volume.block_size,
                      label="full t1")
        self.head = HeadStart(self.chain, self.volume, parent=base, seed=self.seed)
        self.tracker = ChangeTracker(self.volume)  # plain CBT over t1..t2, for comparison
        self.record.note("start", "t1", "full backup at t1; tracking starts", "full",
                         self.chain.images[base].index.blockmap(self.volume.n_blocks,
                                                                self.volume.block_size), base)
        self._count("t1")
        return base

    def _head(self) -> HeadStart:
        assert self.head is not None, "start() runs first (the step order sees to it)"
        return self.head

    @property
    def _time(self) -> str:
        return "before t1" if self.head is None else "after t2" if self.snapshots else "t1–t2"

    @_step
    def head_start(self, budget: int | None = None, policy: str | None = None) -> BlockMap:
        """Copy up to ``budget`` tracked blocks into the pending image; the blocks copied."""
        policy = policy or self.policy
        copied = self._head().copy_step(self.budget if budget is None else budget, policy)
        self._copies += 1
        self.record.note("head start", "t1–t2",
                         f"copy {copied.count()} tracked blocks ({policy} first), untrack them",
                         f"copy {self._copies}", copied)
        self._count(f"copy {self._copies}")
        return copied

    @_step
    def snapshot(self) -> BlockMap:
        """t2: snapshot, tracking stops; returns the blocks still to copy."""
        head = self._head()
        self._count("t2")
        self.snapshots.append(head.snapshot(label="t2"))
        remaining = head.remaining.copy()
        assert self.tracker is not None
        self.record.note("snapshot", "t2", "snapshot at t2; plain CBT of t1..t2", "T",
                         self.tracker.detach())
        self.record.note("snapshot", "t2", "still tracked: to copy from the snapshot",
                         "remaining", remaining)
        return remaining

    @_step
    def finish(self) -> int:
        """Copy the remaining blocks from the snapshot, commit; returns the point."""
        head = self._head()
        point = head.finish()
        self.record.note("finish", "t2", "copy the rest from the snapshot, commit",
                         "head start", head.copied_early | head.copied_late, point)
        self.record.maps["recopied"] = head.recopied
        self.record.numbers |= {"copied before snapshot": head.copies_before,
                                "copied after snapshot": head.copies_after,
                                "stored": self.chain.images[point].blocks}
        return point

    def release(self) -> None:
        """Release the snapshot and stop the next point's tracking (started at t2)."""
        super().release()
        if self.head is not None and self.head.next_tracker is not None:
            self.head.next_tracker.detach()

    @_step
    def plain_incremental(self) -> int:
        """The comparison: a plain incremental of the t2 snapshot against the t1 full,
        found by comparing block digests (no tracking); returns the point."""
        point = backup(self.chain, self.snapshots[0].view(), parent=self.record.points["full"],
                       label="plain incremental t2")
        stored = self.chain.images[point].index.blockmap(self.volume.n_blocks,
                                                         self.volume.block_size)
        self.record.note("compare", "t2", "plain incremental of t2 (digest comparison)",
                         "plain", stored, point)
        return point

    @_step
    def verify(self) -> MethodRecord:
        """Check the head-start point against the plain incremental and the volume at t2."""
        head, view = self.record.points["head start"], self.snapshots[0].view()
        self.record.checks["head start = plain incremental (every block)"] = not differing_blocks(
            self.chain.disk(head), self.chain.disk(self.record.points["plain"]))
        self._check("head start = volume at t2 (every block)", head, view,
                    BlockMap.full(self.volume.n_blocks, self.volume.block_size))
        self.record.checks["copied = T (every changed block, nothing else)"] = (
            self.record.maps["head start"] == self.record.maps["T"])
        return self.record

    def run(self, rounds: int = 3, ops: int = 6, ops_after: int = 4) -> MethodRecord:
        """live; start; ``rounds`` × (live, head start); live; snapshot; live; finish;
        compare; verify."""
        self._fresh()
        self.live(ops)
        self.start()
        for _ in range(rounds):
            self.live(ops)
            self.head_start()
        self.live(ops)
        self.snapshot()
        self.live(ops_after)
        self.finish()
        self.plain_incremental()
        self.verify()
        self.release()
        return self.record


class QuiescedFullImage(_Method):
    """Method 2: full image = A | Q, copied from the quiesced snapshot.

    Steps: :meth:`live` (before t1), :meth:`snapshot`, :meth:`quiesce`,
    optional :meth:`live` (after t1), :meth:`image`, :meth:`verify`.
    """

    title = "Method 2 — quiesced full image"
    sequence = ("snapshot", "quiesce*", "image", "verify")

    @_step
    def image(self) -> int:
        """The full image of A1 | Q1 from the quiesced snapshot; returns the point."""
        wanted = self.record.maps["A1"] | self.record.maps["Q1"]
        return self._image("image", "full", "full image of A1 | Q1 from the quiesced snapshot",
                           self.snapshots[0].view(quiesced=True), blocks=wanted,
                           quiesced=self.record.maps["Q1"])

    @_step
    def verify(self) -> MethodRecord:
        """Check that the full restores the quiesced snapshot on every block of A1 | Q1."""
        self._check("full = quiesced snapshot on A1 | Q1", self.record.points["full"],
                    self.snapshots[0].view(quiesced=True), self.record.maps["full"])
        self.record.numbers["snapshot store"] = self.snapshots[0].store_blocks
        return self.record

    def run(self, ops_before: int = 20, quiesce_blocks: int = 4,
            ops_after: int = 5) -> MethodRecord:
        """live; snapshot; quiesce; live; image; verify."""
        self._fresh()
        self.live(ops_before)
        self.snapshot()
        self.quiesce(quiesce_blocks)
        self.live(ops_after)
        self.image()
        self.verify()
        self.release()
        return self.record


class _TwoSnapshots(_Method, ABC):
    """Two snapshots t1, t2 with the live changes T between them tracked."""

    def __init__(self, chain: Chain, workload: Workload):
        super().__init__(chain, workload)
        self.tracker: ChangeTracker | None = None

    @_step
    def snapshot(self) -> BlockMap:
        """Take snapshot k; tracking of T runs from t1 to t2. Returns A_k."""
        allocated = super().snapshot()
        if len(self.snapshots) == 1:
            self.tracker = ChangeTracker(self.volume)
        elif self.tracker is not None and self.tracker.attached:
            self.record.note("snapshot", "t2", "T = live changes t1..t2 (CBT)", "T",
                             self.tracker.detach())
        return allocated

    def run(self, ops_before: int = 20, ops_between: int = 8,
            quiesce_blocks: int = 4) -> MethodRecord:
        """live; snapshot; quiesce; images at t1; live; snapshot; quiesce; images at t2;
        verify."""
        self._fresh()
        self.live(ops_before)
        self.snapshot()
        self.quiesce(quiesce_blocks)
        self.images_t1()
        self.live(ops_between)
        self.snapshot()
        self.quiesce(quiesce_blocks)
        self.images_t2()
        self.verify()
        self.release()
        return self.record

    @abstractmethod
    def images_t1(self) -> None:
        """The images of time t1."""

    @abstractmethod
    def images_t2(self) -> None:
        """The images of time t2."""

    @abstractmethod
    def verify(self) -> MethodRecord:
        """Check every point against the snapshot states it stands for."""


class BranchingChain(_TwoSnapshots):
    """Method 3: crash-consistent trunk, application-consistent leaves.

    Steps: :meth:`live`, :meth:`snapshot` (t1), :meth:`quiesce`, :meth:`full`,
    :meth:`leaf1`, :meth:`live` (tracked), :meth:`snapshot` (t2),
    :meth:`quiesce`, :meth:`trunk`, :meth:`leaf2`, :meth:`verify`.
    """

    title = "Method 3 — branching chain"
    sequence = ("snapshot", "quiesce*", "full", "leaf1", "snapshot", "quiesce*", "trunk",
                "leaf2", "verify")

    @_step
    def full(self) -> int:
        """Full = A1 from the crash-consistent snapshot 1 (the trunk's root)."""
        return self._image("full", "full", "full of A1 from the crash-consistent snapshot 1",
                           self.snapshots[0].view(), blocks=self.record.maps["A1"])

    @_step
    def leaf1(self) -> int:
        """I1 (parent: full) = Q1 from the quiesced snapshot 1: application-consistent t1."""
        q1 = self.record.maps["Q1"]
        return self._image("leaf", "I1", "I1 = Q1 from the quiesced snapshot 1 (parent: full)",
                           self.snapshots[0].view(quiesced=True),
                           parent=self.record.points["full"], blocks=q1, quiesced=q1)

    @_step
    def trunk(self) -> int:
        """I2 (parent: the full, not I1) = T & A2 from the crash-consistent snapshot 2."""
        return self._image("trunk", "I2",
                           "I2 = T & A2 from the crash-consistent snapshot 2 (parent: full)",
                           self.snapshots[1].view(), parent=self.record.points["full"],
                           blocks=self.record.maps["T"] & self.record.maps["A2"])

    @_step
    def leaf2(self) -> int:
        """I3 (parent: I2) = Q2 from the quiesced snapshot 2: application-consistent t2."""
        q2 = self.record.maps["Q2"]
        return self._image("leaf", "I3", "I3 = Q2 from the quiesced snapshot 2 (parent: I2)",
                           self.snapshots[1].view(quiesced=True),
                           parent=self.record.points["I2"], blocks=q2, quiesced=q2)

    def images_t1(self) -> None:
        """full, then I1."""
        self.full()
        self.leaf1()

    def images_t2(self) -> None:
        """I2, then I3."""
        self.trunk()
        self.leaf2()

    @_step
    def verify(self) -> MethodRecord:
        """Trunk points = crash-consistent states on A; leaves = quiesced states on A | Q;
        no quiescence write in the trunk."""
        m, p = self.record.maps, self.record.points
        s1, s2 = self.snapshots
        self._check("full = crash-consistent t1 on A1", p["full"], s1.view(), m["A1"])
        self._check("I1 = application-consistent t1 on A1 | Q1", p["I1"],
                    s1.view(quiesced=True), m["A1"] | m["Q1"])
        self._check("I2 = crash-consistent t2 on A2", p["I2"], s2.view(), m["A2"])
        self._check("I3 = application-consistent t2 on A2 | Q2", p["I3"],
                    s2.view(quiesced=True), m["A2"] | m["Q2"])
        in_trunk = self.quiescence_blocks(p["full"]) | self.quiescence_blocks(p["I2"])
        self.record.maps["quiescence in trunk"] = in_trunk
        self.record.checks["no quiescence write in the trunk"] = not in_trunk
        return self.record


class NaiveLinearChain(_TwoSnapshots):
    """The contrast to method 3: a linear chain of quiesced images.

    full = A1 | Q1 and I (parent: full) = (T & A2) | Q2, both from the quiesced
    snapshots.  The point of t2 inherits from the full the quiescence writes of
    t1 that nothing rewrote: they leak into it.
    """

    title = "Naive linear chain (quiescence writes leak)"
    sequence = ("snapshot", "quiesce*", "images_t1", "snapshot", "quiesce*", "images_t2",
                "verify")

    @_step
    def images_t1(self) -> None:
        """full = A1 | Q1 from the quiesced snapshot 1."""
        m = self.record.maps
        self._image("full", "full", "full of A1 | Q1 from the quiesced snapshot 1",
                    self.snapshots[0].view(quiesced=True), blocks=m["A1"] | m["Q1"],
                    quiesced=m["Q1"])

    @_step
    def images_t2(self) -> None:
        """I = (T & A2) | Q2 from the quiesced snapshot 2, parent: full."""
        m = self.record.maps
        self._image("incremental", "I", "I = (T & A2) | Q2 from the quiesced snapshot 2",
                    self.snapshots[1].view(quiesced=True), parent=self.record.points["full"],
                    blocks=(m["T"] & m["A2"]) | m["Q2"], quiesced=m["Q2"])

    @_step
    def verify(self) -> MethodRecord:
        """Record the leak: Q1 blocks the t2 point inherits, and where it is wrong."""
        m, p = self.record.maps, self.record.points
        leaked = self.quiescence_blocks(p["I"], inherited_only=True)
        m["leaked"] = leaked
        m["wrong at t2"] = self._check("I = application-consistent t2 on A2 | Q2", p["I"],
                                       self.snapshots[1].view(quiesced=True), m["A2"] | m["Q2"])
        self.record.checks["no quiescence write of t1 in the t2 point"] = not leaked
        return self.record


def head_start_incremental(chain: Chain, workload: Workload, *, budget: int = 8,
                           policy: str = "oldest", rounds: int = 3, ops: int = 6,
                           ops_after: int = 4, seed: int = 0) -> MethodRecord:
    """Method 1 from start to verification (see :class:`HeadStartIncremental`)."""
    return HeadStartIncremental(chain, workload, budget=budget, policy=policy,
                                seed=seed).run(rounds, ops, ops_after)


def quiesced_full_image(chain: Chain, workload: Workload, *, ops_before: int = 20,
                        quiesce_blocks: int = 4, ops_after: int = 5) -> MethodRecord:
    """Method 2 from start to verification (see :class:`QuiescedFullImage`)."""
    return QuiescedFullImage(chain, workload).run(ops_before, quiesce_blocks, ops_after)


def branching_chain(chain: Chain, workload: Workload, *, ops_before: int = 20,
                    ops_between: int = 8, quiesce_blocks: int = 4) -> MethodRecord:
    """Method 3 from start to verification (see :class:`BranchingChain`)."""
    return BranchingChain(chain, workload).run(ops_before, ops_between, quiesce_blocks)


def naive_linear_chain(chain: Chain, workload: Workload, *, ops_before: int = 20,
                       ops_between: int = 8, quiesce_blocks: int = 4) -> MethodRecord:
    """The leaking contrast to method 3 (see :class:`NaiveLinearChain`)."""
    return NaiveLinearChain(chain, workload).run(ops_before, ops_between, quiesce_blocks)

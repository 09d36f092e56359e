"""Full and incremental points of a running QEMU's disk, from real dirty bitmaps.

Every point is read from an image-fleecing snapshot, so it holds the disk as it was
at one moment while the guest writes on; tracking for the next point starts in the
same QMP transaction that takes the snapshot, so no write is lost between points.
The full stores every block of the snapshot that is not all zeros — free space too,
which on a disk in use holds the bytes of deleted files — and reports what the file
systems allocate (:func:`~blockforensics.allocation.survey` of the snapshot, per
partition on a partitioned disk); an incremental stores every block tracked; so
every point restores to its snapshot's bytes.

Head start (method 1, US 2016/0371150 A1) on the live disk: before the snapshot,
the blocks the current bitmap marks (up to :data:`HEAD_START_BYTES`) are copied
from the *live* disk into the pending image while a new bitmap takes over the
tracking (one transaction: add the new one, disable the old).  A block the guest
writes after that switch is marked in the new bitmap, so at the snapshot only the
blocks marked there (and those beyond the budget) are read from it; every other
head-start block was not written since it was copied and equals
the snapshot's.  The point therefore equals a plain incremental of the snapshot
(copying ``ahead | after`` from it), with fewer blocks read after the snapshot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from blockforensics.allocation import Survey, survey
from blockforensics.blockmap import BlockMap
from blockforensics.errors import BlockforensicsError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.nbd import NbdDisk
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.live import handover
from blockforensics.live.handover import Handover
from blockforensics.live.ops import GRANULARITY, LiveDisk, running
from blockforensics.live.qmp import Qmp
from blockforensics.nbd.client import NbdAddress
from blockforensics.snapshot import BlockStore

#: the most a head start copies ahead (held in memory until the snapshot), bytes
HEAD_START_BYTES = 256 << 20
#: a run's work directory in TMPDIR: ``bf-fleece-<pid>-<random>``
WORKDIR_PREFIX = "bf-fleece-"


@dataclass
class LivePoint:
    """What one live point took: blocks and seconds."""

    point: int
    tracked: int                 # blocks the tracking marked for this point (ahead | after)
    ahead: int                   # blocks copied from the live disk before the snapshot
    after: int                   # blocks read from the snapshot
    seconds_ahead: float         # the head-start copy, before the snapshot
    seconds_after_snapshot: float  # from the snapshot to the committed point
    next_bitmap: str             # the bitmap tracking for the next point
    snapshot_ns: int             # when the snapshot was taken (time.time_ns)
    ahead_map: BlockMap | None = field(default=None, repr=False)  # for plots
    after_map: BlockMap | None = field(default=None, repr=False)
    found: Survey | None = field(default=None, repr=False)  # a full's survey of the snapshot
    notes: list[str] = field(default_factory=list)  # what was recovered, and why re-read

    def to_json(self) -> dict[str, object]:
        """The counts and times (a full: and what its survey found per partition)."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)
                                  if f.name != "found" and not f.name.endswith("_map")}
        return {**out, **(self.found.to_json() if self.found else {})}


class HeadStartSource(Disk):
    """The pending incremental's source: head-start copies where they are still valid,
    the snapshot for the blocks marked after them; zeros elsewhere (never read)."""

    def __init__(self, snapshot: Disk, ahead: BlockStore, after: BlockMap):
        self.snapshot, self.ahead, self.after = snapshot, ahead, after.to_bools()
        self.size, self.block_size = snapshot.size, snapshot.block_size

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        out = np.zeros((count, self.block_size), dtype=np.uint8)
        self.ahead.overlay(out, start)
        rows = np.flatnonzero(self.after[start : start + count])
        if rows.size:
            out[rows] = self.snapshot.read_at(start + rows)
        return out


def live_full(chain: Chain, live: LiveDisk, workdir: str | os.PathLike[str], next_bitmap: str,
              *, block_size: int = 4096, all_blocks: bool = False, compress: bool = False,
              keep_snapshot: str | os.PathLike[str] | None = None,
              committed: Callable[[int], object] | None = None) -> LivePoint:
    """A full point of every block of the snapshot that is not all zeros, with the
    snapshot's survey (what its file systems allocate; not with ``all_blocks``) in
    :attr:`LivePoint.found`; ``next_bitmap`` starts tracking at that moment (and is
    removed again if the point is not committed).  ``committed(point)`` runs as soon
    as the point is in the chain."""
    return _snapshot_point(chain, live, workdir, next_bitmap, full=True, block_size=block_size,
                           surveyed=not all_blocks, compress=compress,
                           keep_snapshot=keep_snapshot, committed=committed)


def live_reread(chain: Chain, live: LiveDisk, workdir: str | os.PathLike[str],
                next_bitmap: str, *, block_size: int | None = None, compress: bool = False,
                keep_snapshot: str | os.PathLike[str] | None = None,
                committed: Callable[[int], object] | None = None) -> LivePoint:
    """An incremental without a trusted bitmap: the whole snapshot is read and the blocks
    whose contents differ from the newest point's are stored; ``next_bitmap`` starts
    tracking at the snapshot (removed again if the point is not committed)."""
    return _snapshot_point(chain, live, workdir, next_bitmap, full=False,
                           block_size=block_size or chain.block_size, surveyed=False,
                           compress=compress, keep_snapshot=keep_snapshot, committed=committed)


def _snapshot_point(chain: Chain, live: LiveDisk, workdir: str | os.PathLike[str],
                    next_bitmap: str, *, full: bool, block_size: int, surveyed: bool,
                    compress: bool, keep_snapshot: str | os.PathLike[str] | None,
                    committed: Callable[[int], object] | None) -> LivePoint:
    """A point read from a snapshot alone: a full (with the snapshot's survey if
    ``surveyed``), or an incremental of every block that differs from the newest
    point."""
    start = time.monotonic()
    point, found = None, None
    made = [] if next_bitmap in live.bitmaps() else [next_bitmap]  # removed on a failure
    try:
        with live.fleece(workdir, live.add_bitmap_action(next_bitmap)) as snap:
            with snap.exported() as address, NbdDisk(address, block_size) as disk:
                found = survey(disk, block_size) if surveyed else None
                point = backup(chain, disk, full=full, block_size=block_size,
                               compress=compress,
                               label="live full" if full else "live re-read")
                read = -(-disk.size // block_size)
            if committed is not None:
                committed(point)
            seconds = time.monotonic() - start
            if keep_snapshot is not None:
                snap.copy_to(keep_snapshot)
    except BaseException:
        if point is None:  # tracking must start again with the next attempt's snapshot
            _roll_back(live, None, made)
        raise
    stored = chain.rows()[point]["blocks"]
    assert isinstance(stored, int)
    return LivePoint(point, stored, 0, stored if full else read, 0.0, seconds, next_bitmap,
                     snap.taken_ns, found=found)


def live_incremental(chain: Chain, live: LiveDisk, workdir: str | os.PathLike[str],
                     bitmap: str, next_bitmap: str, *, head_start: bool = True,
                     block_size: int | None = None,
                     keep_snapshot: str | os.PathLike[str] | None = None,
                     before_snapshot: Callable[[], object] | None = None,
                     committed: Callable[[int], object] | None = None,
                     compress: bool = False,
                     head_start_bytes: int = HEAD_START_BYTES) -> LivePoint:
    """An incremental of the blocks ``bitmap`` (enabled, not exported) marks, read from
    a snapshot, with or without the head start (at most ``head_start_bytes`` copied
    ahead, held in memory: the lowest marked blocks; the others are read from the
    snapshot); ``next_bitmap`` tracks from the snapshot on.  ``before_snapshot()`` runs
    between the head start and the snapshot (writes made there are the ones read from
    the snapshot); ``committed(point)`` as soon as the point is in the chain.  The
    bitmaps of this point are removed after that; a run that fails before it merges
    the bitmaps it made back into ``bitmap`` (enabled again), which then marks every
    write since the newest point."""
    bs = block_size or chain.block_size
    store = BlockStore(bs)
    size = live.size()
    ahead = left = BlockMap.empty(-(-size // bs), bs)
    after_bitmap = f"{bitmap}-after" if head_start else bitmap
    existing = live.bitmaps()
    made = [name for name in {after_bitmap, next_bitmap} - {bitmap}  # merged back on a failure
            if name not in existing]
    point = None
    begin = time.monotonic()
    try:
        if head_start:
            live.qmp.transaction(live.add_bitmap_action(after_bitmap),
                                 live.disable_bitmap_action(bitmap))
            marked = live.dirty_map(bitmap, bs)
            positions = marked.positions()[: max(head_start_bytes // bs, 0)]
            ahead = BlockMap.from_positions(marked.n_blocks, positions, bs)
            left = marked - ahead  # beyond the budget: read from the snapshot
            with live.exported(live.node) as address, NbdDisk(address, bs) as disk:
                store = BlockStore.adopt(positions, disk.read_at(positions))
        if before_snapshot is not None:
            before_snapshot()
        snapped = time.monotonic()
        with live.fleece(workdir, live.add_bitmap_action(next_bitmap),
                         live.disable_bitmap_action(after_bitmap)) as snap:
            if live.size() != size:  # the head start's map no longer fits the disk
                raise UsageError(f"{live.node}: resized during the backup ({size} bytes, "
                                 f"now {live.size()}); run it again")
            after = live.dirty_map(after_bitmap, bs) | left
            with snap.exported() as address, NbdDisk(address, bs) as disk:
                source = HeadStartSource(disk, store, after)
                point = backup(chain, source, full=False, changed=ahead | after, block_size=bs,
                               compress=compress,
                               label="live head start" if head_start else "live incremental")
            if committed is not None:
                committed(point)
            done = time.monotonic()
            if keep_snapshot is not None:
                snap.copy_to(keep_snapshot)
    except BaseException:
        if point is None:
            _roll_back(live, bitmap, made)
        raise
    for name in {bitmap, after_bitmap}:
        live.remove_bitmap(name)
    return LivePoint(point, (ahead | after).count(), ahead.count(), after.count(),
                     snapped - begin, done - snapped, next_bitmap, snap.taken_ns, ahead, after)


def _roll_back(live: LiveDisk, bitmap: str | None, made: list[str]) -> None:
    """Undo a failed run's hand-over: those of the bitmaps it meant to add (``made``,
    none of which existed before) that QEMU has merged back into ``bitmap`` (enabled
    again), or with no ``bitmap`` (a failed full) removed; this process's exports,
    jobs and nodes removed first.  Best effort: when QEMU cannot be reached, the next
    run does it from the chain's record (:func:`blockforensics.live.handover.recover`)."""
    with contextlib.suppress(BlockforensicsError, OSError):
        live.remove_leftovers(mine=True)  # an export interrupted would keep a bitmap busy
        present = live.bitmap_states()
        made = [name for name in made if name in present]
        if bitmap is not None and bitmap in present:
            live.qmp.transaction(*live.merge_back_actions(bitmap, made))
        else:
            for name in made:
                live.remove_bitmap(name)


def next_bitmap_name(bitmap: str) -> str:
    """The bitmap of the next tracking period: ``NAME-1``, ``NAME-2`` …"""
    stem, dash, number = bitmap.rpartition("-")
    return f"{stem}-{int(number) + 1}" if dash and number.isdigit() else f"{bitmap}-1"


def backup_live(chain: Chain, source: str, qmp_socket: str, bitmap: str, *,
                block_size: int | None = None, head_start: bool = True,
                all_blocks: bool = False, compress: bool = False) -> LivePoint:
    """``backup SOURCE CHAIN --bitmap NAME --head-start QMP``: the full from a snapshot
    (tracking starts in ``bitmap``) when the chain is empty, else a head-start
    incremental of what ``bitmap`` tracked (tracking goes on in the next bitmap).
    One run per disk at a time; what a stopped run left is cleaned up or recovered
    first, and a bitmap the chain's record does not vouch for is never trusted: the
    point then reads the whole snapshot (:mod:`blockforensics.live.handover`)."""
    try:
        return _backup_live(chain, source, qmp_socket, bitmap, block_size=block_size,
                            head_start=head_start, all_blocks=all_blocks, compress=compress)
    except ConnectionError as exc:  # QEMU gone, or it dropped an NBD export under us
        raise UsageError(f"{source}: the connection to QEMU was lost ({exc.strerror or exc}); "
                         "the next run recovers the tracking") from None


def _backup_live(chain: Chain, source: str, qmp_socket: str, bitmap: str, *,
                 block_size: int | None, head_start: bool, all_blocks: bool,
                 compress: bool) -> LivePoint:
    with Qmp(qmp_socket) as qmp, tempfile.TemporaryDirectory(
            prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as work:
        address = NbdAddress.parse(source)
        first = LiveDisk.of_export(qmp, address, filtered=True)
        with first.locked():
            orphans = first.remove_leftovers() + _remove_dead_workdirs()
            live = LiveDisk.of_export(qmp, address)  # a stopped run's filter is gone now
            record, notes = handover.recover(chain, live, handover.load(chain.directory))
            if orphans:
                notes.insert(0, f"removed what a stopped backup left in QEMU: "
                                f"{', '.join(orphans)}")
            if not len(chain):  # tracking starts in a new bitmap (removed if this fails)
                _check_new(live.node, [bitmap], live.bitmap_states())
                handover.save(chain.directory, Handover(live.identity(), pending=[bitmap]))
                done = live_full(chain, live, work, bitmap, block_size=block_size or 4096,
                                 all_blocks=all_blocks, compress=compress,
                                 committed=_tracking_from(chain, live.identity(), bitmap))
            else:
                done = _live_next(chain, live, work, bitmap, record, block_size, head_start,
                                  compress)
    done.notes = notes + done.notes
    return done


def _remove_dead_workdirs() -> list[str]:
    """Remove the work directories (snapshot overlays, which grow with the guest's
    writes) that runs whose process is gone left in TMPDIR; their names."""
    gone = []
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name.removeprefix(WORKDIR_PREFIX).partition("-")[0]
        if pid.isdigit() and not running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(str(path))
    return gone


def _tracking_from(chain: Chain, disk: str, bitmap: str,
                   retired: list[str] | None = None) -> Callable[[int], object]:
    """What a run does once its point is committed: record that ``bitmap`` tracks
    ``disk`` since that point (and which bitmaps it retires)."""
    return lambda _: handover.save(chain.directory, Handover(
        disk, bitmap, handover.newest_id(chain), retired=retired or []))


def _live_next(chain: Chain, live: LiveDisk, work: str, bitmap: str,
               record: Handover | None, block_size: int | None,
               head_start: bool, compress: bool) -> LivePoint:
    """The next point from ``bitmap`` when the record vouches for it and QEMU kept it
    recording; else from the whole snapshot, with a note saying why."""
    newest, node, disk = chain.point(-1), live.node, live.identity()
    trusted = record.trusted(chain, disk) if record is not None else None
    states = live.bitmap_states()
    state = states.get(bitmap)
    if trusted is not None and bitmap != trusted:
        missing = f"no dirty bitmap {bitmap!r}" if state is None else \
            f"bitmap {bitmap!r} started after point {newest} and cannot vouch for the " \
            "writes before it"
        raise UsageError(f"{node}: {missing}; the bitmap tracking this disk since point "
                         f"{newest} is {trusted!r} (--bitmap {trusted})")
    if state is not None and state["busy"]:
        raise UsageError(f"{node}: dirty bitmap {bitmap!r} is busy (exported, or used by "
                         "another job); try again when it is free")
    ours = [bitmap] if record is not None and record.disk == disk and \
        record.bitmap == bitmap and state is not None else []
    why = _distrust(bitmap, state) if trusted is not None else \
        f"no record that bitmap {bitmap!r} has tracked {node} since point {newest}'s snapshot"
    directory = chain.directory
    if why is None:
        bs = block_size or chain.block_size
        following = next_bitmap_name(bitmap)
        made = [f"{bitmap}-after", following] if head_start else [following]
        _check_new(node, made, states)
        handover.save(directory, Handover(disk, bitmap, record.since if record else None,
                                          pending=made))
        return live_incremental(chain, live, work, bitmap, following, head_start=head_start,
                                block_size=bs, compress=compress, committed=_tracking_from(
                                    chain, disk, following, [bitmap, *made[:-1]]))
    following = bitmap if bitmap not in states else next_bitmap_name(bitmap)
    _check_new(node, [following], states)
    handover.save(directory, Handover(disk, record.bitmap if record else None,
                                      record.since if record else None, pending=[following]))
    done = live_reread(chain, live, work, following, block_size=block_size, compress=compress,
                       committed=_tracking_from(chain, disk, following, ours))
    for name in ours:
        live.remove_bitmap(name)
    done.notes.append(f"{why}: the whole snapshot was read and the blocks that differ from "
                      f"point {newest} stored; tracking goes on in bitmap {following!r}")
    return done


def _distrust(bitmap: str, state: dict[str, Any] | None) -> str | None:
    """Why the recorded ``bitmap`` (QEMU's ``state`` of it, None if gone) may miss writes
    made since it started; None when it cannot have."""
    if state is None:
        return f"bitmap {bitmap!r} is gone (QEMU restarted, or it was removed)"
    if state.get("inconsistent"):
        return f"bitmap {bitmap!r} is inconsistent (QEMU stopped without saving it)"
    if not state["recording"]:
        return f"bitmap {bitmap!r} is disabled: writes made while it was off are unknown"
    if state["granularity"] != GRANULARITY:
        return (f"bitmap {bitmap!r} has a granularity of {state['granularity']} bytes, not the "
                f"{GRANULARITY} of the bitmaps this tool adds: someone else made it (after a "
                "restart?)")
    return None


def _check_new(node: str, names: list[str], states: Collection[str]) -> None:
    """Refuse to run when a bitmap this run would add exists (it may be another chain's
    tracking: only bitmaps a run added are ever merged or removed after it)."""
    clash = [name for name in names if name in states]
    if clash:
        raise UsageError(f"{node}: dirty bitmap {clash[0]!r} already exists and this run "
                         "would start it (another chain's tracking?); give each chain its "
                         "own --bitmap name, or remove it (QMP block-dirty-bitmap-remove)")

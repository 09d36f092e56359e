"""Full and incremental points of a running QEMU's disk, from real dirty bitmaps.

Every point is read from an image-fleecing snapshot, so it holds the disk as it was
at one moment while the guest writes on; tracking for the next point starts in the
same QMP transaction that takes the snapshot, so no write is lost between points.
The full stores what any backup of the disk stores: the blocks its file systems
allocate and everything outside them (:func:`~blockforensics.allocation.survey` of
the snapshot, per partition on a partitioned disk); an incremental stores every
block tracked, so a restored point equals its snapshot wherever the full's free
space held zeros.

Head start (method 1, US 2016/0371150 A1) on the live disk: before the snapshot,
the blocks the current bitmap marks are copied from the *live* disk into the
pending image while a new bitmap takes over the tracking (one transaction: add the
new one, disable the old).  A block the guest writes after that switch is marked
in the new bitmap, so at the snapshot only the blocks marked there are read from
it; every other head-start block was not written since it was copied and equals
the snapshot's.  The point therefore equals a plain incremental of the snapshot
(copying ``ahead | after`` from it), with fewer blocks read after the snapshot.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from blockforensics.allocation import Survey, survey
from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.nbd import NbdDisk
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.live.ops import LiveDisk
from blockforensics.live.qmp import Qmp
from blockforensics.nbd.client import NbdAddress
from blockforensics.snapshot import BlockStore


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
              *, block_size: int = 4096,
              keep_snapshot: str | os.PathLike[str] | None = None) -> LivePoint:
    """A full point of the blocks the snapshot's survey marks (allocated, or outside
    any known file system); ``next_bitmap`` starts tracking at that moment."""
    start = time.monotonic()
    with live.fleece(workdir, live.add_bitmap_action(next_bitmap)) as snap:
        with snap.exported() as address, NbdDisk(address, block_size) as disk:
            found = survey(disk, block_size)
            point = backup(chain, disk, full=True, only=found.map, block_size=block_size,
                           label="live full")
        seconds = time.monotonic() - start
        if keep_snapshot is not None:
            snap.copy_to(keep_snapshot)
    stored = chain.rows()[point]["blocks"]
    assert isinstance(stored, int)
    return LivePoint(point, stored, 0, stored, 0.0, seconds, next_bitmap, snap.taken_ns,
                     found=found)


def live_incremental(chain: Chain, live: LiveDisk, workdir: str | os.PathLike[str],
                     bitmap: str, next_bitmap: str, *, head_start: bool = True,
                     block_size: int | None = None,
                     keep_snapshot: str | os.PathLike[str] | None = None,
                     before_snapshot: Callable[[], object] | None = None) -> LivePoint:
    """An incremental of the blocks ``bitmap`` (enabled, not exported) marks, read from
    a snapshot, with or without the head start; ``next_bitmap`` tracks from the
    snapshot on.  ``before_snapshot()`` runs between the head start and the snapshot
    (writes made there are the ones read from the snapshot).  The bitmaps of this
    point are removed afterwards."""
    bs = block_size or chain.block_size
    store = BlockStore(bs)
    ahead = BlockMap.empty(-(-live.size() // bs), bs)
    after_bitmap = bitmap
    begin = time.monotonic()
    if head_start:
        after_bitmap = f"{bitmap}-after"
        live.qmp.transaction(live.add_bitmap_action(after_bitmap),
                             live.disable_bitmap_action(bitmap))
        ahead = live.dirty_map(bitmap, bs)
        positions = ahead.positions()
        with live.exported(live.node) as address, NbdDisk(address, bs) as disk:
            store = BlockStore.adopt(positions, disk.read_at(positions))
    if before_snapshot is not None:
        before_snapshot()
    snapped = time.monotonic()
    with live.fleece(workdir, live.add_bitmap_action(next_bitmap),
                     live.disable_bitmap_action(after_bitmap)) as snap:
        after = live.dirty_map(after_bitmap, bs)
        with snap.exported() as address, NbdDisk(address, bs) as disk:
            source = HeadStartSource(disk, store, after)
            point = backup(chain, source, full=False, changed=ahead | after, block_size=bs,
                           label="live head start" if head_start else "live incremental")
        done = time.monotonic()
        if keep_snapshot is not None:
            snap.copy_to(keep_snapshot)
    for name in {bitmap, after_bitmap}:
        live.remove_bitmap(name)
    return LivePoint(point, (ahead | after).count(), ahead.count(), after.count(),
                     snapped - begin, done - snapped, next_bitmap, snap.taken_ns, ahead, after)


def next_bitmap_name(bitmap: str) -> str:
    """The bitmap of the next tracking period: ``NAME-1``, ``NAME-2`` …"""
    stem, dash, number = bitmap.rpartition("-")
    return f"{stem}-{int(number) + 1}" if dash and number.isdigit() else f"{bitmap}-1"


def backup_live(chain: Chain, source: str, qmp_socket: str, bitmap: str, *,
                block_size: int | None = None, head_start: bool = True) -> LivePoint:
    """``backup SOURCE CHAIN --bitmap NAME --head-start QMP``: the full from a snapshot
    (tracking starts in ``bitmap``) when the chain is empty, else a head-start
    incremental of what ``bitmap`` tracked (tracking goes on in the next bitmap)."""
    with Qmp(qmp_socket) as qmp, tempfile.TemporaryDirectory(prefix="bf-fleece-") as work:
        live = LiveDisk.of_export(qmp, NbdAddress.parse(source))
        if not len(chain):
            return live_full(chain, live, work, bitmap, block_size=block_size or 4096)
        if bitmap not in live.bitmaps():
            raise UsageError(f"{live.node}: no dirty bitmap {bitmap!r} "
                             f"(bitmaps: {', '.join(live.bitmaps()) or 'none'})")
        return live_incremental(chain, live, work, bitmap, next_bitmap_name(bitmap),
                                head_start=head_start, block_size=block_size)

"""Methods 2 and 3 on a running guest: quiescence writes made for real.

Each snapshot is an image-fleecing snapshot of the live disk (crash-consistent) with
a quiesced view on top (:class:`~blockforensics.live.quiesce.Quiesced`) into which
the quiescence step writes; QEMU's bitmap on that view is Q.  The disk may be a bare
file system or partitioned (MBR or GPT, as real VMs boot from): the crash view's
survey finds the partitions, and ``e2fsck -fy`` replays the journal of each
ext2/3/4 one alone (:meth:`~blockforensics.live.quiesce.Quiesced.replay`), so Q lies
inside those partitions; FAT, NTFS, swap and unknown ones get nothing written, and
the notes returned say so per partition.  A is the set of blocks the file systems
allocate (everything outside known file systems included, as any backup copies);
on a journaled file system whose journal still holds allocations, a block counts as
allocated when either view allocates it (so the blocks the replay hands out are
copied too).

- Method 2 (US 2016/0357641 A1): one full image of A | Q, from the quiesced view.
- Method 3 (US 2016/0357769 A1): trunk full = A1 from crash view 1; leaf I1 (parent
  full) = Q1 from quiesced view 1; a dirty bitmap T tracks the live disk from t1 to
  t2; trunk I2 (parent **full**) = T & A2 from crash view 2; leaf I3 (parent I2) = Q2
  from quiesced view 2.  The trunk never holds a quiescence write.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockforensics.allocation import Survey, allocation_map, survey
from blockforensics.blockmap import BlockMap
from blockforensics.errors import BlockforensicsError
from blockforensics.formats.base import Disk
from blockforensics.formats.nbd import NbdDisk
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.live.ops import LiveDisk
from blockforensics.live.quiesce import Quiesced


@dataclass
class SnapshotPair:
    """The two views of one live snapshot, their maps, what the quiescence step did per
    partition, and (if kept) raw copies of both views."""

    crash: Disk
    quiesced: Disk
    allocated: BlockMap   # A
    quiescence: BlockMap  # Q
    crash_copy: Path | None = None
    quiesced_copy: Path | None = None
    notes: list[str] = field(default_factory=list)  # per partition: replayed, or why not
    found: Survey | None = None  # the crash view's partitions and file systems


@contextmanager
def snapshot_pair(live: LiveDisk, workdir: str | os.PathLike[str], *actions: dict[str, Any],
                  block_size: int = 4096, keep: str | os.PathLike[str] | None = None
                  ) -> Iterator[SnapshotPair]:
    """Snapshot the live disk (with ``actions`` in the same transaction), quiesce it and
    yield both views; ``keep``: a path prefix for raw copies of both (for checks)."""
    with live.fleece(workdir, *actions) as snap, Quiesced(snap, workdir) as quiet, \
            snap.exported() as a, NbdDisk(a, block_size) as crash:
        found = survey(crash, block_size)
        notes = quiet.replay(found)
        q = quiet.written(block_size)
        copies: tuple[Path | None, Path | None] = (None, None)
        if keep is not None:
            copies = (snap.copy_to(f"{keep}.crash.raw"), quiet.copy_to(f"{keep}.quiesced.raw"))
        with quiet.exported() as b, NbdDisk(b, block_size) as quiesced:
            allocated = found.map | allocation_map(quiesced, block_size)
            yield SnapshotPair(crash, quiesced, allocated, q, *copies, notes=notes, found=found)


def quiesced_full_image(chain: Chain, live: LiveDisk, workdir: str | os.PathLike[str], *,
                        block_size: int = 4096, keep: str | os.PathLike[str] | None = None
                        ) -> dict[str, Any]:
    """Method 2: a full image of A | Q from the quiesced view of one snapshot; its point,
    the blocks of A, Q and Q - A, Q itself (``quiescence_map``, for plots and checks)
    and ``notes`` (the quiescence step per partition)."""
    with snapshot_pair(live, workdir, block_size=block_size, keep=keep) as pair:
        point = backup(chain, pair.quiesced, full=True, block_size=block_size,
                       only=pair.allocated | pair.quiescence, label="method 2: A | Q")
        return {"point": point, "allocated": pair.allocated.count(),
                "quiescence": pair.quiescence.count(),
                "quiescence_outside_allocated": (pair.quiescence - pair.allocated).count(),
                "quiescence_map": pair.quiescence, "notes": pair.notes}


def branching_chain(chain: Chain, live: LiveDisk, workdir: str | os.PathLike[str],
                    between: Callable[[], object], *, block_size: int = 4096,
                    keep: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Method 3 over two snapshots; ``between()`` runs between them (the guest writes).
    Returns per image its point, parent, blocks and their ``map`` (leaves: and the
    ``notes`` of their quiescence step, per partition)."""
    tracking = live.fresh("bf-t")
    out: dict[str, dict[str, Any]] = {}
    try:
        with snapshot_pair(live, workdir, live.add_bitmap_action(tracking),
                           block_size=block_size, keep=keep and f"{keep}1") as one:
            full = backup(chain, one.crash, full=True, only=one.allocated, block_size=block_size,
                          label="method 3 trunk: A1, crash-consistent")
            leaf1 = backup(chain, one.quiesced, parent=full, changed=one.quiescence,
                           label="method 3 leaf: Q1, quiesced")
            out["full"] = {"point": full, "blocks": one.allocated.count(), "map": one.allocated}
            out["leaf1"] = {"point": leaf1, "parent": full, "blocks": one.quiescence.count(),
                            "map": one.quiescence, "notes": one.notes}
        between()
        with snapshot_pair(live, workdir, live.disable_bitmap_action(tracking),
                           block_size=block_size, keep=keep and f"{keep}2") as two:
            changed = live.dirty_map(tracking, block_size)
            trunk = backup(chain, two.crash, parent=full, changed=changed & two.allocated,
                           label="method 3 trunk: T & A2, crash-consistent")
            leaf2 = backup(chain, two.quiesced, parent=trunk, changed=two.quiescence,
                           label="method 3 leaf: Q2, quiesced")
            out["trunk2"] = {"point": trunk, "parent": full, "tracked": changed.count(),
                             "blocks": (changed & two.allocated).count(),
                             "map": changed & two.allocated}
            out["leaf2"] = {"point": leaf2, "parent": trunk, "blocks": two.quiescence.count(),
                            "map": two.quiescence, "notes": two.notes}
    finally:  # T serves this call alone: never left tracking after it, however it ends
        with contextlib.suppress(BlockforensicsError, OSError):  # QEMU gone: so is T
            if tracking in live.bitmaps():
                live.remove_bitmap(tracking)
    return out

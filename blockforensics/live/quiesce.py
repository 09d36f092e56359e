"""Quiescence writes into a live snapshot, captured by QEMU as the block map Q.

A quiesced view of a :class:`~blockforensics.live.ops.Fleece` snapshot is a second
qcow2 overlay on top of it with a dirty bitmap: whatever the quiescence step writes
(here ``e2fsck -fy`` replaying the ext4 journal, through a FUSE export of the
overlay) lands in the overlay and is marked in the bitmap, so Q is exactly the
blocks written, even those rewritten with the same bytes.  The snapshot below stays
crash-consistent, so both views are readable at once — what methods 2 and 3 need.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.live.ops import Fleece
from blockforensics.nbd.client import NbdAddress
from blockforensics.tools import require

BITMAP = "quiescence"


class Quiesced:
    """The quiesced view of ``snapshot`` (writable overlay + bitmap); release() drops it."""

    def __init__(self, snapshot: Fleece, workdir: str | os.PathLike[str]):
        self.snapshot = snapshot
        self.live = live = snapshot.live
        self.node = live.fresh("bf-quiesced")
        self.overlay = Path(workdir) / f"{self.node}.qcow2"
        done = subprocess.run([require("qemu-img"), "create", "-q", "-f", "qcow2",
                               str(self.overlay), str(live.size())],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise UsageError(f"qemu-img create failed: {done.stderr.strip()}")
        live.qmp.execute("blockdev-add", driver="qcow2", **{"node-name": self.node},
                         file={"driver": "file", "filename": str(self.overlay)},
                         backing=snapshot.node)
        live.add_bitmap(BITMAP, self.node)

    def run(self, argv: Sequence[str], ok: Sequence[int] = (0,),
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``argv + [FILE]``, FILE being the quiesced view as a writable file (a FUSE
        export); its exit status must be in ``ok``."""
        mountpoint = self.overlay.with_suffix(".img")
        mountpoint.touch()
        name = self.live.fresh("bf-fuse")
        self.live.qmp.execute("block-export-add", type="fuse", id=name,
                              **{"node-name": self.node}, mountpoint=str(mountpoint),
                              writable=True)
        try:
            done = subprocess.run([*argv, str(mountpoint)], capture_output=True, text=True,
                                  timeout=timeout, check=False)
        finally:
            self.live.unexport(name)
            mountpoint.unlink(missing_ok=True)
        if done.returncode not in ok:
            raise UsageError(f"quiescence step {argv[0]} exited with {done.returncode}: "
                             f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}")
        return done

    def written(self, block_size: int = 4096) -> BlockMap:
        """Q: the blocks the quiescence step wrote (tracking stops here)."""
        self.live.qmp.execute("block-dirty-bitmap-disable", node=self.node, name=BITMAP)
        return self.live.dirty_map(BITMAP, block_size, node=self.node)

    def copy_to(self, path: str | os.PathLike[str]) -> Path:
        """The quiesced view's bytes into a raw file."""
        return self.live.copy_node(self.node, path)

    def exported(self) -> AbstractContextManager[NbdAddress]:
        return self.live.exported(self.node)

    def release(self) -> None:
        self.live.qmp.execute("blockdev-del", **{"node-name": self.node})
        self.overlay.unlink(missing_ok=True)

    def __enter__(self) -> Quiesced:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


#: journal replay and repair of an ext2/3/4 file system (exit 1: errors corrected)
E2FSCK_REPLAY = ("e2fsck", "-fy")
E2FSCK_OK = (0, 1)

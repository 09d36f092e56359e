"""Quiescence writes into a live snapshot, captured by QEMU as the block map Q.

A quiesced view of a :class:`~blockforensics.live.ops.Fleece` snapshot is a second
qcow2 overlay on top of it with a dirty bitmap: whatever the quiescence step writes
lands in the overlay and is marked in the bitmap, so Q is exactly the blocks
written, even those rewritten with the same bytes.  The snapshot below stays
crash-consistent, so both views are readable at once — what methods 2 and 3 need.

The quiescence step runs per file system (:meth:`Quiesced.replay`): the view's
partitions are read (:func:`~blockforensics.allocation.survey`, a bare file system
being one "partition" at byte 0), and each ext2/3/4 one gets ``e2fsck -fy`` —
journal replay and repair — on that partition alone: a QEMU ``raw`` node with
``offset`` and ``size`` over the overlay, FUSE-exported writable, so its writes
land in the overlay at their disk offsets and the one bitmap collects them all
(Q is the union of every replay's writes).  A linear LVM2 logical volume is
replayed the same way when its extents lie in one piece; one in several pieces
(a raw window is one byte range, and there is no device-mapper to join them) is
put together in a file from a window per piece, replayed there, and the 4 KiB
blocks whose bytes the replay changed are written back through the windows (Q
then holds the blocks it changed, not those it rewrote with the same bytes: the
two views agree on those).  FAT, NTFS, swap and unknown partitions have no
journal replay here; a note per partition says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from blockforensics.allocation import Survey, filesystem_partitions, survey
from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.formats.nbd import NbdDisk
from blockforensics.fs.ext import ExtFileSystem
from blockforensics.live.ops import Fleece
from blockforensics.nbd.client import NbdAddress
from blockforensics.tools import require

BITMAP = "quiescence"
#: journal replay and repair of an ext2/3/4 file system (exit 1: errors corrected)
E2FSCK_REPLAY = ("e2fsck", "-fy")
E2FSCK_OK = (0, 1)
#: bytes compared (and written back, in runs of changed 4 KiB blocks) at a time
CHUNK_BYTES = 4 << 20
BLOCK = 4096


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

    @contextmanager
    def window(self, offset: int, size: int) -> Iterator[Path]:
        """Bytes ``offset .. offset + size`` of the quiesced view as a writable file (a
        ``raw`` node with offset and size over the overlay, FUSE-exported), for the
        duration of the block."""
        window = self.live.fresh("bf-window")
        self.live.qmp.execute("blockdev-add", driver="raw", **{"node-name": window},
                              file=self.node, offset=offset, size=size)
        mountpoint = self.overlay.with_name(f"{window}.img")
        mountpoint.touch()
        name = self.live.fresh("bf-fuse")
        try:
            self.live.qmp.execute("block-export-add", type="fuse", id=name,
                                  **{"node-name": window}, mountpoint=str(mountpoint),
                                  writable=True)
            try:
                yield mountpoint
            finally:
                self.live.unexport(name)
        finally:
            mountpoint.unlink(missing_ok=True)
            self.live.qmp.execute("blockdev-del", **{"node-name": window})

    def run(self, argv: Sequence[str], ok: Sequence[int] = (0,), timeout: float = 300, *,
            offset: int = 0, size: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv + [FILE]``, FILE being ``size`` bytes (default: to the end) of the
        quiesced view from byte ``offset`` (:meth:`window`); its exit status must be in
        ``ok``."""
        size = self.live.size() - offset if size is None else size
        with self.window(offset, size) as path:
            return _checked(argv, ok, subprocess.run(
                [*argv, str(path)], capture_output=True, text=True, timeout=timeout,
                check=False))

    def run_joined(self, argv: Sequence[str], pieces: Sequence[tuple[int, int]],
                   ok: Sequence[int] = (0,), timeout: float = 300
                   ) -> subprocess.CompletedProcess[str]:
        """Run ``argv + [FILE]``, FILE being the disk byte ranges ``pieces`` (``(start,
        stop)``) of the quiesced view put together (a logical volume in several
        pieces), in a file of its own; then the 4 KiB blocks whose bytes it changed are
        written back into the view through a window per piece (one at a time: QEMU
        lets no two writable windows share the overlay)."""
        joined = self.overlay.with_name(f"{self.live.fresh('bf-joined')}.img")
        try:
            with joined.open("wb") as out:
                for start, stop in pieces:
                    with self.window(start, stop - start) as path, path.open("rb") as src:
                        shutil.copyfileobj(src, out, CHUNK_BYTES)
            done = _checked(argv, ok, subprocess.run(
                [*argv, str(joined)], capture_output=True, text=True, timeout=timeout,
                check=False))
            with joined.open("rb") as src:
                for start, stop in pieces:
                    with self.window(start, stop - start) as path, path.open("r+b") as dst:
                        _write_changes(src, dst)
        finally:
            joined.unlink(missing_ok=True)
        return done

    def replay(self, found: Survey | None = None, argv: Sequence[str] = E2FSCK_REPLAY,
               ok: Sequence[int] = E2FSCK_OK) -> list[str]:
        """The quiescence step per file system: ``argv`` (journal replay) on every
        ext2/3/4 partition or linear LVM2 logical volume alone,
        of the view's own survey or of ``found`` (the crash view's, the same bytes);
        one note per region saying what was done or why nothing was (FAT, NTFS, swap,
        unknown: no journal replay here); a logical volume in several pieces through
        :meth:`run_joined`."""
        pieces: dict[str, list[tuple[int, int]]] = {}  # logical volume -> disk extents
        if found is None or any(r.kind == "lv" for r in found.regions):
            with self.exported() as address, NbdDisk(address) as disk:
                found = survey(disk) if found is None else found
                pieces = {p.name: p.extents() for p in filesystem_partitions(disk)
                          if p.kind == "lv"}
        notes = []
        for region in found.regions:
            what = f"{region.where} ({region.filesystem or 'not recognised'})"
            extents = (pieces.get(region.name, []) if region.kind == "lv" else
                       [(region.start_byte, region.start_byte + region.length_bytes)])
            if region.filesystem not in ExtFileSystem.kinds:
                notes.append(f"{what}: {_nothing_to_replay(region.filesystem)}")
            elif len(extents) > 1:
                done = self.run_joined(argv, extents, ok)
                notes.append(f"{what}: {' '.join(argv)} exited with {done.returncode} (its "
                             f"{len(extents)} pieces put together; the blocks it changed "
                             f"written back)")
            else:
                start, stop = extents[0]
                done = self.run(argv, ok, offset=start, size=min(stop, self.live.size()) - start)
                notes.append(f"{what}: {' '.join(argv)} exited with {done.returncode}")
        return notes

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


def _checked(argv: Sequence[str], ok: Sequence[int], done: subprocess.CompletedProcess[str]
             ) -> subprocess.CompletedProcess[str]:
    """``done``, a quiescence step whose exit status must be in ``ok``."""
    if done.returncode not in ok:
        raise UsageError(f"quiescence step {argv[0]} exited with {done.returncode}: "
                         f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}")
    return done


def _write_changes(src: BinaryIO, dst: BinaryIO) -> None:
    """Write into ``dst`` (from its start) the 4 KiB blocks of ``src`` (read from its
    position on, as many bytes as ``dst`` holds) whose bytes differ, run by run."""
    at = 0
    while old := dst.read(CHUNK_BYTES):
        new = src.read(len(old))
        padded = -(-len(old) // BLOCK) * BLOCK
        differs = (np.frombuffer(old.ljust(padded, b"\0"), np.uint8).reshape(-1, BLOCK)
                   != np.frombuffer(new.ljust(padded, b"\0"), np.uint8).reshape(-1, BLOCK)
                   ).any(axis=1)
        starts, lengths = BlockMap.from_bools(differs, BLOCK).run_arrays()
        for first, count in zip(starts.tolist(), lengths.tolist()):
            dst.seek(at + first * BLOCK)
            dst.write(new[first * BLOCK : (first + count) * BLOCK])
        at += len(old)
        dst.seek(at)


def _nothing_to_replay(filesystem: str | None) -> str:
    """Why a region without an ext file system gets no quiescence write."""
    if filesystem is None:
        return "swap or unknown content, nothing to replay"
    if filesystem == "lvm2":
        return "an LVM2 physical volume: its logical volumes follow"
    return f"no journal replay for {filesystem}, nothing written"


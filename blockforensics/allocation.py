"""Allocated-block maps read from real file systems' own structures.

``survey(disk)`` answers "which blocks of this disk hold something a backup
must copy, and why?": the allocated units of every file system a reader is sure
of (FAT12/16/32 from the FAT, ext2/3/4 from the block bitmaps, XFS from its
free-space B+trees, single-device Btrfs from its extent tree), and *everything*
else (table sectors, gaps, unknown partitions, unknown content, file systems
whose structures fail their own checks, partitions cut off by the end of the
image) — the safe side for a backup, with a note per partition saying which
was which, so nothing is ever left out silently.  An LVM2 physical volume (a
partition or a whole disk) is read through its metadata
(:mod:`blockforensics.fs.lvm`): each linear logical volume is a region of its
own, its file system read through a view that maps the volume's bytes to the
disk's, its allocation mapped back to disk blocks; the label, metadata areas,
free extents and every volume not read are copied whole.  ``allocation_map(disk)`` is
its map alone.  Maps of different granularity are combined byte by byte: a
volume block is allocated when any byte of it is.

Units: offsets and lengths are in bytes; a :class:`BlockMap`'s positions are in
its own ``block_size`` — sectors for FAT (``BPB_BytsPerSec``), blocks for ext
(clusters with bigalloc), the disk's block size for :func:`allocation_map`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError, IntegrityError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.base import FileSystem, units_map
from blockforensics.fs.btrfs import SUPER_OFFSET as BTRFS_SUPER_OFFSET
from blockforensics.fs.btrfs import SUPER_SIZE as BTRFS_SUPER_SIZE
from blockforensics.fs.btrfs import BtrfsFileSystem, has_btrfs_magic
from blockforensics.fs.ext import SUPERBLOCK, SUPERBLOCK_OFFSET, ExtFileSystem, has_ext_magic
from blockforensics.fs.fat import BOOT_SECTOR, FatFileSystem, bpb_problem
from blockforensics.fs.gpt import looks_like_gpt, read_gpt
from blockforensics.fs.lvm import find_label, read_layout
from blockforensics.fs.mbr import SECTOR, SECTOR_SIZES, Partition, looks_like_mbr, read_table
from blockforensics.fs.sleuthkit import TskFileSystem
from blockforensics.fs.xfs import XfsFileSystem, has_xfs_magic

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FILESYSTEM_KINDS", "Region", "Survey", "allocation_map", "detect",
           "filesystem_allocation", "filesystem_partitions", "open_filesystem",
           "partition_table", "partitions", "survey"]

DiskLike = Disk | str | os.PathLike[str]

#: names :func:`detect` returns for file systems this module reads
FILESYSTEM_KINDS = (*FatFileSystem.kinds, *ExtFileSystem.kinds, *XfsFileSystem.kinds)


@contextmanager
def _opened(disk: DiskLike) -> Iterator[Disk]:
    """The Disk itself, or a RawDisk over a path (closed afterwards)."""
    if isinstance(disk, Disk):
        yield disk
        return
    with RawDisk(disk) as raw:
        yield raw


def signed_reader(disk: Disk, offset: int) -> type[FileSystem] | None:
    """The project's own reader whose signature the primary boot sector or superblock
    at ``offset`` bears (ext, XFS, Btrfs, FAT), or None — TSK, which may read a FAT
    from its backup boot sector, not tried."""
    if has_ext_magic(disk.read(offset + SUPERBLOCK_OFFSET, SUPERBLOCK.size)):
        return ExtFileSystem
    boot = disk.read(offset, BOOT_SECTOR.size)
    if has_xfs_magic(boot):
        return XfsFileSystem
    if has_btrfs_magic(disk.read(offset + BTRFS_SUPER_OFFSET, BTRFS_SUPER_SIZE)):
        return BtrfsFileSystem
    if len(boot) == BOOT_SECTOR.size and bpb_problem(BOOT_SECTOR.parse(boot)) is None:
        return FatFileSystem
    return None


def _reader(disk: Disk, offset: int) -> type[FileSystem] | None:
    """The reader whose signature the bytes at ``offset`` bear, or None."""
    signed = signed_reader(disk, offset)
    if signed is not None:
        return signed
    if offset == 0 and looks_like_gpt(disk):
        return None  # TSK would open a GPT disk's first partition through its volume layer
    return TskFileSystem if _tsk_opens(disk, offset) else None


def _tsk_opens(disk: Disk, offset: int) -> bool:
    """Whether The Sleuth Kit recognises a file system at ``offset`` (False without
    pytsk3)."""
    try:
        TskFileSystem(disk, offset)
    except IntegrityError:
        raise  # a damaged block, not "no file system"
    except (FormatError, UsageError):
        return False
    return True


def _open(disk: Disk, offset: int) -> FileSystem | None:
    """The file system starting at byte ``offset``, or None when none is recognised;
    FormatError when a signature is there but the structures do not hold together."""
    reader = _reader(disk, offset)
    return None if reader is None else reader(disk, offset)


def open_filesystem(disk: Disk, offset: int = 0) -> FileSystem:
    """The FAT, ext or XFS file system (or one TSK opens) at byte ``offset``;
    FormatError if there is none."""
    fs = _open(disk, offset)
    if fs is None:
        raise FormatError(f"no FAT, ext, XFS or Btrfs file system at byte {offset}")
    return fs


def detect(disk: DiskLike, offset: int = 0) -> str | None:
    """What starts at byte ``offset``: "lvm2" (a physical volume's label), "fat12"..
    "fat32", "ext2".."ext4", "xfs", "gpt" (at 0), "mbr" or None."""
    with _opened(disk) as d:
        if find_label(d, offset) is not None:
            return "lvm2"
        try:
            fs = _open(d, offset)
        except FormatError:  # a signature, but structures that do not hold together
            fs = None
        if fs is not None:
            return fs.kind
        if offset == 0 and looks_like_gpt(d):
            return "gpt"
        return "mbr" if looks_like_mbr(d.read(offset, SECTOR)) else None


def partitions(disk: DiskLike) -> pd.DataFrame:
    """GPT or MBR partitions, one row each (MBR: primary 1-4, logical from 5; GPT:
    the entry's number), each LVM2 physical volume's logical volumes after it.

    Columns: index, type (MBR partition type byte, or GPT partition type GUID;
    "lvm2" for a logical volume), bootable, start_byte, length_bytes, kind
    ("primary"/"extended"/"logical"/"gpt"; "lv" for a logical volume, whose
    index is its physical volume's partition, whose start_byte is where its first
    extent lies on the disk and length_bytes its size), name (GPT; "vg/lv"),
    filesystem (what :func:`detect` finds at the partition's start, "lvm2" for a
    physical volume; None for extended ones and volumes that are not read).
    FormatError when the disk has no partition table and is not a physical volume.
    """
    import pandas as pd  # here, not at the top: the command line does not need it

    with _opened(disk) as d:
        table, found, _ = partition_table(d)
        _, to_read, _, problems = _partitions_to_read(d)
        volumes = [p for p in to_read if p.kind == "lv"]
        if table == "none" and not volumes:
            raise FormatError("not a partitioned disk (no GPT or MBR partition table)")
        rows = [] if table == "none" else [p for p in found]
        for part in found if table != "none" else [None]:
            at = rows.index(part) + 1 if part is not None else 0
            index = None if part is None else part.index
            rows[at:at] = [v for v in volumes if v.index == index]
        kinds = [None if p.kind == "extended" or (p.kind == "lv" and problems.get(p)) else
                 detect(*p.view(d)) for p in rows]
    frame = pd.DataFrame([vars(p) for p in rows], columns=[
        "index", "type", "bootable", "start_byte", "length_bytes", "kind", "name"])
    frame["filesystem"] = pd.Series(kinds, dtype=object)
    return frame


def filesystem_allocation(disk: DiskLike, offset: int = 0, length: int | None = None) -> BlockMap:
    """Allocated units of the file system at byte ``offset``, at its own granularity.

    The map has one position per unit (``block_size`` = the unit in bytes:
    the sector for FAT, the block — or bigalloc cluster — for ext) from the
    file system's first byte.  FormatError when nothing is recognised or when
    the file system declares more than ``length`` bytes (default: to the end).
    """
    with _opened(disk) as d:
        fs = open_filesystem(d, offset)
        fs.check_fits(d.size - offset if length is None else length)
        return fs.allocation()


def allocation_map(disk: DiskLike, block_size: int | None = None) -> BlockMap:
    """Allocated blocks of the whole disk, at ``block_size`` bytes (default the disk's).

    The map of :func:`survey`, which also says what was recognised where.
    """
    return survey(disk, block_size).map


@dataclass(frozen=True)
class Region:
    """What :func:`survey` found in one partition (or on a disk without a table, or in
    an LVM2 logical volume: ``kind`` "lv", ``name`` "vg/lv", ``start_byte`` where its
    first extent lies and ``length_bytes`` its size).

    ``blocks`` of the ``total`` disk blocks the region touches are in the map;
    ``note`` says why all of them are, when the region could not be read.
    """

    index: int | None  # partition number; None: the whole disk
    type: str  # partition type ("0x83", a GPT type GUID), "" without a table
    start_byte: int
    length_bytes: int
    filesystem: str | None  # "fat32", "ext4", … or None when not recognised
    blocks: int
    total: int
    note: str = ""
    kind: str = ""  # the partition's kind ("primary", "gpt", "whole", "lv" …)
    name: str = ""  # a logical volume's "vg/lv"
    #: a file system read with changes still in its journal or log: what listings show
    recovery: str = ""

    @property
    def where(self) -> str:
        if self.kind == "lv":
            return f"logical volume {self.name}"
        return "whole disk" if self.index is None else f"partition {self.index}"

    def describe(self) -> str:
        """One line: the file system and the blocks stored, or why all are copied; what
        its listings show of changes waiting in its journal or log."""
        recovery = f"; {self.recovery}" if self.recovery else ""
        if self.note:
            what = f" ({self.filesystem})" if self.filesystem else ""
            if self.kind == "lv" and self.total == 0:
                return f"{self.where}: {self.note}: not read (it has no extents of its own " \
                       "here; the extents it uses are copied whole)"
            return (f"{self.where}{what}: {self.note}: copying all {self.total} blocks"
                    f"{recovery}")
        return (f"{self.where} ({self.filesystem}): {self.blocks} of {self.total} blocks "
                f"allocated{recovery}")

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "type": self.type, "start_byte": self.start_byte,
                "length_bytes": self.length_bytes, "filesystem": self.filesystem,
                "blocks": self.blocks, "total_blocks": self.total,
                "all_blocks": bool(self.note), "note": self.note, "kind": self.kind,
                "name": self.name, "recovery": self.recovery}


@dataclass(frozen=True)
class Survey:
    """The allocation map of a disk and, region by region, what it was read from."""

    table: str  # "mbr", "gpt" or "none"
    map: BlockMap
    regions: list[Region]
    notes: list[str] = field(default_factory=list)  # about the table itself

    def report(self) -> list[str]:
        """Lines for the backup's output: the table, then one per region."""
        lines = [f"{'    ' if r.kind == 'lv' else '  '}{r.describe()}" for r in self.regions]
        if self.table == "none":
            return ["no partition table", *self.notes, *lines]
        count = sum(r.kind != "lv" for r in self.regions)
        return [f"partition table: {self.table}, {count} partitions", *self.notes, *lines,
                f"  outside the partitions (tables, gaps): all {self.outside_blocks} blocks"]

    @property
    def outside_blocks(self) -> int:
        """Blocks outside every partition (always copied)."""
        bs = self.map.block_size
        extents = sorted((r.start_byte // bs, min(-(-(r.start_byte + r.length_bytes) // bs),
                                                  self.map.n_blocks))
                         for r in self.regions if r.kind != "lv")
        inside, reached = 0, 0
        for start, stop in extents:
            inside += max(0, stop - max(start, reached))
            reached = max(reached, stop)
        return self.map.n_blocks - inside

    def to_json(self) -> dict[str, object]:
        return {"table": self.table, "notes": self.notes, "block_size": self.map.block_size,
                "allocated_blocks": self.map.count(), "n_blocks": self.map.n_blocks,
                "outside_blocks": self.outside_blocks,
                "partitions": [r.to_json() for r in self.regions]}


def survey(disk: DiskLike, block_size: int | None = None) -> Survey:
    """Which blocks of the disk a backup must copy, and what was recognised where.

    A bare file system, or a partition table whose partitions hold file systems:
    inside each file system a reader is sure of, its allocated units; everywhere
    else (table sectors, gaps, extended-partition EBRs, unknown or unreadable
    partitions, partitions cut off by the end of the image) every byte counts as
    allocated, and the region's note says why.  A block is allocated when any
    of its bytes is.
    """
    with _opened(disk) as d:
        block_size = d.block_size if block_size is None else block_size
        table, found, notes, problems = _partitions_to_read(d)
        starts: list[np.ndarray] = []
        stops: list[np.ndarray] = []
        read: list[tuple[int, int]] = []  # extents of the file systems whose maps are used
        pending = []
        for part in found:
            problem = problems.get(part)
            recovery = ""
            if problem is None or (part.kind == "lv" and not problem):
                kind, note, recovery = _read_area(d, part, starts, stops, read)
            else:  # a physical volume (its volumes are regions of their own), or a
                kind, note = ("lvm2" if part.kind != "lv" else None), problem  # volume not read
            pending.append((part, kind, note, recovery))
        outside_starts, outside_stops = _outside(read, d.size)
        starts.append(outside_starts)
        stops.append(outside_stops)
        all_starts, all_stops = np.concatenate(starts), np.concatenate(stops)
        amap = _from_byte_runs(all_starts, all_stops, d.size, block_size)
        run_starts, run_lengths = amap.run_arrays()
        run_stops = run_starts + run_lengths
        regions = []
        for part, kind, note, recovery in pending:
            blocks = total = 0
            for start, end in part.extents():
                first = start // block_size
                stop = min(-(-end // block_size), amap.n_blocks)
                inside = np.clip(run_stops, first, stop) - np.clip(run_starts, first, stop)
                blocks += int(inside.sum())
                total += max(stop - first, 0)
            regions.append(Region(part.index, part.type_name, part.start_byte, part.length_bytes,
                                  kind, blocks, total, note, part.kind,
                                  part.name if part.kind == "lv" else "", recovery))
        return Survey(table, amap, regions, notes)


def partition_table(disk: DiskLike) -> tuple[str, list[Partition], list[str]]:
    """``(table, partitions, notes)``: "gpt", "mbr" or "none" (a bare file system, or
    nothing known), the partitions as the table declares them (MBR extended ones
    included) and what was noticed reading it (a GPT's backup header used …).
    FormatError when a table is there but cannot be read."""
    with _opened(disk) as d:
        if _reader(d, 0) is not None:
            return "none", [], []
        if looks_like_gpt(d):
            table = read_gpt(d)
            return "gpt", table.partitions, table.notes
        if looks_like_mbr(d.read(0, SECTOR)):
            found, notes = _read_mbr(d)
            return "mbr", found, notes
        return "none", [], []


def _read_mbr(disk: Disk) -> tuple[list[Partition], list[str]]:
    """The MBR's partitions in the logical sector size that places file systems at
    their starts. An MBR does not record its sector size: 512 bytes is the rule, but a
    "4K native" disk counts its LBAs in 4096-byte sectors. When no partition read in
    512-byte sectors bears a file system and some read in 4096-byte ones do, the
    table is a 4K-native one (a note says so)."""
    found, notes = read_table(disk, SECTOR)
    if disk.size % SECTOR_SIZES[-1] or any(_bears_content(disk, p) for p in found):
        return found, notes
    wide, wide_notes = read_table(disk, SECTOR_SIZES[-1])
    if not any(_bears_content(disk, p) for p in wide):
        return found, notes
    return wide, [f"MBR read in {SECTOR_SIZES[-1]}-byte logical sectors (a 4K-native "
                  "disk): only there do its partitions start with file systems (or LVM2 labels)",
                  *wide_notes]


def _bears_filesystem(disk: Disk, part: Partition) -> bool:
    """Whether a non-extended partition's first bytes bear a file system's signature."""
    return (part.kind != "extended" and part.start_byte < disk.size
            and _reader(disk, part.start_byte) is not None)


def _bears_content(disk: Disk, part: Partition) -> bool:
    """A file system's signature, or an LVM2 physical volume's label, at its start."""
    return _bears_filesystem(disk, part) or (
        part.kind != "extended" and part.start_byte < disk.size
        and find_label(disk, part.start_byte) is not None)


def filesystem_partitions(disk: DiskLike) -> list[Partition]:
    """Where the disk's file systems start, for reading their files: every partition of
    its GPT or MBR table (logical ones of the EBR chain included, extended ones not)
    whose first bytes bear a file system's signature — FAT, ext, or one The Sleuth Kit
    opens (NTFS, exFAT, HFS+ …) — even when its structures then fail their checks —
    and every linear LVM2 logical volume (kind "lv", read through
    :meth:`Partition.view`) whose first bytes bear one; a bare file system, a disk
    without a table or with an unreadable one: the whole disk (index None, from byte
    0), unless it is an LVM2 physical volume."""
    with _opened(disk) as d:
        table, found, _, problems = _partitions_to_read(d)
        chosen = []
        for p in found:
            if p in problems:  # an LVM2 physical volume, or one of its logical volumes
                if p.kind == "lv" and not problems[p] and _reader(*p.view(d)):
                    chosen.append(p)
            elif table == "none" or p.index is None or _bears_filesystem(d, p):
                chosen.append(p)
        return chosen


def logical_volumes(disk: DiskLike) -> list[Partition]:
    """The LVM2 logical volumes of the disk's physical volumes that are read (kind "lv",
    linear, every piece on this disk), in the order their metadata lists them."""
    with _opened(disk) as d:
        _, found, _, problems = _partitions_to_read(d)
        return [p for p in found if p.kind == "lv" and not problems.get(p)]


def _partitions_to_read(disk: Disk) -> tuple[str, list[Partition], list[str],
                                             dict[Partition, str]]:
    """:func:`partition_table` without extended partitions; a disk without a table, or
    whose table is unreadable, is one partition (index None) covering it.  Each LVM2
    physical volume is followed by its logical volumes (kind "lv"); the last item
    maps each of those PVs and LVs to why it is not read ("" when it is)."""
    whole = [Partition(None, 0, False, 0, disk.size, "whole")]
    try:
        table, found, notes = partition_table(disk)
    except FormatError as exc:
        kind = "gpt" if looks_like_gpt(disk) else "mbr"
        found, notes = whole, [f"unreadable {kind.upper()} partition table: {exc}"]
        table = kind
    else:
        found = whole if table == "none" else [p for p in found if p.kind != "extended"]
    return (table, *_with_volumes(disk, found, notes))


def _with_volumes(disk: Disk, found: list[Partition], notes: list[str]
                  ) -> tuple[list[Partition], list[str], dict[Partition, str]]:
    """``found`` with the logical volumes of its LVM2 physical volumes after them, the
    notes, and why each PV or LV is not read ("" when it is)."""
    pvs = [p for p in found if p.start_byte < disk.size
           and find_label(disk, p.start_byte) is not None]
    if not pvs:
        return found, notes, {}
    layout = read_layout(disk, [(p.start_byte, p.length_bytes) for p in pvs])
    notes = [*notes, *layout.notes]
    problems: dict[Partition, str] = {}
    listed: set[str] = set()  # VGs whose volumes follow a PV already
    out: list[Partition] = []
    for part in found:
        out.append(part)
        if part not in pvs:
            continue
        problem = layout.pv_problems.get(part.start_byte, "")
        problems[part] = f"LVM2 physical volume not read: {problem}" if problem else ""
        vg = layout.vg_of.get(part.start_byte)
        if vg is None or vg in listed:
            continue
        listed.add(vg)
        for lv in layout.volumes:
            if lv.vg != vg:
                continue
            pieces = tuple(lv.pieces)
            volume = Partition(part.index, "lvm2", False,
                               pieces[0][1] if pieces else part.start_byte, lv.size, "lv",
                               lv.full_name, pieces)
            problems[volume] = lv.problem
            out.append(volume)
    return out, notes, problems


def _read_area(disk: Disk, part: Partition, starts: list[np.ndarray], stops: list[np.ndarray],
               read: list[tuple[int, int]]) -> tuple[str | None, str, str]:
    """Add the allocated byte runs of the file system in ``part`` (when one is read with
    certainty) to ``starts``/``stops``, as disk bytes; returns its kind, a note when it
    was not, and what its listings show of changes waiting in its journal or log
    (:meth:`~blockforensics.fs.base.FileSystem.recovery_note`).  A logical volume is
    read through its view (volume bytes), its runs mapped back to the disk extent by
    extent."""
    end = max(stop for _, stop in part.extents())
    if part.start_byte >= disk.size:
        return None, f"starts past the end of the image ({disk.size} bytes)", ""
    view, offset = part.view(disk)
    try:
        fs = _open(view, offset)
    except FormatError as exc:
        return None, str(exc), ""
    if fs is None:
        return None, "not recognised", ""
    try:
        available = min(part.length_bytes, view.size - offset)
        if end > disk.size:
            raise FormatError(f"runs past the end of the image at byte {disk.size} (a "
                              f"truncated copy? --all-blocks copies it without looking)")
        fs.check_fits(available)
        run_starts, run_lengths = fs.allocation().run_arrays()
    except FormatError as exc:
        return fs.kind, str(exc).removeprefix(f"{fs.name}: "), fs.recovery_note()
    pieces = part.pieces or ((0, part.start_byte, part.length_bytes),)
    fs_starts, fs_stops = run_starts * fs.unit, (run_starts + run_lengths) * fs.unit
    for volume_byte, disk_byte, length in pieces:  # a partition is one piece
        if part.pieces:
            lo, hi = volume_byte, min(volume_byte + length, fs.size)
        else:
            lo, hi = 0, fs.size
        if hi <= lo:
            continue
        clipped_starts = np.clip(fs_starts, lo, hi)
        clipped_stops = np.clip(fs_stops, lo, hi)
        keep = clipped_stops > clipped_starts
        starts.append(clipped_starts[keep] - lo + disk_byte)
        stops.append(clipped_stops[keep] - lo + disk_byte)
        read.append((disk_byte, disk_byte + hi - lo))
    return fs.kind, "", fs.recovery_note()


def _outside(extents: list[tuple[int, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte ranges ``[start, stop)`` of the disk outside every extent (which may overlap)."""
    edges = np.array(sorted(extents), dtype=np.int64).reshape(-1, 2)
    ends = np.maximum.accumulate(edges[:, 1]) if len(edges) else edges[:, 1]
    gap_starts = np.r_[0, ends]
    gap_stops = np.r_[edges[:, 0], size]
    return gap_starts, np.maximum(gap_stops, gap_starts)


def _from_byte_runs(starts: np.ndarray, stops: np.ndarray, total: int,
                    block_size: int) -> BlockMap:
    """Blocks of ``block_size`` bytes touched by any byte range ``[start, stop)``."""
    return units_map(starts // block_size, -(-stops // block_size), -(-total // block_size),
                     block_size)

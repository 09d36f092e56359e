"""Allocated-block maps read from real file systems' own structures.

``allocation_map(disk)`` answers "which blocks of this disk hold something a
backup must copy?": the allocated units of every recognised file system
(FAT12/16/32 from the FAT, ext2/3/4 from the block bitmaps), and *everything*
outside recognised file systems (MBR sector, gaps, unknown partitions, unknown
content) — the safe side for a backup.  Maps of different granularity are
combined byte by byte: a volume block is allocated when any byte of it is.

Units: offsets and lengths are in bytes; a :class:`BlockMap`'s positions are in
its own ``block_size`` — sectors for FAT (``BPB_BytsPerSec``), blocks for ext
(clusters with bigalloc), the disk's block size for :func:`allocation_map`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.base import FileSystem, covered
from blockforensics.fs.ext import SUPERBLOCK, SUPERBLOCK_OFFSET, ExtFileSystem, has_ext_magic
from blockforensics.fs.fat import BOOT_SECTOR, FatFileSystem, bpb_problem

if TYPE_CHECKING:
    import pandas as pd
from blockforensics.fs.mbr import SECTOR, looks_like_mbr, read_partitions

__all__ = ["FILESYSTEM_KINDS", "allocation_map", "detect", "filesystem_allocation",
           "open_filesystem", "partitions"]

DiskLike = Disk | str | os.PathLike[str]

#: names :func:`detect` returns for file systems this module reads
FILESYSTEM_KINDS = (*FatFileSystem.kinds, *ExtFileSystem.kinds)


@contextmanager
def _opened(disk: DiskLike) -> Iterator[Disk]:
    """The Disk itself, or a RawDisk over a path (closed afterwards)."""
    if isinstance(disk, Disk):
        yield disk
        return
    with RawDisk(disk) as raw:
        yield raw


def _open(disk: Disk, offset: int) -> FileSystem | None:
    """The file system starting at byte ``offset``, or None when none is recognised."""
    if has_ext_magic(disk.read(offset + SUPERBLOCK_OFFSET, SUPERBLOCK.size)):
        return ExtFileSystem(disk, offset)
    boot = disk.read(offset, BOOT_SECTOR.size)
    if len(boot) == BOOT_SECTOR.size and bpb_problem(BOOT_SECTOR.parse(boot)) is None:
        return FatFileSystem(disk, offset)
    return None


def open_filesystem(disk: Disk, offset: int = 0) -> FileSystem:
    """The FAT or ext file system at byte ``offset``; FormatError if there is none."""
    fs = _open(disk, offset)
    if fs is None:
        raise FormatError(f"no FAT or ext file system at byte {offset}")
    return fs


def detect(disk: DiskLike, offset: int = 0) -> str | None:
    """What starts at byte ``offset``: "fat12".."fat32", "ext2".."ext4", "mbr" or None."""
    with _opened(disk) as d:
        try:
            fs = _open(d, offset)
        except FormatError:  # a signature, but structures that do not hold together
            fs = None
        if fs is not None:
            return fs.kind
        return "mbr" if looks_like_mbr(d.read(offset, SECTOR)) else None


def partitions(disk: DiskLike) -> pd.DataFrame:
    """MBR partitions, one row each (primary 1-4, logical from 5).

    Columns: index, type (partition type byte), bootable, start_byte,
    length_bytes, kind ("primary"/"extended"/"logical"), filesystem (what
    :func:`detect` finds at the partition's start; None for extended ones).
    FormatError when the disk has no MBR partition table.
    """
    import pandas as pd  # here, not at the top: the command line does not need it

    with _opened(disk) as d:
        found = read_partitions(d)
        kinds = [None if p.kind == "extended" else detect(d, p.start_byte) for p in found]
    table = pd.DataFrame([vars(p) for p in found], columns=[
        "index", "type", "bootable", "start_byte", "length_bytes", "kind"])
    table["filesystem"] = pd.Series(kinds, dtype=object)
    return table


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

    A bare file system or an MBR disk whose partitions hold file systems:
    inside each recognised file system its allocated units, everywhere else
    (MBR sector, gaps, extended-partition EBRs, unknown partitions, unknown
    content) every byte counts as allocated.  A block is allocated when any of
    its bytes is.
    """
    with _opened(disk) as d:
        block_size = d.block_size if block_size is None else block_size
        starts, stops = [], []
        bounds = [0]  # edges of the recognised areas, in bytes
        for offset, length in _filesystem_areas(d):
            fs = open_filesystem(d, offset)
            fs.check_fits(length)
            run_starts, run_lengths = fs.allocation().run_arrays()
            starts.append(offset + run_starts * fs.unit)
            stops.append(offset + (run_starts + run_lengths) * fs.unit)
            bounds += [offset, offset + fs.size]
        bounds.append(d.size)
        starts.append(np.array(bounds[0::2], dtype=np.int64))  # the gaps between areas
        stops.append(np.array(bounds[1::2], dtype=np.int64))
        return _from_byte_runs(np.concatenate(starts), np.concatenate(stops), d.size, block_size)


def _filesystem_areas(disk: Disk) -> list[tuple[int, int]]:
    """``(offset, length)`` in bytes of each recognised file system, in disk order."""
    kind = detect(disk)
    if kind in FILESYSTEM_KINDS:
        return [(0, disk.size)]
    if kind != "mbr":
        return []
    table = partitions(disk)
    found = table[table["filesystem"].isin(FILESYSTEM_KINDS)].sort_values("start_byte")
    return list(zip(found["start_byte"].tolist(), found["length_bytes"].tolist()))


def _from_byte_runs(starts: np.ndarray, stops: np.ndarray, total: int,
                    block_size: int) -> BlockMap:
    """Blocks of ``block_size`` bytes touched by any byte range ``[start, stop)``."""
    n_blocks = -(-total // block_size)
    return BlockMap.from_bools(
        covered(starts // block_size, -(-stops // block_size), n_blocks), block_size)

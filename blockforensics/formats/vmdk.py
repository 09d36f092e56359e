"""VMDK (VMware Virtual Disk Format 1.1) written from a Disk: a monolithicSparse extent.

One file holds everything (the hosted sparse extent): the sparse extent header
in sector 0, the text descriptor after it, the redundant grain directory and
its grain tables, the grain directory and its grain tables, then the grains
(64 KiB each) that hold data, in disk order.  A grain directory entry names
the sector of a grain table; a grain table entry (512 per table, 32 MiB of
disk) names the sector of a grain, or 0: the grain reads as zeros.

Units: the header and the tables count 512-byte sectors; everything else here is bytes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from blockforensics.fileio import readable_by_all
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import (
    SECTOR,
    FileLayout,
    packed,
    round_up,
    touched,
    write_layout,
)
from blockforensics.formats.placement import Placement
from blockforensics.formats.record import Record, f

MAGIC = 0x564D444B  # "KDMV" little-endian
GRAIN_SECTORS = 128  # 64 KiB grains, as VMware and QEMU write
GRAIN = GRAIN_SECTORS * SECTOR
GT_ENTRIES = 512  # grain table entries (uint32) per grain table
DESCRIPTOR_SECTORS = 20
#: header flags: valid newline-detection test, redundant grain table in use
FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GT = 0x1, 0x2
#: the largest disk a sparse extent addresses (2 TiB - 1 sector of 32-bit sector numbers)
MAX_SIZE = ((1 << 32) - 1) * SECTOR


@dataclass(frozen=True)
class SparseExtentHeader(Record):
    """Sector 0 of a hosted sparse extent (little-endian, 512 bytes)."""

    _ORDER: ClassVar[str] = "<"
    _TAIL: ClassVar[str] = "433x"
    magic_number: int = f("I")
    version: int = f("I")  # 1
    flags: int = f("I")
    capacity: int = f("Q")  # sectors of disk
    grain_size: int = f("Q")  # sectors per grain
    descriptor_offset: int = f("Q")  # sector of the text descriptor
    descriptor_size: int = f("Q")  # sectors
    num_gtes_per_gt: int = f("I")
    rgd_offset: int = f("Q")  # sector of the redundant grain directory
    gd_offset: int = f("Q")  # sector of the grain directory
    over_head: int = f("Q")  # sectors before the first grain
    unclean_shutdown: int = f("B")
    single_end_line_char: bytes = f("c")  # b"\n"
    non_end_line_char: bytes = f("c")  # b" "
    double_end_line_char1: bytes = f("c")  # b"\r"
    double_end_line_char2: bytes = f("c")  # b"\n"
    compress_algorithm: int = f("H")  # 0: none


def descriptor(extent_name: str, capacity: int) -> str:
    """The text descriptor of a monolithicSparse disk of ``capacity`` sectors."""
    cylinders = min(capacity // (16 * 63), 16383)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        f"CID={secrets.randbits(32):08x}\n"
        "parentCID=ffffffff\n"
        'createType="monolithicSparse"\n'
        "\n# Extent description\n"
        f'RW {capacity} SPARSE "{extent_name}"\n'
        "\n# The Disk Data Base\n#DDB\n\n"
        'ddb.virtualHWVersion = "4"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "16"\n'
        'ddb.geometry.sectors = "63"\n'
        'ddb.adapterType = "ide"\n'
    )


class VmdkLayout(FileLayout):
    """The byte layout of a monolithicSparse VMDK of ``disk`` named ``name`` (the
    descriptor names the file itself): a grain is allocated iff any byte of it lies
    in ``disk.present()``."""

    def __init__(self, disk: Disk, name: str = "disk.vmdk"):
        super().__init__(disk, MAX_SIZE, "VMDK")
        capacity = self.size // SECTOR
        n_grains = -(-capacity // GRAIN_SECTORS)
        n_tables = -(-n_grains // GT_ENTRIES)
        gd_sectors = round_up(n_tables * 4, SECTOR) // SECTOR
        gt_sectors = GT_ENTRIES * 4 // SECTOR
        text = descriptor(name, capacity).encode()
        if len(text) > DESCRIPTOR_SECTORS * SECTOR:
            raise ValueError(f"VMDK descriptor of {len(text)} bytes does not fit")
        rgd = 1 + DESCRIPTOR_SECTORS
        gd = rgd + gd_sectors + n_tables * gt_sectors
        over_head = round_up(gd + gd_sectors + n_tables * gt_sectors, GRAIN_SECTORS)
        self.grains = touched(self.present, GRAIN, n_grains).positions()
        self.data_start = over_head * SECTOR
        self.file_size = self.data_start + self.grains.size * GRAIN
        raw_tables = bytearray(n_tables * GT_ENTRIES * 4)  # both copies of the tables
        np.frombuffer(raw_tables, dtype="<u4")[self.grains] = over_head + np.arange(
            self.grains.size, dtype=np.int64) * GRAIN_SECTORS
        header = SparseExtentHeader(
            MAGIC, 1, FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT, capacity, GRAIN_SECTORS, 1,
            DESCRIPTOR_SECTORS, GT_ENTRIES, rgd, gd, over_head, 0, b"\n", b" ", b"\r", b"\n", 0)
        self._parts: list[tuple[int, bytes | bytearray]] = [(0, header.pack()), (SECTOR, text)]
        for directory in (rgd, gd):  # each directory is followed by its own grain tables
            first_table = directory + gd_sectors
            entries = first_table + np.arange(n_tables, dtype=np.int64) * gt_sectors
            self._parts += [(directory * SECTOR, entries.astype("<u4").tobytes()),
                            (first_table * SECTOR, raw_tables)]

    def __repr__(self) -> str:
        return (f"VmdkLayout({self.size} B disk, {self.grains.size} grains of {GRAIN} B, "
                f"{self.file_size} B file)")

    def placement(self) -> Placement:
        return packed(GRAIN, self.grains, self.data_start)

    def metadata(self) -> Iterator[tuple[int, bytes | bytearray]]:
        yield from self._parts


def write_vmdk(disk: Disk, path: str | os.PathLike[str], *, progress: bool = False) -> Path:
    """Export ``disk`` to a monolithicSparse VMDK at ``path`` (atomically)."""
    return write_layout(VmdkLayout(disk, Path(path).name), path, progress=progress)


# ---------------------------------------------------------------- streamOptimized
#: header flags of a stream-optimized extent: compressed grains, markers
FLAG_COMPRESSED, FLAG_MARKERS = 1 << 16, 1 << 17
COMPRESS_DEFLATE = 1
#: the header's gd_offset when the grain directory follows at the end (see the footer)
GD_AT_END = 0xFFFFFFFFFFFFFFFF
#: metadata marker types
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3


@dataclass(frozen=True)
class GrainMarker(Record):
    """Before each compressed grain: where it goes and its compressed length."""

    _ORDER: ClassVar[str] = "<"
    lba: int = f("Q")  # disk sector of the grain
    size: int = f("I")  # bytes of compressed data that follow


@dataclass(frozen=True)
class MetadataMarker(Record):
    """A sector announcing the metadata that follows (a grain table, the directory …)."""

    _ORDER: ClassVar[str] = "<"
    _TAIL: ClassVar[str] = "496x"
    num_sectors: int = f("Q")  # sectors of metadata that follow
    size: int = f("I")  # 0
    type: int = f("I")  # MARKER_*


def write_vmdk_stream(disk: Disk, path: str | os.PathLike[str], *,
                      progress: bool = False) -> Path:
    """Export ``disk`` to a streamOptimized VMDK (deflate-compressed grains with markers,
    grain tables and directory at the end), the form VMware and VirtualBox import."""
    import zlib

    from blockforensics.fileio import atomic_writer
    from blockforensics.progress import progress_bar

    path = Path(path)
    size = round_up(disk.size, SECTOR)
    capacity = size // SECTOR
    n_grains = -(-capacity // GRAIN_SECTORS)
    n_tables = -(-n_grains // GT_ENTRIES)
    gt_sectors = GT_ENTRIES * 4 // SECTOR
    gd_sectors = round_up(n_tables * 4, SECTOR) // SECTOR
    text = descriptor(path.name, capacity).replace('"monolithicSparse"', '"streamOptimized"')
    over_head = round_up(1 + DESCRIPTOR_SECTORS, GRAIN_SECTORS)

    def header(gd_offset: int) -> bytes:
        return SparseExtentHeader(
            MAGIC, 3, FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS, capacity,
            GRAIN_SECTORS, 1, DESCRIPTOR_SECTORS, GT_ENTRIES, 0, gd_offset, over_head, 0,
            b"\n", b" ", b"\r", b"\n", COMPRESS_DEFLATE).pack()

    grains = touched(disk.present(), GRAIN, n_grains).positions()
    tables = np.zeros(n_tables * GT_ENTRIES, dtype="<u4")
    with atomic_writer(path) as fh, progress_bar(grains.size * GRAIN, path.name,
                                                 progress) as bar:
        fh.write(header(GD_AT_END).ljust(SECTOR, b"\0") + text.encode())
        at = over_head * SECTOR
        fh.seek(at)
        for grain in grains.tolist():
            first = grain * GRAIN
            data = disk.read(first, GRAIN).ljust(GRAIN, b"\0")
            if not any(data):
                continue  # a present but all-zero grain stays unallocated
            packed = zlib.compress(data, 6)
            record = GrainMarker(grain * GRAIN_SECTORS, len(packed)).pack() + packed
            tables[grain] = at // SECTOR
            record = record.ljust(round_up(len(record), SECTOR), b"\0")
            fh.write(record)
            at += len(record)
            bar.update(GRAIN)
        directory = np.zeros(gd_sectors * SECTOR // 4, dtype="<u4")
        for table in range(n_tables):
            entries = tables[table * GT_ENTRIES:(table + 1) * GT_ENTRIES]
            if not entries.any():
                continue
            fh.write(MetadataMarker(gt_sectors, 0, MARKER_GT).pack())
            at += SECTOR
            directory[table] = at // SECTOR
            fh.write(entries.tobytes())
            at += gt_sectors * SECTOR
        fh.write(MetadataMarker(gd_sectors, 0, MARKER_GD).pack())
        gd_at = at + SECTOR
        fh.write(directory.tobytes())
        fh.write(MetadataMarker(1, 0, MARKER_FOOTER).pack())
        fh.write(header(gd_at // SECTOR).ljust(SECTOR, b"\0"))
        fh.write(MetadataMarker(0, 0, MARKER_EOS).pack())
        readable_by_all(fh.fileno())
    return path

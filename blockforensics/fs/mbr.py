"""MBR partition tables: the four primary entries and the chain of EBRs.

Addresses in the table are in logical sectors (LBA): 512 bytes on most disks, 4096
on "4K native" ones — the table itself does not say which (the caller decides, see
:func:`blockforensics.allocation.partition_table`); the :class:`Partition` records this
module returns are in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockforensics.disk import MappedDisk
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.structure import Structure

SECTOR = 512  # bytes: the boot sector's size, and the usual logical sector
#: logical sector sizes of real disks, in bytes (512e and 4K native)
SECTOR_SIZES = (512, 4096)

#: the classic boot sector: 446 bytes of code, 4 partition entries, signature
BOOT_SECTOR = Structure("MbrBootSector", SECTOR, [
    (0x1BE, "64s", "partition_table"),
    (0x1FE, "H", "signature"),
])
SIGNATURE = 0xAA55
BOOT_CODE_SIZE = 440  # bytes of x86 code the BIOS runs, before the disk signature

#: one 16-byte partition entry (CHS fields are ignored: LBA is authoritative)
PARTITION_ENTRY = Structure("MbrPartitionEntry", 16, [
    (0x0, "B", "status"),
    (0x4, "B", "type"),
    (0x8, "I", "lba_first"),
    (0xC, "I", "sector_count"),
])
BOOTABLE = 0x80
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
#: an EBR chain longer than this is taken as a loop
MAX_LOGICAL = 128


@dataclass(frozen=True)
class Partition:
    """One partition; ``start_byte``/``length_bytes`` in bytes from the disk's start,
    as the table declares them (a truncated image may end before a partition does)."""

    index: int | None  # None: the whole disk of a disk without a table
    type: int | str  # MBR type byte, or GPT partition type GUID
    bootable: bool
    start_byte: int
    length_bytes: int
    kind: str  # "primary", "extended", "logical", "gpt" or "whole"
    name: str = ""  # GPT partition name; "vg/lv" for an LVM2 logical volume
    #: a volume laid out piece by piece (an LVM2 logical volume, kind "lv"): its
    #: ``(volume byte, disk byte, bytes)`` pieces; empty: contiguous from ``start_byte``
    pieces: tuple[tuple[int, int, int], ...] = ()

    def extents(self) -> list[tuple[int, int]]:
        """Disk byte ranges ``[start, stop)`` the partition (or volume) occupies."""
        if not self.pieces and self.kind != "lv":
            return [(self.start_byte, self.start_byte + self.length_bytes)]
        return [(disk_byte, disk_byte + length) for _, disk_byte, length in self.pieces]

    def view(self, disk: Disk) -> tuple[Disk, int]:
        """Where its contents are read: ``(disk, start_byte)``, or for a volume in
        pieces ``(MappedDisk, 0)``, a view whose byte 0 is the volume's first."""
        if not self.pieces:
            return disk, self.start_byte
        return MappedDisk(disk, self.pieces), 0

    @property
    def label(self) -> str:
        """How reports name it: "partition 2", "logical volume vg/root", "whole disk"."""
        if self.kind == "lv":
            return f"logical volume {self.name}"
        return "whole disk" if self.index is None else f"partition {self.index}"

    @property
    def type_name(self) -> str:
        """The type as printed: ``0x83`` for MBR, the GUID for GPT, "" for a whole disk."""
        if self.kind == "whole":
            return ""
        return f"{self.type:#04x}" if isinstance(self.type, int) else self.type


def _entries(sector: bytes) -> np.ndarray:
    table = BOOT_SECTOR.parse(sector).partition_table
    return PARTITION_ENTRY.parse_array(table, 4)


def looks_like_mbr(sector: bytes) -> bool:
    """True when ``sector`` has the signature, valid status bytes and a non-empty entry."""
    if len(sector) < SECTOR or BOOT_SECTOR.parse(sector).signature != SIGNATURE:
        return False
    entries = _entries(sector)
    used = entries["type"] != 0
    return bool(used.any() and np.isin(entries["status"], (0, BOOTABLE)).all()
                and (entries["sector_count"][used] > 0).all())


def read_partitions(disk: Disk, sector: int = SECTOR) -> list[Partition]:
    """Primary, extended and logical partitions of an MBR disk whose LBAs count
    ``sector``-byte logical sectors; FormatError if none."""
    return read_table(disk, sector)[0]


def read_table(disk: Disk, sector: int = SECTOR) -> tuple[list[Partition], list[str]]:
    """:func:`read_partitions` and what was noticed: where the EBR chain breaks (no
    signature, a loop, past the end of the image) the logical partitions after the
    break are not read — their bytes lie outside every partition found, which a
    backup copies whole — and a note says so."""
    boot = disk.read(0, SECTOR)
    if not looks_like_mbr(boot):
        raise FormatError("not an MBR partitioned disk (no valid partition table in sector 0)")
    found: list[Partition] = []
    extended_start = None
    for number, entry in enumerate(_entries(boot), start=1):
        if entry["type"] == 0:
            continue
        kind = "extended" if entry["type"] in EXTENDED_TYPES else "primary"
        found.append(_partition(number, entry, 0, kind, sector))
        if kind == "extended" and extended_start is None:
            extended_start = int(entry["lba_first"])
    notes: list[str] = []
    if extended_start is not None:
        found += _logical(disk, extended_start, sector, notes)
    return found, notes


def _partition(index: int, entry: np.void, base_lba: int, kind: str, sector: int) -> Partition:
    start = (base_lba + int(entry["lba_first"])) * sector
    length = int(entry["sector_count"]) * sector
    return Partition(index, int(entry["type"]), bool(entry["status"] & BOOTABLE),
                     start, length, kind)


def _logical(disk: Disk, extended_lba: int, sector: int, notes: list[str]) -> list[Partition]:
    """Logical partitions: follow the EBR chain (each EBR's first entry is relative to
    the EBR, its link to the next EBR relative to the extended partition's start);
    a break in the chain ends it with a note in ``notes``."""
    logical: list[Partition] = []
    ebr_lba = extended_lba
    seen: set[int] = set()
    for index in range(5, 5 + MAX_LOGICAL):
        ebr = disk.read(ebr_lba * sector, SECTOR)
        if len(ebr) < SECTOR or BOOT_SECTOR.parse(ebr).signature != SIGNATURE:
            notes.append(f"extended partition: no EBR at sector {ebr_lba}; the logical "
                         "partitions from there on are not read (copied whole)")
            return logical
        seen.add(ebr_lba)
        this, link = _entries(ebr)[:2]
        if this["type"] != 0:
            logical.append(_partition(index, this, ebr_lba, "logical", sector))
        if link["type"] == 0:
            return logical
        ebr_lba = extended_lba + int(link["lba_first"])
        if ebr_lba in seen:
            notes.append(f"extended partition: the EBR chain loops back to sector {ebr_lba}; "
                         "followed once")
            return logical
    notes.append(f"extended partition: more than {MAX_LOGICAL} EBRs; the rest are not read "
                 "(copied whole)")
    return logical

"""GUID Partition Tables (UEFI specification, chapter 5.3): header, entries, CRCs.

A GPT disk starts with a *protective* MBR (one entry of type 0xEE covering the
disk, or ``0xFFFFFFFF`` sectors when the disk is larger than that field can say
— gdisk writes that on smaller disks too, and it is valid) or a *hybrid* one
(the 0xEE entry beside up to three MBR entries mirroring GPT partitions; the GPT
is authoritative).  The primary header sits at LBA 1 and names its partition
entry array; a backup header at the disk's last LBA names a backup array.  A
header is used only when its signature, its own CRC32, ``MyLBA`` and its entry
array's CRC32 all check; when the primary fails, the backup is used, and the
table's ``notes`` say so — also when sector 0 and LBA 1 were both wiped, as a
wiper or a careless tool leaves a disk (the backup header alone then marks it as a
GPT disk).  LBAs are in logical blocks of 512 or 4096 bytes (the sector size is
whichever places a header at LBA 1, or at the last LBA).
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.mbr import (
    BOOT_SECTOR,
    SECTOR_SIZES,
    SIGNATURE,
    Partition,
    _entries,
    looks_like_mbr,
)
from blockforensics.fs.structure import Structure

#: the GPT header (UEFI 2.10, table 5.21); HeaderSize bytes of it are covered by its CRC
HEADER = Structure("GptHeader", 92, [
    (0x00, "8s", "Signature"),
    (0x08, "I", "Revision"),
    (0x0C, "I", "HeaderSize"),
    (0x10, "I", "HeaderCRC32"),
    (0x18, "Q", "MyLBA"),
    (0x20, "Q", "AlternateLBA"),
    (0x28, "Q", "FirstUsableLBA"),
    (0x30, "Q", "LastUsableLBA"),
    (0x38, "16s", "DiskGUID"),
    (0x48, "Q", "PartitionEntryLBA"),
    (0x50, "I", "NumberOfPartitionEntries"),
    (0x54, "I", "SizeOfPartitionEntry"),
    (0x58, "I", "PartitionEntryArrayCRC32"),
])
#: one partition entry (table 5.22); SizeOfPartitionEntry may be larger (128 * 2**n)
ENTRY = Structure("GptPartitionEntry", 128, [
    (0x00, "16s", "PartitionTypeGUID"),
    (0x10, "16s", "UniquePartitionGUID"),
    (0x20, "Q", "StartingLBA"),
    (0x28, "Q", "EndingLBA"),
    (0x30, "Q", "Attributes"),
    (0x38, "72s", "PartitionName"),
])
GPT_SIGNATURE = b"EFI PART"
HEADER_CRC_OFFSET = 0x10
PROTECTIVE_TYPE = 0xEE
#: more entries than this is not a table a tool wrote (the usual count is 128)
MAX_ENTRIES = 1 << 16


@dataclass
class GptTable:
    """The partitions of a GPT disk and what was noticed reading it."""

    sector: int
    partitions: list[Partition]
    disk_guid: str
    notes: list[str] = field(default_factory=list)


def has_protective_entry(sector: bytes) -> bool:
    """True when an MBR sector carries a 0xEE entry (protective or hybrid MBR)."""
    if len(sector) < BOOT_SECTOR.size or BOOT_SECTOR.parse(sector).signature != SIGNATURE:
        return False
    return bool((_entries(sector)["type"] == PROTECTIVE_TYPE).any())


def looks_like_gpt(disk: Disk) -> bool:
    """A 0xEE entry in the MBR, a GPT header signature at LBA 1, or — when sector 0
    holds no MBR at all (zeroed, overwritten) — a backup header's at the last LBA."""
    return (has_protective_entry(disk.read(0, 512)) or _sector_size(disk) is not None)


def _sector_size(disk: Disk) -> int | None:
    """The logical sector size that puts a header signature at LBA 1, else (sector 0
    holding no valid MBR: a stale backup GPT beside a newer MBR is not a table) the
    one that puts a backup header's at the disk's last LBA; None if neither does."""
    for size in SECTOR_SIZES:
        if disk.read(size, len(GPT_SIGNATURE)) == GPT_SIGNATURE:
            return size
    if looks_like_mbr(disk.read(0, 512)):
        return None
    for size in SECTOR_SIZES:
        last = disk.size // size - 1
        if last > 1 and disk.read(last * size, len(GPT_SIGNATURE)) == GPT_SIGNATURE:
            return size
    return None


def read_gpt(disk: Disk) -> GptTable:
    """The GPT of ``disk``: the primary header's table, else the backup's (with a note);
    FormatError when neither header checks."""
    notes = [] if has_protective_entry(disk.read(0, 512)) else [
        "no protective MBR (no 0xEE entry in sector 0)"]
    sector = _sector_size(disk) or 512
    last_lba = disk.size // sector - 1
    try:
        header, entries = _read_header(disk, sector, 1)
    except FormatError as primary:
        try:
            header, entries = _read_header(disk, sector, last_lba)
        except FormatError as backup:
            raise FormatError(f"no valid GPT header: primary: {primary}; "
                              f"backup at LBA {last_lba}: {backup}") from None
        notes.append(f"primary GPT header unusable ({primary}); "
                     f"the backup header at LBA {last_lba} was used")
    else:
        if header.AlternateLBA != last_lba:
            notes.append(f"the backup GPT header should be at LBA {header.AlternateLBA}, "
                         f"but the image ends at LBA {last_lba}")
        elif _disagrees(disk, sector, last_lba, entries):
            notes.append(f"the backup GPT at LBA {last_lba} lists other partitions than the "
                         "primary; the primary's were used (a table changed by hand, or "
                         "tampered with?)")
    used = np.flatnonzero(entries["PartitionTypeGUID"] != bytes(16))
    partitions = [_partition(int(i) + 1, entries[i], sector) for i in used]
    for p, i in zip(partitions, used):
        entry = entries[i]
        if not (header.FirstUsableLBA <= entry["StartingLBA"] <= entry["EndingLBA"]
                <= header.LastUsableLBA):
            notes.append(f"partition {p.index} (LBA {entry['StartingLBA']}-"
                         f"{entry['EndingLBA']}) lies outside the usable LBAs "
                         f"{header.FirstUsableLBA}-{header.LastUsableLBA}")
    return GptTable(sector, partitions, str(uuid.UUID(bytes_le=header.DiskGUID)), notes)


def _disagrees(disk: Disk, sector: int, lba: int, entries: np.ndarray) -> bool:
    """Whether the backup header at ``lba`` checks and its entry array differs from
    ``entries`` (the primary's); a backup that does not check is no disagreement."""
    try:
        return _read_header(disk, sector, lba)[1].tobytes() != entries.tobytes()
    except FormatError:
        return False


def _read_header(disk: Disk, sector: int, lba: int) -> tuple[Any, np.ndarray]:
    """The header at ``lba`` and its entry array, each checked; FormatError naming what
    fails."""
    raw = disk.read(lba * sector, sector)
    if len(raw) < HEADER.size:
        raise FormatError("past the end of the image")
    header = HEADER.parse(raw)
    if header.Signature != GPT_SIGNATURE:
        raise FormatError("no EFI PART signature")
    if not HEADER.size <= header.HeaderSize <= sector:
        raise FormatError(f"header size {header.HeaderSize}")
    covered = bytearray(raw[: header.HeaderSize])
    covered[HEADER_CRC_OFFSET : HEADER_CRC_OFFSET + 4] = bytes(4)
    if zlib.crc32(covered) != header.HeaderCRC32:
        raise FormatError("header CRC32 mismatch")
    if header.MyLBA != lba:
        raise FormatError(f"MyLBA is {header.MyLBA}, read at LBA {lba}")
    size, count = header.SizeOfPartitionEntry, header.NumberOfPartitionEntries
    if size < ENTRY.size or size % ENTRY.size or size & (size - 1) or count > MAX_ENTRIES:
        raise FormatError(f"{count} partition entries of {size} bytes")
    _check_array_placement(header, -(-size * count // sector))
    array = disk.read(header.PartitionEntryLBA * sector, size * count)
    if len(array) != size * count:
        raise FormatError("the partition entry array runs past the end of the image")
    if zlib.crc32(array) != header.PartitionEntryArrayCRC32:
        raise FormatError("partition entry array CRC32 mismatch")
    return header, ENTRY.parse_array(array, count, size)


def _check_array_placement(header: Any, sectors: int) -> None:
    """FormatError unless the header's partition entry array (``sectors`` LBAs from
    PartitionEntryLBA) lies clear of the protective MBR (LBA 0), of both headers (MyLBA,
    AlternateLBA) and of the usable LBAs, as UEFI 2.10 5.3.2 places it: an array over
    sector 0 or a header reads that structure's bytes as entries (all empty: "no
    partitions"), one in the usable area reads a partition's data."""
    if not sectors:
        return
    first, last = header.PartitionEntryLBA, header.PartitionEntryLBA + sectors - 1
    clashes = [what for what, lo, hi in [
        ("sector 0 (the protective MBR)", 0, 0),
        ("the GPT header", header.MyLBA, header.MyLBA),
        ("the other GPT header", header.AlternateLBA, header.AlternateLBA),
        (f"the usable LBAs {header.FirstUsableLBA}-{header.LastUsableLBA}",
         header.FirstUsableLBA, header.LastUsableLBA),
    ] if first <= hi and lo <= last]
    if clashes:
        raise FormatError(f"its partition entry array (LBA {first}-{last}) overlaps "
                          f"{' and '.join(clashes)}")


def _partition(index: int, entry: np.void, sector: int) -> Partition:
    start, end = int(entry["StartingLBA"]), int(entry["EndingLBA"])
    raw = bytes(entry["PartitionName"])  # numpy drops trailing NULs: pad to whole UTF-16
    name = (raw + b"\0" * (len(raw) % 2)).decode("utf-16-le", errors="replace")
    kind = bytes(entry["PartitionTypeGUID"]).ljust(16, b"\0")  # numpy drops trailing NULs
    return Partition(index, str(uuid.UUID(bytes_le=kind)),
                     False, start * sector, max(end - start + 1, 0) * sector, "gpt",
                     name.split("\0", 1)[0])

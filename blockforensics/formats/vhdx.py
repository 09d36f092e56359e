"""VHDX (Microsoft Virtual Hard Disk v2, [MS-VHDX]) written from a Disk: a dynamic disk.

Layout of the file this writer makes (every region 1 MiB aligned, as the spec
requires): the file type identifier at 0, two headers at 64 and 128 KiB, two
copies of the region table at 192 and 256 KiB, an empty log at 1 MiB, the
block allocation table (BAT) at 2 MiB, the metadata region after it, then the
payload blocks of ``BLOCK`` bytes that hold data, in disk order.

The BAT has one 8-byte entry per payload block (state in bits 0-2, file offset
in MiB in bits 20-63) with a sector-bitmap entry after every ``chunk ratio``
payload entries (unused by a dynamic disk).  Headers and region tables carry a
CRC-32C; the log is empty (its GUID zero), so readers replay nothing.

Units: bytes, unless a name says MiB or sectors.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from blockforensics.checksum import crc32c
from blockforensics.errors import FormatError
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

MiB = 1 << 20
KiB = 1 << 10
#: bytes per payload block (the spec allows 1 MiB .. 256 MiB; small keeps exports sparse)
BLOCK = 2 * MiB
#: the largest virtual disk the spec allows (64 TiB)
MAX_SIZE = 64 << 40
LOGICAL_SECTOR = PHYSICAL_SECTOR = SECTOR
#: payload blocks per sector-bitmap block: 2**23 sectors' bits in one 1 MiB bitmap block
CHUNK_RATIO = (1 << 23) * LOGICAL_SECTOR // BLOCK
#: BAT entry states
PAYLOAD_BLOCK_NOT_PRESENT, PAYLOAD_BLOCK_FULLY_PRESENT = 0, 6
CREATOR = "blockforensics"

HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
LOG_OFFSET, LOG_LENGTH = 1 * MiB, 1 * MiB
BAT_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
#: metadata items start after the 64 KiB metadata table
METADATA_ITEMS = 64 * KiB

BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
#: metadata entry flags
IS_VIRTUAL_DISK, IS_REQUIRED = 0x2, 0x4


@dataclass(frozen=True)
class FileIdentifier(Record):
    _ORDER: ClassVar[str] = "<"
    signature: bytes = f("8s")  # b"vhdxfile"
    creator: bytes = f("512s")  # UTF-16LE


@dataclass(frozen=True)
class Header(Record):
    """One of the two headers (4 KiB); the one with the higher sequence number is current."""

    _ORDER: ClassVar[str] = "<"
    _TAIL: ClassVar[str] = "4016x"
    signature: bytes = f("4s")  # b"head"
    checksum: int = f("I")  # CRC-32C of the 4 KiB with this field zero
    sequence_number: int = f("Q")
    file_write_guid: bytes = f("16s")
    data_write_guid: bytes = f("16s")
    log_guid: bytes = f("16s")  # zero: no log to replay
    log_version: int = f("H")  # 0
    version: int = f("H")  # 1
    log_length: int = f("I")
    log_offset: int = f("Q")


@dataclass(frozen=True)
class RegionTableHeader(Record):
    _ORDER: ClassVar[str] = "<"
    signature: bytes = f("4s")  # b"regi"
    checksum: int = f("I")  # CRC-32C of the 64 KiB table with this field zero
    entry_count: int = f("I")
    reserved: int = f("I")


@dataclass(frozen=True)
class RegionTableEntry(Record):
    _ORDER: ClassVar[str] = "<"
    guid: bytes = f("16s")
    file_offset: int = f("Q")
    length: int = f("I")
    required: int = f("I")  # bit 0


@dataclass(frozen=True)
class MetadataTableHeader(Record):
    _ORDER: ClassVar[str] = "<"
    _TAIL: ClassVar[str] = "20x"
    signature: bytes = f("8s")  # b"metadata"
    reserved: int = f("H")
    entry_count: int = f("H")


@dataclass(frozen=True)
class MetadataTableEntry(Record):
    _ORDER: ClassVar[str] = "<"
    item_id: bytes = f("16s")
    offset: int = f("I")  # bytes from the metadata region's start
    length: int = f("I")
    flags: int = f("I")  # IS_VIRTUAL_DISK, IS_REQUIRED
    reserved: int = f("I")


#: bytes of a header and of a region table; region table entries at most (spec 2.2.3)
HEADER_SIZE, REGION_TABLE_SIZE, MAX_REGION_ENTRIES = 4 * KiB, 64 * KiB, 2047
#: log entries start on sectors of 4 KiB; bytes of the log read at most (QEMU writes 1 MiB,
#: Hyper-V a few)
LOG_SECTOR, MAX_LOG = 4 * KiB, 64 * MiB


def _sealed_right(raw: bytes) -> bool:
    """Whether the CRC-32C at bytes 4-7 of ``raw`` is that of ``raw`` with it zero."""
    return crc32c(raw[:4] + bytes(4) + raw[8:]) == int.from_bytes(raw[4:8], "little")


def _log_entries(log: bytes, guid: bytes) -> int:
    """Valid log entries of the log region ``log`` that belong to the log ``guid`` (spec
    2.3.1: each begins a 4 KiB sector with the signature ``loge``, its CRC-32C at byte 4
    over its length at byte 8, its log GUID at byte 32)."""
    sectors = np.frombuffer(log[: len(log) // LOG_SECTOR * LOG_SECTOR], np.uint8).reshape(
        -1, LOG_SECTOR)
    signed = (sectors[:, :4] == np.frombuffer(b"loge", np.uint8)).all(axis=1)
    ours = (sectors[:, 32:48] == np.frombuffer(guid, np.uint8)).all(axis=1)
    found = 0
    for start in (np.flatnonzero(signed & ours) * LOG_SECTOR).tolist():
        length = int.from_bytes(log[start + 8 : start + 12], "little")
        found += LOG_SECTOR <= length <= len(log) - start and _sealed_right(
            log[start : start + length])
    return found


def check_headers(path: str | os.PathLike[str]) -> None:
    """FormatError (one line) unless the VHDX at ``path`` has a valid current header
    without a log to replay and a valid first region table (signatures and CRC-32C,
    spec 2.2.2-2.2.3): what a reader uses.  The current header is the one of the higher
    sequence number; one that is damaged while the other is valid (a header update cut
    off) is refused too, as QEMU refuses it, rather than read through the damaged one."""
    with open(path, "rb") as fh:
        def raw_at(offset: int, length: int) -> bytes:
            fh.seek(offset)
            return fh.read(length).ljust(length, b"\0")

        raws = [raw_at(at, HEADER_SIZE) for at in HEADER_OFFSETS]
        tables = [raw_at(at, REGION_TABLE_SIZE) for at in REGION_TABLE_OFFSETS]
        valid = [raw[:4] == b"head" and _sealed_right(raw) for raw in raws]
        headers = [Header.unpack(raw) for raw in raws]
        if not any(valid):
            raise FormatError(f"{path}: neither VHDX header is valid (signature 'head' and "
                              "CRC-32C): a damaged VHDX image")
        current = headers[0 if headers[0].sequence_number > headers[1].sequence_number else 1]
        if not valid[headers.index(current)]:
            raise FormatError(f"{path}: the newer VHDX header is damaged (signature or "
                              "CRC-32C): a header update cut off, or a damaged VHDX image")
        log = raw_at(current.log_offset, min(current.log_length, MAX_LOG))
    if current.log_guid != bytes(16) and _log_entries(log, current.log_guid):
        raise FormatError(f"{path}: the VHDX log holds writes not yet applied (the image was "
                          "not closed cleanly, or is in use): replay it on a copy (qemu-img "
                          "check -r all COPY) and back the copy up")
    table = RegionTableHeader.unpack(tables[0][: RegionTableHeader.packed_size()])
    if table.signature != b"regi" or not _sealed_right(tables[0]) or \
            table.entry_count > MAX_REGION_ENTRIES:
        raise FormatError(f"{path}: the VHDX region table is damaged (signature 'regi', "
                          "CRC-32C or entry count): a damaged VHDX image")


#: payload block sizes the spec allows (2.6.2.1: a power of 2 from 1 to 256 MiB), and
#: logical and physical sector sizes (2.6.2.4-5), bytes; the header section before any
#: region (2.1)
MIN_BLOCK, MAX_BLOCK, SECTOR_SIZES, HEADER_SECTION = MiB, 256 * MiB, (512, 4096), MiB
#: BAT entry: state in bits 0-2, file offset in MiB from bit 20 (2.5.1)
STATE_MASK, OFFSET_SHIFT = 7, 20
#: payload block states whose file offset holds the block's data (2.5.1.1)
HOLDING_STATES = (6, 7)


def check_metadata(path: str | os.PathLike[str], disk_size: int, block_size: int,
                   logical_sector: int, physical_sector: int | None) -> None:
    """FormatError (one line) unless the metadata items are as the spec requires (2.6.2):
    BlockSize a power of 2 from 1 to 256 MiB, LogicalSectorSize and PhysicalSectorSize
    512 or 4096 (``None``: the required PhysicalSectorSize item is missing), and
    VirtualDiskSize a multiple of LogicalSectorSize of at most 64 TiB (QEMU reads an
    odd size as its whole sectors, leaving the rest unread; a reader cannot know which)."""
    physical = ("the PhysicalSectorSize item is missing" if physical_sector is None else
                f"PhysicalSectorSize {physical_sector} is not 512 or 4096")
    wrong = [what for what, bad in [
        (f"BlockSize {block_size} is not a power of 2 from 1 to 256 MiB",
         not MIN_BLOCK <= block_size <= MAX_BLOCK or block_size & (block_size - 1)),
        (f"LogicalSectorSize {logical_sector} is not 512 or 4096",
         logical_sector not in SECTOR_SIZES),
        (physical, physical_sector not in SECTOR_SIZES),
        (f"VirtualDiskSize {disk_size} is not a multiple of the {logical_sector}-byte "
         "LogicalSectorSize", logical_sector in SECTOR_SIZES and disk_size % logical_sector),
        (f"VirtualDiskSize {disk_size} exceeds 64 TiB", disk_size > MAX_SIZE),
    ] if bad]
    if wrong:
        raise FormatError(f"{path}: {'; '.join(wrong)} (VHDX metadata, [MS-VHDX] 2.6.2): a "
                          "damaged VHDX image")


def check_layout(path: str | os.PathLike[str], block_size: int,
                 regions: list[tuple[int, int]], bat_bytes: int, entries: np.ndarray) -> None:
    """FormatError (one line) unless the BAT region holds the ``bat_bytes`` of entries
    read from it, and no payload block of ``entries`` (BAT entries, payload ones, of
    ``block_size`` bytes) lies in the header section or any region (``(file offset,
    length)`` in bytes: BAT, metadata, log) — as QEMU refuses them; such a block would
    read the image's own structures as the disk's data."""
    bat = regions[0]
    if bat_bytes > bat[1]:
        raise FormatError(f"{path}: the VHDX BAT region holds {bat[1]} bytes, its entries "
                          f"{bat_bytes}: a damaged VHDX image")
    holding = np.isin(entries & np.uint64(STATE_MASK), HOLDING_STATES)
    starts = (entries[holding] >> np.uint64(OFFSET_SHIFT)).astype(np.int64) * MiB
    clash = starts < HEADER_SECTION
    for offset, length in regions:
        clash |= (starts < offset + length) & (starts + block_size > offset)
    if clash.any():
        raise FormatError(f"{path}: a VHDX payload block at byte {int(starts[clash][0])} "
                          "overlaps the image's headers, BAT, metadata or log: a damaged "
                          "VHDX image")


def parent_linkage(data_write_guid: bytes) -> str:
    """A header's DataWriteGuid (bytes as stored: the first three fields little-endian) as
    a differencing child's parent locator names it (``parent_linkage``), lower case and
    without braces."""
    return str(uuid.UUID(bytes_le=bytes(data_write_guid)))


def _sealed(raw: bytes) -> bytes:
    """``raw`` (checksum field at bytes 4-7 zero) with its CRC-32C filled in."""
    return raw[:4] + crc32c(raw).to_bytes(4, "little") + raw[8:]


class VhdxLayout(FileLayout):
    """The byte layout of a dynamic VHDX file of ``disk``: a payload block of ``BLOCK``
    bytes is allocated iff any byte of it lies in ``disk.present()``.  ``disk_id`` (16
    bytes) defaults to random."""

    def __init__(self, disk: Disk, *, disk_id: bytes | None = None):
        super().__init__(disk, MAX_SIZE, "VHDX")
        n_blocks = -(-self.size // BLOCK)
        self.allocated = touched(self.present, BLOCK, n_blocks).positions()
        n_entries = n_blocks + (n_blocks - 1) // CHUNK_RATIO
        bat_length = round_up(n_entries * 8, MiB)
        metadata_offset = BAT_OFFSET + bat_length
        self.data_start = metadata_offset + METADATA_LENGTH
        self.file_size = self.data_start + self.allocated.size * BLOCK
        bat = np.zeros(n_entries, dtype="<u8")
        offsets_mib = (self.data_start + np.arange(self.allocated.size, dtype=np.uint64) * BLOCK
                       ) // MiB
        bat[self.allocated + self.allocated // CHUNK_RATIO] = (
            (offsets_mib << np.uint64(20)) | np.uint64(PAYLOAD_BLOCK_FULLY_PRESENT))
        ids = [uuid.uuid4().bytes for _ in range(2)]
        headers = [Header(b"head", 0, seq, ids[0], ids[1], bytes(16), 0, 1, LOG_LENGTH,
                          LOG_OFFSET).pack() for seq in (1, 2)]
        entries = [RegionTableEntry(BAT_GUID.bytes_le, BAT_OFFSET, bat_length, 1),
                   RegionTableEntry(METADATA_GUID.bytes_le, metadata_offset, METADATA_LENGTH, 1)]
        region = (RegionTableHeader(b"regi", 0, len(entries), 0).pack()
                  + b"".join(e.pack() for e in entries)).ljust(64 * KiB, b"\0")
        self._parts = [
            (0, FileIdentifier(b"vhdxfile", CREATOR.encode("utf-16-le")).pack()),
            *((at, _sealed(h)) for at, h in zip(HEADER_OFFSETS, headers)),
            *((at, _sealed(region)) for at in REGION_TABLE_OFFSETS),
            (BAT_OFFSET, bat.tobytes()),
            (metadata_offset, self._metadata_region(disk_id or uuid.uuid4().bytes)),
        ]

    def _metadata_region(self, disk_id: bytes) -> bytes:
        """The metadata table and its items (file parameters, sizes, the disk's id)."""
        flags = IS_VIRTUAL_DISK | IS_REQUIRED
        items = [
            (FILE_PARAMETERS, BLOCK.to_bytes(4, "little") + bytes(4), IS_REQUIRED),
            (VIRTUAL_DISK_SIZE, self.size.to_bytes(8, "little"), flags),
            (VIRTUAL_DISK_ID, disk_id, flags),
            (LOGICAL_SECTOR_SIZE, LOGICAL_SECTOR.to_bytes(4, "little"), flags),
            (PHYSICAL_SECTOR_SIZE, PHYSICAL_SECTOR.to_bytes(4, "little"), flags),
        ]
        table = MetadataTableHeader(b"metadata", 0, len(items)).pack()
        data, at = b"", METADATA_ITEMS
        for item, value, item_flags in items:
            table += MetadataTableEntry(item.bytes_le, at, len(value), item_flags, 0).pack()
            data += value
            at += len(value)
        return table.ljust(METADATA_ITEMS, b"\0") + data

    def __repr__(self) -> str:
        return (f"VhdxLayout({self.size} B disk, {self.allocated.size} blocks of {BLOCK} B, "
                f"{self.file_size} B file)")

    def placement(self) -> Placement:
        return packed(BLOCK, self.allocated, self.data_start)

    def metadata(self) -> Iterator[tuple[int, bytes]]:
        yield from self._parts


def write_vhdx(disk: Disk, path: str | os.PathLike[str], *, progress: bool = False) -> Path:
    """Export ``disk`` to a dynamic VHDX file at ``path`` (atomically)."""
    return write_layout(VhdxLayout(disk), path, progress=progress)

"""A Hyper-V differencing VHDX (a checkpoint's ``.avhdx``) written by [MS-VHDX], with the
structures ``blockforensics.formats.vhdx`` declares: headers, region table, metadata
with a parent locator, a BAT whose sector-bitmap entries follow every chunk of payload
entries, a sector bitmap block.  qemu-img cannot make one."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from blockforensics.formats.vhdx import (
    BAT_GUID,
    FILE_PARAMETERS,
    HEADER_OFFSETS,
    HEADER_SIZE,
    IS_REQUIRED,
    IS_VIRTUAL_DISK,
    LOGICAL_SECTOR_SIZE,
    METADATA_GUID,
    METADATA_ITEMS,
    PHYSICAL_SECTOR_SIZE,
    REGION_TABLE_OFFSETS,
    VIRTUAL_DISK_ID,
    VIRTUAL_DISK_SIZE,
    FileIdentifier,
    Header,
    MetadataTableEntry,
    MetadataTableHeader,
    RegionTableEntry,
    RegionTableHeader,
    _sealed,
)

MIB = 1 << 20
SECTOR = 512
BLOCK = MIB  # the child's and the parent's payload block
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
HAS_PARENT = 0x2  # file parameters flag
FULLY_PRESENT, PARTIALLY_PRESENT, SB_PRESENT = 6, 7, 6
#: payload blocks per sector bitmap block (2**23 sectors' bits in 1 MiB)
CHUNK_RATIO = (1 << 23) * SECTOR // BLOCK
#: where the child's parts lie (every region 1 MiB aligned)
LOG_AT, BAT_AT, METADATA_AT, DATA_AT = 1 * MIB, 2 * MIB, 3 * MIB, 4 * MIB


def current_header(path: Path) -> Header:
    raws = [path.read_bytes()[at : at + HEADER_SIZE] for at in HEADER_OFFSETS]
    return max((Header.unpack(raw) for raw in raws), key=lambda h: h.sequence_number)


def _guid_text(raw: bytes) -> str:
    """A GUID's bytes (as stored: the first three fields little-endian) as Windows
    writes it in a parent locator: ``{xxxxxxxx-...}``."""
    return "{" + str(uuid.UUID(bytes_le=raw)) + "}"


def _locator(entries: dict[str, str]) -> bytes:
    """A parent locator item: its type, the key/value count, then each entry's key and
    value offsets (from the item's start) and lengths, then the UTF-16LE strings."""
    head = VHDX_PARENT_LOCATOR_TYPE.bytes_le + bytes(2) + len(entries).to_bytes(2, "little")
    at = len(head) + 12 * len(entries)
    table, strings = b"", b""
    for key, value in entries.items():
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        table += (at.to_bytes(4, "little") + (at + len(k)).to_bytes(4, "little")
                  + len(k).to_bytes(2, "little") + len(v).to_bytes(2, "little"))
        strings += k + v
        at += len(k) + len(v)
    return head + table + strings


def write_child(path: Path, parent: Path, blocks: dict[int, tuple[int, bytes, np.ndarray | None]],
                size: int, linkage: bytes | None = None) -> None:
    """A differencing VHDX of ``size`` bytes at ``path`` on ``parent`` (naming its
    DataWriteGuid, or ``linkage``):
    ``blocks[i] = (state, data, sectors)`` — fully present with ``data``, or partially
    present with ``data`` in the sectors of the bool array ``sectors``."""
    linkage = current_header(parent).data_write_guid if linkage is None else linkage
    n_blocks = -(-size // BLOCK)
    chunks = -(-n_blocks // CHUNK_RATIO)
    bat = np.zeros(chunks * (CHUNK_RATIO + 1), dtype="<u8")
    bitmap = np.zeros(CHUNK_RATIO * (BLOCK // SECTOR), dtype=bool)  # chunk 0's sectors
    payload, at = [], DATA_AT
    for block, (state, data, sectors) in sorted(blocks.items()):
        entry = block + block // CHUNK_RATIO
        bat[entry] = (at // MIB) << 20 | state
        payload.append((at, data))
        at += BLOCK
        if state == PARTIALLY_PRESENT:
            assert sectors is not None
            per = BLOCK // SECTOR
            bitmap[block % CHUNK_RATIO * per : (block % CHUNK_RATIO + 1) * per] = sectors
    bat[CHUNK_RATIO] = (at // MIB) << 20 | SB_PRESENT  # chunk 0's sector bitmap block
    payload.append((at, np.packbits(bitmap, bitorder="little").tobytes()))
    disk_id = uuid.uuid4().bytes_le
    items = [
        (FILE_PARAMETERS, BLOCK.to_bytes(4, "little") + HAS_PARENT.to_bytes(4, "little"),
         IS_REQUIRED),
        (VIRTUAL_DISK_SIZE, size.to_bytes(8, "little"), IS_VIRTUAL_DISK | IS_REQUIRED),
        (VIRTUAL_DISK_ID, disk_id, IS_VIRTUAL_DISK | IS_REQUIRED),
        (LOGICAL_SECTOR_SIZE, SECTOR.to_bytes(4, "little"), IS_VIRTUAL_DISK | IS_REQUIRED),
        (PHYSICAL_SECTOR_SIZE, (4096).to_bytes(4, "little"), IS_VIRTUAL_DISK | IS_REQUIRED),
        (PARENT_LOCATOR, _locator({"parent_linkage": _guid_text(linkage),
                                   "relative_path": f".\\{parent.name}",
                                   "absolute_win32_path": f"C:\\VMs\\{parent.name}"}),
         IS_REQUIRED),
    ]
    table, values, offset = MetadataTableHeader(b"metadata", 0, len(items)).pack(), b"", \
        METADATA_ITEMS
    for item, value, flags in items:
        table += MetadataTableEntry(item.bytes_le, offset, len(value), flags, 0).pack()
        values += value
        offset += len(value)
    entries = [RegionTableEntry(BAT_GUID.bytes_le, BAT_AT, MIB, 1),
               RegionTableEntry(METADATA_GUID.bytes_le, METADATA_AT, MIB, 1)]
    region = (RegionTableHeader(b"regi", 0, len(entries), 0).pack()
              + b"".join(e.pack() for e in entries)).ljust(64 << 10, b"\0")
    ids = [uuid.uuid4().bytes for _ in range(2)]
    parts = [(0, FileIdentifier(b"vhdxfile", "Hyper-V".encode("utf-16-le")).pack()),
             *((where, _sealed(Header(b"head", 0, seq, ids[0], ids[1], bytes(16), 0, 1, MIB,
                                      LOG_AT).pack())) for where, seq in zip(HEADER_OFFSETS,
                                                                             (1, 2))),
             *((where, _sealed(region)) for where in REGION_TABLE_OFFSETS),
             (BAT_AT, bat.tobytes()), (METADATA_AT, table.ljust(METADATA_ITEMS, b"\0") + values),
             *payload]
    with path.open("wb") as fh:
        for where, data in parts:
            fh.seek(where)
            fh.write(bytes(data))
        fh.truncate(at + MIB)

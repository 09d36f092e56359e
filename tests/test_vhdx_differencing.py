"""A Hyper-V differencing VHDX (a checkpoint's ``.avhdx``) read through its parent.

qemu-img cannot make one, so the child is written here by [MS-VHDX] with the
structures ``blockforensics.formats.vhdx`` declares (headers, region table, metadata
with a parent locator, a BAT whose sector-bitmap entries follow every chunk of payload
entries, a sector bitmap block); its parent is a dynamic VHDX made by ``qemu-img``.
libvhdi (libyal), an independent reader, is the oracle for what the pair holds: whole
blocks in the child, blocks only some of whose sectors are (Hyper-V writes those for
any write smaller than a block), zeroed blocks, and the parent's everywhere else.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_tools

from blockforensics.errors import FormatError
from blockforensics.formats import open_disk
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
SIZE = 24 * MIB
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
HAS_PARENT = 0x2  # file parameters flag
FULLY_PRESENT, PARTIALLY_PRESENT, SB_PRESENT = 6, 7, 6
#: payload blocks per sector bitmap block (2**23 sectors' bits in 1 MiB)
CHUNK_RATIO = (1 << 23) * SECTOR // BLOCK
#: where the child's parts lie (every region 1 MiB aligned)
LOG_AT, BAT_AT, METADATA_AT, DATA_AT = 1 * MIB, 2 * MIB, 3 * MIB, 4 * MIB


def _current_header(path: Path) -> Header:
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


def write_child(path: Path, parent: Path, linkage: bytes,
                blocks: dict[int, tuple[int, bytes, np.ndarray | None]]) -> None:
    """A differencing VHDX at ``path`` on ``parent`` (its DataWriteGuid ``linkage``):
    ``blocks[i] = (state, data, sectors)`` — fully present with ``data``, or partially
    present with ``data`` in the sectors of the bool array ``sectors``."""
    n_blocks = SIZE // BLOCK
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
        (VIRTUAL_DISK_SIZE, SIZE.to_bytes(8, "little"), IS_VIRTUAL_DISK | IS_REQUIRED),
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


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, bytes]:
    """(child, parent, the bytes the pair holds): the parent a qemu-img VHDX of random
    data; in the child, block 3 whole, block 5 in a few sectors (one of them the
    block's last), block 12 in its first 8 sectors and block 20 (which the parent never
    wrote) in one sector.  (No block in state ZERO: libvhdi reads the parent's there,
    dissect and QEMU zeros.)"""
    require_tools("qemu-img")
    tmp = tmp_path_factory.mktemp("avhdx")
    rng = np.random.default_rng(5)
    expected = bytearray(rng.bytes(SIZE))
    expected[20 * BLOCK : 21 * BLOCK] = bytes(BLOCK)  # never written: a hole in the parent
    raw = tmp / "parent.raw"
    raw.write_bytes(expected)
    parent = tmp / "Disk.vhdx"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o",
                    "subformat=dynamic,block_size=1M", raw, parent], check=True)
    blocks: dict[int, tuple[int, bytes, np.ndarray | None]] = {}
    per = BLOCK // SECTOR
    for block, state, wanted in ((3, FULLY_PRESENT, None),
                                 (5, PARTIALLY_PRESENT, [*range(3, 11), 100, 101, per - 1]),
                                 (12, PARTIALLY_PRESENT, range(8)),
                                 (20, PARTIALLY_PRESENT, [77])):
        data = rng.bytes(BLOCK)
        sectors = None
        if wanted is not None:
            sectors = np.zeros(per, dtype=bool)
            sectors[list(wanted)] = True
        blocks[block] = (state, data, sectors)
        base = block * BLOCK
        if sectors is None:
            expected[base : base + BLOCK] = data
        else:
            for s in np.flatnonzero(sectors).tolist():
                expected[base + s * SECTOR : base + (s + 1) * SECTOR] = \
                    data[s * SECTOR : (s + 1) * SECTOR]
    child = tmp / "Disk_checkpoint.avhdx"
    write_child(child, parent, _current_header(parent).data_write_guid, blocks)
    return child, parent, bytes(expected)


def test_libvhdi_reads_the_pair_as_written(pair):
    """The oracle first: libyal's reader, given the parent, reads what the child's
    blocks, sector bitmap and the parent make."""
    pyvhdi = require_module("pyvhdi", "libvhdi-python")
    child, parent, expected = pair
    top, below = pyvhdi.file(), pyvhdi.file()
    top.open(str(child))
    below.open(str(parent))
    top.set_parent(below)
    assert top.read_buffer_at_offset(SIZE, 0) == expected


#: (byte offset, bytes) read: sectors a bitmap splits, runs across blocks and chunks of
#: a block's sectors that do not start on 8-sector (4 KiB) boundaries
READS = [(0, SIZE), (5 * BLOCK + 3 * SECTOR, 8 * SECTOR), (5 * BLOCK + SECTOR, 3 * SECTOR),
         (5 * BLOCK + 99 * SECTOR, 5 * SECTOR), (6 * BLOCK - 3 * SECTOR, 6 * SECTOR),
         (12 * BLOCK + 5 * SECTOR, 7 * SECTOR), (20 * BLOCK + 77 * SECTOR, SECTOR),
         (3 * BLOCK - 700, 3000), (5 * BLOCK + 1234, 70_000)]


@pytest.mark.parametrize(("offset", "length"), READS)
def test_the_pair_reads_as_libvhdi_reads_it(pair, offset, length):
    child, _, expected = pair
    with open_disk(child) as disk:
        assert disk.size == SIZE
        assert disk.read(offset, length) == expected[offset : offset + length]


def test_the_pair_backs_up_and_restores(pair, tmp_path):
    """A backup of the child holds the pair's bytes; the blocks it stores are those the
    child or its parent hold data in (block 20 only in its one sector's unit)."""
    from blockforensics.image.backup import backup, restore
    from blockforensics.image.chain import Chain

    child, _, expected = pair
    chain = Chain.create(tmp_path / "chain")
    with open_disk(child) as disk:
        present = disk.present()
        backup(chain, disk)
    restore(chain, 0, tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == expected
    assert present.count() == (SIZE - BLOCK) // present.block_size + BLOCK // present.block_size


def test_a_parent_changed_after_the_checkpoint_is_refused(pair, tmp_path):
    """The child names the parent's DataWriteGuid (``parent_linkage``): a parent written
    since (a new DataWriteGuid) no longer holds what the child was made on — Hyper-V
    refuses the pair, and so does the reader, in one line naming both files."""
    child, parent, _ = pair
    moved = tmp_path / parent.name
    data = bytearray(parent.read_bytes())
    for where in HEADER_OFFSETS:
        header = Header.unpack(bytes(data[where : where + HEADER_SIZE]))
        changed = Header(header.signature, 0, header.sequence_number, header.file_write_guid,
                         uuid.uuid4().bytes, header.log_guid, header.log_version,
                         header.version, header.log_length, header.log_offset).pack()
        data[where : where + HEADER_SIZE] = _sealed(changed)
    moved.write_bytes(data)
    (tmp_path / child.name).write_bytes(child.read_bytes())
    with pytest.raises(FormatError, match="its parent .* was written after it was made"):
        open_disk(tmp_path / child.name)

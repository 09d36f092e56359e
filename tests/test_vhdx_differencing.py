"""A Hyper-V differencing VHDX (a checkpoint's ``.avhdx``) read through its parent.

qemu-img cannot make one, so the child is written by [MS-VHDX] (``vhdx_child``); its
parent is a dynamic VHDX made by ``qemu-img``.
libvhdi (libyal), an independent reader, is the oracle for what the pair holds: whole
blocks in the child, blocks only some of whose sectors are (Hyper-V writes those for
any write smaller than a block), and the parent's everywhere else.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_tools
from vhdx_child import BLOCK, FULLY_PRESENT, MIB, PARTIALLY_PRESENT, SECTOR, write_child

from blockforensics.errors import FormatError
from blockforensics.formats import open_disk
from blockforensics.formats.vhdx import HEADER_OFFSETS, HEADER_SIZE, Header, _sealed

SIZE = 24 * MIB


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
    write_child(child, parent, blocks, SIZE)
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
    with pytest.raises(FormatError, match=r"its parent .* was written after it was made"):
        open_disk(tmp_path / child.name)

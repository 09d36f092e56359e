"""HFS+ and HFSX read through The Sleuth Kit: the allocation file's bits against
TSK's own block lists (``blkls -a``/``-A``) and the writer's layout, then backed
up and restored (fewer blocks stored than the volume has; every file's bytes
identical through ``icat``; the file system's own structures identical), and
damaged volume headers copied whole with a note.

The volumes are written by :mod:`hfsplus_volume` (TN1150): Debian bookworm has
no ``mkfs.hfsplus`` (hfsprogs) and no kernel ``hfsplus`` driver to fill one.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hfsplus_volume import HfsPlusLayout, make_hfsplus
from sample_disks import MIB, run
from support import require_tools
from test_tsk_filesystems import backup_and_restore

from blockforensics.allocation import detect, filesystem_allocation, survey
from blockforensics.blockmap import BlockMap

HEADER = 1024  # byte of the volume header
ALLOCATION_FORK = HEADER + 112  # HFSPlusForkData of the allocation file


def tsk_blocks(img: Path, flag: str, n_blocks: int) -> np.ndarray:
    """Flags of the blocks ``blkls -l`` lists with ``flag`` (-a allocated, -A not)."""
    lines = run("blkls", "-l", flag, img).splitlines()
    flags = np.zeros(n_blocks, dtype=bool)
    flags[[int(line.split("|")[0]) for line in lines[3:]]] = True
    return flags


def sample_files(seed: int = 7) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {"alpha.bin": rng.bytes(70_000), "beta.txt": b"hello, hfs+\n" * 100,
            "empty": b"", "gamma.bin": rng.bytes(1_500_000), "zeta.bin": rng.bytes(4097)}


def tsk_listing(img: Path) -> dict[str, str]:
    """File name -> inode, as ``fls`` lists the root folder (TSK's special files too)."""
    return {name: inode for inode, name in
            re.findall(r"^r/r ([\d-]+):\t(.+)$", run("fls", img), re.M)}


CASES = {
    "hfsplus-4k": dict(block_size=4096, hfsx=False),
    "hfsx-4k": dict(block_size=4096, hfsx=True),
    "hfsplus-512": dict(block_size=512, hfsx=False),
    "hfsplus-8k": dict(block_size=8192, hfsx=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hfsplus_matches_blkls_and_survives_a_backup(tmp_path: Path, case: str) -> None:
    require_tools("blkls", "fls", "icat", "fsstat")
    files = sample_files()
    img = tmp_path / "hfs.img"
    layout = make_hfsplus(img, 8 * MIB, files, stale=b"DELETED FILE LEFTOVERS ",
                          **CASES[case])  # type: ignore[arg-type]
    assert detect(img) == "hfs"
    assert ("HFSX" if CASES[case]["hfsx"] else "HFS+") in run("fsstat", img)
    mine = filesystem_allocation(img)
    assert (mine.block_size, mine.n_blocks) == (layout.block_size, layout.total_blocks)
    assert np.array_equal(mine.to_bools(), layout.used)
    assert np.array_equal(mine.to_bools(), tsk_blocks(img, "-a", mine.n_blocks))
    assert np.array_equal(~mine.to_bools(), tsk_blocks(img, "-A", mine.n_blocks))
    tsk_bitmap = subprocess.run(["icat", str(img), "6"], capture_output=True,  # catalog ID 6
                                check=True).stdout
    assert np.array_equal(np.unpackbits(np.frombuffer(tsk_bitmap, np.uint8), bitorder="big",
                                        count=mine.n_blocks).view(bool), layout.used)

    report, restored = backup_and_restore(img, tmp_path)
    [part] = report["partitions"]
    assert part["filesystem"] == "hfs" and part["note"] == ""
    assert report["blocks"] < report["n_blocks"] // 2
    before, after = img.read_bytes(), restored.read_bytes()
    assert len(after) == len(before)
    unit = layout.block_size
    tail = (len(before) - 1024) // unit
    for start, count in [(0, -(-1536 // unit)), layout.allocation_extent,
                         (tail, layout.total_blocks - tail)]:
        assert after[start * unit : (start + count) * unit] == \
            before[start * unit : (start + count) * unit]
    stored = BlockMap.from_bools(layout.used, unit).rescale(max(unit, 4096))  # backup blocks
    free = np.frombuffer(after, np.uint8).reshape(stored.n_blocks, -1)[~stored.to_bools()]
    assert b"DELETED FILE LEFTOVERS" not in free.tobytes()  # free blocks were not copied
    assert b"DELETED FILE LEFTOVERS" in before  # (they held stale bytes)
    listing = tsk_listing(restored)
    assert listing == tsk_listing(img)
    assert run("fsstat", restored) == run("fsstat", img)
    for name, data in files.items():
        got = subprocess.run(["icat", str(restored), listing[name]], capture_output=True,
                             check=True).stdout
        assert got == data, name
    assert tsk_listing(restored)["$CatalogFile"]  # TSK reads the restored catalog


def test_allocation_file_in_overflow_extents(tmp_path: Path) -> None:
    """An allocation file in 16 extents: 8 in the volume header, 8 in the extents
    overflow file (TSK follows them); the bitmap as the writer laid it, and blkls's."""
    require_tools("blkls", "icat")
    img = tmp_path / "fragmented.img"
    layout = make_hfsplus(img, 64 * MIB, sample_files(), block_size=512, pieces=16)
    assert len(layout.allocation_pieces) == 16
    mine = filesystem_allocation(img)
    assert np.array_equal(mine.to_bools(), layout.used)
    assert np.array_equal(mine.to_bools(), tsk_blocks(img, "-a", mine.n_blocks))
    for start, count in layout.allocation_pieces:
        assert mine.to_bools()[start : start + count].all()
    assert not mine.to_bools()[layout.allocation_pieces[8][0] - 1]  # a free block between


def test_empty_hfsplus_volume(tmp_path: Path) -> None:
    """A fresh volume: only its metadata (header, bitmap, B-trees, alternate header)."""
    require_tools("blkls")
    img = tmp_path / "empty.img"
    layout = make_hfsplus(img, 32 * MIB, {})
    mine = filesystem_allocation(img)
    assert np.array_equal(mine.to_bools(), tsk_blocks(img, "-a", mine.n_blocks))
    assert mine.count() == layout.used.sum() < 16
    assert survey(img, 4096).map.count() == mine.count()


def _patch(img: Path, offset: int, data: bytes) -> None:
    with img.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _copied_whole(img: Path, why: str) -> None:
    found = survey(img, 4096)
    [region] = found.regions
    assert region.filesystem == "hfs"
    assert why in region.note, region.note
    assert region.blocks == region.total == found.map.n_blocks == found.map.count()


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, HfsPlusLayout]:
    img = tmp_path / "hfs.img"
    return img, make_hfsplus(img, 8 * MIB, sample_files())


def test_allocation_extent_out_of_the_volume_is_copied_whole(volume) -> None:
    img, layout = volume
    _patch(img, ALLOCATION_FORK + 16, struct.pack(">I", layout.total_blocks))  # start
    _copied_whole(img, "does not fit")


def test_allocation_extent_on_free_blocks_is_copied_whole(volume) -> None:
    img, layout = volume
    free = int(np.flatnonzero(~layout.used)[0])
    _patch(img, ALLOCATION_FORK + 16, struct.pack(">I", free))
    _copied_whole(img, "does not mark its own blocks")


def test_allocation_file_too_short_is_copied_whole(volume) -> None:
    img, layout = volume
    _patch(img, ALLOCATION_FORK, struct.pack(">Q", layout.total_blocks // 8 - 1))
    _copied_whole(img, "does not fit")


def test_block_count_past_the_image_is_copied_whole(volume) -> None:
    img, layout = volume
    _patch(img, HEADER + 44, struct.pack(">I", layout.total_blocks + 8))
    found = survey(img, 4096)
    [region] = found.regions
    assert region.note and region.blocks == region.total == found.map.count()


def test_boot_blocks_and_alternate_header_are_kept(volume) -> None:
    """A bitmap that leaves block 0 and the last block free: both are stored anyway."""
    require_tools("blkls")
    img, layout = volume
    first = bytearray(img.read_bytes()[layout.allocation_extent[0] * 4096:][:1])
    _patch(img, layout.allocation_extent[0] * 4096, bytes([first[0] & 0x7F]))
    last = layout.total_blocks - 1
    at = layout.allocation_extent[0] * 4096 + last // 8
    _patch(img, at, bytes([img.read_bytes()[at] & ~(0x80 >> (last % 8)) & 0xFF]))
    mine = filesystem_allocation(img).to_bools()
    theirs = tsk_blocks(img, "-a", mine.size)
    assert not theirs[0] and not theirs[last]
    assert np.flatnonzero(mine != theirs).tolist() == [0, last]


def _journaled(img: Path, layout: HfsPlusLayout, start: int, end: int, order: str) -> None:
    """Make the volume journaled and mounted (unmounted bit clear): a journal info block
    in a free block, the journal header (``start``, ``end``, byte order ``order``) in
    the next one (TN1150 "Journal")."""
    info, journal = (int(b) for b in np.flatnonzero(~layout.used)[:2])
    _patch(img, HEADER + 4, struct.pack(">I", 1 << 13))  # journaled, not unmounted
    _patch(img, HEADER + 12, struct.pack(">I", info))
    _patch(img, info * 4096, struct.pack(">I32xQQ", 0x1, journal * 4096, 4096))
    _patch(img, journal * 4096, struct.pack(f"{order}IIQQQIII", 0x4A4E4C78, 0x12345678,
                                            start, end, 4096, 512, 0, 512))


@pytest.mark.parametrize("order", [">", "<"])
def test_journal_not_yet_replayed_is_copied_whole(volume, order: str) -> None:
    """A live (or crashed) journaled volume whose journal holds transactions: replay
    may allocate blocks the allocation file marks free — copied whole (before, read
    from the allocation file alone)."""
    img, layout = volume
    _journaled(img, layout, 512, 1536, order)
    _copied_whole(img, "journal holds transactions not yet replayed")


def test_empty_journal_of_a_mounted_volume_is_read(volume) -> None:
    img, layout = volume
    _journaled(img, layout, 512, 512, "<")
    [region] = survey(img, 4096).regions
    assert region.note == "" and region.blocks == layout.used.sum()


def test_not_cleanly_unmounted_without_journal_is_copied_whole(volume) -> None:
    img, _ = volume
    _patch(img, HEADER + 4, struct.pack(">I", 0))
    _copied_whole(img, "not cleanly unmounted and not journaled")

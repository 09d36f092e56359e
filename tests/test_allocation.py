"""Allocation maps of real FAT and ext volumes, checked against independent tools.

Oracles (no mocks):
- The Sleuth Kit: ``blkls -l -a [-o SECTOR_OFFSET] IMG`` lists allocated units,
  one ``addr|a`` line each after three header lines; the header's ``unit`` is
  "Sector" for FAT (addresses are sectors from the file system's start, the
  reserved region and FATs included) and "Fragment" for ext (file-system
  blocks).  TSK 4.11 reads the on-disk bitmap of ext4 ``BLOCK_UNINIT`` groups,
  which mke2fs never writes, so it calls their metadata free; there (and for
  bigalloc, which TSK cannot open) e2fsprogs is the oracle.
- e2fsprogs: ``dumpe2fs IMG`` prints each group's "Free blocks:" ranges, in
  blocks (with bigalloc, a range's ends are the first blocks of clusters).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import require_tools

from blockforensics.allocation import (
    allocation_map,
    detect,
    filesystem_allocation,
    open_filesystem,
    partitions,
    survey,
)
from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.base import covered, units_map
from blockforensics.fs.fat import FatFileSystem

MIB = 1 << 20
SECTOR = 512


# ------------------------------------------------------------------ helpers
def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def payload(name: str, size: int, seed: int, where: Path) -> Path:
    path = where / name
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def make_fat(img: Path, size: int, options: list[str], files: dict[str, int],
             delete: list[str], work: Path) -> Path:
    """mkfs.vfat, then mcopy the files (name -> bytes) and mdel some of them."""
    img.unlink(missing_ok=True)
    with img.open("wb") as fh:
        fh.truncate(size)
    run("mkfs.vfat", *options, str(img))
    for seed, (name, length) in enumerate(files.items()):
        run("mcopy", "-i", str(img), str(payload(name, length, seed, work)), f"::{name}")
    for name in delete:
        run("mdel", "-i", str(img), f"::{name}")
    return img


def make_ext(img: Path, size: int, mkfs: str, options: list[str], files: dict[str, int],
             delete: list[str], work: Path) -> Path:
    """mkfs.ext*, then debugfs write the files (name -> bytes) and rm some of them."""
    img.unlink(missing_ok=True)
    with img.open("wb") as fh:
        fh.truncate(size)
    run(mkfs, "-q", "-F", *options, str(img))
    for seed, (name, length) in enumerate(files.items()):
        src = payload(name, length, seed, work)
        run("debugfs", "-w", "-R", f"write {src} {name}", str(img))
    for name in delete:
        run("debugfs", "-w", "-R", f"rm {name}", str(img))
    return img


def partitioned(img: Path, size: int, table: str) -> Path:
    """An empty disk image of ``size`` bytes with an MBR partition table made by sfdisk."""
    with img.open("wb") as fh:
        fh.truncate(size)
    subprocess.run(["sfdisk", "-q", str(img)], check=True, text=True,
                   input="label: dos\n" + table)
    return img


def tsk_allocated(img: Path, n_units: int, expect_unit: str, sector_offset: int = 0,
                  flag: str = "-a", fstype: str | None = None) -> np.ndarray:
    """Units ``blkls -l`` lists (``-a`` allocated, ``-A`` unallocated) as bools."""
    typed = ["-f", fstype] if fstype else []
    lines = run("blkls", *typed, "-l", flag, "-o", str(sector_offset), str(img)).splitlines()
    header = dict(zip(lines[0].split("|"), lines[1].split("|")))
    assert header["unit"] == expect_unit
    assert lines[2] == "addr|alloc"
    flags = np.zeros(n_units, dtype=bool)
    flags[[int(line.split("|")[0]) for line in lines[3:]]] = True
    return flags


def e2fs_allocated(img: Path, n_units: int, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """(allocated units, units in BLOCK_UNINIT groups) according to dumpe2fs."""
    out = run("dumpe2fs", str(img))
    block = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    ratio = unit // block
    allocated = np.ones(n_units, dtype=bool)
    for ranges in re.findall(r"^  Free blocks: (.*)$", out, re.M):
        for part in filter(None, (p.strip() for p in ranges.split(","))):
            first, _, last = part.partition("-")
            allocated[int(first) // ratio : int(last or first) // ratio + 1] = False
    uninit = np.zeros(n_units, dtype=bool)
    for first, last in re.findall(r"^Group \d+: \(Blocks (\d+)-(\d+)\).*BLOCK_UNINIT", out, re.M):
        uninit[int(first) // ratio : int(last) // ratio + 1] = True
    return allocated, uninit


def assert_same(mine: BlockMap, expected: np.ndarray, where: str) -> None:
    diff = np.flatnonzero(mine.to_bools() != expected)
    assert diff.size == 0, f"{where}: {diff.size} units differ, first {diff[:8].tolist()}"


# ------------------------------------------------------------------ images
FAT_CASES = {
    # name: (size, mkfs.vfat options, expected kind)
    "fat12": (8 * MIB, ["-F", "12"], "fat12"),
    "fat12-1spc": (2 * MIB, ["-F", "12", "-s", "1"], "fat12"),
    "fat16": (32 * MIB, ["-F", "16"], "fat16"),
    "fat32": (64 * MIB, ["-F", "32"], "fat32"),
    "fat32-1fat": (40 * MIB, ["-F", "32", "-s", "1", "-f", "1"], "fat32"),
    "fat12-S4096": (8 * MIB, ["-F", "12", "-S", "4096"], "fat12"),
    "fat16-S1024-R17-f3": (64 * MIB, ["-F", "16", "-S", "1024", "-R", "17", "-f", "3"], "fat16"),
    "fat16-S2048-r1000": (64 * MIB, ["-F", "16", "-S", "2048", "-r", "1000"], "fat16"),
    "fat32-R63-s2": (128 * MIB, ["-F", "32", "-R", "63", "-s", "2"], "fat32"),
}
EXT_CASES = {
    # name: (size, mkfs program, options, expected kind, TSK can read it)
    "ext2-1k": (16 * MIB, "mkfs.ext2", ["-b", "1024"], "ext2", True),
    "ext2-nosparse": (32 * MIB, "mkfs.ext2", ["-b", "1024", "-O", "^sparse_super,^resize_inode"],
                      "ext2", True),
    "ext3": (32 * MIB, "mkfs.ext3", [], "ext3", True),
    "ext4-4k": (32 * MIB, "mkfs.ext4", ["-b", "4096"], "ext4", True),
    "ext4-1k-groups": (64 * MIB, "mkfs.ext4", ["-b", "1024"], "ext4", True),
    "ext4-4k-groups": (64 * MIB, "mkfs.ext4", ["-b", "4096", "-g", "4096"], "ext4", True),
    "ext4-32bit-uninit_bg": (64 * MIB, "mkfs.ext4",
                             ["-b", "1024", "-O", "^64bit,^metadata_csum,uninit_bg"], "ext4", True),
    "ext4-meta_bg": (64 * MIB, "mkfs.ext4", ["-b", "1024", "-O", "meta_bg,^resize_inode"],
                     "ext4", True),
    "ext4-sparse_super2": (64 * MIB, "mkfs.ext4", ["-b", "1024", "-O", "sparse_super2"],
                           "ext4", True),
    "ext4-bigalloc": (128 * MIB, "mkfs.ext4", ["-b", "1024", "-O", "bigalloc", "-C", "16384"],
                      "ext4", False),
    "ext4-2k-noflex-partial": (40 * MIB, "mkfs.ext4",
                               ["-b", "2048", "-O", "^flex_bg", "-I", "128"], "ext4", True),
    "ext4-4k-meta_bg": (160 * MIB, "mkfs.ext4",
                        ["-b", "4096", "-g", "4096", "-O", "meta_bg,^resize_inode"], "ext4", True),
    "ext4-4k-bigalloc": (128 * MIB, "mkfs.ext4", ["-b", "4096", "-O", "bigalloc", "-C", "65536"],
                         "ext4", False),
    "ext4-nojournal-Ntiny": (32 * MIB, "mkfs.ext4", ["-O", "^has_journal", "-N", "16"],
                             "ext4", True),
}
FILES = {"a.bin": 300_000, "c.bin": 1_500_000, "b.bin": 5_000, "d.bin": 70_000}
DELETED = ["a.bin", "d.bin"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allocation")


@pytest.fixture(scope="module", params=list(FAT_CASES))
def fat_image(request: pytest.FixtureRequest, work: Path) -> tuple[Path, str]:
    require_tools("mkfs.vfat", "mcopy", "blkls", "fsstat")
    size, options, kind = FAT_CASES[request.param]
    return make_fat(work / f"{request.param}.img", size, options, FILES, DELETED, work), kind


@pytest.fixture(scope="module", params=list(EXT_CASES))
def ext_image(request: pytest.FixtureRequest, work: Path) -> tuple[Path, str, bool]:
    require_tools("mkfs.ext4", "debugfs", "dumpe2fs", "blkls")
    size, mkfs, options, kind, tsk = EXT_CASES[request.param]
    img = make_ext(work / f"{request.param}.img", size, mkfs, options, FILES, DELETED, work)
    return img, kind, tsk


# ------------------------------------------------------------------ FAT
def sector_size(img: Path) -> int:
    """The FAT volume's logical sector (``mkfs.fat -S``), in bytes."""
    return int(re.search(r"^Sector Size: (\d+)", run("fsstat", str(img)), re.M).group(1))


def test_fat_matches_sleuthkit(fat_image: tuple[Path, str]) -> None:
    img, kind = fat_image
    assert detect(img) == kind
    mine = filesystem_allocation(img)
    assert mine.block_size == sector_size(img)
    assert mine.n_blocks * mine.block_size == img.stat().st_size
    assert_same(mine, tsk_allocated(img, mine.n_blocks, "Sector"), f"{img.name} vs blkls -a")
    assert_same(mine, ~tsk_allocated(img, mine.n_blocks, "Sector", flag="-A"),
                f"{img.name} vs blkls -A")


def test_fat_at_volume_blocks(fat_image: tuple[Path, str]) -> None:
    img, _ = fat_image
    sector = sector_size(img)
    expected = BlockMap.from_bools(
        tsk_allocated(img, img.stat().st_size // sector, "Sector"), sector).rescale(4096)
    assert allocation_map(img, 4096) == expected
    with RawDisk(img, block_size=4096) as disk:
        assert allocation_map(disk) == expected


def test_fat_clusters_agree_with_sectors(fat_image: tuple[Path, str]) -> None:
    img, _ = fat_image
    with RawDisk(img) as disk:
        fs = open_filesystem(disk)
        assert isinstance(fs, FatFileSystem)
        clusters = fs.cluster_allocation()
        sectors = fs.allocation().to_bools()
    data = sectors[fs.first_data_sector:][: fs.n_clusters * fs.sectors_per_cluster]
    assert np.array_equal(clusters.to_bools(),
                          data.reshape(-1, fs.sectors_per_cluster).any(axis=1))
    assert clusters.block_size == fs.cluster_size
    # the deleted files left free clusters below the last used one
    used = clusters.to_bools()
    assert not used[: clusters.positions().max()].all()


def test_fat32_reads_the_active_fat(work: Path) -> None:
    """With mirroring off (BPB_ExtFlags bit 7), only the FAT numbered in bits 0-3 counts."""
    require_tools("mkfs.vfat", "mcopy")
    size, options, _ = FAT_CASES["fat32"]
    img = make_fat(work / "fat32-active.img", size, options, FILES, DELETED, work)
    before = filesystem_allocation(img)
    with RawDisk(img) as disk:
        fs = open_filesystem(disk)
        fat0 = fs.bpb.BPB_RsvdSecCnt * fs.unit
        fat_bytes = fs.fat_sectors * fs.unit
    with img.open("r+b") as fh:
        fh.seek(0x28)  # BPB_ExtFlags
        fh.write((0x80 | 1).to_bytes(2, "little"))
        fh.seek(fat0)
        fh.write(bytes(fat_bytes))  # FAT 0 wiped: only FAT 1 still knows the clusters
    assert filesystem_allocation(img) == before


# ------------------------------------------------------------------ ext
def test_ext_matches_e2fsprogs_and_sleuthkit(ext_image: tuple[Path, str, bool]) -> None:
    img, kind, tsk = ext_image
    assert detect(img) == kind
    mine = filesystem_allocation(img)
    assert mine.n_blocks * mine.block_size == img.stat().st_size
    expected, uninit = e2fs_allocated(img, mine.n_blocks, mine.block_size)
    assert_same(mine, expected, f"{img.name} vs dumpe2fs")
    if tsk:
        seen = tsk_allocated(img, mine.n_blocks, "Fragment")
        diff = mine.to_bools() != seen
        assert not (diff & ~uninit).any(), f"{img.name}: differs from blkls outside BLOCK_UNINIT"


def test_ext_at_volume_blocks(ext_image: tuple[Path, str, bool]) -> None:
    img, _, _ = ext_image
    units = filesystem_allocation(img)
    expected, _ = e2fs_allocated(img, units.n_blocks, units.block_size)
    expected_map = BlockMap.from_bools(expected, units.block_size).rescale(4096)
    assert allocation_map(img, 4096) == expected_map


def test_groups_flex_bg_and_uninit_are_exercised(work: Path) -> None:
    """The multi-group images really have flex_bg and BLOCK_UNINIT groups."""
    require_tools("mkfs.ext4", "dumpe2fs")
    size, mkfs, options, _, _ = EXT_CASES["ext4-4k-groups"]
    img = make_ext(work / "check-groups.img", size, mkfs, options, {}, [], work)
    out = run("dumpe2fs", str(img))
    assert "flex_bg" in out and len(re.findall(r"^Group \d+:", out, re.M)) >= 4
    assert "BLOCK_UNINIT" in out


# ------------------------------------------------------------------ MBR
@pytest.fixture(scope="module")
def mbr_disk(work: Path) -> Path:
    """80 MiB: FAT16 at sector 2048, ext4 at 45056 (bootable), a free tail."""
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "blkls")
    img = partitioned(work / "mbr.img", 80 * MIB, "start=2048, size=40960, type=6\n"
                      "start=45056, size=90112, type=83, bootable\n")
    fat_at, ext_at = 2048 * SECTOR, 45056 * SECTOR
    run("mkfs.vfat", "-F", "16", "--offset", "2048", str(img), str(40960 * SECTOR // 1024))
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", f"offset={ext_at}", str(img),
        str(90112 * SECTOR // 4096))
    for seed, (name, length) in enumerate(FILES.items()):
        src = payload(name, length, seed, work)
        run("mcopy", "-i", f"{img}@@{fat_at}", str(src), f"::{name}")
        run("debugfs", "-w", "-R", f"write {src} {name}", f"{img}?offset={ext_at}")
    run("mdel", "-i", f"{img}@@{fat_at}", "::a.bin")
    run("debugfs", "-w", "-R", "rm c.bin", f"{img}?offset={ext_at}")
    return img


def test_mbr_partitions(mbr_disk: Path) -> None:
    assert detect(mbr_disk) == "mbr"
    table = partitions(mbr_disk)
    listed = [(p["start"] * SECTOR, p["size"] * SECTOR, int(p["type"], 16))
              for p in json.loads(run("sfdisk", "-J", str(mbr_disk)))
              ["partitiontable"]["partitions"]]
    assert list(zip(table["start_byte"], table["length_bytes"], table["type"])) == listed
    assert table["index"].tolist() == [1, 2]
    assert table["bootable"].tolist() == [False, True]
    assert table["kind"].tolist() == ["primary", "primary"]
    assert table["filesystem"].tolist() == ["fat16", "ext4"]


def test_truncated_image_copies_the_cut_partition_whole(mbr_disk: Path, work: Path) -> None:
    """``head -c 40M``: partition 1 (FAT16) is whole, partition 2 (ext4) runs past the end."""
    cut = work / "mbr-cut.img"
    cut.write_bytes(mbr_disk.read_bytes()[: 40 * MIB])
    found = survey(cut, 4096)
    fat, ext = found.regions
    assert (fat.filesystem, fat.note) == ("fat16", "")
    expected = filesystem_allocation(mbr_disk, 2048 * SECTOR, 40960 * SECTOR)
    assert fat.blocks == expected.rescale(4096).count()
    assert ext.filesystem == "ext4" and "past the end of the image" in ext.note
    assert ext.blocks == ext.total == 40 * MIB // 4096 - 45056 * SECTOR // 4096
    assert "--all-blocks" in ext.note
    bools = found.map.to_bools()
    assert bools[45056 * SECTOR // 4096 :].all()
    assert found.table == "mbr" and "partition 2 (ext4)" in "\n".join(found.report())


def test_mbr_map_is_union_of_partitions_and_outside(mbr_disk: Path) -> None:
    size = mbr_disk.stat().st_size
    table = partitions(mbr_disk)
    expected = np.ones(size // SECTOR, dtype=bool)  # outside the file systems: allocated
    for row in table.itertuples():
        part = filesystem_allocation(mbr_disk, row.start_byte, row.length_bytes)
        first = row.start_byte // SECTOR
        sectors = part.rescale(SECTOR).to_bools()
        expected[first : first + sectors.size] = sectors
        # and each partition's map is what TSK sees at that offset
        unit = "Sector" if row.filesystem.startswith("fat") else "Fragment"
        assert_same(part, tsk_allocated(mbr_disk, part.n_blocks, unit, first),
                    f"partition {row.index}")
    assert allocation_map(mbr_disk, SECTOR) == BlockMap.from_bools(expected, SECTOR)
    assert allocation_map(mbr_disk, 4096) == BlockMap.from_bools(expected, SECTOR).rescale(4096)
    # the MBR sector, the gap before partition 2 and the free tail are allocated
    sector_map = allocation_map(mbr_disk, SECTOR)
    for gap in (0, 43008, 45055, 135168, size // SECTOR - 1):
        assert gap in sector_map


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_size=st.integers(1, 64).map(lambda k: k * SECTOR))
def test_any_volume_block_size_is_a_rescale(mbr_disk: Path, block_size: int) -> None:
    """At any block size (not only powers of two) the map is the sector map coarsened."""
    fine = allocation_map(mbr_disk, SECTOR)
    assert allocation_map(mbr_disk, block_size) == fine.rescale(block_size)


def test_logical_partitions(work: Path) -> None:
    require_tools("sfdisk", "mkfs.vfat")
    img = partitioned(work / "logical.img", 24 * MIB,
                      "start=2048, size=8192, type=83\nstart=10240, type=5\n"
                      "start=12288, size=8192, type=6\nstart=22528, type=b\n")
    run("mkfs.vfat", "-F", "12", "--offset", "12288", str(img), str(8192 * SECTOR // 1024))
    table = partitions(img)
    listed = json.loads(run("sfdisk", "-J", str(img)))["partitiontable"]["partitions"]
    assert table["index"].tolist() == [int(p["node"][len(str(img)):]) for p in listed]
    assert table["start_byte"].tolist() == [p["start"] * SECTOR for p in listed]
    assert table["length_bytes"].tolist() == [p["size"] * SECTOR for p in listed]
    assert table["kind"].tolist() == ["primary", "extended", "logical", "logical"]
    assert table["filesystem"].tolist() == [None, None, "fat12", None]
    # only the logical FAT12 is recognised; its free sectors are the only free ones
    fat = filesystem_allocation(img, 12288 * SECTOR, 8192 * SECTOR)
    free = np.flatnonzero(~allocation_map(img, SECTOR).to_bools())
    assert np.array_equal(free, 12288 + np.flatnonzero(~fat.to_bools()))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300),
       ranges=st.lists(st.tuples(st.integers(-5, 310), st.integers(0, 40)), max_size=30))
def test_covered_matches_a_plain_loop(n: int, ranges: list[tuple[int, int]]) -> None:
    expected = np.zeros(n, dtype=bool)
    for start, length in ranges:
        expected[max(start, 0) : max(start + length, 0)] = True
    starts = np.array([s for s, _ in ranges], dtype=np.int64)
    stops = np.array([s + length for s, length in ranges], dtype=np.int64)
    assert np.array_equal(covered(starts, stops, n), expected)
    assert np.array_equal(units_map(starts, stops, n, 512).to_bools(), expected)


#: name: (sparse image size, mkfs command); the old per-unit flag arrays needed 2
#: (FAT) to 5 (ext) bytes per unit and 5 to 17 per 4 KiB block of the survey
HUGE = {"fat32-128G": (128 << 30, ["mkfs.fat", "-F", "32", "-s", "64", "-f", "1"]),
        "ext4-1T": (1 << 40, ["mkfs.ext4", "-q", "-F", "-O", "^has_journal"])}


@pytest.mark.parametrize("case", list(HUGE))
def test_huge_volumes_need_under_a_byte_per_unit(work: Path, case: str) -> None:
    """A 2 TiB FAT32 has 2**32 sectors, a 16 TiB ext4 2**32 blocks: the maps are
    built run by run in packed bits (peak numpy memory, seen by tracemalloc)."""
    import tracemalloc

    size, mkfs = HUGE[case]
    require_tools(mkfs[0], "dumpe2fs")
    img = work / f"{case}.img"
    img.unlink(missing_ok=True)
    with img.open("wb") as fh:
        fh.truncate(size)
    run(*mkfs, str(img))
    tracemalloc.start()
    try:
        mine = filesystem_allocation(img)
        fs_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        disk = allocation_map(img, 4096)
        survey_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fs_peak < mine.n_blocks and survey_peak < 4 * disk.n_blocks
    if case.startswith("ext"):
        header = run("dumpe2fs", "-h", str(img))
        count, free = (int(re.search(rf"^{k}:\s+(\d+)", header, re.M).group(1))
                       for k in ("Block count", "Free blocks"))
        assert mine.count() == count - free
    inside = mine.rescale(4096)  # the image's tail past the file system is copied whole
    assert disk.count() == inside.count() + disk.n_blocks - inside.n_blocks


# ------------------------------------------------------------------ bad input
def test_unknown_content_is_all_allocated(work: Path) -> None:
    img = payload("noise.img", 3 * MIB + 100, 99, work)
    assert detect(img) is None
    assert allocation_map(img, 4096) == BlockMap.full(-(-(3 * MIB + 100) // 4096), 4096)
    with pytest.raises(FormatError, match="no FAT, ext, XFS or Btrfs file system"):
        filesystem_allocation(img)


@pytest.mark.parametrize("case", ["fat16", "ext4-4k"])
def test_truncated_is_a_format_error_or_all_blocks(work: Path, case: str) -> None:
    """Asked for one file system's map, a truncated volume is an error; asked what to
    back up, it is copied whole and the survey says why."""
    require_tools("mkfs.vfat", "mkfs.ext4")
    img = work / f"truncated-{case}.img"
    if case in FAT_CASES:
        size, options, _ = FAT_CASES[case]
        make_fat(img, size, options, {}, [], work)
    else:
        size, mkfs, options, _, _ = EXT_CASES[case]
        make_ext(img, size, mkfs, options, {}, [], work)
    with img.open("r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(FormatError, match="truncated") as info:
        filesystem_allocation(img)
    assert "\n" not in str(info.value)
    found = survey(img, 4096)
    assert found.map == BlockMap.full(size // 2 // 4096, 4096)
    [region] = found.regions
    assert region.filesystem == case.split("-")[0]
    assert "truncated" in region.note and region.blocks == region.total == size // 2 // 4096
    with img.open("r+b") as fh:
        fh.truncate(700)  # not even a whole superblock / boot sector region
    with pytest.raises(FormatError):
        filesystem_allocation(img)


# ------------------------------------------------------------ FAT type rules
@pytest.mark.parametrize("size, options", [(32 * MIB, ["-F", "32"]),
                                           (256 * MIB, ["-F", "32", "-s", "64"])])
def test_fat32_below_65525_clusters_is_fat32(work: Path, size: int, options: list[str]) -> None:
    """BPB_FATSz16 == 0 makes FAT32 whatever the cluster count (Linux, Windows); TSK
    guesses FAT16 from the count, so it is told the type.  (Filled volumes:
    test_fat32_small.py.)"""
    require_tools("mkfs.fat", "blkls")
    img = work / f"fat32-small-{size}.img"
    make_fat(img, size, options, {}, [], work)
    with RawDisk(img) as disk:
        fs = open_filesystem(disk)
        assert isinstance(fs, FatFileSystem) and fs.n_clusters < 65525
    assert detect(img) == "fat32"
    mine = filesystem_allocation(img)
    assert_same(mine, tsk_allocated(img, mine.n_blocks, "Sector", fstype="fat32"), img.name)


def patched(src: Path, dst: Path, offset: int, value: bytes) -> Path:
    data = bytearray(src.read_bytes())
    data[offset : offset + len(value)] = value
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("field, value, why", [
    (0x16, None, "FAT32 count"),  # BPB_FATSz16 = BPB_FATSz32: a FAT16 BPB, 130k clusters
    (0x2C, (0x0FFFFFF).to_bytes(4, "little"), "root directory cluster"),  # BPB_RootClus
    (0x24, (8).to_bytes(4, "little"), "cannot hold"),  # BPB_FATSz32: a FAT of 8 sectors
    # BPB_ExtFlags: mirroring off, FAT 5 of 2 active (read, it was part of the data region)
    (0x28, (0x80 | 5).to_bytes(2, "little"), "active FAT 5 of 2"),
])
def test_fat_type_rules_that_disagree_copy_all_blocks(work: Path, field: int,
                                                      value: bytes | None, why: str) -> None:
    require_tools("mkfs.fat")
    img = make_fat(work / "fat32-big.img", 64 * MIB, ["-F", "32", "-s", "1"], FILES, [], work)
    if value is None:
        with RawDisk(img) as disk:
            value = FatFileSystem(disk).fat_sectors.to_bytes(2, "little")
    bad = patched(img, work / "fat-disagree.img", field, value)
    with pytest.raises(FormatError, match=why):
        filesystem_allocation(bad)
    found = survey(bad, 4096)
    assert found.map == BlockMap.full(64 * MIB // 4096, 4096)
    [region] = found.regions
    assert why in region.note and region.blocks == region.total
    assert why in region.describe() and "copying all 16384 blocks" in region.describe()

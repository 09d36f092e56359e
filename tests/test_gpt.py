"""GPT disks read natively: headers and entry arrays checked by CRC32, the backup header
used when the primary fails, protective and hybrid MBRs; each partition's file system
read (ext4 and FAT32 by the project's readers, NTFS through The Sleuth Kit).

The disk is made by ``sgdisk`` (gdisk), its partitions by mkfs.ext4 ``-d``,
mkfs.fat + mtools, mkntfs + ntfs-3g; references: ``sfdisk -J`` for the table,
``blkls`` per partition for allocation, ``tsk_recover`` for the files, and
e2fsck / fsck.fat / ntfsfix for the restored partitions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from sample_disks import (
    MIB,
    extract,
    file_tree,
    make_ext4,
    make_fat,
    make_ntfs,
    place,
    run,
    same_trees,
    sparse_file,
    tsk_files,
    without,
)
from support import require_tools

from blockforensics.allocation import detect, partition_table, partitions, survey
from blockforensics.blockmap import BlockMap
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.gpt import HEADER
from blockforensics.fs.mbr import read_partitions

SECTOR = 512
LINUX, BASIC_DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4", "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
#: (number, first sector, sectors, sgdisk type code, file system)
LAYOUT = [(1, 2048, 32 * 2048, "8300", "ext4"), (2, 67584, 64 * 2048, "0700", "fat32"),
          (3, 198656, 48 * 2048, "0700", "ntfs")]
SIZE = 200 * MIB
DELETED = ("PICS/F0003.BIN", "F0005.BIN")


@pytest.fixture(scope="module")
def gpt_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Path]]:
    """The disk, and per partition number the tree its file system should hold."""
    require_tools("sgdisk", "sfdisk", "mkfs.ext4", "debugfs", "mkfs.fat", "mcopy", "mkntfs",
                  "ntfs-3g", "blkls", "tsk_recover")
    work = tmp_path_factory.mktemp("gpt")
    disk = sparse_file(work / "gpt.img", SIZE)
    run("sgdisk", *[arg for n, first, count, code, _ in LAYOUT for arg in
                    (f"-n{n}:{first}:{first + count - 1}", f"-t{n}:{code}", f"-c{n}:part{n}")],
        disk)
    expected = {}
    for n, first, count, _, kind in LAYOUT:
        tree = file_tree(work / f"tree{n}", n, 60, 6 * MIB)
        volume = work / f"p{n}.img"
        if kind == "ext4":
            make_ext4(volume, count * SECTOR, tree, DELETED, ("-b", "4096"))
        elif kind == "fat32":
            make_fat(volume, count * SECTOR, ["-F", "32", "-s", "1"], tree, DELETED)
        else:
            make_ntfs(volume, count * SECTOR, tree, DELETED)
        place(disk, volume, first * SECTOR)
        expected[n] = without(tree, DELETED, work / f"expected{n}")
    return disk, expected


def reference_map(disk: Path, block_size: int) -> BlockMap:
    """Allocated blocks by blkls per partition, everything outside the partitions."""
    sectors = np.ones(disk.stat().st_size // SECTOR, dtype=bool)
    for _, first, count, _, kind in LAYOUT:
        lines = run("blkls", "-l", "-a", "-o", first, disk).splitlines()
        unit = {"ext4": 4096, "fat32": SECTOR, "ntfs": 4096}[kind] // SECTOR
        flags = np.zeros(count // unit, dtype=bool)
        flags[[int(line.split("|")[0]) for line in lines[3:]]] = True
        if kind == "ntfs":  # the last cluster holds the backup boot sector, past the volume
            flags[-1] = True  # NTFS counts (its clusters end one sector before the partition)
        region = sectors[first : first + count]
        region[: flags.size * unit] = np.repeat(flags, unit)
    return BlockMap.from_bools(sectors, SECTOR).rescale(block_size)


def test_table_matches_sfdisk(gpt_disk) -> None:
    disk, _ = gpt_disk
    assert detect(disk) == "gpt"
    listed = json.loads(run("sfdisk", "-J", disk))["partitiontable"]
    table = partitions(disk)
    assert table["index"].tolist() == [1, 2, 3]
    assert table["start_byte"].tolist() == [p["start"] * SECTOR for p in listed["partitions"]]
    assert table["length_bytes"].tolist() == [p["size"] * SECTOR for p in listed["partitions"]]
    assert table["type"].tolist() == [p["type"].lower() for p in listed["partitions"]]
    assert table["type"].tolist() == [LINUX, BASIC_DATA, BASIC_DATA]
    assert table["name"].tolist() == ["part1", "part2", "part3"]
    assert table["filesystem"].tolist() == [kind for *_, kind in LAYOUT]


def test_allocation_matches_sleuthkit_per_partition(gpt_disk) -> None:
    disk, _ = gpt_disk
    found = survey(disk, 4096)
    assert found.table == "gpt" and found.notes == []
    assert [(r.index, r.filesystem, r.note) for r in found.regions] == [
        (n, kind, "") for n, *_, kind in LAYOUT]
    assert found.map == reference_map(disk, 4096)
    assert found.map.count() < found.map.n_blocks // 2


def damaged(disk: Path, out: Path, *offsets: int) -> Path:
    data = bytearray(disk.read_bytes())
    for offset in offsets:
        data[offset] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("where", ["header", "entries"])
def test_backup_header_is_used_when_the_primary_fails(gpt_disk, tmp_path: Path,
                                                      where: str) -> None:
    disk, _ = gpt_disk
    bad = damaged(disk, tmp_path / "bad.img", SECTOR + 0x30 if where == "header" else 2 * SECTOR)
    table, parts, notes = partition_table(bad)
    assert table == "gpt" and len(parts) == 3
    assert "CRC32 mismatch" in notes[0] and f"LBA {SIZE // SECTOR - 1} was used" in notes[0]
    found = survey(bad, 4096)
    assert found.map == survey(disk, 4096).map
    assert [r.filesystem for r in found.regions] == ["ext4", "fat32", "ntfs"]


def resealed(data: bytearray, at: int, **fields: int) -> None:
    """The GPT header at byte ``at`` of ``data`` given ``fields`` (header field: value),
    its CRC32s re-computed: its entry array's (where it now points), then its own."""
    header = HEADER.parse(bytes(data[at : at + HEADER.size]))._replace(**fields)
    data[at : at + HEADER.size] = HEADER.pack(*header)
    array = header.PartitionEntryLBA * SECTOR
    size = header.NumberOfPartitionEntries * header.SizeOfPartitionEntry
    data[at + 0x58 : at + 0x5C] = zlib.crc32(data[array : array + size]).to_bytes(4, "little")
    data[at + 0x10 : at + 0x14] = bytes(4)
    data[at + 0x10 : at + 0x14] = zlib.crc32(data[at : at + header.HeaderSize]).to_bytes(
        4, "little")


@pytest.mark.parametrize("lba, count, over", [
    (0, 4, "overlaps sector 0 (the protective MBR)"),
    (SIZE // SECTOR - 1, 4, "overlaps the other GPT header"),
    (2048, 128, "overlaps the usable LBAs 34-")])
def test_an_entry_array_over_the_mbr_a_header_or_the_data_is_noted(
        gpt_disk, tmp_path: Path, lba: int, count: int, over: str) -> None:
    """A primary header whose array of ``count`` entries lies over sector 0 or the backup
    header (its CRC32s re-sealed: entries of the MBR's zeros read as "no partitions",
    silently), or over partition 1's data: not used, and a note says why; the backup's
    partitions are read.  With the backup's array over sector 0 too, no GPT header is
    usable, and a note says so."""
    disk, _ = gpt_disk
    data = bytearray(disk.read_bytes())
    resealed(data, SECTOR, PartitionEntryLBA=lba, NumberOfPartitionEntries=count)
    (tmp_path / "bad.img").write_bytes(bytes(data))
    table, parts, notes = partition_table(tmp_path / "bad.img")
    assert table == "gpt" and [p.name for p in parts] == ["part1", "part2", "part3"]
    assert [p.start_byte // SECTOR for p in parts] == [first for _, first, *_ in LAYOUT]
    assert len(notes) == 1 and over in notes[0], notes
    last = lba + count * 128 // SECTOR - 1
    assert notes[0].startswith("primary GPT header unusable (its partition entry array (LBA "
                               f"{lba}-{last}) ") and f"LBA {SIZE // SECTOR - 1} was used" \
        in notes[0], notes
    resealed(data, len(data) - SECTOR, PartitionEntryLBA=0, NumberOfPartitionEntries=4)
    (tmp_path / "bad.img").write_bytes(bytes(data))
    found = survey(tmp_path / "bad.img", 4096)
    assert "no valid GPT header" in found.notes[0] and "backup at LBA 409599: its partition " \
        "entry array (LBA 0-0) overlaps sector 0" in found.notes[0], found.notes


def test_a_backup_table_listing_other_partitions_is_noted(gpt_disk, tmp_path: Path) -> None:
    """Primary and backup GPT both sound (CRCs re-sealed) but the backup's entry array
    names partition 1 otherwise: the primary's partitions are used, and a note says
    the two disagree (it was silent)."""
    disk, _ = gpt_disk
    data = bytearray(disk.read_bytes())
    at = len(data) - SECTOR  # the backup header, at the last LBA
    array = HEADER.parse(bytes(data[at : at + HEADER.size])).PartitionEntryLBA * SECTOR
    data[array + 0x38 : array + 0x3A] = "X".encode("utf-16-le")  # partition 1's name
    resealed(data, at)
    (tmp_path / "bad.img").write_bytes(bytes(data))
    table, parts, notes = partition_table(tmp_path / "bad.img")
    assert table == "gpt" and [p.name for p in parts] == ["part1", "part2", "part3"]
    assert len(notes) == 1 and "lists other partitions than the primary" in notes[0], notes
    assert partition_table(disk)[2] == []


def test_sector_0_and_the_primary_table_wiped_read_through_the_backup(gpt_disk,
                                                                      tmp_path: Path) -> None:
    """A wiper zeroing the disk's first 34 sectors (protective MBR, primary header and
    entries): the backup header at the last LBA still names the partitions, as
    ``sgdisk`` finds them; an MBR written later beside that stale backup wins."""
    disk, _ = gpt_disk
    wiped = tmp_path / "wiped.img"
    wiped.write_bytes(bytes(34 * SECTOR) + disk.read_bytes()[34 * SECTOR:])
    table, parts, notes = partition_table(wiped)
    assert table == "gpt" and [p.start_byte // SECTOR for p in parts] == [
        first for _, first, *_ in LAYOUT]
    assert notes == ["no protective MBR (no 0xEE entry in sector 0)",
                     "primary GPT header unusable (no EFI PART signature); "
                     f"the backup header at LBA {SIZE // SECTOR - 1} was used"]
    found = survey(wiped, 4096)
    assert found.map == survey(disk, 4096).map
    assert [r.filesystem for r in found.regions] == ["ext4", "fat32", "ntfs"]
    run("sfdisk", "--quiet", "--no-reread", "--wipe", "never", wiped,
        input="start=2048, size=65536, type=83\n")
    assert partition_table(wiped)[0] == "mbr"


def test_both_headers_damaged_copy_everything(gpt_disk, tmp_path: Path) -> None:
    disk, _ = gpt_disk
    bad = damaged(disk, tmp_path / "bad.img", SECTOR + 0x30, SIZE - SECTOR + 0x30)
    found = survey(bad, 4096)
    assert found.table == "gpt" and "no valid GPT header" in found.notes[0]
    assert found.map == BlockMap.full(SIZE // 4096, 4096)
    assert "copying all 51200 blocks" in "\n".join(found.report())


def test_protective_mbr_of_0xffffffff_sectors_and_hybrid_mbr(gpt_disk, tmp_path: Path) -> None:
    disk, _ = gpt_disk
    expected = survey(disk, 4096).map
    big = tmp_path / "ffff.img"
    big.write_bytes(disk.read_bytes())
    with big.open("r+b") as fh:  # SizeInLBA of the 0xEE entry: 0xFFFFFFFF (valid, per gdisk)
        fh.seek(0x1BE + 0xC)
        fh.write(b"\xff\xff\xff\xff")
    assert survey(big, 4096).map == expected
    hybrid = tmp_path / "hybrid.img"
    hybrid.write_bytes(disk.read_bytes())
    run("sgdisk", "-h", "2", hybrid)  # MBR: partition 2 (FAT32) beside the 0xEE entry
    with RawDisk(hybrid) as raw:
        mbr = read_partitions(raw)
    assert len(mbr) == 2 and 0xEE in {p.type for p in mbr}
    found = survey(hybrid, 4096)
    assert found.table == "gpt" and found.map == expected


@pytest.mark.slow
def test_backup_restore_gives_identical_files_and_clean_file_systems(gpt_disk,
                                                                     tmp_path: Path) -> None:
    require_tools("e2fsck", "fsck.fat", "ntfsfix")
    disk, expected = gpt_disk
    cli = [sys.executable, "-m", "blockforensics.cli"]
    report = json.loads(subprocess.run([*cli, "backup", str(disk), str(tmp_path / "chain"),
                                        "--json"], capture_output=True, text=True,
                                       check=True).stdout)
    assert report["table"] == "gpt"
    assert [p["filesystem"] for p in report["partitions"]] == ["ext4", "fat32", "ntfs"]
    assert report["blocks"] < report["n_blocks"] // 2
    restored = tmp_path / "restored.img"
    subprocess.run([*cli, "restore", str(tmp_path / "chain"), str(restored)], check=True,
                   capture_output=True)
    for n, first, count, _, kind in LAYOUT:
        files = tsk_files(restored, tmp_path / f"files{n}", offset_sectors=first)
        assert same_trees(expected[n], files) == [], f"partition {n} ({kind})"
        volume = extract(restored, first * SECTOR, count * SECTOR, tmp_path / f"p{n}.img")
        if kind == "ext4":
            run("e2fsck", "-fn", volume)
        elif kind == "fat32":
            run("fsck.fat", "-n", volume)
        else:
            assert "processed successfully" in run("ntfsfix", "-n", volume)


def test_a_partition_type_guid_ending_in_a_zero_byte_is_read(tmp_path: Path) -> None:
    """A type GUID whose last stored byte is 0 (numpy's fixed-width bytes drop trailing
    NULs: it was a ValueError traceback): read as sgdisk wrote it."""
    require_tools("sgdisk")
    kind = "01234567-89ab-cdef-0123-456789abcd00"
    disk = sparse_file(tmp_path / "disk.img", 4 * MIB)
    run("sgdisk", "-n1:2048:4095", f"-t1:{kind}", disk)
    table, parts, notes = partition_table(disk)
    assert (table, [(p.type, p.start_byte) for p in parts], notes) == (
        "gpt", [(kind, 2048 * SECTOR)], [])

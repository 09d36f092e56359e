"""Attacks on whole volumes, where no file is left to judge: an NTFS whose master file
table is encrypted (Petya), a partition turned into a LUKS volume (an attacker's
full-volume encryption, as ransomware abusing BitLocker does), a volume wiped with
zeros.  Each file system read at the parent and gone at the point is named with what
its changed blocks are; an encrypted one makes the point encrypted.  The disk is an
MBR made by sfdisk with ext4 (mkfs.ext4 -d) and NTFS (mkntfs + ntfscp) partitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sample_disks import run
from support import require_module, require_tools

from blockforensics.fs.structure import Structure

MIB = 1 << 20
SECTOR = 512
#: the NTFS boot sector fields that place the master file table
NTFS_BOOT = Structure("NtfsBootSector", 512, [
    (0x0B, "H", "bytes_per_sector"),
    (0x0D, "B", "sectors_per_cluster"),
    (0x30, "Q", "mft_cluster"),
])


def triage_json(chain: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "triage", str(chain),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def backup(image: Path, chain: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup", str(image),
                           str(chain)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _overwrite(image: Path, offset: int, data: bytes) -> None:
    with image.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def struck(tmp_path: Path, size: int, mkfs: list[str], offset: int, data: bytes) -> dict:
    """The triage of a point after a volume made by ``mkfs`` (its last argument is the
    volume file, added here; ``tmp_path / "src"`` its tree if ``-d`` asks for one) had
    ``data`` written at byte ``offset``: the second point's JSON."""
    require_module("pytsk3", "pytsk3")
    require_tools(mkfs[0])
    volume, chain = tmp_path / "volume.img", tmp_path / "chain"
    volume.write_bytes(bytes(size))
    run(*mkfs, volume)
    backup(volume, chain)
    _overwrite(volume, offset, data)
    backup(volume, chain)
    return triage_json(chain)["points"][1]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[int, int]]:
    """The triage of three points — the disk, its NTFS's MFT encrypted, its ext4 turned
    into a LUKS volume — and the partitions' starts (bytes)."""
    require_module("pytsk3", "pytsk3")
    require_tools("sfdisk", "mkfs.ext4", "mkntfs", "ntfscp", "cryptsetup")
    tmp = tmp_path_factory.mktemp("lost")
    disk = tmp / "disk.img"
    disk.write_bytes(bytes(64 * MIB))
    run("sfdisk", "-q", disk, input="label: dos\nsize=24MiB, type=83\nsize=24MiB, type=7\n")
    table = json.loads(run("sfdisk", "--json", disk))["partitiontable"]["partitions"]
    start = {n: p["start"] * SECTOR for n, p in enumerate(table, start=1)}
    size = {n: p["size"] * SECTOR for n, p in enumerate(table, start=1)}
    src = tmp / "src"
    src.mkdir()
    for i in range(20):
        (src / f"notes{i}.txt").write_bytes(b"minutes of meeting %d\n" % i * 400)
    ext4, ntfs = tmp / "p1.vol", tmp / "p2.vol"
    ext4.write_bytes(bytes(size[1]))
    run("mkfs.ext4", "-q", "-F", "-d", src, ext4)
    ntfs.write_bytes(bytes(size[2]))
    run("mkntfs", "-F", "-Q", "-q", ntfs)
    for i in range(5):
        run("ntfscp", "-f", ntfs, src / f"notes{i}.txt", f"report{i}.txt")
    _overwrite(disk, start[1], ext4.read_bytes())
    _overwrite(disk, start[2], ntfs.read_bytes())
    chain = tmp / "chain"
    backup(disk, chain)

    boot = NTFS_BOOT.parse(ntfs.read_bytes()[:512])  # Petya: the MFT's first 256 KiB
    mft = start[2] + boot.mft_cluster * boot.sectors_per_cluster * boot.bytes_per_sector
    _overwrite(disk, mft, os.urandom(256 << 10))
    backup(disk, chain)

    luks = tmp / "luks.vol"  # the ext4 partition re-made as a LUKS volume, data random
    luks.write_bytes(bytes(size[1]))
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", "-", luks, input="attacker")
    header = run("cryptsetup", "luksDump", luks)
    payload = next(int(line.split()[-1]) for line in header.splitlines()
                   if line.startswith("Payload offset")) * SECTOR
    _overwrite(disk, start[1], luks.read_bytes()[:payload] + os.urandom(size[1] - payload))
    backup(disk, chain)
    return triage_json(chain), start


def test_an_encrypted_master_file_table_makes_the_point_encrypted(attacked) -> None:
    doc, start = attacked
    point = doc["points"][1]
    assert point["verdict"] == "encrypted", point["reasons"]
    [lost] = point["lost_filesystems"]
    assert (lost["prefix"], lost["kind"], lost["start_byte"]) == ("p2:", "ntfs", start[2])
    assert lost["encrypted"] and lost["random_share"] >= 0.5 and lost["now"] is None
    assert any(r.startswith("ntfs file system of partition 2") for r in point["reasons"])


def test_a_partition_turned_into_a_luks_volume_is_named(attacked) -> None:
    doc, start = attacked
    point = doc["points"][2]
    assert point["verdict"] == "encrypted", point["reasons"]
    [lost] = point["lost_filesystems"]
    assert (lost["prefix"], lost["kind"], lost["now"]) == ("p1:", "ext4", "LUKS")
    assert lost["start_byte"] == start[1]
    assert any("now a LUKS volume" in r for r in point["reasons"])
    assert doc["last_clean_point"] == 0


def test_a_volume_wiped_with_zeros_is_suspicious_not_encrypted(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"ordinary text\n" * 1000)
    # superblock, group descriptors, tables, data
    point = struck(tmp_path, 16 * MIB, ["mkfs.ext4", "-q", "-F", "-d", tmp_path / "src"], 0,
                   bytes(4 * MIB))
    [lost] = point["lost_filesystems"]
    assert point["verdict"] == "suspicious" and not lost["encrypted"]
    assert lost["prefix"] == "" and lost["constant_share"] >= 0.5
    assert any(r.endswith("— wiped") for r in point["reasons"])


def test_a_partition_table_wiped_is_suspicious(tmp_path: Path) -> None:
    """A GPT disk (sgdisk) whose protective MBR, then primary table, a wiper zeroes: the
    volumes' blocks stay as they were, the table's loss is named."""
    require_module("pytsk3", "pytsk3")
    require_tools("sgdisk", "mkfs.ext4")
    disk, chain = tmp_path / "disk.img", tmp_path / "chain"
    disk.write_bytes(bytes(32 * MIB))
    run("sgdisk", "-n", "1:2048:+12M", "-n", "2:0:+12M", disk)
    volume = tmp_path / "p1.vol"
    volume.write_bytes(bytes(12 * MIB))
    run("mkfs.ext4", "-q", "-F", volume)
    _overwrite(disk, 2048 * SECTOR, volume.read_bytes())
    backup(disk, chain)
    _overwrite(disk, 30 * MIB, b"the other partition's data\n" * 100)  # ordinary
    backup(disk, chain)
    _overwrite(disk, 0, bytes(SECTOR))  # the protective MBR
    backup(disk, chain)
    _overwrite(disk, 0, bytes(34 * SECTOR))  # the primary header and entries
    backup(disk, chain)
    doc = triage_json(chain)
    assert [p["verdict"] for p in doc["points"]] == ["clean", "clean", "suspicious",
                                                       "suspicious"]
    assert doc["points"][1]["structure_changes"] == []
    assert doc["points"][2]["structure_changes"] == [
        "the GPT partition table: no protective MBR (no 0xEE entry in sector 0)"]
    # the backup header at the disk's end still declares the partitions: the table's
    # damage is named, the volumes are read where they were (not "lost")
    assert doc["points"][3]["structure_changes"] == [
        "the GPT partition table: primary GPT header unusable (no EFI PART signature); "
        f"the backup header at LBA {32 * MIB // SECTOR - 1} was used"]
    assert not any("no table declares it" in r for r in doc["points"][3]["reasons"])
    assert not doc["points"][3].get("lost_filesystems")


def test_a_superblock_overwritten_with_random_bytes_is_not_called_encryption(
        tmp_path: Path) -> None:
    """4 KiB of random bytes over an ext4's start (its superblock): the volume is lost,
    but so few random bytes are a wiper's as likely as a cipher's."""
    point = struck(tmp_path, 16 * MIB, ["mkfs.ext4", "-q", "-F"], 0, os.urandom(4096))
    [lost] = point["lost_filesystems"]
    assert point["verdict"] == "suspicious" and not lost["encrypted"]
    assert lost["random_share"] == 1.0 and lost["changed_blocks"] == 1
    assert any(r.endswith("too few to tell a cipher's") for r in point["reasons"])


def test_a_fat32_boot_sector_zeroed_is_suspicious_though_its_backup_reads(
        tmp_path: Path) -> None:
    """mkfs.vfat's FAT32 with its boot sector zeroed: TSK reads it from the backup boot
    sector (sector 6), no file system is lost, yet the wiper's strike is named."""
    point = struck(tmp_path, 40 * MIB, ["mkfs.vfat", "-F", "32"], 0, bytes(SECTOR))
    assert point["verdict"] == "suspicious" and point["lost_filesystems"] == []
    assert point["structure_changes"] == [
        "the fat file system of the whole disk: its primary boot sector or superblock no "
        "longer bears its signature"]

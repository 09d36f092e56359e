"""verify --fs: each partition of a point checked read-only by its own checker."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support import require_tools

from blockforensics.fsck import check_filesystems
from blockforensics.image.chain import Chain

MiB = 1 << 20
FAT_START, EXT_START = 1 * MiB, 9 * MiB  # bytes
SIZE = 20 * MiB + 3 * 512


def run(*args: object) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def bf(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def leak_fat_clusters(img: Path, offset: int) -> None:
    """Mark free clusters used in both FATs (12-bit entries 26..): fsck.fat reports them."""
    with img.open("r+b") as fh:
        fh.seek(offset)
        boot = fh.read(512)
        reserved, fat_sectors = struct.unpack_from("<H", boot, 14)[0], \
            struct.unpack_from("<H", boot, 22)[0]
        for fat in range(2):
            fh.seek(offset + (reserved + fat * fat_sectors) * 512 + 40)
            fh.write(b"\xff\xff")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A disk with a FAT and an ext4 partition, backed up clean, then with lost clusters."""
    require_tools("sfdisk", "mkfs.fat", "mkfs.ext4", "fsck.fat", "fsck.ext4", "fusermount3")
    work = tmp_path_factory.mktemp("fsck")
    disk = work / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(SIZE)
    table = f"start={FAT_START // 512}, size={8 * MiB // 512}, type=e\n" \
            f"start={EXT_START // 512}, type=83\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=table, text=True, check=True,
                   capture_output=True)
    fat, ext = work / "fat.img", work / "ext.img"
    run("mkfs.fat", "-C", fat, 8 * 1024)
    tree = work / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello\n")
    with ext.open("wb") as fh:
        fh.truncate(SIZE - EXT_START)
    run("mkfs.ext4", "-q", "-F", "-d", tree, ext)
    for part, start in ((fat, FAT_START), (ext, EXT_START)):
        run("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={start // MiB}", "conv=notrunc",
            "status=none")
    directory = work / "chain"
    assert bf("backup", disk, directory).returncode == 0
    leak_fat_clusters(disk, FAT_START)
    assert bf("backup", disk, directory).returncode == 0
    return directory


def test_each_partition_is_checked_by_its_checker(chain: Path) -> None:
    with Chain.open(chain) as opened:
        clean = check_filesystems(opened.disk(0)).checks
        leaky = check_filesystems(opened.disk(1)).checks
    assert [(c.file, c.start_byte, c.filesystem, c.ok) for c in clean] == [
        ("part1.raw", FAT_START, "fat12", True), ("part2.raw", EXT_START, "ext4", True)]
    assert [c.ok for c in leaky] == [False, True]
    assert "Reclaimed" in leaky[0].output or "unused clusters" in leaky[0].output
    assert leaky[0].command[:2] == ["fsck.fat", "-n"]


def test_verify_fs_exit_codes(chain: Path) -> None:
    before = {p.name: p.read_bytes() for p in chain.iterdir()}
    done = bf("verify", chain, "--fs", "--point", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "part1.raw at byte 1048576: fat12: clean" in done.stdout
    assert "part2.raw at byte 9437184: ext4: clean" in done.stdout
    done = bf("verify", chain, "--fs")  # the newest point: the FAT lost two clusters
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fat12: ERRORS" in done.stdout
    assert {p.name: p.read_bytes() for p in chain.iterdir()} == before  # never written


def test_verify_fs_json(chain: Path) -> None:
    done = bf("verify", chain, "--fs", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is False and doc["chain"]["ok"] is True and doc["went_back"] == []
    fs = doc["filesystems"]
    assert fs["table"] == "mbr" and fs["ok"] is False
    assert [(c["file"], c["start_byte"], c["filesystem"], c["ok"]) for c in fs["checks"]] == [
        ("part1.raw", FAT_START, "fat12", False), ("part2.raw", EXT_START, "ext4", True)]
    assert fs["checks"][0]["command"][:2] == ["fsck.fat", "-n"]
    clean = json.loads(bf("verify", chain, "--fs", "--json", "--point", "0").stdout)
    assert clean["ok"] is True and clean["filesystems"]["ok"] is True


def test_btrfs_is_checked_and_its_damage_found(tmp_path: Path) -> None:
    """A Btrfs made by mkfs.btrfs is checked clean by ``btrfs check --readonly``; one whose
    superblock was damaged before its backup (copied whole) is checked and fails."""
    require_tools("mkfs.btrfs", "btrfs")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_bytes(b"kept on btrfs\n" * 500)
    volume = tmp_path / "volume.img"
    volume.write_bytes(bytes(128 * MiB))
    run("mkfs.btrfs", "-q", "--rootdir", tmp_path / "src", volume)
    clean = bf("backup", volume, tmp_path / "clean")
    with volume.open("r+b") as fh:  # the primary superblock's root tree address
        fh.seek(0x10000 + 0x50)
        fh.write(b"\xff" * 8)
    damaged = bf("backup", volume, tmp_path / "damaged")
    assert clean.returncode == damaged.returncode == 0, clean.stderr + damaged.stderr
    for name, ok in (("clean", True), ("damaged", False)):
        done = bf("verify", tmp_path / name, "--fs", "--json")
        [check] = json.loads(done.stdout)["filesystems"]["checks"]
        assert check["filesystem"].startswith("btrfs") and check["ok"] is ok, check
        assert done.returncode == (0 if ok else 1)

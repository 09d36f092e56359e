"""``backup`` says what it recognised, partition by partition, and never stops on what it
cannot read: an unknown or cut-off partition is copied whole, and the output says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sample_disks import MIB, run, sparse_file
from support import require_tools

SECTOR = 512


def backup(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup",
                           *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MiB MBR: FAT16 at 1 MiB (8 MiB), an unformatted Linux partition after it."""
    require_tools("sfdisk", "mkfs.fat")
    img = sparse_file(tmp_path_factory.mktemp("report") / "disk.img", 24 * MIB)
    subprocess.run(["sfdisk", "-q", str(img)], check=True, text=True,
                   input="label: dos\nstart=2048, size=16384, type=6\nstart=18432, type=83\n")
    run("mkfs.fat", "-F", "16", "-s", "1", "--offset", "2048", img, 8 * 1024)
    (img.parent / "noise").write_bytes(b"\x5a" * 3 * MIB)
    with img.open("r+b") as fh:  # content in the unknown partition, to be kept
        fh.seek(18432 * SECTOR)
        fh.write((img.parent / "noise").read_bytes())
    return img


def test_each_partition_is_reported(disk: Path, tmp_path: Path) -> None:
    done = backup(disk, tmp_path / "chain")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "partition table: mbr, 2 partitions"
    assert lines[1].startswith("  partition 1 (fat16): ") and "of 2048 blocks allocated" in lines[1]
    assert lines[2] == "  partition 2: not recognised: copying all 3840 blocks"
    assert lines[3] == "  outside the partitions (tables, gaps): all 256 blocks"
    assert lines[4].startswith("point 0: full")


def test_json_carries_the_partitions(disk: Path, tmp_path: Path) -> None:
    done = backup(disk, tmp_path / "chain", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["point"] == 0 and report["table"] == "mbr"
    fat, other = report["partitions"]
    assert (fat["index"], fat["type"], fat["filesystem"], fat["all_blocks"]) == (
        1, "0x06", "fat16", False)
    assert 0 < fat["blocks"] < fat["total_blocks"] == 2048
    assert (other["index"], other["filesystem"], other["all_blocks"], other["note"]) == (
        2, None, True, "not recognised")
    assert other["blocks"] == other["total_blocks"] == 3840


def test_truncated_image_is_backed_up_and_said(disk: Path, tmp_path: Path) -> None:
    """``head -c 6M``: partition 1 is cut; its blocks that are there are all copied."""
    cut = tmp_path / "cut.img"
    cut.write_bytes(disk.read_bytes()[: 6 * MIB])
    done = backup(cut, tmp_path / "chain")
    assert done.returncode == 0, done.stderr
    assert "partition 1 (fat16): runs past the end of the image at byte 6291456" in done.stdout
    assert "copying all 1280 blocks" in done.stdout
    assert "partition 2: starts past the end of the image" in done.stdout
    assert "point 0: full" in done.stdout


def test_all_blocks_says_so(disk: Path, tmp_path: Path) -> None:
    done = backup(disk, tmp_path / "chain", "--all-blocks")
    assert done.stdout.splitlines()[0] == "--all-blocks: every block copied"
    report = json.loads(backup(disk, tmp_path / "chain2", "--all-blocks", "--json").stdout)
    assert report["partitions"] == [] and report["table"] is None

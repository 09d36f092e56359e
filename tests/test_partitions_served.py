"""Every partition of a point served as ``partN.raw`` (GPT entries, MBR primaries and
logical partitions) and checked by ``verify --fs`` with its own checker, read-only.

Disks made by sgdisk / sfdisk, file systems by mkfs.fat + mtools, mkfs.ext4 -d, mkntfs +
ntfs-3g and mkfs.exfat; the served bytes are compared with the source disk's, and a
file system wrecked in a later point fails alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sample_disks import MIB, file_tree, make_ext4, make_fat, make_ntfs, place, run, sparse_file
from support import require_tools, serving
from test_fsck import bf

from blockforensics.expose import partition_files
from blockforensics.formats.raw import RawDisk
from blockforensics.fsck import check_filesystems

SECTOR = 512
#: GPT: (entry number, first sector, sectors, sgdisk type code, file system); entry 3 unused
GPT_LAYOUT = [(1, 2048, 36 * 2048, "0700", "fat32"), (2, 75776, 16 * 2048, "8300", "ext4"),
              (4, 108544, 16 * 2048, "0700", "ntfs")]
#: MBR: a FAT16 primary, then an extended partition holding an ext4 and an exFAT logical one
MBR_SCRIPT = ("label: dos\nstart=2048, size=16384, type=6\nstart=18432, type=5\n"
              "size=16384, type=83\nsize=16384, type=7\n")
EXPECTED = {"gpt": {1: "fat32", 2: "ext4", 4: "ntfs"}, "mbr": {1: "fat16", 5: "ext4", 6: "exfat"}}
#: per disk, the partition wrecked in point 1, and how
WRECKED = {"gpt": 2, "mbr": 1}

pytestmark = pytest.mark.slow


def sfdisk_partitions(disk: Path) -> dict[int, tuple[int, int]]:
    """``{number: (start byte, length in bytes)}`` as sfdisk reads the table (not
    extended partitions)."""
    table = json.loads(run("sfdisk", "-J", disk))["partitiontable"]
    return {int(p["node"].removeprefix(str(disk))): (p["start"] * SECTOR, p["size"] * SECTOR)
            for p in table["partitions"] if p["type"] not in ("5", "f")}


def make_gpt(work: Path) -> Path:
    disk = sparse_file(work / "gpt.img", 70 * MIB)
    run("sgdisk", *[arg for n, first, count, code, _ in GPT_LAYOUT for arg in
                    (f"-n{n}:{first}:{first + count - 1}", f"-t{n}:{code}")], disk)
    for n, first, count, _, kind in GPT_LAYOUT:
        tree = file_tree(work / f"gpt-tree{n}", n, 8, 256 * 1024)
        volume = work / f"gpt-p{n}.img"
        if kind == "fat32":
            make_fat(volume, count * SECTOR, ["-F", "32", "-s", "1"], tree)
        elif kind == "ext4":
            make_ext4(volume, count * SECTOR, tree)
        else:
            make_ntfs(volume, count * SECTOR, tree)
        place(disk, volume, first * SECTOR)
    return disk


def make_mbr(work: Path) -> Path:
    disk = sparse_file(work / "mbr.img", 40 * MIB)
    run("sfdisk", "-q", disk, input=MBR_SCRIPT)
    parts = sfdisk_partitions(disk)
    tree = file_tree(work / "mbr-tree", 7, 8, 256 * 1024)
    make_fat(work / "mbr-p1.img", parts[1][1], ["-F", "16", "-s", "1"], tree)
    make_ext4(work / "mbr-p5.img", parts[5][1], tree)
    run("mkfs.exfat", sparse_file(work / "mbr-p6.img", parts[6][1]))
    for n in (1, 5, 6):
        place(disk, work / f"mbr-p{n}.img", parts[n][0])
    return disk


def wreck(disk: Path, table: str) -> None:
    """GPT: wipe the ext4 superblock (no signature left; its type says Linux); MBR: zero
    the FAT16 boot sector's bytes per sector (its "FAT16" label stays)."""
    start = sfdisk_partitions(disk)[WRECKED[table]][0]
    with disk.open("r+b") as fh:
        if table == "gpt":
            fh.seek(start + 1024)
            fh.write(bytes(1024))
        else:
            fh.seek(start + 11)
            fh.write(bytes(2))


@pytest.fixture(scope="module", params=["gpt", "mbr"])
def backed_up(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[str, Path, Path, Path]:
    """``(table, chain, clean disk copy, disk)``: point 0 clean, point 1 with one file
    system wrecked."""
    require_tools("sgdisk", "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "mkntfs", "ntfs-3g",
                  "mkfs.exfat", "fsck.fat", "e2fsck", "fsck.exfat", "ntfsfix", "fusermount3")
    table = request.param
    work = tmp_path_factory.mktemp(table)
    disk = make_gpt(work) if table == "gpt" else make_mbr(work)
    chain = work / "chain"
    done = bf("backup", disk, chain)
    assert done.returncode == 0, done.stdout + done.stderr
    clean = work / "clean.img"
    clean.write_bytes(disk.read_bytes())
    wreck(disk, table)
    done = bf("backup", disk, chain)
    assert done.returncode == 0, done.stdout + done.stderr
    return table, chain, clean, disk


def test_mount_serves_each_partition_with_the_source_bytes(backed_up, tmp_path: Path) -> None:
    table, chain, clean, _ = backed_up
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with serving([sys.executable, "-m", "blockforensics.cli", "mount", str(chain),
                  str(mountpoint), "--point", "0"], mountpoint) as mount:
        names = sorted(p.name for p in mountpoint.iterdir())
        assert names == sorted(["disk.raw", "disk.vhd", "disk.vhdx", "disk.vmdk",
                                *(f"part{n}.raw" for n in EXPECTED[table])])
        source = clean.read_bytes()
        for n, (start, length) in sfdisk_partitions(clean).items():
            served = (mountpoint / f"part{n}.raw").read_bytes()
            assert served == source[start : start + length], n
    assert mount.proc.returncode == 0, mount.err
    for n, (start, length) in sfdisk_partitions(clean).items():
        assert f"part{n}.raw: partition {n}, {length} bytes from byte {start}" in mount.out


def test_verify_fs_checks_each_partition_with_its_checker(backed_up) -> None:
    table, chain, clean, _ = backed_up
    before = {p.name: p.read_bytes() for p in chain.iterdir()}
    parts = sfdisk_partitions(clean)
    done = bf("verify", chain, "--fs", "--point", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    tools = {"fat": "fsck.fat -n", "ext": "e2fsck -f -n", "ntfs": "ntfsfix -n",
             "exfat": "fsck.exfat -n"}
    for n, kind in EXPECTED[table].items():
        tool = tools[kind.rstrip("0123456789")]
        assert f"part{n}.raw at byte {parts[n][0]}: {kind}: clean ({tool} part{n}.raw)" \
            in done.stdout, done.stdout
    assert {p.name: p.read_bytes() for p in chain.iterdir()} == before  # never written


def test_a_wrecked_file_system_fails_alone(backed_up) -> None:
    table, chain, _, disk = backed_up
    done = bf("verify", chain, "--fs", "--point", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = {line.split(" ", 1)[0]: line for line in done.stdout.splitlines()
             if line.startswith("part")}
    assert sorted(lines) == sorted(f"part{n}.raw" for n in EXPECTED[table])
    for n in EXPECTED[table]:
        verdict = "ERRORS" if n == WRECKED[table] else "clean"
        assert f": {verdict} (" in lines[f"part{n}.raw"], lines
    wrecked = lines[f"part{WRECKED[table]}.raw"]
    if table == "gpt":  # nothing left to recognise: the Linux type names the checker
        assert "ext: ERRORS (e2fsck -f -n part2.raw); no file-system signature; " \
            "checked as ext for its type 0fc63daf-8483-4772-8e79-3d69d8477de4" in wrecked
    else:  # the label outlives the BPB
        assert "fat: ERRORS (fsck.fat -n part1.raw); fat signature" in wrecked
    # the same from Python, with the checker's own words
    with RawDisk(disk) as raw:
        report = check_filesystems(raw)
        assert partition_files(raw)[2] == []  # no notes on a sound table
    assert not report.ok and report.table == table and report.notes == []
    assert [c.ok for c in report.checks] == [n != WRECKED[table] for n in EXPECTED[table]]
    assert "Bad magic number" in report.checks[1].output if table == "gpt" else \
        "sector size" in report.checks[0].output.lower()

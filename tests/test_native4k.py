"""A "4K native" MBR disk: its table counts LBAs in 4096-byte logical sectors, which the
table itself does not record. The table is written by sfdisk on a loop device of
4096-byte sectors, ext4 (primary), FAT16 of 4096-byte sectors (logical) and NTFS of
4096-byte sectors (logical) are made by their own tools: every partition is found
where sfdisk and The Sleuth Kit (``mmls -b 4096``) put it, its files are listed, a
backup stores the allocated blocks only, and a restore gives every file back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sample_disks import run
from support import require_module, require_tools

from blockforensics import forensics
from blockforensics.allocation import filesystem_partitions, partition_table, survey
from blockforensics.formats.raw import RawDisk

MIB = 1 << 20
SECTOR = 4096
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
#: per table: sfdisk's script, and partition number -> the file system made in it
TABLES = {
    "mbr": ("label: dos\nsize=20MiB, type=83\ntype=5\nsize=24MiB, type=e\ntype=7\n",
            {1: "ext4", 5: "fat16", 6: "ntfs"}),
    "gpt": (f"label: gpt\nsize=20MiB\nsize=24MiB, type={BASIC_DATA}\ntype={BASIC_DATA}\n",
            {1: "ext4", 2: "fat16", 3: "ntfs"}),
}


def _table_on_4k_loop(path: Path, script: str) -> dict[int, tuple[int, int]]:
    """Write the table with sfdisk through a loop device of 4096-byte sectors; partition
    number -> (start, size) in 4096-byte sectors, as sfdisk reads them back."""
    try:
        loop = run("losetup", "-b", SECTOR, "-f", "--show", path).strip()
    except AssertionError as exc:
        pytest.fail(f"losetup -b 4096 failed (root and loop devices needed): {exc}")
    try:
        run("sfdisk", "-q", loop, input=script)
        table = json.loads(run("sfdisk", "--json", loop))["partitiontable"]
    finally:
        run("losetup", "-d", loop)
    assert table["sectorsize"] == SECTOR
    return {int(p["node"].removeprefix(loop).removeprefix("p")): (p["start"], p["size"])
            for p in table["partitions"]}


@dataclass
class Native4k:
    path: Path
    table: str  # "mbr" or "gpt"
    parts: dict[int, tuple[int, int]]  # number -> (start, size) in 4096-byte sectors
    kinds: dict[int, str]  # number -> file system
    files: dict[str, bytes]  # "pN:/path" -> contents


@pytest.fixture(scope="module", params=TABLES)
def disk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Native4k:
    """The disk, its partitions and the files written to it."""
    require_module("pytsk3", "pytsk3")
    require_tools("losetup", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mkntfs", "ntfscp",
                  "mmls", "fls", "icat")
    script, kinds = TABLES[request.param]
    ext, fat, ntfs = kinds
    tmp = tmp_path_factory.mktemp("native4k")
    path = tmp / "disk.img"
    path.write_bytes(bytes(64 * MIB))
    parts = _table_on_4k_loop(path, script)
    rng = np.random.default_rng(4096)
    files = {f"p{ext}:/docs/{i}.bin": rng.bytes(50_000 + i) for i in range(3)}
    photo, report = f"p{fat}:/PHOTO.JPG", f"p{ntfs}:/report.doc"
    files |= {photo: rng.bytes(70_000), report: rng.bytes(90_000)}
    src = tmp / "src"
    (src / "docs").mkdir(parents=True)
    for name, data in files.items():
        if name.startswith(f"p{ext}:"):
            (src / name.partition(":/")[2]).write_bytes(data)
    volumes = {n: tmp / f"p{n}.vol" for n in kinds}
    for n, vol in volumes.items():
        vol.write_bytes(bytes(parts[n][1] * SECTOR))
    run("mkfs.ext4", "-q", "-F", "-b", 4096, "-d", src, volumes[ext])
    run("mkfs.fat", "-F", 16, "-S", SECTOR, "-s", 1, volumes[fat])
    (tmp / "photo").write_bytes(files[photo])
    run("mcopy", "-i", volumes[fat], tmp / "photo", "::/PHOTO.JPG")
    run("mkntfs", "-F", "-Q", "-q", "-s", SECTOR, volumes[ntfs])
    (tmp / "report").write_bytes(files[report])
    run("ntfscp", "-f", volumes[ntfs], tmp / "report", "report.doc")
    with path.open("r+b") as fh:
        for n, vol in volumes.items():
            fh.seek(parts[n][0] * SECTOR)
            fh.write(vol.read_bytes())
    return Native4k(path, request.param, parts, kinds, files)


#: what says that an MBR was read in 4096-byte sectors
WIDE_NOTE = "4096-byte logical sectors"


def test_partitions_are_where_sfdisk_and_the_sleuth_kit_put_them(disk: Native4k) -> None:
    table, found, notes = partition_table(disk.path)
    assert table == disk.table
    assert {p.index: (p.start_byte, p.length_bytes) for p in found} == {
        n: (start * SECTOR, size * SECTOR) for n, (start, size) in disk.parts.items()}
    assert any(WIDE_NOTE in note for note in notes) == (disk.table == "mbr")
    rows = [row.split() for row in run("mmls", "-b", SECTOR, disk.path).splitlines()]
    tsk = {int(row[2]) for row in rows if len(row) > 2 and re.fullmatch(r"\d+(:\d+)?", row[1])}
    assert tsk == {disk.parts[n][0] for n in disk.kinds}
    assert [p.index for p in filesystem_partitions(disk.path)] == sorted(disk.kinds)


def test_every_file_is_listed_and_only_allocated_blocks_are_stored(disk: Native4k) -> None:
    with RawDisk(disk.path) as raw:
        listed = forensics.list_files(raw)
    assert set(disk.files) <= set(listed.loc[listed["type"] == "file", "path"])
    found = survey(disk.path)
    assert [(r.index, r.filesystem, r.note) for r in found.regions] == [
        (n, kind, "") for n, kind in disk.kinds.items()]
    assert found.map.count() < found.map.n_blocks // 2  # not copied whole


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_a_restore_gives_every_file_back(disk: Native4k, tmp_path: Path) -> None:
    chain, restored = tmp_path / "chain", tmp_path / "restored.img"
    backup = _cli("backup", disk.path, chain)
    assert backup.returncode == 0, backup.stderr
    assert (WIDE_NOTE in backup.stdout + backup.stderr) == (disk.table == "mbr")
    assert _cli("restore", chain, restored).returncode == 0
    for name, data in disk.files.items():
        number, _, file_path = name.partition(":")
        offset = str(disk.parts[int(number[1:])][0])
        fls = run("fls", "-r", "-p", "-u", "-b", SECTOR, "-o", offset, restored)
        inode = next(line.split()[1].rstrip(":") for line in fls.splitlines()
                     if line.endswith("\t" + file_path.lstrip("/")))
        icat = subprocess.run(["icat", "-b", str(SECTOR), "-o", offset, str(restored), inode],
                              check=True, capture_output=True, timeout=60).stdout
        assert icat == data, name

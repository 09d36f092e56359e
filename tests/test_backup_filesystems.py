"""``blockforensics backup`` of real file systems stores exactly their allocated blocks,
and the restore is fsck-clean with every file identical.

File systems are made by mkfs.vfat / mkfs.ext4 with files written by mtools /
debugfs (some deleted again, so freed blocks hold stale data that is *not*
backed up); files are read back with the same tools from the restored image.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import require_tools

from blockforensics.allocation import allocation_map
from blockforensics.formats.raw import RawDisk
from blockforensics.image.chain import Chain

MIB = 1 << 20
FILES = {"ALPHA.BIN": 300_000, "BETA.TXT": 5_000, "GAMMA.DAT": 1_200_000, "DELTA.BIN": 70_000}
DELETED = ["BETA.TXT", "DELTA.BIN"]


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True)


def cli(*args: object) -> None:
    run(sys.executable, "-m", "blockforensics.cli", *args)


def make(kind: str, img: Path, work: Path) -> dict[str, bytes]:
    """A file system with FILES written and DELETED removed; returns what should remain."""
    with img.open("wb") as fh:
        fh.truncate(48 * MIB)
    contents = {name: np.random.default_rng(i).bytes(n)
                for i, (name, n) in enumerate(FILES.items())}
    if kind == "fat32":
        run("mkfs.vfat", "-F", "32", img)
    else:
        run("mkfs.ext4", "-q", "-F", img)
    for name, data in contents.items():
        (work / name).write_bytes(data)
        if kind == "fat32":
            run("mcopy", "-i", img, work / name, f"::{name}")
        else:
            run("debugfs", "-w", "-R", f"write {work / name} {name}", img)
    for name in DELETED:
        if kind == "fat32":
            run("mdel", "-i", img, f"::{name}")
        else:
            run("debugfs", "-w", "-R", f"rm {name}", img)
        del contents[name]
    return contents


def read_back(kind: str, img: Path, name: str, work: Path) -> bytes:
    out = work / f"out-{name}"
    out.unlink(missing_ok=True)
    if kind == "fat32":
        run("mcopy", "-i", img, f"::{name}", out)
    else:
        run("debugfs", "-R", f"dump {name} {out}", img)
    return out.read_bytes()


@pytest.mark.parametrize("kind", ["fat32", "ext4"])
def test_backup_stores_the_allocated_blocks_and_restores_a_clean_file_system(kind, tmp_path):
    require_tools("mkfs.vfat", "mcopy", "mdel", "fsck.vfat", "mkfs.ext4", "debugfs", "e2fsck")
    img = tmp_path / "fs.img"
    contents = make(kind, img, tmp_path)
    with RawDisk(img) as disk:
        allocated = allocation_map(disk, 4096)
        blocks = disk.read_blocks(0, disk.n_blocks)
    nonzero = blocks.any(axis=1)
    assert 0 < allocated.count() < allocated.n_blocks

    cli("backup", img, tmp_path / "chain")
    with Chain.open(tmp_path / "chain") as chain:
        stored = chain.layout(0).supplied(0).to_bools()
    # exactly the allocated blocks (all-zero ones need no storing: absent reads as zeros)
    assert np.array_equal(stored, allocated.to_bools() & nonzero)
    # the stale data of the deleted files lies in unallocated, non-zero blocks: not copied
    assert (~allocated.to_bools() & nonzero).any()

    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    assert restored.stat().st_size == img.stat().st_size
    if kind == "fat32":
        run("fsck.vfat", "-n", restored)
    else:
        run("e2fsck", "-fn", restored)
    for name, data in contents.items():
        assert read_back(kind, restored, name, tmp_path) == data

    cli("backup", img, tmp_path / "all", "--all-blocks")
    with Chain.open(tmp_path / "all") as chain:
        assert np.array_equal(chain.layout(0).supplied(0).to_bools(), nonzero)

"""ext3/4 volumes that need journal recovery, made by e2fsprogs itself.

A live ext3/4 between a commit and its checkpoint (what a crash-consistent
snapshot catches, or a crash leaves) has a new file's data in place but its
block bitmap, inode and directory entry only in a committed journal
transaction.  ``debugfs`` builds exactly that: the file is written in a copy of
the volume, its data blocks are put in place in the original, and the metadata
blocks it changed are written to the journal with ``journal_write``.  Oracles:
``debugfs blocks`` (the file's blocks) and, on the restored image, ``e2fsck -fy``
(the recovery) then ``debugfs dump``.  Fast commits (files fsync'd since the last
full commit) only the kernel writes: a live volume is copied while mounted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sample_disks import MIB, run, sparse_file
from support import mounted_with, require_tools

from blockforensics.allocation import filesystem_allocation, survey
from blockforensics.blockmap import BlockMap

CLI = [sys.executable, "-m", "blockforensics.cli"]


def needing_recovery(work: Path, mkfs: list[str],
                     journal_open: str) -> tuple[Path, np.ndarray, bytes]:
    """(volume, the new file's blocks, its bytes): a file committed to the journal only,
    through debugfs ``journal_open`` with the options given."""
    rng = np.random.default_rng(11)
    tree = work / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(rng.bytes(300_000))
    content = rng.bytes(2_000_000)
    (work / "big.bin").write_bytes(content)
    volume = sparse_file(work / "volume.img", 64 * MIB)
    run(*mkfs, "-q", "-F", "-d", tree, volume)
    written = work / "written.img"
    shutil.copy(volume, written)
    run("debugfs", "-w", "-R", f"write {work / 'big.bin'} big.bin", written)
    block = int(re.search(r"^Block size:\s+(\d+)", run("dumpe2fs", "-h", volume), re.M)[1])
    old, new = (np.fromfile(p, np.uint8).reshape(-1, block) for p in (volume, written))
    data = np.array(run("debugfs", "-R", "blocks /big.bin", written).split(), dtype=np.int64)
    metadata = np.setdiff1d(np.flatnonzero((old != new).any(axis=1)), data)
    old[data] = new[data]
    old.tofile(volume)
    (work / "metadata.bin").write_bytes(new[metadata].tobytes())
    run("debugfs", "-w", "-f", "-", volume, input=(
        f"{journal_open}\njw -b {','.join(map(str, metadata))} {work / 'metadata.bin'}\njc\n"))
    assert "needs_recovery" in run("dumpe2fs", "-h", volume)
    return volume, data, content


@pytest.mark.parametrize("mkfs, journal_open", [
    # the journal inode mapped by extents; checksummed (v3) as the kernel journals a
    # metadata_csum volume, 16-byte tags and a descriptor tail
    (["mkfs.ext4", "-b", "4096"], "jo -c -v 3"),
    (["mkfs.ext3", "-b", "1024"], "jo"),  # by 1- and 2-level indirect blocks; 8-byte tags
])
def test_blocks_allocated_in_the_journal_only_are_backed_up(tmp_path: Path, mkfs: list[str],
                                                            journal_open: str) -> None:
    require_tools(mkfs[0], "debugfs", "dumpe2fs", "e2fsck")
    volume, data, content = needing_recovery(tmp_path, mkfs, journal_open)
    assert filesystem_allocation(volume).to_bools()[data].all()
    chain, restored = tmp_path / "chain", tmp_path / "restored.img"
    for command in (["backup", volume, chain], ["restore", chain, restored]):
        subprocess.run([*CLI, *map(str, command)], check=True, capture_output=True)
    fsck = subprocess.run(["e2fsck", "-fy", str(restored)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout  # 1: recovered (the journal replayed)
    run("debugfs", "-R", f"dump /big.bin {tmp_path / 'out.bin'}", restored)
    assert (tmp_path / "out.bin").read_bytes() == content


def test_recovery_from_an_external_journal_copies_every_block(tmp_path: Path) -> None:
    """Its bitmaps may be stale and the journal is on another device: every block is
    copied, and the note says why (mke2fs -J device= needs a block device; debugfs sets
    the same superblock fields)."""
    require_tools("mkfs.ext4", "debugfs", "dumpe2fs")
    volume = sparse_file(tmp_path / "volume.img", 16 * MIB)
    run("mkfs.ext4", "-q", "-F", volume)
    run("debugfs", "-w", "-f", "-", volume,
        input="ssv journal_inum 0\nssv journal_dev 0x700\nfeature needs_recovery\n")
    assert "needs_recovery" in run("dumpe2fs", "-h", volume)
    found = survey(volume, 4096)
    assert found.map == BlockMap.full(16 * MIB // 4096, 4096)
    [region] = found.regions
    assert "needs recovery from an external journal (device 0x700)" in region.note


def test_files_fsynced_as_fast_commits_are_backed_up(tmp_path: Path) -> None:
    """A live ``fast_commit`` volume copied after fsyncs: the files' blocks are in no
    bitmap, only in the fast commits the kernel replays at mount — they must be backed
    up (before: restored as zeros).  Oracle: the kernel's own replay of the copy."""
    require_tools("mkfs.ext4", "dumpe2fs", "mount", "umount")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    volume = sparse_file(tmp_path / "volume.img", 64 * MIB)
    run("mkfs.ext4", "-q", "-F", "-O", "fast_commit", volume)
    rng = np.random.default_rng(5)
    contents = {f"late{i}.bin": rng.bytes(40_000 + 3_000 * i) for i in range(6)}
    live = tmp_path / "live.img"
    with mounted_with(["mount", "-o", "loop,commit=600", str(volume)], tmp_path / "m") as m:
        (m / "early.bin").write_bytes(rng.bytes(100_000))
        run("sync")
        for name, data in contents.items():
            with (m / name).open("wb") as fh:
                fh.write(data)
                os.fsync(fh.fileno())
        shutil.copy(volume, live)  # what a crash-consistent snapshot holds
    assert "needs_recovery" in run("dumpe2fs", "-h", live)
    assert "ADD_RANGE" in run("debugfs", "-R", "logdump", live)
    chain, restored = tmp_path / "chain", tmp_path / "restored.img"
    for command in (["backup", live, chain], ["restore", chain, restored]):
        subprocess.run([*CLI, *map(str, command)], check=True, capture_output=True)
    with mounted_with(["mount", "-o", "loop", str(restored)], tmp_path / "r") as r:
        assert {name: (r / name).read_bytes() for name in contents} == contents

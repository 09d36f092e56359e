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


def dumpe2fs_free(volume: Path, n_blocks: int) -> np.ndarray:
    """Flags of the blocks ``dumpe2fs`` lists as free."""
    free = np.zeros(n_blocks, dtype=bool)
    for ranges in re.findall(r"^  Free blocks: (.*)$", run("dumpe2fs", volume), re.M):
        for part in filter(None, (p.strip() for p in ranges.split(","))):
            first, _, last = part.partition("-")
            free[int(first) : int(last or first) + 1] = True
    return free


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
        pieces = {"a.log": [rng.bytes(5000) for _ in range(40)],
                  "b.log": [rng.bytes(3000) for _ in range(40)]}
        with (m / "a.log").open("wb") as a, (m / "b.log").open("wb") as b:
            for piece_a, piece_b in zip(*pieces.values()):  # interleaved: fragmented files
                for fh, piece in ((a, piece_a), (b, piece_b)):  # with extent index blocks
                    fh.write(piece)
                    fh.flush()
                    os.fsync(fh.fileno())
        contents.update({name: b"".join(p) for name, p in pieces.items()})
        shutil.copy(volume, live)  # what a crash-consistent snapshot holds
    assert "needs_recovery" in run("dumpe2fs", "-h", live)
    assert "ADD_RANGE" in run("debugfs", "-R", "logdump", live)
    chain, restored = tmp_path / "chain", tmp_path / "restored.img"
    for command in (["backup", live, chain], ["restore", chain, restored]):
        subprocess.run([*CLI, *map(str, command)], check=True, capture_output=True)
    with mounted_with(["mount", "-o", "loop", str(restored)], tmp_path / "r") as r:
        assert {name: (r / name).read_bytes() for name in contents} == contents
    assert "(ETB0)" in run("debugfs", "-R", "stat /a.log", restored)  # a tree of depth 1


def test_a_transaction_wrapping_before_the_fast_commit_area_is_read(tmp_path: Path) -> None:
    """With fast commits the log ends ``s_num_fc_blks`` blocks before ``s_maxlen`` and
    wraps there to ``s_first`` (Linux ``journal_load_superblock``): a committed
    transaction whose descriptor is the log's last block has its copies and commit at
    the journal's start.  Before, the log was read on into the fast-commit area and the
    transaction lost: blocks its bitmap copy marks were copied as free.  The journal is
    written here as a mounted fast_commit volume has it (feature 0x20 set, 8-byte tags
    without checksums); the kernel's own recovery (a mount) is the oracle."""
    require_tools("mkfs.ext4", "debugfs", "dumpe2fs", "mount", "umount")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    volume = sparse_file(tmp_path / "volume.img", 64 * MIB)
    run("mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "fast_commit,^metadata_csum", volume)
    header = run("dumpe2fs", "-h", volume)
    maxlen = int(re.search(r"^Total journal blocks:\s+(\d+)", header, re.M)[1])
    fast = int(re.search(r"^Fast commit length:\s+(\d+)", header, re.M)[1])
    journal = np.array(run("debugfs", "-R", "blocks <8>", volume).split(), dtype=np.int64)
    groups = run("dumpe2fs", volume)
    first_block = int(re.search(r"^Group 3: \(Blocks (\d+)-", groups, re.M)[1])
    bitmap_block = int(re.search(r"^Group 3:.*?Block bitmap at (\d+)", groups, re.M | re.S)[1])
    bs, last = 1024, maxlen - fast  # the log: journal blocks 1 .. last - 1
    image = np.memmap(volume, np.uint8, "r+").reshape(-1, bs)
    bitmap = image[bitmap_block].copy()
    assert not bitmap[200:300].any()  # group 3's blocks 1600..2399 are free
    bitmap[200:300] = 0xFF  # what the transaction allocates

    def block(kind: int, sequence: int, body: bytes = b"") -> np.ndarray:
        data = (0xC03B3998).to_bytes(4, "big") + kind.to_bytes(4, "big") \
            + sequence.to_bytes(4, "big") + body
        return np.frombuffer(data.ljust(bs, b"\0"), np.uint8)

    sb = bytearray(image[journal[0]].tobytes())
    sb[0x18:0x20] = (7).to_bytes(4, "big") + (last - 1).to_bytes(4, "big")  # sequence, start
    sb[0x28:0x2C] = (0x20).to_bytes(4, "big")  # INCOMPAT_FAST_COMMIT, as while mounted
    image[journal[0]] = np.frombuffer(bytes(sb), np.uint8)
    tag = bitmap_block.to_bytes(4, "big") + b"\0\0" + (0x2 | 0x8).to_bytes(2, "big")
    image[journal[last - 1]] = block(1, 7, tag)  # descriptor: one tag, same UUID, last
    image[journal[1]] = bitmap  # its copy, after the wrap
    image[journal[2]] = block(2, 7)  # commit
    image.flush()
    del image
    run("debugfs", "-w", "-R", "feature needs_recovery", volume)
    freed = np.arange(first_block + 1600, first_block + 2400)
    found = filesystem_allocation(volume).to_bools()
    recovered = tmp_path / "recovered.img"
    shutil.copy(volume, recovered)
    with mounted_with(["mount", "-o", "loop", str(recovered)], tmp_path / "m"):
        pass  # the kernel replays the journal
    used = ~dumpe2fs_free(recovered, found.size)
    assert used[freed].all()  # the kernel applied the wrapped transaction
    assert found[freed].all()

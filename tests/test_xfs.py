"""XFS: the allocation map read from the free-space B+trees equals what ``xfs_db`` lists,
a backup stores only those blocks and restores a clean file system with every file
identical, damage and a dirty log copy the volume whole (with a note), and the files
are listed (through dissect.xfs) for diff, timeline and extract.

Volumes are made by the real tools: ``mkfs.xfs`` (small volumes allowed by the
fstests variables), files written through a loop mount.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from support import require_tools

from blockforensics.allocation import filesystem_allocation, survey
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.xfs import XfsFileSystem
from blockforensics.image.chain import Chain

MIB = 1 << 20
#: mkfs.xfs refuses volumes under 300 MB unless run by fstests
SMALL_OK = {**os.environ, "TEST_DIR": "/tmp", "TEST_DEV": "bf", "QA_CHECK_FS": "1"}
XFS_TOOLS = ("mkfs.xfs", "xfs_db", "xfs_repair", "xfs_logprint", "mount", "umount")


def run(*args: object, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def cli(*args: object) -> str:
    return run(sys.executable, "-m", "blockforensics.cli", *args)


def need_mount(tmp_path: Path) -> None:
    """Skip (fail in CI) unless loop mounts work here (root, loop devices)."""
    require_tools(*XFS_TOOLS)
    if os.geteuid() != 0:
        reason = "loop mounts need root"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def mounted(img: Path, where: Path, *options: str) -> Iterator[Path]:
    """``img`` loop-mounted on ``where`` (unmounted afterwards, whatever happens)."""
    where.mkdir(exist_ok=True)
    run("mount", "-o", ",".join(("loop", *options)), img, where)
    try:
        yield where
    finally:
        run("umount", where)


def mkfs(img: Path, size: int, *options: str) -> Path:
    with img.open("wb") as fh:
        fh.truncate(size)
    run("mkfs.xfs", "-q", "-f", *options, img, env=SMALL_OK)
    return img


def fill(root: Path, seed: int = 1) -> dict[str, bytes]:
    """Small files (local/inline), a big file of many extents (free space fragmented
    first), a directory of many entries (a node/btree directory), deleted files."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {"small.txt": b"hello from xfs\n", "empty": b""}
    # fragment the free space: many small files, every other one deleted once on disk
    (root / "frag").mkdir()
    for i in range(400):
        (root / "frag" / f"f{i:04d}").write_bytes(rng.bytes(8192))
    (root / "gone.bin").write_bytes(rng.bytes(MIB))
    os.sync()  # delayed allocation: written to disk, so deleting leaves stale data
    for i in range(0, 400, 2):
        (root / "frag" / f"f{i:04d}").unlink()
    (root / "gone.bin").unlink()
    files.update({f"frag/f{i:04d}": (root / "frag" / f"f{i:04d}").read_bytes()
                  for i in range(1, 400, 2)})
    files["big.bin"] = rng.bytes(3 * MIB)
    (root / "many").mkdir()
    for i in range(600):
        name = f"many/entry-with-a-long-name-{i:05d}.txt"
        files[name] = f"entry {i}\n".encode()
    for name, data in files.items():
        (root / name).write_bytes(data)
    os.symlink("small.txt", root / "link")
    # holes left at the end: enough free extents for a bnobt of two levels
    (root / "holes").mkdir()
    for i in range(1200):
        (root / "holes" / f"h{i:04d}").write_bytes(rng.bytes(4096))
    os.sync()
    for i in range(0, 1200, 2):
        (root / "holes" / f"h{i:04d}").unlink()
    files.update({f"holes/h{i:04d}": (root / "holes" / f"h{i:04d}").read_bytes()
                  for i in range(1, 1200, 2)})
    return files


def free_reference(img: Path | str) -> tuple[int, np.ndarray]:
    """``(agblocks, free)``: a flag per block of the volume, True where ``xfs_db``'s
    ``freesp -d`` lists a free extent but the AG free list (AGFL: reserved for
    btree growth, kept as allocated here) does not hold it."""
    sb = run("xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks agblocks agcount", img)
    values = dict(re.findall(r"(\w+) = (\d+)", sb))
    dblocks, agblocks, agcount = (int(values[k]) for k in ("dblocks", "agblocks", "agcount"))
    free = np.zeros(dblocks, dtype=bool)
    listing = run("xfs_db", "-r", "-c", "freesp -d", img)
    for agno, agbno, length in re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", listing, re.M):
        first = int(agno) * agblocks + int(agbno)
        free[first : first + int(length)] = True
    for ag in range(agcount):
        agf = dict(re.findall(r"(\w+) = (\d+)", run(
            "xfs_db", "-r", "-c", f"agf {ag}", "-c", "p flfirst fllast flcount", img)))
        slots = dict(re.findall(r"(\d+):(\d+)", run("xfs_db", "-r", "-c", f"agfl {ag}",
                                                    "-c", "p bno", img)))
        size = len(re.findall(r"\d+:(?:\d+|null)", run(
            "xfs_db", "-r", "-c", f"agfl {ag}", "-c", "p bno", img)))
        for k in range(int(agf["flcount"])):
            slot = str((int(agf["flfirst"]) + k) % size)
            free[ag * agblocks + int(slots[slot])] = False
    return agblocks, free


def protofile(tree: Path, out: Path) -> Path:
    """An ``mkfs.xfs -p`` prototype of the files under ``tree`` (for v4 volumes, which
    this kernel may no longer mount)."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(directory: Path, depth: int) -> None:
        for item in sorted(directory.iterdir()):
            pad = " " * depth
            if item.is_symlink():
                lines.append(f"{pad}{item.name} l--777 0 0 {os.readlink(item)}")
            elif item.is_dir():
                lines.append(f"{pad}{item.name} d--755 0 0")
                walk(item, depth + 1)
                lines.append(f"{pad}$")
            else:
                lines.append(f"{pad}{item.name} ---644 0 0 {item}")

    walk(tree, 1)
    lines.append("$")
    out.write_text("\n".join(lines) + "\n")
    return out


def make_filled(tmp_path: Path, *mkfs_options: str, size: int = 64 * MIB
                ) -> tuple[Path, dict[str, bytes]]:
    """An XFS volume holding :func:`fill`'s files: written through a loop mount, or
    (v4, ``crc=0``) put in by ``mkfs.xfs -p``."""
    if "crc=0" in mkfs_options:
        tree = tmp_path / "tree"
        tree.mkdir()
        files = fill(tree)
        proto = protofile(tree, tmp_path / "proto")
        return mkfs(tmp_path / "xfs.img", size, *mkfs_options, "-p", str(proto)), files
    img = mkfs(tmp_path / "xfs.img", size, *mkfs_options)
    with mounted(img, tmp_path / "mnt") as root:
        files = fill(root)
    return img, files


@pytest.mark.parametrize("options", [(), ("-m", "crc=0"), ("-b", "size=1024", "-d", "agcount=3")],
                         ids=["v5", "v4", "1k-3ag"])
def test_allocation_equals_xfs_db_free_space(tmp_path: Path, options: tuple[str, ...]) -> None:
    need_mount(tmp_path)
    img, _ = make_filled(tmp_path, *options)
    _, free = free_reference(img)
    allocated = filesystem_allocation(img)
    assert allocated.n_blocks == free.size
    assert np.array_equal(allocated.to_bools(), ~free)
    assert 0 < allocated.count() < allocated.n_blocks
    levels = [int(run("xfs_db", "-r", "-c", f"agf {ag}", "-c", "p bnolevel", img).split()[-1])
              for ag in range(3)]
    if "crc=0" not in options:  # written through a mount, holes punched
        assert max(levels) >= 2  # a node level above the leaves was walked
    found = survey(img)
    assert [r.filesystem for r in found.regions] == ["xfs"] and not found.regions[0].note
    with RawDisk(img) as disk:
        fs = XfsFileSystem(disk)
        assert fs.crc == ("crc=0" not in options)
    log = run("xfs_logprint", "-t", img)
    assert "<CLEAN>" in log


def test_backup_restores_a_clean_xfs_with_identical_files(tmp_path: Path) -> None:
    need_mount(tmp_path)
    img, files = make_filled(tmp_path)
    with RawDisk(img) as disk:
        nonzero = disk.read_blocks(0, disk.n_blocks).any(axis=1)
    allocated = survey(img, 4096).map.to_bools()
    out = cli("backup", img, tmp_path / "chain")
    assert "whole disk (xfs):" in out and "copying all" not in out
    with Chain.open(tmp_path / "chain") as chain:
        stored = chain.layout(0).supplied(0).to_bools()
    assert np.array_equal(stored, allocated & nonzero)
    assert stored.sum() < stored.size
    assert (~allocated & nonzero).any()  # stale data of the deleted files: not copied
    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    run("xfs_repair", "-n", restored)
    with mounted(restored, tmp_path / "back", "ro", "norecovery") as root:
        for name, data in files.items():
            assert (root / name).read_bytes() == data, name
        assert os.readlink(root / "link") == "small.txt"
        assert not (root / "gone.bin").exists()


def _bnobt_root(img: Path, ag: int) -> int:
    """The byte where AG ``ag``'s bnobt root block lies."""
    sb = dict(re.findall(r"(\w+) = (\d+)", run(
        "xfs_db", "-r", "-c", "sb 0", "-c", "p agblocks blocksize", img)))
    agf = dict(re.findall(r"(\w+) = (\d+)", run(
        "xfs_db", "-r", "-c", f"agf {ag}", "-c", "p bnoroot", img)))
    return (ag * int(sb["agblocks"]) + int(agf["bnoroot"])) * int(sb["blocksize"])


@pytest.mark.parametrize("options", [(), ("-m", "crc=0")], ids=["v5", "v4"])
def test_corrupt_bnobt_copies_the_volume_whole(tmp_path: Path, options: tuple[str, ...]) -> None:
    require_tools(*XFS_TOOLS)
    img = mkfs(tmp_path / "xfs.img", 64 * MIB, *options)
    at = _bnobt_root(img, 1)
    header = 56 if not options else 16
    with img.open("r+b") as fh:  # the first free extent's length, made absurd
        fh.seek(at + header + 4)
        fh.write((0x7FFFFFFF).to_bytes(4, "big"))
    found = survey(img)
    region = found.regions[0]
    assert region.filesystem == "xfs" and region.note
    assert ("CRC mismatch" in region.note) if not options else ("outside the AG" in region.note
                                                                 or "free blocks" in region.note)
    assert found.map.count() == found.map.n_blocks
    out = cli("backup", img, tmp_path / "chain")
    assert "copying all" in out


def test_dirty_log_copies_the_volume_whole(tmp_path: Path) -> None:
    need_mount(tmp_path)
    img = mkfs(tmp_path / "xfs.img", 64 * MIB)
    snap = tmp_path / "snap.img"
    with mounted(img, tmp_path / "mnt") as root:
        (root / "written-live.bin").write_bytes(os.urandom(300_000))
        os.sync()
        shutil.copyfile(img, snap)  # a crash-consistent copy: the log holds the transactions
    assert "<CLEAN>" not in run("xfs_logprint", "-t", snap)
    region = survey(snap).regions[0]
    assert region.filesystem == "xfs" and "log" in region.note
    assert survey(img).regions[0].note == ""  # unmounted since: clean


def test_corrupt_superblock_crc_is_a_note(tmp_path: Path) -> None:
    require_tools(*XFS_TOOLS)
    img = mkfs(tmp_path / "xfs.img", 64 * MIB)
    with img.open("r+b") as fh:
        fh.seek(0x90)  # sb_fdblocks, covered by the CRC
        fh.write(b"\x01")
    region = survey(img).regions[0]
    assert "superblock CRC mismatch" in region.note



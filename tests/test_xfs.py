"""XFS: the allocation map read from the free-space B+trees equals what ``xfs_db`` lists,
a backup stores only those blocks and restores a clean file system with every file
identical, damage copies the volume whole (with a note), a dirty log keeps whole the
AGs its recovery writes to, and the files are listed (through dissect.xfs) for diff,
timeline and extract.

Volumes are made by the real tools: ``mkfs.xfs`` (small volumes allowed by the
fstests variables), files written through a loop mount.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sample_disks
import test_lvm
from sample_disks import run
from support import assert_diff, loop_mounted, require_module, require_tools
from support import bf_ok as cli

from blockforensics import forensics
from blockforensics.allocation import filesystem_allocation, survey
from blockforensics.formats.raw import RawDisk
from blockforensics.fs import xfs as xfs_module
from blockforensics.fs.xfs import XfsFileSystem
from blockforensics.image.chain import Chain
from blockforensics.tsk import _read_allocated, list_entries

MIB = 1 << 20
#: mkfs.xfs refuses volumes under 300 MB unless run by fstests
SMALL_OK = {**os.environ, "TEST_DIR": "/tmp", "TEST_DEV": "bf", "QA_CHECK_FS": "1"}
XFS_TOOLS = ("mkfs.xfs", "xfs_db", "xfs_io", "xfs_repair", "xfs_logprint", "mount", "umount")


def need_mount(tmp_path: Path) -> None:
    """Skip (fail in CI) unless loop mounts work here (root, loop devices)."""
    require_tools(*XFS_TOOLS)
    if os.geteuid() != 0:
        reason = "loop mounts need root"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def mkfs(img: Path, size: int, *options: str) -> Path:
    with img.open("wb") as fh:
        fh.truncate(size)
    run("mkfs.xfs", "-q", "-f", *options, img, env=SMALL_OK)
    return img


def fill(root: Path, seed: int = 1, until_full: bool = True) -> dict[str, bytes]:
    """Small files (short, in the inode's extent list), a deleted file, free space
    fragmented (filled with 64 KiB files, ``until_full``: up to ENOSPC, every other
    one deleted) before big files are written (many extents each), a directory of
    many entries (a node directory), holes enough for a two-level bnobt, a symlink.
    Returns what should be read back, by path."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {"small.txt": b"hello from xfs\n", "empty": b""}
    (root / "gone.bin").write_bytes(rng.bytes(MIB))
    (root / "frag").mkdir()
    piece = rng.bytes(65536)
    count = 0
    while count < (100_000 if until_full else 200):
        name = root / "frag" / f"f{count:04d}"
        try:
            name.write_bytes(piece[count % 97 :] + piece[: count % 97])
        except OSError:  # full: that one is not kept
            name.unlink(missing_ok=True)
            break
        count += 1
    os.sync()  # delayed allocation: written to disk, so deleting leaves stale data
    for i in range(0, count, 2):
        (root / "frag" / f"f{i:04d}").unlink()
    (root / "gone.bin").unlink()
    files.update({f"frag/f{i:04d}": piece[i % 97 :] + piece[: i % 97]
                  for i in range(1, count, 2)})
    files["big.bin"] = rng.bytes(3 * MIB)
    (root / "many").mkdir()
    for i in range(600):
        name = f"many/entry-with-a-long-name-{i:05d}.txt"
        files[name] = f"entry {i}\n".encode()
    for name, data in files.items():
        (root / name).write_bytes(data)
    os.symlink("small.txt", root / "link")
    if until_full:  # on XFS itself: holes punched in big.bin, an unwritten tail
        os.sync()
        run("xfs_io", "-c", "fpunch 1m 256k", "-c", "fpunch 2m 64k", root / "big.bin")
        big = bytearray(files["big.bin"])
        big[MIB : MIB + 262144] = bytes(262144)
        big[2 * MIB : 2 * MIB + 65536] = bytes(65536)
        files["big.bin"] = bytes(big)
        files["prealloc.bin"] = rng.bytes(65536) + bytes(MIB - 65536)
        (root / "prealloc.bin").write_bytes(files["prealloc.bin"][:65536])
        os.sync()
        run("xfs_io", "-c", f"falloc 64k {MIB - 65536}", root / "prealloc.bin")
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
        files = fill(tree, until_full=False)
        proto = protofile(tree, tmp_path / "proto")
        return mkfs(tmp_path / "xfs.img", size, *mkfs_options, "-p", str(proto)), files
    img = mkfs(tmp_path / "xfs.img", size, *mkfs_options)
    with loop_mounted(img, tmp_path / "mnt", "allocsize=4k") as root:  # no large preallocation
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
    with loop_mounted(restored, tmp_path / "back", "ro", "norecovery") as root:
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


def logprint_ags(img: Path) -> set[int]:
    """The AGs of the buffers ``xfs_logprint -t`` finds logged in the active log."""
    with RawDisk(img) as disk:
        fs = XfsFileSystem(disk)
        ag_bytes = fs.sb.sb_agblocks * fs.block_size
    text = run("xfs_logprint", "-t", img)
    return {int(b, 16) * 512 // ag_bytes for b in re.findall(r"start blkno:0x([0-9a-f]+)", text)}


@pytest.mark.parametrize("window", [None, 64], ids=["whole-log", "around-the-head"])
def test_a_dirty_log_is_found_and_its_buffers_named(tmp_path: Path, window: int | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    need_mount(tmp_path)
    if window:  # a log larger than twice the window: bisection, then the blocks around
        monkeypatch.setattr(xfs_module, "LOG_WINDOW", window)
    img = mkfs(tmp_path / "xfs.img", 64 * MIB)
    snap = tmp_path / "snap.img"
    with loop_mounted(img, tmp_path / "mnt") as root:
        (root / "written-live.bin").write_bytes(os.urandom(300_000))
        os.sync()
        shutil.copyfile(img, snap)  # a crash-consistent copy: the log holds the transactions
    assert "<CLEAN>" not in run("xfs_logprint", "-t", snap)
    with RawDisk(snap) as disk:
        fs = XfsFileSystem(disk)
        assert fs.log_problem == xfs_module.LOG_DIRTY
        assert fs.logged_ags() == logprint_ags(snap) != set()
        log_start = fs.linear(fs.sb.sb_logstart) * fs.block_size
    assert survey(snap).regions[0].note == ""
    tail = int(re.search(r"log tail: (\d+)", run("xfs_logprint", "-t", snap)).group(1))
    torn = tmp_path / "torn.img"  # the first record to replay damaged: copied whole
    shutil.copyfile(snap, torn)
    with torn.open("r+b") as fh:
        fh.seek(log_start + tail * 512 + 0x10)  # its h_lsn
        fh.write(bytes(8))
    region = survey(torn).regions[0]
    assert "its dirty log has no record it can read" in region.note, region.note
    assert region.blocks == region.total
    assert survey(img).regions[0].note == ""  # unmounted since: clean
    with loop_mounted(img, tmp_path / "mnt") as root:  # mounted again, written, unmounted
        (root / "second.bin").write_bytes(os.urandom(200_000))
    logprint = run("xfs_logprint", "-t", img)
    assert "<CLEAN>" in logprint
    head = int(re.search(r"head: (\d+)", logprint).group(1))
    with RawDisk(img) as disk:
        fs = XfsFileSystem(disk)
        start = fs.linear(fs.sb.sb_logstart) * fs.block_size
        assert fs._log_head(start, fs.sb.sb_logblocks * fs.block_size // 512)[0] == head
        assert fs.log_problem == ""


def keeps_what_recovery_uses(snap: Path, tmp_path: Path) -> tuple[set[int], bool]:
    """Check the map of the dirty copy ``snap``: its logged AGs are those
    ``xfs_logprint`` names, it holds every block allocated on disk and every block in
    use after the kernel's recovery (a mount of a copy), and not all.  Returns the
    logged AGs and whether the free-space trees on disk alone would have lost blocks."""
    with RawDisk(snap) as disk:
        fs = XfsFileSystem(disk)
        logged = fs.logged_ags()
        assert logged == logprint_ags(snap)
        on_disk = np.ones(fs.n_units, dtype=bool)  # what the trees on disk alone say
        for ag in range(fs.sb.sb_agcount):
            for first, count in fs.free_extents(ag).tolist():
                at = ag * fs.sb.sb_agblocks + first
                on_disk[at : at + count] = False
    kept = filesystem_allocation(snap).to_bools()
    recovered = tmp_path / "recovered.img"
    shutil.copyfile(snap, recovered)
    with loop_mounted(recovered, tmp_path / "recovery"):  # the kernel replays the log
        pass
    in_use = filesystem_allocation(recovered).to_bools()
    assert not (in_use & ~kept).any() and not (on_disk & ~kept).any()
    assert kept.sum() < kept.size
    return logged, bool((in_use & ~on_disk).any())


@pytest.mark.slow
def test_a_dirty_log_keeps_every_ag_its_recovery_writes(tmp_path: Path) -> None:
    """A copy taken while mounted, after files were written, one deleted and both
    fsync'd since the log was last written back: the on-disk free-space trees alone
    would call free blocks recovery puts in use (the new file's); the map keeps every
    AG a logged buffer lies in whole (the AGs ``xfs_logprint`` names), the others from
    their trees, and holds every block the kernel's recovery leaves allocated.  The
    restored volume recovers to the same files."""
    need_mount(tmp_path)
    img = mkfs(tmp_path / "xfs.img", 128 * MIB, "-d", "agcount=8")
    snap = tmp_path / "snap.img"
    rng = np.random.default_rng(5)
    files = {f"{d}/base.bin": rng.bytes(3 * MIB) for d in "abcd"}
    with loop_mounted(img, tmp_path / "mnt") as root:
        for name, data in files.items():
            (root / name).parent.mkdir()
            (root / name).write_bytes(data)
        os.sync()
        run("xfs_freeze", "-f", root)  # the log written back and covered
        run("xfs_freeze", "-u", root)
        files["c/new.bin"] = rng.bytes(5 * MIB)
        with (root / "c/new.bin").open("wb") as fh:
            fh.write(files["c/new.bin"])
            fh.flush()
            os.fsync(fh.fileno())
        (root / "a/base.bin").unlink()
        del files["a/base.bin"]
        fd = os.open(root / "a", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        shutil.copyfile(img, snap)
    logged, lost = keeps_what_recovery_uses(snap, tmp_path)
    assert 0 < len(logged) < 8 and lost  # the trees on disk alone would lose blocks
    region = survey(snap).regions[0]
    assert region.filesystem == "xfs" and not region.note and region.blocks < region.total
    cli("backup", snap, tmp_path / "chain")
    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    with loop_mounted(restored, tmp_path / "mnt") as root:
        found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert found == set(files)
        for name, data in files.items():
            assert (root / name).read_bytes() == data, name
    run("xfs_repair", "-n", restored)


@pytest.mark.slow
def test_a_wrapped_dirty_log_is_read_from_its_tail(tmp_path: Path) -> None:
    """A small log (1368 blocks of 4 KiB) written up to near its end, then written back
    (a freeze: its tail moves to the head) and written on past its end: a copy whose
    active part wraps (tail after head) keeps every block in use after recovery."""
    need_mount(tmp_path)
    img = mkfs(tmp_path / "xfs.img", 96 * MIB, "-d", "agcount=6", "-l", "size=1368b")
    snap = tmp_path / "snap.img"
    blocks = 1368 * 4096 // 512
    frozen = False
    with loop_mounted(img, tmp_path / "mnt") as root:
        for d in range(6):
            (root / f"d{d}").mkdir()
        for step in range(200):
            for i in range(20):  # each fsync a log record or more
                with (root / f"d{step % 2 if frozen else step % 6}" / f"f{step}-{i}"
                      ).open("wb") as fh:
                    fh.write(os.urandom(3000 + i % 5 * 9000))
                    os.fsync(fh.fileno())
            tail, head = (int(v) for v in re.search(
                r"log tail: (\d+) head: (\d+)", run("xfs_logprint", "-t", img)).groups())
            if tail > head:
                shutil.copyfile(img, snap)
                break
            if not frozen and head > blocks - 1500:
                run("xfs_freeze", "-f", root)  # written back: the tail moves to the head
                run("xfs_freeze", "-u", root)
                frozen = True
        else:
            raise AssertionError("the log never wrapped")
    logged, _ = keeps_what_recovery_uses(snap, tmp_path)
    assert 0 < len(logged) < 6


def test_corrupt_superblock_crc_is_a_note(tmp_path: Path) -> None:
    require_tools(*XFS_TOOLS)
    img = mkfs(tmp_path / "xfs.img", 64 * MIB)
    with img.open("r+b") as fh:
        fh.seek(0x90)  # sb_fdblocks, covered by the CRC
        fh.write(b"\x01")
    region = survey(img).regions[0]
    assert "superblock CRC mismatch" in region.note




# ------------------------------------------------------------------ files
def assert_lists(listing_entries: dict, prefix: str, files: dict[str, bytes], disk,
                 punched: bool = True) -> None:
    """Every file written is listed under ``prefix`` with its bytes (read back from the
    entry's disk extents), the symlink with its target, the deleted ones not at all."""
    for name, data in files.items():
        entry = listing_entries[f"{prefix}/{name}"]
        assert entry.fs == "xfs" and entry.kind == "file" and entry.size == len(data), name
        if int(np.diff(entry.extents).sum()) == entry.size:  # no holes: the extents hold it
            assert entry.read(disk) == data, name
        found = _read_allocated(disk, f"{prefix}/{name}")  # as extract reads it
        assert found is not None and b"".join(found[1]) == data, name
    link = listing_entries[f"{prefix}/link"]
    assert link.kind == "symlink" and link.resident == b"small.txt"
    assert f"{prefix}/gone.bin" not in listing_entries
    assert f"{prefix}/frag/f0000" not in listing_entries
    assert f"{prefix}/frag/f0001" in listing_entries
    many = listing_entries[f"{prefix}/many"]
    assert many.type == "dir" and len(many.children) == 600
    if punched:  # holes punched: three extents, the holes left out
        big = listing_entries[f"{prefix}/big.bin"]
        assert len(big.extents) == 3
        assert int((big.extents[:, 1] - big.extents[:, 0]).sum()) == 3 * MIB - 262144 - 65536
        prealloc = listing_entries[f"{prefix}/prealloc.bin"]  # its unwritten extent left out
        assert prealloc.size == MIB and int(np.diff(prealloc.extents).sum()) == 65536


@pytest.mark.parametrize("options", [(), ("-m", "crc=0"), ("-b", "size=1024", "-d", "agcount=3")],
                         ids=["v5", "v4", "1k-3ag"])
def test_files_are_listed_with_their_inodes_and_extents(tmp_path: Path,
                                                        options: tuple[str, ...]) -> None:
    need_mount(tmp_path)
    require_module("dissect.xfs", "dissect.xfs")
    img, files = make_filled(tmp_path, *options)
    with RawDisk(img) as disk:
        listing = list_entries(disk)
        assert not listing.unreadable
        assert_lists(listing.entries, "", files, disk, punched="crc=0" not in options)
    if "crc=0" in options:
        return  # this kernel does not mount v4 volumes: the metadata is checked on v5
    with loop_mounted(img, tmp_path / "ro", "ro") as root:
        for path in ("small.txt", "big.bin", "many", "link", "frag/f0001", "empty"):
            entry, st = listing.entries[f"/{path}"], os.lstat(root / path)
            assert (entry.inode, entry.size, entry.mode, entry.uid, entry.gid, entry.nlink) \
                == (st.st_ino, st.st_size, st.st_mode & 0o7777, st.st_uid, st.st_gid,
                    st.st_nlink), path
            assert entry.mtime * 10**9 + entry.mtime_ns == st.st_mtime_ns, path
            assert entry.ctime * 10**9 + entry.ctime_ns == st.st_ctime_ns, path
            assert entry.crtime > 0 and entry.seq != 0


def test_second_point_diff_names_created_modified_deleted_renamed(tmp_path: Path) -> None:
    need_mount(tmp_path)
    require_module("dissect.xfs", "dissect.xfs")
    img, files = make_filled(tmp_path)
    cli("backup", img, tmp_path / "chain")
    with loop_mounted(img, tmp_path / "mnt") as root:
        (root / "new.txt").write_bytes(b"created at point 1\n")
        with (root / "small.txt").open("ab") as fh:
            fh.write(b"appended\n")
        (root / "frag" / "f0001").unlink()
        (root / "big.bin").rename(root / "big-renamed.bin")
        (root / "many" / "entry-with-a-long-name-00007.txt").write_bytes(b"rewritten\n")
    out = cli("backup", img, tmp_path / "chain")
    assert "whole disk (xfs):" in out and "copying all" not in out
    assert_diff(tmp_path / "chain", {"/new.txt": "created", "/small.txt": "modified",
                                     "/many/entry-with-a-long-name-00007.txt": "modified",
                                     "/frag/f0001": "deleted"},
                {"/big-renamed.bin": "/big.bin"}, ("/holes/", "/frag/f0003"))
    triage = json.loads(cli("triage", tmp_path / "chain", "--json"))["points"][1]["metrics"]
    assert (triage["created"], triage["deleted"], triage["renamed"]) >= (1, 1, 1), triage
    assert triage["lost_filesystems"] == 0
    timeline = cli("timeline", tmp_path / "chain", "--format", "jsonl")
    assert "/new.txt" in timeline and "/many/entry-with-a-long-name-00599.txt" in timeline
    extracted = tmp_path / "extracted.bin"
    cli("extract", tmp_path / "chain", "1", "/big-renamed.bin", extracted)
    assert extracted.read_bytes() == files["big.bin"]
    cli("extract", tmp_path / "chain", "0", "/prealloc.bin", extracted, "--force")
    assert extracted.read_bytes() == files["prealloc.bin"]  # the unwritten tail: zeros


def test_xfs_in_a_gpt_partition(tmp_path: Path) -> None:
    need_mount(tmp_path)
    require_tools("sgdisk")
    require_module("dissect.xfs", "dissect.xfs")
    volume, files = make_filled(tmp_path)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(66 * MIB + MIB)
    run("sgdisk", "-n", "1:2048:+64M", "-t", "1:8300", disk)
    sample_disks.place(disk, volume, MIB)
    found = survey(disk, 4096)
    part = next(r for r in found.regions if r.index == 1)
    assert part.filesystem == "xfs" and not part.note and part.blocks < part.total
    cli("backup", disk, tmp_path / "chain")
    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    run("xfs_repair", "-n", sample_disks.extract(restored, MIB, 64 * MIB, tmp_path / "p1.img"))
    checked = json.loads(cli("verify", tmp_path / "chain", "--fs", "--json"))["filesystems"]
    [part1] = [c for c in checked["checks"] if c["file"] == "part1.raw"]
    assert part1["filesystem"] == "xfs" and part1["ok"], part1  # xfs_repair -n over FUSE
    with RawDisk(disk) as d:
        listing = list_entries(d)
        assert_lists(listing.entries, "p1:", files, d)


@pytest.fixture
def lvm(tmp_path: Path) -> Iterator[test_lvm.Lvm]:
    """The LVM tools of tests/test_lvm.py (root: loop devices)."""
    require_tools(*test_lvm.LVM_TOOLS)
    need_mount(tmp_path)
    tools = test_lvm.Lvm(tmp_path)
    try:
        yield tools
    finally:
        tools.close()


def test_xfs_in_an_lvm_logical_volume(lvm: test_lvm.Lvm, tmp_path: Path) -> None:
    require_module("dissect.xfs", "dissect.xfs")
    disk = tmp_path / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(100 * MIB)
    subprocess.run(["sfdisk", "-q", str(disk)], input="start=2048, type=8e\n", text=True,
                   check=True, capture_output=True)
    device = lvm.attach(disk, test_lvm.PART_START, 99 * MIB)
    lvm("pvcreate", "-y", device)
    lvm("vgcreate", "-s", "4m", "vgx", device)
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "pad", "-L", "8m", "vgx")
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "root", "-L", "32m", "vgx")
    lvm("lvextend", "-L", "+32m", "vgx/root")
    segments = lvm.segments("vgx")["root"]
    pe_start = lvm.pe_start(device)
    volume, files = make_filled(tmp_path)
    test_lvm.place(disk, test_lvm.PART_START, pe_start, segments, volume)
    found = survey(disk, 4096)
    region = next(r for r in found.regions if r.name == "vgx/root")
    assert region.filesystem == "xfs" and not region.note and region.blocks < region.total
    out = cli("backup", disk, tmp_path / "chain")
    assert "logical volume vgx/root (xfs):" in out
    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    run("xfs_repair", "-n", test_lvm.extract_lv(restored, test_lvm.PART_START, pe_start,
                                               segments, tmp_path / "root.img"))
    with RawDisk(disk) as d:
        listing = list_entries(d)
        assert not listing.unreadable
        assert_lists(listing.entries, "vgx/root:", files, d)


def test_a_realtime_file_is_listed_without_content_and_named(tmp_path: Path) -> None:
    """This kernel mounts no realtime section and mkfs.xfs -p makes no realtime files:
    the flag is set on a file's inode with xfs_db (which reseals its CRC)."""
    need_mount(tmp_path)
    require_module("dissect.xfs", "dissect.xfs")
    img = mkfs(tmp_path / "xfs.img", 64 * MIB)
    with loop_mounted(img, tmp_path / "mnt") as root:
        (root / "rt.bin").write_bytes(os.urandom(100_000))
        (root / "plain.txt").write_bytes(b"plain\n")
        inode = os.stat(root / "rt.bin").st_ino
    run("xfs_db", "-x", "-c", f"inode {inode}", "-c", "write core.realtime 1", img)
    with RawDisk(img) as disk:
        listing = list_entries(disk)
        entry = listing.entries["/rt.bin"]
        assert entry.size == 100_000 and not len(entry.extents)
        assert "realtime device" in listing.unreadable[""] and "/rt.bin" in listing.unreadable[""]
        assert listing.entries["/plain.txt"].read(disk) == b"plain\n"
    cli("backup", img, tmp_path / "chain")
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "extract",
                           tmp_path / "chain", "0", "/rt.bin", tmp_path / "out"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "realtime device" in done.stderr


def test_an_unreadable_root_inode_is_a_note_not_a_traceback(tmp_path: Path) -> None:
    """dissect.xfs raises its own error for a root inode with a bad magic; the walk noted
    damage below the root but not at it, so ``diff`` and ``timeline`` ended in a
    traceback.  The point is now named unreadable, in a line."""
    require_tools(*XFS_TOOLS)
    require_module("dissect.xfs", "dissect.xfs")
    img = mkfs(tmp_path / "xfs.img", 64 * MIB)
    chain = tmp_path / "chain"
    cli("backup", img, chain)
    root = run("xfs_db", "-r", "-c", "sb 0", "-c", "p rootino", img).split("=")[1].strip()
    at = int(run("xfs_db", "-r", "-c", f"convert ino {root} byte", img).split()[0], 16)
    with img.open("r+b") as fh:
        fh.seek(at)  # di_magic, "IN"
        fh.write(b"\0\0")
    cli("backup", img, chain)
    out = cli("diff", chain, 0, 1, "--files")
    assert re.search(r"not read: point 1: /: the root directory could not be read \(.*"
                     r"magic", out)
    with Chain.open(chain) as opened:
        timeline = forensics.timeline(opened)
    assert timeline["not_read"].tolist()[0] == ""
    assert "the root directory could not be read" in timeline["not_read"].tolist()[1]
    for fmt in ("table", "bodyfile"):
        done = subprocess.run([sys.executable, "-m", "blockforensics", "timeline", chain,
                               "--format", fmt], capture_output=True, text=True)
        assert done.returncode == 0
        assert re.search(r"^note: not read: point 1: /: the root directory could not be "
                         r"read", done.stderr, re.M), done.stderr

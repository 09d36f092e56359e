"""Live copies whose newest changes are only in the file system's log (XFS) or log
tree (Btrfs): the listings
(``diff --files``, ``timeline``, ``triage``, ``extract``) show what the kernel's log
recovery makes of them, and the survey says so.

Volumes are made by the real kernel on loop devices: written, the log written back
(``xfs_freeze``; Btrfs: a sync commits the transaction), then files created,
appended, overwritten, renamed, linked and deleted and fsync'd, and the device
copied while mounted.  The oracle is the kernel itself: a copy of the
copied image mounted (the kernel replays the log) and walked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from sample_disks import run
from support import bf_ok as cli
from support import loop_mounted, require_module, require_tools
from test_journal import needing_recovery
from test_xfs import mkfs, need_mount

from blockforensics.allocation import survey
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.btrfs import BtrfsFileSystem
from blockforensics.fs.xfs import XfsFileSystem
from blockforensics.image.chain import Chain
from blockforensics.tsk import Listing, list_entries

MIB = 1 << 20


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_device(img: Path, out: Path) -> Path:
    """The loop device backing ``img`` read whole while it is mounted (a live copy),
    around the device's page cache (which the file system's own writes do not update:
    a second copy would read pages cached by the first)."""
    device = run("losetup", "-j", img).split(":")[0]
    run("dd", f"if={device}", f"of={out}", "bs=1M", "iflag=direct", "status=none")
    return out


def kernel_files(img: Path, where: Path, *options: str) -> dict[str, tuple[int, str]]:
    """``path -> (size, SHA-256)`` of every regular file of a copy of ``img`` as the
    kernel mounts it (log recovery, unless ``options`` say norecovery)."""
    copy = where.with_suffix(".img")
    shutil.copyfile(img, copy)
    try:
        with loop_mounted(copy, where, *options) as root:
            return {"/" + str(p.relative_to(root)): (p.stat().st_size,
                                                     hashlib.sha256(p.read_bytes()).hexdigest())
                    for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    finally:
        copy.unlink()


def run_status(*args: object) -> int:
    """A tool's exit status (its output dropped)."""
    return subprocess.run([str(a) for a in args], capture_output=True).returncode


def listed_files(listing: Listing, disk) -> dict[str, tuple[int, str]]:
    """The same from a listing, content read as ``diff`` reads it (its extents on the
    point's disk, or resident bytes)."""
    return {path: (e.size, hashlib.sha256(e.read(disk)).hexdigest())
            for path, e in listing.entries.items() if e.kind == "file"}


def xfs_live(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """``(clean, live)``: an XFS unmounted cleanly, then the same mounted, its log written
    back, changed and fsync'd, copied while mounted; and the fsync'd contents."""
    img = mkfs(tmp_path / "xfs.img", 48 * MIB)
    rng = np.random.default_rng(7)
    with loop_mounted(img, tmp_path / "mnt") as root:
        (root / "d").mkdir()
        (root / "d/base.bin").write_bytes(rng.bytes(100_000))
        (root / "keep.txt").write_bytes(b"kept, then renamed\n")
        for i in range(20):
            (root / f"d/old{i}").write_bytes(b"old %d\n" % i)
    clean = shutil.copyfile(img, tmp_path / "clean.img")
    fsynced = {"/d/new.bin": rng.bytes(300_000), "/tiny.txt": b"tiny\n"}
    with loop_mounted(img, tmp_path / "mnt") as root:
        run("xfs_freeze", "-f", root)  # the log written back and covered
        run("xfs_freeze", "-u", root)
        for path, data in fsynced.items():
            (root / path[1:]).write_bytes(data)
            fsync(root / path[1:])
        with (root / "d/base.bin").open("ab") as fh:
            fh.write(rng.bytes(5000))
            os.fsync(fh.fileno())
        (root / "keep.txt").rename(root / "d/renamed.txt")
        (root / "d/old3").unlink()
        for i in range(30):  # a directory grown out of the inode, every name logged
            (root / f"d/n{i:02d}").write_bytes(b"")
        fsync(root / "d")
        fsync(root)
        live = copy_device(img, tmp_path / "live.img")
    return clean, live, fsynced


def backed_up(tmp_path: Path, clean: Path, live: Path) -> tuple[Path, str, Listing, dict]:
    """A chain of ``clean`` then ``live`` backed up by the command: the chain, what the
    second backup printed, point 1's listing and its files (size and SHA-256 by path)."""
    chain = tmp_path / "chain"
    cli("backup", clean, chain)
    out = cli("backup", live, chain)
    with Chain.open(chain) as opened:
        disk = opened.disk(1)
        listing = list_entries(disk)
        return chain, out, listing, listed_files(listing, disk)


def test_xfs_live_copy_lists_the_recovered_state(tmp_path: Path) -> None:
    """A file fsync'd after the log was written back is listed with the size and
    content the kernel's recovery gives it (it is not in the volume's metadata in
    place: a mount without recovery misses it); renames, deletes and appends too;
    the survey and ``diff`` say the log was replayed, and ``diff`` names the changes."""
    need_mount(tmp_path)
    require_module("dissect.xfs", "dissect.xfs")
    clean, live, fsynced = xfs_live(tmp_path)
    recovered = kernel_files(live, tmp_path / "kernel")
    before = kernel_files(live, tmp_path / "norecovery", "ro", "norecovery")
    assert "/d/new.bin" not in before and "/d/renamed.txt" not in before  # only in the log
    for path, data in fsynced.items():
        assert recovered[path] == (len(data), hashlib.sha256(data).hexdigest())
    with RawDisk(live) as disk:
        assert XfsFileSystem(disk).log_problem  # dirty
    region = survey(live).regions[0]
    assert region.recovery.startswith("XFS log needs recovery (") and \
        region.recovery.endswith("listings show the recovered state"), region.recovery
    assert not region.note
    chain, out, listing, files = backed_up(tmp_path, clean, live)
    assert "listings show the recovered state" in out, out
    assert files == recovered
    assert listing.recovery[""] == region.recovery
    diff = json.loads(cli("diff", chain, "0", "1", "--files", "--json"))
    changes = {f["path"]: (f["change"], f.get("old_path")) for f in diff["files"]}
    assert changes["/d/new.bin"][0] == changes["/tiny.txt"][0] == "created", changes
    assert changes["/d/base.bin"][0] == "modified"
    assert changes["/d/old3"][0] == "deleted"
    assert changes["/d/renamed.txt"] == ("renamed", "/keep.txt")
    assert diff["recovery"] == [f"point 1: /: {region.recovery}"] and not diff["notes"]
    out = tmp_path / "new.bin"
    cli("extract", chain, "1", "/d/new.bin", out)
    assert out.read_bytes() == fsynced["/d/new.bin"]


def test_xfs_torn_log_lists_the_state_before_recovery(tmp_path: Path) -> None:
    """A log record that fails its CRC (a torn write): no replay, the listing is the one
    before recovery and says so, the survey copies the volume whole with the reason."""
    need_mount(tmp_path)
    require_module("dissect.xfs", "dissect.xfs")
    _, live, _ = xfs_live(tmp_path)
    with RawDisk(live) as disk:
        fs = XfsFileSystem(disk)
        state = fs._log
        place = state.start + (state.last + 1) * 512 + 20  # in the last record's data
    with live.open("r+b") as fh:
        fh.seek(place)
        byte = fh.read(1)
        fh.seek(place)
        fh.write(bytes([byte[0] ^ 0xFF]))
    region = survey(live).regions[0]
    assert "fails its CRC (torn or damaged)" in region.note and region.blocks == region.total
    before = kernel_files(live, tmp_path / "norecovery", "ro", "norecovery")
    with RawDisk(live) as disk:
        listing = list_entries(disk)
        assert listed_files(listing, disk) == before
    note = listing.recovery[""]
    assert note.startswith("XFS log needs recovery but cannot be replayed (") and \
        "fails its CRC" in note and note.endswith("listings show the pre-recovery state")


def btrfs_live(tmp_path: Path) -> tuple[Path, Path]:
    """``(clean, live)``: a Btrfs written and committed (then a clean copy), then files
    fsync'd in the next transaction (no commit: ``commit=300``) and the device copied
    while mounted: a part of a file overwritten, a directory of new files (inline and
    not), a hard link, two files deleted, a file truncated."""
    require_tools("mkfs.btrfs", "btrfs", "losetup")
    img = tmp_path / "btrfs.img"
    with img.open("wb") as fh:
        fh.truncate(128 * MIB)
    run("mkfs.btrfs", "-q", "-f", img)
    rng = np.random.default_rng(11)
    with loop_mounted(img, tmp_path / "mnt", "commit=300") as root:
        for d in "de":
            (root / d).mkdir()
        (root / "d/base.bin").write_bytes(rng.bytes(MIB))
        (root / "e/mid.bin").write_bytes(rng.bytes(200_000))
        for i in range(300):
            (root / f"d/old{i}").write_bytes(b"old %d\n" % i)
        os.sync()
        clean = copy_device(img, tmp_path / "clean.img")
        with (root / "e/mid.bin").open("r+b") as fh:
            fh.seek(40960)
            fh.write(rng.bytes(12288))
            os.fsync(fh.fileno())
        (root / "d/sub").mkdir()
        (root / "d/sub/a.txt").write_bytes(b"inline\n")
        (root / "d/sub/b.bin").write_bytes(rng.bytes(70_000))
        fsync(root / "d/sub/b.bin")
        fsync(root / "d/sub")
        os.link(root / "d/old7", root / "e/hard7")
        fsync(root / "e/hard7")
        (root / "d/old100").unlink()
        (root / "d/old200").unlink()
        fsync(root / "d")
        os.truncate(root / "d/base.bin", 500_000)
        fsync(root / "d/base.bin")
        live = copy_device(img, tmp_path / "live.img")
    assert int(run("btrfs", "inspect-internal", "dump-super", live)
               .split("\nlog_root\t")[1].split()[0]) != 0  # a log tree
    return clean, live


def test_btrfs_live_copy_lists_the_recovered_state(tmp_path: Path) -> None:
    """Files fsync'd after the last commit (only in the log tree) are listed with the
    sizes, contents and link counts the kernel's log replay gives them; the survey and
    ``diff`` say the log tree was replayed, and ``diff`` names the changes."""
    require_module("dissect.btrfs", "dissect.btrfs")
    need_mount(tmp_path)
    clean, live = btrfs_live(tmp_path)
    recovered = kernel_files(live, tmp_path / "kernel")
    before = kernel_files(live, tmp_path / "norecovery", "ro", "rescue=nologreplay")
    assert "/d/sub/b.bin" not in before and "/d/old100" in before  # only in the log
    assert recovered["/d/base.bin"][0] == 500_000 and "/d/old100" not in recovered
    region = survey(live).regions[0]  # the backup's survey does not replay (memory)
    assert region.recovery == ("Btrfs log tree (files fsync'd since the last commit): "
                               "copied whole; listings replay it"), region.recovery
    chain, out, listing, files = backed_up(tmp_path, clean, live)
    assert "listings replay it" in out, out
    assert files == recovered
    assert listing.entries["/e/hard7"].nlink == listing.entries["/d/old7"].nlink == 2
    diff = json.loads(cli("diff", chain, "0", "1", "--files", "--json"))
    changes = {f["path"]: f["change"] for f in diff["files"]}
    for path in ("/d/sub/a.txt", "/d/sub/b.bin", "/e/hard7"):
        assert changes[path] == "created", (path, changes)
    assert changes["/d/old100"] == changes["/d/old200"] == "deleted"
    assert changes["/e/mid.bin"] == changes["/d/base.bin"] == "modified"
    assert diff["recovery"] == [f"point 1: /: {listing.recovery['']}"] and not diff["notes"]
    assert listing.recovery[""].startswith("Btrfs log tree (") and \
        listing.recovery[""].endswith("listings show the recovered state"), listing.recovery


def test_btrfs_damaged_log_tree_lists_the_state_before_replay(tmp_path: Path) -> None:
    """A log tree node that fails its checksum: no replay, the listing is the one before
    it (the kernel's ``rescue=nologreplay`` mount) and says so."""
    require_module("dissect.btrfs", "dissect.btrfs")
    need_mount(tmp_path)
    _, live = btrfs_live(tmp_path)
    with RawDisk(live) as disk:
        fs = BtrfsFileSystem(disk)
        fs.read_chunk_tree()
        places = fs.physical(fs.sb.log_root, fs.nodesize)
    with live.open("r+b") as fh:
        for place in places:  # every copy of the log root tree's node
            fh.seek(place + 200)
            byte = fh.read(1)
            fh.seek(place + 200)
            fh.write(bytes([byte[0] ^ 0xFF]))
    before = kernel_files(live, tmp_path / "norecovery", "ro", "rescue=nologreplay")
    with RawDisk(live) as disk:
        listing = list_entries(disk)
        assert listed_files(listing, disk) == before
    note = listing.recovery[""]
    assert note.startswith("Btrfs log tree (files fsync'd since the last commit) cannot be "
                           "replayed (") and "checksum mismatch" in note
    assert note.endswith("listings show the pre-recovery state")
    assert "listings replay it" in survey(live).report()[1]  # the survey does not replay


def test_ext_journal_is_replayed_for_the_listing(tmp_path: Path) -> None:
    """An ext4 whose new file is committed to the journal only (its inode, directory
    entry and bitmap not in place: the kernel's ``ro,noload`` mount misses it) is listed
    with the file, its size and content, as after ``e2fsck -fy``; TSK reads the
    replayed blocks, and the survey says so."""
    need_mount(tmp_path)
    require_tools("mkfs.ext4", "debugfs", "dumpe2fs", "e2fsck")
    volume, _, content = needing_recovery(tmp_path, ["mkfs.ext4", "-b", "4096"], "jo -c -v 3")
    assert "/big.bin" not in kernel_files(volume, tmp_path / "noload", "ro", "noload")
    recovered = tmp_path / "recovered.img"
    shutil.copyfile(volume, recovered)
    assert run_status("e2fsck", "-fy", recovered) in (0, 1)  # 1: the journal replayed
    with RawDisk(recovered) as disk:
        expected = listed_files(list_entries(disk), disk)
    assert expected["/big.bin"] == (len(content), hashlib.sha256(content).hexdigest())
    with RawDisk(volume) as disk:
        listing = list_entries(disk)
        assert listed_files(listing, disk) == expected
    note = listing.recovery[""]
    assert note.startswith("ext journal needs recovery (") and \
        note.endswith("listings show the recovered state"), note
    assert survey(volume).regions[0].recovery == note

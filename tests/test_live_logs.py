"""Live copies whose newest changes are only in the file system's log: the listings
(``diff --files``, ``timeline``, ``triage``, ``extract``) show what the kernel's log
recovery makes of them, and the survey says so.

Volumes are made by the real kernel on loop devices: written, the log written back
(``xfs_freeze``), then files created, appended, renamed and deleted and fsync'd, and
the device copied while mounted.  The oracle is the kernel itself: a copy of the
copied image mounted (the kernel replays the log) and walked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from sample_disks import run
from support import bf_ok as cli
from support import require_module
from test_xfs import mkfs, mounted, need_mount

from blockforensics.allocation import survey
from blockforensics.formats.raw import RawDisk
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
    """The loop device backing ``img`` read whole while it is mounted (a live copy)."""
    device = run("losetup", "-j", img).split(":")[0]
    run("dd", f"if={device}", f"of={out}", "bs=1M", "status=none")
    return out


def kernel_files(img: Path, where: Path, *options: str) -> dict[str, tuple[int, str]]:
    """``path -> (size, SHA-256)`` of every regular file of a copy of ``img`` as the
    kernel mounts it (log recovery, unless ``options`` say norecovery)."""
    copy = where.with_suffix(".img")
    shutil.copyfile(img, copy)
    try:
        with mounted(copy, where, *options) as root:
            return {"/" + str(p.relative_to(root)): (p.stat().st_size,
                                                     hashlib.sha256(p.read_bytes()).hexdigest())
                    for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    finally:
        copy.unlink()


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
    with mounted(img, tmp_path / "mnt") as root:
        (root / "d").mkdir()
        (root / "d/base.bin").write_bytes(rng.bytes(100_000))
        (root / "keep.txt").write_bytes(b"kept, then renamed\n")
        for i in range(20):
            (root / f"d/old{i}").write_bytes(b"old %d\n" % i)
    clean = shutil.copyfile(img, tmp_path / "clean.img")
    fsynced = {"/d/new.bin": rng.bytes(300_000), "/tiny.txt": b"tiny\n"}
    with mounted(img, tmp_path / "mnt") as root:
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
    chain = tmp_path / "chain"
    cli("backup", clean, chain)
    out = cli("backup", live, chain)
    assert "listings show the recovered state" in out, out
    with Chain.open(chain) as opened:
        disk = opened.disk(1)
        listing = list_entries(disk)
        assert listed_files(listing, disk) == recovered
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

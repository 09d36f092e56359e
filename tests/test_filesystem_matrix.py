"""A few layouts of the red-team matrix (docs/FILESYSTEMS.md), end to end with the
kernel's own drivers (ntfs-3g for NTFS): made by mkfs with options off the common
path, filled through a mount (sparse file, hard link, symlink, xattr, files deleted after writing),
every unit the allocation map calls free zeroed in a copy — what a restore of a full
backup holds — then both mounted read-only: every file must read the same, and the
file system's own checker must find the copy clean."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sample_disks import MIB, file_tree, run, same_trees, sparse_file
from support import mounted_with, require_tools

from blockforensics.allocation import survey

UNIT = 512  # map granularity: the strictest a backup can use

LAYOUTS = {
    "ext4-meta_bg-1k": (["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "meta_bg,^resize_inode"],
                        ["e2fsck", "-fn"], 128),
    "ext4-bigalloc-64k": (["mkfs.ext4", "-q", "-F", "-O", "bigalloc", "-C", "65536"],
                          ["e2fsck", "-fn"], 256),
    "xfs-1k-rmapbt": (["mkfs.xfs", "-q", "-f", "-b", "size=1024", "-m", "reflink=1,rmapbt=1"],
                      ["xfs_repair", "-n"], 512),
    "btrfs-dup-4k-nodes": (["mkfs.btrfs", "-q", "-f", "-m", "dup", "-d", "dup", "--nodesize",
                            "4096"], ["btrfs", "check", "--readonly"], 512),
    # through The Sleuth Kit: $Bitmap at 64 KiB clusters (ntfs-3g, FUSE)
    "ntfs-64k-clusters": (["mkntfs", "-q", "-F", "-Q", "-c", "65536"], ["ntfsfix", "-n"], 256),
}


def _mount(layout: str, image: Path, *options: str) -> list[str]:
    """The command mounting ``image`` (the mount point follows)."""
    if layout.startswith("ntfs"):
        return ["ntfs-3g", *(["-o", ",".join(options)] if options else []), str(image)]
    return ["mount", "-o", ",".join(("loop", *options)), str(image)]


def _fill(root: Path) -> None:
    file_tree(root / "tree", seed=4, n_files=120, total=6 * MIB)
    rng = np.random.default_rng(4)
    with (root / "sparse.bin").open("wb") as fh:
        fh.seek(3 * MIB)
        fh.write(rng.bytes(10_000))
    os.link(root / "tree" / "F0005.BIN", root / "hardlink")
    os.symlink("x" * 200, root / "long-symlink")
    os.setxattr(root / "tree" / "F0010.BIN", "user.note", rng.bytes(500))
    for i in range(10):
        (root / f"gone{i}").write_bytes(rng.bytes(50_000))
    for i in range(0, 10, 2):
        (root / f"gone{i}").unlink()


def _zero_free(image: Path, out: Path) -> None:
    """``out``: ``image`` with every unit the allocation map calls free zeroed."""
    shutil.copyfile(image, out)
    starts, lengths = survey(image, UNIT).map.run_arrays()
    free_starts = np.r_[0, starts + lengths] * UNIT
    free_stops = np.minimum(np.r_[starts * UNIT, image.stat().st_size], image.stat().st_size)
    with out.open("r+b") as fh:
        for lo, hi in zip(free_starts.tolist(), free_stops.tolist()):
            if hi > lo:
                fh.seek(lo)
                fh.write(bytes(hi - lo))


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_file_survives_the_allocation_map(tmp_path: Path, layout: str) -> None:
    mkfs, fsck, mib = LAYOUTS[layout]
    require_tools(mkfs[0], fsck[0], "mount", "umount", "ntfs-3g")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image = sparse_file(tmp_path / "volume.img", mib * MIB)
    run(*mkfs, image)
    with mounted_with(_mount(layout, image), tmp_path / "m") as m:
        _fill(m)
    copy = tmp_path / "restored.img"
    _zero_free(image, copy)
    same_uuid = ("nouuid",) if "xfs" in layout else ()  # XFS refuses one UUID twice
    with mounted_with(_mount(layout, image, "ro"), tmp_path / "a") as a, \
            mounted_with(_mount(layout, copy, "ro", *same_uuid), tmp_path / "b") as b:
        assert same_trees(a, b) == []
        assert os.getxattr(a / "tree" / "F0010.BIN", "user.note") == \
            os.getxattr(b / "tree" / "F0010.BIN", "user.note")
        assert os.readlink(b / "long-symlink") == "x" * 200
    run(*fsck, copy)


@contextlib.contextmanager
def _loop_4k(image: Path, *options: str) -> Iterator[str]:
    """``image`` as a loop device of 4096-byte logical sectors (a 4Kn drive)."""
    device = run("losetup", "--find", "--show", "--sector-size", "4096", *options,
                 image).strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=True, timeout=60)


@pytest.mark.slow
def test_exfat_on_4k_sectors_survives_the_allocation_map(tmp_path: Path) -> None:
    """exFAT made on a 4Kn device (BytesPerSectorShift 12: clusters, FAT and bitmap
    counted in 4 KiB sectors), filled through exfat-fuse, files deleted: every file of
    the copy with the free units zeroed reads the same, and fsck.exfat finds it clean."""
    require_tools("losetup", "mkfs.exfat", "mount.exfat-fuse", "fsck.exfat", "umount")
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    image = sparse_file(tmp_path / "volume.img", 64 * MIB)
    with _loop_4k(image) as device:
        run("mkfs.exfat", device)
        with mounted_with(["mount.exfat-fuse", device], tmp_path / "m") as m:
            file_tree(m / "tree", seed=4, n_files=60, total=5 * MIB)
            rng = np.random.default_rng(4)
            for i in range(8):
                (m / f"gone{i}").write_bytes(rng.bytes(60_000))
            for i in range(0, 8, 2):
                (m / f"gone{i}").unlink()
    assert image.read_bytes()[108] == 12  # BytesPerSectorShift: 4096-byte sectors
    copy = tmp_path / "restored.img"
    _zero_free(image, copy)
    with _loop_4k(image, "-r") as a_dev, _loop_4k(copy, "-r") as b_dev, \
            mounted_with(["mount.exfat-fuse", "-o", "ro", a_dev], tmp_path / "a") as a, \
            mounted_with(["mount.exfat-fuse", "-o", "ro", b_dev], tmp_path / "b") as b:
        assert same_trees(a, b) == []
        assert len(list(a.rglob("*"))) > 60
    run("fsck.exfat", "-n", copy)

"""NTFS and exFAT read through The Sleuth Kit, and the ext4 layouts TSK reads poorly
(inline_data) or not at all (bigalloc) read by the project's own reader, each
against an independent reference, then backed up and restored: files identical
(``tsk_recover``, or the kernel's ext4 through a read-only loop mount) and the
file-system checker clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sample_disks import (
    MIB,
    GuestFill,
    file_tree,
    fill_in_guest,
    make_ext4,
    make_ntfs,
    run,
    same_trees,
    sparse_file,
    tsk_files,
    without,
)
from support import assert_diff, mounted_with, require_tools

from blockforensics.allocation import detect, filesystem_allocation, survey
from blockforensics.blockmap import BlockMap
from blockforensics.formats.raw import RawDisk
from blockforensics.tsk import list_entries

DELETED = ("PICS", "F0005.BIN")
CLI = [sys.executable, "-m", "blockforensics.cli"]


def blkls(img: Path, n_units: int) -> np.ndarray:
    lines = run("blkls", "-l", "-a", img).splitlines()
    flags = np.zeros(n_units, dtype=bool)
    flags[[int(line.split("|")[0]) for line in lines[3:]]] = True
    return flags


def backup_and_restore(img: Path, work: Path) -> tuple[dict, Path]:
    import json

    done = subprocess.run([*CLI, "backup", str(img), str(work / "chain"), "--json"],
                          capture_output=True, text=True, check=True)
    subprocess.run([*CLI, "restore", str(work / "chain"), str(work / "restored.img")],
                   capture_output=True, check=True)
    return json.loads(done.stdout), work / "restored.img"


def test_ntfs_matches_blkls_and_ntfscluster(tmp_path: Path) -> None:
    require_tools("mkntfs", "ntfs-3g", "ntfscluster", "ntfsfix", "blkls", "tsk_recover")
    tree = file_tree(tmp_path / "tree", 3, 80, 6 * MIB)
    img = make_ntfs(tmp_path / "ntfs.img", 64 * MIB, tree, DELETED)
    assert detect(img) == "ntfs"
    mine = filesystem_allocation(img)
    assert mine.block_size == 4096
    assert np.array_equal(mine.to_bools(), blkls(img, mine.n_blocks))
    counts = dict(re.findall(r"^(clusters of (?:user data|metadata))\s*:\s*(\d+)",
                             run("ntfscluster", "-f", "-i", img), re.M))
    assert mine.count() == sum(map(int, counts.values()))
    report, restored = backup_and_restore(img, tmp_path)
    [part] = report["partitions"]
    assert part["filesystem"] == "ntfs" and part["blocks"] == mine.count() + 1  # + backup boot
    assert "processed successfully" in run("ntfsfix", "-n", restored)
    expected = without(tree, DELETED, tmp_path / "expected")
    assert same_trees(expected, tsk_files(restored, tmp_path / "files")) == []


@pytest.mark.slow
def test_exfat_matches_blkls(tmp_path: Path) -> None:
    require_tools("mkfs.exfat", "fsck.exfat", "qemu-system-x86_64", "busybox", "cpio", "blkls",
                  "tsk_recover")
    tree = file_tree(tmp_path / "tree", 4, 90, 8 * MIB)
    img = sparse_file(tmp_path / "exfat.img", 96 * MIB)
    run("mkfs.exfat", img)
    fill_in_guest([GuestFill(img, "exfat", tree, DELETED)], tmp_path)
    assert detect(img) == "exfat"
    mine = filesystem_allocation(img)
    assert np.array_equal(mine.to_bools(), blkls(img, mine.n_blocks))
    report, restored = backup_and_restore(img, tmp_path)
    assert report["partitions"][0]["filesystem"] == "exfat"
    assert report["blocks"] < report["n_blocks"] // 2
    run("fsck.exfat", "-n", restored)
    expected = without(tree, DELETED, tmp_path / "expected")
    differ = same_trees(expected, tsk_files(restored, tmp_path / "files"))
    assert [d for d in differ if not d.startswith("$")] == []  # TSK's $ALLOC_BITMAP …


def dumpe2fs_allocated(img: Path, n_units: int, unit: int) -> np.ndarray:
    out = run("dumpe2fs", img)
    block = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    allocated = np.ones(n_units, dtype=bool)
    for ranges in re.findall(r"^  Free blocks: (.*)$", out, re.M):
        for part in filter(None, (p.strip() for p in ranges.split(","))):
            first, _, last = part.partition("-")
            allocated[int(first) * block // unit : int(last or first) * block // unit + 1] = False
    return allocated


@pytest.mark.parametrize("options", [("-O", "inline_data"),
                                     ("-O", "bigalloc", "-C", "16384")])
def test_ext4_inline_data_and_bigalloc(tmp_path: Path, options: tuple[str, ...]) -> None:
    require_tools("mkfs.ext4", "debugfs", "dumpe2fs", "e2fsck", "mount")
    tree = file_tree(tmp_path / "tree", 5, 120, 4 * MIB)  # many small files: inline data
    img = make_ext4(tmp_path / "ext4.img", 64 * MIB, tree, ("PICS/F0003.BIN", "F0005.BIN"),
                    ("-b", "4096", *options))
    mine = filesystem_allocation(img)
    assert np.array_equal(mine.to_bools(),
                          dumpe2fs_allocated(img, mine.n_blocks, mine.block_size))
    if "inline_data" in options:
        assert np.array_equal(mine.to_bools(), blkls(img, mine.n_blocks))
    report, restored = backup_and_restore(img, tmp_path)
    assert report["partitions"][0]["filesystem"] == "ext4"
    assert report["partitions"][0]["blocks"] == BlockMap.from_bools(
        mine.to_bools(), mine.block_size).rescale(4096).count()
    run("e2fsck", "-fn", restored)
    expected = without(tree, ("PICS/F0003.BIN", "F0005.BIN"), tmp_path / "expected")
    mountpoint = tmp_path / "mnt"  # the kernel's ext4 (debugfs rdump mangles inline data)
    mountpoint.mkdir()
    run("mount", "-o", "loop,ro", restored, mountpoint)
    try:
        assert sorted(same_trees(expected, mountpoint)) == ["lost+found"]
    finally:
        run("umount", mountpoint)
    assert survey(img, 4096).regions[0].note == ""


#: cluster sizes the other tests do not use, on images of a size that is not a
#: whole number of clusters
CLUSTER_SIZES = {
    "ntfs-c1024": ["mkntfs", "-F", "-Q", "-q", "-c", "1024"],
    "ntfs-c65536": ["mkntfs", "-F", "-Q", "-q", "-c", "65536"],
    "exfat-c128K": ["mkfs.exfat", "-c", "128K"],
    "exfat-pack-bitmap": ["mkfs.exfat", "--pack-bitmap"],
}


@pytest.mark.parametrize("case", list(CLUSTER_SIZES))
def test_cluster_sizes_match_blkls_and_survive_a_backup(tmp_path: Path, case: str) -> None:
    """Our map is TSK's (``blkls -a``), and the restored image has every allocated
    unit's bytes and (NTFS, written by ntfscp) every file's (``icat``)."""
    mkfs = CLUSTER_SIZES[case]
    require_tools(mkfs[0], "ntfscp", "blkls", "fls", "icat")
    img = sparse_file(tmp_path / "vol.img", 64 * MIB + 7 * 512)
    run(*mkfs, img)
    rng = np.random.default_rng(3)
    for i, size in enumerate((1, 700, 70_000, 1_500_000) if case.startswith("ntfs") else ()):
        src = tmp_path / f"f{i}.bin"
        src.write_bytes(rng.bytes(size))
        run("ntfscp", "-f", img, src, src.name)
    mine = filesystem_allocation(img)
    assert np.array_equal(mine.to_bools(), blkls(img, mine.n_blocks))
    _, restored = backup_and_restore(img, tmp_path)
    used = mine.n_blocks * mine.block_size
    before, after = (np.frombuffer(p.read_bytes()[:used], np.uint8).reshape(mine.n_blocks, -1)
                     for p in (img, restored))
    assert np.array_equal(before[mine.to_bools()], after[mine.to_bools()])
    files = re.findall(r"^r/r ([\d-]+):\t(f\d\.bin)$", run("fls", "-r", img), re.M)
    assert len(files) == (4 if case.startswith("ntfs") else 0)
    for inode, name in files:
        expected = (tmp_path / name).read_bytes()
        assert subprocess.run(["icat", str(restored), inode], capture_output=True,
                              check=True).stdout == expected, name


def test_ext4_meta_bg_past_the_first_meta_group_is_listed_by_the_ext_reader(
        tmp_path: Path) -> None:
    """TSK 4.11 looks for every ext group descriptor after the superblock; with
    ``meta_bg`` those of the second meta group on are elsewhere, so the inodes of those
    groups were read from the wrong tables: directories the kernel put there came out
    with no type and their files were silently missing from listings and diffs.  Such
    a volume is listed by the project's ext reader: every file, with its bytes."""
    require_tools("mkfs.ext4", "fls", "mount", "umount")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    volume = sparse_file(tmp_path / "volume.img", 512 * MIB)  # 64 groups, 16 per meta group
    run("mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "meta_bg,^resize_inode", volume)
    contents = {f"/d{i}/f.bin": bytes([i]) * (3000 + i) for i in range(6)}
    with mounted_with(["mount", "-o", "loop", str(volume)], tmp_path / "m") as m:
        for path, data in contents.items():  # the kernel spreads top-level directories
            (m / path[1:]).parent.mkdir()
            (m / path[1:]).write_bytes(data)
    assert "d/-" in run("fls", volume)  # TSK's reading: a directory of unknown type
    with RawDisk(volume) as disk:
        listing = list_entries(disk)
        assert not listing.unreadable
        assert {path: listing.entries[path].read(disk) for path in contents} == contents


def test_ext_reader_lists_what_the_sleuth_kit_lists(tmp_path: Path) -> None:
    """On a volume TSK reads right, the ext reader's rows are TSK's: names, inodes,
    sizes, modes, owners, times, links, content (inline data, fast symlinks) and the
    disk bytes of every file (TSK splits runs at indirect blocks: compared merged)."""
    from functools import partial

    from blockforensics.extfiles import ExtLister
    from blockforensics.tsk import ChainImgInfo, TskLister, _shifted, open_fs

    require_tools("mkfs.ext4")
    tree = file_tree(tmp_path / "tree", 7, 150, 3 * MIB)
    (tree / "DOCS" / "link").symlink_to("F0001.BIN")
    img = make_ext4(tmp_path / "ext4.img", 64 * MIB, tree, ("F0005.BIN",),
                    ("-O", "inline_data", "-I", "512"))
    with RawDisk(img) as disk:
        theirs: dict = {}
        mine: dict = {}
        TskLister(open_fs(ChainImgInfo(disk), 0), partial(_shifted, 0), disk, 0).walk("/", theirs)
        assert ExtLister(disk, 0, partial(_shifted, 0)).walk("/", mine) == []
        assert mine.keys() == theirs.keys() and len(mine) > 150

        def merged(runs: np.ndarray) -> list[list[int]]:
            out: list[list[int]] = []
            for start, stop in runs.tolist():
                if out and out[-1][1] == start:
                    out[-1][1] = stop
                else:
                    out.append([start, stop])
            return out

        for path, entry in theirs.items():
            other = mine[path]
            for name in ("type", "kind", "inode", "size", "mode", "uid", "gid", "mtime",
                         "atime", "ctime", "crtime", "mtime_ns", "nlink", "children"):
                assert getattr(other, name) == getattr(entry, name), (path, name)
            assert merged(other.extents) == merged(entry.extents), path
            assert other.read(disk) == entry.read(disk), path




def test_ext4_bigalloc_diff_names_the_changed_files(tmp_path: Path) -> None:
    """TSK does not open ext4 with bigalloc: a diff of two points named no file (only
    "not read").  The ext reader lists it: the created, modified, deleted and renamed
    files are named (changes made by debugfs, e2fsprogs' own writer)."""
    require_tools("mkfs.ext4", "debugfs")
    tree = file_tree(tmp_path / "tree", 9, 60, 2 * MIB)
    img = make_ext4(tmp_path / "ext4.img", 64 * MIB, tree, (),
                    ("-O", "bigalloc", "-C", "16384"))
    chain = tmp_path / "chain"
    subprocess.run([*CLI, "backup", str(img), str(chain)], check=True, capture_output=True)
    (tmp_path / "new.bin").write_bytes(np.random.default_rng(1).bytes(50_000))
    run("debugfs", "-w", "-f", "-", img, input="\n".join([
        f"write {tmp_path / 'new.bin'} new.bin",
        "rm F0000.BIN",
        f"rm DOCS/F0001.BIN\nwrite {tmp_path / 'new.bin'} DOCS/F0001.BIN",
        "ln PICS/F0003.BIN PICS/moved.bin\nunlink PICS/F0003.BIN", ""]))
    subprocess.run([*CLI, "backup", str(img), str(chain)], check=True, capture_output=True)
    assert_diff(chain, {"/new.bin": "created", "/F0000.BIN": "deleted",
                        "/DOCS/F0001.BIN": "modified"}, {"/PICS/moved.bin": "/PICS/F0003.BIN"},
                untouched=("/DATA",))


def test_exfat_with_two_fats_is_copied_whole(tmp_path: Path) -> None:
    """TexFAT (``NumberOfFats`` 2) keeps a second FAT and allocation bitmap, the active
    one named by ``VolumeFlags``: the first bitmap TSK lists may be the stale one, so
    the volume is copied whole (mkfs.exfat makes one FAT: the count patched in, with
    the boot region's checksum sector left as it was)."""
    require_tools("mkfs.exfat")
    img = sparse_file(tmp_path / "exfat.img", 32 * MIB)
    run("mkfs.exfat", img)
    assert survey(img, 4096).regions[0].note == ""
    with img.open("r+b") as fh:
        fh.seek(0x6E)
        fh.write(b"\x02")
    found = survey(img, 4096)
    [region] = found.regions
    assert "2 FATs and allocation bitmaps (TexFAT)" in region.note, region.note
    assert found.map.count() == found.map.n_blocks

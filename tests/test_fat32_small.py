"""FAT32 volumes of fewer than 65,525 clusters: read as FAT32, as Linux and Windows read them.

``mkfs.fat -F 32`` makes them on small files (its defaults on 32 MiB; ``-s 8``
on 128-256 MiB; ``-s 64``).  A reader deciding the type by cluster count alone
takes them for FAT16 and leaves allocated clusters out of the backup.  The
volumes are filled by Linux's vfat driver in a QEMU guest (mtools 4.0.32 cannot
write them), and checked against The Sleuth Kit told the type (``-f fat32``;
it too guesses from the count otherwise): the allocation map equals ``blkls``,
the restore is ``fsck.fat -n`` clean and every file reads back identical
(``tsk_recover``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sample_disks import (
    MIB,
    GuestFill,
    fat_clean,
    file_tree,
    fill_in_guest,
    run,
    same_trees,
    sparse_file,
    tsk_files,
    without,
)
from support import require_tools

from blockforensics.allocation import detect, filesystem_allocation, open_filesystem
from blockforensics.blockmap import BlockMap
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.fat import MAX_FAT16_CLUSTERS, FatFileSystem
from blockforensics.image.chain import Chain

SECTOR = 512
#: name: (image size, mkfs.fat options, files, bytes of files)
LAYOUTS = {
    "32M-defaults": (32 * MIB, ["-F", "32"], 160, 12 * MIB),
    "128M-s8": (128 * MIB, ["-F", "32", "-s", "8"], 220, 24 * MIB),
    "256M-s8": (256 * MIB, ["-F", "32", "-s", "8"], 230, 32 * MIB),
    "256M-s64": (256 * MIB, ["-F", "32", "-s", "64"], 230, 32 * MIB),
}
DELETED = ("DOCS/OLD", "F0010.BIN", "PICS/F0013.BIN")


def tsk_allocated(img: Path, n_sectors: int) -> np.ndarray:
    """Sectors ``blkls -f fat32 -l -a`` lists as allocated."""
    lines = run("blkls", "-f", "fat32", "-l", "-a", img).splitlines()
    assert lines[2] == "addr|alloc"
    flags = np.zeros(n_sectors, dtype=bool)
    flags[[int(line.split("|")[0]) for line in lines[3:]]] = True
    return flags


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each layout, filled by Linux: name -> (image, the tree it should hold)."""
    require_tools("mkfs.fat", "qemu-system-x86_64", "busybox", "cpio", "blkls", "tsk_recover")
    work = tmp_path_factory.mktemp("fat32-small")
    jobs, built = [], {}
    for seed, (name, (size, options, n_files, total)) in enumerate(LAYOUTS.items()):
        img = sparse_file(work / f"{name}.img", size)
        run("mkfs.fat", *options, img)
        tree = file_tree(work / f"{name}-tree", seed, n_files, total)
        jobs.append(GuestFill(img, "vfat", tree, DELETED))
        built[name] = (img, without(tree, DELETED, work / f"{name}-expected"))
    fill_in_guest(jobs, work)
    return built


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_small_fat32_backup_keeps_every_file(name: str, volumes, tmp_path: Path) -> None:
    img, expected = volumes[name]
    with RawDisk(img) as disk:
        fs = open_filesystem(disk)
        assert isinstance(fs, FatFileSystem)
        assert fs.kind == "fat32" and fs.n_clusters < MAX_FAT16_CLUSTERS  # the layout at issue
    assert detect(img) == "fat32"
    mine = filesystem_allocation(img)
    reference = tsk_allocated(img, mine.n_blocks)
    assert np.array_equal(mine.to_bools(), reference)
    assert same_trees(expected, tsk_files(img, tmp_path / "original", "fat32")) == []

    out = subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup", str(img),
                          str(tmp_path / "chain"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    [part] = report["partitions"]
    assert report["table"] == "none" and part["filesystem"] == "fat32" and not part["all_blocks"]
    allocated = BlockMap.from_bools(reference, SECTOR).rescale(4096)
    assert part["blocks"] == allocated.count() < part["total_blocks"]
    with Chain.open(tmp_path / "chain") as chain:
        stored = chain.layout(0).supplied(0).to_bools()
    assert not (stored & ~allocated.to_bools()).any()  # only allocated blocks are stored

    restored = tmp_path / "restored.img"
    run(sys.executable, "-m", "blockforensics.cli", "restore", tmp_path / "chain", restored)
    fat_clean(restored)
    files = tsk_files(restored, tmp_path / "restored", "fat32")
    assert same_trees(expected, files) == []
    shutil.rmtree(files)

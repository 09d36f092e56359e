"""Btrfs: the allocation map read from the extent tree equals the one built from
``btrfs inspect-internal dump-tree`` (extent items mapped through the chunks), a
backup stores only those blocks and restores a volume ``btrfs check`` finds clean
with every file identical, and damage or a RAID volume copies the volume whole
(with a note).

Volumes are made by the real tools: ``mkfs.btrfs --rootdir`` (no mount needed),
and, where the kernel has Btrfs and loop mounts work, files written, deleted and
rewritten through a loop mount.
"""

from __future__ import annotations

import os
import re
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
from blockforensics.fs.btrfs import BtrfsFileSystem
from blockforensics.image.chain import Chain

MIB = 1 << 20
SECTOR = 4096
TOOLS = ("mkfs.btrfs", "btrfs")


def run(*args: object, check: bool = True) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert not check or done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout + done.stderr


def cli(*args: object) -> str:
    return run(sys.executable, "-m", "blockforensics.cli", *args)


def can_mount() -> bool:
    """Whether Btrfs loop mounts work here (root, a kernel with Btrfs)."""
    return os.geteuid() == 0 and "btrfs" in Path("/proc/filesystems").read_text()


@contextmanager
def mounted(img: Path, where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    run("mount", "-o", "loop", img, where)
    try:
        yield where
    finally:
        run("umount", where)


def content(seed: int = 1) -> dict[str, bytes]:
    """Files by path: inline (small), empty, one of many extents' worth, a directory
    of many entries, compressible text."""
    rng = np.random.default_rng(seed)
    files = {"small.txt": b"hello from btrfs\n", "empty": b"",
             "big.bin": rng.bytes(3 * MIB + 1234), "text.txt": b"words and words\n" * 20000}
    for i in range(300):
        files[f"many/entry-{i:04d}.txt"] = f"entry {i}\n".encode() * (i % 7 + 1)
    for i in range(40):
        files[f"mid/m{i:02d}.bin"] = rng.bytes(20000 + 4096 * i)
    return files


def write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def make(tmp_path: Path, metadata: str, size: int = 256 * MIB, *,
         mount: bool = False) -> tuple[Path, dict[str, bytes]]:
    """A volume of ``size`` bytes with files (through ``--rootdir``, or written through a
    loop mount with some deleted — their stale data left in free space)."""
    require_tools(*TOOLS)
    img = tmp_path / f"btrfs-{metadata}.img"
    with img.open("wb") as fh:
        fh.truncate(size)
    files = content()
    if not mount:
        tree = tmp_path / "tree"
        write(tree, files)
        run("mkfs.btrfs", "-q", "-f", "-m", metadata, "-d", "single", "--rootdir", tree, img)
        return img, files
    run("mkfs.btrfs", "-q", "-f", "-m", metadata, "-d", "single", img)
    with mounted(img, tmp_path / "mnt") as root:
        write(root, files)
        (root / "gone.bin").write_bytes(os.urandom(2 * MIB))
        os.sync()
        (root / "gone.bin").unlink()
        for i in range(0, 40, 2):
            (root / f"mid/m{i:02d}.bin").unlink()
            del files[f"mid/m{i:02d}.bin"]
        os.sync()
    return img, files


def expected_allocation(img: Path) -> np.ndarray:
    """A flag per 4 KiB sector of ``img``: what ``dump-tree`` says is allocated — every
    EXTENT_ITEM and METADATA_ITEM mapped through the chunk tree's chunks (every stripe),
    the SYSTEM chunks whole and the superblock copies inside the device."""
    chunks = []  # (logical, length, type, [physical offsets])
    text = run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", img)
    for m in re.finditer(r"CHUNK_ITEM (\d+)\) .*?\n\s+length (\d+) owner \d+ stripe_len \d+ "
                         r"type (\S+)\n(.*?)(?=\n\titem|\Z)", text, re.S):
        stripes = [int(s) for s in re.findall(r"stripe \d+ devid \d+ offset (\d+)", m.group(4))]
        chunks.append((int(m.group(1)), int(m.group(2)), m.group(3), stripes))
    assert chunks
    nodesize = int(re.search(r"nodesize\s+(\d+)", run(
        "btrfs", "inspect-internal", "dump-super", img)).group(1))
    size = img.stat().st_size
    flags = np.zeros(size // SECTOR, dtype=bool)

    def mark(start: int, length: int) -> None:
        flags[start // SECTOR : -(-(start + length) // SECTOR)] = True

    extents = run("btrfs", "inspect-internal", "dump-tree", "-t", "extent", img)
    items = re.findall(r"key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)", extents)
    assert items
    for start, kind, offset in items:
        logical, length = int(start), int(offset) if kind == "EXTENT_ITEM" else nodesize
        chunk = next(c for c in chunks if c[0] <= logical < c[0] + c[1])
        for stripe in chunk[3]:
            mark(stripe + logical - chunk[0], length)
    for _, length, kind, stripes in chunks:
        if kind.startswith("SYSTEM"):
            for stripe in stripes:
                mark(stripe, length)
    for mirror in (64 << 10, 64 << 20, 256 << 30):
        if mirror + 4096 <= size:
            mark(mirror, 4096)
    return flags


@pytest.mark.parametrize("metadata,mount", [("dup", False), ("single", False),
                                            ("dup", True), ("single", True)],
                         ids=["dup-rootdir", "single-rootdir", "dup-mounted", "single-mounted"])
def test_allocation_equals_dump_tree(tmp_path: Path, metadata: str, mount: bool) -> None:
    if mount and not can_mount():
        require_tools("mount")
        pytest.skip("Btrfs loop mounts need root and a kernel with Btrfs")
    img, _ = make(tmp_path, metadata, mount=mount)
    allocated = filesystem_allocation(img)
    assert allocated.block_size == SECTOR
    assert np.array_equal(allocated.to_bools(), expected_allocation(img))
    assert 0 < allocated.count() < allocated.n_blocks // 2
    found = survey(img)
    assert [r.filesystem for r in found.regions] == ["btrfs"] and not found.regions[0].note
    with RawDisk(img) as disk:
        fs = BtrfsFileSystem(disk)
        fs.read_chunk_tree()
        profiles = {c.flags & 0x7: len(c.stripes) for c in fs._chunks}
        assert profiles[0x4] == (2 if metadata == "dup" else 1)  # METADATA chunks
        assert profiles[0x1] == 1  # DATA single


def test_backup_restores_a_clean_btrfs_with_identical_files(tmp_path: Path) -> None:
    mount = can_mount()
    img, files = make(tmp_path, "dup", mount=mount)
    with RawDisk(img) as disk:
        nonzero = disk.read_blocks(0, disk.n_blocks).any(axis=1)
    allocated = survey(img, SECTOR).map.to_bools()
    out = cli("backup", img, tmp_path / "chain")
    assert "whole disk (btrfs):" in out and "copying all" not in out
    with Chain.open(tmp_path / "chain") as chain:
        stored = chain.layout(0).supplied(0).to_bools()
    assert np.array_equal(stored, allocated & nonzero)
    assert stored.sum() < stored.size // 2
    if mount:
        assert (~allocated & nonzero).any()  # stale data of the deleted files: not copied
    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    run("btrfs", "check", "--readonly", restored)
    back = tmp_path / "back"
    back.mkdir()
    run("btrfs", "restore", restored, back)
    found = {str(p.relative_to(back)) for p in back.rglob("*") if p.is_file()}
    assert found == set(files)
    for name, data in files.items():
        assert (back / name).read_bytes() == data, name


def _extent_root(img: Path) -> int:
    """The physical byte where the extent tree's root node (first copy) lies."""
    roots = run("btrfs", "inspect-internal", "dump-tree", "-t", "root", img)
    logical = int(re.search(r"\(EXTENT_TREE ROOT_ITEM 0\).*?\n.*?bytenr (\d+)", roots,
                            re.S).group(1))
    text = run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", img)
    for m in re.finditer(r"CHUNK_ITEM (\d+)\) .*?\n\s+length (\d+).*?stripe 0 devid \d+ "
                         r"offset (\d+)", text, re.S):
        start, length, physical = (int(g) for g in m.groups())
        if start <= logical < start + length:
            return physical + logical - start
    raise AssertionError("extent tree root in no chunk")


@pytest.mark.parametrize("metadata", ["dup", "single"])
def test_corrupt_extent_tree_copies_the_volume_whole(tmp_path: Path, metadata: str) -> None:
    img, _ = make(tmp_path, metadata, 128 * MIB)
    at = _extent_root(img)
    with img.open("r+b") as fh:  # a byte inside the node's items, flipped
        fh.seek(at + 0x200)
        byte = fh.read(1)[0]
        fh.seek(at + 0x200)
        fh.write(bytes([byte ^ 0x5A]))
    found = survey(img)
    region = found.regions[0]
    assert region.filesystem == "btrfs" and "checksum mismatch" in region.note
    assert found.map.count() == found.map.n_blocks
    out = cli("backup", img, tmp_path / "chain")
    assert "copying all" in out


def test_raid1_over_two_devices_copies_the_volume_whole(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    devices = [tmp_path / "a.img", tmp_path / "b.img"]
    for dev in devices:
        with dev.open("wb") as fh:
            fh.truncate(160 * MIB)
    run("mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", *devices)
    found = survey(devices[0])
    region = found.regions[0]
    assert region.filesystem == "btrfs" and "2 devices" in region.note
    assert found.map.count() == found.map.n_blocks
    assert "copying all" in cli("backup", devices[0], tmp_path / "chain")


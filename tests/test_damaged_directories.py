"""A damaged directory is not a deletion where the directory entry is the metadata
(FAT12/16/32, exFAT: the rule reads the FAT and the allocation bitmap; a FAT sector
zeroed in one copy of the FAT only), nor for the name of a hard-linked file (ext4: the
inode keeps its links); where the allocation state cannot be read, it is not decided;
while real deletions (mtools ``mdel``/``mdeltree``, ``rm`` through exfat-fuse or the
kernel) stay deletions, by their directory entries' deletion marks."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
from sample_disks import MTOOLS_ENV, make_ntfs, run
from support import (
    backup_image,
    formatted,
    loop_device,
    loop_mounted,
    mounted_with,
    require_module,
    require_tools,
)

from blockforensics import forensics
from blockforensics.errors import UsageError
from blockforensics.fs.fat import BOOT_SECTOR
from blockforensics.fs.sleuthkit import EXFAT_BOOT_SECTOR
from blockforensics.image.chain import Chain
from blockforensics.triage import triage
from blockforensics.tsk import extract

#: the files each volume starts with (a random 5000 bytes each), after a fragmented
#: one (:data:`FRAGMENTED`), and an empty one
HIDDEN = ("/d/frag.bin", "/d/a.bin", "/d/b.bin", "/d/sub/c.bin")  # below the damage
DELETED = ("/gone.bin", "/t/x.bin", "/t/y.bin")  # removed for real, /t with them
FILES = (*HIDDEN[1:], *DELETED, "/keep.bin")
FRAGMENTED = HIDDEN[0]  # 12288 bytes around a one-byte file: more than one cluster run
EMPTY = "/d/empty.txt"
NEW = "/n/new.bin"  # written after a deletion, in its clusters (not its entry's place)
FSI_NXT_FREE = 492  # byte of the FSInfo sector: the next free cluster's hint
MEDIA_BYTE = 0x15  # byte of the boot sector: BPB_Media

#: mkfs arguments and volume size (bytes) per variant; FAT32 with 1-sector clusters
#: for the 65,525 clusters mtools 4.0.32 needs of a FAT32 volume
VOLUMES = {"fat12": (["mkfs.fat", "-F", "12"], 4 << 20),
           "fat16": (["mkfs.fat", "-F", "16"], 16 << 20),
           "fat32": (["mkfs.fat", "-F", "32", "-s", "1"], 40 << 20),
           "exfat": (["mkfs.exfat"], 16 << 20)}


def _changes(result: forensics.DiffResult, change: str) -> set[str]:
    return {r.path for r in result.files.itertuples() if r.change == change}


def _mtools(*argv: str | Path) -> None:
    run(*argv, env=MTOOLS_ENV)


def _fill(image: Path, kind: str, tmp: Path) -> None:
    """The directories, then ``/hole`` and ``/pad`` (one byte each), ``/hole`` deleted,
    :data:`FRAGMENTED` written (into the hole and on past ``/pad``), then :data:`FILES`
    and :data:`EMPTY`."""
    sizes = {"/hole": 1, "/pad": 1, FRAGMENTED: 12288, **dict.fromkeys(FILES, 5000),
             EMPTY: 0}
    for path, size in sizes.items():
        (tmp / path.replace("/", "_")).write_bytes(os.urandom(size))
    if kind != "exfat":
        for directory in ("::/d", "::/d/sub", "::/t", "::/n"):
            _mtools("mmd", "-i", image, directory)
        for path in sizes:
            _mtools("mcopy", "-i", image, tmp / path.replace("/", "_"), f"::{path}")
            if path == "/pad":
                _mtools("mdel", "-i", image, "::/hole")
                if kind == "fat32":
                    _forget_next_free(image)
        return
    with loop_device(image) as device, \
            mounted_with(["mount.exfat-fuse", device], tmp / "m") as m:
        for directory in ("d/sub", "t", "n"):
            (m / directory).mkdir(parents=True)
        for path in sizes:
            (m / path[1:]).write_bytes((tmp / path.replace("/", "_")).read_bytes())
            if path == "/pad":
                (m / "hole").unlink()


def _forget_next_free(image: Path) -> None:
    """FAT32: the FSInfo sector's ``FSI_Nxt_Free`` hint set to 0xFFFFFFFF (unknown, FAT
    specification), so that mtools looks for free clusters from cluster 2 again."""
    with image.open("r+b") as fh:
        fsinfo = struct.unpack("<H", fh.read(0x32)[0x30:])[0]  # BPB_FSInfo, in sectors
        fh.seek(fsinfo * 512 + FSI_NXT_FREE)
        fh.write(b"\xff" * 4)


def _delete(image: Path, kind: str, tmp: Path) -> None:
    """``/gone.bin`` deleted the way the file system's tools do, :data:`NEW` written as
    big as it, then the tree ``/t`` deleted."""
    (tmp / "new").write_bytes(os.urandom(5000))
    if kind != "exfat":
        _mtools("mdel", "-i", image, "::/gone.bin")
        if kind == "fat32":
            _forget_next_free(image)
        _mtools("mcopy", "-i", image, tmp / "new", f"::{NEW}")
        _mtools("mdeltree", "-i", image, "::/t")
        return
    with loop_device(image) as device, \
            mounted_with(["mount.exfat-fuse", device], tmp / "m") as m:
        (m / "gone.bin").unlink()
        (m / NEW[1:]).write_bytes((tmp / "new").read_bytes())
        for path in m.glob("t/*"):
            path.unlink()
        (m / "t").rmdir()


def _sectors(image: Path, path: str) -> list[int]:
    """The sectors of file or directory ``path``, as The Sleuth Kit's ``ifind`` and
    ``istat`` find them."""
    inode = run("ifind", "-n", path, image).strip()
    return [int(s) for s in run("istat", image, inode).split("Sectors:")[1].split()]


def _damage(image: Path, path: str) -> None:
    """The first cluster of directory ``path`` overwritten with random bytes, found by
    The Sleuth Kit's own ``ifind`` and ``istat``."""
    with image.open("r+b") as fh:
        fh.seek(_sectors(image, path)[0] * 512)
        fh.write(os.urandom(512))


def _swap_byte(fh: BinaryIO, offset: int, old: bytes, new: bytes) -> None:
    """Byte ``offset`` of the open image, checked to be ``old``, overwritten with ``new``."""
    fh.seek(offset)
    assert fh.read(1) == old
    fh.seek(offset)
    fh.write(new)


def _require(kind: str) -> None:
    """The tools that fill and damage a ``kind`` volume (skip or fail as the suite does)."""
    require_module("pytsk3", "pytsk3")
    require_tools("ifind", "istat", *(["mount.exfat-fuse", "losetup"] if kind == "exfat"
                                      else ["mmd", "mcopy", "mdel", "mdeltree"]))
    if kind == "exfat" and os.geteuid() != 0:
        pytest.skip("a loop device needs root")


def _history(kind: str, tmp: Path) -> tuple[Chain, Path]:
    """The volume filled (point 0), after the real deletions (point 1); the image."""
    _require(kind)
    mkfs, size = VOLUMES[kind]
    image = formatted(tmp / "v.img", size, *mkfs)
    _fill(image, kind, tmp)
    chain = Chain.create(tmp / "chain")
    backup_image(chain, image)
    _delete(image, kind, tmp)
    backup_image(chain, image)
    return chain, image


@pytest.mark.parametrize("kind", VOLUMES)
def test_a_damaged_directory_hides_files_it_does_not_delete(kind, tmp_path):
    """Point 1: files deleted for real (a file, a directory tree), a file written where
    one of them was; point 2: a directory's cluster overwritten.  The files below it
    (one fragmented, a subdirectory) are a "not read" note, not deletions, on their own
    (1 -> 2) and beside the real deletions (0 -> 2); an empty file, with no
    cluster to find allocated, stays a deletion and the note says so; triage does not
    call the damaged point suspicious for the files it hid."""
    _require(kind)
    mkfs, size = VOLUMES[kind]
    image = formatted(tmp_path / "v.img", size, *mkfs)
    _fill(image, kind, tmp_path)
    assert np.any(np.diff(_sectors(image, FRAGMENTED)) != 1)  # more than one run
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    freed = _sectors(image, "/gone.bin")
    _delete(image, kind, tmp_path)
    assert _sectors(image, NEW) == freed  # the clusters, in the same order
    backup_image(chain, image)
    _damage(image, "/d")
    backup_image(chain, image)

    deleted = forensics.diff(chain, 0, 1, files=True)
    assert _changes(deleted, "deleted") == {*DELETED, "/t"}
    assert _changes(deleted, "created") == {NEW}
    assert not deleted.notes
    for a in (0, 1):
        result = forensics.diff(chain, a, 2, files=True)
        assert _changes(result, "deleted") == {EMPTY, *((*DELETED, "/t") if a == 0 else ())}
        assert _changes(result, "modified") >= {"/d"}
        assert not set(result.files["path"]) & {*HIDDEN, "/d/sub"}
        note, = (n for n in result.notes if "no directory reaches" in n)
        assert note.startswith(f"point 2: /: {len(HIDDEN) + 1} file(s) and directories no "
                               "directory reaches")
        assert all(path in note for path in (*HIDDEN, "/d/sub"))
        assert f"1 empty file(s) left as deleted, no cluster to tell damage from " \
               f"deletion by: {EMPTY}" in note
    damaged = triage(chain).points[2]
    assert damaged.verdict == "clean", damaged.reasons
    assert damaged.metrics["deleted"] == 1  # the empty file
    assert f"not read: {note}" in damaged.reasons


def test_a_hard_link_a_damaged_directory_hides_is_no_deletion(tmp_path):
    """ext4: ``/d/link`` (a second name of ``/f``) in a directory whose block is zeroed
    is no deletion, the inode keeping both links; ``/h`` (a second name of ``/g``)
    removed by ``rm`` is one, the inode's link count dropping."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "debugfs", "mount", "umount")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image = formatted(tmp_path / "v.img", 8 << 20, "mkfs.ext4", "-q", "-F", "-b", "1024",
                      "-O", "^metadata_csum,^has_journal")
    with loop_mounted(image, tmp_path / "m") as m:
        (m / "d").mkdir()
        for name in ("f", "g"):
            (m / name).write_bytes(os.urandom(3000))
        os.link(m / "f", m / "d" / "link")
        os.link(m / "g", m / "h")
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    with loop_mounted(image, tmp_path / "m") as m:
        (m / "h").unlink()
    block = re.search(r"\(0\):(\d+)", run("debugfs", "-R", "stat /d", image))
    assert block
    with image.open("r+b") as fh:
        fh.seek(int(block[1]) * 1024)
        fh.write(bytes(1024))
    assert "Links: 2" in run("debugfs", "-R", "stat /f", image)
    backup_image(chain, image)
    result = forensics.diff(chain, 0, 1, files=True)
    assert _changes(result, "deleted") == {"/h"}
    note, = (n for n in result.notes if "no directory reaches" in n)
    assert note.startswith("point 1: /: 1 file(s) and directories no directory reaches")
    assert note.endswith(": /d/link")


def _fat_entry_sector(image: Path, kind: str, path: str) -> tuple[int, int]:
    """The byte where the first FAT starts, each FAT's length (bytes), and the byte
    (from the first FAT's start) of the sector holding the FAT entry of ``path``'s first
    cluster, from the boot sector and The Sleuth Kit's sectors of ``path``."""
    bpb = BOOT_SECTOR.parse(image.read_bytes()[:BOOT_SECTOR.size])
    sector = bpb.BPB_BytsPerSec
    fat = (bpb.BPB_FATSz16 or bpb.BPB_FATSz32) * sector
    data = (bpb.BPB_RsvdSecCnt * sector + bpb.BPB_NumFATs * fat
            + -(-bpb.BPB_RootEntCnt * 32 // sector) * sector) // 512  # 512-byte sectors
    cluster = (_sectors(image, path)[0] - data) * 512 // sector // bpb.BPB_SecPerClus + 2
    bits = {"fat12": 12, "fat16": 16, "fat32": 32}[kind]
    return bpb.BPB_RsvdSecCnt * sector, fat, cluster * bits // 8 // sector * sector


@pytest.mark.parametrize("kind", ["fat12", "fat16", "fat32"])
def test_a_fat_sector_zeroed_in_one_copy_is_damage_not_deletion(kind, tmp_path):
    """The sector of the first FAT holding the chain of ``/d/a.bin`` zeroed (the second
    FAT keeps it; a deletion zeroes both), and ``/d``'s cluster overwritten: the files
    below ``/d`` are a "not read" note, not deletions (the first FAT alone, which The
    Sleuth Kit reads, calls their clusters free), and the real deletions stay ones."""
    chain, image = _history(kind, tmp_path)
    first, length, at = _fat_entry_sector(image, kind, "/d/a.bin")
    raw = image.read_bytes()
    assert raw[first:first + length] == raw[first + length:first + 2 * length]  # mirrored
    assert any(raw[first + at:first + at + 512])
    with image.open("r+b") as fh:
        fh.seek(first + at)
        fh.write(bytes(512))
    _damage(image, "/d")
    backup_image(chain, image)
    for a in (0, 1):
        result = forensics.diff(chain, a, 2, files=True)
        assert _changes(result, "deleted") == {EMPTY, *((*DELETED, "/t") if a == 0 else ())}
        assert not set(result.files["path"]) & {*HIDDEN, "/d/sub"}
        note, = (n for n in result.notes if "no directory reaches" in n)
        assert int(note.split(": ")[2].split()[0]) >= len(HIDDEN) + 1  # /d/sub too
    with pytest.raises(UsageError, match=r"point 1 lists it and it is still there: no "
                       r"directory reaches it \(damage, not a deletion\); extract it from "
                       r"point 1$"):
        extract(chain, 2, "/d/a.bin", tmp_path / "a.out")
    # its entry unharmed in /n, its chain zeroed in the first FAT: no deletion either
    out, size, deleted = extract(chain, 2, NEW, tmp_path / "new.out")
    assert not deleted and size == 5000 and out.read_bytes() == (tmp_path / "new").read_bytes()


@pytest.mark.parametrize("kind", ["fat12", "fat16", "fat32"])
def test_files_are_not_decided_where_the_allocation_state_cannot_be_read(kind, tmp_path):
    """A bit flipped in the boot sector's media byte (0xF8 -> 0xE8, no media byte the FAT
    specification allows: the FATs it locates are not read), which The Sleuth Kit lists
    through, and ``/d``'s cluster overwritten.  The files the directory hides are then
    a note ("allocation state unreadable"), neither deletions nor counted, while the
    real deletions stay deletions by their entries' deletion marks; triage names the
    note among its reasons."""
    chain, image = _history(kind, tmp_path)
    _damage(image, "/d")
    with image.open("r+b") as fh:
        _swap_byte(fh, MEDIA_BYTE, b"\xf8", b"\xe8")
    backup_image(chain, image)
    deleted = forensics.diff(chain, 0, 1, files=True)
    assert _changes(deleted, "deleted") == {*DELETED, "/t"}
    for a in (0, 1):
        result = forensics.diff(chain, a, 2, files=True)
        assert _changes(result, "deleted") == {EMPTY, *((*DELETED, "/t") if a == 0 else ())}
        assert not set(result.files["path"]) & {*HIDDEN, "/d/sub"}
        held, note = result.notes  # /d/sub/c.bin: its entry in /d/sub, unharmed
        assert held.startswith("point 2: /: 1 file(s) and directories no directory reaches")
        assert ": /d/sub/c.bin; 1 empty file(s) left as deleted" in held
        assert note.startswith(f"point 2: /: {len(HIDDEN)} file(s) and directories "
                               "missing; allocation state unreadable (")
        assert "media byte 0xe8" in note
        assert all(path in note for path in (*HIDDEN[:-1], "/d/sub"))
    damaged = triage(chain).points[2]
    assert damaged.metrics["deleted"] == 1  # the empty file
    assert f"not read: {note}" in damaged.reasons


def _exfat_entry(image: Path, path: str) -> int:
    """The byte of ``path``'s File directory entry: The Sleuth Kit's metadata address
    (``ifind``) counts 32-byte slots from the cluster heap, from 3."""
    boot = EXFAT_BOOT_SECTOR.parse(image.read_bytes()[:EXFAT_BOOT_SECTOR.size])
    sector = 1 << boot.BytesPerSectorShift
    index, slot = divmod(int(run("ifind", "-n", path, image).strip()) - 3, sector // 32)
    return (boot.ClusterHeapOffset + index) * sector + slot * 32


def test_an_exfat_entry_set_failing_its_checksum_is_damage_not_a_change(tmp_path):
    """exFAT: a bit flipped in a name character of ``/keep.bin`` (its File Name entry:
    the set's SetChecksum no longer holds) is a "damaged" note, not a rename, and the
    in-use bit of ``/d/a.bin``'s File entry cleared alone (a deletion clears it in every
    entry of the set) is no deletion; beside them a rename and a deletion through
    exfat-fuse, which rewrite the set, stay a rename and a deletion."""
    chain, image = _history("exfat", tmp_path)
    with loop_device(image) as device, \
            mounted_with(["mount.exfat-fuse", device], tmp_path / "m") as m:
        (m / "d" / "b.bin").rename(m / "d" / "b2.bin")
    keep, a = _exfat_entry(image, "/keep.bin"), _exfat_entry(image, "/d/a.bin")
    with image.open("r+b") as fh:
        _swap_byte(fh, keep + 64 + 2, b"k", b"j")  # File Name entry, 1st char
        _swap_byte(fh, a, b"\x85", b"\x05")
    backup_image(chain, image)
    result = forensics.diff(chain, 1, 2, files=True)
    assert _changes(result, "deleted") == set()
    assert {(r.path, r.old_path) for r in result.files.itertuples()
            if r.change == "renamed"} == {("/d/b2.bin", "/d/b.bin")}
    assert not set(result.files["path"]) & {"/keep.bin", "/jeep.bin", "/d/a.bin"}
    assert "point 2: 1 file(s) whose metadata fails its own check (its exFAT entry set " \
           "fails its SetChecksum): damaged, not a change: /jeep.bin" in result.notes
    held, = (n for n in result.notes if "no directory reaches" in n)
    assert held.endswith(": /d/a.bin")
    assert _changes(forensics.diff(chain, 0, 2, files=True), "deleted") == {*DELETED, "/t"}


def test_an_ntfs_record_failing_its_fixups_is_damage_not_deletion(tmp_path):
    """NTFS: a bit flipped in the update sequence of ``/keep.bin``'s MFT record (the
    first sector's last byte, which the fixups check) makes The Sleuth Kit refuse the
    record: the file is a "not read" note (its metadata unreadable), not a deletion,
    beside ``/gone.bin`` removed through ntfs-3g, which stays one."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkntfs", "ntfs-3g", "ifind")
    if os.geteuid() != 0:
        pytest.skip("ntfs-3g needs root here")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("keep.bin", "gone.bin"):
        (tree / name).write_bytes(os.urandom(5000))
    image = make_ntfs(tmp_path / "v.img", 16 << 20, tree)
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    with mounted_with(["ntfs-3g", str(image)], tmp_path / "m") as m:
        (m / "gone.bin").unlink()
    record = int(run("ifind", "-n", "/keep.bin", image).strip())
    raw = image.read_bytes()
    cluster = struct.unpack_from("<H", raw, 0x0B)[0] * raw[0x0D]  # bytes per cluster
    at = struct.unpack_from("<Q", raw, 0x30)[0] * cluster + record * 1024 + 510
    assert raw[at - 510 : at - 506] == b"FILE"
    with image.open("r+b") as fh:
        fh.seek(at)
        fh.write(bytes([raw[at] ^ 1]))
    backup_image(chain, image)
    result = forensics.diff(chain, 0, 1, files=True)
    assert _changes(result, "deleted") == {"/gone.bin"}
    assert "/keep.bin" not in set(result.files["path"])
    note, = result.notes
    assert note.endswith("(damage, not a deletion): /keep.bin")

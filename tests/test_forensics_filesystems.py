"""File diffs where metadata hides the change: ext4 inline_data, NTFS (MFT records,
resident data, renames and moves), and file systems The Sleuth Kit cannot open."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from sample_disks import run
from support import backup_image, formatted, mounted_with, require_module, require_tools

from blockforensics import forensics, tsk
from blockforensics.errors import FormatError
from blockforensics.image.chain import Chain
from blockforensics.triage import triage


def _changes(result: forensics.DiffResult) -> set[tuple[str, str]]:
    return {(r.path, r.change) for r in result.files.itertuples() if r.type == "file"}


def _edit_keeping_mtime(path: Path, offset: int, data: bytes) -> None:
    """Rewrite bytes in place (same size), then put the old mtime back: only ctime moves."""
    before = path.stat()
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_inline_data_edit_with_mtime_put_back_is_a_modification(tmp_path):
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "mount", "umount")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image = tmp_path / "v.img"
    formatted(image, 8 << 20, "mkfs.ext4", "-q", "-F", "-O", "inline_data,^has_journal",
              "-I", "256")
    with mounted_with(["mount", "-o", "loop", str(image)], tmp_path / "m") as m:
        (m / "small.txt").write_bytes(b"quarterly figures v1\n")  # 21 bytes: in the inode
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    with mounted_with(["mount", "-o", "loop", str(image)], tmp_path / "m") as m:
        _edit_keeping_mtime(m / "small.txt", 19, b"2")
    backup_image(chain, image)
    result = forensics.diff(chain, 0, 1, files=True)
    assert _changes(result) == {("/small.txt", "modified")}
    row = result.files.iloc[0]
    assert row["size_before"] == row["size_after"] == 21


@pytest.fixture(scope="module")
def ntfs(tmp_path_factory):
    """An NTFS history made with mkntfs and ntfs-3g (FUSE), one point per day."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkntfs", "ntfs-3g", "umount")
    tmp = tmp_path_factory.mktemp("ntfs")
    image = tmp / "v.img"
    formatted(image, 16 << 20, "mkntfs", "-q", "-F", "-Q", "-c", "4096")
    mount = ["ntfs-3g", str(image)]
    chain = Chain.create(tmp / "chain")
    with mounted_with(mount, tmp / "m") as m:
        for d in ("docs", "archive"):
            (m / d).mkdir()
        (m / "docs" / "report.txt").write_bytes(b"quarterly report " * 600)  # non-resident
        (m / "docs" / "moved.txt").write_bytes(b"to be moved " * 500)
        (m / "docs" / "small.txt").write_bytes(b"resident v1\n")  # in the MFT record
        (m / "docs" / "old.txt").write_bytes(b"obsolete " * 300)
    backup_image(chain, image)
    with mounted_with(mount, tmp / "m") as m:
        (m / "docs" / "report.txt").rename(m / "docs" / "report-final.txt")
        (m / "docs" / "moved.txt").rename(m / "archive" / "moved.txt")
        _edit_keeping_mtime(m / "docs" / "small.txt", 10, b"2")
        (m / "docs" / "old.txt").unlink()
        (m / "docs" / "new.txt").write_bytes(b"fresh " * 700)
    backup_image(chain, image)
    with mounted_with(mount, tmp / "m") as m:
        _edit_keeping_mtime(m / "docs" / "report-final.txt", 4096, b"REVISED")
    backup_image(chain, image)
    with Chain.open(tmp / "chain") as opened:
        yield opened


def test_ntfs_renames_and_moves_are_renames_by_mft_record(ntfs):
    result = forensics.diff(ntfs, 0, 1, files=True)
    assert _changes(result) == {
        ("/docs/report-final.txt", "renamed"), ("/archive/moved.txt", "renamed"),
        ("/docs/small.txt", "modified"), ("/docs/old.txt", "deleted"),
        ("/docs/new.txt", "created")}
    files = result.files.set_index("path")
    assert files.loc["/docs/report-final.txt", "old_path"] == "/docs/report.txt"
    assert files.loc["/archive/moved.txt", "old_path"] == "/docs/moved.txt"
    listed = forensics.list_files(ntfs.disk(0)).set_index("path")
    assert files.loc["/docs/report-final.txt", "inode"] == listed.loc["/docs/report.txt",
                                                                       "inode"]
    assert not any(p.startswith("/$") for p in listed.index)
    assert not files["suspected_encryption"].any()


def test_ntfs_non_resident_edit_with_mtime_put_back_is_found(ntfs):
    result = forensics.diff(ntfs, 1, 2, files=True)
    assert _changes(result) == {("/docs/report-final.txt", "modified")}


def test_a_file_system_tsk_cannot_open_is_reported_not_fatal(tmp_path):
    """A FAT32 boot sector TSK refuses (a FAT count of zero) still gives the block diff."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.vfat")
    image = tmp_path / "v.img"
    formatted(image, 34 << 20, "mkfs.vfat", "-F", "32", "-s", "1")
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    with image.open("r+b") as fh:
        fh.seek(16)
        fh.write(b"\x00")  # BPB_NumFATs = 0
        fh.seek(20 << 20)
        fh.write(b"changed")
    backup_image(chain, image)
    result = forensics.diff(chain, 0, 1, files=True)
    assert result.changed_blocks >= 1
    assert result.notes and "cannot open" in result.notes[0]
    assert not result.files_checked and result.files.empty  # not "every file deleted"
    assert "not read:" in str(result)


# (what is written at the inode's i_block, then at its first data block; the note)
_EXTENT_DAMAGE = {
    # an extent index naming its own block: TSK stops at its recursion limit and lists
    # the file with no data attribute
    "index to itself": (lambda first: struct.pack("<HHHHIIIHH", 0xF30A, 1, 4, 1, 0, 0,
                                                  first, 0, 0), True,
                        "its content could not be read"),
    # an extent starting past the volume's last block (s_blocks_count)
    "extent past the end": (lambda first: struct.pack("<HHHHIIHHI", 0xF30A, 1, 4, 0, 0, 0,
                                                      9, 0, 1 << 24), False,
                            "its data runs past the end of the file system"),
}


def _debugfs_ext4(tmp_path: Path, size: int) -> tuple[Path, Path]:
    """An 8 MiB ext4 of 1 KiB blocks without metadata checksums (so that damage written
    by hand reads as damage, not as a checksum failure), and a file of ``size`` random
    bytes beside it for debugfs to write in."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "debugfs")
    image = formatted(tmp_path / "v.img", 8 << 20, "mkfs.ext4", "-q", "-F", "-b", "1024",
                      "-O", "^metadata_csum")
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(size))
    return image, source


@pytest.mark.parametrize("damage", list(_EXTENT_DAMAGE))
def test_a_file_whose_extents_cannot_be_read_is_named_unreadable(damage, tmp_path):
    """ext4 extents damaged: the file is named "not read", neither modified (to empty
    content, as it was) nor deleted, and extracting it is a one-line error."""
    image, source = _debugfs_ext4(tmp_path, 9000)
    run("debugfs", "-w", "-R", f"write {source} data.bin", image)
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    where = re.search(r"block (\d+), offset (0x[0-9a-f]+)",
                      run("debugfs", "-R", "imap /data.bin", image))
    first = re.search(r"\(0-\d+\):(\d+)", run("debugfs", "-R", "stat /data.bin", image))
    assert where and first
    node, in_node, why = _EXTENT_DAMAGE[damage]
    written = node(int(first[1]))
    with image.open("r+b") as fh:
        fh.seek(int(where[1]) * 1024 + int(where[2], 16) + 40)  # the inode's i_block
        fh.write(written)
        if in_node:
            fh.seek(int(first[1]) * 1024)
            fh.write(written)
    backup_image(chain, image)
    result = forensics.diff(chain, 0, 1, files=True)
    assert any(f"/data.bin: {why}" in n for n in result.notes)
    assert "/data.bin" not in set(result.files["path"])
    with pytest.raises(FormatError, match=f"/data\\.bin: {why}"):
        tsk.extract(chain, 1, "/data.bin", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert tsk.extract(chain, 0, "/data.bin", tmp_path / "out")[1] == 9000


def test_files_a_damaged_directory_hides_are_named_not_deleted(tmp_path):
    """ext4 with a directory's block zeroed (and one file's inode zeroed, its bitmap bit
    kept): the files no directory reaches any more, their inodes still allocated, are a
    "not read" note, not deletions; a file really deleted (debugfs rm) still is one."""
    image, source = _debugfs_ext4(tmp_path, 3000)
    commands = ["mkdir /d"] + [f"write {source} /d/f{i}" for i in range(3)] + \
        [f"write {source} /gone", f"write {source} /blank"]
    run("debugfs", "-w", "-f", "-", image, input="\n".join(commands))
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    directory = re.search(r"\(0\):(\d+)", run("debugfs", "-R", "stat /d", image))
    blank = re.search(r"block (\d+), offset (0x[0-9a-f]+)",
                      run("debugfs", "-R", "imap /blank", image))
    assert directory and blank
    run("debugfs", "-w", "-R", "rm /gone", image)
    with image.open("r+b") as fh:
        fh.seek(int(directory[1]) * 1024)
        fh.write(bytes(1024))
        fh.seek(int(blank[1]) * 1024 + int(blank[2], 16))
        fh.write(bytes(256))
    backup_image(chain, image)
    result = forensics.diff(chain, 0, 1, files=True)
    assert _changes(result) == {("/gone", "deleted")}
    note = next(n for n in result.notes if "no directory reaches" in n)
    assert all(path in note for path in ("/d/f0", "/d/f1", "/d/f2", "/blank"))
    assert f"not read: {note}" in triage(chain).points[1].reasons

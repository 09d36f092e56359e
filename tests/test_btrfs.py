"""Btrfs: the allocation map read from the extent tree equals the one built from
``btrfs inspect-internal dump-tree`` (extent items mapped through the chunks), a
backup stores only those blocks and restores a volume ``btrfs check`` finds clean
with every file identical, and damage or a RAID volume copies the volume whole
(with a note).

Volumes are made by the real tools: ``mkfs.btrfs --rootdir`` (no mount needed),
and, where the kernel has Btrfs and loop mounts work, files written, deleted and
rewritten through a loop mount.  Files are listed through dissect.btrfs with their
extents as physical disk bytes, and a second point's diff names what changed.
Subvolumes and snapshots (openSUSE's and Ubuntu's layouts) are listed as the kernel
shows the top level mounted (``subvolid=5``), and snapshots made or deleted between
points are one row each.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sample_disks
from support import assert_diff, loop_mounted, require_module, require_tools

from blockforensics import forensics
from blockforensics.allocation import filesystem_allocation, survey
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.btrfs import CSUM_SIZE, HEADER, BtrfsFileSystem, checksum
from blockforensics.image.chain import Chain
from blockforensics.tsk import _read_allocated, list_entries

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
    with loop_mounted(img, tmp_path / "mnt") as root:
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


@pytest.mark.parametrize("options", [("--csum", "xxhash"), ("--csum", "sha256"),
                                     ("--csum", "blake2"), ("--mixed",), ("-n", "4096"),
                                     ("-n", "65536"), ("-d", "dup")],
                         ids=["xxhash", "sha256", "blake2", "mixed", "node4k", "node64k",
                              "data-dup"])
def test_checksums_node_sizes_and_profiles(tmp_path: Path, options: tuple[str, ...]) -> None:
    """Every checksum type, mixed block groups, node sizes, DUP data: the map equals
    dump-tree's."""
    require_tools(*TOOLS)
    img = tmp_path / "btrfs.img"
    with img.open("wb") as fh:
        fh.truncate(200 * MIB)
    tree = tmp_path / "tree"
    write(tree, content())
    run("mkfs.btrfs", "-q", "-f", *options, "--rootdir", tree, img)
    region = survey(img).regions[0]
    assert region.filesystem == "btrfs" and not region.note, region
    assert np.array_equal(filesystem_allocation(img).to_bools(), expected_allocation(img))


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



def need_mount() -> None:
    """Skip (fail in CI) unless Btrfs loop mounts work here."""
    require_tools(*TOOLS, "mount", "umount")
    require_module("dissect.btrfs", "dissect.btrfs")
    if not can_mount():
        reason = "Btrfs loop mounts need root and a kernel with Btrfs"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def make_mixed(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A DUP-metadata volume written through a mount: plain files, inline ones, files
    compressed by zstd and zlib, a sparse file, a symlink, a deleted file."""
    img, files = make(tmp_path, "dup", mount=True)
    with loop_mounted(img, tmp_path / "mnt") as root:
        for algo in ("zstd", "zlib", "lzo"):
            run("btrfs", "property", "set", root / "mid", "compression", algo)
            data = (f"{algo} compressible line\n" * 40000).encode()
            (root / "mid" / f"{algo}.txt").write_bytes(data)
            files[f"mid/{algo}.txt"] = data
        with (root / "sparse.bin").open("wb") as fh:
            fh.seek(MIB)
            fh.write(b"after a hole" * 1000)
        files["sparse.bin"] = bytes(MIB) + b"after a hole" * 1000
        os.symlink("small.txt", root / "link")
    return img, files


def test_files_are_listed_with_physical_extents(tmp_path: Path) -> None:
    need_mount()
    img, files = make_mixed(tmp_path)
    with RawDisk(img) as disk:
        listing = list_entries(disk)
        assert not listing.unreadable
        entries = listing.entries
        allocated = filesystem_allocation(img).to_bools()
        for name, data in files.items():
            entry = entries[f"/{name}"]
            assert entry.fs == "btrfs" and entry.size == len(data), name
            found = _read_allocated(disk, f"/{name}")
            assert found is not None and b"".join(found[1]) == data, name
            for start, stop in entry.extents.tolist():  # physical runs, all allocated
                assert allocated[start // SECTOR : -(-stop // SECTOR)].all(), name
        small = entries["/small.txt"]
        assert small.resident == files["small.txt"] and not len(small.extents)  # inline
        big = entries["/big.bin"]  # uncompressed: the disk bytes at its extents are its data
        assert b"".join(disk.read(a, b - a) for a, b in big.extents.tolist()) == files["big.bin"]
        sparse = entries["/sparse.bin"]  # the hole left out
        assert int(np.diff(sparse.extents).sum()) < len(files["sparse.bin"]) - MIB + SECTOR
        for algo in ("zstd", "zlib", "lzo"):  # compressed: fewer disk bytes than the file's
            entry = entries[f"/mid/{algo}.txt"]
            assert 0 < int(np.diff(entry.extents).sum()) < entry.size // 4
            # its content (hashes, entropy, triage) decompressed: was the extents' bytes
            assert entry.read(disk) == files[f"mid/{algo}.txt"] and not entry.stored
        link = entries["/link"]
        assert link.kind == "symlink" and link.resident == b"small.txt"
        assert "/gone.bin" not in entries and "/mid/m00.bin" not in entries
        assert len(entries["/many"].children) == 300
    with loop_mounted(img, tmp_path / "ro") as root:
        for path in ("small.txt", "big.bin", "many", "link", "mid/zstd.txt", "empty"):
            entry, st = entries[f"/{path}"], os.lstat(root / path)
            assert (entry.inode, entry.size, entry.mode, entry.uid, entry.gid, entry.nlink) \
                == (st.st_ino, st.st_size, st.st_mode & 0o7777, st.st_uid, st.st_gid,
                    st.st_nlink), path
            assert entry.mtime * 10**9 + entry.mtime_ns == st.st_mtime_ns, path
            assert entry.ctime * 10**9 + entry.ctime_ns == st.st_ctime_ns, path
            assert entry.crtime > 0 and entry.seq > 0


def test_second_point_diff_names_created_modified_deleted_renamed(tmp_path: Path) -> None:
    need_mount()
    img, files = make_mixed(tmp_path)
    cli("backup", img, tmp_path / "chain")
    with loop_mounted(img, tmp_path / "mnt") as root:
        (root / "new.txt").write_bytes(b"created at point 1\n")
        with (root / "small.txt").open("ab") as fh:
            fh.write(b"appended\n")
        (root / "mid" / "m01.bin").unlink()
        (root / "big.bin").rename(root / "big-renamed.bin")
        (root / "many" / "entry-0007.txt").write_bytes(b"rewritten\n" * 1000)
    out = cli("backup", img, tmp_path / "chain")
    assert "whole disk (btrfs):" in out and "copying all" not in out
    assert_diff(tmp_path / "chain", {"/new.txt": "created", "/small.txt": "modified",
                                     "/many/entry-0007.txt": "modified",
                                     "/mid/m01.bin": "deleted"},
                {"/big-renamed.bin": "/big.bin"}, ("/mid/m03",))
    extracted = tmp_path / "extracted.bin"
    cli("extract", tmp_path / "chain", "1", "/big-renamed.bin", extracted)
    assert extracted.read_bytes() == files["big.bin"]
    cli("extract", tmp_path / "chain", "0", "/mid/zstd.txt", extracted, "--force")
    assert extracted.read_bytes() == files["mid/zstd.txt"]


def test_btrfs_in_a_gpt_partition(tmp_path: Path) -> None:
    require_tools(*TOOLS, "sgdisk")
    require_module("dissect.btrfs", "dissect.btrfs")
    volume, files = make(tmp_path, "dup", 128 * MIB)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(130 * MIB)
    run("sgdisk", "-n", "1:2048:+128M", "-t", "1:8300", disk)
    sample_disks.place(disk, volume, MIB)
    found = survey(disk, SECTOR)
    part = next(r for r in found.regions if r.index == 1)
    assert part.filesystem == "btrfs" and not part.note and part.blocks < part.total
    expected = expected_allocation(volume)
    assert np.array_equal(found.map.to_bools()[MIB // SECTOR : MIB // SECTOR + expected.size],
                          expected)
    cli("backup", disk, tmp_path / "chain")
    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    run("btrfs", "check", "--readonly",
        sample_disks.extract(restored, MIB, 128 * MIB, tmp_path / "p1.img"))
    checked = json.loads(cli("verify", tmp_path / "chain", "--fs", "--json"))["filesystems"]
    [part1] = [c for c in checked["checks"] if c["file"] == "part1.raw"]
    assert part1["filesystem"] == "btrfs" and part1["ok"], part1  # btrfs check over FUSE
    with RawDisk(disk) as d:
        listing = list_entries(d)
        assert not listing.unreadable
        for name, data in files.items():
            found_file = _read_allocated(d, f"p1:/{name}")
            assert found_file is not None and b"".join(found_file[1]) == data, name


def test_a_log_tree_copies_the_volume_whole(tmp_path: Path) -> None:
    """A crash-consistent copy taken after an fsync but before the transaction commit:
    the fsync'd file is only in the log tree, which the extent tree does not cover."""
    need_mount()
    img = tmp_path / "live.img"
    with img.open("wb") as fh:
        fh.truncate(128 * MIB)
    run("mkfs.btrfs", "-q", "-f", img)
    snap = tmp_path / "snap.img"
    with loop_mounted(img, tmp_path / "mnt", "commit=300") as root:
        os.sync()  # everything so far committed
        with (root / "fsynced.bin").open("wb") as fh:
            fh.write(os.urandom(300_000))
            fh.flush()
            os.fsync(fh.fileno())  # into the log tree, no commit
        snap.write_bytes(img.read_bytes())
    log_root = re.compile(r"^log_root\s+(\d+)", re.M)
    assert int(log_root.search(run("btrfs", "inspect-internal", "dump-super", snap))[1]) > 0
    region = survey(snap).regions[0]
    assert region.filesystem == "btrfs" and "log tree" in region.note, region
    assert survey(img).regions[0].note == ""  # unmounted since: committed, no log


def _mounted_tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Path (from the mount point, "/" first) -> (type, inode, size) of every file and
    directory below ``root``, as the kernel shows them."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
        found["/" + str(path.relative_to(root)).removeprefix(".")] = (
            kind, st.st_ino, st.st_size if kind == "file" else 0)
    return found


def set_default(root: Path, subvolume: str) -> None:
    """Make ``subvolume`` (its path from the top level) the default of the volume mounted
    on ``root``."""
    found = re.search(rf"ID (\d+) .* path {re.escape(subvolume)}$",
                      run("btrfs", "subvolume", "list", root), re.M)
    run("btrfs", "subvolume", "set-default", found[1], root)


def make_subvolumes(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A volume laid out as openSUSE and Ubuntu do: subvolumes ``@`` (the default),
    ``@home`` and ``@var_log`` at the top level, ``@/.snapshots`` nested in ``@`` and a
    read-only snapshot of ``@`` in it (keeping ``.snapshots`` as an empty directory),
    a writable snapshot of ``@home``; files in each (paths as when id 5 is mounted)."""
    need_mount()
    img = tmp_path / "subvolumes.img"
    with img.open("wb") as fh:
        fh.truncate(256 * MIB)
    run("mkfs.btrfs", "-q", "-f", img)
    rng = np.random.default_rng(7)
    files = {"@/etc/hostname": b"forensics\n", "@/etc/big.bin": rng.bytes(600_000),
             "@home/user/notes.txt": b"notes\n" * 3000,
             "@home/user/photo.bin": rng.bytes(1_500_000),
             "@var_log/syslog": b"log line\n" * 5000}
    with loop_mounted(img, tmp_path / "mnt") as root:
        for name in ("@", "@home", "@var_log", "@/.snapshots"):
            run("btrfs", "subvolume", "create", root / name)
        write(root, files)
        (root / "@/.snapshots/1").mkdir()
        run("btrfs", "subvolume", "snapshot", "-r", root / "@", root / "@/.snapshots/1/snapshot")
        run("btrfs", "subvolume", "snapshot", root / "@home", root / "@home-rw")
        (root / "@home-rw/user/only-here.txt").write_bytes(b"in the writable snapshot\n")
        set_default(root, "@")
    for name in ("etc/hostname", "etc/big.bin"):
        files[f"@/.snapshots/1/snapshot/{name}"] = files[f"@/{name}"]
    for name in ("notes.txt", "photo.bin"):
        files[f"@home-rw/user/{name}"] = files[f"@home/user/{name}"]
    files["@home-rw/user/only-here.txt"] = b"in the writable snapshot\n"
    return img, files


def test_every_subvolume_and_snapshot_is_listed_as_mounted_at_the_top(tmp_path: Path) -> None:
    """The listing equals the kernel's view of the top-level subvolume (subvolid=5):
    every path, type, inode number and size, the empty directory a snapshot keeps for a
    nested subvolume included; every file reads back; the default subvolume (``@``,
    or one nested deeper) changes nothing."""
    img, files = make_subvolumes(tmp_path)
    with loop_mounted(img, tmp_path / "top", "ro", "subvolid=5") as root:
        kernel = _mounted_tree(root)
    assert kernel["/@/.snapshots/1/snapshot/.snapshots"] == ("dir", 2, 0)
    for default in ("@", "@/.snapshots"):
        with loop_mounted(img, tmp_path / "top", "subvolid=5") as root:
            set_default(root, default)
        with RawDisk(img) as disk:
            listing = list_entries(disk)
            assert not listing.unreadable
            listed = {p: (e.type, e.inode, e.size if e.type == "file" else 0)
                      for p, e in listing.entries.items()}
            assert listed == kernel
            for name, data in files.items():
                got = _read_allocated(disk, f"/{name}")
                assert got is not None and b"".join(got[1]) == data, name
        entries = listing.entries
        assert entries["/"].volume == 5 and entries["/@/etc/big.bin"].volume \
            != entries["/@/.snapshots/1/snapshot/etc/big.bin"].volume
        assert entries["/@/etc/big.bin"].same_extents(
            entries["/@/.snapshots/1/snapshot/etc/big.bin"])  # shared, not copied


@pytest.mark.slow
def test_snapshots_made_and_deleted_are_one_row_each_and_restore_keeps_them(
        tmp_path: Path) -> None:
    """Between two points a snapshot of ``@`` is taken and an older one deleted, files
    change in ``@home`` and the writable snapshot: the diff names those files by
    their subvolume paths and each snapshot in one row (its files share their data:
    no rows, no changed blocks of theirs); the restored volume shows the kernel the
    same subvolumes and files."""
    img, files = make_subvolumes(tmp_path)
    chain = tmp_path / "chain"
    cli("backup", img, chain)
    with loop_mounted(img, tmp_path / "mnt", "subvolid=5") as root:
        (root / "@/.snapshots/2").mkdir()
        run("btrfs", "subvolume", "snapshot", "-r", root / "@", root / "@/.snapshots/2/snapshot")
        run("btrfs", "subvolume", "delete", root / "@/.snapshots/1/snapshot")
        with (root / "@home/user/notes.txt").open("ab") as fh:
            fh.write(b"one more\n")
        (root / "@home/user/new.txt").write_bytes(b"new at point 1\n")
        (root / "@home-rw/user/only-here.txt").unlink()  # the deleted snapshot: maybe
        # still an orphan the cleaner has not dropped (its extents still allocated)
    out = cli("backup", img, chain)
    assert "copying all" not in out
    changed = assert_diff(chain, {
        "/@/.snapshots/2": "created", "/@/.snapshots/2/snapshot": "created",
        "/@/.snapshots/1/snapshot": "deleted", "/@home/user/notes.txt": "modified",
        "/@home/user/new.txt": "created", "/@home-rw/user/only-here.txt": "deleted"},
        {}, ("/@/etc", "/@/.snapshots/2/snapshot/etc", "/@/.snapshots/1/snapshot/etc",
             "/@var_log", "/@home-rw/user/notes.txt", "/@home-rw/user/photo.bin"))
    assert set(changed) <= {"/@/.snapshots", "/@/.snapshots/2", "/@/.snapshots/2/snapshot",
                            "/@/.snapshots/2/snapshot/.snapshots",
                            "/@/.snapshots/1/snapshot",
                            "/@/.snapshots/1", "/@/.snapshots/1/snapshot/.snapshots", "/@home/user",
                            "/@home/user/notes.txt", "/@home/user/new.txt",
                            "/@home-rw/user", "/@home-rw/user/only-here.txt"}, changed
    with Chain.open(chain) as opened:
        result = forensics.diff(opened, 0, 1, files=True)
    rows = result.files.set_index("path")
    for path, source in (("/@/.snapshots/2/snapshot", "/@"),
                         ("/@/.snapshots/1/snapshot", "/@")):
        evidence = rows.loc[path, "evidence"][0]
        assert evidence.startswith(f"a snapshot's copy of {source} (") \
            and "3 entries below it" in evidence, evidence
    assert not rows["suspected_encryption"].any()
    assert not set(result.owners["path"]) & {"/@/.snapshots/2/snapshot/etc/big.bin",
                                              "/@/.snapshots/1/snapshot/etc/big.bin"}
    restored = tmp_path / "restored.img"
    cli("restore", chain, restored)
    run("btrfs", "check", "--readonly", restored)
    trees = []
    for image in (img, restored):
        with loop_mounted(image, tmp_path / "top", "ro", "subvolid=5") as root:
            trees.append((_mounted_tree(root), {
                p: (root / p.lstrip("/")).read_bytes() for p, (kind, _, _)
                in _mounted_tree(root).items() if kind == "file"}))
    assert trees[0] == trees[1]
    assert trees[1][1]["/@home/user/notes.txt"] == files["@home/user/notes.txt"] + b"one more\n"


@pytest.mark.parametrize("resealed", [False, True], ids=["checksum-wrong", "resealed"])
def test_a_root_tree_node_without_items_is_a_note_not_a_hang(tmp_path: Path,
                                                             resealed: bool) -> None:
    """dissect.btrfs checks no tree node, and its search of a node whose item count reads
    0 never ended: ``diff`` of such a point hung.  Every node it reads now passes the
    project's checks first (checksum, place, level, a node with items), so the point is
    named unreadable in a line and the diff ends."""
    require_module("dissect.btrfs", "dissect.btrfs")
    img, _ = make(tmp_path, "single", 128 * MIB)
    chain = tmp_path / "chain"
    cli("backup", img, chain)
    with RawDisk(img) as disk:
        geometry = BtrfsFileSystem(disk)
        geometry.read_chunk_tree()
        root = geometry.sb.root
        at = geometry.physical(root, geometry.nodesize)[0]
        node = bytearray(geometry.node(root)[1])
    HEADER.parse_array(node, 1)["nritems"] = 0
    if resealed:
        stored = checksum(geometry.sb.csum_type, bytes(node[CSUM_SIZE:]))
        node[: len(stored)] = stored
    with img.open("r+b") as fh:
        fh.seek(at)
        fh.write(node)
    cli("backup", img, chain)
    done = subprocess.run([sys.executable, "-m", "blockforensics", "diff", chain, "0", "1",
                           "--files"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    why = "has no items" if resealed else "checksum mismatch"
    assert re.search(rf"not read: point 1: .*Btrfs.*logical byte {root} {why}", done.stdout)

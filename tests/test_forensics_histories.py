"""File diffs on histories made with the real tools (a loop-mounted ext4, mtools on FAT32,
ntfs-3g on NTFS), each change known: moves, renames over a file, swapped names, a
directory renamed, a file replaced by a directory, hard and symbolic links, sparse and
truncated files, metadata-only changes, reused inodes, awkward names and old or far
times; and the timeline formats' escaping of those names."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import time
import xml.dom.minidom
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from support import backup_image, formatted, mounted_with, require_module, require_tools

from blockforensics import forensics, timeline_formats, tsk
from blockforensics.image.chain import Chain

#: names the outputs must carry intact (or escaped) — a newline, a control byte, quotes
AWKWARD = ("with space.txt", "new\nline.txt", "pct%20.txt", 'quo"te.txt', "apos'.txt",
           "ünïcødé€.txt", "tab\tx,comma.txt", "pipe|x.txt", "ctl\x01name.txt",
           "L" * 200 + ".txt")
#: ext names are bytes: two that are no UTF-8 and differ only there
NOT_UTF8 = (b"r\xe9sum\xe9.txt", b"r\xe8sum\xe8.txt")
PRE_1970 = -300_000_000  # 1960-06-29
POST_2038 = 4_102_444_800  # 2100-01-01
FAT_FAR = 4_115_534_402  # 2100-06-01 12:00:02 UTC: FAT dates go to 2107
FAT_STAMP = 981_173_106  # 2001-02-03 04:05:06 UTC (even: FAT keeps 2-second steps)


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")


def _rows(result: forensics.DiffResult) -> pd.DataFrame:
    return result.files.set_index("path")


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _common_start(m: Path) -> None:
    """The files of the cases every file system shares."""
    for d in ("d1", "d2", "dir_r", "d2f"):
        (m / d).mkdir()
    (m / "d1/mv.txt").write_bytes(b"move me " * 600)
    (m / "rn.txt").write_bytes(b"rename and modify " * 300)
    (m / "over_src.txt").write_bytes(b"source " * 700)
    (m / "over_dst.txt").write_bytes(b"dest " * 900)
    (m / "swap_a.txt").write_bytes(b"AAAA " * 1000)
    (m / "swap_b.txt").write_bytes(b"BBBB " * 1100)
    for i in range(12):
        (m / f"dir_r/f{i}.txt").write_bytes(f"file {i} ".encode() * 200)
    (m / "f2d").write_bytes(b"was a file " * 100)
    (m / "d2f/inner.txt").write_bytes(b"inner " * 100)


def _common_change(m: Path) -> None:
    (m / "d1/mv.txt").rename(m / "d2/mv.txt")
    (m / "rn.txt").rename(m / "rn2.txt")
    with (m / "rn2.txt").open("ab") as fh:
        fh.write(b"appended")
    (m / "over_src.txt").rename(m / "over_dst.txt")
    _swap(m / "swap_a.txt", m / "swap_b.txt")
    (m / "dir_r").rename(m / "dir_renamed")
    (m / "f2d").unlink()
    (m / "f2d").mkdir()
    (m / "f2d/x.txt").write_bytes(b"x" * 100)
    shutil.rmtree(m / "d2f")
    (m / "d2f").write_bytes(b"now a file " * 100)


def _assert_common(result: forensics.DiffResult, *, inner_files_renamed: bool = True) -> None:
    rows = _rows(result)
    assert rows.loc["/d2/mv.txt", "change"] == "renamed"
    assert rows.loc["/d2/mv.txt", "old_path"] == "/d1/mv.txt"
    assert "/d1/mv.txt" not in rows.index
    # renamed over an existing file: the source moved, the old target is gone
    assert rows.loc["/over_dst.txt", "change"] == "renamed"
    assert rows.loc["/over_dst.txt", "old_path"] == "/over_src.txt"
    assert rows.loc["/over_dst.txt", "replaces"] == "/over_dst.txt"
    assert "/over_src.txt" not in rows.index
    # swapped names: each a rename from the other
    assert rows.loc["/swap_a.txt", "change"] == rows.loc["/swap_b.txt", "change"] == "renamed"
    assert rows.loc["/swap_a.txt", "old_path"] == "/swap_b.txt"
    assert rows.loc["/swap_b.txt", "old_path"] == "/swap_a.txt"
    assert rows.loc["/swap_a.txt", "replaces"] == rows.loc["/swap_b.txt", "replaces"] == ""
    # a directory renamed: the directory and each file in it renamed, nothing deleted
    assert rows.loc["/dir_renamed", "change"] == "renamed"
    assert rows.loc["/dir_renamed", "old_path"] == "/dir_r"
    inner = rows[rows.index.str.startswith("/dir_renamed/")]
    assert len(inner) == 12 and set(inner["change"]) == {"renamed"}
    assert not rows.index.str.startswith("/dir_r/").any()
    # a file replaced by a directory and back: deleted + created at one path
    changes = {(r.path, r.type, r.change) for r in result.files.itertuples()}
    assert {("/f2d", "file", "deleted"), ("/f2d", "dir", "created"),
            ("/f2d/x.txt", "file", "created"), ("/d2f", "dir", "deleted"),
            ("/d2f/inner.txt", "file", "deleted"), ("/d2f", "file", "created")} <= changes
    assert not result.files["suspected_encryption"].any()


# ---------------------------------------------------------------- ext4
@pytest.fixture(scope="module")
def ext4(tmp_path_factory) -> Iterator[tuple[Chain, Path]]:
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "mount", "umount")
    _root()
    tmp = tmp_path_factory.mktemp("ext4")
    image = tmp / "v.img"
    formatted(image, 32 << 20, "mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-I", "256")
    chain = Chain.create(tmp / "chain")
    mount = ["mount", "-o", "loop", str(image)]
    with mounted_with(mount, tmp / "m") as m:
        _common_start(m)
        (m / "hl_a").write_bytes(b"hard link " * 500)
        os.link(m / "hl_a", m / "hl_b")
        (m / "t1").write_bytes(b"one")
        (m / "t2").write_bytes(b"two")
        os.symlink("t1", m / "sym")
        with (m / "sparse").open("wb") as fh:
            fh.truncate(1 << 20)
            fh.write(b"head" * 1024)
        (m / "trunc.txt").write_bytes(b"truncate me " * 1000)
        for name in ("chmod.txt", "chown.txt", "xattr.txt"):
            (m / name).write_bytes(name.encode() * 500)
        (m / "reuse_old.txt").write_bytes(b"old content " * 400)
        (m / "dup.txt").write_bytes(b"duplicate content " * 300)
        (m / "old.txt").write_bytes(b"old")
        os.utime(m / "old.txt", (PRE_1970, PRE_1970))
        (m / "future.txt").write_bytes(b"future")
        os.utime(m / "future.txt", (POST_2038, POST_2038))
        for d in ("A", "B", "P", "Q"):
            (m / d).mkdir()
            if d != "B":
                (m / d / f"{d.lower()}.txt").write_bytes(d.encode() * 3000)
        (m / "chain_a.txt").write_bytes(b"chain a " * 500)
        for raw in NOT_UTF8:
            Path(os.fsdecode(bytes(m) + b"/" + raw)).write_bytes(b"latin-1 " * 100)
    backup_image(chain, image)
    with mounted_with(mount, tmp / "m") as m:
        _common_change(m)
        (m / "hl_a").unlink()
        (m / "sym").unlink()
        os.symlink("t2", m / "sym")
        with (m / "sparse").open("r+b") as fh:
            fh.seek(512 << 10)
            fh.write(b"fill" * 1024)
        before = (m / "trunc.txt").stat()
        data = (m / "trunc.txt").read_bytes()
        with (m / "trunc.txt").open("r+b") as fh:
            fh.truncate(0)
            os.fsync(fh.fileno())
            fh.write(data[:6000] + b"Z" * 6000)  # regrown to the same size
        os.utime(m / "trunc.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
        os.chmod(m / "chmod.txt", 0o600)
        os.chown(m / "chown.txt", 1234, 5678)
        os.setxattr(m / "xattr.txt", "user.note", b"hello")
        (m / "reuse_old.txt").unlink()  # its inode goes to the next file made
        (m / "reuse_new.txt").write_bytes(b"brand new thing " * 300)
        data = (m / "dup.txt").read_bytes()
        (m / "dup.txt").unlink()
        (m / "elsewhere").mkdir()
        (m / "elsewhere/dup_copy.txt").write_bytes(data)
        for name in AWKWARD:
            (m / name).write_bytes(b"awkward " * 10)
        (m / "B").rmdir()
        (m / "A").rename(m / "B")  # a directory renamed over an empty one
        _swap(m / "P", m / "Q")  # two directories' names swapped
        (m / "chain_a.txt").rename(m / "chain_b.txt")
        (m / "chain_a.txt").write_bytes(b"a new one " * 300)  # a new file, the old name
        with Path(os.fsdecode(bytes(m) + b"/" + NOT_UTF8[1])).open("ab") as fh:
            fh.write(b"more")
    backup_image(chain, image)
    with Chain.open(tmp / "chain") as opened:
        yield opened, image


def test_ext4_moves_renames_over_swaps_and_directories(ext4):
    _assert_common(forensics.diff(ext4[0], 0, 1, files=True))


def test_ext4_directories_renamed_over_and_swapped_and_a_name_reused(ext4):
    rows = _rows(forensics.diff(ext4[0], 0, 1, files=True))
    assert (rows.loc["/B", "change"], rows.loc["/B", "old_path"], rows.loc["/B", "replaces"]) \
        == ("renamed", "/A", "/B")
    assert rows.loc["/B/a.txt", "old_path"] == "/A/a.txt"
    assert (rows.loc["/P", "old_path"], rows.loc["/Q", "old_path"]) == ("/Q", "/P")
    assert (rows.loc["/P/q.txt", "old_path"], rows.loc["/Q/p.txt", "old_path"]) == \
        ("/Q/q.txt", "/P/p.txt")
    assert (rows.loc["/chain_b.txt", "change"], rows.loc["/chain_b.txt", "old_path"]) == \
        ("renamed", "/chain_a.txt")
    assert rows.loc["/chain_a.txt", "change"] == "created"
    assert not {"/A", "/A/a.txt"} & set(rows.index)


def test_ext4_links_sparse_truncated_and_metadata_only(ext4):
    rows = _rows(forensics.diff(ext4[0], 0, 1, files=True))
    assert rows.loc["/hl_a", "change"] == "deleted"
    assert rows.loc["/hl_b", "what_changed"] == "links"  # the inode lost a name, not content
    assert rows.loc["/sym", "change"] == "modified"
    assert "target" in rows.loc["/sym", "what_changed"].split(",")
    assert rows.loc["/sparse", "change"] == "modified"
    assert rows.loc["/trunc.txt", "change"] == "modified"
    assert rows.loc["/trunc.txt", "size_before"] == rows.loc["/trunc.txt", "size_after"]
    for name, what in (("chmod.txt", "mode"), ("chown.txt", "owner"), ("xattr.txt", "ctime")):
        assert rows.loc[f"/{name}", "change"] == "modified"
        assert rows.loc[f"/{name}", "what_changed"] == what  # metadata, not content
    assert rows.loc["/sym", "inode"] != 0


def test_ext4_reused_inode_is_delete_and_create_and_a_copy_elsewhere_a_rename(ext4):
    chain, _ = ext4
    listed = {p: forensics.list_files(chain.disk(p)).set_index("path") for p in (0, 1)}
    rows = _rows(forensics.diff(chain, 0, 1, files=True))
    assert rows.loc["/reuse_old.txt", "change"] == "deleted"
    assert rows.loc["/reuse_new.txt", "change"] == "created"
    if listed[0].loc["/reuse_old.txt", "inode"] == listed[1].loc["/reuse_new.txt", "inode"]:
        assert rows.loc["/reuse_new.txt", "old_path"] == ""  # reused, yet no rename
    assert rows.loc["/elsewhere/dup_copy.txt", "change"] == "renamed"  # same content
    assert rows.loc["/elsewhere/dup_copy.txt", "old_path"] == "/dup.txt"


def test_ext4_names_that_are_no_utf8_stay_apart(ext4):
    chain, _ = ext4
    listed = forensics.list_files(chain.disk(0))
    assert {"/r\\xe9sum\\xe9.txt", "/r\\xe8sum\\xe8.txt"} <= set(listed["path"])
    rows = _rows(forensics.diff(chain, 0, 1, files=True))
    assert rows.loc["/r\\xe8sum\\xe8.txt", "change"] == "modified"
    assert "/r\\xe9sum\\xe9.txt" not in rows.index


def test_a_file_named_in_no_utf8_is_extracted_by_its_listed_name(ext4, tmp_path):
    chain, _ = ext4
    out, _, deleted = tsk.extract(chain, 1, "/r\\xe8sum\\xe8.txt", tmp_path / "out")
    assert Path(out).read_bytes() == b"latin-1 " * 100 + b"more" and not deleted


def test_ext4_times_before_1970_and_after_2038_as_the_kernel_reads_them(ext4):
    chain, _ = ext4
    files = forensics.list_files(chain.disk(1)).set_index("path")
    assert files.loc["/old.txt", "mtime"] == PRE_1970
    assert files.loc["/future.txt", "mtime"] == POST_2038


def test_awkward_names_are_listed_and_every_output_stays_well_formed(ext4):
    chain, _ = ext4
    rows = _rows(forensics.diff(chain, 0, 1, files=True))
    for name in AWKWARD:
        assert rows.loc[f"/{name}", "change"] == "created"
    document = json.loads(json.dumps(forensics.diff(chain, 0, 1, files=True).to_json()))
    assert {f"/{n}" for n in AWKWARD} <= {f["path"] for f in document["files"]}
    versions = timeline_formats.file_versions(chain)
    out = io.StringIO()
    timeline_formats.write_bodyfile(versions, out)
    lines = out.getvalue().split("\n")[:-1]
    assert len(lines) == len(versions)  # one record a line, 11 fields each
    assert {len(re.sub(r"\\.", "", line).split("|")) for line in lines} == {11}  # \| kept
    assert any("/new\\x0aline.txt (point 1, created)" in line for line in lines)
    assert any("/pipe\\|x.txt (point 1, created)" in line for line in lines)
    out = io.StringIO()
    timeline_formats.write_l2tcsv(versions, out)
    records = list(csv.reader(io.StringIO(out.getvalue())))
    assert {len(r) for r in records} == {17}
    assert {f"/{n}" for n in AWKWARD} <= {r[12] for r in records}
    out = io.StringIO()
    timeline_formats.write_jsonl(versions, out)
    paths = {json.loads(line)["path"] for line in out.getvalue().splitlines()}
    assert {f"/{n}" for n in AWKWARD} <= paths
    out = io.StringIO()
    timeline_formats.write_dfxml(versions, out)
    parsed = xml.dom.minidom.parseString(out.getvalue().encode())
    names = {n.firstChild.data for n in parsed.getElementsByTagName("filename")}
    assert "/new\nline.txt" in names and "/ctl\\x01name.txt" in names


def test_a_symlink_is_extracted_as_its_target(ext4, tmp_path):
    chain, _ = ext4
    out, size, _ = tsk.extract(chain, 1, "/sym", tmp_path / "sym")
    assert Path(out).read_bytes() == b"t2" and size == 2


# ---------------------------------------------------------------- FAT32
@pytest.fixture(scope="module")
def fat32(tmp_path_factory) -> Chain:
    """The common cases made with mtools (no vfat driver here): renames write a new
    directory entry, so FAT's "inode" (the entry's place) moves with the name."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.vfat", "mcopy", "mmd", "mren", "mmove", "mdel", "mdeltree", "mattrib")
    tmp = tmp_path_factory.mktemp("fat32")
    image = tmp / "v.img"
    formatted(image, 40 << 20, "mkfs.vfat", "-F", "32", "-s", "1")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}  # wall clock = UTC

    def m(*args: str) -> None:
        subprocess.run([args[0], "-i", str(image), *args[1:]], check=True, env=env,
                       capture_output=True)

    def put(name: str, data: bytes) -> None:
        (tmp / "src").write_bytes(data)
        m("mcopy", "-o", str(tmp / "src"), f"::{name}")

    for d in ("d1", "d2", "dir_r", "d2f"):
        m("mmd", f"::{d}")
    put("d1/mv.txt", b"move me " * 600)
    put("over_src.txt", b"source " * 700)
    put("over_dst.txt", b"dest " * 900)
    put("swap_a.txt", b"AAAA " * 1000)
    put("swap_b.txt", b"BBBB " * 1100)
    for i in range(12):
        put(f"dir_r/f{i}.txt", f"file {i} ".encode() * 200)
    put("f2d", b"was a file " * 100)
    put("d2f/inner.txt", b"inner " * 100)
    put("A long file name of many parts.txt", b"lfn " * 100)
    put("attr.txt", b"attr " * 100)
    (tmp / "stamped").write_bytes(b"stamped")
    os.utime(tmp / "stamped", (FAT_STAMP, FAT_STAMP))
    m("mcopy", "-m", str(tmp / "stamped"), "::stamped.txt")  # -m: keeps the mtime
    os.utime(tmp / "stamped", (FAT_FAR, FAT_FAR))
    m("mcopy", "-m", str(tmp / "stamped"), "::far.txt")
    chain = Chain.create(tmp / "chain")
    backup_image(chain, image)
    m("mmove", "::d1/mv.txt", "::d2/mv.txt")
    m("mdel", "::over_dst.txt")
    m("mren", "::over_src.txt", "::over_dst.txt")
    m("mren", "::swap_a.txt", "::swap.tmp")
    m("mren", "::swap_b.txt", "::swap_a.txt")
    m("mren", "::swap.tmp", "::swap_b.txt")
    m("mren", "::dir_r", "::dir_renamed")
    m("mdel", "::f2d")
    m("mmd", "::f2d")
    put("f2d/x.txt", b"x" * 100)
    m("mdeltree", "::d2f")
    put("d2f", b"now a file " * 100)
    m("mren", "::A long file name of many parts.txt", "::Another long name, ünïcødé.txt")
    m("mattrib", "+r", "::attr.txt")
    backup_image(chain, image)
    return chain


def test_fat32_moves_renames_over_swaps_and_directories(fat32):
    _assert_common(fat32_diff := forensics.diff(fat32, 0, 1, files=True))
    rows = _rows(fat32_diff)
    assert rows.loc["/Another long name, ünïcødé.txt", "old_path"] == \
        "/A long file name of many parts.txt"  # long names over 13 characters
    assert rows.loc["/attr.txt", "what_changed"] == "mode"  # read-only attribute


# ---------------------------------------------------------------- NTFS
@pytest.fixture(scope="module")
def ntfs(tmp_path_factory) -> Chain:
    require_module("pytsk3", "pytsk3")
    require_tools("mkntfs", "ntfs-3g", "umount")
    tmp = tmp_path_factory.mktemp("ntfs")
    image = tmp / "v.img"
    formatted(image, 24 << 20, "mkntfs", "-q", "-F", "-Q", "-c", "4096")
    mount = ["ntfs-3g", str(image)]
    chain = Chain.create(tmp / "chain")
    with mounted_with(mount, tmp / "m") as m:
        _common_start(m)
        (m / "case.txt").write_bytes(b"case only " * 100)
        (m / "hl_a").write_bytes(b"hard link " * 500)
        os.link(m / "hl_a", m / "hl_b")
        (m / "ads.txt").write_bytes(b"ads " * 100)
        (m / "old.txt").write_bytes(b"old")
        os.utime(m / "old.txt", (PRE_1970, PRE_1970))
        (m / "ns.txt").write_bytes(b"ns")
        os.utime(m / "ns.txt", ns=(1_700_000_000_000_000_100,) * 2)
    backup_image(chain, image)
    with mounted_with(mount, tmp / "m") as m:
        _common_change(m)
        (m / "case.txt").rename(m / "CASE.txt")
        (m / "hl_a").unlink()
        os.setxattr(m / "ads.txt", "user.hidden", b"a named stream")  # ntfs-3g: an ADS
    backup_image(chain, image)
    with mounted_with(mount, tmp / "m") as m:
        os.setxattr(m / "ads.txt", "user.hidden", b"a named STREAM")  # the same size
    backup_image(chain, image)
    return chain


def test_ntfs_moves_renames_over_swaps_and_directories(ntfs):
    _assert_common(forensics.diff(ntfs, 0, 1, files=True))


def test_ntfs_case_rename_links_streams_and_times(ntfs):
    rows = _rows(forensics.diff(ntfs, 0, 1, files=True))
    assert rows.loc["/CASE.txt", "change"] == "renamed"
    assert rows.loc["/CASE.txt", "old_path"] == "/case.txt"
    assert rows.loc["/hl_a", "change"] == "deleted"
    assert rows.loc["/ads.txt", "change"] == "modified"
    assert rows.loc["/ads.txt", "what_changed"] == "streams"
    entries = tsk.list_entries(ntfs.disk(1)).entries
    assert entries["/ads.txt"].streams == (
        ("hidden", len(b"a named stream"), hashlib.sha256(b"a named stream").hexdigest()),)
    assert entries["/old.txt"].mtime == PRE_1970  # TSK itself gives 0
    assert (entries["/ns.txt"].mtime, entries["/ns.txt"].mtime_ns) == (1_700_000_000, 100)
    rows = _rows(forensics.diff(ntfs, 1, 2, files=True))
    assert (rows.loc["/ads.txt", "change"], rows.loc["/ads.txt", "what_changed"]) == \
        ("modified", "streams")


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_fat_times_do_not_move_with_the_analysts_time_zone(fat32, zone, monkeypatch):
    """A FAT time is a wall clock with no zone: read as UTC on any machine."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        entries = tsk.list_entries(fat32.disk(1)).entries
    finally:
        monkeypatch.undo()
        time.tzset()
    assert entries["/stamped.txt"].mtime == FAT_STAMP
    assert entries["/far.txt"].mtime == FAT_FAR  # TSK itself gives 0 after 2037


# ------------------------------------------------- many files, no disk needed
def _entry(path: str, inode: int, size: int) -> tsk.Entry:
    import numpy as np

    return tsk.Entry(path, "file", inode, size, 100, 100, 100, 100, 0o644, 0, 0,
                     np.array([[inode << 16, (inode << 16) + size]], dtype=np.int64))


def test_replacement_index_finds_what_the_name_rule_finds():
    """The index of deleted files answers as :func:`forensics._replaces` over all."""
    import random

    rng = random.Random(7)
    stems = ["report", "a", "a.b", "budget", "x"]
    names = [rng.choice(stems) + rng.choice(["", ".txt", ".txt.locked", ".b", ".b.c"])
             for _ in range(60)]
    gone = {f"/{d}/{n}": _entry(f"/{d}/{n}", i, 100 + i)
            for i, (d, n) in enumerate((rng.choice("pq"), n) for n in names)}
    places = forensics._Places(gone)
    for i, name in enumerate(names):
        now = _entry(f"/p/{name}.new" if i % 3 else f"/q/{name}", 1000 + i, 50)
        expected = {e.path for e in gone.values() if forensics._replaces(now, e)}
        assert {e.path for e in places.named(now)} == expected


def test_thousands_of_deletes_and_creates_in_one_directory_take_no_pairwise_work(monkeypatch):
    """5000 files deleted and 5000 made in one directory (a wiper, a package upgrade):
    each created file is matched through the index, not against every deleted one."""
    from blockforensics.blockmap import BlockMap

    calls = 0
    rule = forensics._replaces

    def counted(new: tsk.Entry, old: tsk.Entry) -> bool:
        nonlocal calls
        calls += 1
        return rule(new, old)

    monkeypatch.setattr(forensics, "_replaces", counted)
    n = 5000
    a = {"/": _entry("/", 1, 0), **{f"/d/old{i}.txt": _entry(f"/d/old{i}.txt", 10 + i, 4096)
                                   for i in range(n)}}
    b = {"/": a["/"], **{f"/d/new{i}.txt": _entry(f"/d/new{i}.txt", 10 + n + i, 8192 + i)
                         for i in range(n)}}
    comparison = forensics._Comparison(None, None, BlockMap(8))
    comparison.compare(a, b)
    changes = pd.Series([r["change"] for r in comparison.rows]).value_counts()
    assert changes["created"] == changes["deleted"] == n
    assert calls <= 4 * n


# ------------------------------------------- FAT32 and exFAT by Linux's drivers
#: :func:`_common_change` in busybox sh, run in a guest on the mounted volume
GUEST_CHANGE = """
mv d1/mv.txt d2/mv.txt
mv rn.txt rn2.txt; echo appended >> rn2.txt
mv over_src.txt over_dst.txt
mv swap_a.txt swap.tmp; mv swap_b.txt swap_a.txt; mv swap.tmp swap_b.txt
mv dir_r dir_renamed
rm f2d; mkdir f2d; head -c 100 /init > f2d/x.txt
rm -r d2f; echo now a file > d2f
echo far > far.txt; touch -d '2100-06-01 12:00:02' far.txt
"""


@pytest.mark.slow
@pytest.mark.parametrize("fstype", ["vfat", "exfat"])
def test_linux_fat_drivers_moves_renames_over_swaps_and_directories(fstype, tmp_path):
    """The kernel's vfat and exfat drivers (booted in QEMU: none on the host) keep a
    renamed file's directory entry where it can — a swap leaves both entries in place
    with the other's clusters — so FAT identity is birth time and first cluster."""
    from sample_disks import GuestFill, fill_in_guest

    require_module("pytsk3", "pytsk3")
    require_tools("qemu-system-x86_64", "busybox", "cpio", "mkfs.vfat", "mkfs.exfat")
    tree, empty = tmp_path / "tree", tmp_path / "empty"
    tree.mkdir()
    empty.mkdir()
    _common_start(tree)
    image = tmp_path / "v.img"
    mkfs = ["mkfs.vfat", "-F", "32", "-s", "1"] if fstype == "vfat" else ["mkfs.exfat"]
    formatted(image, 64 << 20, *mkfs)
    chain = Chain.create(tmp_path / "chain")
    fill_in_guest([GuestFill(image, fstype, tree)], tmp_path)
    backup_image(chain, image)
    fill_in_guest([GuestFill(image, fstype, empty, script=GUEST_CHANGE)], tmp_path)
    backup_image(chain, image)
    result = forensics.diff(chain, 0, 1, files=True)
    _assert_common(result)
    rows = _rows(result)
    assert rows.loc["/rn2.txt", "change"] == "renamed"  # renamed and appended to
    assert rows.loc["/rn2.txt", "old_path"] == "/rn.txt"
    assert not result.files["path"].str.contains("$", regex=False).any()  # exFAT metadata
    far = tsk.list_entries(chain.disk(1)).entries["/far.txt"]
    assert far.mtime == FAT_FAR  # from the entry: TSK gives 0 after 2037
    if fstype == "exfat":  # a writer two hours east of UTC says so in the entry
        data = bytearray(image.read_bytes())
        entry = data.rfind(b"f\x00a\x00r\x00.\x00t\x00x\x00t\x00") - 2 - 64  # name, stream
        assert data[entry] == 0x85 and data[entry + 23] == 0x80  # valid, UTC+0 (the guest)
        data[entry + 23] = 0x80 | 8  # + 8 x 15 minutes
        image.write_bytes(bytes(data))
        backup_image(chain, image)
        assert tsk.list_entries(chain.disk(2)).entries["/far.txt"].mtime == FAT_FAR - 7200


@pytest.mark.parametrize("fs", ["ext", "fat"])
def test_a_freed_inode_or_cluster_reused_within_the_second_is_a_rename_only_by_content(fs):
    """Birth times in whole seconds (ext3, ext4 with 128-byte inodes; FAT by mtools):
    a file deleted and a new one given its inode or first cluster in the same second
    share every identity mark; their first bytes tell them apart.  Renamed and
    appended to, a file keeps them; renamed after itself (``a.txt.crypt``) and
    rewritten, its name tells."""
    import numpy as np

    from blockforensics.blockmap import BlockMap

    def entry(path: str, inode: int, content: bytes) -> tsk.Entry:
        return tsk.Entry(path, "file", inode, len(content), 100, 100, 100, 100, 0o644, 0, 0,
                         np.array([[8192, 8192 + len(content)]], dtype=np.int64),
                         resident=content, fs=fs)

    old = entry("/a.txt", 12, b"alpha " * 1000)
    inode = 12 if fs == "ext" else 40  # FAT: the new name is in another directory slot
    for name, content, renamed in (("/z.txt", b"zulu! " * 1000, False),
                                   ("/z.txt", b"alpha " * 1000 + b"more", True),
                                   ("/a.txt.crypt", b"\x8f\x1e" * 3000, True)):
        comparison = forensics._Comparison(None, None, BlockMap(8))
        comparison.compare({"/a.txt": old}, {name: entry(name, inode, content)})
        changes = {(r["path"], r["change"]) for r in comparison.rows}
        assert changes == ({(name, "renamed")} if renamed
                           else {(name, "created"), ("/a.txt", "deleted")})


def test_debugfs_history_a_freed_inode_handed_on_in_the_same_second(tmp_path):
    """debugfs writes whole-second times and hands a freed inode and its blocks to the
    next file: ``rm a.txt; write b.txt`` is a deletion and a creation, ``ln`` +
    ``unlink`` a rename."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "debugfs")
    image = tmp_path / "v.img"
    formatted(image, 8 << 20, "mkfs.ext4", "-q", "-F", "-O", "^has_journal")

    def debugfs(*commands: str) -> None:
        subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input="\n".join(commands),
                       text=True, check=True, capture_output=True)

    for name, content in (("a", b"alpha " * 700), ("b", b"bravo " * 700),
                          ("m", b"moved " * 700)):
        (tmp_path / name).write_bytes(content)
    debugfs(f"write {tmp_path / 'a'} a.txt", f"write {tmp_path / 'm'} m.txt")
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    debugfs("rm a.txt", f"write {tmp_path / 'b'} b.txt", "ln m.txt moved.txt", "unlink m.txt")
    backup_image(chain, image)
    listed = {p: forensics.list_files(chain.disk(p)).set_index("path") for p in (0, 1)}
    assert listed[0].loc["/a.txt", "inode"] == listed[1].loc["/b.txt", "inode"]  # handed on
    rows = _rows(forensics.diff(chain, 0, 1, files=True))
    assert (rows.loc["/a.txt", "change"], rows.loc["/b.txt", "change"]) == ("deleted", "created")
    assert (rows.loc["/moved.txt", "change"], rows.loc["/moved.txt", "old_path"]) == \
        ("renamed", "/m.txt")


def test_fat_case_only_rename_is_a_rename(tmp_path):
    """Linux's vfat takes ``mv case.txt CASE.txt`` for a rename onto itself and mtools
    refuses it; Windows writes the case into the entry's NT flags (byte 12: 0x08 base
    lower case, 0x10 extension lower case), as done here by hand."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.vfat", "mcopy")
    image = tmp_path / "v.img"
    formatted(image, 40 << 20, "mkfs.vfat", "-F", "32", "-s", "1")
    (tmp_path / "src").write_bytes(b"case " * 300)
    subprocess.run(["mcopy", "-i", str(image), str(tmp_path / "src"), "::case.txt"],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    data = bytearray(image.read_bytes())
    entry = data.find(b"CASE    TXT")
    assert data[entry + 12] == 0x18  # "case.txt"
    data[entry + 12] = 0x10  # "CASE.txt"
    image.write_bytes(bytes(data))
    backup_image(chain, image)
    rows = _rows(forensics.diff(chain, 0, 1, files=True))
    assert (rows.loc["/CASE.txt", "change"], rows.loc["/CASE.txt", "old_path"]) == \
        ("renamed", "/case.txt")
    assert "/case.txt" not in rows.index


def test_a_tree_deeper_than_pythons_recursion_limit_is_listed(tmp_path):
    """1 500 nested directories (a path of 3 000 characters, within PATH_MAX): the walk
    used to recurse once per level and stopped with a RecursionError."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "mount", "umount")
    _root()
    image = tmp_path / "v.img"
    formatted(image, 16 << 20, "mkfs.ext4", "-q", "-F", "-O", "^has_journal")
    depth = 1500
    with mounted_with(["mount", "-o", "loop", str(image)], tmp_path / "m") as m:
        fd = os.open(m, os.O_RDONLY)
        for _ in range(depth):  # by descriptor: the path soon outgrows what one call takes
            os.mkdir("d", dir_fd=fd)
            fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
        with open(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as fh:
            fh.write(b"deep")
        os.close(fd)
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    rows = _rows(forensics.diff(chain, None, 0, files=True))
    bottom = "/d" * depth + "/bottom.txt"
    assert rows.loc[bottom, "change"] == "created"
    assert rows.loc["/d" * depth, "type"] == "dir"

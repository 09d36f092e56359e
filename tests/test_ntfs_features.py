"""NTFS features as investigators meet them, made by mkntfs and ntfs-3g and checked
against The Sleuth Kit (``icat``, ``istat``) and the bytes written: compressed files
(LZNT1) read as their content, a named stream's blocks owned by its file, hard links
one row per MFT record, an 8.3 short name no second link, Interix symbolic links and
junctions listed with their targets."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import backup_image, bf_ok, formatted, mounted_with, require_module, require_tools

from blockforensics import forensics, timeline_formats, triage, tsk
from blockforensics.evidence import ByteStats
from blockforensics.image.chain import Chain

TEXT = b"".join(b"line %d of a compressible report\n" % i for i in range(9000))
RANDOM = np.random.default_rng(7).bytes(200_000)  # its last compression unit compressed
STREAM = b"stream data " * 5000  # a named stream of 60,000 bytes: non-resident
#: ntfs-3g's attribute flags (big-endian) and reparse data extended attributes
ATTRIB = "system.ntfs_attrib_be"
REPARSE = "system.ntfs_reparse_data"
FILE_ATTRIBUTE_COMPRESSED = 0x800


def _junction(target: str) -> bytes:
    """A junction's reparse data ([MS-FSCC] 2.1.2.5): substitute and print names."""
    sub, shown = f"\\??\\{target}".encode("utf-16-le"), target.encode("utf-16-le")
    names = struct.pack("<HHHH", 0, len(sub), len(sub) + 2, len(shown)) \
        + sub + b"\0\0" + shown + b"\0\0"
    return struct.pack("<IHH", 0xA0000003, len(names), 0) + names


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Chain, Path, dict]:
    """Two points of a 4 KiB-cluster volume; and the image (as at point 1) and what
    ntfs-3g reads at point 0: a symbolic link's target, a short-named file's links."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkntfs", "ntfs-3g", "umount", "icat", "istat", "fsstat", "fls")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    tmp = tmp_path_factory.mktemp("ntfs")
    image = tmp / "v.img"
    formatted(image, 24 << 20, "mkntfs", "-q", "-F", "-Q", "-c", "4096")
    # posix_nlink: links counted as POSIX does (else ntfs-3g counts a short name too)
    mount = ["ntfs-3g", "-o", "compression,posix_nlink", str(image)]
    chain = Chain.create(tmp / "chain")
    with mounted_with(mount, tmp / "m") as m:
        (m / "comp").mkdir()
        os.setxattr(m / "comp", ATTRIB, FILE_ATTRIBUTE_COMPRESSED.to_bytes(4, "big"))
        (m / "comp/text.txt").write_bytes(TEXT)
        (m / "comp/rand.bin").write_bytes(RANDOM)
        (m / "ads.txt").write_bytes(b"main stream")
        os.setxattr(m / "ads.txt", "user.big", STREAM)
        (m / "hl1").write_bytes(b"linked " * 2000)
        os.link(m / "hl1", m / "hl2")
        os.link(m / "hl1", m / "hl3")
        os.symlink("comp/text.txt", m / "ilink")
        (m / "junc").mkdir()
        os.setxattr(m / "junc", REPARSE, _junction("C:\\Users\\Public"))
        (m / "small.txt").write_bytes(b"resident v1")  # in its MFT record
        (m / "Long file name.txt").write_bytes(b"a long name and a short one")
        os.setxattr(m / "Long file name.txt", "system.ntfs_dos_name", b"LONGFI~1.TXT")
        links = {"/ilink": os.readlink(m / "ilink"),
                 "nlink": (m / "Long file name.txt").stat().st_nlink}
    backup_image(chain, image)
    with mounted_with(mount, tmp / "m") as m:
        with (m / "comp/text.txt").open("r+b") as fh:
            fh.seek(100_000)
            fh.write(b"EDITED IN PLACE")
        os.setxattr(m / "ads.txt", "user.big", STREAM.upper())  # the same size
        with (m / "hl2").open("r+b") as fh:
            fh.write(b"LINKED")
        (m / "small.txt").write_bytes(b"resident v2")
    backup_image(chain, image)
    return chain, image, links


def _edited(data: bytes) -> bytes:
    return data[:100_000] + b"EDITED IN PLACE" + data[100_015:]


def test_compressed_files_are_read_as_their_content(zoo):
    """Their data runs hold LZNT1 units; the listing, the timeline's hashes and the
    entropy are of the content (as ``icat`` and ntfs-3g read it), not of those."""
    chain, image, _ = zoo
    for point, text in ((0, TEXT), (1, _edited(TEXT))):
        entries = tsk.list_entries(chain.disk(point)).entries
        for path, data in (("/comp/text.txt", text), ("/comp/rand.bin", RANDOM)):
            assert entries[path].unit and entries[path].read(chain.disk(point)) == data, path
    entries = tsk.list_entries(chain.disk(1)).entries
    icat = subprocess.run(["icat", str(image), str(entries["/comp/text.txt"].inode)],
                          capture_output=True, check=True).stdout
    assert icat == _edited(TEXT)
    versions = timeline_formats.file_versions(chain).set_index(["point", "path"])
    assert versions.loc[(0, "/comp/text.txt"), "sha256"] == hashlib.sha256(TEXT).hexdigest()
    assert versions.loc[(1, "/comp/text.txt"), "sha256"] == hashlib.sha256(icat).hexdigest()
    row = forensics.diff(chain, 0, 1, files=True).files.set_index("path").loc["/comp/text.txt"]
    assert row["change"] == "modified" and "content" in row["what_changed"]
    stats = ByteStats()
    stats.update(icat)
    assert row["entropy_after"] == pytest.approx(stats.finish().entropy)


def _stream_clusters(image: Path, inode: int, name: str) -> list[int]:
    """The clusters ``istat`` lists for a file's named, non-resident ``$DATA``."""
    text = subprocess.run(["istat", str(image), str(inode)], capture_output=True, text=True,
                          check=True).stdout
    block = re.search(rf"Type: \$DATA \(128-\d+\)\s+Name: {re.escape(name)}\s+"
                      r"Non-Resident[^\n]*\n"
                      r"((?:[\d ]+\n)+)", text)
    assert block is not None, text
    return [int(n) for n in block.group(1).split()]


def test_a_named_streams_changed_blocks_are_its_files(zoo):
    chain, image, _ = zoo
    result = forensics.diff(chain, 0, 1, files=True)
    rows = result.files.set_index("path")
    assert (rows.loc["/ads.txt", "change"], rows.loc["/ads.txt", "what_changed"]) == \
        ("modified", "streams")
    inode = int(rows.loc["/ads.txt", "inode"])
    clusters = _stream_clusters(image, inode, "big")
    assert len(clusters) == -(-len(STREAM) // 4096)
    assert result.block_size == 4096  # one cluster per block
    assert all(result.owner_of(c) == ["/ads.txt"] for c in clusters)  # rewritten: changed


def _mft_clusters(image: Path) -> tuple[list[int], int]:
    """``$MFT``'s clusters in file order (``istat``) and its record size (``fsstat``)."""
    size = re.search(r"Size of MFT Entries: (\d+) bytes", subprocess.run(
        ["fsstat", str(image)], capture_output=True, text=True, check=True).stdout)
    assert size is not None
    return _stream_clusters(image, 0, "N/A"), int(size.group(1))


def test_a_resident_files_changed_block_is_its_mft_records(zoo):
    """Its data lives in its MFT record: the changed block holding the record is its."""
    chain, image, _ = zoo
    result = forensics.diff(chain, 0, 1, files=True)
    rows = result.files.set_index("path")
    assert rows.loc["/small.txt", "change"] == "modified"
    clusters, record = _mft_clusters(image)
    at = int(rows.loc["/small.txt", "inode"]) * record
    block = clusters[at // 4096]  # 4 KiB clusters, one block each
    assert block in set(result.changed_map().positions().tolist())
    assert "/small.txt" in result.owner_of(block)


def test_hard_links_are_one_row_per_mft_record(zoo):
    chain, _, _ = zoo
    files = forensics.diff(chain, 0, 1, files=True).files
    linked = files[files["path"].isin(["/hl1", "/hl2", "/hl3"])]
    assert len(linked) == 1, linked
    row = linked.iloc[0]
    assert row["change"] == "modified" and "content" in row["what_changed"]
    assert sorted([row["path"], *row["other_paths"]]) == ["/hl1", "/hl2", "/hl3"]
    assert any("hard links" in e for e in row["evidence"])


def test_a_short_name_is_no_hard_link(zoo):
    """A long name with its 8.3 short name (two ``$FILE_NAME`` attributes; the record
    header counts both, and TSK gives that) is one name, as ntfs-3g's ``posix_nlink``
    counts."""
    chain, image, mounted = zoo
    entries = tsk.list_entries(chain.disk(0)).entries
    named = [p for p, e in entries.items() if e.inode == entries["/Long file name.txt"].inode]
    assert named == ["/Long file name.txt"]
    assert entries["/Long file name.txt"].nlink == mounted["nlink"] == 1
    assert entries["/hl1"].nlink == 3
    istat = subprocess.run(["istat", str(image), str(entries["/Long file name.txt"].inode)],
                           capture_output=True, text=True, check=True).stdout
    assert "Links: 2" in istat  # what TSK's own count says


def test_interix_links_and_junctions_are_links_to_their_targets(zoo):
    chain, _, links = zoo
    entries = tsk.list_entries(chain.disk(0)).entries
    link, junction = entries["/ilink"], entries["/junc"]
    assert (link.kind, link.resident, link.size) == \
        ("symlink", links["/ilink"].encode(), len(links["/ilink"]))
    assert (junction.kind, junction.type, junction.resident) == \
        ("symlink", "file", b"C:\\Users\\Public")


def test_the_full_points_timeline_names_what_fls_names(zoo):
    """Every name (each hard link), every named stream (``path:name``) and every
    ``$FILE_NAME`` (``path ($FILE_NAME)``) of point 0 is a version with the size and MACB
    times ``fls -r -m`` (TSK's body file) gives it (a link's size: its target's length);
    a stream's hash is its own."""
    chain, _, _ = zoo
    restored = Path(chain.directory).parent / "p0.img"
    bf_ok("restore", chain.directory, restored, "--point", "0")
    body = subprocess.run(["fls", "-r", "-m", "", str(restored)], capture_output=True,
                          text=True, check=True).stdout
    theirs = {}
    for line in body.splitlines():
        _, name, _, _, _, _, size, *times = line.split("|")
        parts = name.removesuffix(" ($FILE_NAME)").split("/")
        if not any(part.startswith("$") for part in parts):  # NTFS's own files
            theirs[name] = (int(size), *map(int, times))
    versions = timeline_formats.file_versions(chain)
    ours = versions[(versions["point"] == 0) & ~versions["path"].str.startswith("/ ")]
    ours = ours[ours["path"] != "/"].set_index("path")
    assert set(ours.index) == set(theirs)
    for path, (size, *times) in theirs.items():
        row = ours.loc[path]
        assert [row["atime"], row["mtime"], row["ctime"], row["crtime"]] == times, path
        assert row["size"] == size or row["kind"] == "symlink", path
    stream = ours.loc["/ads.txt:big"]
    assert (stream["size"], stream["sha256"], stream["kind"]) == \
        (len(STREAM), hashlib.sha256(STREAM).hexdigest(), "stream")
    later = versions[versions["point"] == 1].set_index("path")
    assert later.loc["/ads.txt:big", "sha256"] == hashlib.sha256(STREAM.upper()).hexdigest()
    assert {"/hl1", "/hl2", "/hl3"} <= set(later.index)  # one diff row, three names


def test_compressed_text_is_no_evidence(zoo):
    """Compressed text was judged by its LZNT1 bytes ("content of no known format"), so
    every point that wrote one was suspicious; the zoo's changes are all benign."""
    result = triage.triage(zoo[0])
    assert [p.verdict for p in result.points] == ["clean", "clean"], \
        [p.reasons for p in result.points]


def test_extract_writes_a_named_stream(zoo, tmp_path):
    """``extract`` of ``file:stream`` (as the timeline names it) writes the stream (TSK's
    lookup of that path opens the file, whose default stream was written)."""
    chain = zoo[0]
    for point, data in (("0", STREAM), ("1", STREAM.upper())):
        bf_ok("extract", chain.directory, point, "/ads.txt:big", tmp_path / point)
        assert (tmp_path / point).read_bytes() == data
    bf_ok("extract", chain.directory, "0", "/ads.txt", tmp_path / "main")
    assert (tmp_path / "main").read_bytes() == b"main stream"


def test_names_of_one_file_renamed_deleted_or_added(tmp_path):
    """Two names of one file renamed in one interval pair by name (they paired crosswise,
    ``b_new`` from ``c``); a file deleted with both its names is one row; a name added
    is the name created and the file's links modified (one row for its two names)."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkntfs", "ntfs-3g", "umount")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image = tmp_path / "v.img"
    formatted(image, 8 << 20, "mkntfs", "-q", "-F", "-Q")
    chain = Chain.create(tmp_path / "chain")
    with mounted_with(["ntfs-3g", str(image)], tmp_path / "m") as m:
        for first, *others in (("a", "b", "c"), ("x", "y"), ("z", "z2")):
            (m / first).write_bytes(first.encode() * 5000)
            for other in others:
                os.link(m / first, m / other)
    backup_image(chain, image)
    with mounted_with(["ntfs-3g", str(image)], tmp_path / "m") as m:
        (m / "b").rename(m / "b_new")
        (m / "c").rename(m / "c_new")
        os.link(m / "x", m / "x_third")
        (m / "z").unlink()
        (m / "z2").unlink()
    backup_image(chain, image)
    rows = forensics.diff(chain, 0, 1, files=True).files.set_index("path")
    assert {p: rows.loc[p, "old_path"] for p in ("/b_new", "/c_new")} == \
        {"/b_new": "/b", "/c_new": "/c"}
    assert (rows.loc["/z", "change"], rows.loc["/z", "other_paths"]) == ("deleted", ["/z2"])
    assert "/z2" not in rows.index
    assert (rows.loc["/x", "what_changed"], rows.loc["/x", "other_paths"]) == ("links", ["/y"])
    assert rows.loc["/x_third", "change"] == "created"


@pytest.mark.parametrize("native", [True, False])
def test_lznt1_units_decode_as_dissect_decodes_them(zoo, native, monkeypatch):
    """The C decoder against an independent one (dissect.util's), on every compressed
    unit of the volume; a unit cut short or damaged yields the bytes before the damage,
    never more than the unit, and no error.  Without the extension (not built, or built
    from an older source) dissect's decoder serves, damaged units yielding nothing."""
    lznt1 = require_module("dissect.util.compression.lznt1", "dissect.util")
    from blockforensics import batch
    from blockforensics.fs.ntfs import _lznt1, _split

    if not native:
        monkeypatch.setattr(batch, "native", None)

    chain = zoo[0]
    disk = chain.disk(1)
    units = []
    for entry in tsk.list_entries(disk).entries.values():
        if entry.unit:
            extents, offsets = _split(entry.extents, entry.offsets, entry.unit)
            which = offsets // entry.unit
            units += [b"".join(disk.read(int(a), int(b - a)) for a, b in extents[which == k])
                      for k in np.unique(which)]
    compressed = [u for u in units if len(u) < 65536]
    assert len(compressed) >= 5
    for unit in compressed:
        assert _lznt1(unit, 65536) == lznt1.decompress(unit)[:65536]
    whole = _lznt1(compressed[0], 65536)
    assert whole.startswith(_lznt1(compressed[0][:1000], 65536))
    damaged = bytearray(compressed[0])
    damaged[600] ^= 0xFF
    assert len(_lznt1(bytes(damaged), 65536)) <= 65536
    assert len(_lznt1(compressed[0], 100)) == 100

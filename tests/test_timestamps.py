"""Every file system's times as the kernel reads them (``stat`` of the mounted volume) or,
where the kernel does not mount it here, as The Sleuth Kit's ``istat``/``fls -m`` and
the on-disk specification give them: far and old dates, nanoseconds, missing times;
and the timeline formats carrying them whole."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from support import backup_image, loop_device, mounted_with, require_module, require_tools

from blockforensics import timeline_formats, tsk
from blockforensics.fs.sleuthkit import exfat_set_checksum
from blockforensics.image.chain import Chain

#: name: ``touch -d`` date (UTC); atime set apart with ``touch -a``
TIMES = {
    "ns.txt": "2023-11-14 22:13:20.123456789",
    "old.txt": "1960-06-29 12:00:00.5",  # before 1970, with a fraction
    "y1901.txt": "1902-01-01 00:00:00",
    "y2040.txt": "2040-01-01 00:00:01.75",  # past 2^31 seconds
    "y2110.txt": "2110-01-01 00:00:00.25",  # past 2^32: ext4's epoch bits without a sign
    "y2200.txt": "2200-01-01 00:00:00",
}
ATIME = "2030-05-05 05:05:05.999999999"
#: file system: (mkfs command, mount command: a loop mount when empty)
VOLUMES: dict[str, tuple[list[str], list[str]]] = {
    "ext4": (["mkfs.ext4", "-q", "-F", "-I", "256"], []),
    "ext2": (["mkfs.ext4", "-q", "-F", "-t", "ext2", "-I", "128"], []),  # no extra fields
    "xfs": (["mkfs.xfs", "-q", "-f", "-m", "bigtime=1"], []),
    "xfs-legacy": (["mkfs.xfs", "-q", "-f", "-m", "bigtime=0"], []),  # 32-bit seconds
    "btrfs": (["mkfs.btrfs", "-q", "-f"], []),
    "ntfs": (["mkntfs", "-q", "-F", "-f"], ["ntfs-3g"]),
}
SIZES = {"xfs": 300 << 20, "xfs-legacy": 300 << 20, "btrfs": 120 << 20}


def _volume(tmp: Path, kind: str, fill: Callable[[Path], None]
            ) -> tuple[Path, dict[str, os.stat_result], dict[str, int]]:
    """A volume of ``kind`` filled by ``fill`` (mounted), then each file's ``stat`` and
    birth time (statx; whole seconds, 0: none) read from the volume mounted again (the
    kernel's in-memory inode can hold what the disk cannot, e.g. 2110 in a 128-byte ext
    inode)."""
    mkfs, options = VOLUMES[kind]
    require_tools(mkfs[0], options[0] if options else "mount")
    image = tmp / f"{kind}.img"
    with image.open("wb") as fh:
        fh.truncate(SIZES.get(kind, 16 << 20))
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    mount = options or ["mount", "-o", "loop"]
    with mounted_with([*mount, str(image)], tmp / "m") as m:
        fill(m)
    with mounted_with([*mount, "-o", "ro", str(image)], tmp / "m") as m:
        stats = {p.name: os.stat(p, follow_symlinks=False) for p in m.iterdir()
                 if p.suffix == ".txt"}
        births = subprocess.run(["stat", "-c", "%W %n", *sorted(stats)], cwd=m, check=True,
                                capture_output=True, text=True).stdout if stats else ""
    return image, stats, {name: int(when) for when, name in
                          (line.split(" ", 1) for line in births.splitlines())}


def _touch_all(m: Path) -> None:
    for name, when in TIMES.items():
        (m / name).write_bytes(name.encode())
        subprocess.run(["touch", "-d", f"{when} UTC", str(m / name)], check=True,
                       env={**os.environ, "TZ": "UTC"})
    (m / "atime.txt").write_bytes(b"atime")
    subprocess.run(["touch", "-a", "-d", f"{ATIME} UTC", str(m / "atime.txt")], check=True)


def _chain(tmp: Path, image: Path) -> Chain:
    chain = Chain.create(tmp / "chain")
    backup_image(chain, image)
    return chain


def _ours(entry: tsk.Entry, name: str) -> int:
    """Time ``name`` (atime, mtime, ctime) of ``entry`` in nanoseconds since the epoch."""
    return getattr(entry, name) * 10**9 + getattr(entry, f"{name}_ns")


@pytest.mark.parametrize("kind", [k for k in VOLUMES if k != "ntfs"])
def test_times_are_those_the_kernel_reads(tmp_path: Path, kind: str) -> None:
    """Before 1970, past 2038, 2106 and 2200 and to the nanosecond: each listed time, and
    the Timesketch event's microseconds, are the kernel's ``stat`` of the volume."""
    require_module("pytsk3", "pytsk3")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image, stats, births = _volume(tmp_path, kind, _touch_all)
    with _chain(tmp_path, image) as chain:
        entries = tsk.list_entries(chain.disk(0)).entries
        for name, st in stats.items():
            entry = entries[f"/{name}"]
            for column in ("atime", "mtime", "ctime"):
                assert _ours(entry, column) == getattr(st, f"st_{column}_ns"), (name, column)
            assert entry.crtime == births[name], name  # ext2: none, 0
        out = io.StringIO()
        timeline_formats.write_jsonl(timeline_formats.file_versions(chain), out)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    modified = {e["path"]: e for e in events if e["timestamp_desc"] == "Content Modification Time"}
    for name, st in stats.items():
        assert modified[f"/{name}"]["timestamp"] == st.st_mtime_ns // 1000, name
    fraction = ".123456" if stats["ns.txt"].st_mtime_ns % 10**9 else ""  # ext2: seconds
    assert modified["/ns.txt"]["datetime"] == f"2023-11-14T22:13:20{fraction}+00:00"


#: 100 ns intervals from 1601-01-01 to 1970-01-01
FILETIME_EPOCH = 116_444_736_000_000_000
YEAR_30000 = 884541340800  # 30000-01-01 UTC, seconds since the epoch


def _filetime(seconds: int, ticks: int = 0) -> int:
    return (seconds * 10**7 + FILETIME_EPOCH) + ticks


def _ntfs_times(m: Path) -> None:
    """Raw FILETIMEs through ntfs-3g's ``system.ntfs_times`` (creation, modification,
    access): a zero creation time, year 30000, and 1960 to 100 ns."""
    cases = {"zero.txt": (0, _filetime(1_700_000_000, 1234567), _filetime(1_700_000_000)),
             "far.txt": (_filetime(1_000_000_000),) + (_filetime(YEAR_30000, 5),) * 2,
             "old.txt": (_filetime(1_000_000_000),) + (_filetime(-300_024_000, 1),) * 2}
    for name, times in cases.items():
        (m / name).write_bytes(name.encode())
        os.setxattr(m / name, "system.ntfs_times", struct.pack("<3Q", *times))


def test_ntfs_times_zero_far_and_before_1970(tmp_path: Path) -> None:
    """A zero FILETIME is no time (0 in the body file, no event, no DFXML element); year
    30000 and 1960 to 100 ns are ntfs-3g's ``stat`` and reach every format."""
    require_module("pytsk3", "pytsk3")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image, stats, _ = _volume(tmp_path, "ntfs", _ntfs_times)
    with _chain(tmp_path, image) as chain:
        entries = tsk.list_entries(chain.disk(0)).entries
        versions = timeline_formats.file_versions(chain)
    for name in ("far.txt", "zero.txt"):
        for column in ("atime", "mtime"):
            assert _ours(entries[f"/{name}"], column) == getattr(stats[name], f"st_{column}_ns")
    # ntfs-3g truncates before 1970 toward zero (-300023999 s); FILETIME counts up from 1601
    assert _ours(entries["/old.txt"], "mtime") == -300_024_000 * 10**9 + 100
    assert (entries["/zero.txt"].crtime, entries["/zero.txt"].crtime_ns) == (0, 0)
    outputs = _written(versions)
    body = _body(outputs["bodyfile"])
    assert body["/zero.txt"][8] == "0" and body["/far.txt"][6] == str(YEAR_30000)
    events = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert not [e for e in events
                if e["path"] == "/zero.txt" and e["timestamp_desc"] == "Creation Time"]
    far = [e for e in events
           if e["path"] == "/far.txt" and e["timestamp_desc"] == "Content Modification Time"]
    assert far[0]["datetime"] == "30000-01-01T00:00:00+00:00"
    assert far[0]["timestamp"] == YEAR_30000 * 10**6
    old = [e for e in events
           if e["path"] == "/old.txt" and e["timestamp_desc"] == "Content Modification Time"]
    assert old[0]["datetime"] == "1960-06-29T12:00:00+00:00"  # 100 ns: under a microsecond
    assert '<mtime>1960-06-29T12:00:00.0000001+00:00</mtime>' in outputs["dfxml"]
    assert "01/01/30000" in outputs["l2tcsv"]


# ------------------------------------------------------------- FAT and exFAT
WRITER_ZONE = "Asia/Kolkata"  # +05:30: no whole-hour offset hides a mistake
#: name: UTC time (seconds) of its modification, as written by a clock in WRITER_ZONE
FAT_TIMES = {
    "kolkata.txt": 1_577_853_000,  # 2020-01-01 04:30 UTC, 10:00 on the writer's clock
    "A long file name, past 8.3.txt": 1_594_105_626,
    "y2040.txt": 2_208_988_800,  # TSK gives 0 past 2037
    "y2107.txt": 4_354_799_398,  # 2107-12-31 23:59:58 on the writer's clock: FAT's last
}


def _body(text: str) -> dict[str, list[str]]:
    """A body file's records by name (ours without their "(point N, CHANGE)"): inode,
    mode, uid, gid, size, atime, mtime, ctime, crtime."""
    records = (line.split("|") for line in text.splitlines())
    return {r[1].split(" (point ")[0]: r[2:] for r in records}


def _written(versions) -> dict[str, str]:
    """``versions`` written in every timeline format, by format name."""
    outputs = {}
    for fmt, writer in timeline_formats.FORMATS.items():
        out = io.StringIO()
        writer(versions, out)
        outputs[fmt] = out.getvalue()
    return outputs


def _fls_body(image: Path, zone: str) -> dict[str, list[str]]:
    return _body(subprocess.run(["fls", "-r", "-m", "/", "-z", zone, str(image)],
                                check=True, capture_output=True, text=True).stdout)


def _cli_body(chain: Path, *options: str) -> tuple[dict[str, list[str]], str]:
    """Our body file of ``chain`` through the command line; and its stderr."""
    done = subprocess.run([sys.executable, "-m", "blockforensics", "timeline", str(chain),
                           "--format", "bodyfile", *options],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return _body(done.stdout), done.stderr


@pytest.mark.parametrize("bits", [12, 32])  # a fixed root directory, one in clusters
def test_fat_times_are_the_writers_clock_read_in_the_zone_given(tmp_path: Path, bits: int
                                                                 ) -> None:
    """mtools under TZ=Asia/Kolkata writes its wall clock; ``--timezone`` reads it as
    ``fls -z`` does (the body records equal TSK's), the default (UTC) says so; past
    2037 (TSK: 0) to 2107; the creation time's 10 ms field (up to 1.99 s); a zero
    creation date is no time."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.fat", "mcopy", "mdel", "fls")
    image = tmp_path / "fat.img"
    with image.open("wb") as fh:
        fh.truncate({12: 4, 16: 40, 32: 64}[bits] << 20)
    subprocess.run(["mkfs.fat", "-F", str(bits), str(image)], check=True, capture_output=True)
    env = {**os.environ, "TZ": WRITER_ZONE, "MTOOLS_SKIP_CHECK": "1"}
    for name, when in FAT_TIMES.items():
        source = tmp_path / name
        source.write_bytes(name.encode())
        os.utime(source, (when, when))
        subprocess.run(["mcopy", "-m", "-i", str(image), str(source), "::/"], check=True,
                       env=env, capture_output=True)
    gone = tmp_path / "gone for good.txt"  # deleted: its entry's first byte 0xE5
    gone.write_bytes(b"gone")
    os.utime(gone, (FAT_TIMES["y2107.txt"],) * 2)
    for command in (["mcopy", "-m", "-i", str(image), str(gone), "::/"],
                    ["mdel", "-i", str(image), f"::/{gone.name}"]):
        subprocess.run(command, check=True, env=env, capture_output=True)
    raw = bytearray(image.read_bytes())
    at = raw.index(b"KOLKATA TXT")
    raw[at + 13] = 199  # CrtTimeTenth: 1.99 s past the even second
    at = raw.index(b"Y2040   TXT")
    raw[at + 14 : at + 18] = bytes(4)  # no creation time and date
    at = raw.index(b"ALONGF~1TXT")  # the long name's short entry: its write time
    raw[at + 22 : at + 24] = (25 << 11 | 61 << 5 | 31).to_bytes(2, "little")  # 25:61:62
    image.write_bytes(raw)

    _chain(tmp_path, image).close()
    ours, note = _cli_body(tmp_path / "chain", "--timezone", WRITER_ZONE)
    theirs = _fls_body(image, WRITER_ZONE)
    long_name = "/A long file name, past 8.3.txt"
    assert ours[long_name] == theirs[long_name]  # hour 25, minute 61, second 62: 0, as TSK
    kolkata = 19_800  # +05:30, in seconds
    midnight = (FAT_TIMES[long_name[1:]] + kolkata) // 86400 * 86400 - kolkata
    assert int(ours[long_name][6]) == midnight  # its date, at 00:00:00 there
    for name, when in FAT_TIMES.items():
        if f"/{name}" == long_name:
            continue
        assert int(ours[f"/{name}"][6]) == when, name
        if when < 2_145_916_800:  # TSK reads to 2037
            assert ours[f"/{name}"] == theirs[f"/{name}"], name
        else:
            assert theirs[f"/{name}"][6] == "0"
    assert int(ours["/kolkata.txt"][8]) == FAT_TIMES["kolkata.txt"] + 1
    assert ours["/y2040.txt"][8] == "0"
    assert f"read as {WRITER_ZONE}" in note
    with Chain.open(tmp_path / "chain") as chain:
        entry = tsk.list_entries(chain.disk(0)).entries["/kolkata.txt"]
        found = tsk.find_deleted(chain.disk(0), "/gone for good.txt")
        assert found is not None and found[1] == b"gone"
        assert found[0].mtime == FAT_TIMES["y2107.txt"] + kolkata  # read as UTC; TSK: 0
        utc = timeline_formats.file_versions(chain).set_index("path")
    assert entry.crtime_ns == 990_000_000 and entry.wall_clock == ("mtime", "atime", "crtime")
    assert utc.loc["/kolkata.txt", "mtime"] == FAT_TIMES["kolkata.txt"] + kolkata
    assert "read as UTC (--timezone to choose)" in str(timeline_formats.zone_note(utc))
    out = io.StringIO()
    timeline_formats.write_dfxml(utc.reset_index(), out)
    ns = f"{{{timeline_formats.DFXML_NS}}}"
    kolkata = next(obj for obj in ET.fromstring(out.getvalue()).iter(f"{ns}fileobject")
                   if obj.findtext(f"{ns}filename") == "/kolkata.txt")
    assert kolkata.find(f"{ns}mtime").get("prec") == "2"  # 2-second steps
    assert kolkata.find(f"{ns}atime").get("prec") == "86400"  # a date alone
    assert kolkata.find(f"{ns}crtime").text == "2020-01-01T10:00:01.99+00:00"


def _checksummed(raw: bytearray, at: int) -> None:
    """The SetChecksum of the exFAT entry set at byte ``at`` of ``raw`` written again, as
    the writer of the entries (a camera, an old driver) writes it."""
    size = (raw[at + 1] + 1) * 32  # SecondaryCount + 1 entries
    raw[at + 2 : at + 4] = exfat_set_checksum(raw[at : at + size]).to_bytes(2, "little")


def test_exfat_utc_offsets_and_a_clock_without_one(tmp_path: Path) -> None:
    """exfat-fuse under TZ=Asia/Kolkata writes its wall clock and the +05:30 offset
    (valid): the times are exfat-fuse's own ``stat`` whatever ``--timezone`` says, and
    TSK's when told the writer's zone (it ignores the offset); an entry whose offsets
    are not valid (cameras, old drivers) is read in the zone given, as ``fls -z``."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.exfat", "mount.exfat-fuse", "losetup", "fls")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image = tmp_path / "exfat.img"
    with image.open("wb") as fh:
        fh.truncate(8 << 20)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    names = ("kolkata.txt", "no offset.txt")
    with loop_device(image) as device:
        with mounted_with(["env", f"TZ={WRITER_ZONE}", "mount.exfat-fuse", device],
                          tmp_path / "m") as m:
            for name in names:
                (m / name).write_bytes(b"x")
                os.utime(m / name, (FAT_TIMES["kolkata.txt"],) * 2)
        with mounted_with(["env", "TZ=America/St_Johns", "mount.exfat-fuse", device],
                          tmp_path / "m") as m:  # -03:30: a negative offset
            (m / "st johns.txt").write_bytes(b"x")
            os.utime(m / "st johns.txt", (FAT_TIMES["kolkata.txt"],) * 2)
        with mounted_with(["env", "TZ=America/New_York", "mount.exfat-fuse", "-o", "ro",
                           device], tmp_path / "m") as m:
            stats = {name: os.stat(m / name) for name in (*names, "st johns.txt")}
    raw = bytearray(image.read_bytes())
    name_entry = raw.index("no offset".encode("utf-16-le")) - 2  # in the file name entry
    raw[name_entry - 64 + 22 : name_entry - 64 + 25] = bytes(3)  # the file entry's offsets
    _checksummed(raw, name_entry - 64)
    name_entry = raw.index("kolkata".encode("utf-16-le")) - 2
    raw[name_entry - 64 + 21] = 150  # LastModified10msIncrement: 1.5 s past the even second
    _checksummed(raw, name_entry - 64)
    image.write_bytes(raw)

    with _chain(tmp_path, image) as chain:
        for zone in ("UTC", "Europe/Berlin"):
            versions = timeline_formats.file_versions(chain, zone=zone).set_index("path")
            for name, column in itertools.product(("kolkata.txt", "st johns.txt"),
                                                  ("mtime", "atime")):
                steps = 1 if (name, column) == ("kolkata.txt", "mtime") else 0
                assert versions.loc[f"/{name}", column] == steps + \
                    getattr(stats[name], f"st_{column}") == steps + FAT_TIMES["kolkata.txt"]
            assert versions.loc["/kolkata.txt", "mtime_ns"] == 500_000_000
    ours, note = _cli_body(tmp_path / "chain", "--timezone", WRITER_ZONE)
    theirs = _fls_body(image, WRITER_ZONE)
    for name in names:
        assert ours[f"/{name}"][5:7] == theirs[f"/{name}"][5:7], name
        # TSK drops the 10 ms field (0 to 1.99 s) of the creation time
        assert 0 <= int(ours[f"/{name}"][8]) - int(theirs[f"/{name}"][8]) <= 1
    assert "note: 1 of the file versions keeps" in note


# ------------------------------------------------------------------ mactime
def _links_and_streams(m: Path) -> None:
    """A directory, a file with a fraction of a second, a symbolic link (ext), a hard
    link (ext) and a named stream (NTFS, through ntfs-3g's user.* xattrs)."""
    (m / "dir").mkdir()
    (m / "dir/f.txt").write_bytes(b"content")
    os.utime(m / "dir/f.txt", ns=(1_600_000_000_250_000_000, 1_500_000_000_750_000_000))
    if not (m / "lost+found").exists():  # NTFS
        os.setxattr(m / "dir/f.txt", "user.stream", b"hidden")
        return
    (m / "link").symlink_to("dir/f.txt")
    os.link(m / "dir/f.txt", m / "hard.txt")


@pytest.mark.parametrize("kind", ["ext4", "ntfs"])
def test_mactime_reads_our_body_file_as_it_reads_tsks(tmp_path: Path, kind: str) -> None:
    """``mactime -b -d -z UTC`` gives the same lines (date, size, MACB, mode, owner,
    inode or NTFS ``MFT-TYPE-ID``, name) for our body file as for ``fls -r -m /``'s,
    once our names lose their "(point N, CHANGE)"."""
    require_module("pytsk3", "pytsk3")
    require_tools("mactime", "fls")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image, _, _ = _volume(tmp_path, kind, _links_and_streams)
    with _chain(tmp_path, image) as chain:
        versions = timeline_formats.file_versions(chain)
    out = io.StringIO()
    timeline_formats.write_bodyfile(versions, out)
    ours_body = tmp_path / "ours.body"
    ours_body.write_text(out.getvalue())
    theirs_body = tmp_path / "tsk.body"
    theirs_body.write_text(subprocess.run(["fls", "-r", "-m", "/", str(image)], check=True,
                                          capture_output=True, text=True).stdout)

    def lines(body: Path) -> dict[str, set[str]]:
        text = subprocess.run(["mactime", "-b", str(body), "-d", "-z", "UTC"], check=True,
                              capture_output=True, text=True).stdout
        by_name: dict[str, set[str]] = {}
        for line in text.splitlines()[1:]:
            line = re.sub(r' \(point \d+, \w+\)"$', '"', line)
            by_name.setdefault(line.rsplit(",", 1)[1].strip('"'), set()).add(line)
        return by_name

    _assert_dfxml_in_schema_order(versions)
    ours, theirs = lines(ours_body), lines(theirs_body)
    expected = {"/dir", "/dir/f.txt", "/dir ($FILE_NAME)", "/dir/f.txt ($FILE_NAME)",
                "/dir/f.txt:stream"} if kind == "ntfs" else \
        {"/dir", "/dir/f.txt", "/link -> dir/f.txt", "/hard.txt"}
    assert expected <= set(ours)
    for name in expected:
        assert ours[name] == theirs[name], name


#: DFXML's fileobject children, in the order its schema's sequence gives them
DFXML_ORDER = ["parent_object", "filename", "error", "partition", "id", "name_type",
               "filesize", "unalloc", "alloc", "alloc_inode", "alloc_name", "used", "unused",
               "orphan", "compressed", "inode", "meta_type", "mode", "nlink", "uid", "gid",
               "mtime", "ctime", "atime", "crtime", "seq", "dtime", "bkup_time",
               "link_target", "libmagic", "byte_runs", "hashdigest"]


def _assert_dfxml_in_schema_order(versions) -> None:
    """The DFXML of ``versions`` as the schema orders it: metadata first; in each
    fileobject DFXML's elements in sequence, ours (another namespace) after them; the
    mode a number (decimal), a symbolic link's target."""
    out = io.StringIO()
    timeline_formats.write_dfxml(versions, out)
    root = ET.fromstring(out.getvalue())
    ns = f"{{{timeline_formats.DFXML_NS}}}"
    assert [c.tag for c in root][:3] == [f"{ns}metadata", f"{ns}creator", f"{ns}source"]
    for obj, v in zip(root.iter(f"{ns}fileobject"), versions.itertuples(), strict=True):
        tags = [c.tag for c in obj]
        ours = [t[len(ns):] for t in tags if t.startswith(ns)]
        assert ours == sorted(ours, key=DFXML_ORDER.index)
        assert tags[: len(ours)] == [ns + t for t in ours]  # extensions only after
        assert int(obj.findtext(f"{ns}mode")) == v.mode & 0o7777
        if v.kind == "symlink":
            assert obj.findtext(f"{ns}link_target") == v.target
            assert obj.findtext(f"{ns}name_type") == "l"


def test_ext4_extra_time_fields_at_their_limits(tmp_path: Path) -> None:
    """``debugfs set_inode_field``: all 32 bits of an ``*_extra`` field set (epoch 3, and
    2^30-1 "nanoseconds", 1.07 s, which the kernel adds as they are) and a birth time
    of -2^31 with epoch 3 (2310): the kernel's ``stat`` and ``statx``, and the JSON
    line's datetime carries the second over."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "debugfs")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image = tmp_path / "ext4.img"
    with image.open("wb") as fh:
        fh.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "256", str(image)], check=True)
    with mounted_with(["mount", "-o", "loop", str(image)], tmp_path / "m") as m:
        (m / "a.txt").write_bytes(b"a")
        (m / "b.txt").write_bytes(b"b")
    for request in ("/a.txt mtime_extra 0xffffffff", "/b.txt crtime 0x80000000",
                    "/b.txt crtime_extra 3"):
        subprocess.run(["debugfs", "-w", "-R", f"set_inode_field {request}", str(image)],
                       check=True, capture_output=True)
    with mounted_with(["mount", "-o", "loop,ro", str(image)], tmp_path / "m") as m:
        mtime_ns = os.stat(m / "a.txt").st_mtime_ns
        birth = int(subprocess.run(["stat", "-c", "%W", str(m / "b.txt")], check=True,
                                   capture_output=True, text=True).stdout)
    with _chain(tmp_path, image) as chain:
        entries = tsk.list_entries(chain.disk(0)).entries
        out = io.StringIO()
        timeline_formats.write_jsonl(timeline_formats.file_versions(chain), out)
    assert _ours(entries["/a.txt"], "mtime") == mtime_ns
    assert entries["/a.txt"].mtime_ns < 10**9
    assert entries["/b.txt"].crtime == birth == -(1 << 31) + (3 << 32)
    event = next(e for e in map(json.loads, out.getvalue().splitlines())
                 if e["path"] == "/a.txt" and e["timestamp_desc"] == "Content Modification Time")
    assert event["timestamp"] == mtime_ns // 1000
    seconds, rest = divmod(mtime_ns, 10**9)
    when = datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=rest // 1000)
    assert event["datetime"] == when.isoformat()


@pytest.mark.parametrize("start", [0, 1 << 20])  # a bare volume; partition 1 of an MBR
def test_a_deleted_ext_files_deletion_time_is_its_inodes_dtime(tmp_path: Path, start: int
                                                               ) -> None:
    """A file deleted between two points: its version carries the inode's ``dtime`` at
    the later point (``debugfs``'s), as a "Deletion Time" event and DFXML ``dtime``; the
    body file has no field for it (TSK's neither)."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "debugfs", "sfdisk")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image = tmp_path / "ext4.img"
    with image.open("wb") as fh:
        fh.truncate(start + (16 << 20))
    if start:
        subprocess.run(["sfdisk", "-q", str(image)], input=f"{start // 512},,83\n",
                       text=True, check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={start}", str(image), "16M"],
                   check=True)
    mount = ["mount", "-o", f"loop,offset={start}", str(image)]
    with mounted_with(mount, tmp_path / "m") as m:
        (m / "gone.txt").write_bytes(b"soon gone")
        inode = os.stat(m / "gone.txt").st_ino
    chain = _chain(tmp_path, image)
    with mounted_with(mount, tmp_path / "m") as m:
        (m / "gone.txt").unlink()
    backup_image(chain, image)
    shown = subprocess.run(["debugfs", "-R", f"stat <{inode}>", f"{image}?offset={start}"],
                           check=True, capture_output=True, text=True).stdout
    dtime = int(re.search(r"dtime: 0x([0-9a-f]+)", shown).group(1), 16)
    with chain:
        versions = timeline_formats.file_versions(chain)
    path = "p1:/gone.txt" if start else "/gone.txt"
    gone = versions[(versions.path == path) & (versions.change == "deleted")]
    assert gone.dtime.tolist() == [dtime] and dtime > 1_600_000_000
    assert (versions[versions.change != "deleted"].dtime == 0).all()
    outputs = _written(versions)
    events = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert [e["timestamp"] for e in events if e["timestamp_desc"] == "Deletion Time"] == \
        [dtime * 10**6]
    assert f"<dtime>{datetime.fromtimestamp(dtime, timezone.utc).isoformat()}</dtime>" \
        in outputs["dfxml"]
    assert {len(line.split("|")) for line in outputs["bodyfile"].splitlines()} == {11}


def test_an_mtime_put_back_to_its_second_without_the_fraction_is_a_change(tmp_path: Path
                                                                          ) -> None:
    """``touch -d`` to the same second with the nanoseconds gone (times copied from a
    coarser file system, or put back by hand): the diff says the mtime changed, not
    only the ctime."""
    require_module("pytsk3", "pytsk3")
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    from blockforensics import forensics

    image, stats, _ = _volume(tmp_path, "ext4", _touch_all)
    chain = _chain(tmp_path, image)
    with mounted_with(["mount", "-o", "loop", str(image)], tmp_path / "m") as m:
        os.utime(m / "ns.txt", ns=(stats["ns.txt"].st_atime_ns,
                                   stats["ns.txt"].st_mtime_ns // 10**9 * 10**9))
    backup_image(chain, image)
    with chain:
        rows = forensics.diff(chain, 0, 1, files=True).files.set_index("path")
    assert (rows.loc["/ns.txt", "change"], rows.loc["/ns.txt", "what_changed"]) == \
        ("modified", "mtime")
    assert list(rows.index) == ["/ns.txt"]


# -------------------------------------------------------------------------- HFS+
def test_hfsplus_dates_before_1970_are_negative_and_zero_is_no_time(tmp_path: Path) -> None:
    """HFS+ dates count unsigned seconds from 1904 (TN1150); TSK gives 0 for 1904-1969.
    Those come out negative, in every format; a date of 0 is "not set": no time.  (No
    ``mkfs.hfsplus`` nor kernel driver here: the volume is written by the tests' writer.)"""
    require_module("pytsk3", "pytsk3")
    from hfsplus_volume import DATE, make_hfsplus

    from blockforensics.fs.hfsplus import HFS_EPOCH

    old = -300_024_000  # 1960-06-29 12:00:00 UTC
    dates = {"old.txt": old + HFS_EPOCH, "first.txt": 1, "unset.txt": 0}
    image = tmp_path / "hfs.img"
    make_hfsplus(image, 8 << 20, {name: name.encode() for name in [*dates, "new.txt"]},
                 dates=dates)
    with _chain(tmp_path, image) as chain:
        entries = tsk.list_entries(chain.disk(0)).entries
        versions = timeline_formats.file_versions(chain)
    columns = ("atime", "mtime", "ctime", "crtime")
    assert [getattr(entries["/old.txt"], c) for c in columns] == [old] * 4
    assert [getattr(entries["/first.txt"], c) for c in columns] == [1 - HFS_EPOCH] * 4
    assert [getattr(entries["/unset.txt"], c) for c in columns] == [0] * 4
    assert [getattr(entries["/new.txt"], c) for c in columns] == [DATE - HFS_EPOCH] * 4
    outputs = _written(versions)
    body = _body(outputs["bodyfile"])
    assert body["/old.txt"][5:] == [str(old)] * 4 and body["/unset.txt"][5:] == ["0"] * 4
    events = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert {e["datetime"] for e in events if e["path"] == "/old.txt"} == {
        "1960-06-29T12:00:00+00:00"}
    assert {e["datetime"] for e in events if e["path"] == "/first.txt"} == {
        "1904-01-01T00:00:01+00:00"}
    assert not [e for e in events if e["path"] == "/unset.txt"]
    assert "<mtime>1960-06-29T12:00:00+00:00</mtime>" in outputs["dfxml"]
    assert "<crtime>1904-01-01T00:00:01+00:00</crtime>" in outputs["dfxml"]
    assert "06/29/1960,12:00:00,UTC,MACB" in outputs["l2tcsv"]

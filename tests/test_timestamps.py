"""Every file system's times as the kernel reads them (``stat`` of the mounted volume) or,
where the kernel does not mount it here, as The Sleuth Kit's ``istat``/``fls -m`` and
the on-disk specification give them: far and old dates, nanoseconds, missing times;
and the timeline formats carrying them whole."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import backup_image, mounted_with, require_module, require_tools

from blockforensics import timeline_formats, tsk
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
    "btrfs": (["mkfs.btrfs", "-q", "-f"], []),
    "ntfs": (["mkntfs", "-q", "-F", "-f"], ["ntfs-3g"]),
}
SIZES = {"xfs": 300 << 20, "btrfs": 120 << 20}


def _volume(tmp: Path, kind: str, fill: Callable[[Path], None]
            ) -> tuple[Path, dict[str, os.stat_result]]:
    """A volume of ``kind`` filled by ``fill`` (mounted), then each file's ``stat`` read
    from the volume mounted again (the kernel's in-memory inode can hold what the disk
    cannot, e.g. 2110 in a 128-byte ext inode)."""
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
    return image, stats


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
    image, stats = _volume(tmp_path, kind, _touch_all)
    assert stats["y2110.txt"].st_mtime_ns != stats["y2200.txt"].st_mtime_ns or kind == "ext2"
    with _chain(tmp_path, image) as chain:
        entries = tsk.list_entries(chain.disk(0)).entries
        for name, st in stats.items():
            entry = entries[f"/{name}"]
            for column in ("atime", "mtime", "ctime"):
                assert _ours(entry, column) == getattr(st, f"st_{column}_ns"), (name, column)
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
    image, stats = _volume(tmp_path, "ntfs", _ntfs_times)
    with _chain(tmp_path, image) as chain:
        entries = tsk.list_entries(chain.disk(0)).entries
        versions = timeline_formats.file_versions(chain)
    for name in ("far.txt", "zero.txt"):
        for column in ("atime", "mtime"):
            assert _ours(entries[f"/{name}"], column) == getattr(stats[name], f"st_{column}_ns")
    # ntfs-3g truncates before 1970 toward zero (-300023999 s); FILETIME counts up from 1601
    assert _ours(entries["/old.txt"], "mtime") == -300_024_000 * 10**9 + 100
    assert (entries["/zero.txt"].crtime, entries["/zero.txt"].crtime_ns) == (0, 0)
    outputs = {}
    for fmt, writer in timeline_formats.FORMATS.items():
        out = io.StringIO()
        writer(versions, out)
        outputs[fmt] = out.getvalue()
    body = {line.split("|")[1].split(" (point")[0]: line.split("|")
            for line in outputs["bodyfile"].splitlines()}
    assert body["/zero.txt"][10] == "0" and body["/far.txt"][8] == str(YEAR_30000)
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

"""Per-file timelines of a chain in the formats investigators already use.

:func:`file_versions` lists every file version a chain records: at the full, every
file; at each later point, the files it created, modified, renamed or deleted
against its parent (a deleted file with its last metadata, from the parent).  Per
version: MACB times (seconds since the epoch, 0 = not recorded; ``*_ns``: the
nanoseconds within the second, where the file system records them; a deleted ext
file's ``dtime``, from the point that deleted it), size, inode (MFT
record number on NTFS), mode, owner, SHA-256 and MD5 of the whole content at that
point, and whether the triage rules suspect encryption.

Each name of a hard-linked file is a version (the diff has one row per file), and
so is each named stream of an NTFS file (``path:name``) and its name's ``$FILE_NAME``
times (``path ($FILE_NAME)``: set by the file system alone, so a ``$STANDARD_INFORMATION``
time put back by a tool stands out), as ``fls -m`` lists them.

Writers (:data:`FORMATS`):

- ``bodyfile`` — The Sleuth Kit's body format 3 (``MD5|name|inode|mode|UID|GID|size|
  atime|mtime|ctime|crtime``), read by ``mactime -b``;
- ``l2tcsv`` — plaso's 17-column L2T CSV, one row per distinct time with its MACB
  letters;
- ``jsonl`` — Timesketch JSON lines, one event per time kind, with ``message``,
  ``datetime`` (ISO 8601), ``timestamp`` (microseconds) and ``timestamp_desc``;
- ``dfxml`` — Digital Forensics XML: one ``fileobject`` per version with its
  ``byte_runs`` (disk offsets at that point) and hashes; point and change in the
  ``bf:`` namespace.

A name in a version is written as ``PATH (point N, CHANGE)`` in the body file and
L2T CSV, whose readers have no other place for it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from blockforensics import forensics, tsk
from blockforensics.errors import UsageError
from blockforensics.tsk import Entry, Listing, name_text

if TYPE_CHECKING:
    from blockforensics.image.chain import Chain

VERSION_COLUMNS = ["point", "change", "path", "old_path", "type", "inode", "size", "mode",
                   "uid", "gid", "atime", "mtime", "ctime", "crtime", "dtime", "atime_ns",
                   "mtime_ns", "ctime_ns", "crtime_ns", "dtime_ns", "sha256", "md5",
                   "suspected_encryption", "runs", "kind", "target", "fs", "wall_clock",
                   "zone", "attribute"]
#: MACB letter, column, Timesketch/plaso description
TIMES = (("M", "mtime", "Content Modification Time"), ("A", "atime", "Last Access Time"),
         ("C", "ctime", "Metadata Modification Time"), ("B", "crtime", "Creation Time"))
#: and a deleted ext file's deletion time (no MACB letter; not in a body file, as TSK's)
EVENTS = (*TIMES, ("", "dtime", "Deletion Time"))
DFXML_NS = "http://www.forensicswiki.org/wiki/Category:Digital_Forensics_XML"
BF_NS = "https://github.com/blockforensics/dfxml"
DC_NS = "http://purl.org/dc/elements/1.1/"


def _hashes(entry: Entry, disk: Any) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    if entry.type == "file":
        for chunk in entry.chunks(disk):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def file_versions(chain: Chain, *, zone: str = "UTC", progress: bool = False
                  ) -> pd.DataFrame:
    """Every file version the chain records (see the module documentation), one row
    each, in point order: columns :data:`VERSION_COLUMNS` (``runs``: the content's disk
    byte extents ``[(offset, length), ...]`` at that point; ``wall_clock``: the times
    kept with no zone, ``zone``: the zone they were read in, "" when none).  ``zone``:
    the IANA zone of the clock that wrote FAT times (and exFAT ones without a UTC
    offset), which carry none, as ``fls -z``; ``progress``: a bar of points.
    ``attrs["not_read"]``: the file systems of a point that could not be listed, and
    why (their files have no versions there), a line each."""
    tz = _zone(zone)
    listings: dict[int | None, Listing] = {}
    rows = []
    not_read: dict[str, None] = {}
    for result in forensics.point_diffs(chain, listings, progress=progress):
        not_read.update(dict.fromkeys(result.notes))
        p = result.b
        parent = chain.parent(p)
        dtime = tsk.ext_deletion_times(chain.disk(p))
        for row in result.files.itertuples():
            side = parent if row.change == "deleted" else p
            if side is None:
                continue
            for path in (row.path, *row.other_paths):  # every name of a hard-linked file
                entry = listings[side].entries.get(path)
                if entry is not None:
                    deleted = dtime(entry) if row.change == "deleted" else 0
                    rows += _versions(chain, side, p, row, _in_zone(entry, tz), tz.key,
                                      deleted)
    frame = pd.DataFrame(rows, columns=VERSION_COLUMNS)
    frame.attrs["not_read"] = list(not_read)
    return frame


def _zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (e.g. ``Europe/Berlin``, ``UTC``); a usage error if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {name!r} (an IANA name, e.g. UTC, "
                         "Europe/Berlin, America/New_York)") from None


def _in_zone(entry: Entry, zone: ZoneInfo) -> Entry:
    """``entry`` with its wall-clock times (:attr:`Entry.wall_clock`, read as UTC) read
    as the clock of ``zone`` (the earlier of a repeated hour, as ``mktime`` and ``fls``)."""
    if not entry.wall_clock or zone.key == "UTC":
        return entry
    epoch = datetime(1970, 1, 1)
    times: dict[str, Any] = {
        name: int((epoch + timedelta(seconds=getattr(entry, name)))
                  .replace(tzinfo=zone).timestamp()) for name in entry.wall_clock}
    return replace(entry, **times)


def _versions(chain: Chain, side: int, p: int, row: Any, entry: Entry, zone: str,
              dtime: int) -> list[dict]:
    """The rows of one file version (``entry``, read at point ``side``) of diff row ``row``
    of point ``p``: the file, then each of its named streams (NTFS, ``path:name`` as
    ``fls`` writes them: their size and SHA-256, no runs, the file's times) and its
    ``$FILE_NAME`` times (``path ($FILE_NAME)``, the attribute's size); ``zone``: as
    :func:`file_versions`; ``dtime``: when a deleted ext file's inode was deleted."""
    sha, md5 = _hashes(entry, chain.disk(side))
    attributes = dict(entry.attributes)
    file = {
        "point": p, "change": row.change, "path": entry.path, "old_path": row.old_path,
        "type": entry.type, "inode": entry.inode, "size": entry.size,
        "mode": entry.mode, "uid": entry.uid, "gid": entry.gid, "atime": entry.atime,
        "mtime": entry.mtime, "ctime": entry.ctime, "crtime": entry.crtime,
        "dtime": dtime, "atime_ns": entry.atime_ns, "mtime_ns": entry.mtime_ns,
        "ctime_ns": entry.ctime_ns, "crtime_ns": entry.crtime_ns, "dtime_ns": 0,
        "sha256": sha if entry.type == "file" else "",
        "md5": md5 if entry.type == "file" else "",
        "suspected_encryption": bool(row.suspected_encryption),
        "runs": [(int(a), int(b - a)) for a, b in entry.extents.tolist()],
        "kind": entry.kind or entry.type,
        "target": name_text(entry.resident or b"") if entry.kind == "symlink" else "",
        "fs": entry.fs,
        "wall_clock": entry.wall_clock,
        "zone": zone if entry.wall_clock else "", "attribute": attributes.get("", "")}
    rows = [file, *({**file, "path": f"{entry.path}:{name}", "size": size, "sha256": digest,
                     "md5": "", "runs": [], "kind": "stream", "target": "",
                     "attribute": attributes.get(name, ""),
                     "old_path": f"{row.old_path}:{name}" if row.old_path else ""}
                    for name, size, digest in entry.streams)]
    if entry.file_name:
        size, *times = entry.file_name
        split = {}
        for column, ns in zip(("atime", "mtime", "ctime", "crtime"), times, strict=True):
            split[column], split[f"{column}_ns"] = divmod(ns, 10**9)
        rows.append({**file, "path": f"{entry.path} ($FILE_NAME)", "size": size, "sha256": "",
                     "md5": "", "runs": [], **split,
                     "attribute": attributes.get("$FILE_NAME", ""),
                     "old_path": f"{row.old_path} ($FILE_NAME)" if row.old_path else ""})
    return rows


def _mode_string(kind: str, mode: int) -> str:
    """TSK's body-file mode, e.g. ``r/rrw-r--r--`` (``kind``: file, dir, symlink)."""
    t = {"dir": "d", "symlink": "l"}.get(kind, "r")
    return f"{t}/{t}{stat.filemode(mode & 0o7777)[1:]}"


def _name(v: Any) -> str:
    """A version's name in the body file and L2T CSV: a symbolic link's with its target
    (``name -> target``, as ``fls -m``), then its point and change."""
    link = f" -> {v.target}" if v.target else ""
    return f"{v.path}{link} (point {v.point}, {v.change})"


def _iso(seconds: int, ns: int = 0, digits: int = 6) -> str:
    """ISO 8601 in UTC of ``seconds`` since the epoch and ``ns`` within it, its fraction
    to ``digits`` places without trailing zeros, any year (NTFS goes to 30828, past
    Python's datetime)."""
    fraction = f"{ns:09d}"[:digits].rstrip("0")
    return str(np.datetime64(seconds, "s")) + (f".{fraction}" if fraction else "") + "+00:00"


#: what a body file's name field escapes: the separator "|" and the escape "\\" as
#: ``\|`` and ``\\``, control characters (C0, DEL, C1) as ``\xNN``: the escapes the
#: forensics wiki's body file page describes and plaso's bodyfile parser decodes.  TSK
#: 4.11's ``fls -m`` writes "|" as it is (its mactime then splits the name) and a
#: control character as "^": either would lose the name.
_BODY_SPECIAL = re.compile(r"[\\|\x00-\x1f\x7f-\x9f]")
#: what XML 1.0 cannot hold, even escaped
_NOT_XML = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _body_escape(special: re.Match[str]) -> str:
    c = special.group()
    return "\\" + c if c in "\\|" else f"\\x{ord(c):02x}"


def _body_name(v: Any) -> str:
    """A version's name for a body file, escaped (:data:`_BODY_SPECIAL`): one record a
    line, eleven fields, the name read back as it was."""
    return _BODY_SPECIAL.sub(_body_escape, _name(v))


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold: other characters (control bytes, CR) as ``\\xNN``."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def write_bodyfile(versions: pd.DataFrame, out: io.TextIOBase) -> None:
    for v in versions.itertuples():
        name = _body_name(v)
        inode = f"{v.inode}-{v.attribute}" if v.attribute else v.inode
        out.write(f"{v.md5 or 0}|{name}|{inode}|{_mode_string(v.kind, v.mode)}|{v.uid}|"
                  f"{v.gid}|{v.size}|{v.atime}|{v.mtime}|{v.ctime}|{v.crtime}\n")


def _grouped_times(v: Any) -> Iterator[tuple[tuple[int, int], str, list[str]]]:
    """((seconds, nanoseconds), MACB letters, descriptions) for each distinct recorded
    time of a version."""
    by_time: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for letter, column, desc in EVENTS:
        t = int(getattr(v, column))
        if t:
            by_time.setdefault((t, int(getattr(v, f"{column}_ns"))), []).append((letter, desc))
    for when, kinds in sorted(by_time.items()):
        letters = "".join(letter if letter in {k[0] for k in kinds} else "."
                          for letter in "MACB")
        yield when, letters, [k[1] for k in kinds]


L2T_HEADER = ["date", "time", "timezone", "MACB", "source", "sourcetype", "type", "user",
              "host", "short", "desc", "version", "filename", "inode", "notes", "format",
              "extra"]


def write_l2tcsv(versions: pd.DataFrame, out: io.TextIOBase, host: str = "-") -> None:
    # RFC 4180 lines (CRLF): the writer quotes a field holding CR only when CR ends lines
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(L2T_HEADER)
    for v in versions.itertuples():
        for (t, _), letters, descs in _grouped_times(v):
            day, clock = str(np.datetime64(t, "s")).split("T")
            year, month, mday = day.rsplit("-", 2)
            writer.writerow([
                f"{month}/{mday}/{year}", clock, "UTC", letters, "FILE",
                f"blockforensics point {v.point}", "; ".join(descs), str(v.uid), host,
                _name(v), f"{v.path} {v.change} at point {v.point}, size {v.size}",
                "2", v.path, str(v.inode),
                "; ".join(_notes(v)) or "-", "blockforensics",
                f"sha256: {v.sha256 or '-'} md5: {v.md5 or '-'} point: {v.point} "
                f"change: {v.change}"])


def _notes(v: Any) -> list[str]:
    """What an analyst must know of a version beyond its fields."""
    return ((["suspected encryption"] if v.suspected_encryption else [])
            + ([f"{', '.join(v.wall_clock)}: the writer's clock, no zone; read as {v.zone}"]
               if v.zone else []))


def write_jsonl(versions: pd.DataFrame, out: io.TextIOBase) -> None:
    for v in versions.itertuples():
        for _, column, desc in EVENTS:
            t, ns = int(getattr(v, column)), int(getattr(v, f"{column}_ns"))
            if not t:
                continue
            event = {
                "message": f"{v.path} ({v.change} at point {v.point}, {v.size} bytes)",
                "datetime": _iso(t, ns), "timestamp": t * 1_000_000 + ns // 1000,
                "timestamp_desc": desc,
                "data_type": "fs:stat", "path": v.path, "old_path": v.old_path or None,
                "point": v.point, "change": v.change, "file_type": v.type,
                "inode": v.inode, "size": v.size, "sha256": v.sha256 or None,
                "md5": v.md5 or None, "suspected_encryption": v.suspected_encryption}
            if column in v.wall_clock:  # kept with no zone: the zone it was read in
                event["wall_clock_zone"] = v.zone
            out.write(json.dumps(event) + "\n")


#: DFXML's name_type and TSK's meta_type numbers of each kind of version
DFXML_KINDS = {"file": ("r", 1), "stream": ("r", 1), "dir": ("d", 2), "symlink": ("l", 6)}
#: precision (``prec``, whole seconds) of the times a file system keeps coarser than 1 s
DFXML_PRECISION = {("fat", "mtime"): 2, ("fat", "atime"): 86400, ("exfat", "atime"): 2}


def write_dfxml(versions: pd.DataFrame, out: io.TextIOBase, source: str = "") -> None:
    """DFXML (schema 1.x/2.0 order: metadata, creator, source, then per version its
    filename … times (mtime, ctime, atime, crtime, with ``prec`` where coarser than a
    second) … link_target, byte_runs, hashdigest; ours last, in the ``bf:`` namespace)."""
    ET.register_namespace("", DFXML_NS)
    ET.register_namespace("bf", BF_NS)
    ET.register_namespace("dc", DC_NS)

    def sub(parent: ET.Element, tag: str, text: object = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{DFXML_NS}}}{tag}", attrs)
        if text is not None:
            element.text = str(text)
        return element

    root = ET.Element(f"{{{DFXML_NS}}}dfxml", {"version": "1.0"})
    ET.SubElement(sub(root, "metadata"), f"{{{DC_NS}}}type").text = "File versions"
    creator = sub(root, "creator")
    sub(creator, "program", "blockforensics")
    sub(sub(root, "source"), "image_filename", source)
    for v in versions.itertuples():
        name_type, meta_type = DFXML_KINDS.get(v.kind, ("r", 1))
        obj = sub(root, "fileobject")
        sub(obj, "filename", _xml_text(v.path))
        sub(obj, "name_type", name_type)
        sub(obj, "filesize", v.size)
        sub(obj, "alloc", 0 if v.change == "deleted" else 1)
        sub(obj, "inode", v.inode)
        sub(obj, "meta_type", meta_type)
        sub(obj, "mode", v.mode & 0o7777)
        sub(obj, "uid", v.uid)
        sub(obj, "gid", v.gid)
        for column in ("mtime", "ctime", "atime", "crtime", "dtime"):
            if getattr(v, column):
                prec = DFXML_PRECISION.get((v.fs, column))
                sub(obj, column, _iso(int(getattr(v, column)), int(getattr(v, f"{column}_ns")),
                                      digits=9), **({"prec": str(prec)} if prec else {}))
        if v.target:
            sub(obj, "link_target", _xml_text(v.target))
        if v.runs:
            runs = sub(obj, "byte_runs")
            file_offset = 0
            for offset, length in v.runs:
                sub(runs, "byte_run", file_offset=str(file_offset), img_offset=str(offset),
                    len=str(length))
                file_offset += length
        if v.md5:
            sub(obj, "hashdigest", v.md5, type="md5")
            sub(obj, "hashdigest", v.sha256, type="sha256")
        for tag, value in (("point", v.point), ("change", v.change),
                           ("old_path", _xml_text(v.old_path) if v.old_path else None),
                           ("suspected_encryption", str(v.suspected_encryption).lower()),
                           ("wall_clock_zone", v.zone or None)):
            if value is not None:
                ET.SubElement(obj, f"{{{BF_NS}}}{tag}").text = str(value)
    ET.indent(root)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(root, encoding="unicode"))
    out.write("\n")


FORMATS: dict[str, Callable[..., None]] = {
    "bodyfile": write_bodyfile, "l2tcsv": write_l2tcsv, "jsonl": write_jsonl,
    "dfxml": write_dfxml}


def formatted(versions: pd.DataFrame, fmt: str, source: str = "") -> str:
    """:func:`file_versions` rows in format ``fmt`` (one of :data:`FORMATS`), as text;
    ``source``: the chain (DFXML's ``image_filename``)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown timeline format {fmt!r} (one of {', '.join(FORMATS)})")
    out = io.StringIO()
    if fmt == "dfxml":
        write_dfxml(versions, out, source=source)
    else:
        FORMATS[fmt](versions, out)
    return out.getvalue()


def zone_note(versions: pd.DataFrame) -> str | None:
    """The zone the versions' wall-clock times (FAT, exFAT without an offset) were read
    in, as a line for the analyst; None when no time was kept without a zone."""
    zones = sorted(set(versions["zone"]) - {""})
    if not zones:
        return None
    count = int((versions["zone"] != "").sum())
    return (f"{count} of the file versions {'keeps' if count == 1 else 'keep'} times as "
            f"the writer's clock with no zone (FAT, exFAT without a UTC offset): read as "
            f"{zones[0]} (--timezone to choose)")


def render(chain: Chain, fmt: str, *, zone: str = "UTC", progress: bool = False) -> str:
    """The chain's file versions in format ``fmt`` (one of :data:`FORMATS`), as text;
    ``zone``: as :func:`file_versions`."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown timeline format {fmt!r} (one of {', '.join(FORMATS)})")
    return formatted(file_versions(chain, zone=zone, progress=progress), fmt,
                     str(chain.directory))


def write(chain: Chain, fmt: str, path: str | os.PathLike[str], *, zone: str = "UTC",
          progress: bool = False) -> Path:
    """Write :func:`render` to ``path`` atomically (temporary name, fsync, rename)."""
    return save(render(chain, fmt, zone=zone, progress=progress), path)


def save(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``path`` atomically (temporary name, fsync, rename)."""
    from blockforensics.fileio import atomic_writer

    with atomic_writer(path) as fh:
        fh.write(text.encode())
    return Path(path)

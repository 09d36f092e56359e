"""LVM2 physical volumes: the label, the metadata areas, the text metadata, and the
logical volumes a backup can read as partitions.

A physical volume (PV) is a partition (MBR type 0x8e, the GPT "Linux LVM" type) or a
whole disk.  One of its first four 512-byte sectors holds the *label*
(``LABELONE``, its own CRC) whose *pv_header* names the PV (a 32-character UUID)
and lists its data areas and metadata areas as byte ``(offset, size)`` pairs
from the PV's start.  A metadata area starts with an *mda header* (magic
``" LVM2 x[5A%r0N*>"``, its own CRC) whose first *raw_locn* points into a ring
buffer holding the newest copy of the volume group's (VG) description in LVM's
text format, with the text's CRC beside it.  Every CRC here is LVM's
``calc_crc``: the reflected CRC-32 (polynomial 0xEDB88320) started at
0xF597A6CF, with no final inversion.

The text says where everything lies: ``extent_size`` (sectors) for the VG, for
each PV ``pe_start`` (sectors from the PV's start) and ``pe_count``; for each
logical volume (LV) its segments — ``start_extent`` and ``extent_count`` in the
LV, a ``type`` and, for type ``striped``, ``stripes = ["pv0", first PE, …]``.
An LV is read here only when every segment is ``striped`` with one stripe on a
PV found on the same disk (a *linear* LV, the installers' default); anything
else — several stripes, mirrors and RAID, thin pools and thin LVs, snapshots and
their origins, caches, LVs on a PV that is not on this disk — is reported with
the reason, and its extents are copied whole by the caller.

Damaged metadata is read as LVM reads it: an area whose header or newest text
fails its checks is passed over, and the VG is read from the newest intact copy
(a second area on the PV, or another PV of the VG on this disk), with a note —
unless the damaged area's ring buffer still shows a description with a higher
seqno (a write that reached only that area: the intact copy is out of date).
LVM never falls back to an older description in a ring buffer by itself (only
``pvck --repair`` with one a person chose), and neither does this module: used to
map a disk, one that predates a volume made, moved or resized could hand a live
volume's extents to an old one's file system, whose free blocks would be left out.
With no intact copy the PV is copied whole; the note lists what the ring buffer
holds, as ``pvck --dump metadata_search`` does.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.structure import Structure

SECTOR = 512
#: the label is in one of the PV's first four sectors
LABEL_SECTORS = 4
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
#: label_header (lib/label/label.h); crc_xl covers the sector from offset_xl on
LABEL_HEADER = Structure("LvmLabelHeader", 32, [
    (0x00, "8s", "id"),
    (0x08, "Q", "sector_xl"),
    (0x10, "I", "crc_xl"),
    (0x14, "I", "offset_xl"),
    (0x18, "8s", "type"),
])
LABEL_CRC_FROM = 0x14
#: pv_header (lib/format_text/layout.h), then disk_locn lists ended by a zero entry
PV_HEADER = Structure("LvmPvHeader", 40, [
    (0x00, "32s", "pv_uuid"),
    (0x20, "Q", "device_size_xl"),
])
DISK_LOCN = Structure("LvmDiskLocn", 16, [
    (0x00, "Q", "offset"),
    (0x08, "Q", "size"),
])
#: mda_header: its CRC covers the 512-byte header from ``magic`` on
MDA_HEADER = Structure("LvmMdaHeader", 40, [
    (0x00, "I", "checksum_xl"),
    (0x04, "16s", "magic"),
    (0x14, "I", "version"),
    (0x18, "Q", "start"),
    (0x20, "Q", "size"),
])
RAW_LOCN = Structure("LvmRawLocn", 24, [
    (0x00, "Q", "offset"),
    (0x08, "Q", "size"),
    (0x10, "I", "checksum"),
    (0x14, "I", "flags"),
])
MDA_HEADER_SIZE = 512
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_VERSION = 1
RAW_LOCN_IGNORED = 0x1
INITIAL_CRC = 0xF597A6CF
#: metadata text larger than this is not something LVM wrote (its areas are ~1 MiB)
MAX_METADATA = 64 << 20
#: sections nest no deeper than this in LVM's text (vg/logical_volumes/lv/segment)
MAX_DEPTH = 8
#: names of the LV status flag that marks a user-visible LV
VISIBLE = "VISIBLE"


def lvm_crc(data: bytes, initial: int = INITIAL_CRC) -> int:
    """LVM's ``calc_crc(initial, data)``: CRC-32 (reflected, 0xEDB88320) from
    ``initial`` without the final inversion — zlib's CRC-32 with the inversions
    undone."""
    return zlib.crc32(data, initial ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


# --- the text format -------------------------------------------------------------

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.+-]+|[={}\[\],]|#[^\n]*|\s+', re.S)
_INT = re.compile(r"-?\d+")


def parse_metadata(text: str) -> dict[str, Any]:
    """LVM's text format as nested dicts: ``key = value`` (a string, an integer, or a
    ``[list]`` of them) and ``name { … }`` sections; ``#`` starts a comment.
    FormatError on anything else (unbalanced braces, a repeated key, nesting
    deeper than ``MAX_DEPTH``)."""
    tokens: list[str] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise FormatError(f"LVM metadata: unexpected {text[at:at + 10]!r} at byte {at}")
        token = match.group()
        at = match.end()
        if not token.isspace() and not token.startswith("#"):
            tokens.append(token)
    tokens.append("")  # the end
    pos = 0

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def scalar(token: str) -> str | int:
        if token.startswith('"'):
            return re.sub(r"\\(.)", r"\1", token[1:-1], flags=re.S)
        if _INT.fullmatch(token):
            return int(token)
        raise FormatError(f"LVM metadata: unexpected {token!r} as a value")

    def value() -> Any:
        token = take()
        if token != "[":
            return scalar(token)
        items: list[str | int] = []
        while (token := take()) != "]":
            if token == "," and items:
                continue
            if token in ("", "[", "{", "}", "="):
                raise FormatError("LVM metadata: unterminated [list]")
            items.append(scalar(token))
        return items

    def section(depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            key = take()
            if key in ("", "}"):
                if (key == "}") != (depth > 0):
                    raise FormatError("LVM metadata: unbalanced braces")
                return out
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", key):
                raise FormatError(f"LVM metadata: unexpected {key!r} as a name")
            if key in out:
                raise FormatError(f"LVM metadata: {key} appears twice")
            op = take()
            if op == "{":
                if depth >= MAX_DEPTH:
                    raise FormatError(f"LVM metadata: sections nested deeper than {MAX_DEPTH}")
                out[key] = section(depth + 1)
            elif op == "=":
                out[key] = value()
            else:
                raise FormatError(f"LVM metadata: {key} is followed by {op!r}")

    return section(0)


def _get(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``obj[key]`` checked to be a ``kind`` (an int also >= 0); FormatError naming it."""
    found = obj.get(key)
    if not isinstance(found, kind) or (isinstance(found, int) and found < 0):
        raise FormatError(f"LVM metadata: {where}: {key} is missing or invalid ({found!r})")
    return found


# --- the binary structures -------------------------------------------------------


@dataclass
class MetadataCopy:
    """The newest VG description in one metadata area: its text parsed."""

    vg_name: str
    vg_id: str
    seqno: int
    vg: dict[str, Any]
    where: str = ""  # the metadata area, for notes


@dataclass
class AreaProblem:
    """A metadata area whose header or newest text failed a check: why, and the
    descriptions its ring buffer still holds (``(PV byte, VG name, seqno)``, found as
    ``pvck --dump metadata_search`` finds them)."""

    where: str  # the PV
    problem: str  # naming the area
    found: list[tuple[int, str, int]]


@dataclass
class PhysicalVolume:
    """A PV found at byte ``offset`` of a disk (a partition's start, or 0), bytes
    ``length`` long as its partition declares; areas in bytes from its start."""

    offset: int
    length: int
    uuid: str  # 32 characters, as in the label (the metadata adds dashes)
    device_size: int  # bytes, as the PV header says
    data_areas: list[tuple[int, int]]
    metadata_areas: list[tuple[int, int]]
    metadata: list[MetadataCopy] = field(default_factory=list)
    damaged: list[AreaProblem] = field(default_factory=list)


def find_label(disk: Disk, offset: int = 0) -> int | None:
    """The sector (0-3) of an LVM2 label at byte ``offset``, or None."""
    head = disk.read(offset, LABEL_SECTORS * SECTOR)
    for sector in range(LABEL_SECTORS):
        at = sector * SECTOR
        if (head[at : at + 8] == LABEL_ID
                and head[at + 0x18 : at + 0x20] == LABEL_TYPE):
            return sector
    return None


def read_pv(disk: Disk, offset: int, length: int) -> PhysicalVolume:
    """The PV at byte ``offset`` (``length`` bytes long): label and pv_header checked
    (FormatError naming the first thing that fails), every metadata area's newest
    text read and checked (an area that fails: in ``damaged``, LVM too reads the
    others)."""
    sector = find_label(disk, offset)
    if sector is None:
        raise FormatError("no LVM2 label in the first 4 sectors")
    raw = disk.read(offset + sector * SECTOR, SECTOR)
    label = LABEL_HEADER.parse(raw)
    if label.sector_xl != sector:
        raise FormatError(f"LVM2 label in sector {sector} says it is in sector {label.sector_xl}")
    if lvm_crc(raw[LABEL_CRC_FROM:]) != label.crc_xl:
        raise FormatError("LVM2 label checksum mismatch")
    if not LABEL_HEADER.size <= label.offset_xl <= SECTOR - PV_HEADER.size:
        raise FormatError(f"LVM2 label: pv_header at byte {label.offset_xl}")
    header = PV_HEADER.parse(raw, label.offset_xl)
    at = label.offset_xl + PV_HEADER.size
    lists: list[list[tuple[int, int]]] = [[], []]
    for areas in lists:
        while True:
            locn = DISK_LOCN.parse(raw, at) if at + DISK_LOCN.size <= SECTOR else None
            if locn is None:
                raise FormatError("LVM2 pv_header: area list runs past the label sector")
            at += DISK_LOCN.size
            if locn.offset == 0:
                break
            areas.append((locn.offset, locn.size))
    pv = PhysicalVolume(offset, length, header.pv_uuid.decode("ascii", "replace"),
                        header.device_size_xl, lists[0], lists[1])
    for mda_offset, mda_size in pv.metadata_areas:
        try:
            copy = read_metadata_area(disk, pv, mda_offset, mda_size)
        except FormatError as exc:
            pv.damaged.append(AreaProblem(f"PV at byte {offset}", str(exc),
                                          search_area(disk, pv, mda_offset, mda_size)))
            continue
        if copy is not None:
            copy.where = f"metadata area at byte {mda_offset} of the PV at byte {offset}"
            pv.metadata.append(copy)
    return pv


#: the start of a VG description as LVM writes it: ``name {`` then its id and seqno
_DESCRIPTION = re.compile(rb'([A-Za-z0-9_.+-]+) \{\nid = "[^"\n]*"\nseqno = (\d+)\n')


def search_area(disk: Disk, pv: PhysicalVolume, mda_offset: int, mda_size: int
                ) -> list[tuple[int, str, int]]:
    """``(PV byte, VG name, seqno)`` of each description in the ring buffer of the
    metadata area at byte ``mda_offset`` of the PV, at the 512-byte boundaries LVM
    writes them at (not checked: only the newest one's checksum is kept)."""
    size = max(0, min(mda_size, pv.length - mda_offset, MAX_METADATA) - MDA_HEADER_SIZE)
    ring = disk.read(pv.offset + mda_offset + MDA_HEADER_SIZE, size)
    return [(mda_offset + MDA_HEADER_SIZE + m.start(), m[1].decode("ascii"), int(m[2]))
            for m in _DESCRIPTION.finditer(ring) if m.start() % SECTOR == 0]


def read_metadata_area(disk: Disk, pv: PhysicalVolume, mda_offset: int,
                       mda_size: int) -> MetadataCopy | None:
    """The newest VG description in the metadata area at byte ``mda_offset`` of the PV
    (None when the area holds none, or is marked ignored); FormatError when its
    header or text fails a check."""
    where = f"metadata area at byte {mda_offset}"
    if mda_size < 2 * MDA_HEADER_SIZE or mda_offset + mda_size > pv.length:
        raise FormatError(f"{where}: {mda_size} bytes do not fit the PV ({pv.length} bytes)")
    raw = disk.read(pv.offset + mda_offset, MDA_HEADER_SIZE)
    if len(raw) < MDA_HEADER_SIZE:
        raise FormatError(f"{where}: past the end of the image")
    header = MDA_HEADER.parse(raw)
    if header.magic != MDA_MAGIC:
        raise FormatError(f"{where}: no mda header magic")
    if lvm_crc(raw[4:]) != header.checksum_xl:
        raise FormatError(f"{where}: mda header checksum mismatch")
    if header.version != MDA_VERSION or header.start != mda_offset or header.size != mda_size:
        raise FormatError(f"{where}: mda header version {header.version}, start "
                          f"{header.start}, size {header.size} disagree with the label")
    locn = RAW_LOCN.parse(raw, MDA_HEADER.size)
    if locn.offset == 0 or locn.flags & RAW_LOCN_IGNORED:
        return None
    ring = mda_size - MDA_HEADER_SIZE
    if not MDA_HEADER_SIZE <= locn.offset < mda_size or not 0 < locn.size <= min(
            ring, MAX_METADATA):
        raise FormatError(f"{where}: metadata of {locn.size} bytes at {locn.offset}")
    first = min(locn.size, mda_size - locn.offset)  # the ring buffer wraps after its end
    text = disk.read(pv.offset + mda_offset + locn.offset, first)
    text += disk.read(pv.offset + mda_offset + MDA_HEADER_SIZE, locn.size - first)
    if len(text) != locn.size:
        raise FormatError(f"{where}: metadata runs past the end of the image")
    if lvm_crc(text) != locn.checksum:
        raise FormatError(f"{where}: metadata checksum mismatch")
    tree = parse_metadata(text.rstrip(b"\0").decode("utf-8", "replace"))
    groups = [(name, vg) for name, vg in tree.items() if isinstance(vg, dict)]
    if len(groups) != 1:
        raise FormatError(f"{where}: {len(groups)} volume groups described, not one")
    name, vg = groups[0]
    return MetadataCopy(name, _get(vg, "id", str, name), _get(vg, "seqno", int, name), vg)


# --- logical volumes -------------------------------------------------------------


@dataclass
class LogicalVolume:
    """One LV of a VG found on a disk.  ``pieces``: ``(LV byte, disk byte, bytes)`` —
    for a readable LV they tile it; otherwise (``problem`` says why it is not read)
    they are the extents of it this disk holds, as far as they are known."""

    vg: str
    name: str
    size: int  # bytes
    pieces: list[tuple[int, int, int]]
    problem: str = ""
    visible: bool = True

    @property
    def full_name(self) -> str:
        return f"{self.vg}/{self.name}"


@dataclass
class LvmLayout:
    """What the PVs of a disk hold: their LVs, and for each PV (by its byte offset) why
    it could not be read, when it could not."""

    volumes: list[LogicalVolume] = field(default_factory=list)
    pv_problems: dict[int, str] = field(default_factory=dict)
    vg_of: dict[int, str] = field(default_factory=dict)  # PV offset -> VG name
    notes: list[str] = field(default_factory=list)  # damaged metadata read around


def read_layout(disk: Disk, areas: list[tuple[int, int]]) -> LvmLayout:
    """The LVs of the PVs at ``areas`` (``(byte offset, bytes)`` of each partition, or
    the whole disk, bearing an LVM2 label).  Never raises FormatError: what cannot
    be read is a PV or LV ``problem``."""
    layout = LvmLayout()
    pvs: list[PhysicalVolume] = []
    for offset, length in areas:
        try:
            pvs.append(read_pv(disk, offset, length))
        except FormatError as exc:
            layout.pv_problems[offset] = str(exc)
    newest: dict[str, MetadataCopy] = {}
    for pv in pvs:
        for copy in pv.metadata:
            if copy.vg_id not in newest or copy.seqno > newest[copy.vg_id].seqno:
                newest[copy.vg_id] = copy
    by_uuid = {pv.uuid: pv for pv in pvs}
    for copy in newest.values():
        try:
            _check_damaged(copy, by_uuid, layout)
            _volumes(copy, by_uuid, layout)
        except FormatError as exc:
            for pv in _pvs_named(copy.vg, by_uuid).values():
                layout.pv_problems.setdefault(pv.offset, f"VG {copy.vg_name}: {exc}")
                layout.vg_of[pv.offset] = copy.vg_name
            layout.volumes = [v for v in layout.volumes if v.vg != copy.vg_name]
    for pv in pvs:
        if pv.offset in layout.vg_of or pv.offset in layout.pv_problems:
            continue
        if pv.damaged:
            layout.pv_problems[pv.offset] = "; ".join(
                f"{d.problem}{_older(d)}" for d in pv.damaged)
        else:
            layout.pv_problems[pv.offset] = "no metadata names this PV (an unused PV, or " \
                                            "its VG's metadata is on a PV not on this disk)"
    return layout


def _older(damaged: AreaProblem) -> str:
    """What a damaged area's ring buffer still holds, said after its problem."""
    if not damaged.found:
        return ""
    listed = ", ".join(f"{name} seqno {seqno} at byte {at}" for at, name, seqno in damaged.found)
    return (f"; its ring buffer holds descriptions unchecked ({listed}; pvck --dump "
            f"metadata_search lists them), not used, as LVM does not use them: volumes "
            f"made, moved or resized since would be read wrong")


def _check_damaged(copy: MetadataCopy, by_uuid: dict[str, PhysicalVolume],
                   layout: LvmLayout) -> None:
    """Note each damaged metadata area of the VG's PVs read around through ``copy`` (an
    intact one, as LVM reads it); FormatError when a damaged area still shows a newer
    description than ``copy`` (LVM's newest is then unreadable)."""
    damaged_areas = [d for pv in _pvs_named(copy.vg, by_uuid).values() for d in pv.damaged]
    for damaged in damaged_areas:
        newer = [seqno for _, name, seqno in damaged.found
                 if name == copy.vg_name and seqno > copy.seqno]
        if newer:
            raise FormatError(f"{damaged.problem}, and a description there (seqno "
                              f"{max(newer)}) is newer than the intact one (seqno "
                              f"{copy.seqno}) in the {copy.where}")
    for damaged in damaged_areas:
        layout.notes.append(f"LVM2 {damaged.where}: {damaged.problem}; VG "
                            f"{copy.vg_name} read from its intact copy (seqno {copy.seqno}) "
                            f"in the {copy.where}, as LVM does")


def _pvs_named(vg: dict[str, Any], by_uuid: dict[str, PhysicalVolume]
               ) -> dict[str, PhysicalVolume]:
    """The VG's PV names ("pv0" …) whose PV is on this disk."""
    found = {}
    pv_sections = vg.get("physical_volumes")
    for name, section in (pv_sections.items() if isinstance(pv_sections, dict) else ()):
        pv_id = section.get("id") if isinstance(section, dict) else None
        if isinstance(pv_id, str) and pv_id.replace("-", "") in by_uuid:
            found[name] = by_uuid[pv_id.replace("-", "")]
    return found


def _volumes(copy: MetadataCopy, by_uuid: dict[str, PhysicalVolume], layout: LvmLayout
             ) -> None:
    """Add the VG's LVs to ``layout``; FormatError when the description itself does
    not hold together (then nothing of the VG is read)."""
    vg, vg_name = copy.vg, copy.vg_name
    extent = _get(vg, "extent_size", int, vg_name) * SECTOR
    if extent == 0:
        raise FormatError("extent_size 0")
    pv_sections = _get(vg, "physical_volumes", dict, vg_name)
    here = _pvs_named(vg, by_uuid)
    starts: dict[str, tuple[int, int]] = {}  # PV name -> (disk byte of PE 0, PE count)
    for name, pv in here.items():
        section = _get(pv_sections, name, dict, vg_name)
        pe_start = _get(section, "pe_start", int, f"{vg_name}/{name}") * SECTOR
        pe_count = _get(section, "pe_count", int, f"{vg_name}/{name}")
        if pe_start + pe_count * extent > pv.length:
            raise FormatError(f"{name}: {pe_count} extents of {extent} bytes from byte "
                              f"{pe_start} run past the PV's end ({pv.length} bytes)")
        starts[name] = (pv.offset + pe_start, pe_count)
        layout.vg_of[pv.offset] = vg_name
    lv_sections = vg.get("logical_volumes", {})
    if not isinstance(lv_sections, dict):
        raise FormatError("logical_volumes is not a section")
    snapshots = _snapshot_roles(lv_sections)
    for lv_name, lv in lv_sections.items():
        if not isinstance(lv, dict):
            raise FormatError(f"{lv_name} is not a section")
        layout.volumes.append(_volume(vg_name, lv_name, lv, extent, pv_sections, starts,
                                      snapshots.get(lv_name, "")))


def _snapshot_roles(lv_sections: dict[str, Any]) -> dict[str, str]:
    """LV name -> why it is not read as a file system for being part of a snapshot
    (the origin, whose reads depend on a merge state, and the copy-on-write store)."""
    roles: dict[str, str] = {}
    for name, lv in lv_sections.items():
        for segment in (lv.values() if isinstance(lv, dict) else ()):
            if isinstance(segment, dict) and segment.get("type") == "snapshot":
                origin, cow = segment.get("origin"), segment.get("cow_store")
                if isinstance(origin, str):
                    roles[origin] = f"origin of snapshot {name}"
                if isinstance(cow, str):
                    roles[cow] = f"copy-on-write store of snapshot {name} (of {origin})"
    return roles


def _volume(vg_name: str, lv_name: str, lv: dict[str, Any], extent: int,
            pv_sections: dict[str, Any], starts: dict[str, tuple[int, int]],
            role: str) -> LogicalVolume:
    """One LV: its pieces on this disk, and why it is not read when it is not."""
    where = f"{vg_name}/{lv_name}"
    status = lv.get("status", [])
    visible = isinstance(status, list) and VISIBLE in status
    segments = sorted((_get(seg, "start_extent", int, f"{where}/{key}"), key, seg)
                      for key, seg in lv.items() if isinstance(seg, dict))
    problems: list[str] = [role] if role else []
    if not visible:
        problems.append("an internal volume (not visible)")
    pieces: list[tuple[int, int, int]] = []
    reached = 0
    for start_extent, key, seg in segments:
        count = _get(seg, "extent_count", int, f"{where}/{key}")
        seg_type = seg.get("type")
        if start_extent != reached:
            problems.append(f"segments do not follow each other at extent {reached}")
        reached = start_extent + count
        if seg_type != "striped":
            problems.append(f"a {seg_type} segment")
            continue
        stripe_count = _get(seg, "stripe_count", int, f"{where}/{key}")
        stripes = _get(seg, "stripes", list, f"{where}/{key}")
        if stripe_count == 0 or len(stripes) != 2 * stripe_count or count % stripe_count:
            problems.append(f"{key}: {stripe_count} stripes listed as {len(stripes)} items "
                            f"for {count} extents")
            continue
        if stripe_count > 1:
            problems.append(f"striped over {stripe_count} stripes")
        per_stripe = count // stripe_count
        for pv_name, pe in zip(stripes[::2], stripes[1::2]):
            if not isinstance(pv_name, str) or not isinstance(pe, int) or pe < 0:
                raise FormatError(f"{where}/{key}: stripes {stripes!r}")
            if pv_name not in pv_sections:
                problems.append(f"on {pv_name}, not a PV of the VG (a pvmove in progress?)")
                continue
            if pv_name not in starts:
                problems.append(f"on {pv_name}, a PV not on this disk")
                continue
            first, pe_count = starts[pv_name]
            if pe + per_stripe > pe_count:
                raise FormatError(f"{where}/{key}: extents {pe}..{pe + per_stripe - 1} of "
                                  f"{pv_name}, which has {pe_count}")
            if per_stripe:
                pieces.append((start_extent * extent, first + pe * extent, per_stripe * extent))
    size = reached * extent
    if not problems and size == 0:
        problems.append("no extents")
    return LogicalVolume(vg_name, lv_name, size, pieces, "; ".join(dict.fromkeys(problems)),
                         visible)

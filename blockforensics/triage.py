"""Triage a chain: a verdict per point (clean / suspicious / encrypted), each with its reasons.

Every point is compared with its parent (:func:`blockforensics.forensics.diff` with
files) and measured:

- ``change_rate``: changed blocks / blocks holding data at the point;
- ``created`` / ``deleted`` / ``renamed`` / ``modified``: files (not directories);
- ``unexplained_high_entropy``: share of the changed blocks whose entropy is at least
  :data:`HIGH_BLOCK_ENTROPY` bits per byte and that no explained file owns: one of a
  compressed format (zip, jpeg, git pack, qcow2 … recognised by signature) or random
  before as much (``explained`` of the diff), or new data that destroyed none (a
  created file that took no deleted file's place, in a directory where nothing was
  deleted — a packed one, a cache entry evicted, does not count — not lying about its
  type) — not measured at a full: it has nothing to be
  compared with, and its files are read already;
- ``destroyed``: files whose content is gone with nothing in its place — emptied
  (truncated to 0 bytes, or their changed bytes all one value where they were not:
  a wiper's zeros), unless a new file named after it took its content beside it (a
  log rotated with ``copytruncate``: ``app.log`` emptied, ``app.log.1.gz`` new) —
  plus the readable (not packed) files deleted beyond the created files that hide
  nothing, when data that hides what it holds (ciphertext of no known format, or an
  archive of encrypted members) of at least :data:`PACKED_SHARE` of their bytes
  appeared with them (copy-encrypt-delete anywhere on the volume, archive-and-delete),
  or all the files deleted beyond those created when they are at least
  :data:`DELETED_SHARE` of the files there were.  A deletion alone (a cache emptied,
  old packages or logs removed), or a folder zipped and deleted (its content readable
  in the zip), is counted among the ``deleted``, a volume of change;
- ``extension_appended``: files renamed in the interval to append one same extension
  (``a.docx`` -> ``a.docx.x7k2q``; a rotation's number left out): how ransomware marks
  the files it took, even when it left their content alone;
- ``suspected_files``: files :func:`blockforensics.evidence.judge` suspects of
  encryption; ``rule_hits``: files a YARA rule matched (ransom notes);
- ``lost_filesystems``: file systems read at the parent that no longer are (see
  :class:`LostFileSystem`): a volume encrypted whole (BitLocker or LUKS turned on by
  an attacker, a master file table or superblock encrypted) or wiped, where no file
  is left to judge.

The **baseline** of a point is the same metrics over the earlier incremental points
judged clean (a rolling history): median and spread (1.4826 × median absolute
deviation).  A metric is *anomalous* above ``median + max(BASELINE_K × spread,
FLOORS[metric])``; with fewer than :data:`BASELINE_MIN` earlier points, above the
floor alone.

Verdicts:

- **encrypted**: at least one file suspected of encryption, or a file system lost
  with at least :data:`LOST_RANDOM_SHARE` of its changed blocks random (and at least
  :data:`LOST_RANDOM_MIN_BYTES` of them), or most files written (at least
  :data:`BROKEN_MIN`, :data:`BROKEN_SHARE` of them) have bodies that break the
  structure their format promises (``broken_bodies``, see :mod:`blockforensics.bodies`);
- **suspicious**: a file system lost otherwise, a YARA rule matched, a file's
  content contradicts its extension, its body breaks its format's structure (random
  bytes behind an intact header), or it carries an extension ransomware appends,
  or the unexplained high-entropy share, the files destroyed or the files given one
  appended extension are anomalous (the emptied or renamed files are then flagged);
- **clean** otherwise.  A volume of change alone (a package upgrade, a big copy) never
  makes a point suspicious; it is reported as an anomaly among the reasons.

Whatever the verdict, the file systems and files a point's diff could not read are
named among its reasons ("not read: …"): the verdict speaks for the rest only.

``last_clean_point``: the newest point whose whole lineage (itself and every parent
up to the full) is clean — the point to restore from; None when there is none.
"""

from __future__ import annotations

import bisect
import dataclasses
import importlib.resources
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from blockforensics import forensics
from blockforensics.errors import UsageError
from blockforensics.evidence import COMPRESSED, HEAD_BYTES, ZIP_LOCAL_HEADER, encrypted_archive
from blockforensics.tsk import Listing, listed_path, shown_name

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource
    from blockforensics.image.chain import Chain

#: block entropy (bits per byte) from which a changed block counts as high-entropy
HIGH_BLOCK_ENTROPY = 7.5
#: earlier clean incrementals needed before the baseline's spread is used
BASELINE_MIN = 2
#: a metric is anomalous above median + max(BASELINE_K * spread, floor)
BASELINE_K = 4.0
FLOORS = {"change_rate": 0.05, "created": 10, "deleted": 10, "renamed": 5,
          "unexplained_high_entropy": 0.10, "destroyed": 10, "extension_appended": 5}
#: deletions count as destroyed when data hiding what it holds (ciphertext, an archive of
#: encrypted members) of at least this share of their bytes appeared in the interval …
PACKED_SHARE = 0.05
#: … or when they are at least this share of the files at the parent point
DELETED_SHARE = 0.5
#: what separates a rotated copy's name from its original's (``app.log.1``, ``app.log-2026``)
ROTATION_SEPARATORS = (".", "-", "_")
#: a file system lost with at least this share of its changed blocks random was encrypted
LOST_RANDOM_SHARE = 0.5
#: … when they hold at least this many random bytes: random bytes over a superblock
#: alone are a wiper's as likely as a cipher's (a master file table encrypted spans more)
LOST_RANDOM_MIN_BYTES = 64 << 10
#: what a volume encrypted whole carries at its start: (name, byte offset, signature)
VOLUME_ENCRYPTION = (("BitLocker", 3, b"-FVE-FS-"), ("LUKS", 0, b"LUKS\xba\xbe"))
#: what the evidence of a file whose body breaks its format's structure says
#: (:meth:`blockforensics.bodies.Break.describe`)
BROKEN_BODY = "body breaks its own structure"
#: a point is encrypted when at least BROKEN_MIN files written (created, modified,
#: renamed), and at least BROKEN_SHARE of them, have such bodies
BROKEN_MIN, BROKEN_SHARE = 3, 0.5
#: metrics whose anomaly makes a point suspicious (the others are volumes of change)
ALARMS = ("unexplained_high_entropy", "destroyed", "extension_appended")
#: files listed per point (the most suspicious first)
TOP_FILES = 20

VERDICTS = ("clean", "suspicious", "encrypted")


# ------------------------------------------------------------------ rules
def compile_rules(directory: str | os.PathLike[str] | None = None) -> Any:
    """The shipped YARA rules (``blockforensics/rules/*.yar``) plus every ``*.yar`` /
    ``*.yara`` file of ``directory``; None when yara-python is not installed."""
    try:
        import yara
    except ImportError:
        if directory is not None:
            raise UsageError("--rules needs yara-python (pip install yara-python)") from None
        return None
    sources: dict[str, str] = {}
    shipped = importlib.resources.files("blockforensics") / "rules"
    for item in shipped.iterdir():
        if item.name.endswith(".yar"):
            sources[f"blockforensics_{Path(item.name).stem}"] = item.read_text()
    if directory is not None:
        folder = Path(directory)
        if not folder.is_dir():
            raise UsageError(f"{folder}: not a directory of YARA rules")
        for path in sorted(folder.iterdir()):
            if path.suffix in (".yar", ".yara"):
                sources[f"user_{path.stem}"] = path.read_text()
        if not any(name.startswith("user_") for name in sources):
            raise UsageError(f"{folder}: no .yar or .yara files")
    try:
        return yara.compile(sources=sources)
    except yara.Error as exc:
        raise UsageError(f"YARA rules do not compile: {exc}") from exc


# --------------------------------------------------------------- metrics
@dataclass
class LostFileSystem:
    """A file system read at the parent point that is not at this one: where it lay
    (bytes), what it was, its changed blocks, and the share of them random (entropy
    of at least :data:`HIGH_BLOCK_ENTROPY` bits per byte) or of one byte value.
    Encrypted: a volume encryption's signature at its start now, or at least
    :data:`LOST_RANDOM_SHARE` of its changed blocks random, and at least
    :data:`LOST_RANDOM_MIN_BYTES` of them."""

    prefix: str  # "" for a bare file system, "pN:" for partition N, "vg/lv:" for an LV
    kind: str  # what it was at the parent ("ntfs", "ext4" …)
    start_byte: int
    length_bytes: int
    changed_blocks: int
    random_share: float
    constant_share: float
    now: str | None  # a volume encryption's signature found at its start now
    block_size: int  # bytes per changed block

    @property
    def encrypted(self) -> bool:
        random_bytes = self.random_share * self.changed_blocks * self.block_size
        return self.now is not None or (self.random_share >= LOST_RANDOM_SHARE
                                        and random_bytes >= LOST_RANDOM_MIN_BYTES)

    def describe(self) -> str:
        where = ("the volume" if not self.prefix else f"partition {self.prefix[1:-1]}"
                 if self.prefix[1:-1].isdigit() else f"logical volume {self.prefix[:-1]}")
        what = (f"{self.kind} file system of {where} (read at the parent) is gone: "
                f"{self.random_share:.0%} of its {self.changed_blocks} changed blocks "
                f"random, {self.constant_share:.0%} of one byte value")
        if self.now is not None:
            return f"{what}; it is now a {self.now} volume — encrypted whole"
        if self.encrypted:
            return f"{what} — encrypted whole (its metadata or all of it)"
        if self.constant_share >= LOST_RANDOM_SHARE:
            return f"{what} — wiped"
        if self.random_share >= LOST_RANDOM_SHARE:
            return f"{what} — overwritten with random bytes, too few to tell a cipher's"
        if not self.changed_blocks:
            return f"{what} — its blocks unchanged: no table declares it where it was"
        return f"{what} — its structures destroyed"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "encrypted": self.encrypted}


@dataclass
class PointTriage:
    """The triage of one point: its metrics, baseline, verdict, reasons and files."""

    point: int
    parent: int | None
    label: str
    created: str  # ISO time of the backup
    metrics: dict[str, float]
    verdict: str = "clean"
    reasons: list[str] = field(default_factory=list)
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    #: the point's diff while it is judged; None after (a chain's every diff would be
    #: held to the end: ``forensics.point_diff`` gives it again)
    diff: forensics.DiffResult | None = None
    lost_filesystems: list[LostFileSystem] = field(default_factory=list)
    structure_changes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"point": self.point, "parent": self.parent, "label": self.label,
                "created": self.created, "verdict": self.verdict, "reasons": self.reasons,
                "metrics": self.metrics, "baseline": self.baseline, "files": self.files,
                "lost_filesystems": [lost.to_json() for lost in self.lost_filesystems],
                "structure_changes": self.structure_changes}


def _measure(chain: Chain, result: forensics.DiffResult, listing: Listing,
             before: Listing | None, rules: Any
             ) -> tuple[dict[str, float], dict[str, list[str]], list[LostFileSystem]]:
    """The point's metrics, per file path the YARA rules it matched, and the file
    systems lost since the parent (``listing``: the point's files, ``before``: its
    parent's, None for a full)."""
    files = result.files[result.files["type"] == "file"]
    counts = files["change"].value_counts()
    disk = chain.disk(result.b)
    positions = result.changed_map().positions()
    positions = positions[positions < disk.n_blocks]
    if result.a is None:  # a full has no baseline to compare with: not read twice
        positions = positions[:0]
    entropy = forensics.block_entropy(disk, positions)
    high = entropy >= HIGH_BLOCK_ENTROPY
    explained = files.loc[files["explained"] | _new_data(files), "path"]
    # a block that changed for its metadata can keep a deleted packed file's old bytes
    # (a 4 KiB block over 512-byte FAT clusters): their randomness is not new
    left = files.loc[(files["change"] == "deleted") & _packed(files, "before"), "path"]
    if (len(explained) or len(left)) and high.any():
        owned = np.concatenate([result.owned_blocks(p) for p in explained]
                               + [result.owned_blocks(p, "a") for p in left]
                               + [np.empty(0, np.int64)])
        high &= ~np.isin(positions, owned)
    lost = [] if before is None or result.a is None else _lost_filesystems(
        chain, result, before, listing, positions, entropy)
    present = int(chain.layout(result.b).present().count())
    hits: dict[str, list[str]] = {}
    if rules is not None:
        for path in files.loc[files["change"] != "deleted", "path"]:
            entry = listing.entries.get(path)
            if entry is not None:
                matched = rules.match(data=entry.read(disk, HEAD_BYTES))
                if matched:
                    hits[path] = sorted(m.rule for m in matched)
    return {
        "changed_blocks": result.changed_blocks,
        "change_rate": result.changed_blocks / present if present else 0.0,
        **{c: int(counts.get(c, 0)) for c in ("created", "deleted", "renamed", "modified")},
        "high_entropy_blocks": int((entropy >= HIGH_BLOCK_ENTROPY).sum()),
        "unexplained_high_entropy": float(high.mean()) if high.size else 0.0,
        "destroyed": int(_emptied(files).sum()) + _destroyed_by_deletion(
            files, before, _hiding(files, listing, disk)),
        "extension_appended": _appended_extension(files)[1],
        "suspected_files": int(files["suspected_encryption"].sum()),
        "broken_bodies": int(_broken(files).sum()),
        "written_files": int((files["change"] != "deleted").sum()),
        "rule_hits": len(hits),
        "lost_filesystems": len(lost),
    }, hits, lost


def _roots(listing: Listing) -> set[str]:
    """The path prefixes of the file systems a listing read ("" or "pN:")."""
    return {path[:-1] for path in listing.entries if path == "/" or path.endswith(":/")}


def _lost_filesystems(chain: Chain, result: forensics.DiffResult, before: Listing,
                      after: Listing, positions: np.ndarray, entropy: np.ndarray
                      ) -> list[LostFileSystem]:
    """The file systems ``before`` read that ``after`` does not, each measured over the
    changed blocks (``positions``, with their ``entropy`` at the point) it spanned."""
    gone = _roots(before) - _roots(after)
    if not gone or result.a is None:
        return []
    from blockforensics.allocation import detect, filesystem_partitions

    parent, disk = chain.disk(result.a), chain.disk(result.b)
    bs = disk.block_size
    lost = []
    for part in filesystem_partitions(parent):
        prefix = (f"{part.name}:" if part.kind == "lv"  # an LVM2 logical volume
                  else "" if part.index is None else f"p{part.index}:")
        if prefix not in gone:
            continue
        inside = np.zeros(positions.shape, dtype=bool)
        for start, end in part.extents():  # an LV's extents lie apart on the disk
            inside |= (positions >= start // bs) & (positions < -(-end // bs))
        view, offset = part.view(disk)
        head = view.read(offset, 16) if offset < view.size else b""
        now = next((name for name, at, magic in VOLUME_ENCRYPTION
                    if head[at : at + len(magic)] == magic), None)
        lost.append(LostFileSystem(
            prefix, detect(*part.view(parent)) or "unknown", part.start_byte,
            part.length_bytes, int(inside.sum()),
            float((entropy[inside] >= HIGH_BLOCK_ENTROPY).mean()) if inside.any() else 0.0,
            float((entropy[inside] == 0).mean()) if inside.any() else 0.0, now, bs))
    return lost


def _structure_changes(parent: Any, disk: Any) -> list[str]:
    """How the disk's structures differ from the parent's: its partition table
    (:func:`_table_changes`), and each file system whose primary boot sector or
    superblock bore its signature and no longer does — read now, if at all, from a
    backup copy (TSK reads a FAT32 from sector 6): a wiper's first strike."""
    from blockforensics.allocation import filesystem_partitions, signed_reader

    changes = _table_changes(parent, disk)
    for part in filesystem_partitions(parent):
        was = signed_reader(*part.view(parent))
        if was is not None and signed_reader(*part.view(disk)) is None:
            kind = was.__name__.removesuffix("FileSystem").lower()
            changes.append(f"the {kind} file system of the {part.label}: its primary boot "
                           f"sector or superblock no longer bears its signature")
    return changes


def _table_changes(parent: Any, disk: Any) -> list[str]:
    """How the disk's partition table differs from the parent's (a disk with one): its
    kind, the partitions it declares (bytes), or what reading it newly noticed (a
    protective MBR gone, the primary GPT header unusable) — a wiper's first strike."""
    from blockforensics.allocation import partition_table
    from blockforensics.errors import FormatError

    def read(d: Any) -> tuple[str, set[tuple[int, int]], list[str]]:
        try:
            kind, found, notes = partition_table(d)
        except FormatError as exc:
            return "unreadable", set(), [str(exc)]
        return kind, {(q.start_byte, q.length_bytes) for q in found}, notes

    (kind_a, parts_a, notes_a), (kind_b, parts_b, notes_b) = read(parent), read(disk)
    if kind_a == "none":
        return []
    if kind_b != kind_a:
        return [f"the partition table was {kind_a.upper()}, now "
                + ("none is found" if kind_b == "none" else kind_b.upper())]
    changes = []
    if parts_b != parts_a:
        changes.append(f"the {kind_a.upper()} partition table declares other partitions: "
                       f"{len(parts_a - parts_b)} gone, {len(parts_b - parts_a)} new")
    changes += [f"the {kind_a.upper()} partition table: {note}"
                for note in notes_b if note not in notes_a]
    return changes


def _emptied(files: pd.DataFrame) -> pd.Series:
    """Which rows are files whose content was wiped: truncated to nothing — unless a
    rotated copy took it (:func:`_rotated`) — or the bytes compared all one value
    (entropy 0 bits per byte) where they were not."""
    kept = files["change"].isin(["modified", "renamed"]) & (files["size_before"] > 0)
    empty = files["size_after"] == 0
    zeroed = ~empty & (files["entropy_after"] == 0) & (files["entropy_before"] > 0)
    return kept & ((empty & ~_rotated(files)) | zeroed)


def _rotated(files: pd.DataFrame) -> pd.Series:
    """Which rows have a new or changed file beside them named after them and a
    separator (``app.log`` -> ``app.log.1``, ``app.log-20261203.gz``): where a rotation
    copied their content before truncating them."""
    written = sorted(files.loc[files["change"] != "deleted", "path"])

    def has_copy(path: str) -> bool:
        for separator in ROTATION_SEPARATORS:
            prefix = path + separator
            at = bisect.bisect_left(written, prefix)
            if at < len(written) and written[at].startswith(prefix):
                return True
        return False

    return files["path"].map(has_copy).astype(bool)


def _packed(files: pd.DataFrame, side: str) -> pd.Series:
    """Which rows' content was packed at ``side`` ("before" or "after"): of a compressed
    format by signature, or random (entropy at least :data:`HIGH_BLOCK_ENTROPY`)."""
    return (files[f"content_{side}"].isin(COMPRESSED)
            | (files[f"entropy_{side}"] >= HIGH_BLOCK_ENTROPY))


def _hiding(files: pd.DataFrame, listing: Listing, disk: Any) -> pd.Series:
    """Which rows are written files whose bytes now hide what they hold (created, or not
    packed before): at least half their segments random (raw, or as base64/hex) and no compressed
    format by signature — ciphertext — or an archive of encrypted members
    (:func:`evidence.encrypted_archive`)."""
    written = (files["change"] == "created") | ((files["change"] != "deleted")
                                                 & ~_packed(files, "before"))
    random = (~files["content_after"].isin(COMPRESSED) & (files["segments"] > 0)
              & (2 * files["random_segments"] >= files["segments"]))
    archives = files.loc[written & (files["content_after"] == "zip"), "path"]
    locked = {p for p in archives if (e := listing.entries.get(p)) is not None
              and encrypted_archive(e.read(disk, ZIP_LOCAL_HEADER.size))}
    return written & (random | files["path"].isin(locked))


def _destroyed_by_deletion(files: pd.DataFrame, before: Listing | None,
                           hiding: pd.Series) -> int:
    """The files deleted (or renamed over) that count as destroyed (see the module's
    documentation): those that were readable (not packed) beyond the created files that
    hide nothing, when data that hides what it holds (``hiding``, :func:`_hiding`) of at
    least :data:`PACKED_SHARE` of their bytes appeared with them; or all deleted beyond
    those created, when they are at least :data:`DELETED_SHARE` of the parent's files;
    else 0."""
    change = files["change"]
    gone = (change == "deleted") | ((change == "renamed") & (files["replaces"] != "")
                                    & (files["type"] == "file"))
    readable = gone & ~_packed(files, "before")
    created = change == "created"
    taken = int(readable.sum()) - int((created & ~hiding).sum())
    if taken > 0 and int(files.loc[hiding, "size_after"].sum()) \
            >= PACKED_SHARE * int(files.loc[readable, "size_before"].sum()):
        return taken
    surplus = int(gone.sum()) - int(created.sum())  # renamed over: gone too
    present = 0 if before is None else sum(e.type == "file" for e in before.entries.values())
    return surplus if surplus > 0 and surplus >= DELETED_SHARE * present else 0


def _appended_extension(files: pd.DataFrame) -> tuple[str, int]:
    """The extension most renamed files gained in the interval (``a.docx`` ->
    ``a.docx.x7k2q``, in its own directory) and how many gained it; numbers, a
    rotation's ``.1``, are left out."""
    renamed = files[(files["change"] == "renamed") & (files["old_path"] != "")]
    gained = [new[len(old) + 1:].lower() for old, new in zip(renamed["old_path"],
                                                              renamed["path"])
              if new.startswith(old + ".") and "/" not in new[len(old):]]
    counts = pd.Series([g for g in gained if not g.isdigit()], dtype=object).value_counts()
    return (str(counts.index[0]), int(counts.iloc[0])) if len(counts) else ("", 0)


def _new_data(files: pd.DataFrame) -> pd.Series:
    """Which rows are new data that destroyed none: created files that took no deleted
    file's place, in a directory where no readable (not packed) file was deleted — a
    cache's old entries evicted for new ones are packed — not suspected and not lying
    about their type."""
    directory = files["path"].map(os.path.dirname)
    emptied = set(directory[(files["change"] == "deleted") & ~_packed(files, "before")])
    return ((files["change"] == "created") & (files["replaces"] == "")
            & ~directory.isin(emptied) & ~files["suspected_encryption"]
            & ~files["evidence"].map(_lies))


def _baseline(history: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for metric, floor in FLOORS.items():
        values = np.array([h[metric] for h in history], dtype=np.float64)
        if len(values) >= BASELINE_MIN:
            median = float(np.median(values))
            spread = 1.4826 * float(np.median(np.abs(values - median)))
        else:
            median, spread = (float(np.median(values)) if len(values) else 0.0), 0.0
        threshold = median + max(BASELINE_K * spread, floor)
        out[metric] = {"median": median, "spread": spread, "threshold": threshold,
                       "points": len(values)}
    return out


def _describe(metric: str, value: float) -> str:
    if metric in ("change_rate", "unexplained_high_entropy"):
        return f"{value:.1%}"
    return f"{int(value)}"


def _file_rows(result: forensics.DiffResult, hits: dict[str, list[str]]
               ) -> list[dict[str, Any]]:
    files = result.files[result.files["type"] == "file"]
    emptied = _emptied(files)
    rows = []
    for row, wiped in zip(files.itertuples(), emptied):
        rules = hits.get(row.path, [])
        evidence = list(row.evidence) + [f"YARA rule {r} matched" for r in rules]
        if wiped:
            evidence.append(f"emptied: {row.size_before} -> {row.size_after} bytes"
                            + ("" if row.size_after == 0 else ", the bytes compared all "
                               "one value (entropy 0 bits/byte)"))
        blocks = result.owned_blocks(row.path, "a" if row.change == "deleted" else "b")
        if blocks.size:
            evidence.append(f"{blocks.size} changed block(s), first {int(blocks.min())}")
        flagged = bool(row.suspected_encryption) or bool(rules) or _lies(row.evidence)
        rows.append({"path": row.path, "change": row.change,
                     "suspected_encryption": bool(row.suspected_encryption),
                     "evidence": evidence, "old_path": row.old_path or None,
                     "size_before": int(row.size_before), "size_after": int(row.size_after),
                     "entropy_before": round(float(row.entropy_before), 4),
                     "entropy_after": round(float(row.entropy_after), 4),
                     "content": row.content_after or None, "rules": rules,
                     "flagged": flagged, "emptied": bool(wiped),
                     "_score": (bool(row.suspected_encryption), bool(rules), flagged,
                                bool(wiped), int(row.random_segments))})
    rows.sort(key=lambda r: r.pop("_score"), reverse=True)
    return rows


def _lies(evidence: list[str]) -> bool:
    """Does a file's evidence say its content contradicts its extension, that it lost
    its format's signature, that its body breaks its format's structure, or name an
    extension ransomware appends?"""
    return any(" promises " in e or "signature gone" in e or "ransomware appends" in e
               or BROKEN_BODY in e for e in evidence)


def _broken(files: pd.DataFrame) -> pd.Series:
    """Which rows' bodies break the structure their format promises (random bytes)."""
    return files["evidence"].map(lambda ev: any(BROKEN_BODY in e for e in ev)).astype(bool)


def _judge(t: PointTriage, hits: dict[str, list[str]], full: bool) -> None:
    m, reasons = t.metrics, []
    if m["suspected_files"]:
        t.verdict = "encrypted"
        reasons.append(f"{m['suspected_files']} file(s) suspected of encryption (random "
                       f"segments appeared, chi-square p >= 0.001, no compressed format "
                       f"explains them; or an archive of encrypted members took their "
                       f"content's place)")
    broken = m["broken_bodies"]
    if broken >= BROKEN_MIN and broken >= BROKEN_SHARE * m["written_files"]:
        t.verdict = "encrypted"
        reasons.append(f"{broken} of {m['written_files']} files written break the structure "
                       f"their format promises, with random bytes from the break (a body "
                       f"encrypted behind its intact header)")
    for change in t.structure_changes:
        reasons.append(change)
        t.verdict = max(t.verdict, "suspicious", key=VERDICTS.index)
    for lost in t.lost_filesystems:
        reasons.append(lost.describe())
        t.verdict = "encrypted" if lost.encrypted else max(t.verdict, "suspicious",
                                                           key=VERDICTS.index)
    if hits:
        reasons.append(f"YARA: {len(hits)} file(s) matched: " + "; ".join(
            f"{p} ({', '.join(r)})" for p, r in sorted(hits.items())))
    liars = [f for f in t.files if _lies(f["evidence"]) and not f["suspected_encryption"]]
    if liars:
        reasons.append(f"{len(liars)} file(s) whose content contradicts the extension, or "
                       f"lost its format's signature, or whose body breaks its format's "
                       f"structure, or with an extension ransomware appends: "
                       + ", ".join(f["path"] for f in liars[:5]))
    anomalies = []
    for metric, base in ([] if full else t.baseline.items()):
        if m[metric] > base["threshold"]:
            anomalies.append(metric)
            reasons.append(
                f"{metric.replace('_', ' ')} {_describe(metric, m[metric])} above the "
                f"baseline (median {_describe(metric, base['median'])}, spread "
                f"{_describe(metric, base['spread'])} over {base['points']} point(s)): "
                f"threshold {_describe(metric, base['threshold'])}"
                + ("" if metric in ALARMS
                   else " — a volume of change, not by itself suspicious"))
    if "extension_appended" in anomalies and t.diff is not None:
        gained, count = _appended_extension(t.diff.files)
        reasons.append(f"{count} file(s) renamed to append the extension .{gained} "
                       f"(ransomware marks the files it took so; the content is judged "
                       f"on its own)")
        for f in t.files:
            marked = f"{f['old_path']}.{gained}".lower() == f["path"].lower()
            f["flagged"] = f["flagged"] or (f["change"] == "renamed" and marked)
    if "destroyed" in anomalies:
        for f in t.files:
            f["flagged"] = f["flagged"] or f["emptied"]
    if t.verdict != "encrypted" and (hits or liars or set(anomalies) & set(ALARMS)):
        t.verdict = "suspicious"
    if t.verdict == "clean" and full:
        reasons.insert(0, f"no content evidence in {m['created']} files; a full backup: "
                          f"judged by file content alone (no parent, no baseline)")
    elif t.verdict == "clean":
        reasons.insert(0, f"no content evidence: {m['changed_blocks']} blocks changed "
                          f"({_describe('change_rate', m['change_rate'])}), "
                          f"{_describe('unexplained_high_entropy', m['unexplained_high_entropy'])}"
                          f" unexplained high-entropy blocks")
    if t.diff is not None:  # what could not be read is named, whatever the verdict
        reasons += [f"not read: {note}" for note in t.diff.notes]
    t.reasons = reasons


@dataclass
class TriageResult:
    """The triage of a chain: one :class:`PointTriage` per point and the last clean point."""

    chain: str
    points: list[PointTriage]
    last_clean_point: int | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The ``triage --json`` document."""
        return {"chain": self.chain, "points": [p.to_json() for p in self.points],
                "last_clean_point": self.last_clean_point,
                "seconds": round(self.seconds, 3)}

    def frame(self) -> pd.DataFrame:
        """One row per point: verdict and metrics."""
        return pd.DataFrame([{"point": p.point, "label": p.label, "verdict": p.verdict,
                              **p.metrics} for p in self.points])

    def __str__(self) -> str:
        lines = []
        for p in self.points:
            lines.append(f"point {p.point} ({p.label or p.created}): {p.verdict.upper()}")
            lines += [f"  - {r}" for r in p.reasons]
            shown = [f for f in p.files if f["flagged"]][:5]
            for f in shown:
                lines.append(f"    {f['change']:8} {shown_name(f['path'])}"
                             + (" [suspected encryption]" if f["suspected_encryption"] else ""))
                lines += [f"        {shown_name(e)}" for e in f["evidence"]]
        lines.append(f"last clean point: {self.last_clean_point}"
                     + ("" if self.last_clean_point is not None else " (none)"))
        return "\n".join(lines)


def triage(chain: Chain, rules: str | os.PathLike[str] | None = None) -> TriageResult:
    """Triage every point of an open chain (see the module documentation)."""
    started = time.perf_counter()
    compiled = compile_rules(rules)
    rows = chain.rows()
    listings: dict[int | None, Listing] = {}
    points: list[PointTriage] = []
    for p in range(len(chain)):
        parent = chain.parent(p)
        result = forensics.point_diff(chain, p, listings)
        metrics, hits, lost = _measure(chain, result, listings[p], listings.get(parent),
                                       compiled)
        t = PointTriage(p, parent, str(rows[p]["label"]), str(rows[p]["created"]), metrics,
                        diff=result, lost_filesystems=lost,
                        structure_changes=[] if parent is None else _structure_changes(
                            chain.disk(parent), chain.disk(p)))
        history = [q.metrics for q in points if q.parent is not None and q.verdict == "clean"]
        t.baseline = _baseline(history)
        t.files = _file_rows(result, hits)
        _judge(t, hits, full=parent is None)
        t.files, t.diff = t.files[:TOP_FILES], None
        points.append(t)
        forensics.forget_listings(chain, listings, p)
    clean = {t.point for t in points if t.verdict == "clean"}
    lineage_clean = [p.point for p in points if all(q in clean for q in chain.path(p.point))]
    return TriageResult(str(chain.directory), points,
                        max(lineage_clean) if lineage_clean else None,
                        time.perf_counter() - started)


def before_after(chain: Chain, a: int | None, b: int, row: Any,
                 listings: dict[int | None, Listing]) -> tuple[bytes, bytes, str | None]:
    """The whole content of a changed file (a row of ``DiffResult.files``) at point ``a``
    — under its old name, or the deleted file it replaced — and at ``b``; and the path
    the *before* bytes come from (None: there were none)."""
    from blockforensics.tsk import list_entries

    for p in (a, b):
        if p not in listings:
            listings[p] = list_entries(None if p is None else chain.disk(p))
    old_path = row.old_path or row.replaces or row.path
    old = listings[a].entries.get(old_path) if a is not None else None
    new = listings[b].entries.get(row.path)
    before = old.read(chain.disk(a)) if old is not None and a is not None else b""
    after = new.read(chain.disk(b)) if new is not None else b""
    return before, after, old_path if old is not None else None


def explain(chain: Chain, path: str, point: str | int | None = None) -> str:
    """The evidence for one file: at every point where it changed against its parent
    (or at ``point``): the change, its evidence with numbers and thresholds, its changed
    blocks, and before/after hex aligned at the first changed byte."""
    from blockforensics.hexview import aligned, first_difference

    path = listed_path(path)
    points = range(len(chain)) if point is None else [chain.point(point)]
    listings: dict[int | None, Listing] = {}
    out = []
    for p in points:
        result = forensics.point_diff(chain, p, listings)
        files = result.files
        rows = files[(files["path"] == path) | (files["old_path"] == path)]
        for row in rows.itertuples():
            parent = chain.parent(p)
            out.append(f"point {p} (parent {parent}): {row.change} {row.path}"
                       + (f" (from {row.old_path})" if row.old_path else "")
                       + (" — SUSPECTED ENCRYPTION" if row.suspected_encryption else ""))
            out += [f"  {e}" for e in row.evidence]
            side = "a" if row.change == "deleted" else "b"
            blocks = result.owned_blocks(row.path, side)
            if blocks.size:
                out.append(f"  changed blocks ({blocks.size}): "
                           + ", ".join(map(str, blocks[:16].tolist()))
                           + (" …" if blocks.size > 16 else ""))
            before, after, source = before_after(chain, parent, p, row, listings)
            start = first_difference(before, after)
            if start is not None:
                block = start - start % chain.block_size
                out.append(f"  first changed byte at file offset {start} (block of "
                           f"{chain.block_size} B at offset {block}); "
                           f"before: {source or '(none)'}")
                out.append(aligned(before, after, start))
    if not out:
        where = "any point" if point is None else f"point {points[0]}"
        raise UsageError(f"{path}: no change at {where} (paths look like /dir/name)")
    return "\n".join(out)


def triage_chain(path: str | os.PathLike[str], *, rules: str | os.PathLike[str] | None = None,
                 key: KeySource | None = None) -> dict[str, Any]:
    """Open the chain at ``path`` (with ``key`` if encrypted) and return exactly the
    ``triage --json`` object: ``{"points": [...], "last_clean_point": int | None, ...}``."""
    from blockforensics.image.chain import Chain

    with Chain.open(path, key) as chain:
        return triage(chain, rules).to_json()


"""What changed between two points of a chain, in which files, and does it look like ransomware?

Everything here reads the points straight from the chain (``Chain.disk``), never
from a restore:

- :func:`diff` — the changed block runs between any two points (from the index
  digests, nothing read) and, with ``files=True``, the files behind them, found by
  walking both points with The Sleuth Kit (:mod:`blockforensics.tsk`).
- :func:`block_entropy` — Shannon entropy per block, in bits per byte (0..8).
- :func:`changes` and :func:`timeline` — every file change of every point
  against its parent, and per point the counts.

How a change is named (paths compared, ``p1:/x`` for partition 1):

- *renamed*: a path gone and a path new that are the same file — the same inode (MFT
  record and sequence on NTFS) born at the same time (to the nanosecond where
  recorded, else also the same first data run and, unless named after the old name,
  the same first 4 KiB), on FAT/exFAT (whose "inode" is the directory entry's place)
  the same first cluster and birth time (and the same test) — or, failing that, the
  same content (same size and SHA-256, e.g. FAT moves, copy + delete).  A path present
  at both points that names another file or directory now (renamed over, names
  swapped) takes part too: ``mv a b`` over an existing ``b`` is ``b`` renamed from
  ``a``, ``replaces`` = ``b``; a swap is two renames; a directory renamed is a renamed
  directory and each file below it renamed;
- *created* / *deleted*: the path exists at one point only (and is no rename); a
  file replaced by a directory of that name is a deletion and a creation;
- a file is *modified* when its size or mtime (to the nanosecond) differs or its
  bytes differ.  Bytes are compared whenever anything changed (size, mtime, ctime,
  data runs, or a changed block holds its data): with the same data runs, only its
  bytes inside
  changed blocks (a changed block can hold other files' clusters, so touching one
  proves nothing); with other runs, the whole content; resident data (NTFS
  resident ``$DATA``, ext4 ``inline_data``, a symlink's target) is always compared.
  Metadata alone is a modification too: ``what_changed`` says what — content (or
  target), size, mtime, mode, owner, links (the hard-link count), streams (NTFS
  named streams), else ctime (an xattr or ACL: something in the inode no listing shows);
- a directory is *modified* when the names it lists differ;
- a Btrfs snapshot made or deleted: an entry created (deleted) that is the same inode
  of another subvolume (number, generation, birth time) with the same data (disk
  extents, resident bytes) as one present at both points (created: or at the first)
  is a snapshot's copy; one row stands for the top copied directory (or file), its
  evidence naming the source and how many copies lie below it.

A created file that takes the place of a deleted one — same directory and the new
name extends the old one (``report.txt`` → ``report.txt.locked``), or the same
stem, or the deleted file there it outgrows the least (by at most 1 KiB, no other
as close: random new names) — is judged against
the deleted file's content: that is the copy-encrypt-delete pattern.

Each changed file is judged by :func:`blockforensics.evidence.judge` (entropy,
per-segment randomness, signature vs extension); its ``evidence`` says why, with
numbers and thresholds; ``explained`` says its random segments are accounted for (a
compressed format by signature, or as random before).  Entropy columns: bits per
byte over the file's bytes
inside the changed blocks (same runs) or its whole content (elsewhere, created,
deleted, replaced); 0 where there are no such bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np
import pandas as pd

from blockforensics.blockmap import BlockMap
from blockforensics.bodies import BODY_BYTES, CHECKS, body_break
from blockforensics.evidence import ByteStats, histograms, judge
from blockforensics.evidence import entropy as _entropy
from blockforensics.formats.base import Disk
from blockforensics.progress import progress_bar
from blockforensics.tsk import (
    NAME_ADDRESSED,
    ChainImgInfo,
    Entry,
    Listing,
    Unreached,
    list_entries,
    shown_name,
    unreached,
)

if TYPE_CHECKING:
    from blockforensics.image.chain import Chain, PointRef

__all__ = ["ChainImgInfo", "DiffResult", "block_entropy", "changes", "diff", "list_files",
           "point_diff", "timeline"]

#: bytes read at a time when histogramming blocks
CHUNK_BYTES = 8 << 20
#: bytes compared to tell a rename from an inode reused within a coarse birth time
HEAD_BYTES = 4096
#: a created file replaces a deleted one of nearly the same size: at most this much more
REPLACEMENT_SLACK = 1024
#: ByteStats a comparison keeps to reuse (each up to about 80 KiB: its histograms and
#: the 64 KiB head); past them a file's stats are read again where needed, so a
#: comparison of 100 000 files renamed or rewritten holds no more than these
STATS_KEPT = 512

FILE_COLUMNS = ["path", "type", "change", "entropy_before", "entropy_after", "size_before",
                "size_after", "suspected_encryption", "old_path", "inode", "content_before",
                "content_after", "random_segments", "segments", "evidence", "replaces",
                "explained", "what_changed", "other_paths"]
SHOWN_COLUMNS = [*FILE_COLUMNS[:8], "what_changed", "old_path"]  # what printing shows
OWNER_COLUMNS = ["start", "length", "path", "side"]


# ------------------------------------------------------------------ entropy
def block_entropy(disk: Disk, positions: np.ndarray | BlockMap | None = None) -> np.ndarray:
    """Shannon entropy of blocks of a Disk or Volume, in bits per byte (0 = constant, 8 = random).

    ``positions``: block positions (or a BlockMap); default every block.  Blocks are
    read a run at a time, in chunks; histograms are computed for a whole chunk at once.
    """
    if positions is None:
        positions = np.arange(disk.n_blocks, dtype=np.int64)
    elif isinstance(positions, BlockMap):
        positions = positions.positions()
    positions = np.asarray(positions, dtype=np.int64).ravel()
    out = np.empty(positions.size, dtype=np.float64)
    if positions.size == 0:
        return out
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    step = max(1, CHUNK_BYTES // disk.block_size)
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    done = 0
    for run in np.split(ordered, breaks):
        for lo in range(0, run.size, step):
            count = min(step, run.size - lo)
            blocks = disk.read_blocks(int(run[lo]), count)
            out[order[done : done + count]] = _entropy(histograms(blocks))
            done += count
    return out


def list_files(disk: Disk) -> pd.DataFrame:
    """Files and directories of a Disk (e.g. ``chain.disk(p)``) as TSK lists them, by path.

    Columns: path, type ("file"/"dir"), size (bytes), mtime (seconds since the epoch),
    inode (TSK's metadata address: inode, MFT record number, FAT entry slot).
    """
    rows = [(e.path, e.type, e.size, e.mtime, e.inode)
            for e in list_entries(disk).entries.values()]
    return pd.DataFrame(rows, columns=["path", "type", "size", "mtime", "inode"]) \
        .sort_values("path", ignore_index=True)


# ------------------------------------------------------------ comparison
def _clip(extents: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Byte intervals ``(k, 2)`` intersected with sorted disjoint runs ``[starts, stops)``."""
    lo = np.searchsorted(stops, extents[:, 0], side="right")
    hi = np.searchsorted(starts, extents[:, 1], side="left")
    counts = np.maximum(hi - lo, 0)
    which = np.repeat(np.arange(len(extents)), counts)
    run = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) \
        + np.repeat(lo, counts)
    out = np.stack([np.maximum(extents[which, 0], starts[run]),
                    np.minimum(extents[which, 1], stops[run])], axis=1)
    return out[out[:, 1] > out[:, 0]]


def _stats(disk: Disk | None, entry: Entry | None, intervals: np.ndarray | None = None
           ) -> ByteStats:
    """ByteStats of an entry's content (or those disk byte ranges of it)."""
    stats = ByteStats()
    if entry is not None and entry.type == "file":
        for chunk in entry.chunks(disk, intervals):
            stats.update(chunk)
    return stats.finish()


def _head_type(disk: Disk | None, entry: Entry | None, stats: ByteStats | None = None
               ) -> str | None:
    """The content type its first 4 KiB show; from ``stats`` when they measured its
    whole content (their head: no second read), else read."""
    from blockforensics.evidence import content_type

    if entry is None or entry.type != "file" or entry.size == 0:
        return None
    if stats is not None and stats.size == entry.size:
        return content_type(stats.head[:4096])
    return content_type(entry.read(disk, 4096))


def _starts_with(disk: Disk | None, entry: Entry, intervals: np.ndarray | None,
                 before: ByteStats) -> bool:
    """Do an entry's bytes (or those disk byte ranges of it) begin with exactly the
    bytes ``before`` measured (same length and SHA-256)?"""
    digest, left = hashlib.sha256(), before.size
    for chunk in entry.chunks(disk, intervals):
        digest.update(chunk[:left])
        left -= min(left, len(chunk))
        if not left:
            break
    return not left and digest.hexdigest() == before.sha256


def _replaces(new: Entry, old: Entry) -> bool:
    """Does created ``new`` look like the copy that took deleted ``old``'s place?"""
    new_dir, new_name = os.path.split(new.path)
    old_dir, old_name = os.path.split(old.path)
    if new_dir != old_dir or new.type != "file" or old.type != "file":
        return False
    return (new_name.startswith(old_name + ".") or old_name.startswith(new_name + ".")
            or new_name.split(".")[0] == old_name.split(".")[0])


def _metadata_changes(old: Entry, new: Entry) -> list[str]:
    """What differs beyond size, mtime and content: mode, owner, links (hard-link
    count), streams (NTFS named data streams), else ctime alone (an xattr, an ACL:
    something in the inode the listing does not show)."""
    what = [name for name, differs in (
        ("mode", old.mode != new.mode), ("owner", (old.uid, old.gid) != (new.uid, new.gid)),
        ("links", old.nlink != new.nlink), ("streams", old.streams != new.streams))
        if differs]
    return what or (["ctime"] if (old.ctime, old.ctime_ns) != (new.ctime, new.ctime_ns) else [])


def _born_to_the_ns(old: Entry, now: Entry) -> bool:
    """Is the birth time recorded below the second (ext4, NTFS), the inode a real
    identity (not FAT's directory-entry place)?  Then inode and birth say "same file"."""
    return bool(old.crtime_ns or now.crtime_ns) and old.fs not in NAME_ADDRESSED


def _birth_and_start(entry: Entry) -> tuple | None:
    """(type, birth time, first data byte) of an entry with both on a file system whose
    metadata address is the directory entry's place (FAT, exFAT: it moves with the
    name); no two live files share a first data run, and birth time tells a reused one."""
    if entry.fs not in NAME_ADDRESSED or not entry.crtime or not len(entry.extents):
        return None
    return entry.type, entry.crtime, entry.crtime_ns, int(entry.extents[0, 0])


def _likeliest(now: Entry, names: list[Entry]) -> Entry | None:
    """Which of the gone names of ``now``'s inode it is the renamed one of: several when
    a hard-linked file lost several names — the one in its directory whose name it
    shares the most of (``b`` -> ``b_new``, ``c`` -> ``c_new``)."""
    folder, name = os.path.split(now.path)

    def likeness(old: Entry) -> tuple[bool, int]:
        old_folder, old_name = os.path.split(old.path)
        shared = next((i for i, (x, y) in enumerate(zip(old_name, name)) if x != y),
                      min(len(old_name), len(name)))
        return old_folder == folder, shared

    return max(names, key=likeness, default=None)


class _Places:
    """Deleted files indexed for :func:`_replaces` (by name, by stem, by each name a dot
    ends) and, per directory, by size: a created file's lookup takes the same time
    however many were deleted (a directory of 10 000 renamed, wiped or encrypted)."""

    def __init__(self, gone: dict[str, Entry]):
        self.gone = gone
        self.keys: dict[tuple[str, str, str], list[str]] = {}
        files = [(os.path.split(p), p, e.size) for p, e in gone.items() if e.type == "file"]
        for (folder, name), path, _ in files:
            for key in (("name", folder, name), ("stem", folder, name.split(".")[0]),
                        *(("ext", folder, name[:i]) for i, c in enumerate(name) if c == ".")):
                self.keys.setdefault(key, []).append(path)
        frame = pd.DataFrame({"dir": [f[0][0] for f in files], "path": [f[1] for f in files],
                              "size": np.array([f[2] for f in files], dtype=np.int64)})
        self.sizes = {folder: (group["size"].to_numpy(), group["path"].tolist())
                      for folder, group in frame.sort_values(["size", "path"]).groupby("dir")}

    def named(self, now: Entry) -> list[Entry]:
        """The deleted files ``now`` is named after (:func:`_replaces`), still deleted."""
        if now.type != "file":
            return []
        folder, name = os.path.split(now.path)
        keys = [("stem", folder, name.split(".")[0]), ("ext", folder, name),
                *(("name", folder, name[:i]) for i, c in enumerate(name) if c == ".")]
        paths = dict.fromkeys(p for key in keys for p in self.keys.get(key, ()))
        return [self.gone[p] for p in paths if p in self.gone]

    def nearest(self, now: Entry) -> Entry | None:
        """The deleted file of ``now``'s directory it outgrows the least (by at most
        :data:`REPLACEMENT_SLACK`), when no other is as close."""
        sizes, paths = self.sizes.get(os.path.dirname(now.path), (np.empty(0, np.int64), []))
        i = int(np.searchsorted(sizes, now.size, side="right")) - 1
        if now.type != "file" or i < 0 or now.size - sizes[i] > REPLACEMENT_SLACK \
                or (i > 0 and sizes[i - 1] == sizes[i]):
            return None
        return self.gone.get(paths[i])


class _Comparison:
    """Compares the listings of two points given the blocks that differ between them."""

    def __init__(self, disk_a: Disk | None, disk_b: Disk | None, changed: BlockMap):
        self.disks = disk_a, disk_b
        starts, lengths = changed.run_arrays()
        self.block_size = changed.block_size
        self.starts, self.stops = starts * self.block_size, (starts + lengths) * self.block_size
        self.rows: list[dict] = []
        self.owners: list[tuple[int, int, str, str]] = []
        self._stats: dict[tuple[int, str], ByteStats] = {}
        self._records: dict[tuple, int] = {}  # a hard-linked file's row, by change

    @staticmethod
    def record(change: str, entry: Entry) -> tuple | None:
        """What makes the names of one hard-linked file one (with the change), or None.
        Renames stay one row per name: each has its own old name."""
        if entry.type != "file" or entry.nlink < 2 or entry.fs in NAME_ADDRESSED \
                or change == "renamed":
            return None
        return change, _prefix(entry.path), entry.volume, entry.inode, entry.seq

    def merged(self, change: str, entry: Entry) -> bool:
        """Is ``entry`` another name (hard link) of a file already reported with this
        change?  Then its path is added to that row (one row per file, not per name)."""
        key = self.record(change, entry)
        if key is None or key not in self._records:
            return False
        row = self.rows[self._records[key]]
        row["other_paths"].append(entry.path)
        row["evidence"][:] = [e for e in row["evidence"] if not e.startswith("also named ")]
        row["evidence"].append("also named " + ", ".join(row["other_paths"])
                               + " (hard links: one file)")
        return True

    def touched(self, entry: Entry) -> np.ndarray:
        return _clip(entry.extents, self.starts, self.stops)

    def compare(self, a: dict[str, Entry], b: dict[str, Entry]) -> None:
        gone = {p: e for p, e in a.items() if p not in b or b[p].type != e.type}
        new = {p: e for p, e in b.items() if p not in a or a[p].type != e.type}
        kept = sorted(a.keys() & b.keys() - gone.keys())
        # snapshots made or deleted: copies of files present at both points (or, made,
        # at the first), in one row per top copied directory (or file)
        copied = _copies(new, [*a.values(), *(b[p] for p in kept)])
        dropped = _copies(gone, [*(a[p] for p in kept), *(b[p] for p in kept)])
        for copies, side in ((copied, new), (dropped, gone)):
            for path in copies:
                del side[path]
        # a path now naming another file or directory (renamed over, names swapped): its
        # old and new ones are matched like deleted and created ones
        other = {p for p in kept if not a[p].same_identity(b[p])}
        for path in kept:
            if path not in other:
                self.modified(a[path], b[path])
        sources = {**gone, **{p: a[p] for p in other}}
        targets = {**new, **{p: b[p] for p in other}}
        pairs = self.renames(sources, targets)  # takes the pairs out of both
        moved_away = {old.path for old, now in pairs if old.path != now.path}
        for old, now in pairs:
            if old.path == now.path:  # the same content under its own name again
                self.modified(old, now)
            else:  # replacing the file at its new name unless that one moved on too
                replaced = sources.pop(now.path, None) if now.path in other else None
                self.compare_files("renamed", old, now, replaced=replaced)
        for path in sorted(other & targets.keys()):
            now = targets.pop(path)
            if path in moved_away:  # its file went elsewhere: this one is new
                self.add("created", None, now)
            else:  # rewritten as another file (an editor's save): a modification
                self.modified(sources.pop(path), now)
        places = _Places(sources)
        for _, now in sorted(targets.items()):
            counterpart = self.counterpart(now, places)
            self.add("created", None, now, self.stats(0, counterpart), self.take(1, now),
                     counterpart=counterpart)
        for _, old in sorted(sources.items()):
            self.add("deleted", old, None, self.take(0, old))
        for change, copies, listing in (("created", copied, b), ("deleted", dropped, a)):
            for path, (source, below) in _top_copies(copies).items():
                entry = listing[path]
                self.add(change, None if change == "created" else entry,
                         entry if change == "created" else None, copy_of=(source, below))
        self._stats.clear()  # what the rows did not take (a rename compared in place)

    def kin(self, old: Entry, now: Entry) -> bool:
        """Where birth times are whole seconds, is ``now`` the renamed ``old`` rather than
        a new file given its freed inode (FAT: first cluster) within that second?  Yes
        when ``now`` is named after it (:func:`_replaces`: ``a.docx`` -> ``a.docx.crypt``)
        or both begin with the same bytes (their first :data:`HEAD_BYTES`, as far as
        both go: renamed and appended to)."""
        n = min(old.size, now.size, HEAD_BYTES)
        return _replaces(now, old) or n == 0 \
            or old.read(self.disks[0], n) == now.read(self.disks[1], n)

    def modified(self, old: Entry, now: Entry) -> None:
        """One path at both points: a directory is modified when the names it lists
        differ, a file as :meth:`compare_files` finds."""
        if old.type == "dir":
            if old.children != now.children:
                self.add("modified", old, now, what=["names"])
        else:
            self.compare_files("modified", old, now)

    @overload
    def stats(self, side: int, entry: Entry) -> ByteStats: ...
    @overload
    def stats(self, side: int, entry: None) -> None: ...
    def stats(self, side: int, entry: Entry | None) -> ByteStats | None:
        """ByteStats of an entry's whole content at point a (0) or b (1), read once
        while no more than :data:`STATS_KEPT` are kept (then read again when needed)."""
        if entry is None:
            return None
        key = side, entry.path
        found = self._stats.get(key)
        if found is None:
            found = _stats(self.disks[side], entry)
            if len(self._stats) < STATS_KEPT:
                self._stats[key] = found
        return found

    @overload
    def take(self, side: int, entry: Entry) -> ByteStats: ...
    @overload
    def take(self, side: int, entry: None) -> None: ...
    def take(self, side: int, entry: Entry | None) -> ByteStats | None:
        """:meth:`stats` for the entry's last use: no longer kept (a listing of 100 000
        created files must not keep 100 000 histograms)."""
        if entry is None:
            return None
        found = self._stats.pop((side, entry.path), None)
        return found if found is not None else _stats(self.disks[side], entry)

    def renames(self, gone: dict[str, Entry], new: dict[str, Entry]
                ) -> list[tuple[Entry, Entry]]:
        """Pairs (old, new) that are one file under two names: by inode, by first data
        run and birth time (FAT: a directory entry moves with its name, its clusters do
        not), then by content; the pairs are taken out of ``gone`` and ``new``."""
        pairs = []
        places = _Places(gone)
        by_inode: dict[tuple[int, int], list[Entry]] = {}
        for e in gone.values():
            by_inode.setdefault((e.volume, e.inode), []).append(e)
        for path, now in sorted(new.items()):
            old = _likeliest(now, [e for e in by_inode.get((now.volume, now.inode), ())
                                   if e.path in gone])
            if old is not None and old.path in gone and old.same_identity(now) \
                    and (_born_to_the_ns(old, now) or self.kin(old, now)) \
                    and not self.named_after_another(now, old, places):
                pairs.append((gone.pop(old.path), new.pop(path)))
        starts = pd.Series([_birth_and_start(e) for e in gone.values()], dtype=object)
        unique = ~starts.duplicated(keep=False) & starts.notna()
        by_start = dict(zip(starts[unique], np.array(list(gone.values()), dtype=object)[unique]))
        for path, now in sorted(new.items()):
            old = by_start.get(_birth_and_start(now))
            if old is not None and old.path in gone and old.path != path \
                    and self.kin(old, now) \
                    and not self.named_after_another(now, old, places):
                pairs.append((gone.pop(old.path), new.pop(path)))
        # by content: only files of a size found on the other side are read for it
        sizes = [{e.size for e in side.values() if e.type == "file" and e.size}
                 for side in (gone, new)]
        digests: dict[tuple[int, str], Entry] = {}
        for old in gone.values():
            if old.type == "file" and old.size in sizes[1]:
                digests.setdefault((old.size, self.stats(0, old).sha256), old)
        for path, now in sorted(new.items()):
            if now.type == "file" and now.size in sizes[0]:
                old = digests.get((now.size, self.stats(1, now).sha256))
                if old is not None and old.path in gone:
                    pairs.append((gone.pop(old.path), new.pop(path)))
        return pairs

    @staticmethod
    def named_after_another(now: Entry, old: Entry, places: _Places) -> bool:
        """Is created ``now`` named after a deleted file other than ``old``, whose inode
        (and, written at once, blocks) it has?  Then the inode was reused: the file
        system handed a freed inode to a new copy (``a.txt`` deleted, ``b.txt.locked``
        written), which is no rename of ``old``."""
        return not _replaces(now, old) and any(other is not old for other in places.named(now))

    @staticmethod
    def counterpart(now: Entry, places: _Places) -> Entry | None:
        """The deleted file a created one took the place of, if any (see :func:`_replaces`;
        by size: the one it exceeds the least, when no other is as close)."""
        named = places.named(now)
        if len(named) == 1:
            return named[0]
        return None if named else places.nearest(now)

    def compare_files(self, change: str, old: Entry, new: Entry,
                      replaced: Entry | None = None) -> None:
        touched = self.touched(old), self.touched(new)
        mtime = (old.mtime, old.mtime_ns) != (new.mtime, new.mtime_ns)  # to the ns
        meta = old.size != new.size or mtime
        moved = not old.same_extents(new)
        resident = old.resident is not None or new.resident is not None
        compressed = not (old.stored and new.stored)  # stored bytes are no content
        aspects = _metadata_changes(old, new)
        if change == "modified" and not (meta or moved or resident or touched[0].size
                                         or touched[1].size or aspects):
            return
        if change == "modified" and self.merged(change, new):
            return
        if moved or resident or compressed:  # written elsewhere (or in the metadata)
            before, after = self.take(0, old), self.take(1, new)
        else:  # same runs: only bytes inside changed blocks can differ
            before = _stats(self.disks[0], old, touched[0])
            after = _stats(self.disks[1], new, touched[1])
        content = before.sha256 != after.sha256 or old.size != new.size
        what = [name for name, differs in (
            ("target" if new.kind == "symlink" else "content", content),
            ("size", old.size != new.size), ("mtime", mtime)) if differs]
        what += [a for a in aspects if a != "ctime" or not (what or change == "renamed")]
        if change == "renamed":
            what.insert(0, "name")
        if change == "renamed" or content or meta or what:
            appended = 0 < before.size < after.size and after.random_segments > 0 and \
                _starts_with(self.disks[1], new,
                             None if moved or resident or compressed else touched[1],
                             before)
            self.add(change, old, new, before, after, appended=appended, what=what,
                     replaced=replaced)

    def add(self, change: str, old: Entry | None, new: Entry | None,
            before: ByteStats | None = None, after: ByteStats | None = None,
            counterpart: Entry | None = None, appended: bool = False,
            what: list[str] | None = None, replaced: Entry | None = None,
            copy_of: tuple[Entry, int] | None = None) -> None:
        """One row; ``copy_of``: the entry a snapshot's copy ``new`` (or ``old``) shares
        its inode and data with, and how many copies below it the row stands for."""
        entry = new if new is not None else old
        assert entry is not None
        if change in ("created", "deleted") and copy_of is None and self.merged(change, entry):
            return
        if before is None:
            before = self.take(0, old)
        if after is None:
            after = self.take(1, new) or ByteStats()
        reference = old if old is not None else counterpart
        kind_before = _head_type(self.disks[0], reference, before)
        kind_after = _head_type(self.disks[1], new, after)
        judged = new if entry.type == "file" and copy_of is None else None
        rewritten = before is None or before.sha256 != after.sha256  # bytes compared
        body = body_break(kind_after, judged.read(self.disks[1], BODY_BYTES)) \
            if judged is not None and rewritten and kind_after in CHECKS else None
        suspected, explained, evidence = (False, False, []) if judged is None else judge(
            judged.path, reference.path if reference is not None else None,
            before, after, kind_before, kind_after, replaced=counterpart is not None,
            appended=appended, body=body)
        if copy_of is not None:
            source, below = copy_of
            evidence.insert(0, f"a snapshot's copy of {source.path} (subvolume "
                               f"{source.volume}, inode {source.inode}): no data of its own"
                            + (f"; {below} entries below it are copies too (not listed)"
                               if below else ""))
            explained = True
        if counterpart is not None:
            evidence.insert(0, f"took the place of deleted {counterpart.path} "
                               f"({counterpart.size} -> {new.size if new else 0} bytes)")
        if change == "renamed" and old is not None and new is not None:
            evidence.insert(0, f"renamed from {old.path} (inode {old.inode})"
                            + ("" if before is None or before.sha256 == after.sha256
                               else "; content changed")
                            + ("" if replaced is None else
                               f"; replaced the file of that name (inode {replaced.inode}, "
                               f"{replaced.size} bytes)"))
        elif change == "modified" and old is not None and new is not None \
                and not old.same_file(new) \
                and (old.inode != new.inode or old.fs not in NAME_ADDRESSED):
            evidence.insert(0, "another file under the same name now (inode "
                            + (f"{old.inode} reused)" if old.inode == new.inode
                               else f"{old.inode} -> {new.inode})"))
        key = self.record(change, entry)
        if key is not None:
            self._records[key] = len(self.rows)
        self.rows.append({
            "path": entry.path, "type": entry.type, "change": change,
            "entropy_before": before.entropy if before is not None else 0.0,
            "entropy_after": after.entropy if new is not None else 0.0,
            "size_before": old.size if old is not None else 0,
            "size_after": new.size if new is not None else 0,
            "suspected_encryption": bool(suspected),
            "old_path": old.path if change == "renamed" and old is not None else "",
            "inode": entry.inode, "content_before": kind_before or "",
            "content_after": kind_after or "", "random_segments": after.random_segments,
            "segments": after.segments, "evidence": evidence,
            "replaces": counterpart.path if counterpart is not None
            else replaced.path if replaced is not None else "",
            "explained": explained, "what_changed": ",".join(what or []), "other_paths": []})
        for side, item in (("a", old), ("b", new)):
            if item is not None:
                for start, stop in _clip(item.owned, self.starts, self.stops).tolist():
                    first = start // self.block_size
                    self.owners.append((first, -(-stop // self.block_size) - first,
                                        item.path, side))


def _copies(entries: dict[str, Entry], others: list[Entry]) -> dict[str, Entry]:
    """Those of ``entries`` that are a snapshot's copy of one of ``others``: on Btrfs, the
    same inode of another subvolume (number, generation, birth time), type, size and
    data (the same disk extents, the same resident bytes).  Path -> the entry copied."""
    def identity(e: Entry) -> tuple:
        return e.type, e.inode, e.seq, e.crtime, e.crtime_ns, e.size, e.resident

    by_identity: dict[tuple, list[Entry]] = {}
    for other in others:
        if other.volume and other.seq:  # generation 0: the kernel's stand-in directory
            by_identity.setdefault(identity(other), []).append(other)
    found = {}
    for path, entry in entries.items():
        for other in by_identity.get(identity(entry), []):
            if other.volume != entry.volume and other.same_extents(entry):
                found[path] = other
                break
    return found


def _top_copies(copies: dict[str, Entry]) -> dict[str, tuple[Entry, int]]:
    """The copies whose directory is no copy -> (the entry copied, how many copies lie
    below it)."""
    top = {p: (e, 0) for p, e in copies.items() if os.path.dirname(p) not in copies}
    for path in copies.keys() - top.keys():
        up = os.path.dirname(path)
        while up not in top:
            up = os.path.dirname(up)
        top[up] = top[up][0], top[up][1] + 1
    return top


# ------------------------------------------------------------------ results
@dataclass
class DiffResult:
    """The difference between points ``a`` (None: an empty volume) and ``b``.

    ``runs``: changed block runs — start, length (blocks), start_byte, length_bytes,
    and with files, ``files``: the changed files' paths owning blocks of the run.
    ``files``: one row per changed file or directory (see :data:`FILE_COLUMNS`;
    entropies in bits per byte, sizes in bytes).  ``owners``: block runs (start,
    length in blocks) each changed file occupies among the changed blocks, at
    point a or b (``side``).
    """

    a: int | None
    b: int
    n_blocks: int  # blocks the comparison covers (the larger volume)
    block_size: int  # bytes
    runs: pd.DataFrame
    files: pd.DataFrame
    owners: pd.DataFrame
    files_checked: bool
    notes: list[str] = dataclasses.field(default_factory=list)  # file systems not read
    #: file systems read with changes waiting in their journal or log: replayed or not
    recovery: list[str] = dataclasses.field(default_factory=list)

    @property
    def changed_blocks(self) -> int:
        return int(self.runs["length"].sum())

    @functools.cached_property
    def _owner_rows(self) -> dict[tuple[str, str], np.ndarray]:
        """Rows of ``owners`` by (path, side), found once."""
        return dict(self.owners.groupby(["path", "side"], sort=False).indices)

    def owned_blocks(self, path: str, side: str = "b") -> np.ndarray:
        """The changed blocks file ``path`` owns at point a or b (``side``), run by run."""
        rows = self._owner_rows.get((path, side))
        if rows is None:
            return np.empty(0, np.int64)
        starts = self.owners["start"].to_numpy(np.int64)[rows]
        lengths = self.owners["length"].to_numpy(np.int64)[rows]
        return np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths),
                                                    lengths)

    def owner_of(self, block: int) -> list[str]:
        """Paths of the changed files owning ``block`` (at either point), sorted."""
        o = self.owners
        hit = (o["start"] <= block) & (block < o["start"] + o["length"])
        return sorted(set(o.loc[hit, "path"]))

    def suspected(self) -> pd.DataFrame:
        """The rows of ``files`` suspected of encryption."""
        return self.files[self.files["suspected_encryption"]]

    def changed_map(self) -> BlockMap:
        """The changed blocks as a BlockMap."""
        return BlockMap.from_runs(self.n_blocks, zip(self.runs["start"], self.runs["length"]),
                                  self.block_size)

    def to_json(self) -> dict:
        """The ``diff --json`` document: runs (blocks), files (entropy in bits per byte)."""
        import json

        runs = self.runs.assign(files=self.runs["files"].map(list)) if self.files_checked \
            else self.runs
        return {"a": self.a, "b": self.b, "block_size": self.block_size,
                "changed_blocks": self.changed_blocks,
                "runs": json.loads(runs.to_json(orient="records")),
                "files": json.loads(self.files.to_json(orient="records", double_precision=6)),
                "files_checked": self.files_checked, "notes": self.notes,
                "recovery": self.recovery}

    def __str__(self) -> str:
        origin = "empty volume" if self.a is None else f"point {self.a}"
        lines = [f"{origin} -> point {self.b}: {self.changed_blocks} blocks of {self.block_size} B"
                 f" changed in {len(self.runs)} runs"]
        shown = self.runs.drop(columns="files", errors="ignore")
        lines.append(shown.to_string(index=False, max_rows=20) if len(shown) else "(no runs)")
        if self.files_checked:
            lines.append("")
            shown = self.files[SHOWN_COLUMNS if (self.files["old_path"] != "").any()
                               else SHOWN_COLUMNS[:-1]]
            shown = shown.assign(**{c: shown[c].map(shown_name) for c in ("path", "old_path")
                                    if c in shown})
            lines.append(shown.to_string(index=False, float_format="{:.2f}".format)
                         if len(self.files) else "(no file changed)")
            flagged = self.suspected()
            if len(flagged):
                lines.append(f"suspected encryption: {len(flagged)} file(s): "
                             + ", ".join(map(shown_name, flagged["path"])))
                lines += [shown_name(f"  {row.path}: " + "; ".join(row.evidence))
                          for row in flagged.itertuples()]
        lines += [f"not read: {note}" for note in self.notes]
        lines += [f"log: {note}" for note in self.recovery]
        return "\n".join(lines)


def _changed(chain: Chain, a: int | None, b: int) -> BlockMap:
    """Blocks differing between two points; against an empty volume, the non-zero ones."""
    return chain.layout(b).present() if a is None else chain.changed(a, b)


def _unreached(disk: Disk, point: int, listed: dict[str, Entry],
               missing: dict[str, Entry]) -> list[str]:
    """Notes on the files of ``listed`` that ``missing`` (the other point's listing, at
    ``disk``) lacks but ``disk`` still holds: their inode missing from it yet held
    (:func:`blockforensics.tsk.unreached`), or names of a hard-linked file it lists with
    fewer names than links (:func:`_unreached_links`).  A damaged directory hid them, no
    deletion: they leave ``listed``; so do those whose allocation state cannot be read
    (FAT, exFAT: not decided, a note of their own)."""
    inodes = {(e.fs, e.inode) for e in missing.values()}
    gone = [e for e in listed.values() if (e.fs, e.inode) not in inodes]
    hidden = unreached(disk, gone, list(missing.values())) if gone else {}
    for prefix, paths in _unreached_links(listed, missing).items():
        hidden.setdefault(prefix, Unreached()).paths.extend(paths)
    notes = []
    for prefix, found in sorted(hidden.items()):
        for path in found.paths + found.undecided:
            del listed[path]
        untold = found.untold
        tail = (f"; {len(untold)} empty file(s) left as deleted, no cluster to tell damage "
                f"from deletion by: {_some(untold)}" if untold else "")
        if found.paths:
            notes.append(f"point {point}: {prefix or '/'}: {len(found.paths)} file(s) and "
                         f"directories no directory reaches, their metadata, clusters or "
                         f"(a hard link) inode still allocated, or unreadable (damage, not "
                         f"a deletion): {_some(found.paths)}" + tail)
            tail = ""
        if found.undecided:
            notes.append(f"point {point}: {prefix or '/'}: {len(found.undecided)} file(s) "
                         f"and directories missing; allocation state unreadable "
                         f"({found.why}): neither deleted nor kept, no deletion mark "
                         f"found: {_some(found.undecided)}" + tail)
    return notes


def _damaged(points: tuple[int | None, int], sides: list[dict[str, Entry]]) -> list[str]:
    """Notes on the files whose metadata fails its own check at either point
    (:attr:`Entry.damaged`): damage, not a change.  They leave both sides (and so does
    the file at the same metadata address on the other side), neither changed nor
    deleted."""
    notes = []
    for p, side in zip(points, sides):
        bad = sorted(path for path, e in side.items() if e.damaged)
        if not bad:
            continue
        keys = {(_prefix(path), side[path].fs, side[path].inode) for path in bad}
        whys = sorted({side[path].damaged for path in bad})
        for each in sides:
            for path in [q for q, e in each.items() if (_prefix(q), e.fs, e.inode) in keys]:
                del each[path]
        notes.append(f"point {p}: {len(bad)} file(s) whose metadata fails its own check "
                     f"({'; '.join(whys)}): damaged, not a change: {_some(bad)}")
    return notes


def _some(paths: list[str]) -> str:
    """The first five of ``paths``, "…" after them when there are more."""
    return ", ".join(paths[:5]) + (" …" if len(paths) > 5 else "")


def _prefix(path: str) -> str:
    """The file system prefix of a listed path ("" for a bare one, "p2:", "vg/lv:")."""
    return "" if path.startswith("/") else path[:path.index(":/") + 1]


def _unreached_links(listed: dict[str, Entry], missing: dict[str, Entry]
                     ) -> dict[str, list[str]]:
    """Names of ``listed`` files missing from ``missing`` whose inode ``missing`` lists
    under other names, with no fewer links than before and more links than names it
    reaches: the names a damaged directory hid (up to the links unaccounted for), by
    file system prefix.  A name removed (``rm``, ``mv``) leaves no link unaccounted."""
    def key(e: Entry) -> tuple:
        return _prefix(e.path), e.fs, e.volume, e.inode

    now: dict[tuple, Entry] = {}
    spare: dict[tuple, int] = {}  # links minus names reached
    for e in missing.values():
        if e.type == "file" and e.fs not in NAME_ADDRESSED:
            now.setdefault(key(e), e)
            spare[key(e)] = spare.get(key(e), e.nlink) - 1
    found: dict[str, list[str]] = {}
    for path, e in listed.items():
        other = now.get(key(e)) if path not in missing else None
        if other is None or spare[key(e)] <= 0 or other.nlink < e.nlink \
                or not other.same_file(e):
            continue
        spare[key(e)] -= 1
        found.setdefault(_prefix(path), []).append(path)
    return found


def _diff(chain: Chain, a: int | None, b: int, files: bool,
          listings: dict[int | None, Listing]) -> DiffResult:
    changed = _changed(chain, a, b)
    runs = changed.runs()
    frame = pd.DataFrame(columns=FILE_COLUMNS)
    owners = pd.DataFrame(columns=OWNER_COLUMNS)
    notes: list[str] = []
    recovery: list[str] = []
    if files:
        for p in (a, b):
            if p not in listings:
                listings[p] = list_entries(None if p is None else chain.disk(p))
        skipped = listings[a].unreadable.keys() | listings[b].unreadable.keys()
        notes = sorted(f"point {p}: {prefix or '/'}: {why}" for p in (a, b)
                       for prefix, why in listings[p].unreadable.items())
        recovery = sorted(f"point {p}: {prefix or '/'}: {how}" for p in dict.fromkeys((a, b))
                          for prefix, how in listings[p].recovery.items())
        # a file system one side cannot read is compared on neither (not "all deleted")
        sides = [{path: e for path, e in listings[p].entries.items()
                  if not any(path.startswith(prefix + "/") for prefix in skipped)}
                 for p in (a, b)]
        # files of point a that point b's directories no longer reach, their metadata
        # still there: damage, not deletions.  Not the other way: a file created since a
        # has metadata at a that was never used (on NTFS an MFT record TSK cannot read),
        # which would read as damage and hide every creation.
        notes += _unreached(chain.disk(b), b, sides[0], sides[1])
        notes += _damaged((a, b), sides)
        files = bool(sides[0] or sides[1] or not notes)
    if files:
        comparison = _Comparison(None if a is None else chain.disk(a), chain.disk(b), changed)
        comparison.compare(*sides)
        if comparison.rows:
            frame = pd.DataFrame(comparison.rows, columns=FILE_COLUMNS)
        if comparison.owners:
            owners = pd.DataFrame(comparison.owners, columns=OWNER_COLUMNS)
        runs["files"] = _owners_by_run(owners, runs["start"].to_numpy())
    return DiffResult(a, b, changed.n_blocks, changed.block_size, runs, frame.astype({
        "entropy_before": float, "entropy_after": float, "size_before": "int64",
        "size_after": "int64", "suspected_encryption": bool, "explained": bool}),
        owners.astype({"start": "int64", "length": "int64"}), files, notes, recovery)


def _owners_by_run(owners: pd.DataFrame, run_starts: np.ndarray) -> list[tuple[str, ...]]:
    """Per changed run (first blocks ``run_starts``, sorted), the paths owning blocks of
    it, sorted.  Each owner row lies inside one run (it was clipped to the runs), so
    it is found by its start: one pass, however many files and runs."""
    which = np.searchsorted(run_starts, owners["start"].to_numpy(np.int64), side="right") - 1
    paths: list[set[str]] = [set() for _ in range(len(run_starts))]
    for run, path in zip(which.tolist(), owners["path"].tolist()):
        paths[run].add(path)
    return [tuple(sorted(found)) for found in paths]


def diff(chain: Chain, a: PointRef | None, b: PointRef, *, files: bool = False,
         listings: dict[int | None, Listing] | None = None, progress: bool = False
         ) -> DiffResult:
    """What changed from point ``a`` to point ``b`` (any two, branches included).

    Points as ``chain.point`` takes them ("0", -1, a file name); ``a=None`` compares
    with an empty volume.  Block runs come from the index digests alone; ``files=True``
    walks both points with The Sleuth Kit, read straight from the chain (``listings``
    caches each point's listing across calls; ``progress`` shows each point listed).
    """
    listings = {} if listings is None else listings
    pa, pb = None if a is None else chain.point(a), chain.point(b)
    if files:
        todo = [p for p in dict.fromkeys((pa, pb)) if p not in listings]
        with progress_bar(len(todo), "list files", progress, unit="point") as bar:
            for p in todo:
                listings[p] = list_entries(None if p is None else chain.disk(p))
                bar.update(1)
    return _diff(chain, pa, pb, files, listings)


def point_diff(chain: Chain, point: int, listings: dict[int | None, Listing] | None = None
               ) -> DiffResult:
    """A point against its parent (the full against an empty volume), files included;
    ``listings`` caches each point's file listing across calls."""
    return _diff(chain, chain.parent(point), point, True, {} if listings is None else listings)


def point_diffs(chain: Chain, listings: dict[int | None, Listing] | None = None, *,
                progress: bool = False) -> Iterator[DiffResult]:
    """Every point against its parent, files included, in creation order (listings
    read once per point, cached in ``listings``); ``progress`` shows a bar of points."""
    listings = {} if listings is None else listings
    with progress_bar(len(chain), "points", progress, unit="point") as bar:
        for p in range(len(chain)):
            yield point_diff(chain, p, listings)
            forget_listings(chain, listings, p)
            bar.update(1)


def forget_listings(chain: Chain, listings: dict[int | None, Listing], done: int) -> None:
    """Drop from ``listings`` those no point after ``done`` compares with (as its
    parent), once ``done`` was compared: a walk of the points in creation order holds
    the listings of the parents still to come, not one per point of the chain."""
    needed = {chain.parent(p) for p in range(done + 1, len(chain))}
    for p in [p for p in listings if p not in needed]:
        del listings[p]


def _changes(diffs: list[DiffResult]) -> pd.DataFrame:
    rows = [{"point": d.b, "parent": d.a, **row} for d in diffs
            for row in d.files.to_dict("records")]
    return pd.DataFrame(rows, columns=["point", "parent", *FILE_COLUMNS]) \
        .astype({"point": "int64", "parent": "Int64", "suspected_encryption": bool})


def changes(chain: Chain, *, progress: bool = False) -> pd.DataFrame:
    """Every file change of every point against its parent: point, parent, then the
    columns of :attr:`DiffResult.files` (entropy in bits per byte, sizes in bytes)."""
    return _changes(list(point_diffs(chain, progress=progress)))


def timeline(chain: Chain, *, progress: bool = False) -> pd.DataFrame:
    """One row per point, in creation order: what it changed against its parent.

    Columns: point, file, kind, parent, created (ISO time), label, blocks_changed
    (blocks differing from the parent; for a full, its non-zero blocks), files_created,
    files_modified, files_deleted, suspected_encryption (count of files), and
    changed_entropy (mean entropy of the changed blocks at the point, bits per byte),
    and not_read: the file systems of the point or its parent that could not be listed,
    and why ("" when all were: the counts leave an unlisted file system out, they do
    not count its files deleted).
    """
    counts: dict[str, list[int]] = {"blocks_changed": [], "files_created": [],
                                    "files_modified": [], "files_deleted": [],
                                    "suspected_encryption": []}
    entropies = []
    not_read = []
    for d in point_diffs(chain, progress=progress):  # one point's rows at a time
        not_read.append("; ".join(d.notes))
        per_change = d.files["change"].value_counts()
        counts["blocks_changed"].append(d.changed_blocks)
        for change in ("created", "modified", "deleted"):
            counts[f"files_{change}"].append(int(per_change.get(change, 0)))
        counts["suspected_encryption"].append(int(d.files["suspected_encryption"].sum()))
        disk = chain.disk(d.b)
        positions = _changed(chain, d.a, d.b).positions()
        values = block_entropy(disk, positions[positions < disk.n_blocks])
        entropies.append(float(values.mean()) if values.size else 0.0)
    frame = chain.table()[["point", "file", "kind", "parent", "created", "label"]]
    frame = frame.assign(**{name: np.array(values, np.int64) for name, values in counts.items()})
    frame["changed_entropy"] = entropies
    frame["not_read"] = not_read
    return frame

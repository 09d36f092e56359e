"""Consolidation: merge a segment of a chain into one image, copying stored blocks verbatim.

Consolidating the path from ``start`` to ``point`` keeps, for every block
position, the newest stored block of the segment — its payload bytes and its
index record (flags, stored and content digests) exactly as they are.  Nothing
is decoded, so encrypted chains consolidate like plaintext ones and nothing
here takes a key: a ciphertext is authenticated against its chain, position
and flags, never against the image that holds it, so it may move between images.

**In place** (the default): the merged image holding the most stored bytes,
if nothing else has it open and it has one name, *grows* into the new image.
Its payloads that still count stay where they are; the other images' payloads
are appended after its end, then the new index, footer and header.  After the
switch, what it held that the merge replaced (superseded payloads, blocks past
a shrunk volume's end, its old index) is punched out of the file
(``fallocate``) where it lies in runs of ``_PUNCH_MIN_BYTES`` or more, and the old
index always, so the disk space comes back without rewriting the rest: the work
follows the blocks that changed, not the volume.  Scattered small dead payloads
stay where they are (each punch is a journal transaction of the file system, and
thousands of them took 0.02-12 s on a busy shared disk); an image whose dead bytes
pass ``1 / _DEAD_SHARE`` of its disk space is not grown again, so the next merge
copies its live payloads into a new file and the dead ones go with it (borg
compacts a segment and restic repacks at similar thresholds).  A journal
(:mod:`blockforensics.image.inplace`) keeps the old image readable, and
restorable byte for byte, until the switch.  Payloads left in place are not
read (``verify`` reads them); ``rewrite`` copies everything into a new file.

Copied payloads move in runs of up to ``_RUN_BYTES``: each run is mapped from
the page cache, its records' stored digests are checked there in one batch (a
damaged payload is never copied), and the image writer copies the run file to
file (``copy_file_range``; where the file system refuses, it writes the checked
mapped bytes) on its own thread while the next run is checked.  The layout is
walked a window of blocks at a time, and the new index is streamed in position
order, so memory stays bounded whatever the volume's size.

Crash safety: a rewritten image is written and committed under a pending
(temporary) name, a grown one behind its journal; then :meth:`ChainStore.switch`
names it, switches the manifest in one atomic rename and only then deletes the
merged files, all under the chain's lock.  A process killed at any moment
leaves the old chain or the new one, each whole; the next command's cleanup
finishes or undoes the switch (and rolls a grown image back) from the journals.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blockforensics.errors import ChainError, UsageError
from blockforensics.fileio import check_fits, file_size_limit, has_hard_links, punch_holes
from blockforensics.image.chain import NO_PARENT, Chain, PointRef
from blockforensics.image.format import (
    FLAG_ZERO,
    HEADER_SIZE,
    INDEX_RECORD_SIZE,
    KIND_FULL,
    KIND_INCREMENTAL,
    KIND_NAMES,
)
from blockforensics.image.imagefile import ImageFile, ImageWriter, check_stored
from blockforensics.image.inplace import MergeJournal, take_exclusively
from blockforensics.image.layout import Layout
from blockforensics.image.store import ChainStore, not_a_directory
from blockforensics.image.summary import disk_bytes
from blockforensics.progress import progress_bar

if TYPE_CHECKING:
    import pandas as pd

#: volume blocks whose records a merge gathers at once: their records (56 bytes each) and
#: the copies sorting them hold 4-15 MiB, so a merge stays under 100 MiB at any volume size
_WINDOW_BLOCKS = 1 << 16
_RUN_BYTES = 8 << 20  # most stored bytes read, checked and written as one run (bytes)
_GAP_BYTES = 64 << 10  # unwanted bytes read through rather than starting a new read (bytes)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map a run's pages at once, not by faults
#: dead payloads (adjacent ones together) a merge in place punches out of the image it
#: grows only from this size on (bytes): fewer, larger punches; smaller ones stay
_PUNCH_MIN_BYTES = 1 << 20
#: an image grows in place only while its dead bytes are at most 1 / _DEAD_SHARE of its
#: disk space; else the merge copies what still counts and the file goes
_DEAD_SHARE = 10
_WORDS = {KIND_FULL: "full", KIND_INCREMENTAL: "incr"}  # in image file names


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


@dataclass
class ConsolidationResult:
    """What :func:`consolidate` did; byte counts are the disk space of the chain's image files."""

    directory: Path
    merged: list[str]  # image files of the segment, root side first
    image: str  # file name of the new image (it takes the place of the segment's last point)
    kind: str  # "full" or "incremental"
    blocks: int  # index records in the new image
    bytes_before: int  # disk space of all listed images before (bytes; holes excluded)
    bytes_after: int  # disk space of all listed images after (bytes; holes excluded)
    removed: list[str] = field(default_factory=list)  # image files deleted
    kept_for_branches: list[str] = field(default_factory=list)  # merged but still parents
    in_place: bool = False  # a merged image was grown into the new one (else all copied)

    def __repr__(self) -> str:
        kept = ", ".join(self.kept_for_branches) or "none"
        how = "grown in place" if self.in_place else "rewritten"
        return (f"ConsolidationResult({' + '.join(self.merged)} -> {self.image}: {self.kind}, "
                f"{self.blocks} blocks, {how}; chain {_mib(self.bytes_before)} -> "
                f"{_mib(self.bytes_after)} on disk; removed {len(self.removed)} files; "
                f"kept for branches: {kept})")


@dataclass
class RetentionResult:
    """What :func:`apply_retention` did: the plan it followed and the changes made."""

    plan: pd.DataFrame  # retention_plan() of the chain before any change
    deleted: list[str]  # image files of leaf points dropped
    consolidations: list[ConsolidationResult]

    def __repr__(self) -> str:
        kept = int((self.plan["action"] == "keep").sum())
        merged = int((self.plan["action"] == "merge").sum())
        return (f"RetentionResult({len(self.plan)} points: {kept} kept, {merged} merged in "
                f"{len(self.consolidations)} consolidations, {len(self.deleted)} deleted)")


# ------------------------------------------------------------------ consolidation
def consolidate(directory: str | os.PathLike[str], point: PointRef = -1, *,
                start: PointRef | None = None, rewrite: bool = False,
                progress: bool = False) -> ConsolidationResult:
    """Merge the images on the path from ``start`` (default: the root) to ``point``
    (default: the newest) into one.

    From the root the result is a full image (zero-block records dropped);
    from an incremental ``start`` it is an incremental whose parent is
    ``start``'s parent, inheriting from it no more than the segment did
    (``hidden_tail``: a shrink inside the segment keeps hiding what lay past it).
    It takes ``point``'s image id, creation time, label and crypto fields, so
    children of ``point`` stay linked and every point restores as before.  Merged
    images that are still parents of branches off the segment stay in the chain
    (listed in ``kept_for_branches``).

    The merged image holding the most stored bytes is grown into the new one in
    place (see the module's description) when nothing else has it open; with
    ``rewrite``, or when it is busy, every kept payload is copied into a new file.
    """
    store = ChainStore(directory)
    if not store.directory.is_dir():
        raise not_a_directory(store.directory)
    with store.lock():  # no backup, retention or cleanup runs meanwhile
        store.recover(blocking=True)  # a merge that died is undone before another starts
        return _consolidate(store.directory, point, start, rewrite, progress)


def _consolidate(directory: Path, point: PointRef, start: PointRef | None, rewrite: bool,
                 progress: bool) -> ConsolidationResult:
    with Chain.open(directory) as chain:
        path, segment, kept = _segment(chain, point, start)
        p = segment[-1]
        full = segment[0] == path[0]
        target = chain.images[p].header
        inherit = min(chain.images[i].header.inherit_blocks for i in segment)
        header = target.replace(kind=KIND_FULL if full else KIND_INCREMENTAL,
                                parent_id=NO_PARENT if full
                                else chain.images[segment[0]].header.parent_id,
                                written_ns=time.time_ns(),
                                hidden_tail=0 if full else target.n_blocks - inherit)
        layout = chain.layout(p)
        first = path.index(segment[0])  # depth of the segment's root side on the path
        if file_size_limit(directory) is not None:  # FAT: refused before writing 4 GiB
            check_fits(directory, directory, _merged_bytes(layout, first))
        grown = None if rewrite else _grow_in_place(chain, path, segment, kept, first)
        names = [img.name for img in chain.images]
        sizes = {img.name: disk_bytes(img.path) for img in chain.images}
        merged = [names[i] for i in segment]
        removed = [names[i] for i in segment if i not in kept]
        name = chain.store.new_name(_WORDS[header.kind], like=merged[-1])
        new_names = [name if n == merged[-1] else n
                     for n in names if n == merged[-1] or n not in removed]
        ids = {img.name: img.header.image_id for img in chain.images} | {name: header.image_id}
        if grown is None:
            out = chain.store.pending_path()
        else:
            out = layout.images[grown].path
            journal = MergeJournal.of(layout.images[grown].fileno(), out.name,
                                      chain.manifest.generation)
            journal.write(directory)
        try:
            with ImageWriter(out, header, grow=grown is not None) as writer:
                _merge(layout, first, grown, full, writer, progress)
                blocks = writer.blocks_written
                writer.commit()
            new = chain.store.switch(new_names, add={name: out}, remove=removed,
                                     expect=chain.manifest, ids=[ids[n] for n in new_names])
        except BaseException:
            if grown is None:
                chain.store.discard(out)
            raise
        finally:
            if grown is not None:  # undone unless switched
                journal.settle(directory, chain.store.read().generation)
        if grown is not None and new.images == tuple(new_names):
            _punch_dead(layout, grown, directory / name)
        after = sum(sizes[n] for n in names if n not in removed) + disk_bytes(directory / name)
    return ConsolidationResult(
        directory, merged, name, KIND_NAMES[header.kind], blocks, sum(sizes.values()), after,
        removed, [names[i] for i in kept], grown is not None)


def _grow_in_place(chain: Chain, path: list[int], segment: list[int], kept: list[int],
                   first: int) -> int | None:
    """The depth on ``path`` of the merged image to grow into the new one (locked
    exclusively), or None: the merged images that go away, most stored bytes first,
    that have one name and that no other reader has open."""
    if not has_hard_links(chain.directory):  # the switch links the new name (not on FAT)
        return None
    gone = [d for d in range(first, len(path)) if path[d] not in kept]
    for depth in sorted(gone, key=lambda d: -chain.images[path[d]].index.payload_bytes):
        image = chain.images[path[depth]]
        if os.fstat(image.fileno()).st_nlink == 1 and \
                _dead_bytes(image) * _DEAD_SHARE <= disk_bytes(image.path) and \
                take_exclusively(image.fileno()):
            return depth
    return None


def _dead_bytes(image: ImageFile) -> int:
    """Bytes of ``image``'s file on disk that nothing in it points at (payloads earlier
    merges in place left unpunched, up to a page of padding per merge), not counting the
    unused tail of its last file-system block."""
    live = HEADER_SIZE + image.index.payload_bytes + image.stored_bytes - \
        image.footer.index_offset  # header, payloads, index and footer
    tail = -image.stored_bytes % os.fstat(image.fileno()).st_blksize
    return max(0, disk_bytes(image.path) - live - tail)


def _merged_bytes(layout: Layout, first: int) -> int:
    """Bytes of payload and index the merge of images ``first`` on of ``layout``'s path
    stores at most: the newest record of every block they hold."""
    total = 0
    for window in layout.windows():
        for depth, _, records in window.by_image():
            if depth >= first:
                total += int(records["length"].sum(dtype=np.int64)) + \
                    len(records) * INDEX_RECORD_SIZE
    return total


def _merge(layout: Layout, first: int, grown: int | None, full: bool, writer: ImageWriter,
           progress: bool) -> None:
    """Give ``writer`` the newest record of every block of the segment (images ``first``
    on of ``layout``'s path), a window at a time and in position order: those of image
    ``grown`` where they lie, the others' payloads copied."""
    n_blocks = layout.n_blocks
    with progress_bar(n_blocks, "consolidate", progress, unit="block") as bar:
        copier = _Copier(writer)
        for at in range(0, n_blocks, _WINDOW_BLOCKS):
            count = min(_WINDOW_BLOCKS, n_blocks - at)
            placed = []
            for depth, _, records in layout.window(at, count):
                if depth >= first:
                    if full:  # a full image stores no zero-block records
                        records = records[(records["flags"] & FLAG_ZERO) == 0]
                    placed.append(records if depth == grown
                                  else copier.copy(layout.images[depth], records))
            if placed:
                records = np.concatenate(placed)
                writer.add_records(records[np.argsort(records["position"], kind="stable")])
            bar.update(count)


def _punch_dead(layout: Layout, grown: int, path: Path) -> None:
    """Free what the image grown in place (depth ``grown`` of ``layout``, now at ``path``)
    no longer uses: the payloads of its records the merge replaced or cut off, where
    they lie in runs of ``_PUNCH_MIN_BYTES`` or more, and its old index and footer
    (whole file-system blocks; best effort)."""
    image = layout.images[grown]
    fd = os.open(path, os.O_RDWR)
    try:
        if not os.path.samestat(os.fstat(fd), os.fstat(image.fileno())):
            return
        n_blocks = layout.n_blocks
        for at in range(0, n_blocks, _WINDOW_BLOCKS):
            owners = layout.owners(at, min(_WINDOW_BLOCKS, n_blocks - at))
            records = owners.records[grown]
            if len(records):
                rows = records["position"].astype(np.int64) - at
                _punch_records(fd, records[owners.holder[rows] != grown + 1])
        for _, records in _rows_from(image, n_blocks):  # past the point's end
            _punch_records(fd, records)
        punch_holes(fd, [image.footer.index_offset], [image.stored_bytes])
    finally:
        os.close(fd)


def _rows_from(image: ImageFile, position: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, records)`` of ``image``'s records at ``position`` or later, in pieces."""
    for lo in range(image.index.row_of(position), len(image.index), _WINDOW_BLOCKS):
        yield lo, image.index.read(lo, lo + _WINDOW_BLOCKS)


def _punch_records(fd: int, records: np.ndarray) -> None:
    """Punch out the payloads of ``records`` (adjacent ones as one range) where they
    make ranges of ``_PUNCH_MIN_BYTES`` or more."""
    records = records[records["length"] > 0]
    if not len(records):
        return
    records = records[np.argsort(records["offset"], kind="stable")]
    start = records["offset"].astype(np.int64)
    end = start + records["length"].astype(np.int64)
    cut = np.r_[0, np.flatnonzero(start[1:] != end[:-1]) + 1]
    first, last = start[cut], np.r_[end[cut[1:] - 1], end[-1]]
    big = last - first >= _PUNCH_MIN_BYTES
    punch_holes(fd, first[big].tolist(), last[big].tolist())


def _segment(chain: Chain, point: PointRef,
             start: PointRef | None) -> tuple[list[int], list[int], list[int]]:
    """``(path to point, segment to merge, merged points kept as parents of branches)``."""
    if not len(chain):
        raise ChainError(f"{chain.directory}: the chain has no images")
    p = chain.point(point)
    path = chain.path(p)
    s = path[0] if start is None else chain.point(start)
    name = chain.images[p].name
    if s not in path:
        raise UsageError(f"point {s} ({chain.images[s].name}) is not an ancestor of "
                         f"point {p} ({name})")
    segment = path[path.index(s):]
    if len(segment) < 2:
        raise UsageError(f"point {p} ({name}): nothing to consolidate "
                         "(the segment is a single image)")
    inner = segment[:-1]
    need = -1  # deepest merged image some point outside the segment still depends on
    for q in range(len(chain)):
        q_path = chain.path(q)
        if q not in segment and p not in q_path:
            need = max([need] + [inner.index(x) for x in q_path if x in inner])
    if need == len(inner) - 1:
        raise UsageError(f"point {p} ({name}): nothing to consolidate (every earlier image "
                         "of the segment is still the parent of a branch)")
    return path, segment, segment[: need + 1]


class _Copier:
    """Copies stored payloads into ``writer`` in runs: a run is mapped and checked while
    the writer copies the one before (each mapping is kept until two runs on)."""

    def __init__(self, writer: ImageWriter):
        self.writer = writer
        self.mappings: list[mmap.mmap | None] = [None, None]
        self.turn = 0  # the slot the next run's mapping takes

    def copy(self, image: ImageFile, records: np.ndarray) -> np.ndarray:
        """Append the stored bytes of ``records`` of ``image`` (IntegrityError, before
        anything of a run is written, if a payload does not match its stored digest);
        the records, offsets now in the new image (in the order copied)."""
        empty = records["length"] == 0
        placed = [self.writer.place_verbatim(_relative(records[empty]), [])]
        records = records[~empty]
        start = records["offset"].astype(np.int64)
        if np.any(start[1:] < start[:-1]):
            order = np.argsort(start, kind="stable")
            records, start = records[order], start[order]
        end = start + records["length"]
        breaks = np.r_[np.flatnonzero(start[1:] - end[:-1] > _GAP_BYTES) + 1, len(records)]
        i = 0
        while i < len(records):
            limit = int(breaks[np.searchsorted(breaks, i, side="right")])
            j = min(limit, max(i + 1, int(np.searchsorted(end, start[i] + _RUN_BYTES,
                                                          side="right"))))
            placed.append(self._run(image, records[i:j], start[i:j] - start[i],
                                    end[i:j] - start[i], int(start[i])))
            i = j
        return np.concatenate(placed)

    def _run(self, image: ImageFile, records: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             first: int) -> np.ndarray:
        """One run: the records' payloads lie at ``lo .. hi`` (bytes) from byte ``first``
        of ``image``, in order; mapped, checked in place, copied file to file."""
        base = first - first % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(image.fileno(), first - base + int(hi[-1]), prot=mmap.PROT_READ,
                           flags=mmap.MAP_SHARED | _POPULATE, offset=base)
        span = np.frombuffer(mapped, np.uint8, int(hi[-1]), first - base)
        self.mappings[self.turn] = mapped  # dropped (unmapped) two runs on
        self.turn ^= 1
        check_stored(image.name, span, lo, records)  # copy no damage
        cuts = np.r_[0, np.flatnonzero(lo[1:] != hi[:-1]) + 1, len(records)].tolist()
        pieces = [span[lo[a] : hi[b - 1]].data for a, b in pairwise(cuts)]
        return self.writer.place_verbatim(_relative(records), pieces,
                                          (image.fileno(), (first + lo[cuts[:-1]]).tolist()))


def _relative(records: np.ndarray) -> np.ndarray:
    """A copy of ``records`` with offsets relative to their payloads laid back to back."""
    out = records.copy()
    lengths = out["length"].astype(np.uint64)
    out["offset"] = np.cumsum(lengths) - lengths
    return out


# ---------------------------------------------------------------------- retention
def retention_plan(chain: Chain, *, keep_last: int, daily: int = 0,
                   weekly: int = 0) -> pd.DataFrame:
    """Which points a retention policy keeps, merges away or deletes (one row per point).

    By creation time (UTC): the newest ``keep_last`` points are kept; of the
    older points, the newest point of each of the ``daily`` most recent days
    and of each of the ``weekly`` most recent ISO weeks that have older points
    is kept too, and in an encrypted chain the newest point written (its manifest
    seal names it).  Every other point goes: a leaf no kept point depends on is
    deleted; a point with exactly one remaining child is merged into it (the
    run of such points down to the next kept point becomes one consolidation,
    recorded in ``into``), so every kept point restores exactly as before; a
    point that is the parent of several remaining branches is kept.  ChainError for a
    chain with a damaged point: its children are unknown, a point they depend on could
    be planned as a leaf and deleted (``repair`` first).
    """
    if keep_last < 1 or daily < 0 or weekly < 0:
        raise UsageError("retention: --keep must be at least 1, --daily and --weekly at least 0")
    if chain.damage:
        p = min(chain.damage)
        raise ChainError(f"retention: point {p} ({chain.images[p].name}) is damaged: "
                         f"{chain.damage[p]}; nothing changed (see 'blockforensics repair')")
    import pandas as pd  # here: not on the consolidation path (0.2 s of start-up)

    n = len(chain)
    table = chain.table()[["point", "file", "kind", "parent", "created"]]
    created = np.array([img.header.created_ns for img in chain.images], dtype=np.int64)
    times = pd.to_datetime(created, utc=True)
    newest_first = np.argsort(-created, kind="stable")
    reasons: list[list[str]] = [[] for _ in range(n)]
    for i in newest_first[:keep_last]:
        reasons[i].append(f"last {keep_last}")
    if chain.encrypted and not reasons[n - 1]:  # the seal needs the newest written point
        reasons[n - 1].append("newest written (encrypted chain)")
    for rule, buckets, count in (("daily", times.strftime("%Y-%m-%d"), daily),
                                 ("weekly", times.strftime("%G-W%V"), weekly)):
        seen: list[str] = []
        for i in newest_first[keep_last:]:
            if buckets[i] not in seen and len(seen) < count:
                seen.append(buckets[i])
                reasons[i].append(f"{rule} {buckets[i]}")
    action: list[str] = [""] * n
    into: list[int | None] = [None] * n
    for i in reversed(range(n)):  # the manifest lists parents before their children
        live = [c for c in chain.children(i) if action[c] != "delete"]
        if reasons[i]:
            action[i] = "keep"
        elif not live:
            action[i], reasons[i] = "delete", ["no kept point depends on it"]
        elif len(live) == 1:
            target = live[0]
            action[i], into[i] = "merge", into[target] if action[target] == "merge" else target
            reasons[i] = [f"rolled into point {into[i]}"]
        else:
            action[i], reasons[i] = "keep", [f"parent of {len(live)} branches"]
    table["action"] = action
    table["reason"] = ["; ".join(r) for r in reasons]
    table["into"] = pd.array(into, dtype="Int64")
    return table


def apply_retention(directory: str | os.PathLike[str], *, keep_last: int, daily: int = 0,
                    weekly: int = 0, rewrite: bool = False,
                    progress: bool = False) -> RetentionResult:
    """Apply :func:`retention_plan` to the chain in ``directory`` (deletes, then consolidations).

    The whole run holds the chain's lock (no backup lands in between); each step is
    crash-safe on its own (one manifest switch each), so an interrupted run leaves a
    valid chain that a new run finishes.  ``rewrite``: as for :func:`consolidate`.
    """
    store = ChainStore(directory)
    with store.lock():
        with Chain.open(store.directory) as chain:
            plan = retention_plan(chain, keep_last=keep_last, daily=daily, weekly=weekly)
            manifest = chain.manifest
            ids = {img.name: img.header.image_id for img in chain.images}
        files = plan["file"].tolist()
        deleted = plan.loc[plan["action"] == "delete", "file"].tolist()
        if deleted:
            kept = [f for f in files if f not in deleted]
            store.switch(kept, remove=deleted, expect=manifest, ids=[ids[f] for f in kept])
        results = []
        merges = plan[plan["action"] == "merge"]
        for target, group in merges.groupby("into", sort=True):
            results.append(consolidate(store.directory, files[int(target)],
                                       start=files[int(group["point"].min())],
                                       rewrite=rewrite, progress=progress))
    return RetentionResult(plan, deleted, results)

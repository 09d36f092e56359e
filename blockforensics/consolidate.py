"""Consolidation: merge a segment of a chain into one image, copying stored blocks verbatim.

Consolidating the path from ``start`` to ``point`` keeps, for every block
position, the newest stored block of the segment — its payload bytes and its
index record (flags, stored and content digests) exactly as they are.  Nothing
is decoded, so encrypted chains consolidate like plaintext ones and nothing
here takes a key: a ciphertext is authenticated against its chain, position
and flags, never against the image that holds it, so it may move between images.

Crash safety: the new image is written and committed under a pending
(temporary) name; then :meth:`ChainStore.switch` names it, switches the
manifest in one atomic rename and only then deletes the merged files, all under
the chain's lock.  A process killed at any moment leaves the old chain or the
new one, each whole; the next command's cleanup finishes or undoes the switch
from its journal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from blockforensics.errors import ChainError, UsageError
from blockforensics.image.chain import NO_PARENT, Chain, PointRef
from blockforensics.image.codec import EncodedBlocks
from blockforensics.image.format import FLAG_ZERO, KIND_FULL, KIND_INCREMENTAL, KIND_NAMES
from blockforensics.image.imagefile import ImageFile, ImageWriter, check_stored
from blockforensics.image.store import ChainStore, not_a_directory
from blockforensics.progress import progress_bar

_READ_BYTES = 16 << 20  # most stored bytes read with one call (bytes)
_GAP_BYTES = 64 << 10  # unwanted bytes read through rather than starting a new read (bytes)
_WORDS = {KIND_FULL: "full", KIND_INCREMENTAL: "incr"}  # in image file names


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


@dataclass
class ConsolidationResult:
    """What :func:`consolidate` did; byte counts are stored bytes of the chain's image files."""

    directory: Path
    merged: list[str]  # image files of the segment, root side first
    image: str  # file name of the new image (it takes the place of the segment's last point)
    kind: str  # "full" or "incremental"
    blocks: int  # index records in the new image
    bytes_before: int  # stored bytes of all listed images before (bytes)
    bytes_after: int  # stored bytes of all listed images after (bytes)
    removed: list[str] = field(default_factory=list)  # image files deleted
    kept_for_branches: list[str] = field(default_factory=list)  # merged but still parents

    def __repr__(self) -> str:
        kept = ", ".join(self.kept_for_branches) or "none"
        return (f"ConsolidationResult({' + '.join(self.merged)} -> {self.image}: {self.kind}, "
                f"{self.blocks} blocks; chain {_mib(self.bytes_before)} -> "
                f"{_mib(self.bytes_after)}; removed {len(self.removed)} files; "
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
                start: PointRef | None = None, progress: bool = False) -> ConsolidationResult:
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
    """
    store = ChainStore(directory)
    if not store.directory.is_dir():
        raise not_a_directory(store.directory)
    with store.lock():  # no backup, retention or cleanup runs meanwhile
        return _consolidate(store.directory, point, start, progress)


def _consolidate(directory: Path, point: PointRef, start: PointRef | None,
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
        out = chain.store.pending_path()
        layout = chain.layout(p)
        depths = range(path.index(segment[0]), len(path))
        parts = []
        for depth in depths:
            _, records = layout.records(depth)
            if full:
                records = records[(records["flags"] & FLAG_ZERO) == 0]
            parts.append(records)
        total = sum(int(r["length"].sum()) for r in parts)
        with ImageWriter(out, header) as writer, \
                progress_bar(total, "consolidate", progress) as bar:
            for depth, records in zip(depths, parts):
                for encoded in _payload_runs(layout.images[depth], records):
                    writer.add_encoded(encoded)
                    bar.update(len(encoded.payload))
            blocks = writer.blocks_written
            writer.commit()
        names = [img.name for img in chain.images]
        sizes = {img.name: img.stored_bytes for img in chain.images}
        merged = [names[i] for i in segment]
        removed = [names[i] for i in segment if i not in kept]
        name = chain.store.new_name(_WORDS[header.kind], like=merged[-1])
        new_names = [name if n == merged[-1] else n
                     for n in names if n == merged[-1] or n not in removed]
        ids = {img.name: img.header.image_id for img in chain.images} | {name: header.image_id}
        chain.store.switch(new_names, add={name: out}, remove=removed, expect=chain.manifest,
                           ids=[ids[n] for n in new_names])
    before = sum(sizes.values())
    return ConsolidationResult(
        directory, merged, name, KIND_NAMES[header.kind], blocks, before,
        before - sum(sizes[n] for n in removed) + (directory / name).stat().st_size, removed,
        [names[i] for i in kept])


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


def _payload_runs(image: ImageFile, records: np.ndarray) -> Iterator[EncodedBlocks]:
    """``records`` and their stored bytes, read in few large reads (gaps skipped in memory)."""
    records = records[np.argsort(records["offset"], kind="stable")]
    empty = records["length"] == 0
    if empty.any():
        yield EncodedBlocks(_relative(records[empty]), b"")
    records = records[~empty]
    start = records["offset"].astype(np.int64)
    end = start + records["length"]
    breaks = np.r_[np.flatnonzero(start[1:] - end[:-1] > _GAP_BYTES) + 1, len(records)]
    i = 0
    while i < len(records):
        limit = int(breaks[np.searchsorted(breaks, i, side="right")])
        j = int(np.searchsorted(end, start[i] + _READ_BYTES, side="right"))
        j = min(limit, max(i + 1, j))
        first = int(start[i])
        buf = np.empty(int(end[j - 1]) - first, dtype=np.uint8)
        image.read_into(buf, first)
        check_stored(image.name, buf, start[i:j] - first, records[i:j])  # copy no damage
        lo, hi = start[i:j] - first, end[i:j] - first
        cuts = np.flatnonzero(lo[1:] != hi[:-1]) + 1  # gaps: bytes of records not kept
        payload = buf.data if not len(cuts) else b"".join(
            buf[lo[a] : hi[b - 1]].data for a, b in zip(np.r_[0, cuts], np.r_[cuts, j - i]))
        yield EncodedBlocks(_relative(records[i:j]), payload)
        i = j


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
    point that is the parent of several remaining branches is kept.
    """
    if keep_last < 1 or daily < 0 or weekly < 0:
        raise UsageError("retention: --keep must be at least 1, --daily and --weekly at least 0")
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
                    weekly: int = 0, progress: bool = False) -> RetentionResult:
    """Apply :func:`retention_plan` to the chain in ``directory`` (deletes, then consolidations).

    The whole run holds the chain's lock (no backup lands in between); each step is
    crash-safe on its own (one manifest switch each), so an interrupted run leaves a
    valid chain that a new run finishes.
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
                                       progress=progress))
    return RetentionResult(plan, deleted, results)

"""What changed between two points of a chain, in which files, and does it look like ransomware?

Everything here reads the points straight from the chain (``Chain.disk``), never
from a restore:

- :func:`diff` — the changed block runs between any two points (from the index
  digests, nothing read) and, with ``files=True``, the files behind them, found
  by walking both points' directory trees with The Sleuth Kit (pytsk3) through
  :class:`ChainImgInfo`, for FAT12/16/32 and ext2/3/4, bare or in MBR partitions.
- :func:`block_entropy` — Shannon entropy per block, in bits per byte (0..8).
- :func:`changes` and :func:`timeline` — every file change of every point
  against its parent, and per point the counts.

How a file is judged (paths are compared, ``p1:/x`` for partition 1 of an MBR disk):

- *created* / *deleted*: the path exists at one point only;
- a file is *modified* when its size or mtime differs, or its bytes differ:
  when its data runs are the same at both points only its bytes inside changed
  blocks are compared (a changed block can hold other files' clusters, so
  touching one proves nothing); when the runs differ, the whole content is;
- a directory is *modified* when the names it lists differ.

Entropy of a file's change, bits per byte: over the file's bytes inside the
changed blocks at each point, or over its whole content at a point when it was
written elsewhere (runs differ), created (after) or deleted (before); 0 where
there are no such bytes.

Ransomware rule (``suspected_encryption``): a *modified* file whose entropy
rose by more than :data:`ENTROPY_JUMP` bits per byte and whose new bytes are
indistinguishable from uniform random ones — a chi-square test of the byte
histogram against uniform (255 degrees of freedom) gives p >= :data:`UNIFORM_P`,
over at least :data:`MIN_TEST_BYTES` bytes.  Text, executables and even most
compressed formats fail the uniformity test; ciphertext passes it.  New files
are never flagged (a new archive would be), so ransomware that writes copies
shows as created + deleted files, not as flags.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk

if TYPE_CHECKING:
    from blockforensics.image.chain import Chain, PointRef

__all__ = ["ChainImgInfo", "DiffResult", "block_entropy", "changes", "diff", "list_files",
           "timeline"]

#: entropy rise, bits per byte, a modified file needs to be suspected of encryption
ENTROPY_JUMP = 1.0
#: chi-square p-value (bytes vs uniform) at or above which bytes look random
UNIFORM_P = 1e-3
#: fewer changed bytes than this are never judged random (the test needs counts)
MIN_TEST_BYTES = 512
#: bytes read at a time when hashing or histogramming file content
CHUNK_BYTES = 8 << 20

FILE_COLUMNS = ["path", "type", "change", "entropy_before", "entropy_after", "size_before",
                "size_after", "suspected_encryption"]
OWNER_COLUMNS = ["start", "length", "path", "side"]


# ------------------------------------------------------------------ entropy
def _entropy(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy, bits per byte, of each row of byte histograms ``(k, 256)``; 0 if empty."""
    counts = np.atleast_2d(counts).astype(np.float64)
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=1) + 0.0  # + 0.0 turns -0.0 into 0.0


def _uniform_p(counts: np.ndarray) -> float:
    """p-value of a chi-square test of one byte histogram against uniform (Wilson–Hilferty)."""
    n = counts.sum()
    if n == 0:
        return 0.0
    expected = n / 256
    chi2 = float(((counts - expected) ** 2).sum() / expected)
    k = 255  # degrees of freedom
    z = ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _histograms(blocks: np.ndarray) -> np.ndarray:
    """Per-row byte histograms ``(k, 256)`` of a ``(k, n)`` uint8 array, in one bincount."""
    k = blocks.shape[0]
    keys = blocks.astype(np.int64) + (np.arange(k, dtype=np.int64) << 8)[:, None]
    return np.bincount(keys.ravel(), minlength=k * 256).reshape(k, 256)


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
            out[order[done : done + count]] = _entropy(_histograms(blocks))
            done += count
    return out


# --------------------------------------------------------------- TSK access
def _pytsk3() -> Any:
    try:
        import pytsk3
    except ImportError as exc:
        raise UsageError("file-level diffs need pytsk3 (pip install pytsk3)") from exc
    return pytsk3


def ChainImgInfo(disk: Disk) -> Any:  # a class factory: pytsk3 is an optional import
    """A ``pytsk3.Img_Info`` reading a Disk (e.g. ``chain.disk(p)``) through its file object.

    The Sleuth Kit then opens file systems of a chain point with no restore: every
    read TSK makes becomes a seek + read on ``disk.open_file()``.
    """
    pytsk3 = _pytsk3()
    img_info: Any = pytsk3.Img_Info

    class _ChainImgInfo(img_info):
        def __init__(self, disk: Disk):
            self.disk = disk
            self._file = disk.open_file()
            super().__init__(url="", type=pytsk3.TSK_IMG_TYPE_EXTERNAL)

        def read(self, offset: int, size: int) -> bytes:
            self._file.seek(offset)
            return self._file.read(size)

        def get_size(self) -> int:
            return self.disk.size

        def close(self) -> None:
            self._file.close()

    return _ChainImgInfo(disk)


@dataclass
class _Entry:
    """One file or directory as TSK sees it at one point; ``extents`` in bytes of the disk."""

    path: str
    type: str  # "file" or "dir"
    inode: int
    size: int  # bytes
    mtime: int  # seconds since the epoch
    extents: np.ndarray  # (k, 2) int64: disk byte [start, stop) of its content, file order
    children: frozenset[str] = frozenset()

    def same_extents(self, other: _Entry) -> bool:
        return np.array_equal(self.extents, other.extents)


def _filesystem_offsets(disk: Disk) -> list[tuple[str, int]]:
    """``(path prefix, byte offset)`` of each FAT or ext file system: bare, or per MBR partition."""
    from blockforensics.allocation import FILESYSTEM_KINDS, detect, partitions

    kind = detect(disk)
    if kind in FILESYSTEM_KINDS:
        return [("", 0)]
    if kind != "mbr":
        return []
    table = partitions(disk)
    found = table[table["filesystem"].isin(FILESYSTEM_KINDS)]
    return [(f"p{index}:", int(start))
            for index, start in zip(found["index"], found["start_byte"])]


def _runs_of(pytsk3: ModuleType, fs_file: Any, fs_offset: int,
            block_size: int, size: int) -> np.ndarray:
    """Data runs of a file's default attribute as ``(k, 2)`` disk byte [start, stop), in file
    order, cut at ``size`` bytes (slack excluded); sparse and resident data have none."""
    rows = []
    skip = int(pytsk3.TSK_FS_ATTR_RUN_FLAG_SPARSE) | int(pytsk3.TSK_FS_ATTR_RUN_FLAG_FILLER)
    for attr in fs_file:
        if (attr.info.type != pytsk3.TSK_FS_ATTR_TYPE_DEFAULT
                or int(attr.info.flags) & int(pytsk3.TSK_FS_ATTR_RES)):
            continue
        for run in attr:
            length = min(run.len * block_size, size - run.offset * block_size)
            if length > 0 and not int(run.flags) & skip:
                start = fs_offset + run.addr * block_size
                rows.append((run.offset, start, start + length))
    rows.sort()
    return np.array([r[1:] for r in rows], dtype=np.int64).reshape(-1, 2)


def _entry(pytsk3: ModuleType, fs: Any, fs_offset: int, path: str,
           fs_file: Any) -> _Entry:
    meta = fs_file.info.meta
    return _Entry(path=path, type="dir" if meta.type == pytsk3.TSK_FS_META_TYPE_DIR else "file",
                  inode=int(meta.addr), size=int(meta.size), mtime=int(meta.mtime),
                  extents=_runs_of(pytsk3, fs_file, fs_offset, fs.info.block_size,
                                   int(meta.size)))


def _walk(pytsk3: ModuleType, fs: Any, fs_offset: int, directory: Any, dir_path: str,
          entries: dict[str, _Entry], seen: set[int]) -> frozenset[str]:
    """Add the allocated, non-virtual entries below ``directory`` (path ``dir_path``, ending
    in "/"); returns the names it lists."""
    is_fat = bool(int(fs.info.ftype) & int(pytsk3.TSK_FS_TYPE_FAT_DETECT))
    names = []
    for item in directory:
        name, meta = item.info.name, item.info.meta
        text = name.name.decode("utf-8", "replace")
        if (text in (".", "..") or meta is None
                or not int(name.flags) & int(pytsk3.TSK_FS_NAME_FLAG_ALLOC)
                or meta.type not in (pytsk3.TSK_FS_META_TYPE_REG, pytsk3.TSK_FS_META_TYPE_DIR)
                or (is_fat and text.endswith("(Volume Label Entry)"))):
            continue
        names.append(text)
        path = dir_path + text
        entry = entries[path] = _entry(pytsk3, fs, fs_offset, path, item)
        if entry.type == "dir" and entry.inode not in seen:
            seen.add(entry.inode)
            entry.children = _walk(pytsk3, fs, fs_offset, item.as_directory(), path + "/",
                                   entries, seen)
    return frozenset(names)


def _list(disk: Disk | None) -> dict[str, _Entry]:
    """Every allocated file and directory of every recognised file system of ``disk``, by
    path (None: an empty volume, nothing)."""
    entries: dict[str, _Entry] = {}
    if disk is None:
        return entries
    pytsk3 = _pytsk3()
    image = ChainImgInfo(disk)
    for prefix, offset in _filesystem_offsets(disk):
        try:
            fs = pytsk3.FS_Info(image, offset=offset)
        except OSError as exc:  # recognised by its signature, but TSK cannot read it
            raise FormatError(f"The Sleuth Kit cannot open the file system at byte {offset}: "
                              f"{exc}") from exc
        root = fs.open_dir(inode=fs.info.root_inum)
        root_path = f"{prefix}/"
        entries[root_path] = _entry(pytsk3, fs, offset, root_path, fs.open_meta(
            inode=fs.info.root_inum))
        entries[root_path].children = _walk(pytsk3, fs, offset, root, root_path, entries,
                                            {fs.info.root_inum})
    return entries


def list_files(disk: Disk) -> pd.DataFrame:
    """Files and directories of a Disk (e.g. ``chain.disk(p)``) as TSK lists them, by path.

    Columns: path, type ("file"/"dir"), size (bytes), mtime (seconds since the epoch),
    inode (TSK's metadata address).
    """
    rows = [(e.path, e.type, e.size, e.mtime, e.inode) for e in _list(disk).values()]
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


@dataclass
class _Bytes:
    """Byte histogram (256 counts) and SHA-256 of some bytes of one point."""

    counts: np.ndarray
    digest: bytes

    @property
    def entropy(self) -> float:
        return float(_entropy(self.counts)[0])


def _read(disk: Disk | None, intervals: np.ndarray) -> _Bytes:
    """Histogram and hash of the disk bytes in ``intervals`` (read in chunks, in order)."""
    counts = np.zeros(256, dtype=np.int64)
    sha = hashlib.sha256()
    for start, stop in intervals.tolist() if disk is not None else []:
        assert disk is not None
        for lo in range(start, stop, CHUNK_BYTES):
            data = disk.read(lo, min(CHUNK_BYTES, stop - lo))
            counts += np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
            sha.update(data)
    return _Bytes(counts, sha.digest())


class _Comparison:
    """Compares the listings of two points given the blocks that differ between them."""

    def __init__(self, disk_a: Disk | None, disk_b: Disk | None, changed: BlockMap):
        self.disks = disk_a, disk_b
        starts, lengths = changed.run_arrays()
        self.block_size = changed.block_size
        self.starts, self.stops = starts * self.block_size, (starts + lengths) * self.block_size
        self.rows: list[dict] = []
        self.owners: list[tuple[int, int, str, str]] = []

    def touched(self, entry: _Entry) -> np.ndarray:
        return _clip(entry.extents, self.starts, self.stops)

    def compare(self, a: dict[str, _Entry], b: dict[str, _Entry]) -> None:
        for path in sorted(a.keys() | b.keys()):
            old, new = a.get(path), b.get(path)
            if old is not None and new is not None and old.type != new.type:
                self.add("deleted", old, None)
                self.add("created", None, new)
            elif old is None or new is None:
                self.add("created" if old is None else "deleted", old, new)
            elif old.type == "dir":
                if old.children != new.children:
                    self.add("modified", old, new)
            else:
                self.compare_files(old, new)

    def compare_files(self, old: _Entry, new: _Entry) -> None:
        touched = self.touched(old), self.touched(new)
        meta = (old.size, old.mtime) != (new.size, new.mtime)
        moved = not old.same_extents(new)
        if not (meta or moved or touched[0].size or touched[1].size):
            return
        if moved:  # written elsewhere: compare whole contents
            before, after = _read(self.disks[0], old.extents), _read(self.disks[1], new.extents)
        else:  # same runs: only bytes inside changed blocks can differ
            before, after = _read(self.disks[0], touched[0]), _read(self.disks[1], touched[1])
        if meta or before.digest != after.digest:
            self.add("modified", old, new, before, after)

    def add(self, change: str, old: _Entry | None, new: _Entry | None,
            before: _Bytes | None = None, after: _Bytes | None = None) -> None:
        if before is None:
            before = _read(self.disks[0], old.extents if old is not None else np.empty((0, 2)))
        if after is None:
            after = _read(self.disks[1], new.extents if new is not None else np.empty((0, 2)))
        entry = new if new is not None else old
        assert entry is not None
        rise = after.entropy - before.entropy
        suspected = (change == "modified" and entry.type == "file"
                     and after.counts.sum() >= MIN_TEST_BYTES and rise > ENTROPY_JUMP
                     and _uniform_p(after.counts) >= UNIFORM_P)
        self.rows.append({
            "path": entry.path, "type": entry.type, "change": change,
            "entropy_before": before.entropy, "entropy_after": after.entropy,
            "size_before": old.size if old is not None else 0,
            "size_after": new.size if new is not None else 0,
            "suspected_encryption": bool(suspected)})
        for side, item in (("a", old), ("b", new)):
            if item is not None:
                for start, stop in self.touched(item).tolist():
                    first = start // self.block_size
                    self.owners.append((first, -(-stop // self.block_size) - first,
                                        item.path, side))


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

    @property
    def changed_blocks(self) -> int:
        return int(self.runs["length"].sum())

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
                "files_checked": self.files_checked}

    def __str__(self) -> str:
        origin = "empty volume" if self.a is None else f"point {self.a}"
        lines = [f"{origin} -> point {self.b}: {self.changed_blocks} blocks of {self.block_size} B"
                 f" changed in {len(self.runs)} runs"]
        shown = self.runs.drop(columns="files", errors="ignore")
        lines.append(shown.to_string(index=False, max_rows=20) if len(shown) else "(no runs)")
        if self.files_checked:
            lines.append("")
            lines.append(self.files.to_string(index=False, float_format="{:.2f}".format)
                         if len(self.files) else "(no file changed)")
            flagged = self.suspected()
            if len(flagged):
                lines.append(f"suspected encryption: {len(flagged)} file(s): "
                             + ", ".join(flagged["path"]))
        return "\n".join(lines)


def _changed(chain: Chain, a: int | None, b: int) -> BlockMap:
    """Blocks differing between two points; against an empty volume, the non-zero ones."""
    return chain.layout(b).present() if a is None else chain.changed(a, b)


def _diff(chain: Chain, a: int | None, b: int, files: bool,
          listings: dict[int | None, dict[str, _Entry]]) -> DiffResult:
    changed = _changed(chain, a, b)
    runs = changed.runs()
    frame = pd.DataFrame(columns=FILE_COLUMNS)
    owners = pd.DataFrame(columns=OWNER_COLUMNS)
    if files:
        for p in (a, b):
            if p not in listings:
                listings[p] = _list(None if p is None else chain.disk(p))
        comparison = _Comparison(None if a is None else chain.disk(a), chain.disk(b), changed)
        comparison.compare(listings[a], listings[b])
        if comparison.rows:
            frame = pd.DataFrame(comparison.rows, columns=FILE_COLUMNS)
        if comparison.owners:
            owners = pd.DataFrame(comparison.owners, columns=OWNER_COLUMNS)
        runs["files"] = [_owners_in(owners, s, n) for s, n in zip(runs["start"], runs["length"])]
    return DiffResult(a, b, changed.n_blocks, changed.block_size, runs, frame.astype({
        "entropy_before": float, "entropy_after": float, "size_before": "int64",
        "size_after": "int64", "suspected_encryption": bool}),
        owners.astype({"start": "int64", "length": "int64"}), files)


def _owners_in(owners: pd.DataFrame, start: int, length: int) -> tuple[str, ...]:
    hit = (owners["start"] < start + length) & (start < owners["start"] + owners["length"])
    return tuple(sorted(set(owners.loc[hit, "path"])))


def diff(chain: Chain, a: PointRef | None, b: PointRef, *, files: bool = False) -> DiffResult:
    """What changed from point ``a`` to point ``b`` (any two, branches included).

    Points as ``chain.point`` takes them ("0", -1, a file name); ``a=None`` compares
    with an empty volume.  Block runs come from the index digests alone; ``files=True``
    walks both points with The Sleuth Kit, read straight from the chain.
    """
    return _diff(chain, None if a is None else chain.point(a), chain.point(b), files, {})


def _point_diffs(chain: Chain) -> list[DiffResult]:
    """Every point against its parent (the full against an empty volume), files included."""
    listings: dict[int | None, dict[str, _Entry]] = {}
    return [_diff(chain, chain.parent(p), p, True, listings) for p in range(len(chain))]


def _changes(diffs: list[DiffResult]) -> pd.DataFrame:
    rows = [{"point": d.b, "parent": d.a, **row} for d in diffs
            for row in d.files.to_dict("records")]
    return pd.DataFrame(rows, columns=["point", "parent", *FILE_COLUMNS]) \
        .astype({"point": "int64", "parent": "Int64", "suspected_encryption": bool})


def changes(chain: Chain) -> pd.DataFrame:
    """Every file change of every point against its parent: point, parent, then the
    columns of :attr:`DiffResult.files` (entropy in bits per byte, sizes in bytes)."""
    return _changes(_point_diffs(chain))


def timeline(chain: Chain) -> pd.DataFrame:
    """One row per point, in creation order: what it changed against its parent.

    Columns: point, file, kind, parent, created (ISO time), label, blocks_changed
    (blocks differing from the parent; for a full, its non-zero blocks), files_created,
    files_modified, files_deleted, suspected_encryption (count of files), and
    changed_entropy (mean entropy of the changed blocks at the point, bits per byte).
    """
    diffs = _point_diffs(chain)
    frame = chain.table()[["point", "file", "kind", "parent", "created", "label"]]
    per_change = _changes(diffs).groupby(["point", "change"]).size().unstack(fill_value=0)
    entropies = []
    for d in diffs:
        disk = chain.disk(d.b)
        positions = _changed(chain, d.a, d.b).positions()
        values = block_entropy(disk, positions[positions < disk.n_blocks])
        entropies.append(float(values.mean()) if values.size else 0.0)
    frame = frame.assign(blocks_changed=[d.changed_blocks for d in diffs])
    for change in ("created", "modified", "deleted"):
        column = per_change[change] if change in per_change else pd.Series(dtype="int64")
        frame[f"files_{change}"] = frame["point"].map(column).fillna(0).astype("int64")
    frame["suspected_encryption"] = [int(d.files["suspected_encryption"].sum()) for d in diffs]
    frame["changed_entropy"] = entropies
    return frame

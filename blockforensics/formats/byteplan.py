"""Byte plans: a served image file as a table of segments read straight from files.

A :class:`~blockforensics.formats.layout.FileLayout` synthesises its file from a Disk,
block by block through Python.  When the disk's blocks sit verbatim in files (a plain
chain point, whose verbatim payloads *are* its blocks; a raw image file), each byte of
the served file is either a zero, a byte of the layout's metadata, or a byte at a known
offset of a known file.  A :class:`FilePlan` lists those segments in file order, and a
:class:`Source` lists the stored blocks of one file with the digests a reader must check
before handing their bytes out: what the C FUSE server (``blockforensics._fuseserve``)
serves from, with no Python per read.

Built with numpy from the chain's index and the layout's extents; memory grows with the
number of runs (segments) and of stored blocks (digests), not with the disk's size.
Units: bytes throughout, except block positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout

if TYPE_CHECKING:
    from blockforensics.image.reader import ChainDisk

#: stored blocks a plan holds at most (33 bytes each: 528 MiB): a point holding more is
#: served by the Python reader, which reads the chain's index as it goes
MAX_PLANNED_BLOCKS = 1 << 24
ZERO_CHUNK = 4096  # bytes of metadata tested for all zeros at a time (left out of plans)
ZEROS = -1  # a segment of zeros
METADATA = -2  # a segment of the plan's metadata blob


@dataclass(frozen=True)
class Source:
    """A file the disk's bytes are read from, and the stored blocks in it to check.

    ``offsets`` (ascending), ``positions`` (the disk block each one is, for messages),
    ``digests`` ((n, 16) uint8, the stored digest) and ``crc`` (uint8: 1 where that
    digest is the CRC-32 form, 4 little-endian bytes then zeros, else SHA-256/128) of
    each ``block_size``-byte stored block; none for a file with no digests (raw)."""

    fd: int
    name: str
    block_size: int
    offsets: np.ndarray
    positions: np.ndarray
    digests: np.ndarray
    crc: np.ndarray


@dataclass(frozen=True)
class DiskPlan:
    """Where each byte of a disk comes from: runs tiling ``[0, size)`` from ``starts``
    (ascending, the first 0), each reading ``sources[k]`` (an index into ``files``, or
    ``ZEROS``) from its byte ``offsets[k]``; a last run of zeros starts at ``size``."""

    size: int
    starts: np.ndarray
    sources: np.ndarray
    offsets: np.ndarray
    files: list[Source]


@dataclass(frozen=True)
class FilePlan:
    """A served file of ``size`` bytes as segments tiling it from ``starts`` (ascending,
    the first 0): ``kinds[k]`` is an index into the disk plan's files, ``ZEROS`` or
    ``METADATA``; ``offsets[k]`` the byte of that file (or of ``blob``) it starts at."""

    size: int
    starts: np.ndarray
    kinds: np.ndarray
    offsets: np.ndarray
    blob: bytes

    def window(self, start: int, length: int) -> FilePlan:
        """The plan of bytes ``start .. start+length`` of this file, as a file of its own."""
        if length <= 0:
            return FilePlan(0, self.starts[:0], self.kinds[:0], self.offsets[:0], self.blob)
        first = max(0, int(np.searchsorted(self.starts, start, side="right")) - 1)
        stop = max(first + 1, int(np.searchsorted(self.starts, start + length, side="left")))
        starts = self.starts[first:stop].copy()
        offsets = self.offsets[first:stop].copy()
        kinds = self.kinds[first:stop]
        offsets[0] += (start - starts[0]) * (kinds[0] != ZEROS)
        starts[0] = start
        return FilePlan(length, starts - start, kinds, offsets, self.blob)


def _tiling(size: int, starts: np.ndarray, ends: np.ndarray, sources: np.ndarray,
            offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs ``[starts, ends)`` (ascending, not overlapping) with the gaps between them, and
    before the first, filled with zero runs, up to ``size``: ``(starts, sources,
    offsets)``; adjacent runs that continue one another are merged."""
    gap_starts = np.r_[0, ends].astype(np.int64)
    gap_ends = np.r_[starts, size].astype(np.int64)
    gaps = gap_starts < gap_ends
    n_gaps = int(gaps.sum())
    all_starts = np.r_[starts, gap_starts[gaps]].astype(np.int64)
    all_sources = np.r_[sources, np.full(n_gaps, ZEROS)].astype(np.int32)
    all_offsets = np.r_[offsets, np.zeros(n_gaps)].astype(np.int64)
    order = np.argsort(all_starts, kind="stable")
    s, k, o = all_starts[order], all_sources[order], all_offsets[order]
    continues = (k[1:] == k[:-1]) & ((k[1:] == ZEROS) | (o[1:] - o[:-1] == s[1:] - s[:-1]))
    keep = np.r_[True, ~continues][: len(s)]  # none at all for an empty file
    return s[keep], k[keep], o[keep]


def disk_plan(disk: Disk) -> DiskPlan | None:
    """The plan of ``disk`` when its bytes can be read from files as they are: a chain
    point with no encrypted or compressed block, or a raw image file; else None."""
    from blockforensics.formats.raw import RawDisk
    from blockforensics.image.reader import ChainDisk

    if isinstance(disk, RawDisk):
        none = np.zeros(0, np.int64)
        raw = Source(disk.fileno(), disk.path, disk.block_size, none, none,
                     np.zeros((0, 16), np.uint8), np.zeros(0, np.uint8))
        s, k, o = _tiling(disk.size, np.zeros(1, np.int64), np.array([disk.size]),
                          np.zeros(1, np.int32), np.zeros(1, np.int64))
        return DiskPlan(disk.size, s, k, o, [raw])
    if isinstance(disk, ChainDisk):
        return _chain_plan(disk)
    return None


def _chain_plan(disk: ChainDisk) -> DiskPlan | None:
    from blockforensics.image.format import ENCODING_FLAGS, FLAG_CRC32, FLAG_ZERO, digest_rows
    from blockforensics.image.layout import contiguous_runs

    if disk.chain.codec.encrypted:
        return None
    layout, bs = disk.layout, disk.block_size
    # per image of the path: (positions, offsets, digests, crc) of its verbatim blocks,
    # window by window (33 bytes a block, not the index records' 56 and more)
    found: list[list[tuple[np.ndarray, ...]]] = [[] for _ in layout.images]
    held = 0
    for window in layout.windows():
        for depth, rows, records in window.by_image():
            encoding = records["flags"] & ENCODING_FLAGS
            if np.any((encoding != 0) & (encoding != FLAG_ZERO)):
                return None  # compressed blocks: decoded by the Python reader
            mine = records.compress(encoding == 0)
            held += len(mine)
            if held > MAX_PLANNED_BLOCKS:
                return None
            checked = mine if disk.check else mine[:0]
            found[depth].append((window.start + rows[encoding == 0],
                                 mine["offset"].astype(np.int64),
                                 digest_rows(checked["stored_digest"]).copy(),
                                 ((checked["flags"] & FLAG_CRC32) != 0).astype(np.uint8)))
    files: list[Source] = []
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for image, pieces in zip(layout.images, found, strict=True):
        if not pieces:
            continue
        positions, offsets, digests, crc = (np.concatenate(part) for part in zip(*pieces))
        first, at, count = contiguous_runs(positions, offsets, bs)
        runs.append((first * bs, (first + count) * bs, np.full(len(first), len(files)), at))
        by_offset = np.argsort(offsets, kind="stable")[: len(crc)]
        files.append(Source(image.fileno(), image.name, bs, offsets[by_offset],
                            positions[by_offset], digests[by_offset], crc[by_offset]))
    starts, ends, sources, offsets = (np.concatenate([np.zeros(0, np.int64), *part])
                                      for part in zip(*runs, strict=True)) if runs else (
        [np.zeros(0, np.int64)] * 4)
    order = np.argsort(starts, kind="stable")
    ends = np.minimum(ends[order], disk.size)  # the last block's bytes past the end: zeros
    s, k, o = _tiling(disk.size, starts[order], ends, sources[order], offsets[order])
    return DiskPlan(disk.size, s, k, o, files)


def file_plan(layout: FileLayout, plan: DiskPlan) -> FilePlan:
    """The plan of ``layout``'s file, its data read as ``plan`` says (``plan`` must be that
    of ``layout.disk``)."""
    starts, lengths, source, meta = layout._extents
    data = source >= 0
    # each data extent [d, d + L) of the disk meets the disk runs first[i] .. stop[i] - 1
    # (the zeros past the disk's end being one more run)
    run_starts = np.r_[plan.starts, plan.size]
    run_sources = np.r_[plan.sources, ZEROS]
    run_offsets = np.r_[plan.offsets, 0]
    d, length, at = source[data], lengths[data], starts[data]
    first = np.searchsorted(run_starts, d, side="right") - 1
    stop = np.searchsorted(run_starts, d + length, side="left")
    count = stop - first
    extent = np.repeat(np.arange(len(d)), count)
    run = np.repeat(first - np.cumsum(np.r_[0, count[:-1]]), count) + np.arange(count.sum())
    piece_disk = np.maximum(run_starts[run], d[extent])
    piece_end = np.minimum(np.r_[run_starts[1:], np.iinfo(np.int64).max][run],
                           d[extent] + length[extent])
    piece_start = at[extent] + piece_disk - d[extent]
    piece_source = run_sources[run]
    piece_offset = np.where(piece_source == ZEROS, 0,
                            run_offsets[run] + piece_disk - run_starts[run])
    meta_start, meta_end, meta_offset, blob = _metadata_runs(starts, source, meta)
    all_starts = np.r_[piece_start, meta_start].astype(np.int64)
    all_ends = np.r_[piece_start + piece_end - piece_disk, meta_end].astype(np.int64)
    order = np.argsort(all_starts, kind="stable")
    s, k, o = _tiling(layout.file_size, all_starts[order], all_ends[order],
                      np.r_[piece_source, np.full(len(meta_start), METADATA)][order],
                      np.r_[piece_offset, meta_offset][order])
    return FilePlan(layout.file_size, s, k, o, blob)


def _metadata_runs(starts: np.ndarray, source: np.ndarray, meta: list[bytes | bytearray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """The metadata pieces (extents with ``source < 0``) but their all-zero
    ``ZERO_CHUNK``-byte chunks (the tables of a sparse disk), as runs: ``(file starts,
    file ends, offsets in the blob, the blob)``; what is left out reads as zeros."""
    run_starts: list[int] = []
    run_ends: list[int] = []
    parts: list[np.ndarray] = []
    for start, j in zip(starts[source < 0].tolist(), (-1 - source[source < 0]).tolist()):
        data = np.frombuffer(meta[j], np.uint8)
        whole = len(data) // ZERO_CHUNK * ZERO_CHUNK
        flags = np.r_[data[:whole].reshape(-1, ZERO_CHUNK).any(axis=1),
                      [data[whole:].any()] if len(data) > whole else []].astype(bool)
        edges = np.flatnonzero(np.diff(np.r_[False, flags, False])) * ZERO_CHUNK
        for lo, hi in zip(edges[0::2].tolist(), np.minimum(edges[1::2], len(data)).tolist()):
            run_starts.append(start + lo)
            run_ends.append(start + hi)
            parts.append(data[lo:hi])
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.cumsum(np.r_[0, lengths])[:-1].astype(np.int64)
    return (np.array(run_starts, dtype=np.int64), np.array(run_ends, dtype=np.int64),
            offsets, b"".join(part.data for part in parts))

"""Backup and restore: moving blocks between a Disk and a chain, streamed in chunks.

Backup reads only the blocks that can matter, about ``CHUNK_BYTES`` at a time:
the source's data extents (holes of a sparse source are zero blocks, never
read), within an ``only`` map (e.g. the allocated blocks) when given.  A full
image stores the non-zero ones; an incremental stores the blocks that differ
from its parent point — found by comparing per-block content digests with the
parent's index records (over the source's data and the parent's, so blocks that
became holes are seen), or given by a changed-block map (CBT), in which case only
the changed blocks are read: the work follows the data, not the volume size.
Restore writes a point back, chunk by chunk, seeking over absent chunks so the
output stays sparse.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import overload

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.disk import Disk, nonzero_rows
from blockforensics.errors import UsageError
from blockforensics.fileio import atomic_writer, check_fits, set_size, writeback_progress
from blockforensics.formats.placement import PlacedWriter
from blockforensics.image import sources
from blockforensics.image.chain import Chain, PointRef
from blockforensics.image.format import INDEX_RECORD_SIZE
from blockforensics.progress import progress_bar
from blockforensics.volume import Volume, check_block_size, check_disk_size

#: bytes per batch (up to twice this): four batches are in memory at once (one read ahead,
#: one encoded, its payloads, one written), ~80 MiB peak RSS for an encrypted full
CHUNK_BYTES = 4 << 20


def _chunk_blocks(block_size: int) -> int:
    return max(1, CHUNK_BYTES // block_size)


def read_source(source: Disk, start: int, count: int, block_size: int) -> np.ndarray:
    """Blocks of ``block_size`` bytes from any Disk, whatever its own block size."""
    if source.block_size == block_size:
        return source.read_blocks(start, count)
    out = np.zeros((count, block_size), dtype=np.uint8)
    data = source.read(start * block_size, count * block_size)
    out.reshape(-1)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out


class _Reblocked(Disk):
    """A Disk read in blocks of another size (a backup's, when the source's differs)."""

    def __init__(self, source: Disk, block_size: int):
        self.source, self.size, self.block_size = source, source.size, block_size

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        return read_source(self.source, start, count, self.block_size)


def _fit(bmap: BlockMap, n_blocks: int, block_size: int) -> BlockMap:
    """``bmap`` at ``block_size`` bytes per block, cut or padded to ``n_blocks``."""
    if bmap.block_size != block_size:
        bmap = bmap.rescale(block_size)
    if bmap.n_blocks == n_blocks:
        return bmap
    starts, lengths = bmap.run_arrays()
    stops = np.minimum(starts + lengths, n_blocks)
    keep = stops > starts
    return BlockMap.from_run_arrays(n_blocks, starts[keep], (stops - starts)[keep], block_size)


def batches(todo: BlockMap, step: int) -> Iterator[np.ndarray]:
    """The positions of ``todo`` in sorted batches of about ``step`` (at most ``2 * step``)
    blocks, made from its runs: no array of the whole volume, no loop over blocks."""
    starts, lengths = todo.run_arrays()
    if not len(starts):
        return
    pieces = -(-lengths // step)  # runs longer than a batch are cut into pieces
    run = np.repeat(np.arange(len(starts)), pieces)
    offset = (np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * step
    starts, lengths = starts[run] + offset, np.minimum(step, lengths[run] - offset)
    before = np.cumsum(lengths) - lengths  # blocks in the pieces before each piece
    cuts = np.flatnonzero(np.diff(before // step)) + 1
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(starts)].tolist()):
        first = before[a]
        total = int(before[b - 1] + lengths[b - 1] - first)
        yield np.arange(total) + np.repeat(starts[a:b] - (before[a:b] - first), lengths[a:b])


#: batches the image writer may hold in flight (ImageWriter.write_behind) when it writes
#: plain blocks straight from the read buffers (direct I/O): the disk always has the
#: next one waiting.  Encoded payloads (encrypted, compressed) are new buffers: one.
WRITE_BEHIND = 2


def read_ahead(source: Disk, todo: BlockMap, step: int, write_behind: int = 1
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions, blocks)`` of ``todo``, batch by batch (see :func:`batches`); each next
    batch is read on a thread while the caller works on this one (reads release the GIL,
    so hashing, compression and encryption never wait for the source).

    The blocks are read into ``write_behind + 2`` page-aligned buffers in turn (no fresh
    memory per batch; aligned for direct I/O): one being read, one the caller works on,
    ``write_behind`` its image writer may still hold.  A batch's array is overwritten
    by the one ``write_behind + 2`` later, read while the caller asks for the one before:
    the caller must be done with it by then, and so must its writer (after
    ``write_behind(N)``, ``ImageWriter.add`` returns once the batch N calls back is
    written)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    block_size = source.block_size
    ring = [np.frombuffer(mmap.mmap(-1, 2 * step * block_size,  # a batch: <= 2 * step blocks
                                    flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), np.uint8)
            for _ in range(write_behind + 2)]
    with ThreadPoolExecutor(1, thread_name_prefix="blockforensics-read") as pool:
        pending: tuple[np.ndarray, Future[np.ndarray]] | None = None
        for i, positions in enumerate(batches(todo, step)):
            out = ring[i % len(ring)][: len(positions) * block_size].reshape(-1, block_size)
            ahead = (positions, pool.submit(source.read_at, positions, out))
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = ahead
        if pending is not None:
            yield pending[0], pending[1].result()


def _to_front(blocks: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``blocks[rows]`` (sorted row indices) moved to the front of ``blocks`` itself, run
    by run: no new memory, and a read buffer stays page-aligned (for direct I/O)."""
    if len(rows) in (0, len(blocks)):
        return blocks[: len(rows)]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    firsts, lasts = rows[np.r_[0, breaks]], rows[np.r_[breaks, len(rows)] - 1]
    to = 0
    for first, last in zip(firsts.tolist(), lasts.tolist()):
        if first != to:  # moves towards the front: numpy copies overlapping rows right
            blocks[to : to + last + 1 - first] = blocks[first : last + 1]
        to += last + 1 - first
    return blocks[:to]


def backup(chain: Chain, source: Disk, *, parent: PointRef | None = None,
           full: bool | None = None, changed: BlockMap | None = None,
           only: BlockMap | None = None, block_size: int | None = None,
           created_ns: int | None = None, label: str = "", compress: bool = False,
           progress: bool = False) -> int:
    """Back ``source`` up into ``chain``; returns the new point's index.

    - The first image of a chain is a full (``block_size`` bytes per block,
      default the source's); later ones are incrementals against ``parent`` (default:
      the newest point) unless ``full=True``.
    - ``changed``: trust this map of changed blocks instead of comparing digests.
    - ``only``: store nothing outside this map (e.g. the allocated blocks).
    - ``compress``: zstd-compress blocks (before encryption) where that saves space.

    An acquisition image (E01) that stores hashes of its medium is hashed as it is read,
    the rest of it after, and the outcome recorded in the chain (``sources.json``, which
    ``verify`` reports); a mismatch warns :class:`AcquisitionHashMismatch` (the point is
    kept: it holds what was read).

    The chain's writer lock is held throughout: a second backup waits, then takes the
    point this one made as its parent (it used to branch off the same parent).
    """
    with chain.locked():
        return _backup(chain, source, parent=parent, full=full, changed=changed, only=only,
                       block_size=block_size, created_ns=created_ns, label=label,
                       compress=compress, progress=progress)


def _backup(chain: Chain, source: Disk, *, parent: PointRef | None, full: bool | None,
            changed: BlockMap | None, only: BlockMap | None, block_size: int | None,
            created_ns: int | None, label: str, compress: bool, progress: bool) -> int:
    if full is None:
        full = len(chain) == 0
    if not full and len(chain) == 0:
        raise UsageError(f"{chain.directory}: an incremental needs a parent; the chain is empty")
    bs = check_block_size(block_size or (chain.block_size if len(chain) else source.block_size))
    check_disk_size(source, bs)
    parent_index = None if full else chain.point(-1 if parent is None else parent)
    header = chain.new_header(parent=parent_index, volume_size=source.size, block_size=bs,
                              created_ns=created_ns, label=label)
    n_blocks = header.n_blocks
    for name, bmap in (("changed", changed), ("only", only)):
        if bmap is not None and bmap.n_blocks != n_blocks:
            raise UsageError(f"the {name} map has {bmap.n_blocks} blocks; "
                             f"the source has {n_blocks} of {bs} bytes")
    parent_layout = None
    if changed is not None:  # trusted: read exactly the changed blocks
        todo = changed.copy()
    else:  # the source's data; for an incremental, also where the parent has data
        todo = _fit(source.present(), n_blocks, bs)
        if parent_index is not None:
            parent_layout = chain.layout(parent_index)
            todo |= _fit(parent_layout.present(), n_blocks, bs)
    if only is not None:
        todo &= only
    if (full or changed is not None) and not compress:  # at most every block read, stored
        check_fits(chain.directory, chain.directory, todo.count() * (bs + INDEX_RECORD_SIZE))
    reader = source if source.block_size == bs else _Reblocked(source, bs)
    hashed = sources.acquisition(source)
    if hashed is not None:  # hashed in order as it is read, what is not read after
        hashed.start_hashing()
    with chain.writer(header, compress=compress) as writer, \
            progress_bar(todo.count() * bs, "backup", progress) as bar:
        codec = writer.codec
        assert codec is not None  # a writer made from a header has a codec
        behind = 1 if codec.encrypted or compress else WRITE_BEHIND
        writer.write_behind(behind)  # read_ahead's buffers outlive that many adds
        zero = codec.zero_digest()
        for positions, blocks in read_ahead(reader, todo, _chunk_blocks(bs), behind):
            if full:
                take = nonzero_rows(blocks)
            elif parent_layout is not None:
                digests = codec.content_digests(blocks)
                take = (digests != parent_layout.digests_at(positions, zero)).any(axis=1)
            else:
                take = np.ones(len(positions), dtype=bool)
            rows = np.flatnonzero(take)
            writer.add(positions[rows], _to_front(blocks, rows))
            bar.update(len(positions) * bs)
        point = chain.append(writer.commit())
    if hashed is None:
        sources.forget(chain.directory, chain.images[point].name)
        return point
    check = sources.SourceCheck(os.path.abspath(hashed.path), hashed.hashes,
                                hashed.finish_hashing())
    check.record(chain.directory, chain.images[point].name)
    if not check.ok:
        warnings.warn(check.report(), sources.AcquisitionHashMismatch, stacklevel=3)
    return point


@overload
def restore(chain: Chain, point: PointRef, out: None = None, *,
            progress: bool = False) -> Volume: ...
@overload
def restore(chain: Chain, point: PointRef, out: str | os.PathLike[str], *,
            progress: bool = False) -> Path: ...
def restore(chain: Chain, point: PointRef, out: str | os.PathLike[str] | None = None, *,
            progress: bool = False, check: bool = True) -> Path | Volume:
    """Write ``point`` to the raw file ``out`` (exact size, sparse), or return it as a Volume.

    Every block is checked against its stored digest or tag as it is read (IntegrityError
    names the first that fails; nothing is left under ``out``); ``check=False`` skips the
    digests, only to measure what they cost."""
    disk = chain.disk(point, check=check)
    if out is None:
        volume = Volume.zeros(disk.size, disk.block_size)
        for start, blocks in iter_chunks(disk):
            volume.write_blocks(start, blocks)
        return volume
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a directory")
    check_fits(out, out.parent, disk.size)
    with atomic_writer(out) as fh, progress_bar(disk.size, "restore", progress) as bar:
        set_size(fh.fileno(), disk.size)  # sparse: absent blocks stay holes
        with PlacedWriter(fh.fileno(), disk.size,
                          written=writeback_progress(fh.fileno(), bar.update)) as placed:
            disk.write_to(placed)
    return out


def iter_chunks(disk: Disk) -> Iterator[tuple[int, np.ndarray]]:
    """``(start block, blocks)`` for each chunk of ``CHUNK_BYTES`` of a Disk."""
    step = _chunk_blocks(disk.block_size)
    for start in range(0, disk.n_blocks, step):
        yield start, disk.read_blocks(start, min(step, disk.n_blocks - start))

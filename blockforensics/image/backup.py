"""Backup and restore: moving blocks between a Disk and a chain, streamed in chunks.

Backup reads the source ``CHUNK_BYTES`` at a time.  A full image stores every
non-zero block (or only those of an ``only`` map, e.g. the allocated ones); an
incremental stores the blocks that differ from its parent point — found by
comparing per-block content digests with the parent's index records, or given
by a changed-block map (CBT), in which case unchanged chunks are not even read.
Restore writes a point back, chunk by chunk, seeking over absent chunks so the
output stays sparse.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import overload

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.disk import Disk
from blockforensics.errors import UsageError
from blockforensics.fileio import atomic_writer, writeback_progress
from blockforensics.formats.placement import PlacedWriter
from blockforensics.image.chain import Chain, PointRef
from blockforensics.image.codec import nonzero_rows
from blockforensics.progress import progress_bar
from blockforensics.volume import Volume, check_block_size

CHUNK_BYTES = 16 << 20


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
    """
    if full is None:
        full = len(chain) == 0
    if not full and len(chain) == 0:
        raise UsageError(f"{chain.directory}: an incremental needs a parent; the chain is empty")
    bs = check_block_size(block_size or (chain.block_size if len(chain) else source.block_size))
    parent_index = None if full else chain.point(-1 if parent is None else parent)
    header = chain.new_header(parent=parent_index, volume_size=source.size, block_size=bs,
                              created_ns=created_ns, label=label)
    n_blocks = header.n_blocks
    for name, bmap in (("changed", changed), ("only", only)):
        if bmap is not None and bmap.n_blocks != n_blocks:
            raise UsageError(f"the {name} map has {bmap.n_blocks} blocks; "
                             f"the source has {n_blocks} of {bs} bytes")
    wanted = only.to_bools() if only is not None else None
    codec = chain.codec if len(chain) else None
    parent_digests = None
    if parent_index is not None and changed is None:
        assert codec is not None
        parent_digests = chain.layout(parent_index).content_digests(codec.zero_digest(),
                                                                    n_blocks)
    changed_flags = changed.to_bools() if changed is not None else None

    step = _chunk_blocks(bs)
    with chain.locked(), chain.writer(header, compress=compress) as writer, \
            progress_bar(source.size, "backup", progress) as bar:
        codec = writer.codec
        assert codec is not None  # a writer made from a header has a codec
        for start in range(0, n_blocks, step):
            count = min(step, n_blocks - start)
            take = np.ones(count, dtype=bool) if wanted is None \
                else wanted[start : start + count].copy()
            if changed_flags is not None:
                take &= changed_flags[start : start + count]
            if take.any():
                blocks = read_source(source, start, count, bs)
                if full:
                    take &= nonzero_rows(blocks)
                elif parent_digests is not None:
                    rows = np.flatnonzero(take)
                    digests = codec.content_digests(blocks[rows])
                    take[rows] = (digests != parent_digests[start + rows]).any(axis=1)
                rows = np.flatnonzero(take)
                writer.add(start + rows, blocks if len(rows) == count else blocks[rows])
            bar.update(min(count * bs, source.size - start * bs))
        path = writer.commit()
        return chain.append(path)


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
    with atomic_writer(out) as fh, progress_bar(disk.size, "restore", progress) as bar:
        os.ftruncate(fh.fileno(), disk.size)  # sparse: absent blocks stay holes
        with PlacedWriter(fh.fileno(), disk.size,
                          written=writeback_progress(fh.fileno(), bar.update)) as placed:
            disk.write_to(placed)
    return out


def iter_chunks(disk: Disk) -> Iterator[tuple[int, np.ndarray]]:
    """``(start block, blocks)`` for each chunk of ``CHUNK_BYTES`` of a Disk."""
    step = _chunk_blocks(disk.block_size)
    for start in range(0, disk.n_blocks, step):
        yield start, disk.read_blocks(start, min(step, disk.n_blocks - start))

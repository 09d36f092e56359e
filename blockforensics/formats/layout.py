"""A virtual-disk file (VHD, VHDX, VMDK, qcow2, raw) as metadata plus placed disk data.

Every sparse image format is the same thing underneath: some metadata (headers,
allocation tables, bitmaps) at fixed file offsets, and the disk's bytes cut into
pieces of one *grain* (a VHD block, a qcow2 cluster, a VMDK grain) that are
placed, unbroken, at file offsets the tables name.  A format's layout class
computes both from a :class:`Disk` without reading its data — ``metadata()``
and ``placement()`` — and this module does the rest for all of them:

- :func:`write_layout` writes the metadata and has the disk write its data into
  the placement (``Disk.write_to`` and :class:`PlacedWriter`: file to file where
  the reader can), atomically;
- :meth:`FileLayout.readinto` synthesises any byte range of the file on demand,
  which is what the FUSE mount serves; a test checks it against the written file.

Units: bytes throughout.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from blockforensics.errors import UsageError
from blockforensics.fileio import (
    atomic_writer,
    check_fits,
    readable_by_all,
    set_size,
    writeback_progress,
)
from blockforensics.formats.base import Disk, InPlaceDisk
from blockforensics.formats.placement import Packing, PlacedWriter, Placement
from blockforensics.progress import progress_bar

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from blockforensics.blockmap import BlockMap

SECTOR = 512


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def touched(present: BlockMap, grain: int, n_pieces: int) -> BlockMap:
    """The ``grain``-byte pieces (of ``n_pieces``) that any block of ``present``
    overlaps, as a map of pieces (packed: one bit per piece)."""
    import numpy as np

    from blockforensics.blockmap import BlockMap

    starts, lengths = present.run_arrays()
    first = starts * present.block_size // grain
    stop = np.minimum(-(-(starts + lengths) * present.block_size // grain), n_pieces)
    return BlockMap.from_run_arrays(n_pieces, first, np.maximum(stop - first, 0))


def packed(grain: int, allocated: Sequence[int] | np.ndarray, first: int,
           stride: int | None = None) -> Placement:
    """The placement of sparse formats: the ``grain``-byte pieces ``allocated`` (sorted)
    one after another in the file, the first at byte ``first``, ``stride`` bytes apart
    (default ``grain``); every other piece has no place."""
    import numpy as np

    allocated = np.asarray(allocated, dtype=np.int64)
    return Placement(grain, allocated,
                     first + np.arange(allocated.size, dtype=np.int64) * (stride or grain))


def disk_into(disk: Disk, offset: int, dst: np.ndarray) -> None:
    """Disk bytes from ``offset`` into the uint8 array ``dst``; zeros past the disk's end."""
    n = max(0, min(dst.size, disk.size - offset))
    bs = disk.block_size
    if n and offset % bs == 0 and n % bs == 0 and isinstance(disk, InPlaceDisk):
        disk.read_blocks_into(offset // bs, dst[:n].reshape(-1, bs))  # no copy
    elif n:
        first, last = offset // bs, (offset + n - 1) // bs
        skip = offset - first * bs
        dst[:n] = disk.read_blocks(first, last - first + 1).reshape(-1)[skip:skip + n]
    dst[n:] = 0


class FileLayout(ABC):
    """The byte layout of an image file of ``disk``; subclasses compute ``file_size``,
    :meth:`metadata` and :meth:`placement` in their constructor or lazily.

    ``size`` is the disk's size rounded up to a whole sector (the formats count
    sectors); bytes past the disk's end read as zeros.  ``present`` is the disk's
    map of blocks that may hold data (the others are left as holes), made when first
    used (a dynamic VHD written in disk order does without it).
    """

    disk: Disk
    size: int
    file_size: int

    def __init__(self, disk: Disk, max_size: int | None = None, name: str = "image"):
        self.disk = disk
        self.size = round_up(disk.size, SECTOR)
        if max_size is not None and self.size > max_size:
            raise UsageError(f"disk of {disk.size} bytes exceeds the {name} maximum of "
                             f"{max_size} bytes")

    @cached_property
    def present(self) -> BlockMap:
        return self.disk.present()

    @abstractmethod
    def metadata(self) -> Iterator[tuple[int, bytes | bytearray]]:
        """``(file offset, bytes)`` of everything but the disk's data, not overlapping."""

    @abstractmethod
    def placement(self) -> Placement:
        """Where the disk's bytes go in the file."""

    def packing(self) -> Packing | None:
        """For a format whose pieces follow one another in disk order: a :class:`Packing`
        that places each piece as its first bytes are written, so that a writer leaving
        out all-zero data leaves out all-zero pieces too (then :meth:`allocate` the
        pieces placed).  None (the default): the placement is fixed."""
        return None

    def allocate(self, pieces: Sequence[int] | np.ndarray) -> None:
        """Hold only ``pieces`` (sorted), the pieces a :meth:`packing` placed."""
        raise NotImplementedError(f"{type(self).__name__} places its pieces up front")

    # ---------------------------------------------------------------- reading
    @cached_property
    def _extents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[bytes | bytearray]]:
        """Sorted ``(file starts, lengths, source, metadata)``: ``source[i] >= 0`` is the
        disk offset of a data extent, ``-1 - j`` names ``metadata[j]``."""
        import numpy as np

        meta = list(self.metadata())
        placement = self.placement()
        disk_starts = np.asarray(placement.pieces, dtype=np.int64) * placement.grain
        starts = np.concatenate([np.asarray(placement.bases, dtype=np.int64),
                                 np.array([o for o, _ in meta], dtype=np.int64)])
        lengths = np.concatenate([np.minimum(placement.grain, self.size - disk_starts),
                                  np.array([len(b) for _, b in meta], dtype=np.int64)])
        source = np.concatenate([disk_starts, -1 - np.arange(len(meta), dtype=np.int64)])
        keep = lengths > 0
        order = np.argsort(starts[keep], kind="stable")
        return (starts[keep][order], lengths[keep][order], source[keep][order],
                [b for _, b in meta])

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the file from byte ``offset`` (short at the end)."""
        buf = bytearray(max(0, min(length, self.file_size - offset)))
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def readinto(self, offset: int, out: memoryview) -> int:
        """Fill ``out`` with the file's bytes from ``offset``; returns bytes filled."""
        import numpy as np

        n = max(0, min(len(out), self.file_size - offset))
        dst = np.frombuffer(out, dtype=np.uint8, count=n)
        starts, lengths, source, meta = self._extents
        end = offset + n
        i = max(0, int(np.searchsorted(starts, offset, side="right")) - 1)
        pos = offset
        while pos < end:
            if i >= starts.size or pos < starts[i]:  # a hole up to the next extent
                stop = end if i >= starts.size else min(end, int(starts[i]))
                dst[pos - offset:stop - offset] = 0
                pos = stop
                continue
            ext_start, ext_end = int(starts[i]), int(starts[i] + lengths[i])
            if pos >= ext_end:
                i += 1
                continue
            stop = min(end, ext_end)
            at, src = pos - ext_start, int(source[i])
            if src >= 0:
                disk_into(self.disk, src + at, dst[pos - offset:stop - offset])
            else:
                dst[pos - offset:stop - offset] = np.frombuffer(meta[-1 - src], np.uint8,
                                                                stop - pos, at)
            pos = stop
            i += 1
        return n

    def zero_runs(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(file offsets, lengths)`` in bytes, ascending, of the runs of bytes
        ``offset .. offset+length`` (clipped to the file) that read as zeros whatever
        the disk holds: outside every extent, and in data extents where the disk's
        blocks are not ``present`` or past its end.  What an NBD server sends as holes."""
        import numpy as np

        end = min(offset + length, self.file_size)
        starts, lengths, source, _ = self._extents
        bs = self.disk.block_size
        data: list[tuple[np.ndarray, np.ndarray]] = []
        i = max(0, int(np.searchsorted(starts, offset, side="right")) - 1)
        while i < starts.size and starts[i] < end:
            s, e = max(offset, int(starts[i])), min(end, int(starts[i] + lengths[i]))
            src = int(source[i])
            if s < e and src < 0:  # metadata
                data.append((np.array([s]), np.array([e])))
            elif s < e:
                first, stop = src + s - int(starts[i]), min(src + e - int(starts[i]),
                                                            self.disk.size)
                if first < stop:
                    b0 = first // bs
                    flags = self.present.contains(np.arange(b0, -(-stop // bs)))
                    edges = np.flatnonzero(np.diff(np.r_[False, flags, False]))
                    shift = s - first  # file byte = disk byte + shift
                    data.append((np.maximum((b0 + edges[0::2]) * bs, first) + shift,
                                 np.minimum((b0 + edges[1::2]) * bs, stop) + shift))
            i += 1
        data_starts = np.concatenate([np.zeros(0, np.int64), *(a for a, _ in data)])
        data_ends = np.concatenate([np.zeros(0, np.int64), *(b for _, b in data)])
        hole_starts = np.r_[offset, data_ends].astype(np.int64)
        hole_ends = np.r_[data_starts, max(end, offset)].astype(np.int64)
        keep = hole_ends > hole_starts
        return hole_starts[keep], (hole_ends - hole_starts)[keep]


def write_layout(layout: FileLayout, path: str | os.PathLike[str], *,
                 progress: bool = False) -> Path:
    """Write ``layout``'s file at ``path`` (atomically: temp file, fsync, rename).

    The data is written by ``disk.write_to`` into the layout's placement: only present
    blocks are read, file to file where the reader can, and all-zero blocks copied
    from a file are left out, as is the rest of the file: holes (zeros).  A disk that
    writes in disk order has a packed format's pieces placed as they are written
    (:meth:`FileLayout.packing`: all-zero pieces are not allocated).  Then the
    metadata is written from the layout.
    """
    disk = layout.disk
    path = Path(path)
    data_bytes = min(layout.present.count() * disk.block_size, disk.size) if progress else 0
    packing = layout.packing() if disk.in_order else None
    if packing is None:  # the size is known before writing (raw, fixed VHD …)
        check_fits(path, path.parent, layout.file_size)
    with atomic_writer(path) as fh, progress_bar(data_bytes, path.name, progress) as bar:
        fd = fh.fileno()
        if packing is None:  # sized first: no write starts past the end (fusefat misplaces
            set_size(fd, layout.file_size)  # such writes); holes stay holes
        with PlacedWriter(fd, disk.size, packing or layout.placement(),
                          writeback_progress(fd, bar.update), holes=disk.block_size) as out:
            disk.write_to(out)
        if packing is not None:
            layout.allocate(packing.placed().pieces)
        set_size(fd, layout.file_size)
        metadata = list(layout.metadata())
        for offset, data in metadata:  # pages written back and dropped: read in parallel,
            os.posix_fadvise(fd, offset, len(data), os.POSIX_FADV_WILLNEED)  # not 1 by 1
        for offset, data in metadata:
            os.pwrite(fd, data, offset)
        readable_by_all(fd)
    return path


def widen(covers: BlockMap, grain: int) -> BlockMap:
    """The blocks sharing a ``grain``-byte piece with any block of ``covers`` (what a
    format that allocates whole pieces must write to hold ``covers``), run by run."""
    import numpy as np

    from blockforensics.blockmap import BlockMap

    bs, n = covers.block_size, covers.n_blocks
    starts, lengths = touched(covers, grain, -(-n * bs // grain)).run_arrays()
    first = starts * grain // bs
    stop = np.minimum(-(-(starts + lengths) * grain // bs), n)
    return BlockMap.from_run_arrays(n, first, stop - first, bs)


class Layer(Disk):
    """``disk`` restricted to the blocks of ``covers`` (one image of a chain): those read
    as on ``disk``, every other block as zeros."""

    def __init__(self, disk: Disk, covers: BlockMap):
        if (covers.n_blocks, covers.block_size) != (disk.n_blocks, disk.block_size):
            raise ValueError("the layer's map does not match the disk's blocks")
        self.disk, self.covers = disk, covers
        self.size, self.block_size = disk.size, disk.block_size

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        import numpy as np

        blocks = self.disk.read_blocks(start, count)
        blocks[~self.covers.contains(np.arange(start, start + count))] = 0
        return blocks

    def present(self) -> BlockMap:
        return self.disk.present() & self.covers

    def __repr__(self) -> str:
        return f"Layer({self.covers.count()} blocks of {self.disk!r})"

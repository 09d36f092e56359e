"""Writing a disk's bytes into a file at chosen places: as they are (restore, fixed
VHD) or scattered into the 2 MiB blocks of a dynamic VHD.

A :class:`Placement` maps disk byte offsets to file byte offsets piecewise: the
disk is cut into ``grain``-byte pieces and piece ``i`` goes, unbroken, to file
byte ``bases[i]``.  A :class:`PlacedWriter` fills a file through a placement:
it takes runs of disk bytes, cuts them at piece boundaries (vectorised) and
writes every part from its source — another file (a raw image) or a buffer of
decoded blocks — or runs jobs that write into the file themselves (a chain image's
verbatim payloads, checked as they are copied: :mod:`blockforensics.image.storedcopy`).
``Disk.write_to`` feeds it for every reader, so restores and exports share one writer.
Into a new file it can leave out the all-zero blocks of what it copies (they read as
zeros: holes), and a :class:`Packing` gives a sparse format's pieces their places as they
are written, so that all-zero pieces take no room at all.

Copying runs from a file (:meth:`PlacedWriter.copy`: a raw image to a VHD) needs no
numpy: its runs are few and long, walked a buffer at a time with scalar placements
(:meth:`Placement.place`); numpy is imported by the vectorised paths (:meth:`PlacedWriter.put`,
:meth:`Placement.__call__`), for the many short runs of decoded blocks.

Units: every offset and length here is bytes.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from blockforensics import batch
from blockforensics.disk import nonzero_rows

if TYPE_CHECKING:
    import numpy as np

#: bytes per write into an output file, at most (and per unit of a chain's stored-block
#: copy).  Larger writes at 2 MiB-aligned offsets get 2 MiB page-cache folios; on a virtual
#: machine whose host takes back free memory (virtio-balloon free page reporting) those
#: cost ~1 s a GiB whenever the host must fault them in again: 2 MiB writes exported a
#: 1 GiB image in 0.21 s or in 0.9-1.0 s, half the runs each (``qemu-img convert``, which
#: writes 2 MiB, likewise: 0.23 s or 1.1 s), 1 MiB writes in 0.23-0.24 s every time
COPY_BUFFER = 1024 * 1024
#: bytes per read of a file-to-file copy (:meth:`PlacedWriter.copy`), written
#: ``COPY_BUFFER`` at a time: a quarter of the Python round trips of 1 MiB reads (a
#: 1 GiB image to a fixed VHD: 198 ms against 233, medians; 8 MiB no faster)
READ_BUFFER = 4 * COPY_BUFFER
#: buffers of a file-to-file copy: one being read, the others queued or being written
COPY_BUFFERS = 4
#: buffers or jobs waiting for the writer thread, at most (bounds the memory held)
QUEUED_WRITES = 8
#: a grain no disk reaches: the identity placement keeps every run whole
WHOLE = 1 << 62

#: called after each write with ``(file offset, nbytes)``: progress, writeback
Written = Callable[[int, int], object]
#: the writes of one buffer: ``(buffer, file targets, buffer offsets, lengths, done)``, the
#: three lists in bytes; ``done()`` once all are written (or given up)
Writes = tuple[memoryview, list[int], list[int], list[int], Callable[[], object]]
#: a job of the writer thread: ``job(fd)`` starts writing into the file itself and returns
#: ``finish``; ``finish()`` waits for it and returns the ``(file offset, nbytes)`` ranges it
#: wrote.  The writer starts the next job before it finishes one, so that the ``written``
#: calls of one overlap the writes of the next.
Job = Callable[[int], Callable[[], Iterable[tuple[int, int]]]]


def ignore_written(offset: int, nbytes: int) -> None:
    """The default ``written`` callback."""


def split_at(starts: np.ndarray, lengths: np.ndarray, grain: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut byte runs at multiples of ``grain``: ``(starts, lengths, run)`` of the parts,
    ``run`` being the index of the run each part came from (runs must be non-empty)."""
    import numpy as np

    starts = np.asarray(starts, dtype=np.int64)
    stops = starts + np.asarray(lengths, dtype=np.int64)
    first, last = starts // grain, (stops - 1) // grain
    parts = last - first + 1
    run = np.repeat(np.arange(starts.size), parts)
    piece = first[run] + np.arange(run.size) - np.repeat(np.cumsum(parts) - parts, parts)
    part_starts = np.maximum(starts[run], piece * grain)
    part_stops = np.minimum(stops[run], (piece + 1) * grain)
    return part_starts, part_stops - part_starts, run


@dataclass(frozen=True)
class Placement:
    """Disk byte ``d`` of piece ``pieces[i] == d // grain`` goes to file byte
    ``bases[i] + d % grain``; pieces not listed have no place.  Only placed pieces are
    held, so a sparse file of a huge disk costs memory for its data, not its size."""

    grain: int  # bytes per piece of the disk that stays unbroken in the file
    pieces: np.ndarray | array[int]  # int64, ascending: the pieces that have a place
    bases: np.ndarray | array[int]  # int64: the file offset of each of those pieces

    @classmethod
    def identity(cls) -> Placement:
        """Every disk byte at its own offset (a raw restore, a fixed VHD)."""
        return cls(WHOLE, array("q", [0]), array("q", [0]))

    def __call__(self, disk_offsets: np.ndarray) -> np.ndarray:
        """File offsets of disk byte offsets (int64 arrays); -1 where there is no place."""
        import numpy as np

        pieces, bases = np.asarray(self.pieces), np.asarray(self.bases)
        piece = disk_offsets // self.grain
        at = np.minimum(np.searchsorted(pieces, piece), max(len(pieces) - 1, 0))
        if not len(pieces):
            return np.full(len(piece), -1, dtype=np.int64)
        placed = pieces[at] == piece
        return np.where(placed, bases[at] + disk_offsets % self.grain, -1)

    def place(self, disk_offset: int) -> int:
        """The file offset of one disk byte offset; -1 if it has no place."""
        piece = disk_offset // self.grain
        at = bisect_right(self.pieces, piece) - 1
        if at < 0 or self.pieces[at] != piece:
            return -1
        return int(self.bases[at]) + disk_offset % self.grain


class Packing:
    """A placement made while writing: pieces get the file offsets ``first``, ``first +
    stride``, ... in the order their first bytes are placed, which must be ascending
    (a disk written front to back); a piece never written (all zero, left out) gets
    none.  :meth:`placed` is the placement made so far."""

    def __init__(self, grain: int, first: int, stride: int):
        self.grain = grain  # bytes per piece
        self.first, self.stride = first, stride  # bytes
        self._pieces = array("q")  # the pieces placed, ascending

    def __call__(self, disk_offsets: np.ndarray) -> np.ndarray:
        """File offsets of disk byte offsets; pieces past the last placed one are placed
        now; -1 for an earlier piece that has no place (written out of order)."""
        import numpy as np

        piece = disk_offsets // self.grain
        last = self._pieces[-1] if self._pieces else -1
        later = piece[piece > last]
        if later.size:  # sorted, so that unique needs no np.unique (which imports numpy.ma)
            later = np.sort(later)
            self._pieces.extend(later[np.r_[True, later[1:] != later[:-1]]].tolist())
        if not self._pieces:
            return np.full(piece.size, -1, dtype=np.int64)
        pieces = np.frombuffer(self._pieces, dtype=np.int64)  # a view: no copy
        at = np.minimum(np.searchsorted(pieces, piece), pieces.size - 1)
        placed = pieces[at] == piece
        return np.where(placed, self.first + at * self.stride + disk_offsets % self.grain, -1)

    def place(self, disk_offset: int) -> int:
        """The file offset of one disk byte offset, its piece placed now if it lies past
        the last placed one; -1 for an earlier piece that has no place."""
        piece = disk_offset // self.grain
        if not self._pieces or piece > self._pieces[-1]:
            self._pieces.append(piece)
        at = bisect_right(self._pieces, piece) - 1
        if self._pieces[at] != piece:
            return -1
        return self.first + at * self.stride + disk_offset % self.grain

    def placed(self) -> Placement:
        """The pieces placed so far and their file offsets."""
        n = len(self._pieces)
        return Placement(self.grain, array("q", self._pieces),
                         array("q", range(self.first, self.first + n * self.stride, self.stride)))


def _nothing() -> None:
    """The ``done`` callback of every part but a buffer's last."""


def _ints(values: Sequence[int] | np.ndarray) -> list[int]:
    """Python ints of a list or an int array."""
    return list(values) if isinstance(values, Sequence) else values.tolist()


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """Write ``data`` at byte ``offset`` of ``fd``, ``COPY_BUFFER`` bytes a call at most."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done : done + COPY_BUFFER], offset + done)


def data_runs(data: memoryview, block: int) -> tuple[list[int], list[int]]:
    """``(offsets, lengths)`` in bytes of the runs of ``data`` that are not all-zero
    ``block``-byte blocks (a partial last block is kept): in C without the GIL where the
    extension is built, else with numpy."""
    if batch.native is not None:
        bounds = array("q", bytes(16 * (len(data) // block + 1)))
        found = batch.native.nonzero_runs(data, block, bounds)
        starts, stops = bounds[0 : 2 * found : 2], bounds[1 : 2 * found : 2]
        return starts.tolist(), [b - a for a, b in zip(starts, stops)]
    import numpy as np

    rows = len(data) // block
    nonzero = nonzero_rows(np.frombuffer(data, np.uint8, rows * block).reshape(rows, block))
    edges = np.flatnonzero(np.diff(np.r_[False, nonzero, len(data) > rows * block, False]
                                   .astype(np.int8)))
    offsets = edges[::2] * block
    stops = np.minimum(edges[1::2] * block, len(data))
    return offsets.tolist(), (stops - offsets).tolist()


class PlacedWriter:
    """Fills the file ``fd`` with a disk's bytes where ``placement`` puts them; bytes
    from ``limit`` on (the disk's end) are left out.  With ``holes`` (bytes, a block
    size; only for a new file, whose unwritten bytes read as zeros), the all-zero
    ``holes``-byte blocks of what :meth:`copy` reads are left out too, as qemu-img
    leaves them.

    Writes, and the jobs of :meth:`run`, run in a thread of their own, so that reading
    or decoding the next part overlaps writing this one (a quarter faster on two cores).
    Use as a context manager: leaving it waits for every write and job, and raises the
    first that failed (a failed job stops all further writes).
    ``written(offset, nbytes)`` is called, in the writer thread, after each write (after
    each job, for each range it wrote).
    """

    def __init__(self, fd: int, limit: int, placement: Placement | Packing | None = None,
                 written: Written = ignore_written, holes: int = 0):
        self.fd = fd
        self.limit = limit
        self.placement = placement or Placement.identity()
        self.holes = holes
        self.written = written
        self._jobs: queue.Queue[Writes | Job | None] = queue.Queue(QUEUED_WRITES)
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._run, name="placed-writer", daemon=True)
        self._writer.start()

    def __enter__(self) -> PlacedWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc  # stop writing: the caller failed
        self._jobs.put(None)
        self._writer.join()
        if exc is None and self._error is not None:
            raise self._error

    def copy(self, source_fd: int, disk_starts: Sequence[int] | np.ndarray,
             source_offsets: Sequence[int] | np.ndarray,
             lengths: Sequence[int] | np.ndarray) -> None:
        """Runs of disk bytes (in ascending order) that lie, as they are, at
        ``source_offsets`` of a file, read ``READ_BUFFER`` bytes at a time, never across a
        piece boundary, and each buffer placed by its first byte written; with ``holes``,
        their all-zero blocks are left out (a :class:`Packing` then places only the
        pieces something is written to)."""
        runs = [(disk, at, min(n, self.limit - disk)) for disk, at, n in
                zip(_ints(disk_starts), _ints(source_offsets), _ints(lengths))]
        runs = [run for run in runs if run[2] > 0]
        if not runs:
            return
        free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(COPY_BUFFERS):
            free.put(memoryview(bytearray(min(READ_BUFFER, max(n for *_, n in runs)))))
        grain = self.placement.grain
        for disk, at, n in runs:
            while n > 0:
                buffer = free.get()
                want = min(n, len(buffer), grain - disk % grain)
                got = os.preadv(source_fd, [buffer[:want]], at)
                if got <= 0:
                    raise OSError(f"unexpected end of the source file at byte {at}")
                offsets, counts = self._data(buffer[:got])
                if self._error is not None:
                    raise self._error
                if offsets:
                    place = self.placement.place(disk + offsets[0])
                    if place < 0:
                        raise ValueError("disk bytes outside the placement's pieces")
                    target = place - offsets[0]
                    self._jobs.put((buffer, [target + o for o in offsets], offsets, counts,
                                    functools.partial(free.put, buffer)))
                else:
                    free.put(buffer)
                at, disk, n = at + got, disk + got, n - got

    def _data(self, data: memoryview) -> tuple[list[int], list[int]]:
        """``(offsets, lengths)`` of the runs of ``data`` to write: all of it, or without
        its all-zero ``holes``-byte blocks (a partial last block is kept)."""
        if not self.holes:
            return [0], [len(data)]
        return data_runs(data, self.holes)

    def put(self, buffer: memoryview, disk_starts: np.ndarray, buffer_offsets: np.ndarray,
            lengths: np.ndarray, done: Callable[[], object] = _nothing) -> None:
        """Runs of disk bytes held at ``buffer_offsets`` of ``buffer`` (bytes, not to be
        changed by the caller until ``done()`` is called, once all of them are written)."""
        targets, offsets, sizes = self.parts(disk_starts, buffer_offsets, lengths)
        if self._error is not None:
            raise self._error
        self._jobs.put((buffer, targets.tolist(), offsets.tolist(), sizes.tolist(), done))

    def run(self, job: Job) -> None:
        """Have the writer thread start ``job(fd)`` (see :data:`Job`) after the writes handed
        over before it (the job writes into the file itself, its parts placed by
        :meth:`parts`); if it fails, nothing is written after it but by a job already
        started, and the error is raised here or on leaving."""
        if self._error is not None:
            raise self._error
        self._jobs.put(job)

    def parts(self, disk_starts: np.ndarray, source_offsets: np.ndarray, lengths: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(file targets, source offsets, lengths)`` of runs of disk bytes (at
        ``source_offsets`` of their source) cut at piece boundaries and at the limit, in
        the order of the runs; a :class:`Packing` places the pieces they reach."""
        import numpy as np

        cut = self._cut(disk_starts, source_offsets, lengths)
        if cut is None:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return self._targets(cut[0]), cut[1], cut[2]

    def _cut(self, disk_starts: np.ndarray, source_offsets: np.ndarray, lengths: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(disk starts, source offsets, lengths)`` of the runs cut at piece boundaries
        and at the limit; None when nothing is left."""
        import numpy as np

        disk_starts = np.asarray(disk_starts, dtype=np.int64)
        lengths = np.minimum(np.asarray(lengths, dtype=np.int64), self.limit - disk_starts)
        keep = lengths > 0
        if not keep.any():
            return None
        disk_starts, lengths = disk_starts[keep], lengths[keep]
        starts, part_lengths, run = split_at(disk_starts, lengths, self.placement.grain)
        sources = np.asarray(source_offsets, dtype=np.int64)[keep][run] + starts - disk_starts[run]
        return starts, sources, part_lengths

    def _targets(self, disk_starts: np.ndarray) -> np.ndarray:
        """File offsets of disk byte offsets; ValueError if any has no place."""
        targets = self.placement(disk_starts)
        if targets.min() < 0:
            raise ValueError("disk bytes outside the placement's pieces")
        return targets

    def _run(self) -> None:
        """The writer thread: write each queued buffer's parts and run each job, unless a
        write or a job has failed; a job is finished once the next one has started."""
        started: Callable[[], Iterable[tuple[int, int]]] | None = None
        while (job := self._jobs.get()) is not None:
            if not isinstance(job, tuple):
                finish = started
                started = None
                if self._error is None:
                    try:
                        started = job(self.fd)
                    except BaseException as exc:  # handed to the caller's thread
                        self._error = exc
                self._finish(finish)
                continue
            self._finish(started)
            started = None
            data, targets, offsets, lengths, done = job
            if self._error is None:
                try:
                    for target, at, n in zip(targets, offsets, lengths):
                        write_all(self.fd, data[at : at + n], target)
                        self.written(target, n)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc
            done()
        self._finish(started)

    def _finish(self, finish: Callable[[], Iterable[tuple[int, int]]] | None) -> None:
        """Wait for a started job (None: none) and pass the ranges it wrote to
        ``written``; its error, if it failed, becomes the writer's (unless one came first)."""
        if finish is None:
            return
        try:
            ranges = finish()
            if self._error is None:
                for target, n in ranges:
                    self.written(target, n)
        except BaseException as exc:  # handed to the caller's thread
            if self._error is None:
                self._error = exc

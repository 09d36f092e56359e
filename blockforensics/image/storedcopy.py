"""A chain point's verbatim blocks copied from an image into an output file, each checked
against its stored digest before any of its bytes is written: the plain path of
``ChainDisk.write_to`` for every export and restore.

:func:`stored_copies` plans, with numpy, the copy of one image's verbatim blocks through a
:class:`~blockforensics.formats.placement.PlacedWriter`'s placement: units of up to
``COPY_BUFFER`` bytes of stored blocks, the reads that fill each unit and the parts it is
written as, cut into batches of ``BATCH_BYTES``.  A :class:`StoredCopy` (one batch) is a
job of the writer's thread: in C (``_native.copy_checked``: each unit read, checked and
written without the GIL, a call per core on :mod:`.batch`'s threads taking the units in
turn) or, without the extension, a unit at a time in Python.  A batch is copied while the
writer passes the ranges of the one before it to its ``written`` (writeback, progress):
:class:`CopyBuffers` gives consecutive batches different units.

Units: ``block`` and every offset and length are bytes; positions and rows are blocks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from blockforensics import batch
from blockforensics.errors import FormatError, IntegrityError
from blockforensics.formats.placement import COPY_BUFFER, PlacedWriter, write_all
from blockforensics.image.format import FLAG_CRC32, digest_rows
from blockforensics.image.imagefile import ImageFile, stored_mismatch, stored_mismatches
from blockforensics.image.layout import contiguous_runs

#: stored bytes per job of the writer's thread: each is one C call; its written ranges go
#: to the writer's ``written`` (writeback, progress) when it returns
BATCH_BYTES = 16 << 20
#: threads copying a batch at once, at most (one per core below that)
MAX_THREADS = 4


class CopyBuffers:
    """What the batches of one ``write_to`` share: two sets of units, one per thread, each
    ``per_unit(block)`` blocks (a batch copies into one while the batch before it may
    still be finishing with the other), and the flag that stops them all once one fails."""

    def __init__(self, block: int):
        self.sets = [bytearray(threads() * per_unit(block) * block) for _ in range(2)]
        self.stop = np.zeros(1, np.int64)  # set by the C copy that fails
        self._turn = 0

    def take(self) -> bytearray:
        """The set of units for the next batch (not the last batch's)."""
        self._turn ^= 1
        return self.sets[self._turn]


def threads() -> int:
    """Threads copying a batch at once."""
    return min(batch.threads(), MAX_THREADS) if batch.native is not None else 1


def per_unit(block: int) -> int:
    """Stored blocks per unit."""
    return max(1, COPY_BUFFER // block)


@dataclass(frozen=True)
class StoredCopy:
    """One batch of units of verbatim blocks of ``image``: unit ``k`` holds the batch's
    stored blocks ``k * per`` to ``(k + 1) * per`` (``records``), block ``i`` at byte
    ``(i % per) * block`` of the unit; it is filled by ``reads[read_bounds[k] :
    read_bounds[k + 1]]`` (unit offset, file offset, bytes), checked unless ``check`` is
    false, then written as ``writes[write_bounds[k] : write_bounds[k + 1]]`` (output file
    offset, unit offset, bytes)."""

    image: ImageFile
    block: int  # bytes per stored block
    records: np.ndarray  # INDEX_DTYPE: the stored blocks, in unit order
    check: bool  # check each block against its stored digest
    reads: np.ndarray  # (r, 3) int64
    read_bounds: np.ndarray  # int64, units + 1
    writes: np.ndarray  # (w, 3) int64
    write_bounds: np.ndarray  # int64, units + 1
    scratch: bytearray  # the units to read into (one set of CopyBuffers)
    stop: np.ndarray  # int64: set when a copy fails (CopyBuffers.stop)

    def __call__(self, fd: int) -> Callable[[], list[tuple[int, int]]]:
        """Start copying the batch into the file ``fd``, a thread per unit of ``scratch``;
        ``finish()`` waits for it and returns the ``(offset, bytes)`` ranges written, in
        order, or raises IntegrityError naming the image and the first block that failed
        its check, FormatError for a payload past the image's end (no unit is begun after
        either)."""
        units, unit = len(self.read_bounds) - 1, per_unit(self.block) * self.block
        slots = min(threads(), len(self.scratch) // unit, units)
        taken = np.zeros(1, np.int64)  # the next unit, shared by the slots
        checks = self._checks()
        copies = batch.start(lambda slot: self._copy_units(fd, slot.start, taken, checks),
                             [slice(slot, slot + 1) for slot in range(slots)])
        return lambda: self._finish(copies())

    def _finish(self, results: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The ranges written, given each slot's ``(bad, short)``; or the error."""
        bad = min((b for b, _ in results if b >= 0), default=-1)
        if bad >= 0:
            position = int(self.records["position"][bad])
            raise IntegrityError(stored_mismatch(self.image.name, position))
        short = next((s for _, s in results if s >= 0), -1)
        if short >= 0:
            raise FormatError(f"{self.image.name}: truncated payload at byte {short}")
        return self._written()

    def _checks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(digests, crc)`` as ``_native.copy_checked`` takes them: the ``(n, 16)`` stored
        digests (none when not checking), and 1 where a digest is the CRC-32 form."""
        digests = digest_rows(self.records["stored_digest"]) if self.check \
            else np.zeros(0, np.uint8)
        return digests, ((self.records["flags"] & FLAG_CRC32) != 0).view(np.uint8)

    def _copy_units(self, fd: int, slot: int, taken: np.ndarray,
                    checks: tuple[np.ndarray, np.ndarray]) -> tuple[int, int]:
        """Copy units through unit ``slot`` of ``scratch``, taking them in turn with the
        other slots (``taken``, ``checks``: see ``_native.copy_checked``): ``(bad, short)``
        as it returns them.  Without the extension, all of them in Python."""
        per, bs = per_unit(self.block), self.block
        unit = memoryview(self.scratch)[slot * per * bs : (slot + 1) * per * bs]
        if batch.native is not None:
            bad, short = batch.native.copy_checked(
                self.image.fileno(), fd, bs, unit, self.reads, self.read_bounds, *checks,
                self.writes, self.write_bounds, taken, self.stop)
            return bad, short
        source, r, w = self.image.fileno(), self.read_bounds, self.write_bounds
        for k in range(len(r) - 1):
            for at, offset, n in self.reads[r[k] : r[k + 1]].tolist():
                got = os.preadv(source, [unit[at : at + n]], offset)
                if got < n:
                    return -1, offset + got
            held = self.records[k * per : (k + 1) * per]
            if self.check:
                bad = stored_mismatches(unit, np.arange(len(held), dtype=np.int64) * bs, held)
                if bad.size:
                    return k * per + int(bad[0]), -1
            for target, at, n in self.writes[w[k] : w[k + 1]].tolist():
                write_all(fd, unit[at : at + n], target)
        return -1, -1

    def _written(self) -> list[tuple[int, int]]:
        """The batch's writes as ranges of the output file, adjacent ones merged."""
        if not len(self.writes):
            return []
        starts, lengths = self.writes[:, 0], self.writes[:, 2]
        ends = starts + lengths
        firsts = np.r_[0, np.flatnonzero(starts[1:] != ends[:-1]) + 1]
        lasts = np.r_[firsts[1:], len(starts)] - 1
        return list(zip(starts[firsts].tolist(), (ends[lasts] - starts[firsts]).tolist()))


def stored_copies(out: PlacedWriter, image: ImageFile, records: np.ndarray,
                  positions: np.ndarray, block: int, buffers: CopyBuffers, check: bool
                  ) -> Iterator[StoredCopy]:
    """The batches copying the verbatim blocks ``records`` of ``image`` (at the ascending
    block ``positions``) to where ``out``'s placement puts them.  The runs to read, and
    the parts to write and their places, are found for all of them at once."""
    per = per_unit(block)
    # stored block i sits at row i % per of unit i // per; counted with one unused row after
    # each unit ("gapped"), no run found below reaches into the next unit
    gapped = np.arange(len(records), dtype=np.int64)
    gapped += gapped // per
    span = (per + 1) * block  # bytes of a unit and its unused row
    row, position, count = contiguous_runs(gapped, positions, 1)
    targets, sources, lengths = out.parts(position * block, row * block, count * block)
    read_row, read_offset, read_count = contiguous_runs(gapped, records["offset"], block)
    units = -(-len(records) // per)
    each = np.arange(units + 1)
    write_bounds = np.searchsorted(sources // span, each)  # parts of unit k: from [k] to
    read_bounds = np.searchsorted(read_row // (per + 1), each)  # [k + 1]
    writes = np.stack([targets, sources % span, lengths], axis=1)
    reads = np.stack([read_row % (per + 1) * block, read_offset, read_count * block], axis=1)
    step = max(1, BATCH_BYTES // (per * block))  # units per batch
    for first in range(0, units, step):
        last = min(first + step, units)
        r, w = read_bounds[first : last + 1], write_bounds[first : last + 1]
        yield StoredCopy(image, block, records[first * per : last * per], check,
                         reads[r[0] : r[-1]], r - r[0], writes[w[0] : w[-1]], w - w[0],
                         buffers.take(), buffers.stop)

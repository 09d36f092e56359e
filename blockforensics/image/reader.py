"""ChainDisk: one point of a chain read as a Disk, every block checked as it is read."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.disk import InPlaceDisk
from blockforensics.errors import FormatError, IntegrityError
from blockforensics.formats.placement import PlacedWriter
from blockforensics.image.codec import UNAUTHENTIC
from blockforensics.image.format import ENCODING_FLAGS, FLAG_ZERO
from blockforensics.image.imagefile import ImageFile, check_stored
from blockforensics.image.layout import contiguous_runs
from blockforensics.image.storedcopy import CopyBuffers, stored_copies

if TYPE_CHECKING:
    from blockforensics.image.chain import Chain

#: blocks decoded per batch when writing a point to a file: 2 MiB of 4 KiB blocks keeps an
#: encrypted restore under 100 MiB of memory and is as fast as larger batches
DECODE_BATCH = 512
#: blocks of a point handed to a writer per pass: bounds the index rows copied at once
WRITE_WINDOW = 1 << 18


class ChainDisk(InPlaceDisk):
    """One point of a chain read as a Disk, straight from the images (no restore).

    Every block read is checked before it is handed out: stored bytes against their
    stored digest (hashed a read window at a time), encrypted blocks by their
    authentication tag.  A block that fails raises IntegrityError naming the image
    and the block.  ``check=False`` skips the digests (only to measure their cost).
    Reads may run in several threads at once (each into its own buffer, by ``pread``).
    """

    thread_safe = True
    in_order = False  # write_to hands a window's blocks over image by image

    def __init__(self, chain: Chain, point: int, *, check: bool = True):
        self.chain = chain
        self.point = point
        chain.check_point(point)
        self.layout = chain.layout(point)
        self.size = self.layout.size
        self.block_size = self.layout.block_size
        self.check = check
        self._codec = chain.codec

    def present(self) -> BlockMap:
        return self.layout.present()

    def read_blocks_into(self, start: int, out: np.ndarray) -> None:
        count = len(out)
        if start < 0 or start + count > self.n_blocks:
            raise IndexError(f"blocks [{start}, {start + count}) outside [0, {self.n_blocks})")
        filled = np.zeros(count, dtype=bool)
        for depth, rows, records in self.layout.window(start, count):
            filled[self._fill(out, rows, self.layout.images[depth], records)] = True
        out[~filled] = 0  # absent, or stored as a zero block

    def _fill(self, out: np.ndarray, rows: np.ndarray, image: ImageFile,
              records: np.ndarray) -> np.ndarray:
        """Copy the blocks of ``records`` into ``out[rows]`` (verbatim runs in one read
        each, checked in one batch); returns the rows written (the others hold zero
        blocks)."""
        verbatim, decode = self._split(records)
        self._read_verbatim(image, records.compress(verbatim), out, rows[verbatim])
        batch = decode & self._codec.batchable(records)
        if batch.any():
            out[rows[batch]] = self._open_batch(image, records.compress(batch))
        rest = np.flatnonzero(decode & ~batch)
        if len(rest):
            out[rows[rest]] = self._decode_many(image, records.take(rest))
        return rows[verbatim | decode]

    def _decode_many(self, image: ImageFile, records: np.ndarray) -> np.ndarray:
        """The plaintexts of payloads of any length (compressed ones): read a run of
        back-to-back payloads at a time, checked against their digests as a batch, and
        decoded by the codec as a batch; IntegrityError naming the first bad block."""
        lengths = records["length"].astype(np.int64)
        starts = np.zeros(len(records), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        payloads = np.empty(int(lengths.sum()), dtype=np.uint8)
        offsets = records["offset"].astype(np.int64)
        breaks = np.flatnonzero(offsets[1:] != offsets[:-1] + lengths[:-1]) + 1
        firsts, ends = np.r_[0, breaks], np.r_[breaks, len(records)]
        for first, end in zip(firsts.tolist(), ends.tolist()):
            stop = int(starts[end - 1] + lengths[end - 1])
            image.read_into(payloads[int(starts[first]) : stop], int(offsets[first]))
        if self.check:
            check_stored(image.name, payloads, starts, records)
        try:
            return self._codec.decode_many(records, payloads, starts)
        except FormatError as exc:
            raise IntegrityError(f"{image.name}: {exc}") from exc

    def _read_verbatim(self, image: ImageFile, records: np.ndarray, out: np.ndarray,
                       rows: np.ndarray) -> None:
        """Read the stored blocks of verbatim ``records`` into ``out[rows]`` (a read per run
        of consecutive rows and payloads) and check them against their digests."""
        runs = contiguous_runs(rows, records["offset"], self.block_size)
        self._read_checked(image, records, out, rows.astype(np.int64) * self.block_size,
                           *(run.tolist() for run in runs))

    def _read_checked(self, image: ImageFile, records: np.ndarray, out: np.ndarray,
                      starts: np.ndarray, rows: list[int], offsets: list[int],
                      counts: list[int]) -> None:
        """Read ``counts[i]`` stored blocks from byte ``offsets[i]`` of ``image`` into
        ``out[rows[i]:]``, then check the payloads of ``records`` (at byte ``starts`` of
        ``out``) against their digests."""
        for row, offset, count in zip(rows, offsets, counts):
            image.read_into(out[row : row + count], offset)
        if self.check and len(records):
            check_stored(image.name, out.reshape(-1), starts, records)

    def _open_batch(self, image: ImageFile, records: np.ndarray) -> np.ndarray:
        """The plaintexts of batchable ``records``: payloads read run by run, decoded at
        once; IntegrityError naming the first block that fails authentication."""
        length = int(records["length"][0])  # batchable records all have the same length
        payloads = np.empty((len(records), length), dtype=np.uint8)
        for row, offset, count in zip(*contiguous_runs(np.arange(len(records)),
                                                       records["offset"], length)):
            image.read_into(payloads[row : row + count], int(offset))
        plain, ok = self._codec.decode_rows(records, payloads)
        if not ok.all():
            position = int(records["position"][np.argmin(ok)])
            raise IntegrityError(f"{image.name}: block {position}: {UNAUTHENTIC}")
        return plain

    def _split(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks of records whose payload *is* the block, and of those to decode (the rest
        are zero blocks).  In an encrypted chain every record is decoded (and must be)."""
        encoding = records["flags"] & ENCODING_FLAGS
        if self._codec.encrypted:
            return np.zeros(len(records), dtype=bool), np.ones(len(records), dtype=bool)
        return encoding == 0, ((encoding & FLAG_ZERO) == 0) & (encoding != 0)

    def write_to(self, out: PlacedWriter) -> None:
        """Hand this point to ``out`` (see :meth:`Disk.write_to`), ``WRITE_WINDOW`` blocks at
        a time: its verbatim blocks as jobs of ``out``'s writer thread that read, check and
        write them a batch at a time (:mod:`.storedcopy`: nothing is written before its
        check passed), the rest decoded, and so checked, a batch at a time."""
        bs = self.block_size
        buffers = CopyBuffers(bs)
        for first in range(0, self.n_blocks, WRITE_WINDOW):
            for depth, rows, records in self.layout.window(first, WRITE_WINDOW):
                image = self.layout.images[depth]
                positions = first + rows
                verbatim, decode = self._split(records)
                if verbatim.all():  # a plain image's window: no copy of the records
                    stored, at = records, positions
                elif verbatim.any():  # compress: a mask copies records field by field, slowly
                    stored, at = records.compress(verbatim), positions[verbatim]
                if verbatim.any():
                    for job in stored_copies(out, image, stored, at, bs, buffers, self.check):
                        out.run(job)
                todo = positions[decode]
                for start in range(0, len(todo), DECODE_BATCH):
                    piece = todo[start : start + DECODE_BATCH]
                    position, row, count = contiguous_runs(piece, np.arange(len(piece)), 1)
                    out.put(self.read_at(piece).data.cast("B"), position * bs,
                            row * bs, count * bs)

    def __repr__(self) -> str:
        return (f"ChainDisk(point {self.point} of {self.chain.directory}, {self.size} B, "
                f"{self.n_blocks} blocks × {self.block_size} B)")

"""Reading and writing single image files (layout in :mod:`.format`).

:class:`ImageFile` opens a complete image and checks its structure (header
checksum, footer, index digest, index sanity); :class:`ImageWriter` streams
blocks into a new one under a temporary name and renames it only when the
index and footer are written and fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from blockforensics import fileio
from blockforensics.crypto import NONCE_SIZE, TAG_SIZE
from blockforensics.errors import FormatError, IntegrityError
from blockforensics.fileio import Writeback, atomic_writer, fsync
from blockforensics.image.codec import BlockCodec, EncodedBlocks
from blockforensics.image.format import (
    DIGEST_SIZE,
    FLAG_CRC32,
    FLAG_ENCRYPTED,
    FLAG_ZERO,
    FLAG_ZLIB,
    FLAG_ZSTD,
    HEADER_SIZE,
    INDEX_DTYPE,
    KNOWN_FLAGS,
    Footer,
    Header,
    digest_rows,
)
from blockforensics.image.index import ImageIndex
from blockforensics.image.inplace import open_image
from blockforensics.spanhash import sha256_128_spans, stored_checks

if TYPE_CHECKING:
    from concurrent.futures import Future


#: most buffers one ``writev`` call takes
_IOV_MAX = os.sysconf("SC_IOV_MAX")

#: errors of ``copy_file_range`` that mean "not between these files": write instead
_NO_COPY = {errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF}

#: what direct I/O (``O_DIRECT``) needs aligned to it, in bytes: buffer addresses, file
#: offsets and lengths (a page: more than any common disk's logical block asks)
DIRECT_ALIGN = os.sysconf("SC_PAGESIZE")


def _writev_all(fd: int, pieces: list[memoryview]) -> None:
    """Write ``pieces`` back to back at the file position of ``fd`` (short writes resumed)."""
    todo, first = list(pieces), 0
    while first < len(todo):
        done = os.writev(fd, todo[first : first + _IOV_MAX])
        while first < len(todo) and done >= todo[first].nbytes:
            done -= todo[first].nbytes
            first += 1
        if done:
            todo[first] = todo[first][done:]


def _aligned(pieces: list[memoryview], offset: int) -> bool:
    """Can ``pieces`` be written at byte ``offset`` with direct I/O (every address,
    length and the offset a multiple of ``DIRECT_ALIGN``)?"""
    return offset % DIRECT_ALIGN == 0 and all(
        p.nbytes % DIRECT_ALIGN == 0
        and np.frombuffer(p, np.uint8).__array_interface__["data"][0] % DIRECT_ALIGN == 0
        for p in pieces)


def _copy_ranges(src: int, dst: int, starts: list[int], lengths: list[int]) -> None:
    """Append ``lengths[i]`` bytes from byte ``starts[i]`` of ``src`` to ``dst`` (at its
    file position), in order, inside the kernel."""
    for start, length in zip(starts, lengths):
        while length:
            done = os.copy_file_range(src, dst, length, start)
            if not done:
                raise OSError(errno.EIO, f"copy_file_range: source ends before byte {start}")
            start, length = start + done, length - done


#: what is wrong with a block whose stored bytes fail their digest
STORED_MISMATCH = "stored bytes do not match their digest"


def stored_digests(data: bytes | memoryview | np.ndarray, starts: np.ndarray,
                   records: np.ndarray) -> np.ndarray:
    """The ``(k, 16)`` stored digests ``records`` must carry for their stored bytes
    ``data[start : start + length]``, computed in one batch: the CRC-32 form for records
    with ``FLAG_CRC32``, SHA-256/128 for the others."""
    lengths = records["length"]
    crc = (records["flags"] & FLAG_CRC32) != 0
    if crc.all():
        return stored_checks(data, starts, lengths)
    if not crc.any():
        return sha256_128_spans(data, starts, lengths)
    digests = np.empty((len(records), DIGEST_SIZE), dtype=np.uint8)
    digests[crc] = stored_checks(data, starts[crc], lengths[crc])
    digests[~crc] = sha256_128_spans(data, starts[~crc], lengths[~crc])
    return digests


def stored_mismatches(data: bytes | memoryview | np.ndarray, starts: np.ndarray,
                      records: np.ndarray) -> np.ndarray:
    """Rows of ``records`` whose stored bytes, ``data[start : start + length]``, do not
    match their stored digest."""
    digests = stored_digests(data, starts, records)
    return np.flatnonzero((digests != digest_rows(records["stored_digest"])).any(axis=1))


def check_stored(name: str, data: bytes | memoryview | np.ndarray, starts: np.ndarray,
                 records: np.ndarray) -> None:
    """IntegrityError naming image ``name`` and the first block of ``records`` whose stored
    bytes (at ``starts`` of ``data``) do not match their digest."""
    bad = stored_mismatches(data, starts, records)
    if bad.size:
        raise IntegrityError(stored_mismatch(name, int(records["position"][bad[0]])))


def stored_mismatch(name: str, position: int) -> str:
    """The error of block ``position`` of image ``name`` failing its stored digest."""
    return f"{name}: block {position}: {STORED_MISMATCH}"


def index_problem(index: np.ndarray, header: Header, payload_end: int,
                  previous: int = -1) -> str:
    """What is impossible about ``index`` (a piece of an index following a record at
    position ``previous``, -1 for none) for an image with ``header`` whose payloads end
    at byte ``payload_end`` ("" if nothing): every position inside the volume, once, in
    order; every payload inside the file (offsets checked so that nothing wraps) and as
    long as its flags allow."""
    pos, offset = index["position"], index["offset"]
    length, flags = index["length"].astype(np.uint64), index["flags"]
    bs = header.block_size
    zero, sealed = (flags & FLAG_ZERO) != 0, (flags & FLAG_ENCRYPTED) != 0
    packed = (flags & (FLAG_ZLIB | FLAG_ZSTD)) != 0
    overhead = NONCE_SIZE + TAG_SIZE if header.encrypted else 0
    longest = np.where(zero, 0, np.where(packed, bs - 1, bs) + np.where(sealed, overhead, 0))
    shortest = np.where(zero, 0, np.where(packed, 1, bs) + np.where(sealed, overhead, 0))
    inside = (offset >= HEADER_SIZE) & (offset <= payload_end)
    checks = (
        (np.any(pos[1:] <= pos[:-1]) or (previous >= 0 and bool(pos.size)
                                         and int(pos[0]) <= previous),
         "positions out of order or repeated"),
        (bool(pos.size) and int(pos[-1]) >= header.n_blocks, "a position past the volume"),
        (np.any(flags & ~np.uint32(KNOWN_FLAGS)), "unknown flags"),
        (np.any(zero & (flags != FLAG_ZERO)), "a zero block with other flags"),
        (not header.encrypted and np.any(sealed), "an encrypted block in a plain image"),
        (np.any((length != 0) & ~inside), "a payload outside the file"),
        (np.any(inside & (length > np.uint64(payload_end) - np.minimum(offset, payload_end))),
         "a payload past the index"),
        (np.any((length > longest) | (length < shortest)),
         "a payload length its flags do not allow"),
    )
    return next((what for bad, what in checks if bad), "")


class ImageFile:
    """A complete image opened for reading; payloads are read with ``os.pread``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.name = self.path.name
        opened = open_image(self.path)  # a shared lock: no merge grows it while open
        self._fd = opened.fd
        try:
            self.stored_bytes = opened.size
            self.header = Header.unpack(opened.header, self.name)
            if self.stored_bytes < HEADER_SIZE + Footer.SIZE:
                raise FormatError(f"{self.name}: incomplete image (truncated after the header)")
            self.footer = Footer.unpack(
                os.pread(self._fd, Footer.SIZE, self.stored_bytes - Footer.SIZE), self.name)
            self.index = self._read_index()
        except BaseException:
            self.close()
            raise

    def _read_index(self) -> ImageIndex:
        """The index, checked against the file and the format's limits (streamed)."""
        f = self.footer
        nbytes = f.index_count * INDEX_DTYPE.itemsize
        if not HEADER_SIZE <= f.index_offset <= self.stored_bytes - Footer.SIZE - nbytes:
            raise FormatError(f"{self.name}: incomplete image (index does not fit the file)")
        if f.index_offset + nbytes + Footer.SIZE != self.stored_bytes:
            raise FormatError(f"{self.name}: incomplete image (index does not fit the file)")
        return ImageIndex.open(
            self._fd, f.index_offset, f.index_count, f.index_digest, self.name,
            lambda piece, previous: index_problem(piece, self.header, f.index_offset, previous))

    # ------------------------------------------------------------------ access
    def read_payload(self, record: np.void) -> bytes:
        """The stored bytes of one index record."""
        return self.read_range(int(record["offset"]), int(record["length"]))

    def read_range(self, offset: int, length: int) -> bytes:
        """``length`` stored bytes from byte ``offset`` of the file."""
        return os.pread(self._fd, length, offset)

    def read_into(self, out: np.ndarray, offset: int) -> None:
        """Fill the contiguous array ``out`` with stored bytes from ``offset`` on."""
        view = out.reshape(-1).data
        if os.preadv(self._fd, [view], offset) != view.nbytes:
            raise FormatError(f"{self.name}: truncated payload at byte {offset}")

    def fileno(self) -> int:
        """The open file descriptor (for file-to-file copies of verbatim payloads)."""
        return self._fd

    @property
    def blocks(self) -> int:
        """Number of block records (positions) this image holds."""
        return len(self.index)

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h = self.header
        kind = "full" if h.is_full else "incremental"
        return (f"ImageFile({self.name}: {kind}, {self.blocks} blocks, "
                f"{self.stored_bytes} B{', encrypted' if h.encrypted else ''})")


class DamagedImage(ImageFile):
    """A listed image that cannot be read: why (``damage``), and its header when that much
    was readable (``header_known``; otherwise a placeholder that links to nothing).
    It holds no blocks; the points that depend on it cannot be read."""

    def __init__(self, path: str | os.PathLike[str], damage: str, header: Header | None):
        self.path = Path(path)
        self.name = self.path.name
        self._fd = -1
        self.damage = damage
        self.header_known = header is not None
        self.header = header if header is not None else UNKNOWN_HEADER
        try:
            self.stored_bytes = self.path.stat().st_size
        except OSError:
            self.stored_bytes = 0
        self.index = ImageIndex.empty(self.name)

    def __repr__(self) -> str:
        return f"DamagedImage({self.name}: {self.damage})"


#: the header of a damaged image whose header is unreadable: no identity, links nowhere
UNKNOWN_HEADER = Header(kind=-1, block_size=0, volume_size=0, created_ns=0, written_ns=0,
                        image_id=b"", parent_id=b"", volume_id=b"")


def open_listed(path: str | os.PathLike[str]) -> ImageFile:
    """An image listed by a manifest: opened, or — when it is missing or damaged — a
    :class:`DamagedImage` saying why (with its header, if that much is readable)."""
    if not os.path.lexists(path):
        return DamagedImage(path, "listed but missing", None)
    try:
        return ImageFile(path)
    except FormatError as exc:
        name = Path(path).name
        header = None
        with contextlib.suppress(OSError, FormatError), open(path, "rb") as fh:
            header = Header.unpack(fh.read(HEADER_SIZE), name)
        return DamagedImage(path, str(exc).removeprefix(f"{name}: "), header)


#: records an image writer keeps in memory before moving them to its spill file (3.5 MiB)
SPILL_RECORDS = 1 << 16
#: an image's index records in position order, a piece at a time, on each call
RecordPieces = Callable[[], Iterator[np.ndarray]]


class ImageWriter:
    """Streams blocks into a new image; nothing appears under ``path`` until :meth:`commit`.

    A position written twice keeps its last write (the head-start method copies
    a block early and again after it was re-modified).  Payloads are written by a
    background thread while the caller encodes the next batch (the write releases
    the GIL), so hashing and I/O overlap; at most one batch is in flight (more with
    :meth:`write_behind`).
    """

    def __init__(self, path: str | os.PathLike[str], header: Header,
                 codec: BlockCodec | None = None,
                 seal: Callable[[Header, RecordPieces], Header] | None = None, *,
                 grow: bool = False):
        """``codec`` encodes plaintext for :meth:`add`; writers that only copy stored
        payloads verbatim (:meth:`add_encoded`) need none.  ``seal(header, pieces)``
        gives the final header once every record is known (the point digest);
        ``pieces()`` yields the image's records in position order, a piece at a time.

        ``grow``: turn the existing image file at ``path`` into the new image in place
        (consolidation, behind its merge journal: :mod:`.inplace`).  Its payloads stay
        where they are (:meth:`add_records` names those kept); new ones are appended
        from the next page after its end; the index, the footer and, last, ``header``
        are written at :meth:`commit`, each fsynced, and nothing is renamed."""
        self._seal = seal
        self.path = Path(path)
        self.header = header
        self.codec = codec
        self._grow = grow
        self._stack = contextlib.ExitStack()
        self._fh: BinaryIO
        if grow:
            self._fh = self._stack.enter_context(open(self.path, "r+b"))  # noqa: SIM115
            end = os.fstat(self._fh.fileno()).st_size
            self._offset = -(-end // HEADER_SIZE) * HEADER_SIZE  # payloads page-aligned
            self._fh.seek(self._offset)
        else:
            self._fh = self._stack.enter_context(atomic_writer(self.path))
            self._fh.write(header.pack())
            self._offset = HEADER_SIZE
        self._fh.flush()  # payloads are written to the descriptor itself (writev)
        self._writeback = Writeback(self._fh.fileno())  # on disk while the rest is encoded
        self._copy_files = True  # copy_file_range works here until it says otherwise
        # direct I/O where it works, for a file that must reach the disk anyway (with
        # BLOCKFORENSICS_FSYNC=0 the page cache is the goal: buffered writes)
        self._direct = fileio.SYNC
        self._records: list[np.ndarray] = []  # not yet spilled
        self._held = 0  # records in self._records
        self._count = 0  # records added in all
        self._last = -1  # the highest position added so far
        self._ordered = True  # every record added after the previous ones' positions
        self._spill: BinaryIO | None = None  # records moved out of memory, in order
        from concurrent.futures import ThreadPoolExecutor  # here: only writers pay for it

        self._io = self._stack.enter_context(ThreadPoolExecutor(1))
        #: the writes of the latest add* calls, in order (None: a call with nothing to write)
        self._in_flight: deque[Future[None] | None] = deque()
        self._depth = 1  # batches that may be in flight

    def _write(self, pieces: list[memoryview], offset: int, nbytes: int,
               source: tuple[int, list[int]] | None) -> None:
        """(Background thread) append ``pieces`` (``nbytes`` in all) back to back, the first
        at byte ``offset``: copied file to file from ``source`` (descriptor, byte offset
        of each piece) where the file system can; else, when they are aligned, written
        with direct I/O, straight from the buffers to the disk (a plain backup's blocks:
        no copy into the page cache, no writeback left for the final fsync); else
        written with ``writev`` and their writeback started."""
        fd = self._fh.fileno()
        if source is not None and self._copy_files:
            try:
                _copy_ranges(source[0], fd, source[1], [p.nbytes for p in pieces])
            except OSError as exc:
                if exc.errno not in _NO_COPY or os.lseek(fd, 0, os.SEEK_CUR) != offset:
                    raise
                self._copy_files = False  # not between these files: write the bytes
            else:
                self._writeback(offset, nbytes)
                return
        if self._direct and _aligned(pieces, offset) and self._write_direct(fd, pieces, offset):
            return
        _writev_all(fd, pieces)
        self._writeback(offset, nbytes)

    def _write_direct(self, fd: int, pieces: list[memoryview], offset: int) -> bool:
        """Write aligned ``pieces`` at ``offset`` (the file position) with ``O_DIRECT``,
        set for this write only; False, with nothing written and direct I/O given up for
        this writer, where the file system refuses it."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct = False  # the file system has no direct I/O
            return False
        try:
            _writev_all(fd, pieces)
        except OSError as exc:
            if exc.errno != errno.EINVAL or os.lseek(fd, 0, os.SEEK_CUR) != offset:
                raise
            self._direct = False  # a coarser alignment than DIRECT_ALIGN: write the bytes
            return False
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return True

    def write_behind(self, batches: int) -> None:
        """Let up to ``batches`` batches be in flight (default 1), so the disk always has
        the next one waiting: the buffers under an ``add*`` call's blocks or pieces may
        then be reused only once ``batches`` more ``add*`` calls (or :meth:`commit`) have
        returned."""
        self._depth = max(1, batches)

    def _drain(self, keep: int = 0) -> None:
        """Wait until only the writes of the latest ``keep`` add* calls may be running
        (and raise the error of one that failed, if any)."""
        while len(self._in_flight) > keep:
            write = self._in_flight.popleft()
            if write is not None:
                write.result()

    def add(self, positions: np.ndarray, blocks: np.ndarray) -> None:
        """Encode and append plaintext ``blocks[i]`` for block ``positions[i]``."""
        if self.codec is None:
            raise ValueError("this writer copies stored payloads only; it has no codec")
        if len(positions):
            self.add_encoded(self.codec.encode(np.asarray(positions, np.uint64), blocks))
        else:
            self._drain(self._depth - 1)  # as every add: the oldest buffers are free again
            self._in_flight.append(None)

    def add_encoded(self, encoded: EncodedBlocks) -> None:
        """Append encoded blocks (their records and payload bytes)."""
        self.add_verbatim(encoded.records, [memoryview(encoded.payload)])

    def add_verbatim(self, records: np.ndarray, pieces: Sequence[memoryview],
                     source: tuple[int, Sequence[int]] | None = None) -> None:
        """Append stored payloads verbatim (consolidation copies without a key): the
        bytes of ``pieces`` back to back, ``records``' offsets counted from the first
        piece's first byte.  With ``source`` = (descriptor, byte offset of each piece in
        it), the same bytes are copied file to file (``copy_file_range``) where the file
        system allows.  The background thread writes them while the caller goes on; the
        buffers under ``pieces`` may be reused once the next ``add*`` call (or
        :meth:`commit`) has returned (see :meth:`write_behind`)."""
        self.add_records(self.place_verbatim(records, pieces, source))

    def place_verbatim(self, records: np.ndarray, pieces: Sequence[memoryview],
                       source: tuple[int, Sequence[int]] | None = None) -> np.ndarray:
        """:meth:`add_verbatim`'s payloads written, their records not yet added: the
        records returned, offsets now in this file, go to :meth:`add_records` (in
        position order, with others, for the index to stream)."""
        records = records.copy()
        records["offset"] += np.uint64(self._offset)
        keep = [i for i, p in enumerate(pieces) if p.nbytes]
        flat = [pieces[i].cast("B") if pieces[i].ndim != 1 or pieces[i].format != "B"
                else pieces[i] for i in keep]
        nbytes = sum(p.nbytes for p in flat)
        copy = None if source is None else (source[0], [int(source[1][i]) for i in keep])
        self._drain(self._depth - 1)
        self._in_flight.append(self._io.submit(self._write, flat, self._offset, nbytes, copy)
                               if nbytes else None)
        self._offset += nbytes
        return records

    def add_records(self, records: np.ndarray) -> None:
        """Add index records whose payloads are already in this file (offsets in it).

        They are held for the index; while they come in position order they move to a
        spill file every ``SPILL_RECORDS``, so memory does not grow with the image
        (writers that add out of order, such as head start, keep theirs to sort them)."""
        if len(records):
            positions = records["position"]
            if int(positions[0]) <= self._last or np.any(positions[1:] <= positions[:-1]):
                self._ordered = False
            self._last = max(self._last, int(positions.max()))
        self._records.append(records)
        self._held += len(records)
        self._count += len(records)
        if self._ordered and self._held >= SPILL_RECORDS:
            if self._spill is None:
                self._spill = self._stack.enter_context(  # closed with the writer
                    tempfile.TemporaryFile(dir=self.path.parent, prefix=".index-"))  # noqa: SIM115
            self._spill.write(np.concatenate(self._records).data)
            self._records, self._held = [], 0

    @property
    def blocks_written(self) -> int:
        return self._count

    def _index_pieces(self) -> Iterator[np.ndarray]:
        """The index records in position order, a piece at a time: spilled ones read
        back, then those in memory; out-of-order ones sorted (the last write of a
        position wins)."""
        spilled: list[np.ndarray] = []
        if self._spill is not None:
            self._spill.seek(0)
            while raw := self._spill.read(SPILL_RECORDS * INDEX_DTYPE.itemsize):
                piece = np.frombuffer(raw, dtype=INDEX_DTYPE)
                if self._ordered:
                    yield piece
                else:
                    spilled.append(piece)
        records = np.concatenate(spilled + self._records) if spilled or self._records \
            else np.zeros(0, INDEX_DTYPE)
        if not self._ordered:  # sort, keep the last write of each position
            records = records[np.argsort(records["position"], kind="stable")]
            pos = records["position"]
            records = records[np.r_[pos[1:] != pos[:-1], True]]
        yield records

    def _written_index(self, at: int, count: int) -> RecordPieces:
        """The index as written at byte ``at`` of the new file, read back a piece at a time."""
        fd = self._fh.fileno()

        def pieces() -> Iterator[np.ndarray]:
            for lo in range(0, count, SPILL_RECORDS):
                n = min(SPILL_RECORDS, count - lo)
                raw = os.pread(fd, n * INDEX_DTYPE.itemsize, at + lo * INDEX_DTYPE.itemsize)
                yield np.frombuffer(raw, dtype=INDEX_DTYPE)

        return pieces

    def commit(self) -> Path:
        """Write index and footer, fsync, rename into place (a growing writer: write the
        header last, no rename); returns the final path."""
        self._drain()
        digest, count = hashlib.sha256(), 0
        for piece in self._index_pieces():
            raw = piece.view(np.uint8).data
            self._fh.write(raw)
            digest.update(raw)
            count += len(piece)
        self._records.clear()
        self._fh.flush()
        fd = self._fh.fileno()
        if self._seal is not None:
            self.header = self._seal(self.header, self._written_index(self._offset, count))
            if not self._grow:
                os.pwrite(fd, self.header.pack(), 0)
        self._fh.write(Footer(self._offset, count, digest.digest()).pack())
        if self._grow:  # the body is durable before the header that makes it this image
            self._fh.flush()
            fsync(fd)
            os.pwrite(fd, self.header.pack(), 0)
            fsync(fd)
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; ``path`` is untouched (a growing writer leaves what it
        appended for its journal to cut off)."""
        with contextlib.suppress(_Abort):
            self._stack.__exit__(_Abort, _Abort(), None)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
        if isinstance(exc, OSError) and exc.filename is None:  # disk full: say where
            exc.filename = str(self.path)


class _Abort(Exception):
    """Raised into the atomic writer to make it discard the temporary file."""

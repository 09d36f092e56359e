"""What ``list`` shows of a chain, read without numpy (which costs most of its start-up).

Each listed image is checked exactly as opening it for reading checks it
(:class:`~blockforensics.image.imagefile.ImageFile`): header and footer
checksums, the index's place in the file, its SHA-256 digest, and its
structure (positions in order and inside the volume, flags, every payload
inside the file and as long as its flags allow); the parent links are then
resolved by :func:`~blockforensics.image.links.link`.  So a point ``list``
calls intact is one a read does not refuse, and the same words say why when
it does.  The structural check here runs over Python lists and sets, a chunk
of index records at a time (memory bounded whatever the index's size); it
says what :func:`~blockforensics.image.imagefile.index_problem` says of the
same records, which ``tests/test_startup.py`` checks case by case.  Lists cost
about ten times numpy's time per record, so a chain's records past
:data:`LIST_RECORDS` are checked by the reader itself, once numpy's import is the
smaller cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from array import array
from dataclasses import dataclass, field
from itertools import compress, islice, repeat
from operator import add, eq, lt
from pathlib import Path
from typing import TYPE_CHECKING

from blockforensics.errors import ChainError, FormatError
from blockforensics.image.format import (
    FLAG_ENCRYPTED,
    FLAG_ZERO,
    FLAG_ZLIB,
    FLAG_ZSTD,
    HEADER_SIZE,
    INDEX_RECORD_SIZE,
    KIND_NAMES,
    KNOWN_FLAGS,
    NONCE_SIZE,
    TAG_SIZE,
    Footer,
    Header,
)
from blockforensics.image.inplace import OpenedImage, open_image
from blockforensics.image.links import link
from blockforensics.image.store import ChainStore

if TYPE_CHECKING:
    from blockforensics.image.imagefile import ImageFile

#: index records read, hashed and checked at a time (3.5 MiB)
CHUNK_RECORDS = 1 << 16
#: index records of a chain checked with lists; the images past them are opened by the
#: reader (numpy), whose import (~0.08 s) then costs less than checking them with lists
#: (about 0.35 us a record: a fully allocated 1 GiB volume of 4 KiB blocks is 2^18)
LIST_RECORDS = 1 << 18
_WORDS = INDEX_RECORD_SIZE // 8  # 64-bit words per record: position, offset, length|flags


@dataclass
class ImageSummary:
    """One listed image as ``list`` shows it: ``damage`` says why it cannot be read
    (None: it can); ``known`` is its header, None when not even that was readable."""

    path: Path
    known: Header | None
    stored_bytes: int  # bytes of the file
    blocks: int = 0  # index records (blocks stored); 0 when damaged
    damage: str | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.path.name

    @property
    def header_known(self) -> bool:
        return self.known is not None

    @property
    def header(self) -> Header:
        """The header (linking asks only images whose header is known)."""
        if self.known is None:
            raise FormatError(f"{self.name}: header unreadable")
        return self.known


@dataclass
class IndexCheck:
    """The structure of an index, gathered chunk by chunk (:meth:`add`), judged at the
    end (:meth:`problem`)."""

    ordered: bool = True
    count: int = 0
    last: int = -1  # position of the last record
    flags: set[int] = field(default_factory=set)
    #: shortest and longest payload per flags value
    lengths: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: over payloads of nonzero length: lowest and highest offset, highest end
    low: int | None = None
    high: int = 0
    end: int = 0

    def add(self, raw: bytes) -> None:
        """Take the next whole records, in file order."""
        words, halves = array("Q", raw), array("I", raw)
        if sys.byteorder == "big":  # the format is little-endian
            words.byteswap()
            halves.byteswap()
        positions = words[0::_WORDS].tolist()
        offsets = words[1::_WORDS].tolist()
        lengths = halves[4::2 * _WORDS].tolist()
        flags = halves[5::2 * _WORDS].tolist()
        if not positions:
            return
        self.ordered = self.ordered and self.last < positions[0] and all(
            map(lt, positions, islice(positions, 1, None)))
        self.count += len(positions)
        self.last = positions[-1]
        distinct = set(flags)
        for value in distinct:
            mine = lengths if len(distinct) == 1 else \
                list(compress(lengths, map(eq, flags, repeat(value))))
            low, high = self.lengths.get(value, (mine[0], mine[0]))
            self.lengths[value] = (min(low, min(mine)), max(high, max(mine)))
        self.flags |= distinct
        stored = list(compress(offsets, lengths))  # payloads of nonzero length
        if stored:
            low = min(stored)
            self.low = low if self.low is None else min(self.low, low)
            self.high = max(self.high, max(stored))
            self.end = max(self.end, max(map(add, stored, compress(lengths, lengths))))

    def problem(self, header: Header, payload_end: int) -> str:
        """What is impossible about the records for an image with ``header`` whose
        payloads end at byte ``payload_end`` ("" if nothing); the checks and words of
        :func:`~blockforensics.image.imagefile.index_problem`, in its order."""
        bs = header.block_size
        overhead = NONCE_SIZE + TAG_SIZE if header.encrypted else 0

        def allowed(flags: int) -> tuple[int, int]:
            if flags & FLAG_ZERO:
                return 0, 0
            packed = flags & (FLAG_ZLIB | FLAG_ZSTD)
            sealed = overhead if flags & FLAG_ENCRYPTED else 0
            return (1 if packed else bs) + sealed, (bs - 1 if packed else bs) + sealed

        checks = (
            (not self.ordered, "positions out of order or repeated"),
            (self.count and self.last >= header.n_blocks, "a position past the volume"),
            (any(f & ~KNOWN_FLAGS for f in self.flags), "unknown flags"),
            (any(f & FLAG_ZERO and f != FLAG_ZERO for f in self.flags),
             "a zero block with other flags"),
            (not header.encrypted and any(f & FLAG_ENCRYPTED for f in self.flags),
             "an encrypted block in a plain image"),
            (self.low is not None and (self.low < HEADER_SIZE or self.high > payload_end),
             "a payload outside the file"),
            (self.end > payload_end, "a payload past the index"),
            (any(low < allowed(f)[0] or high > allowed(f)[1]
                 for f, (low, high) in self.lengths.items()),
             "a payload length its flags do not allow"),
        )
        return next((what for bad, what in checks if bad), "")


def _check(path: Path, opened: OpenedImage, lists: int) -> tuple[Header, int]:
    """The header and the number of index records of the image file at ``path``, as
    ``opened``; FormatError, in the words of ImageFile, if reading it would be refused.
    An index of more than ``lists`` records is checked by ImageFile itself."""
    name, fd, stored_bytes = path.name, opened.fd, opened.size
    header = Header.unpack(opened.header, name)
    if stored_bytes < HEADER_SIZE + Footer.SIZE:
        raise FormatError(f"{name}: incomplete image (truncated after the header)")
    footer = Footer.unpack(os.pread(fd, Footer.SIZE, stored_bytes - Footer.SIZE), name)
    nbytes = footer.index_count * INDEX_RECORD_SIZE
    if (not HEADER_SIZE <= footer.index_offset <= stored_bytes - Footer.SIZE - nbytes
            or footer.index_offset + nbytes + Footer.SIZE != stored_bytes):
        raise FormatError(f"{name}: incomplete image (index does not fit the file)")
    if footer.index_count > lists:
        from blockforensics.image.imagefile import ImageFile

        with ImageFile(path) as image:
            return image.header, image.blocks
    digest, check = hashlib.sha256(), IndexCheck()
    for at in range(0, nbytes, CHUNK_RECORDS * INDEX_RECORD_SIZE):
        raw = os.pread(fd, min(CHUNK_RECORDS * INDEX_RECORD_SIZE, nbytes - at),
                       footer.index_offset + at)
        digest.update(raw)
        check.add(raw)
    if digest.digest() != footer.index_digest:
        raise FormatError(f"{name}: block index damaged (checksum mismatch)")
    problem = check.problem(header, footer.index_offset)
    if problem:
        raise FormatError(f"{name}: block index inconsistent with the file ({problem})")
    return header, footer.index_count


def summarise(path: Path, lists: int = LIST_RECORDS) -> ImageSummary:
    """A listed image checked as a read would check it (see the module's description);
    its index with lists if it holds at most ``lists`` records, else by the reader."""
    if not os.path.lexists(path):
        return ImageSummary(path, None, _size(path), damage="listed but missing")
    name = path.name
    try:
        opened = open_image(path)  # as the reader opens it (a merge in place waited for)
        try:
            stored_bytes = opened.size
            header, blocks = _check(path, opened, lists)
        finally:
            os.close(opened.fd)
        return ImageSummary(path, header, stored_bytes, blocks)
    except FormatError as exc:
        known = None
        with contextlib.suppress(OSError, FormatError), open(path, "rb") as fh:
            known = Header.unpack(fh.read(HEADER_SIZE), name)
        return ImageSummary(path, known, _size(path), damage=str(exc).removeprefix(f"{name}: "))


def _size(path: Path) -> int:
    """Bytes of the file at ``path`` (0 if it cannot be seen), as a damaged image shows."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def disk_bytes(path: Path) -> int:
    """Bytes the file at ``path`` occupies on disk (0 if it cannot be seen): less than its
    size where it has holes, as an image grown in place by a consolidation has."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def chain_rows(directory: str | os.PathLike[str]) -> list[dict[str, object]]:
    """One dict per point of the chain in ``directory``: what ``list`` prints (and
    ``list --json`` serialises), as :meth:`Chain.rows` gives it."""
    store = ChainStore(directory)
    images: list[ImageSummary] = []
    for name in store.read().images:
        try:
            path = store.check_file(name)
        except ChainError as exc:  # a symlink, FIFO, device, directory: never opened
            path = store.directory / name
            images.append(ImageSummary(path, None, _size(path), damage=str(exc)))
            continue
        images.append(summarise(path, max(0, LIST_RECORDS - sum(i.blocks for i in images))))
    links = link(images)
    return [point_row(i, img, links.parents[i], links.damage.get(i))
            for i, img in enumerate(images)]


def point_row(point: int, image: ImageSummary | ImageFile, parent: int | None,
              error: str | None) -> dict[str, object]:
    """The row of one point (an image as ``list`` or a reader opened it): its place in
    the tree (``parent``) and why it cannot be read (``error``, None if it can)."""
    h = image.header if getattr(image, "header_known", True) else None
    return {
        "point": point, "file": image.name,
        "kind": KIND_NAMES[h.kind] if h else None,
        "parent": parent, "blocks": image.blocks,
        "stored_bytes": image.stored_bytes, "disk_bytes": disk_bytes(image.path),
        "encrypted": h.encrypted if h else None,
        "created": h.created.isoformat(timespec="milliseconds") if h else None,
        "volume_size": h.volume_size if h else None,
        "block_size": h.block_size if h else None, "label": h.label if h else "",
        "damaged": error is not None, "error": error,
    }

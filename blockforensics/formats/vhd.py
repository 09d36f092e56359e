"""VHD (Microsoft Virtual Hard Disk, spec v1.0): fixed, dynamic and differencing,
written and read.

A *fixed* VHD is the disk's bytes followed by a 512-byte footer.  A *dynamic*
VHD is a footer copy, a dynamic-disk header, a block allocation table (BAT:
one big-endian uint32 per 2 MiB VHD block, the file sector of that block or
0xFFFFFFFF), the allocated blocks (each a sector bitmap padded to 512 bytes and
then 2 MiB of data), and the footer.  A *differencing* VHD is a dynamic one
whose header names a parent VHD (unique id, file name, parent locators): a
sector whose bitmap bit is clear, or whose block is unallocated, reads from
the parent.

:class:`VhdLayout` computes a VHD file's whole layout from a :class:`Disk`
without reading its data; :func:`~blockforensics.formats.layout.write_layout`
writes it and :meth:`~blockforensics.formats.layout.FileLayout.readinto`
synthesises it for the FUSE mount.  :class:`VhdDisk` reads fixed, dynamic and
differencing VHDs (ours, QEMU's, Hyper-V's) as a Disk, finding a parent by its
locators or as given.

Units: ``*_size`` and ``*offset`` fields are bytes, BAT entries are 512-byte
sectors, VHD blocks are 2 MiB (``VHD_BLOCK``), Disk blocks are ``disk.block_size``.
"""

from __future__ import annotations

import os
import sys
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar
from urllib.parse import unquote, urlparse

from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk, Format
from blockforensics.formats.layout import (
    SECTOR,
    FileLayout,
    packed,
    round_up,
    touched,
    write_layout,
)
from blockforensics.formats.placement import Packing, Placement
from blockforensics.formats.record import Record, f
from blockforensics.formats.signature import VHD_COOKIE, VHD_FOOTER_SIZE, is_vhd

if TYPE_CHECKING:
    import numpy as np

    from blockforensics.blockmap import BlockMap
    from blockforensics.crypto import KeySource

#: bytes of data per dynamic-VHD block (the spec's default, used by every writer)
VHD_BLOCK = 2 * 1024 * 1024
#: BAT entry of an unallocated block
UNUSED = 0xFFFFFFFF
#: largest disk QEMU opens (VHD_MAX_SECTORS = 0xFF000000 sectors = 2040 GiB), bytes
MAX_SIZE = 0xFF000000 * SECTOR
#: VHD timestamps count seconds from here
VHD_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)

HEADER_COOKIE = b"cxsparse"
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING = 2, 3, 4
KINDS = {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic", DISK_DIFFERENCING: "differencing"}
#: parent locator platform codes: Windows relative and absolute paths (UTF-16LE), and a
#: file URL (UTF-8) as Virtual PC for Mac writes
LOCATOR_RELATIVE, LOCATOR_ABSOLUTE, LOCATOR_URL = b"W2ru", b"W2ku", b"MacX"

#: Creator application written into the footer.  QEMU's vpc driver sizes a disk
#: from the CHS geometry unless the creator is one it knows to use the footer's
#: current size ("win ", "qem2", "d2v ", "CTXS", "tap\\0"; QEMU >= 9.2: anything
#: but "vpc " and "qemu").  "qem2" is what ``qemu-img create -o force_size=on``
#: writes, so every QEMU since 2.6 and Hyper-V (which always uses current size)
#: report exactly the source's size, whatever its CHS geometry.
CREATOR_APPLICATION = b"qem2"
CREATOR_VERSION = 0x00010000  # this writer's layout, version 1.0
CREATOR_HOST_OS = b"Wi2k"


class _Checksummed(Record):
    """A VHD record whose checksum is the one's complement of the byte sum of the
    record with the checksum field zero."""

    checksum: int
    SIZE: ClassVar[int]

    def expected_checksum(self) -> int:
        return ~sum(self.replace(checksum=0).pack()) & 0xFFFFFFFF

    def sealed(self: C) -> C:
        """A copy with the correct checksum."""
        return self.replace(checksum=self.expected_checksum())


C = TypeVar("C", bound=_Checksummed)


@dataclass(frozen=True)
class Footer(_Checksummed):
    """The hard disk footer: last 512 bytes of every VHD, copied at offset 0 of dynamic ones."""

    cookie: bytes = f("8s")  # b"conectix"
    features: int = f("I")  # 0x2: the reserved bit, always set
    file_format_version: int = f("I")  # 0x00010000
    data_offset: int = f("Q")  # bytes: dynamic header, or NO_OFFSET (fixed)
    timestamp: int = f("I")  # seconds since 2000-01-01 00:00:00 UTC
    creator_application: bytes = f("4s")
    creator_version: int = f("I")  # major << 16 | minor
    creator_host_os: bytes = f("4s")  # b"Wi2k" or b"Mac "
    original_size: int = f("Q")  # bytes, at creation
    current_size: int = f("Q")  # bytes, the disk's size
    cylinders: int = f("H")  # disk geometry (C, H, S)
    heads: int = f("B")
    sectors_per_track: int = f("B")
    disk_type: int = f("I")  # DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING
    checksum: int = f("I")
    unique_id: bytes = f("16s")
    saved_state: int = f("B")  # 1 while a VM's saved state refers to it
    _TAIL: ClassVar[str] = "427x"  # reserved, zero


@dataclass(frozen=True)
class DynamicHeader(_Checksummed):
    """The dynamic disk header (1024 bytes at the footer's ``data_offset``)."""

    cookie: bytes = f("8s")  # b"cxsparse"
    data_offset: int = f("Q")  # NO_OFFSET (unused)
    table_offset: int = f("Q")  # bytes: the BAT
    header_version: int = f("I")  # 0x00010000
    max_table_entries: int = f("I")  # BAT entries (VHD blocks)
    block_size: int = f("I")  # bytes of data per VHD block
    checksum: int = f("I")
    parent_unique_id: bytes = f("16s")  # differencing disks only
    parent_timestamp: int = f("I")  # the parent's footer timestamp
    reserved: int = f("I")
    parent_unicode_name: bytes = f("512s")  # UTF-16BE, the parent's file name
    parent_locator_entries: bytes = f("192s")  # 8 ParentLocator entries
    _TAIL: ClassVar[str] = "256x"  # reserved, zero


@dataclass(frozen=True)
class ParentLocator(Record):
    """Where a differencing disk's parent is (one of 8 entries in the dynamic header)."""

    platform_code: bytes = f("4s")  # LOCATOR_RELATIVE, LOCATOR_ABSOLUTE, b"MacX", or zeros
    platform_data_space: int = f("I")  # 512-byte sectors reserved for the locator's data
    platform_data_length: int = f("I")  # bytes of the locator's data
    reserved: int = f("I")
    platform_data_offset: int = f("Q")  # file byte offset of the locator's data


Footer.SIZE, DynamicHeader.SIZE = Footer.packed_size(), DynamicHeader.packed_size()
assert (Footer.SIZE, DynamicHeader.SIZE, ParentLocator.packed_size()) == (VHD_FOOTER_SIZE, 1024, 24)


def chs_geometry(total_sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) per the spec's algorithm (rounds down, caps)."""
    total = min(total_sectors, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def _bitmap_size(block_size: int) -> int:
    """Bytes of a block's sector bitmap: one bit per sector, padded to a sector."""
    return -(-block_size // SECTOR // 8 // SECTOR) * SECTOR


def _timestamp(when: datetime | None) -> int:
    when = when or datetime.now(timezone.utc)
    return int((when - VHD_EPOCH).total_seconds()) & 0xFFFFFFFF


# ------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class VhdParent:
    """What a differencing VHD records of its parent: identity and where to find it."""

    unique_id: bytes  # the parent footer's unique id
    timestamp: int  # the parent footer's timestamp
    path: Path  # the parent file; stored relative to the child and absolute

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> VhdParent:
        info = vhd_info(path)
        return cls(info.footer.unique_id, info.footer.timestamp, Path(path).resolve())

    def locators(self, child_dir: Path) -> list[tuple[bytes, bytes]]:
        """``(platform code, data)`` of the parent locators: relative, then absolute."""
        relative = os.path.relpath(self.path, child_dir.resolve()).replace("/", "\\")
        return [(LOCATOR_RELATIVE, f".\\{relative}".encode("utf-16-le")),
                (LOCATOR_ABSOLUTE, str(self.path).encode("utf-16-le"))]


class VhdLayout(FileLayout):
    """The byte layout of a VHD file made from ``disk``, synthesised on demand.

    Nothing is read from the disk here: the dynamic layout allocates a 2 MiB VHD
    block iff any byte of it lies in ``disk.present()``.  The VHD's size is the
    disk's size rounded up to a whole 512-byte sector (VHD sizes are sector
    multiples; sources normally are already), and the data after the disk's end
    reads as zeros.  Allocated blocks follow the BAT (and the parent locators) in
    disk order, each with an all-ones sector bitmap.

    A *differencing* layout (``parent`` given) holds only the blocks of ``covers``
    (a chain image's own blocks, zeros included): their VHD blocks are allocated
    and their sectors marked in the sector bitmaps; every other sector reads from
    the parent.  ``disk`` should then read zeros outside ``covers`` (see
    :class:`~blockforensics.formats.layout.Layer`).

    ``unique_id`` (16 bytes) and ``timestamp`` default to random and now; pin
    them to get byte-identical files from the same disk.

    The blocks allocated are found when first needed, unless :meth:`allocate` names
    them first (as :func:`write_layout` does for a dynamic VHD, after writing it): a
    raw file is then exported without numpy.
    """

    def __init__(self, disk: Disk, kind: Literal["dynamic", "fixed", "differencing"] = "dynamic",
                 *, unique_id: bytes | None = None, timestamp: datetime | None = None,
                 parent: VhdParent | None = None, covers: BlockMap | None = None,
                 directory: str | os.PathLike[str] = "."):
        if kind not in ("dynamic", "fixed", "differencing"):
            raise UsageError(f"VHD kind must be 'dynamic', 'fixed' or 'differencing', "
                             f"not {kind!r}")
        if (kind == "differencing") != (parent is not None):
            raise UsageError("a differencing VHD needs its parent (and only it has one)")
        super().__init__(disk, MAX_SIZE, "VHD")
        self.kind = kind
        cylinders, heads, spt = chs_geometry(self.size // SECTOR)
        sparse = kind != "fixed"
        self.footer: Footer = Footer(
            cookie=VHD_COOKIE, features=0x2, file_format_version=0x00010000,
            data_offset=Footer.SIZE if sparse else NO_OFFSET, timestamp=_timestamp(timestamp),
            creator_application=CREATOR_APPLICATION, creator_version=CREATOR_VERSION,
            creator_host_os=CREATOR_HOST_OS, original_size=self.size, current_size=self.size,
            cylinders=cylinders, heads=heads, sectors_per_track=spt,
            disk_type={"fixed": DISK_FIXED, "dynamic": DISK_DYNAMIC,
                       "differencing": DISK_DIFFERENCING}[kind], checksum=0,
            unique_id=unique_id if unique_id is not None else uuid.uuid4().bytes,
            saved_state=0,
        ).sealed()
        self._footer = self.footer.pack()
        self._covers = covers
        if not sparse:
            self.data_start, self._header = 0, b""
            self.bitmap_size, self.slot_size = 0, self.size
            self._locators: list[tuple[int, bytes]] = []
            self.allocate(())
            return
        n_entries = -(-self.size // VHD_BLOCK)
        table_offset = Footer.SIZE + DynamicHeader.SIZE
        bat_bytes = round_up(n_entries * 4, SECTOR)
        locators = parent.locators(Path(directory)) if parent else []
        entries, blobs, at = [], [], table_offset + bat_bytes
        for code, data in locators:
            space = round_up(len(data), SECTOR)
            entries.append(ParentLocator(code, space // SECTOR, len(data), 0, at).pack())
            blobs.append((at, data))
            at += space
        self._locators = blobs
        self.data_start = at
        self.bitmap_size = _bitmap_size(VHD_BLOCK)
        #: bytes per allocated block in the file (bitmap + data)
        self.slot_size = self.bitmap_size + VHD_BLOCK
        name = parent.path.name.encode("utf-16-be") if parent else b""
        self._header = DynamicHeader(
            cookie=HEADER_COOKIE, data_offset=NO_OFFSET, table_offset=table_offset,
            header_version=0x00010000, max_table_entries=n_entries, block_size=VHD_BLOCK,
            checksum=0, parent_unique_id=parent.unique_id if parent else bytes(16),
            parent_timestamp=parent.timestamp if parent else 0, reserved=0,
            parent_unicode_name=name, parent_locator_entries=b"".join(entries),
        ).sealed().pack()
        self._bat_entries = bat_bytes // 4

    @cached_property
    def allocated(self) -> array[int]:
        """VHD block numbers of the allocated blocks, in file order: those given to
        :meth:`allocate`, else every block that a block of the disk's present map (of
        ``covers``, for a differencing VHD) overlaps."""
        wanted = self.present if self._covers is None else self._covers
        return array("q", touched(wanted, VHD_BLOCK, self.bat_entries).positions().tolist())

    def allocate(self, allocated: Sequence[int] | np.ndarray) -> None:
        """Allocate the VHD blocks ``allocated`` (sorted block numbers), in that order in
        the file, and no others: the BAT, the blocks' places and the file's size."""
        self.allocated = array("q", allocated)

    @property
    def data_end(self) -> int:
        """Bytes up to the end of the last block's data (of the disk's data, if fixed)."""
        if self.kind == "fixed":
            return self.size
        return self.data_start + len(self.allocated) * self.slot_size

    @property
    def file_size(self) -> int:  # type: ignore[override]  # follows the allocation
        """Bytes of the whole VHD file."""
        return self.data_end + Footer.SIZE

    def _bat(self) -> bytes:
        """The BAT: a big-endian uint32 per VHD block, its data's first sector or UNUSED."""
        bat = array("I", [UNUSED]) * self._bat_entries
        first, step = self.data_start // SECTOR, self.slot_size // SECTOR
        for slot, block in enumerate(self.allocated):
            bat[block] = first + slot * step
        if sys.byteorder == "little":
            bat.byteswap()
        return bat.tobytes()

    def __repr__(self) -> str:
        blocks = ""
        if self.kind != "fixed":
            blocks = f", {len(self.allocated)} of {self.bat_entries} blocks allocated"
        return f"VhdLayout({self.kind}, {self.size} B disk, {self.file_size} B file{blocks})"

    @property
    def bat_entries(self) -> int:
        return -(-self.size // VHD_BLOCK) if self.kind != "fixed" else 0

    def placement(self) -> Placement:
        """Where the disk's bytes go: at their own offsets (fixed), or into the data of
        their allocated 2 MiB blocks (dynamic, differencing)."""
        if self.kind == "fixed":
            return Placement.identity()
        return packed(VHD_BLOCK, self.allocated, self.data_start + self.bitmap_size,
                      self.slot_size)

    def packing(self) -> Packing | None:
        """A dynamic VHD's blocks placed as they are written (see
        :meth:`FileLayout.packing`): all-zero 2 MiB blocks stay unallocated."""
        if self.kind != "dynamic":
            return None
        return Packing(VHD_BLOCK, self.data_start + self.bitmap_size, self.slot_size)

    def metadata(self) -> Iterator[tuple[int, bytes]]:
        """The head (footer copy, dynamic header, BAT), parent locators, each allocated
        block's sector bitmap, the footer."""
        if self.kind != "fixed":
            yield 0, self._footer + self._header + self._bat()
            yield from self._locators
        bitmaps = (_sector_bitmaps(self._covers, self.allocated)
                   if self.kind == "differencing" and self._covers is not None else None)
        ones = b"\xff" * self.bitmap_size
        for slot in range(len(self.allocated)):
            yield self.data_start + slot * self.slot_size, bitmaps[slot] if bitmaps else ones
        yield self.data_end, self._footer


def _sector_bitmaps(covers: BlockMap, allocated: Sequence[int]) -> list[bytes]:
    """The sector bitmap of each allocated VHD block: the sectors of ``covers``'s blocks
    (most significant bit first, as the spec orders them)."""
    import numpy as np

    bs = covers.block_size
    if bs % SECTOR:
        raise UsageError(f"blocks of {bs} bytes are not whole sectors: no differencing VHD")
    per = bs // SECTOR
    sectors = (covers.positions()[:, None] * per + np.arange(per)).reshape(-1)
    per_block = VHD_BLOCK // SECTOR
    bits = np.zeros((len(allocated), per_block), dtype=bool)
    bits[np.searchsorted(np.asarray(allocated), sectors // per_block), sectors % per_block] = True
    packed = np.packbits(bits, axis=1)
    return [row.tobytes().ljust(_bitmap_size(VHD_BLOCK), b"\0") for row in packed]


# ------------------------------------------------------------------------- writer
def write_vhd(disk: Disk, path: str | os.PathLike[str], *,
              kind: Literal["dynamic", "fixed"] = "dynamic", progress: bool = False,
              unique_id: bytes | None = None, timestamp: datetime | None = None) -> Path:
    """Export ``disk`` to a VHD file at ``path`` (atomically: temp file, fsync, rename);
    see :func:`~blockforensics.formats.layout.write_layout`.  A fixed VHD of a sparse
    source is sparse too."""
    return write_layout(VhdLayout(disk, kind, unique_id=unique_id, timestamp=timestamp), path,
                        progress=progress)


# ------------------------------------------------------------------------- reader
@dataclass(frozen=True, repr=False)
class VhdInfo:
    """A parsed, validated VHD: footer and (dynamic) header fields by name, BAT as an array."""

    path: Path
    file_size: int  # bytes
    footer: Footer
    header: DynamicHeader | None
    bat: np.ndarray  # uint32 file sectors per VHD block, UNUSED if absent; empty when fixed
    notes: tuple[str, ...] = ()  # what was read around (a damaged footer's copy)

    @property
    def kind(self) -> str:
        return KINDS.get(self.footer.disk_type, f"type {self.footer.disk_type}")

    @property
    def size(self) -> int:
        """The disk's size in bytes (the footer's current size, as Hyper-V reads it)."""
        return self.footer.current_size

    @property
    def geometry_size(self) -> int:
        """Bytes covered by the CHS geometry (what QEMU reports for 'vpc '/'qemu' creators)."""
        f = self.footer
        return f.cylinders * f.heads * f.sectors_per_track * SECTOR

    @property
    def created(self) -> datetime:
        return VHD_EPOCH + timedelta(seconds=self.footer.timestamp)

    @property
    def allocated(self) -> np.ndarray:
        """Numbers of the allocated VHD blocks (int64)."""
        import numpy as np

        return np.flatnonzero(self.bat != UNUSED)

    def __repr__(self) -> str:
        f = self.footer
        lines = [
            f"VhdInfo({self.path.name}: {self.kind}, {self.size} B disk, {self.file_size} B file)",
            f"  creator     {f.creator_application!r} v{f.creator_version >> 16}."
            f"{f.creator_version & 0xFFFF} on {f.creator_host_os!r},"
            f" {self.created:%Y-%m-%d %H:%M:%S} UTC",
            f"  geometry    C/H/S {f.cylinders}/{f.heads}/{f.sectors_per_track}"
            f" = {self.geometry_size} B",
            f"  unique id   {uuid.UUID(bytes=f.unique_id)}",
        ]
        if self.header is not None:
            h = self.header
            lines.append(f"  BAT         {self.allocated.size} of {self.bat.size} blocks of "
                         f"{h.block_size} B allocated, table at byte {h.table_offset}")
        if self.kind == "differencing":
            lines.append(f"  parent      {self.parent_name!r}, unique id "
                         f"{uuid.UUID(bytes=self.header.parent_unique_id)}")  # type: ignore[union-attr]
        return "\n".join(lines)

    @property
    def parent_name(self) -> str:
        """The parent's file name recorded in the header ('' unless differencing)."""
        raw = self.header.parent_unicode_name if self.header else b""
        return raw.decode("utf-16-be", errors="replace").rstrip("\0")

    def parent_candidates(self) -> list[Path]:
        """Where the parent may be, in the order to try: each parent locator (relative
        to this file's directory, absolute, file URL), then the recorded name beside it."""
        if self.header is None:
            return []
        here = self.path.parent
        found: list[Path] = []
        entries = self.header.parent_locator_entries
        with open(self.path, "rb") as fh:
            for i in range(0, len(entries), ParentLocator.packed_size()):
                loc = ParentLocator.unpack(entries, i)
                if loc.platform_code not in (LOCATOR_RELATIVE, LOCATOR_ABSOLUTE, LOCATOR_URL):
                    continue
                fh.seek(loc.platform_data_offset)
                data = fh.read(min(loc.platform_data_length, 4096))
                if loc.platform_code == LOCATOR_URL:
                    found.append(Path(unquote(urlparse(data.decode(errors="replace")).path)))
                    continue
                text = data.decode("utf-16-le", errors="replace").rstrip("\0")
                posix = text.replace("\\", "/")
                if loc.platform_code == LOCATOR_RELATIVE or not posix.startswith("/"):
                    found.append(here / posix.removeprefix("./"))
                    found.append(here / posix.rsplit("/", 1)[-1])  # a Windows path: its name
                else:
                    found.append(Path(posix))
        if self.parent_name:
            found.append(here / self.parent_name)
        return found


def _read_at(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset) if offset >= 0 else b""


def _parse(path: Path, fd: int) -> VhdInfo:
    """Read and validate the footer, header and BAT; FormatError on anything wrong."""
    import numpy as np

    file_size = os.fstat(fd).st_size
    name = path.name
    data_end, footer, notes = _footer(fd, file_size, name)
    if footer.file_format_version >> 16 != 1:
        raise FormatError(f"{name}: unsupported VHD version {footer.file_format_version:#x}")
    if footer.disk_type == DISK_FIXED:
        if footer.current_size > data_end:
            raise FormatError(f"{name}: fixed VHD of {footer.current_size} bytes is truncated")
        return VhdInfo(path, file_size, footer, None, np.zeros(0, dtype=np.uint32), notes)
    if footer.disk_type not in (DISK_DYNAMIC, DISK_DIFFERENCING):
        raise FormatError(f"{name}: {KINDS.get(footer.disk_type, 'unknown')} VHDs"
                          f" (disk type {footer.disk_type}) are not supported")
    if footer.current_size > MAX_SIZE:
        raise FormatError(f"{name}: disk size {footer.current_size} exceeds the VHD maximum"
                          f" of {MAX_SIZE} bytes")
    # every offset and count is checked against the file before anything is read or
    # allocated (the spec's "no offset", 0xFFFFFFFFFFFFFFFF, included)
    if not footer.data_offset <= data_end - DynamicHeader.SIZE:
        raise FormatError(f"{name}: no dynamic disk header at byte {footer.data_offset}"
                          f" (the file has {file_size} bytes)")
    raw = _read_at(fd, footer.data_offset, DynamicHeader.SIZE)
    if len(raw) != DynamicHeader.SIZE or raw[:8] != HEADER_COOKIE:
        raise FormatError(f"{name}: no dynamic disk header ('cxsparse') at {footer.data_offset}")
    header = DynamicHeader.unpack(raw)
    if header.checksum != header.expected_checksum():
        raise FormatError(f"{name}: VHD dynamic header checksum mismatch")
    bs = header.block_size
    if bs < SECTOR or bs & (bs - 1):
        raise FormatError(f"{name}: bad VHD block size {bs}")
    if header.max_table_entries * bs < footer.current_size:
        raise FormatError(f"{name}: BAT of {header.max_table_entries} entries"
                          f" cannot cover {footer.current_size} bytes")
    if not header.table_offset <= data_end - header.max_table_entries * 4:
        raise FormatError(f"{name}: BAT of {header.max_table_entries} entries at byte"
                          f" {header.table_offset} extends past the end of the file (truncated?)")
    table = _read_at(fd, header.table_offset, header.max_table_entries * 4)
    if len(table) != header.max_table_entries * 4:
        raise FormatError(f"{name}: BAT extends past the end of the file (truncated?)")
    bat = np.frombuffer(table, dtype=">u4").astype(np.uint32)
    used = bat[bat != UNUSED].astype(np.int64) * SECTOR
    if used.size and used.max() + _bitmap_size(bs) + bs > data_end:
        raise FormatError(f"{name}: a VHD block lies past the end of the file (truncated?)")
    return VhdInfo(path, file_size, footer, header, bat, notes)


def _footer(fd: int, file_size: int, name: str) -> tuple[int, Footer, tuple[str, ...]]:
    """``(data_end, footer, notes)``: the footer at the file's end (512 bytes, or 511 as
    older writers left it), where the data ends; when it is missing or fails its
    checksum, the copy a dynamic or differencing VHD keeps at byte 0 (VHD specification
    2006, "Hard Disk Footer Format": "a copy of the hard disk footer … for
    redundancy"), with a note.  FormatError when neither is a valid footer."""
    data_end = file_size - Footer.SIZE
    raw = _read_at(fd, data_end, Footer.SIZE)
    if raw[:8] != VHD_COOKIE:  # older writers leave a 511-byte footer
        raw = _read_at(fd, data_end + 1, Footer.SIZE - 1) + b"\0"
        data_end += raw[:8] == VHD_COOKIE
    end_ok = len(raw) == Footer.SIZE and raw[:8] == VHD_COOKIE
    if end_ok and (footer := Footer.unpack(raw)).checksum == footer.expected_checksum():
        return data_end, footer, ()
    problem = "fails its checksum" if end_ok else "is missing"
    copy = _read_at(fd, 0, Footer.SIZE)
    if len(copy) == Footer.SIZE and copy[:8] == VHD_COOKIE and file_size >= 2 * Footer.SIZE:
        spare = Footer.unpack(copy)
        if (spare.checksum == spare.expected_checksum()
                and spare.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING)):
            end = data_end if end_ok else file_size  # a damaged footer still takes its place
            return end, spare, (f"{name}: the footer at the end of the file {problem}; its "
                                "copy at byte 0 was read",)
    if not end_ok:
        hint = " (truncated?)" if copy[:8] == VHD_COOKIE else ""
        raise FormatError(f"{name}: no VHD footer ('conectix') at the end of the file{hint}")
    raise FormatError(f"{name}: VHD footer checksum mismatch")


def vhd_info(path: str | os.PathLike[str]) -> VhdInfo:
    """Parse and validate the VHD at ``path`` (FormatError if it is not a valid one)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise UsageError(f"{path}: cannot open ({exc.strerror})") from exc
    try:
        return _parse(path, fd)
    finally:
        os.close(fd)


class VhdDisk(Disk):
    """A fixed, dynamic or differencing VHD file read as a Disk of ``info.size`` bytes.

    Like QEMU, data of allocated dynamic blocks is read regardless of their
    sector bitmaps; unallocated blocks read as zeros.  A differencing VHD reads
    a sector from its own block when the block is allocated and the sector's
    bitmap bit is set, else from its parent: ``parent`` (a path) when given,
    else the first of its locators that names a VHD with the unique id the
    header records (a mismatch is a FormatError: the wrong parent gives wrong
    bytes).
    """

    def __init__(self, path: str | os.PathLike[str], block_size: int = 4096, *,
                 parent: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot open ({exc.strerror})") from exc
        self.parent: VhdDisk | None = None
        try:
            self.info = _parse(self.path, self._fd)
            if self.info.kind == "differencing":
                self.parent = self._open_parent(parent, block_size)
            elif parent is not None:
                raise UsageError(f"{self.path.name}: a {self.info.kind} VHD has no parent")
        except BaseException:
            self.close()
            raise
        self.size = self.info.size
        self.notes = self.info.notes + (self.parent.notes if self.parent else ())
        self.block_size = block_size
        header = self.info.header
        self._vblock = header.block_size if header else 0
        self._bitmap = _bitmap_size(self._vblock) if header else 0

    def _open_parent(self, given: str | os.PathLike[str] | None, block_size: int) -> VhdDisk:
        wanted = self.info.header.parent_unique_id  # type: ignore[union-attr]
        name = self.path.name
        candidates = [Path(given)] if given is not None else self.info.parent_candidates()
        for candidate in candidates:
            if candidate.resolve() == self.path.resolve() or not candidate.is_file():
                continue
            parent = VhdDisk(candidate, block_size)
            if parent.info.footer.unique_id == wanted:
                return parent
            parent.close()
            if given is not None:
                raise FormatError(f"{name}: {candidate} is not its parent (unique id "
                                  f"{uuid.UUID(bytes=parent.info.footer.unique_id)}, the child "
                                  f"expects {uuid.UUID(bytes=wanted)})")
        if given is not None:
            raise UsageError(f"{given}: no such parent file")
        raise FormatError(f"{name}: parent {self.info.parent_name!r} not found by its locators "
                          f"(give it with --parent FILE)")

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        import numpy as np

        out = np.zeros((count, self.block_size), dtype=np.uint8)
        flat = out.reshape(-1)
        offset = start * self.block_size
        n = max(0, min(flat.size, self.size - offset))
        if self.info.header is None:
            if n:
                os.preadv(self._fd, [flat[:n].data], offset)
            return out
        if self.parent is not None and n:
            below = self.parent.read(offset, n)
            flat[:len(below)] = np.frombuffer(below, dtype=np.uint8)
        pos = 0
        while pos < n:
            block, within = divmod(offset + pos, self._vblock)
            piece = min(n - pos, self._vblock - within)
            entry = int(self.info.bat[block])
            if entry != UNUSED:
                at = entry * SECTOR + self._bitmap + within
                dst = flat[pos:pos + piece]
                if self.parent is None:
                    os.preadv(self._fd, [dst.data], at)
                else:
                    self._merge(entry, within, dst, at)
            pos += piece
        return out

    def _merge(self, entry: int, within: int, dst: np.ndarray, at: int) -> None:
        """Overwrite ``dst`` (bytes ``within`` .. of a block) with the block's own sectors."""
        import numpy as np

        bitmap = np.frombuffer(os.pread(self._fd, self._bitmap, entry * SECTOR), np.uint8)
        first, last = within // SECTOR, (within + dst.size - 1) // SECTOR
        own = np.unpackbits(bitmap)[first:last + 1].astype(bool)
        if not own.any():
            return
        mine = np.frombuffer(os.pread(self._fd, dst.size, at), np.uint8)
        if own.all():
            dst[:mine.size] = mine
            return
        mask = np.repeat(own, SECTOR)[within - first * SECTOR:][:mine.size]
        dst[:mine.size][mask] = mine[mask]

    def present(self) -> BlockMap:
        """Disk blocks overlapping allocated VHD blocks (all of them for a fixed VHD),
        and those present in the parent of a differencing VHD."""
        import numpy as np

        from blockforensics.blockmap import BlockMap

        if self.info.header is None:
            return super().present()
        allocated = self.info.bat != UNUSED
        bs, n = self.block_size, self.n_blocks
        per, rem = divmod(self._vblock, bs)
        if rem == 0 and per % 8 == 0:  # each VHD block is whole bytes of the packed map
            bits = np.repeat(np.where(allocated, 0xFF, 0).astype(np.uint8), per // 8)
            own = BlockMap(n, bs, bits[: (n + 7) // 8])
        else:
            first = np.arange(n, dtype=np.int64) * bs // self._vblock
            last = np.minimum((np.arange(1, n + 1, dtype=np.int64) * bs - 1) // self._vblock,
                              allocated.size - 1)
            counts = np.concatenate([[0], np.cumsum(allocated)])
            own = BlockMap.from_bools(counts[last + 1] - counts[first] > 0, bs)
        if self.parent is None:
            return own
        below = np.zeros(n, dtype=bool)
        parent = self.parent.present().positions()
        below[parent[parent < n]] = True
        return own | BlockMap.from_bools(below, bs)

    def close(self) -> None:
        if self.parent is not None:
            self.parent.close()
            self.parent = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class VhdFormat(Format):
    """Microsoft VHD, fixed, dynamic or differencing (the 'conectix' footer)."""

    name: ClassVar[str] = "vhd"
    priority: ClassVar[int] = 20

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return is_vhd(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None, parent: str | os.PathLike[str] | None = None
             ) -> Disk:
        if point not in (None, 0, "0"):
            raise UsageError(f"{path}: a VHD has a single point (0)")
        return VhdDisk(path, parent=parent)

"""VHD (Microsoft Virtual Hard Disk, spec v1.0): fixed and dynamic, written and read.

A *fixed* VHD is the disk's bytes followed by a 512-byte footer.  A *dynamic*
VHD is a footer copy, a dynamic-disk header, a block allocation table (BAT:
one big-endian uint32 per 2 MiB VHD block, the file sector of that block or
0xFFFFFFFF), the allocated blocks (each a sector bitmap padded to 512 bytes and
then 2 MiB of data), and the footer.

:class:`VhdLayout` computes a VHD file's whole layout from a :class:`Disk`
without reading its data.  :func:`write_vhd` writes the layout's metadata and
has the disk write its data where the layout places it (file to file where the
reader can); :mod:`blockforensics.expose` serves the same file over FUSE from
:meth:`VhdLayout.readinto`, which synthesises any byte range on demand (a test
checks that both give the same bytes).  :class:`VhdDisk` reads fixed and
dynamic VHDs (ours, QEMU's, Hyper-V's) as a Disk.

Units: ``*_size`` and ``*offset`` fields are bytes, BAT entries are 512-byte
sectors, VHD blocks are 2 MiB (``VHD_BLOCK``), Disk blocks are ``disk.block_size``.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError, UsageError
from blockforensics.fileio import atomic_writer, writeback_progress
from blockforensics.formats.base import Disk, Format, InPlaceDisk
from blockforensics.formats.placement import PlacedWriter, Placement
from blockforensics.progress import progress_bar

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource

SECTOR = 512
#: bytes of data per dynamic-VHD block (the spec's default, used by every writer)
VHD_BLOCK = 2 * 1024 * 1024
#: BAT entry of an unallocated block
UNUSED = 0xFFFFFFFF
#: placement base of an unallocated block: any byte placed there lands before the file
UNPLACED = -(1 << 62)
#: largest disk QEMU opens (VHD_MAX_SECTORS = 0xFF000000 sectors = 2040 GiB), bytes
MAX_SIZE = 0xFF000000 * SECTOR
#: VHD timestamps count seconds from here
VHD_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING = 2, 3, 4
KINDS = {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic", DISK_DIFFERENCING: "differencing"}

#: Creator application written into the footer.  QEMU's vpc driver sizes a disk
#: from the CHS geometry unless the creator is one it knows to use the footer's
#: current size ("win ", "qem2", "d2v ", "CTXS", "tap\\0"; QEMU >= 9.2: anything
#: but "vpc " and "qemu").  "qem2" is what ``qemu-img create -o force_size=on``
#: writes, so every QEMU since 2.6 and Hyper-V (which always uses current size)
#: report exactly the source's size, whatever its CHS geometry.
CREATOR_APPLICATION = b"qem2"
CREATOR_VERSION = 0x00010000  # this writer's layout, version 1.0
CREATOR_HOST_OS = b"Wi2k"


def _f(fmt: str) -> dict[str, str]:
    """Field metadata: the field's struct code (big-endian record)."""
    return {"fmt": fmt}


R = TypeVar("R", bound="_Record")


class _Record:
    """A big-endian on-disk record declared as a dataclass whose fields carry struct codes.

    ``_TAIL`` is trailing reserved padding; the checksum is the one's complement
    of the byte sum of the record with the checksum field zero.
    """

    _TAIL: ClassVar[str]
    SIZE: ClassVar[int]

    @classmethod
    @cache
    def _struct(cls) -> struct.Struct:
        codes = "".join(f.metadata["fmt"] for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return struct.Struct(">" + codes + cls._TAIL)

    def pack(self) -> bytes:
        return self._struct().pack(*dataclasses.astuple(self))  # type: ignore[call-overload]

    @classmethod
    def unpack(cls: type[R], buf: bytes) -> R:
        return cls(*cls._struct().unpack(buf))

    def expected_checksum(self) -> int:
        zeroed = dataclasses.replace(self, checksum=0).pack()  # type: ignore[type-var]
        return ~sum(zeroed) & 0xFFFFFFFF

    def sealed(self: R) -> R:
        """A copy with the correct checksum."""
        return dataclasses.replace(self, checksum=self.expected_checksum())  # type: ignore[type-var]


@dataclass(frozen=True)
class Footer(_Record):
    """The hard disk footer: last 512 bytes of every VHD, copied at offset 0 of dynamic ones."""

    cookie: bytes = field(metadata=_f("8s"))  # b"conectix"
    features: int = field(metadata=_f("I"))  # 0x2: the reserved bit, always set
    file_format_version: int = field(metadata=_f("I"))  # 0x00010000
    data_offset: int = field(metadata=_f("Q"))  # bytes: dynamic header, or NO_OFFSET (fixed)
    timestamp: int = field(metadata=_f("I"))  # seconds since 2000-01-01 00:00:00 UTC
    creator_application: bytes = field(metadata=_f("4s"))
    creator_version: int = field(metadata=_f("I"))  # major << 16 | minor
    creator_host_os: bytes = field(metadata=_f("4s"))  # b"Wi2k" or b"Mac "
    original_size: int = field(metadata=_f("Q"))  # bytes, at creation
    current_size: int = field(metadata=_f("Q"))  # bytes, the disk's size
    cylinders: int = field(metadata=_f("H"))  # disk geometry (C, H, S)
    heads: int = field(metadata=_f("B"))
    sectors_per_track: int = field(metadata=_f("B"))
    disk_type: int = field(metadata=_f("I"))  # DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING
    checksum: int = field(metadata=_f("I"))
    unique_id: bytes = field(metadata=_f("16s"))
    saved_state: int = field(metadata=_f("B"))  # 1 while a VM's saved state refers to it
    _TAIL: ClassVar[str] = "427x"  # reserved, zero


@dataclass(frozen=True)
class DynamicHeader(_Record):
    """The dynamic disk header (1024 bytes at the footer's ``data_offset``)."""

    cookie: bytes = field(metadata=_f("8s"))  # b"cxsparse"
    data_offset: int = field(metadata=_f("Q"))  # NO_OFFSET (unused)
    table_offset: int = field(metadata=_f("Q"))  # bytes: the BAT
    header_version: int = field(metadata=_f("I"))  # 0x00010000
    max_table_entries: int = field(metadata=_f("I"))  # BAT entries (VHD blocks)
    block_size: int = field(metadata=_f("I"))  # bytes of data per VHD block
    checksum: int = field(metadata=_f("I"))
    parent_unique_id: bytes = field(metadata=_f("16s"))  # differencing disks only
    parent_timestamp: int = field(metadata=_f("I"))
    reserved: int = field(metadata=_f("I"))
    parent_unicode_name: bytes = field(metadata=_f("512s"))  # UTF-16BE
    parent_locator_entries: bytes = field(metadata=_f("192s"))  # 8 entries of 24 bytes
    _TAIL: ClassVar[str] = "256x"  # reserved, zero


Footer.SIZE = Footer._struct().size
DynamicHeader.SIZE = DynamicHeader._struct().size
assert (Footer.SIZE, DynamicHeader.SIZE) == (512, 1024)


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
class VhdLayout:
    """The byte layout of a VHD file made from ``disk``, synthesised on demand.

    Nothing is read from the disk here: the dynamic layout allocates a 2 MiB VHD
    block iff any byte of it lies in ``disk.present()``.  The VHD's size is the
    disk's size rounded up to a whole 512-byte sector (VHD sizes are sector
    multiples; sources normally are already), and the data after the disk's end
    reads as zeros.  Allocated blocks follow the BAT in disk order, each with an
    all-ones sector bitmap.

    ``unique_id`` (16 bytes) and ``timestamp`` default to random and now; pin
    them to get byte-identical files from the same disk.
    """

    def __init__(self, disk: Disk, kind: Literal["dynamic", "fixed"] = "dynamic", *,
                 unique_id: bytes | None = None, timestamp: datetime | None = None):
        if kind not in ("dynamic", "fixed"):
            raise UsageError(f"VHD kind must be 'dynamic' or 'fixed', not {kind!r}")
        self.disk = disk
        self.kind = kind
        #: the disk's blocks that may hold data (the others read as zeros)
        self.present = disk.present()
        self.size = -(-disk.size // SECTOR) * SECTOR
        if self.size > MAX_SIZE:
            raise UsageError(f"disk of {disk.size} bytes exceeds the VHD maximum of {MAX_SIZE}")
        cylinders, heads, spt = chs_geometry(self.size // SECTOR)
        dynamic = kind == "dynamic"
        self.footer: Footer = Footer(
            cookie=FOOTER_COOKIE, features=0x2, file_format_version=0x00010000,
            data_offset=Footer.SIZE if dynamic else NO_OFFSET, timestamp=_timestamp(timestamp),
            creator_application=CREATOR_APPLICATION, creator_version=CREATOR_VERSION,
            creator_host_os=CREATOR_HOST_OS, original_size=self.size, current_size=self.size,
            cylinders=cylinders, heads=heads, sectors_per_track=spt,
            disk_type=DISK_DYNAMIC if dynamic else DISK_FIXED, checksum=0,
            unique_id=unique_id if unique_id is not None else uuid.uuid4().bytes,
            saved_state=0,
        ).sealed()
        footer = self.footer.pack()
        self.bitmap_size = _bitmap_size(VHD_BLOCK) if dynamic else 0
        #: bytes per allocated block in the file (bitmap + data); the whole disk when fixed
        self.slot_size = self.bitmap_size + VHD_BLOCK if dynamic else self.size
        if dynamic:
            n_entries = -(-self.size // VHD_BLOCK)
            table_offset = Footer.SIZE + DynamicHeader.SIZE
            bat_bytes = -(-n_entries * 4 // SECTOR) * SECTOR
            self.data_start = table_offset + bat_bytes
            #: VHD block numbers of the allocated blocks, in file order
            self.allocated = self._allocated(self.present, n_entries)
            self._slot_disk_offsets = self.allocated * VHD_BLOCK
            self.bat = np.full(bat_bytes // 4, UNUSED, dtype=">u4")
            self.bat[self.allocated] = (
                self.data_start + np.arange(self.allocated.size, dtype=np.int64) * self.slot_size
            ) // SECTOR
            header = DynamicHeader(
                cookie=HEADER_COOKIE, data_offset=NO_OFFSET, table_offset=table_offset,
                header_version=0x00010000, max_table_entries=n_entries, block_size=VHD_BLOCK,
                checksum=0, parent_unique_id=bytes(16), parent_timestamp=0, reserved=0,
                parent_unicode_name=bytes(512), parent_locator_entries=bytes(192),
            ).sealed()
            self._head = footer + header.pack() + self.bat.tobytes()
            self.data_end = self.data_start + self.allocated.size * self.slot_size
        else:
            self.data_start, self._head = 0, b""
            self.allocated = np.zeros(0, dtype=np.int64)
            self.bat = np.zeros(0, dtype=">u4")
            self.data_end = self.size
            self._slot_disk_offsets = np.zeros(1, dtype=np.int64)
        self._footer = footer
        #: bytes of the whole VHD file
        self.file_size = self.data_end + Footer.SIZE

    @staticmethod
    def _allocated(present: BlockMap, n_entries: int) -> np.ndarray:
        """VHD block numbers holding any byte of ``present`` (int64, sorted)."""
        starts, lengths = present.run_arrays()
        first = starts * present.block_size // VHD_BLOCK
        stop = np.minimum(-(-(starts + lengths) * present.block_size // VHD_BLOCK), n_entries)
        flags = np.zeros(n_entries + 1, dtype=np.int64)
        np.add.at(flags, first, 1)
        np.add.at(flags, stop, -1)
        return np.flatnonzero(np.cumsum(flags[:-1]) > 0)

    def __repr__(self) -> str:
        blocks = ""
        if self.kind == "dynamic":
            blocks = f", {self.allocated.size} of {self.bat_entries} blocks allocated"
        return f"VhdLayout({self.kind}, {self.size} B disk, {self.file_size} B file{blocks})"

    @property
    def bat_entries(self) -> int:
        return -(-self.size // VHD_BLOCK) if self.kind == "dynamic" else 0

    # ---------------------------------------------------------------- reading
    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the VHD file from byte ``offset`` (short at the end)."""
        buf = bytearray(max(0, min(length, self.file_size - offset)))
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def readinto(self, offset: int, out: memoryview) -> int:
        """Fill ``out`` with the file's bytes from ``offset``; returns bytes filled."""
        n = max(0, min(len(out), self.file_size - offset))
        dst = np.frombuffer(out, dtype=np.uint8, count=n)
        pos, end = offset, offset + n
        while pos < end:
            at = dst[pos - offset:]
            if pos < self.data_start:
                piece = min(end, self.data_start) - pos
                at[:piece] = np.frombuffer(self._head, np.uint8, piece, pos)
            elif pos >= self.data_end:
                piece = end - pos
                at[:piece] = np.frombuffer(self._footer, np.uint8, piece, pos - self.data_end)
            else:
                slot, within = divmod(pos - self.data_start, self.slot_size)
                piece = min(end, self.data_start + (slot + 1) * self.slot_size) - pos
                if within < self.bitmap_size:
                    piece = min(piece, self.bitmap_size - within)
                    at[:piece] = 0xFF
                else:
                    disk_offset = int(self._slot_disk_offsets[slot]) + within - self.bitmap_size
                    self._disk_into(disk_offset, at[:piece])
            pos += piece
        return n

    def _disk_into(self, offset: int, dst: np.ndarray) -> None:
        """Disk bytes from ``offset`` into ``dst``; zeros past the disk's end."""
        disk = self.disk
        n = max(0, min(dst.size, disk.size - offset))
        bs = disk.block_size
        if n and offset % bs == 0 and n % bs == 0 and isinstance(disk, InPlaceDisk):
            disk.read_blocks_into(offset // bs, dst[:n].reshape(-1, bs))  # no copy
        elif n:
            first, last = offset // bs, (offset + n - 1) // bs
            skip = offset - first * bs
            dst[:n] = disk.read_blocks(first, last - first + 1).reshape(-1)[skip:skip + n]
        dst[n:] = 0

    def placement(self) -> Placement:
        """Where :func:`write_vhd` puts the disk's bytes: at their own offsets (fixed),
        or into the data of their allocated 2 MiB blocks (dynamic)."""
        if self.kind == "fixed":
            return Placement.identity()
        bases = np.full(self.bat_entries, UNPLACED, dtype=np.int64)
        bases[self.allocated] = (self.data_start + self.bitmap_size
                                 + np.arange(self.allocated.size, dtype=np.int64) * self.slot_size)
        return Placement(VHD_BLOCK, bases)

    def metadata(self) -> Iterator[tuple[int, bytes]]:
        """``(file offset, bytes)`` of everything but the disk's data: the head (footer
        copy, dynamic header, BAT), each allocated block's sector bitmap, the footer."""
        if self._head:
            yield 0, self._head
        bitmap = b"\xff" * self.bitmap_size
        for slot in range(self.allocated.size):
            yield self.data_start + slot * self.slot_size, bitmap
        yield self.data_end, self._footer


# ------------------------------------------------------------------------- writer
def write_vhd(disk: Disk, path: str | os.PathLike[str], *,
              kind: Literal["dynamic", "fixed"] = "dynamic", progress: bool = False,
              unique_id: bytes | None = None, timestamp: datetime | None = None) -> Path:
    """Export ``disk`` to a VHD file at ``path`` (atomically: temp file, fsync, rename).

    The metadata is written from :class:`VhdLayout`, the data by ``disk.write_to``
    into the layout's placement: only present blocks are read, file to file where
    the reader can, and the rest of the file is left as holes (zeros), so a fixed
    VHD of a sparse source is sparse too.
    """
    layout = VhdLayout(disk, kind, unique_id=unique_id, timestamp=timestamp)
    path = Path(path)
    data_bytes = min(layout.present.count() * disk.block_size, disk.size)
    with atomic_writer(path) as fh, progress_bar(data_bytes, path.name, progress) as bar:
        fd = fh.fileno()
        os.ftruncate(fd, layout.file_size)
        for offset, data in layout.metadata():
            os.pwrite(fd, data, offset)
        with PlacedWriter(fd, disk.size, layout.placement(),
                          writeback_progress(fd, bar.update)) as out:
            disk.write_to(out)
        os.fchmod(fd, 0o644)
    return path


# ------------------------------------------------------------------------- reader
@dataclass(frozen=True, repr=False)
class VhdInfo:
    """A parsed, validated VHD: footer and (dynamic) header fields by name, BAT as an array."""

    path: Path
    file_size: int  # bytes
    footer: Footer
    header: DynamicHeader | None
    bat: np.ndarray  # uint32 file sectors per VHD block, UNUSED if absent; empty when fixed

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
        return "\n".join(lines)


def _read_at(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset) if offset >= 0 else b""


def _parse(path: Path, fd: int) -> VhdInfo:
    """Read and validate the footer, header and BAT; FormatError on anything wrong."""
    file_size = os.fstat(fd).st_size
    name = path.name
    data_end = file_size - Footer.SIZE
    raw = _read_at(fd, data_end, Footer.SIZE)
    if raw[:8] != FOOTER_COOKIE:  # older writers leave a 511-byte footer
        data_end += 1
        raw = _read_at(fd, data_end, Footer.SIZE - 1) + b"\0"
    if len(raw) != Footer.SIZE or raw[:8] != FOOTER_COOKIE:
        hint = " (truncated?)" if _read_at(fd, 0, 8) == FOOTER_COOKIE else ""
        raise FormatError(f"{name}: no VHD footer ('conectix') at the end of the file{hint}")
    footer = Footer.unpack(raw)
    if footer.checksum != footer.expected_checksum():
        raise FormatError(f"{name}: VHD footer checksum mismatch")
    if footer.file_format_version >> 16 != 1:
        raise FormatError(f"{name}: unsupported VHD version {footer.file_format_version:#x}")
    if footer.disk_type == DISK_FIXED:
        if footer.current_size > data_end:
            raise FormatError(f"{name}: fixed VHD of {footer.current_size} bytes is truncated")
        return VhdInfo(path, file_size, footer, None, np.zeros(0, dtype=np.uint32))
    if footer.disk_type != DISK_DYNAMIC:
        raise FormatError(f"{name}: {KINDS.get(footer.disk_type, 'unknown')} VHDs"
                          f" (disk type {footer.disk_type}) are not supported")
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
    table = _read_at(fd, header.table_offset, header.max_table_entries * 4)
    if len(table) != header.max_table_entries * 4:
        raise FormatError(f"{name}: BAT extends past the end of the file (truncated?)")
    bat = np.frombuffer(table, dtype=">u4").astype(np.uint32)
    used = bat[bat != UNUSED].astype(np.int64) * SECTOR
    if used.size and used.max() + _bitmap_size(bs) + bs > data_end:
        raise FormatError(f"{name}: a VHD block lies past the end of the file (truncated?)")
    return VhdInfo(path, file_size, footer, header, bat)


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
    """A fixed or dynamic VHD file read as a Disk of ``info.size`` bytes.

    Like QEMU, data of allocated dynamic blocks is read regardless of their
    sector bitmaps; unallocated blocks read as zeros.
    """

    def __init__(self, path: str | os.PathLike[str], block_size: int = 4096):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot open ({exc.strerror})") from exc
        try:
            self.info = _parse(self.path, self._fd)
        except BaseException:
            self.close()
            raise
        self.size = self.info.size
        self.block_size = block_size
        header = self.info.header
        self._vblock = header.block_size if header else 0
        self._bitmap = _bitmap_size(self._vblock) if header else 0

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        out = np.zeros((count, self.block_size), dtype=np.uint8)
        flat = out.reshape(-1)
        offset = start * self.block_size
        n = max(0, min(flat.size, self.size - offset))
        if self.info.header is None:
            if n:
                os.preadv(self._fd, [flat[:n].data], offset)
            return out
        pos = 0
        while pos < n:
            block, within = divmod(offset + pos, self._vblock)
            piece = min(n - pos, self._vblock - within)
            entry = int(self.info.bat[block])
            if entry != UNUSED:
                at = entry * SECTOR + self._bitmap + within
                os.preadv(self._fd, [flat[pos:pos + piece].data], at)
            pos += piece
        return out

    def present(self) -> BlockMap:
        """Disk blocks overlapping allocated VHD blocks (all of them for a fixed VHD)."""
        if self.info.header is None:
            return super().present()
        allocated = self.info.bat != UNUSED
        bs, n = self.block_size, self.n_blocks
        per, rem = divmod(self._vblock, bs)
        if rem == 0 and per % 8 == 0:  # each VHD block is whole bytes of the packed map
            bits = np.repeat(np.where(allocated, 0xFF, 0).astype(np.uint8), per // 8)
            return BlockMap(n, bs, bits[: (n + 7) // 8])
        first = np.arange(n, dtype=np.int64) * bs // self._vblock
        last = np.minimum((np.arange(1, n + 1, dtype=np.int64) * bs - 1) // self._vblock,
                          allocated.size - 1)
        counts = np.concatenate([[0], np.cumsum(allocated)])
        return BlockMap.from_bools(counts[last + 1] - counts[first] > 0, bs)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class VhdFormat(Format):
    """Microsoft VHD, fixed or dynamic (the 'conectix' footer)."""

    name: ClassVar[str] = "vhd"
    priority: ClassVar[int] = 20

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
                size = fh.seek(0, os.SEEK_END)
                tails = []
                for back in (Footer.SIZE, Footer.SIZE - 1):
                    if size >= back:
                        fh.seek(size - back)
                        tails.append(fh.read(8))
        except OSError:
            return False
        return FOOTER_COOKIE in (head, *tails)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        if point not in (None, 0, "0"):
            raise UsageError(f"{path}: a VHD has a single point (0)")
        return VhdDisk(path)

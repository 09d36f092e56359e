"""VirtualBox VDI images (fixed and dynamic) as sources.

The project's own reader: dissect.hypervisor 3.21's reads every block of a read
spanning several VDI blocks from the first one's place in the file (and takes
version-0 headers for version-1 ones).  A VDI (VirtualBox's ``VDICore.h``) is a
64-byte text pre-header, the signature ``0xbeda107f`` and version, a header giving
the disk's size, the block size (1 MiB as written by VirtualBox and qemu-img) and
where the block map and data lie; the block map holds one little-endian u32 per
disk block: the index of its data block in the file, or ``0xffffffff`` (free: not
allocated, reads as zeros) or ``0xfffffffe`` (zero).  A fixed VDI maps every block.

``present()`` is the blocks the map allocates, so a backup never reads the others;
``write_to`` copies the allocated blocks file to file.  Differencing and undo VDIs
(their parent found by UUID in VirtualBox's media registry) are refused by name.

Units: sizes and offsets are bytes.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk, Format, InPlaceDisk
from blockforensics.formats.signature import VDI_SIGNATURE, VDI_SIGNATURE_OFFSET, is_vdi
from blockforensics.fs.base import covered

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource
    from blockforensics.formats.placement import PlacedWriter

#: image types (``VDI_IMAGE_TYPE``)
NORMAL, FIXED, UNDO, DIFF = 1, 2, 3, 4
#: block-map entries that are not data blocks
BLOCK_FREE, BLOCK_ZERO = 0xFFFFFFFF, 0xFFFFFFFE
#: the header from the signature on (``VDIPREHEADER`` less its text, ``VDIHEADER1``
#: up to ``cBlocksAllocated``): signature, version, cbHeader, type, flags, comment,
#: offBlocks, offData, legacy geometry (4 u32), dummy, cbDisk, cbBlock, cbBlockExtra,
#: cBlocks, cBlocksAllocated
_HEADER = struct.Struct("<IIIII256sII16sIQIIII")
_MAX_BLOCKS = 1 << 28  # 256 Ti blocks of 1 MiB: a larger map is a damaged header


class VdiDisk(InPlaceDisk):
    """A fixed or dynamic VDI read through its block map."""

    def __init__(self, path: str | os.PathLike[str], block_size: int = 4096):
        self.path = os.fspath(path)
        self.block_size = block_size
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot open ({exc.strerror})") from exc
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _bad(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: not a readable VDI image ({what})")

    def _read_header(self) -> None:
        file_size = os.fstat(self._fd).st_size
        raw = os.pread(self._fd, _HEADER.size, VDI_SIGNATURE_OFFSET)
        if len(raw) < _HEADER.size:
            raise self._bad("its header is cut off")
        (signature, version, _, kind, _, _, off_blocks, off_data, _, _, size, unit, extra,
         count, _) = _HEADER.unpack(raw)
        if signature.to_bytes(4, "little") != VDI_SIGNATURE:
            raise self._bad(f"no VDI signature at byte {VDI_SIGNATURE_OFFSET}")
        if version >> 16 != 1:
            raise self._bad(f"header version {version >> 16}.{version & 0xFFFF}; only 1.x "
                            "is read")
        if kind in (UNDO, DIFF):
            raise UsageError(f"{self.path}: a {'differencing' if kind == DIFF else 'undo'} VDI "
                             "(its parent is found in VirtualBox's media registry): make a "
                             "full image first (VBoxManage clonemedium DISK full.vdi)")
        if kind not in (NORMAL, FIXED):
            raise self._bad(f"image type {kind}")
        if unit < 512 or unit & (unit - 1) or extra % 512 or extra > 1 << 30:
            raise self._bad(f"block size {unit} with {extra} extra bytes")
        if count > _MAX_BLOCKS or count * unit < size:
            raise self._bad(f"{count} blocks of {unit} bytes for a disk of {size} bytes")
        table = os.pread(self._fd, 4 * count, off_blocks)
        if len(table) != 4 * count:
            raise self._bad(f"its block map at byte {off_blocks} runs past the end of the file")
        entries = np.frombuffer(table, dtype="<u4").astype(np.int64)
        data = entries < BLOCK_ZERO
        stride = unit + extra
        #: file offset of each VDI block's data; -1 where it reads as zeros
        self._where = np.where(data, off_data + entries * stride + extra, -1)
        ends = self._where[data] + unit
        if ends.size and int(ends.max()) > file_size:
            last = int(np.flatnonzero(data)[np.argmax(ends)])
            raise FormatError(f"{self.path}: VDI block {last} lies past the end of the file "
                              f"({file_size} bytes): a truncated VDI image")
        self.size = int(size)
        self.kind = "fixed" if kind == FIXED else "dynamic"
        self.unit = int(unit)

    def read_blocks_into(self, start: int, out: np.ndarray) -> None:
        flat = out.reshape(-1)
        view = flat.data
        offset = start * self.block_size
        end = min(offset + len(flat), self.size)
        done = 0  # bytes of ``flat`` filled
        while offset + done < end:
            at = offset + done
            index, within = divmod(at, self.unit)
            n = min(self.unit - within, end - at)
            source = int(self._where[index])
            if source < 0:
                flat[done : done + n] = 0
            else:
                # extend over following blocks stored right after this one (a fixed VDI: all)
                source += within
                while (at + n < end and int(self._where[(at + n) // self.unit])
                       == source + n):
                    n += min(self.unit, end - at - n)
                got = os.preadv(self._fd, [view[done : done + n]], source)
                if got != n:
                    raise FormatError(f"{self.path}: {n} bytes at byte {at} read as {got}: a "
                                      "truncated VDI image")
            done += n
        flat[done:] = 0  # past the end of the disk

    def _allocated(self) -> np.ndarray:
        """Indexes of the VDI blocks holding data."""
        return np.flatnonzero(self._where >= 0)

    def present(self) -> BlockMap:
        """Blocks lying in VDI blocks the map allocates (free and zero ones read zeros)."""
        first = self._allocated().astype(np.int64) * self.unit
        stops = np.minimum(first + self.unit, self.size)
        flags = covered(first // self.block_size, -(-stops // self.block_size), self.n_blocks)
        return BlockMap.from_bools(flags, self.block_size)

    def write_to(self, out: PlacedWriter) -> None:
        """Have the allocated VDI blocks copied file to file (see :meth:`Disk.write_to`)."""
        blocks = self._allocated()
        starts = blocks.astype(np.int64) * self.unit
        lengths = np.minimum(starts + self.unit, self.size) - starts
        keep = lengths > 0
        out.copy(self._fd, starts[keep], self._where[blocks][keep], lengths[keep])

    def __repr__(self) -> str:
        return (f"VdiDisk({self.size} B = {self.n_blocks} blocks × {self.block_size} B "
                f"{self.path}, {self.kind}, {self._allocated().size} of {self._where.size} "
                f"VDI blocks allocated)")

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1


class VdiFormat(Format):
    """VirtualBox VDI, fixed or dynamic."""

    name: ClassVar[str] = "vdi"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return is_vdi(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        if point not in (None, 0, "0", -1, "-1"):
            raise UsageError(f"{path}: a disk image has a single point (0)")
        return VdiDisk(path)

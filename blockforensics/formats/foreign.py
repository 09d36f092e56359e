"""Reader plugins for other hypervisors' disk images.

VHDX (Hyper-V, differencing ones by their parent locator) and VMDK (VMware: a
descriptor or a monolithic sparse file, with its extents and parent) are read with
Fox-IT's dissect.hypervisor parsers rather than new ones; qcow2 (QEMU, over a chain
of backing files) with :class:`~blockforensics.formats.qcow2.Qcow2Disk`, the
project's own reader (dissect 3.21's misreads several of what qemu-img makes).
Each is probed by its signature only, and opened as a
:class:`~blockforensics.formats.base.Disk` like every other source, so
``backup``, ``export`` and the forensic commands take them as they are.

``present()`` is read from each format's allocation table, so a backup reads only
what the image maps: the VHDX BAT (payload blocks fully or partially present; a
block not present falls through to the parent), the VMDK grain directory and
tables (grains holding data; an absent grain falls through to the parent; flat
extents: their files' data extents), the qcow2 L1/L2 tables (see its reader).  A
block is present when any byte of it lies in a present unit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk, Format
from blockforensics.formats.signature import is_qcow2, is_vhdx, is_vmdk
from blockforensics.fs.base import covered

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource

SECTOR = 512

#: ``allocated(block_size, n_blocks)``: flags of the disk blocks an image maps
Allocated = Callable[[int, int], np.ndarray]


class StreamDisk(Disk):
    """A Disk over a seekable, readable stream of ``size`` bytes (a dissect image of
    format ``kind``); ``allocated`` says which blocks its allocation tables map (None:
    every block).  What the stream fails to read (a damaged image: dissect raises its
    own errors and struct's alike, or reads short) is a one-line FormatError."""

    def __init__(self, path: str | os.PathLike[str], kind: str, stream: Any, size: int,
                 keep: list[Any], block_size: int = 4096, allocated: Allocated | None = None):
        self.path = os.fspath(path)
        self.kind = kind
        self.size = int(size)
        self.block_size = block_size
        self._stream = stream
        self._keep = keep  # files and disks the stream reads through, closed with it
        self._allocated = allocated

    @property
    def has_parent(self) -> bool:
        """Whether the image reads blocks from a parent image (a differencing VHDX, a
        VMDK snapshot)."""
        return getattr(self._stream, "parent", None) is not None or any(
            getattr(disk, "parent", None) is not None for disk in getattr(self._stream,
                                                                           "disks", ()))

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        out = np.zeros((count, self.block_size), dtype=np.uint8)
        offset = start * self.block_size
        length = max(0, min(count * self.block_size, self.size - offset))
        if length:
            try:
                self._stream.seek(offset)
                data = self._stream.read(length)
            except OSError as exc:  # the disk's own (EIO), or a seek a hostile table asks
                if exc.filename is None:  # for past what a file offset holds (EINVAL)
                    exc.filename = str(self.path)
                raise
            except FormatError as exc:  # a VMDK extent's (see _within_sectors)
                raise FormatError(f"{self.path}: {exc}") from None
            except Exception as exc:
                raise _failed(self.path, self.kind, exc) from None
            if len(data) != length:
                raise FormatError(f"{self.path}: {length} bytes at byte {offset} read as "
                                  f"{len(data)}: a truncated or damaged {self.kind} image")
            out.reshape(-1)[:length] = np.frombuffer(data, dtype=np.uint8)
        return out

    def present(self) -> BlockMap:
        """Blocks the image's allocation tables map (its own, its parents'); the others
        read as zeros."""
        if self._allocated is None:
            return super().present()
        return BlockMap.from_bools(self._allocated(self.block_size, self.n_blocks),
                                   self.block_size)

    def close(self) -> None:
        for item in reversed(self._keep):
            item.close()
        self._keep = []


# ------------------------------------------------------------ allocation tables
def _units(flags: np.ndarray, unit: int, block_size: int, n_blocks: int,
           base: int = 0, end: int | None = None) -> np.ndarray:
    """Flags of the ``n_blocks`` disk blocks touched by the set ``flags`` of a run of
    units of ``unit`` bytes starting at byte ``base``, cut at byte ``end`` (the end of
    the disk the units belong to: a last unit past it holds nothing)."""
    starts = base + np.flatnonzero(flags).astype(np.int64) * unit
    stops = starts + unit if end is None else np.minimum(starts + unit, end)
    return covered(starts // block_size, -(-stops // block_size), n_blocks)


def _of_map(bmap: BlockMap, block_size: int, n_blocks: int, base: int = 0,
            limit: int | None = None, skip: int = 0) -> np.ndarray:
    """A BlockMap of any block size, its bytes from ``skip`` on placed at byte ``base``
    and cut at ``limit`` bytes past ``skip``, as flags of ``n_blocks`` blocks of
    ``block_size``."""
    starts, lengths = bmap.run_arrays()
    unit = bmap.block_size
    stops = (starts + lengths) * unit - skip
    starts = np.maximum(starts * unit - skip, 0)
    if limit is not None:
        stops = np.minimum(stops, limit)
    kept = stops > starts
    return covered((base + starts[kept]) // block_size, -(-(base + stops[kept]) // block_size),
                   n_blocks)


def _table(fh: BinaryIO, offset: int, count: int, dtype: str, what: str) -> np.ndarray:
    """``count`` entries of ``dtype`` at byte ``offset`` of ``fh``; FormatError if short."""
    fh.seek(offset)
    data = fh.read(count * np.dtype(dtype).itemsize)
    if len(data) != count * np.dtype(dtype).itemsize:
        raise FormatError(f"{getattr(fh, 'name', 'image')}: {what} at byte {offset} runs past "
                          "the end of the file")
    return np.frombuffer(data, dtype)


def _vhdx_allocated(vhdx: Any, block_size: int, n_blocks: int) -> np.ndarray:
    """VHDX (spec 2.5.1): payload BAT entries, one per block, with a sector-bitmap entry
    after every ``chunk_ratio`` of them; state 6 (fully present) and 7 (partially
    present, differencing) hold data here; 0 (not present) and 7 read the parent."""
    from dissect.hypervisor.disk.c_vhdx import c_vhdx
    from dissect.hypervisor.disk.vhdx import BAT_REGION_GUID

    from blockforensics.formats.vhdx import check_layout

    unit = int(vhdx.block_size)
    count = -(-int(vhdx.size) // unit)
    ratio = (1 << 23) * int(vhdx.sector_size) // unit
    blocks = np.arange(count, dtype=np.int64)
    index = blocks + blocks // ratio
    entries = _table(vhdx.fh, int(vhdx.bat.offset), int(index[-1]) + 1 if count else 0,
                     "<u8", "the BAT")
    bat = vhdx.region_table.get(BAT_REGION_GUID)
    regions = [(int(bat.file_offset), int(bat.length)),
               *((int(e.file_offset), int(e.length)) for e in vhdx.region_table.entries
                 if e is not bat),
               (int(vhdx.header.log_offset), int(vhdx.header.log_length))]
    check_layout(vhdx.path or vhdx.fh.name, unit, regions, entries.nbytes, entries[index])
    state = entries[index] & 7
    partial = state == c_vhdx.PAYLOAD_BLOCK_PARTIALLY_PRESENT
    flags = _units((state == c_vhdx.PAYLOAD_BLOCK_FULLY_PRESENT) | partial, unit,
                   block_size, n_blocks)
    if vhdx.parent is not None:
        below = (state == c_vhdx.PAYLOAD_BLOCK_NOT_PRESENT) | partial
        flags |= _units(below, unit, block_size, n_blocks) & _vhdx_allocated(
            vhdx.parent, block_size, n_blocks)
    return flags


def _grain_states(extent: Any) -> np.ndarray:
    """Per grain of a VMDK sparse extent: 0 absent (the parent's), 1 zero, 2 data —
    from the grain directory and tables as dissect parses them (sparse, COWD, SESparse)."""
    from dissect.hypervisor.disk.c_vmdk import c_vmdk

    per_table = int(extent._grain_table_size)
    n_grains = -(-int(extent.header.capacity) // int(extent.header.grain_size))
    states = np.zeros(n_grains, dtype=np.int8)
    for directory in range(min(len(extent._grain_directory), -(-n_grains // per_table))):
        table = extent._lookup_grain_table(directory)
        if not table:
            continue
        entries = np.array(list(table), dtype=np.uint64)
        if extent.is_sesparse:
            kind = entries & np.uint64(c_vmdk.SESPARSE_GRAIN_TYPE_MASK)
            state = np.where(kind == np.uint64(c_vmdk.SESPARSE_GRAIN_TYPE_ALLOCATED), 2,
                             np.where(kind == np.uint64(c_vmdk.SESPARSE_GRAIN_TYPE_ZERO), 1, 0))
        else:
            state = np.minimum(entries, 2)
        first = directory * per_table
        states[first : first + per_table] = state[: n_grains - first]
    return states


def _vmdk_allocated(vmdk: Any, block_size: int, n_blocks: int) -> np.ndarray:
    """VMDK: the grains holding data of each sparse extent; an absent grain reads the
    parent at the same sector; a flat extent: its file's data extents (holes of a
    sparse file read as zeros)."""
    from dissect.hypervisor.disk.vmdk import SparseDisk

    from blockforensics.formats.raw import RawDisk

    flags = np.zeros(n_blocks, dtype=bool)
    parents: dict[int, np.ndarray] = {}
    for extent in vmdk.disks:
        base = int(extent.sector_offset) * SECTOR
        if not isinstance(extent, SparseDisk):
            with RawDisk(extent.fh.name) as flat:
                flags |= _of_map(flat.present(), block_size, n_blocks, base, int(extent.size),
                                 getattr(extent, "file_offset", 0))
            continue
        states = _grain_states(extent)
        grain = int(extent.header.grain_size) * SECTOR
        flags |= _units(states == 2, grain, block_size, n_blocks, base,
                        base + int(extent.size))
        parent = extent.parent
        if parent is not None:
            if id(parent) not in parents:
                parents[id(parent)] = (_vmdk_allocated(parent, block_size, n_blocks)
                                       if hasattr(parent, "disks")
                                       else np.ones(n_blocks, dtype=bool))
            flags |= _units(states == 0, grain, block_size, n_blocks, base) & parents[id(parent)]
    return flags


#: characters of a parser's message kept in an error (dissect nests its messages, one per
#: parent opened)
MAX_MESSAGE = 300


def _failed(path: str | os.PathLike[str], kind: str, exc: Exception) -> FormatError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "maximum recursion depth exceeded" in message:  # dissect opening parent after parent
        message = "its parent disks form a loop: one names itself or a child as its parent"
    elif len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return FormatError(f"{path}: not a readable {kind} image ({message})")


def _single_point(path: str | os.PathLike[str], point: str | int | None) -> None:
    if point not in (None, 0, "0", -1, "-1"):
        raise UsageError(f"{path}: a disk image has a single point (0)")


def _open_stream(path: str | os.PathLike[str], kind: str, reader: Any,
                 allocated: Callable[[Any, int, int], np.ndarray]) -> Disk:
    """``reader(file)`` (a dissect image that is a stream itself) as a Disk whose
    ``present()`` is ``allocated(image, block_size, n_blocks)``; the file's name lets
    dissect find parents and extents beside it."""
    fh = open(path, "rb")  # noqa: SIM115  (closed with the Disk)
    try:
        image = reader(fh)
    except FormatError:  # ours, already one line naming the image
        fh.close()
        raise
    except Exception as exc:  # dissect raises its own errors and struct's alike
        fh.close()
        raise _failed(path, kind, exc) from None
    return StreamDisk(path, kind, image, image.size, [fh],
                      allocated=lambda bs, n: _checked(path, kind, allocated, image, bs, n))


def _checked(path: str | os.PathLike[str], kind: str, allocated: Callable[..., np.ndarray],
             *args: Any) -> np.ndarray:
    """``allocated(*args)``, its failures (a table past the end of the file, a damaged
    one dissect refuses) as one-line FormatErrors naming the image."""
    try:
        return allocated(*args)
    except FormatError:
        raise
    except Exception as exc:
        raise _failed(path, kind, exc) from None


class VhdxFormat(Format):
    """Hyper-V VHDX, fixed, dynamic or differencing."""

    name: ClassVar[str] = "vhdx"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return is_vhdx(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        _single_point(path, point)

        from blockforensics.formats.vhdx import check_headers

        check_headers(path)
        return _open_stream(path, "VHDX", _vhdx_chain, _vhdx_allocated)


def _vhdx_chain(fh: BinaryIO) -> Any:
    """A dissect VHDX of the file ``fh`` is open on, each image's metadata items as the
    spec requires them, its parents (a differencing disk's:
    Hyper-V's checkpoints) checked as Hyper-V checks them: each parent's headers sound,
    and its DataWriteGuid the one the child names (``parent_linkage``, or
    ``parent_linkage2``, spec 2.6.2.6.2) — a parent written since the child was made no
    longer holds what the child's blocks were made on."""
    from dissect.hypervisor.disk.vhdx import PHYSICAL_SECTOR_SIZE_GUID, VHDX

    from blockforensics.formats.vhdx import check_headers, check_metadata, parent_linkage

    def checked(vhdx: Any) -> Any:
        check_metadata(vhdx.path or vhdx.fh.name, int(vhdx.size), int(vhdx.block_size),
                       int(vhdx.sector_size),
                       vhdx.metadata.lookup.get(PHYSICAL_SECTOR_SIZE_GUID))
        return vhdx

    top = child = checked(VHDX(fh))
    while child.parent is not None:
        parent = child.parent
        check_headers(parent.path)
        checked(parent)
        wanted = {child.parent_locator.entries.get(key, "").strip("{}").lower()
                  for key in ("parent_linkage", "parent_linkage2")} - {""}
        found = parent_linkage(parent.header.data_write_guid)
        if found not in wanted:
            raise FormatError(f"{child.path}: its parent {parent.path} was written after it "
                              f"was made (DataWriteGuid {{{found}}}, the child names "
                              f"{' or '.join(sorted(f'{{{w}}}' for w in wanted)) or 'none'}): "
                              "the pair does not hold the disk (Hyper-V refuses it too)")
        child = parent
    return top


class _ExtentPath(type(Path())):  # type: ignore[misc]  # PosixPath or WindowsPath
    """A descriptor's path whose ``with_name`` — how dissect 3.21 finds each extent file
    named in it — takes the name as QEMU does: relative to the descriptor's directory
    (``sub/disk-s001.vmdk`` too: dissect refused a name with a directory in it), or
    absolute; Windows separators read as ``/``."""

    def with_name(self, name: str) -> Path:
        return _ExtentPath(self.parent / name.replace("\\", "/"))

    def open(self, *args: Any, **kwargs: Any) -> Any:
        """The file opened, unless it is no disk (a FIFO would block the opening)."""
        from blockforensics.formats import check_local_source

        check_local_source(self)
        return super().open(*args, **kwargs)


def _vmdk(fh: BinaryIO) -> Any:
    """A dissect VMDK of the file ``fh`` is open on, its extents found as QEMU finds
    them and its parents' reads kept within their sectors."""
    from dissect.hypervisor.disk.vmdk import VMDK

    vmdk = VMDK(_ExtentPath(fh.name))
    _check_parent_cids(vmdk, fh.name)
    _flat_offsets(vmdk)
    _within_sectors(vmdk)
    return vmdk


#: extent types of a descriptor dissect 3.21 opens a disk for, in the descriptor's order
OPENED_EXTENTS = ("SPARSE", "VMFSSPARSE", "SESPARSE", "VMFS", "FLAT")


def _flat_offsets(vmdk: Any) -> None:
    """Have each FLAT (and VMFS) extent read its file from the sector the descriptor
    names (``RW 4096 FLAT "disk-flat.vmdk" 2048``; VMware's spec, as QEMU reads it):
    dissect.hypervisor 3.21 reads every one from its file's first byte.  The offset, in
    bytes, is kept as the extent's ``file_offset`` for its allocation map."""
    if vmdk.descriptor is None:
        return
    opened = [e for e in vmdk.descriptor.extents if e.type in OPENED_EXTENTS]
    for described, extent in zip(opened, vmdk.disks):
        if described.type not in ("VMFS", "FLAT") or not described.start_sector:
            continue
        extent.file_offset = described.start_sector * SECTOR

        def read_sectors(sector: int, count: int, extent: Any = extent) -> bytes:
            extent.fh.seek((sector - extent.sector_offset) * SECTOR + extent.file_offset)
            return extent.fh.read(count * SECTOR)

        extent.read_sectors = read_sectors


#: a descriptor's parentCID when the disk has no parent
NO_PARENT_CID = 0xFFFFFFFF


def _check_parent_cids(vmdk: Any, name: str) -> None:
    """FormatError unless each parent below ``vmdk`` still has the content ID its child
    names (``parentCID``; VMware's spec): a parent written since the child was made has
    a new CID, and no longer holds what the child's absent grains read — QEMU refuses
    to read such a child, and so does this."""
    def descriptor(disk: Any) -> Any:
        return disk.descriptor or next((d.descriptor for d in getattr(disk, "disks", ())
                                        if getattr(d, "descriptor", None)), None)

    pairs = [(vmdk.descriptor, vmdk.parent)] if vmdk.parent is not None else []
    pairs += [(extent.descriptor, extent.parent) for extent in getattr(vmdk, "disks", ())
              if getattr(extent, "parent", None) is not None and extent.descriptor]
    for child, parent in pairs:
        wanted = int(child.attr.get("parentCID", "ffffffff"), 16)
        below = descriptor(parent)
        found = int(below.attr.get("CID", "ffffffff"), 16) if below is not None else wanted
        if wanted != NO_PARENT_CID and found != wanted:
            raise FormatError(f"{name}: its parent {child.attr.get('parentFileNameHint')!r} "
                              f"was written after it was made (CID {found:08x}, the child "
                              f"names parentCID {wanted:08x}): the pair does not hold the "
                              "disk (QEMU and VMware refuse it too)")
        _check_parent_cids(parent, str(child.attr.get("parentFileNameHint")))


def _within_sectors(vmdk: Any) -> None:
    """Have ``vmdk`` (and each parent below it) read zeros past its last sector.

    dissect.hypervisor 3.21 reads whole 8 KiB alignment units, and a child's absent
    grains from its parent, without stopping at the disk's end: a VMDK whose size is
    not a multiple of 8 KiB, or a child larger than its parent, raised IndexError
    (an extent past the last) instead of reading.  What it reads short inside the
    disk (an extent file cut off) is a FormatError, not zeros."""
    whole = vmdk.read_sectors
    sectors = int(vmdk.sector_count)

    def read_sectors(sector: int, count: int) -> bytes:
        inside = max(0, min(count, sectors - sector))
        data = whole(sector, inside) if inside else b""
        if len(data) != inside * SECTOR:
            raise FormatError(f"sectors {sector}-{sector + inside - 1} read short: a "
                              "truncated or damaged VMDK extent")
        return data.ljust(count * SECTOR, b"\0")

    vmdk.read_sectors = read_sectors
    parents = {id(e.parent): e.parent for e in getattr(vmdk, "disks", ())
               if getattr(e, "parent", None) is not None}
    for parent in parents.values():
        _within_sectors(parent)


class VmdkFormat(Format):
    """VMware VMDK: a text descriptor (with its extent files) or a sparse extent."""

    name: ClassVar[str] = "vmdk"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return is_vmdk(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        _single_point(path, point)
        if not is_vmdk(path):  # dissect reads a file of no VMDK kind as a flat extent
            raise FormatError(f"{path}: no VMDK sparse extent header (KDMV, COWD) or disk "
                              "descriptor: not a VMDK image")
        return _open_stream(path, "VMDK", _vmdk, _vmdk_allocated)


class Qcow2Format(Format):
    """QEMU qcow2 (versions 2 and 3), over its chain of backing files."""

    name: ClassVar[str] = "qcow2"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return is_qcow2(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        _single_point(path, point)
        from blockforensics.formats.qcow2 import Qcow2Disk

        return Qcow2Disk(path)

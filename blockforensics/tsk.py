"""The files of a disk (a chain point) as The Sleuth Kit sees them, read with no restore.

:func:`ChainImgInfo` hands TSK a ``pytsk3.Img_Info`` whose reads are seeks + reads on
``disk.open_file()``; :func:`list_entries` walks every file system it finds —
bare, or in each partition of a GPT or MBR table (logical partitions of the
EBR chain included) as the project's table readers find them, paths
``p1:/dir/file``, or in each linear LVM2 logical volume, paths ``vg/lv:/dir/file``:
FAT, ext, NTFS, exFAT, HFS+ and whatever else TSK opens — into :class:`Entry`
rows: MACB times,
size, inode (the MFT record number on NTFS), owner, data runs as disk byte
extents, or the bytes themselves when the data is resident (NTFS resident
``$DATA``, ext4 ``inline_data``).  :func:`extract` reads one file of a point,
deleted ones included while TSK can still reach their metadata.

XFS, which TSK 4.11 does not read, is listed by dissect.xfs
(:mod:`blockforensics.xfsfiles`), Btrfs by dissect.btrfs
(:mod:`blockforensics.btrfsfiles`), behind the same :class:`Lister` interface,
chosen per file system by its superblock magic.  A file system that cannot be
opened is skipped and named in :attr:`Listing.unreadable`: the caller reports it
rather than stopping.  An ext volume TSK 4.11 does not open or reads wrongly
(:func:`_tsk_misreads_ext`: ``bigalloc``, ``meta_bg`` past the first meta group) is
listed by the project's own ext reader (:mod:`blockforensics.extfiles`).
"""

from __future__ import annotations

import bisect
import calendar
import contextlib
import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from blockforensics.disk import MappedDisk
from blockforensics.errors import BlockforensicsError, FormatError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.fs.fat import ClusterHeap

#: file systems whose metadata address is where the name is stored (a rename moves it)
NAME_ADDRESSED = ("fat", "exfat")
#: resident data larger than this is not kept in memory (read on demand)
RESIDENT_MAX = 1 << 20
#: bytes read at a time from a disk
CHUNK_BYTES = 8 << 20


def pytsk3() -> Any:
    """The pytsk3 module, or a one-line error saying how to install it."""
    try:
        import pytsk3 as module
    except ImportError as exc:
        raise UsageError("file-level work needs pytsk3 (pip install pytsk3)") from exc
    return module


@contextlib.contextmanager
def damage_raised(image: Any) -> Iterator[None]:
    """Around TSK's reads of a :func:`ChainImgInfo`: a block that failed its check is
    raised as itself (pytsk3 reports it as a RuntimeError, a traceback on the command
    line)."""
    try:
        yield
    except RuntimeError:
        if image.failed is not None:
            raise image.failed from None
        raise


def open_fs(image: Any, offset: int) -> Any:
    """``pytsk3.FS_Info`` of a :func:`ChainImgInfo` at byte ``offset`` (damage raised as
    itself: :func:`damage_raised`)."""
    tsk = pytsk3()

    class _FSInfo(tsk.FS_Info):  # type: ignore[name-defined]
        """Keeps its image and its byte offset there: raw metadata TSK reads wrong is read
        again (:func:`_ext_times`)."""

    with damage_raised(image):
        fs = _FSInfo(image, offset=offset)
    fs.image, fs.offset = image, offset
    return fs


def ChainImgInfo(disk: Disk) -> Any:  # a class factory: pytsk3 is an optional import
    """A ``pytsk3.Img_Info`` reading a Disk (e.g. ``chain.disk(p)``) through its file object."""
    tsk = pytsk3()

    class _ChainImgInfo(tsk.Img_Info):  # type: ignore[name-defined]
        def __init__(self, disk: Disk):
            self.disk = disk
            self.failed: BlockforensicsError | None = None
            self._file = disk.open_file()
            super().__init__(url="", type=tsk.TSK_IMG_TYPE_EXTERNAL)

        def read(self, offset: int, size: int) -> bytes:
            self._file.seek(offset)
            try:
                return self._file.read(size)
            except BlockforensicsError as exc:  # a damaged block: kept for open_fs
                self.failed = exc
                raise

        def get_size(self) -> int:
            return self.disk.size

        def close(self) -> None:
            self._file.close()

    return _ChainImgInfo(disk)


@dataclass(slots=True)
class Entry:
    """One file or directory at one point; times in seconds since the epoch (0: unknown)."""

    path: str
    type: str  # "file" or "dir"
    inode: int  # TSK's metadata address: inode, MFT record, FAT directory-entry slot
    size: int  # bytes
    mtime: int
    atime: int
    ctime: int  # metadata change (ext, NTFS); FAT has none
    crtime: int  # creation (birth)
    mode: int
    uid: int
    gid: int
    extents: np.ndarray  # (k, 2) int64: disk byte [start, stop) of its content, file order
    resident: bytes | None = None  # the content itself, when stored in the metadata
    children: frozenset[str] = frozenset()
    deleted: bool = False
    kind: str = ""  # "file", "dir" or "symlink" ("" as ``type``); a symlink's content: its target
    crtime_ns: int = 0  # nanoseconds within ``crtime`` (when recorded)
    mtime_ns: int = 0  # nanoseconds within ``mtime``
    ctime_ns: int = 0  # nanoseconds within ``ctime``
    atime_ns: int = 0  # nanoseconds within ``atime``
    #: the times (names: "mtime", "atime", "crtime") the file system keeps as the writer's
    #: wall clock with no zone — FAT's, exFAT's without a valid UTC offset — read as UTC
    wall_clock: tuple[str, ...] = ()
    #: NTFS: the attributes ``fls -m`` writes a record for, as it addresses them after the
    #: MFT number (``TYPE-ID``): "" (the unnamed ``$DATA``; a directory's ``$I30`` index
    #: root), each named stream by name, and "$FILE_NAME" (that of :attr:`file_name`)
    attributes: tuple[tuple[str, str], ...] = ()
    seq: int = 0  # NTFS MFT record sequence number (bumped on reuse); 0 elsewhere
    nlink: int = 0  # names the inode has (hard links)
    streams: tuple[tuple[str, int, str], ...] = ()  # NTFS named streams: name, size, SHA-256
    fs: str = ""  # the file system: "fat", "exfat", "ext", "ntfs", "hfs", ... ("": unknown)
    volume: int = 0  # Btrfs: the subvolume whose inode numbers ``inode`` counts in; 0 elsewhere
    #: NTFS compressed data: the compression unit (bytes; 0: the extents hold the content
    #: as is) and each extent's byte offset in the file (:mod:`blockforensics.fs.ntfs`)
    unit: int = 0
    offsets: np.ndarray | None = None
    #: the content as the file system's own reader decodes it, when the extents hold it
    #: compressed otherwise than NTFS does (Btrfs: zlib, LZO, zstd extents; holes as zeros)
    reader: Callable[[], Iterator[bytes]] | None = None
    #: disk byte ranges ``(k, 2)`` of its other data on disk: NTFS named streams, a
    #: directory's index, an attribute list, its MFT record — blocks it owns beyond its
    #: content
    other_extents: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    #: NTFS: its (first long) name's ``$FILE_NAME`` attribute: size (bytes) and times
    #: (atime, mtime, ctime, crtime; nanoseconds since the epoch), which tools that set
    #: ``$STANDARD_INFORMATION`` times (timestomping) leave; () elsewhere
    file_name: tuple[int, int, int, int, int] | tuple[()] = ()
    #: why its metadata fails its own check ("": it passes, or has none): an exFAT entry
    #: set whose SetChecksum does not hold — damage, not a change
    damaged: str = ""
    #: FAT, exFAT: ``(file system byte, bytes)`` runs of the directory holding its entry,
    #: in order (an exFAT entry set goes on in that directory's next cluster); () elsewhere
    #: or unknown
    directory: tuple[tuple[int, int], ...] = ()

    def same_file(self, other: Entry) -> bool:
        """One file, whatever it holds now: the same inode (MFT record and sequence; Btrfs:
        of the same subvolume) born at the same time, when recorded.  On FAT and exFAT,
        whose metadata address is the directory entry's place (it moves with the name,
        and a swap of names keeps both places), the same birth time and first cluster
        instead."""
        if self.type != other.type:
            return False
        if self.fs in NAME_ADDRESSED:
            return (self.crtime, self.crtime_ns, self.first_byte) == \
                (other.crtime, other.crtime_ns, other.first_byte)
        if (self.inode, self.seq, self.volume) != (other.inode, other.seq, other.volume):
            return False
        return not (self.crtime and other.crtime
                    and (self.crtime, self.crtime_ns) != (other.crtime, other.crtime_ns))

    @property
    def first_byte(self) -> int | None:
        """Where its data starts on the disk (None: no data runs)."""
        return int(self.extents[0, 0]) if len(self.extents) else None

    def same_extents(self, other: Entry) -> bool:
        return np.array_equal(self.extents, other.extents)

    @property
    def stored(self) -> bool:
        """Is its content the bytes of its extents as they are (not compressed)?"""
        return not self.unit and self.reader is None

    @property
    def owned(self) -> np.ndarray:
        """Every disk byte range ``(k, 2)`` it owns: content and other data, sorted."""
        both = np.concatenate([self.extents, self.other_extents]) if len(self.other_extents) \
            else self.extents
        return both[np.argsort(both[:, 0], kind="stable")]

    def same_identity(self, other: Entry) -> bool:
        """The same file under another name: :meth:`same_file`, and unless the birth time
        is recorded to below the second (ext4, NTFS), the same first data run (or,
        with no runs, the same size): an inode reused within a second."""
        if not self.same_file(other):
            return False
        if (self.crtime_ns or other.crtime_ns) and self.fs not in NAME_ADDRESSED:
            return True  # birth to the nanosecond: that says it all
        if len(self.extents) and len(other.extents):
            return bool(self.extents[0, 0] == other.extents[0, 0])
        return self.size == other.size

    def chunks(self, disk: Disk | None, intervals: np.ndarray | None = None
               ) -> Iterator[bytes]:
        """The content (or, given ``intervals``, those disk byte ranges of it, as stored:
        compressed if it is) in chunks."""
        if self.resident is not None:
            if intervals is None or len(intervals):
                yield self.resident
            return
        if disk is None:
            return
        if intervals is None and self.reader is not None:
            yield from self.reader()
            return
        if intervals is None and self.unit and self.offsets is not None:
            from blockforensics.fs.ntfs import compressed_content

            yield from compressed_content(disk, self.extents, self.offsets, self.unit,
                                          self.size)
            return
        for start, stop in (self.extents if intervals is None else intervals).tolist():
            for lo in range(start, stop, CHUNK_BYTES):
                yield disk.read(lo, min(CHUNK_BYTES, stop - lo))

    def read(self, disk: Disk | None, limit: int | None = None) -> bytes:
        """The content (its first ``limit`` bytes)."""
        out = bytearray()
        for chunk in self.chunks(disk):
            out += chunk
            if limit is not None and len(out) >= limit:
                return bytes(out[:limit])
        return bytes(out)


@dataclass
class Listing:
    """Every allocated entry of a disk by path, the file systems TSK could not open
    (path prefix, e.g. "" or "p2:", -> why), and those read with changes waiting in
    their journal or log (prefix -> whether the listing shows them replayed)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    recovery: dict[str, str] = field(default_factory=dict)


ToDisk = Callable[[np.ndarray], np.ndarray]


def ext_deletion_times(disk: Disk) -> Callable[[Entry], int]:
    """A function giving, for an ext file listed at an earlier point, when ``disk`` (a
    later point) says its inode was deleted (:func:`blockforensics.fs.ext.deletion_time`;
    0 when not, or not ext).  Each ext volume of the disk is opened once."""
    from blockforensics.fs.ext import ExtFileSystem, deletion_time, has_ext_magic

    volumes: dict[str, ExtFileSystem | None] = {}

    def dtime(entry: Entry) -> int:
        if entry.fs != "ext":
            return 0
        try:
            if not volumes:
                for name, view, offset, _ in _filesystem_places(disk):
                    volumes[name] = ExtFileSystem(_ext_recovered(view, offset)[0], offset) \
                        if has_ext_magic(view.read(offset + 1024, 1024)) else None
            # "p2:", "vg/lv:" (an LVM volume's name holds a "/"), or "" for a bare volume
            prefix = next((name for name in volumes
                           if name and entry.path.startswith(name + "/")), "")
            ext = volumes.get(prefix)
            return deletion_time(ext, entry.inode) if ext is not None else 0
        except FormatError:  # a damaged volume or inode: no deletion time to give
            return 0

    return dtime


def _filesystem_places(disk: Disk) -> list[tuple[str, Disk, int, ToDisk]]:
    """``(path prefix, view, byte offset in the view, to_disk)`` of each file system:
    ``""`` for a bare one (or a disk without a readable table), ``pN:`` for partition
    N of a GPT or MBR table (logical partitions from 5), ``vg/lv:`` for an LVM2
    logical volume (read through a view of its extents), as the project's table
    readers find them (:func:`blockforensics.allocation.filesystem_partitions`).
    ``to_disk`` turns ``(k, 2)`` byte ranges of the file system into the disk's."""
    from blockforensics.allocation import filesystem_partitions

    places: list[tuple[str, Disk, int, ToDisk]] = []
    for p in filesystem_partitions(disk):
        view, offset = p.view(disk)
        if isinstance(view, MappedDisk):
            places.append((f"{p.name}:", view, offset, partial(_through, view)))
        else:
            places.append(("" if p.index is None else f"p{p.index}:", view, offset,
                           partial(_shifted, offset)))
    return places


def _through(view: MappedDisk, ranges: np.ndarray) -> np.ndarray:
    """A logical volume's byte ranges as the disk's (split where an extent ends)."""
    return view.to_base(ranges[:, 0], ranges[:, 1])


def _shifted(offset: int, ranges: np.ndarray) -> np.ndarray:
    """A partition's byte ranges as the disk's."""
    return ranges + offset


def _tsk_misreads_ext(view: Disk, offset: int) -> str | None:
    """Why The Sleuth Kit 4.11 cannot list the ext volume at ``offset`` right (its own
    reader lists it then), or None (also when there is none).  ``bigalloc``: TSK does
    not open it.  ``meta_bg`` with groups past the first meta group: TSK looks for every
    group descriptor after the superblock, so it reads those groups' inodes from the
    wrong inode tables (types unknown, directories unreadable, files silently left
    out)."""
    from blockforensics.fs.ext import ExtFileSystem, has_ext_magic

    if not has_ext_magic(view.read(offset + 1024, 1024)):
        return None
    try:
        ext = ExtFileSystem(view, offset)
    except FormatError:
        return None  # TSK then says what it makes of it
    if ext.cluster_shift:
        return f"The Sleuth Kit does not read ext4 with bigalloc ({ext.unit}-byte clusters)"
    if ext.meta_bg_groups:
        return (f"The Sleuth Kit misreads ext4 meta_bg group descriptors (the inodes of "
                f"{ext.meta_bg_groups} of {ext.n_groups} groups)")
    return None


def _ext_recovered(view: Disk, offset: int) -> tuple[Disk, str]:
    """``view`` with the journal of the ext volume at ``offset`` replayed when it needs
    recovery (an overlay) and what the listing then shows; ``view`` and "" otherwise."""
    from blockforensics.fs.ext import ExtFileSystem, has_ext_magic, replayed

    if not has_ext_magic(view.read(offset + 1024, 1024)):
        return view, ""
    try:
        ext = ExtFileSystem(view, offset)
    except FormatError:
        return view, ""  # TSK then says what it makes of it
    return replayed(ext)


def _data_attributes(tsk: Any, fs_file: Any) -> Iterator[Any]:
    """The default (unnamed) data attribute(s) of a file: ``$DATA`` on NTFS."""
    for attr in fs_file:
        if attr.info.type == tsk.TSK_FS_ATTR_TYPE_DEFAULT or (
                attr.info.type == tsk.TSK_FS_ATTR_TYPE_NTFS_DATA and not attr.info.name):
            yield attr


@dataclass
class _Content:
    """Where a file's content is: disk byte ranges ``(k, 2)`` in file order, or the bytes
    themselves (resident); compressed (NTFS): each range's byte offset in the file and
    the compression unit (bytes)."""

    extents: np.ndarray
    resident: bytes | None = None
    offsets: np.ndarray | None = None
    unit: int = 0
    reader: Callable[[], Iterator[bytes]] | None = None


def _runs(tsk: Any, attr: Any, block_size: int) -> list[tuple[int, int, int]]:
    """``(file byte, disk byte, bytes)`` of each run of an attribute with data on disk
    (sparse and not yet loaded runs left out)."""
    skip = int(tsk.TSK_FS_ATTR_RUN_FLAG_SPARSE) | int(tsk.TSK_FS_ATTR_RUN_FLAG_FILLER)
    return [(run.offset * block_size, run.addr * block_size, run.len * block_size)
            for run in attr if run.len and not int(run.flags) & skip]


def _content(tsk: Any, fs_file: Any, to_disk: ToDisk, block_size: int, size: int,
             ntfs: bool, volume_bytes: int) -> _Content:
    """Data runs as ``(k, 2)`` disk byte [start, stop) in file order, cut at ``size``
    (sparse runs left out; a run that crosses a logical volume's extents split
    there) — or, for resident data, the bytes themselves.  A compressed NTFS
    attribute's runs are kept whole (their compression units), with their offsets in
    the file; another compressed one (HFS+) is read through TSK, which decodes it.
    Runs past the file system's end (``volume_bytes``; damaged metadata) are a
    FormatError."""
    rows: list[tuple[int, int, int]] = []
    compressed = False
    attributes = list(_data_attributes(tsk, fs_file))
    if size and not attributes:
        _check_readable(tsk, fs_file)
    for attr in attributes:
        if int(attr.info.flags) & int(tsk.TSK_FS_ATTR_RES):
            if 0 < size <= RESIDENT_MAX:
                return _Content(np.empty((0, 2), np.int64), fs_file.read_random(0, size))
            continue
        compressed |= bool(int(attr.info.flags) & int(tsk.TSK_FS_ATTR_COMP))
        rows += _runs(tsk, attr, block_size)
    rows.sort()
    past = [start + min(length, size - at) for at, start, length in rows
            if at < size and start + min(length, size - at) > volume_bytes]
    if past:
        raise FormatError(f"its data runs past the end of the file system (to byte "
                          f"{max(past)} of {volume_bytes})")
    if compressed and ntfs:
        from blockforensics.fs.ntfs import UNIT_CLUSTERS

        pieces = [(at + done, piece) for at, start, length in rows
                  for done, piece in _pieces(to_disk, start, length)]
        return _Content(np.array([p for _, p in pieces], np.int64).reshape(-1, 2),
                        offsets=np.array([at for at, _ in pieces], np.int64),
                        unit=UNIT_CLUSTERS * block_size)
    cut = [(start, start + min(length, size - at)) for at, start, length in rows if at < size]
    return _Content(to_disk(np.array(cut, dtype=np.int64).reshape(-1, 2)),
                    reader=partial(_read_through, fs_file, size) if compressed else None)


def _check_readable(tsk: Any, fs_file: Any) -> None:
    """Raise a FormatError naming why when The Sleuth Kit cannot load the content of a
    regular file or directory it lists with a size but no data attribute (a damaged
    extent tree or block map: TSK lists such a file, then fails each read)."""
    if fs_file.info.meta.type not in (tsk.TSK_FS_META_TYPE_REG, tsk.TSK_FS_META_TYPE_DIR):
        return
    try:
        fs_file.read_random(0, 1)
    except OSError as exc:
        why = str(exc).splitlines()[0].split("Read error: ")[-1]
        raise FormatError(f"its content could not be read ({why})") from None


def _read_through(fs_file: Any, size: int) -> Iterator[bytes]:
    """A file's content (``size`` bytes) as The Sleuth Kit reads it."""
    for lo in range(0, size, CHUNK_BYTES):
        yield fs_file.read_random(lo, min(CHUNK_BYTES, size - lo))


def _pieces(to_disk: ToDisk, start: int, length: int) -> Iterator[tuple[int, list[int]]]:
    """A run's disk byte ranges (split where a logical volume's extents are) with each
    one's offset in the run."""
    done = 0
    for lo, hi in to_disk(np.array([[start, start + length]], np.int64)).tolist():
        yield done, [lo, hi]
        done += hi - lo


def _other_extents(tsk: Any, fs_file: Any, to_disk: ToDisk, block_size: int) -> np.ndarray:
    """Disk byte ranges ``(k, 2)`` of a file's non-resident attributes other than its
    content: NTFS named streams, a directory's index ($I30), an attribute list ..."""
    rows = [(start, start + length) for attr in fs_file
            if not int(attr.info.flags) & int(tsk.TSK_FS_ATTR_RES)
            and attr.info.type != tsk.TSK_FS_ATTR_TYPE_DEFAULT
            and not (attr.info.type == tsk.TSK_FS_ATTR_TYPE_NTFS_DATA and not attr.info.name)
            for _, start, length in _runs(tsk, attr, block_size)]
    return to_disk(np.array(sorted(rows), dtype=np.int64).reshape(-1, 2))


def _entry(tsk: Any, fs: Any, to_disk: ToDisk, path: str, fs_file: Any,
           deleted: bool = False, directory: tuple[tuple[int, int], ...] = ()) -> Entry:
    """``fs_file`` as an Entry; ``directory``: the runs of its directory (FAT, exFAT:
    :attr:`Entry.directory`), when ``fs_file`` was opened by address."""
    meta = fs_file.info.meta
    is_dir = meta.type == tsk.TSK_FS_META_TYPE_DIR
    is_link = meta.type == tsk.TSK_FS_META_TYPE_LNK
    fs_name = _fs_name(tsk, fs)
    content = _content(tsk, fs_file, to_disk, fs.info.block_size, int(meta.size),
                       fs_name == "ntfs", int(fs.info.block_count) * int(fs.info.block_size))
    if is_link and meta.link:  # the target, kept in the inode or read by TSK
        target = meta.link if isinstance(meta.link, bytes) else str(meta.link).encode()
        content = _Content(np.empty((0, 2), np.int64), target)
    times = {name: int(getattr(meta, name)) for name in ("mtime", "atime", "ctime", "crtime")}
    nanos = {name: int(getattr(meta, f"{name}_nano", 0) or 0) for name in times}
    other = np.empty((0, 2), np.int64)
    size, nlink = int(meta.size), int(meta.nlink)
    file_name: tuple[int, int, int, int, int] | tuple[()] = ()
    wall_clock: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    damaged = ""
    if fs_name == "ntfs":
        names, file_name, fname = _ntfs_names(tsk, fs_file, path.rsplit("/", 1)[-1])
        attributes = _ntfs_attributes(tsk, fs_file) + ((("$FILE_NAME", fname),) if fname else ())
        nlink = names or nlink
        info = _ntfs_info(tsk, fs_file)
        times, nanos = _ntfs_times(info, times, nanos)
        other = np.concatenate([_other_extents(tsk, fs_file, to_disk, fs.info.block_size),
                                _mft_record(tsk, fs, to_disk, int(meta.addr))])
        link = _ntfs_link_target(tsk, fs_file, info, content, size)
        if link is not None:  # a junction too: a link, not a directory
            is_dir, is_link, size = False, True, len(link)
            content = _Content(np.empty((0, 2), np.int64), link)
    elif fs_name in ("fat", "exfat"):
        exfat = fs_name == "exfat"
        directory = directory or _directory_runs(tsk, fs, _parent(fs_file))
        raw = _slot_bytes(fs, int(meta.addr), exfat, directory)
        read = _exfat_entry_times if exfat else _fat_entry_times
        times, nanos, wall_clock = read(raw, int(meta.size), is_dir, deleted) \
            or (_fat_times(times), nanos, WALL_CLOCK)
        wall_clock = tuple(name for name in wall_clock if times[name])
        damaged = _exfat_set_damage(raw) if exfat and not deleted else ""
    elif int(fs.info.ftype) & int(tsk.TSK_FS_TYPE_EXT_DETECT):
        times, nanos = _ext_times(fs, int(meta.addr), times, nanos)
    elif fs_name == "hfs" and 0 in times.values():
        times = _hfs_times(fs, int(meta.addr), times)
    return Entry(path=path, type="dir" if is_dir else "file", inode=int(meta.addr),
                 size=size, mtime=times["mtime"], atime=times["atime"],
                 ctime=times["ctime"], crtime=times["crtime"], mode=int(meta.mode),
                 uid=int(meta.uid), gid=int(meta.gid), extents=content.extents,
                 resident=None if is_dir else content.resident, deleted=deleted,
                 kind="dir" if is_dir else "symlink" if is_link else "file",
                 crtime_ns=nanos["crtime"], mtime_ns=nanos["mtime"], ctime_ns=nanos["ctime"],
                 atime_ns=nanos["atime"], seq=int(meta.seq),
                 nlink=nlink, streams=_streams(tsk, fs_file),
                 fs=fs_name, unit=content.unit, offsets=content.offsets, other_extents=other,
                 reader=content.reader, file_name=file_name, wall_clock=wall_clock,
                 attributes=attributes, damaged=damaged,
                 directory=directory)


def _fs_name(tsk: Any, fs: Any) -> str:
    """A short name of the file system's type (TSK's detect masks)."""
    ftype = int(fs.info.ftype)
    if ftype == int(getattr(tsk, "TSK_FS_TYPE_EXFAT", -1)):  # a value inside FAT's mask
        return "exfat"
    for name in ("fat", "ext", "ntfs", "hfs", "iso9660", "ufs", "yaffs2", "apfs"):
        mask = getattr(tsk, f"TSK_FS_TYPE_{name.upper()}_DETECT", None)
        if mask is not None and ftype & int(mask):
            return name
    return "other"


def name_text(raw: bytes) -> str:
    """A name as text: UTF-8, a byte that is none as ``\\xNN`` (ext names are any
    bytes: two names that differ only there stay two paths)."""
    return raw.decode("utf-8", "backslashreplace")


#: control characters: C0 (newline, tab, escape), DEL and C1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown_name(text: str) -> str:
    """A name (or a line naming one) for a table or a terminal: its control characters
    as ``\\xNN`` (as :func:`name_text` writes a byte that is no UTF-8), so a newline
    cannot split a row nor an escape sequence drive the terminal."""
    return _CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", text)


def listed_path(path: str) -> str:
    """A path given on a command line as the listings spell it: bytes that are no UTF-8
    (a shell passes them through, Python holds them as surrogates) as ``\\xNN``."""
    return name_text(os.fsencode(path))


def _streams(tsk: Any, fs_file: Any) -> tuple[tuple[str, int, str], ...]:
    """Named data streams (NTFS alternate data streams): name, size and SHA-256 of the
    content (so a same-size rewrite of a stream shows)."""
    out = []
    for attr in fs_file:
        if attr.info.type != tsk.TSK_FS_ATTR_TYPE_NTFS_DATA or not attr.info.name:
            continue
        size, digest = int(attr.info.size), hashlib.sha256()
        for lo in range(0, size, CHUNK_BYTES):
            digest.update(fs_file.read_random(lo, min(CHUNK_BYTES, size - lo), attr.info.type,
                                              attr.info.id))
        out.append((name_text(attr.info.name), size, digest.hexdigest()))
    return tuple(sorted(out))


def _fat_times(times: dict[str, int]) -> dict[str, int]:
    """FAT times as written, read as UTC whatever this machine's time zone: a FAT time
    is the writer's wall clock with no zone, and TSK converts it with ``mktime`` (the
    analyst's zone), so a timeline would move with the machine that made it."""
    if time.timezone == 0 and not time.daylight:
        return times
    return {name: calendar.timegm((*time.localtime(value)[:6], 0, 0, 0)) if value else 0
            for name, value in times.items()}


#: the times FAT keeps (as a wall clock with no zone)
WALL_CLOCK = ("mtime", "atime", "crtime")
#: times (seconds, nanoseconds) and the names of those that are a zone-less wall clock
_Times = tuple[dict[str, int], dict[str, int], tuple[str, ...]]


#: bytes an exFAT File entry set usually spans: the File entry, a Stream Extension and
#: up to 17 File Name entries (255 characters, 15 per entry), 32 bytes each
EXFAT_SET_BYTES = 19 * 32


def _entry_slot(fs: Any, inode: int, exfat: bool) -> int | None:
    """FAT, exFAT: the byte of the image where TSK's metadata address ``inode`` lies:
    32-byte directory-entry slots counted from 3, from the first sector after the FATs
    (FAT: the fixed root directory or cluster 2; whatever the checks of
    :class:`~blockforensics.fs.fat.FatFileSystem` say) or the cluster heap (exFAT).
    None for lower addresses or a sector size no slot fits.  The boot sector is read
    once per ``fs``."""
    from blockforensics.fs.fat import BOOT_SECTOR, DIR_ENTRY_SIZE, entries_sector
    from blockforensics.fs.sleuthkit import EXFAT_BOOT_SECTOR

    reader = getattr(fs, "image", None)
    if reader is None or inode < 3:
        return None
    origin = getattr(fs, "slot_origin", None)
    if origin is None:  # (first sector, bytes per sector)
        raw = reader.read(fs.offset, BOOT_SECTOR.size)
        if exfat:
            boot = EXFAT_BOOT_SECTOR.parse(raw)
            origin = boot.ClusterHeapOffset, 1 << boot.BytesPerSectorShift
        else:
            bpb = BOOT_SECTOR.parse(raw)
            origin = entries_sector(bpb), bpb.BPB_BytsPerSec
        fs.slot_origin = origin
    first, sector = origin
    if sector < DIR_ENTRY_SIZE or sector % DIR_ENTRY_SIZE:
        return None
    index, slot = divmod(inode - 3, sector // DIR_ENTRY_SIZE)
    return int(fs.offset + (first + index) * sector + slot * DIR_ENTRY_SIZE)


def _slot_bytes(fs: Any, inode: int, exfat: bool,
                directory: tuple[tuple[int, int], ...] = ()) -> bytes:
    """The directory entry at TSK's metadata address ``inode`` (:func:`_entry_slot`):
    FAT, its 32 bytes; exFAT, its entry set when it is a File entry's (``SecondaryCount``
    more entries; at least :data:`EXFAT_SET_BYTES`), continued past the end of a cluster
    in the next run of its ``directory`` (:func:`_directory_runs`; none known: in the
    clusters that follow on disk); b"" where there is no slot."""
    at = _entry_slot(fs, inode, exfat)
    if at is None:
        return b""
    if not exfat:
        return bytes(fs.image.read(at, 32))
    def read(length: int) -> bytes:
        return b"".join(bytes(fs.image.read(fs.offset + start, size))
                        for start, size in _onward(directory, at - fs.offset, length))

    raw = read(EXFAT_SET_BYTES)
    if len(raw) > 1 and (raw[1] + 1) * 32 > len(raw):
        raw = read((raw[1] + 1) * 32)
    return raw


def _parent(fs_file: Any) -> int | None:
    """TSK's address of the directory ``fs_file`` was found in (None: opened by address)."""
    name = fs_file.info.name
    return None if name is None else int(name.par_addr)


def _directory_runs(tsk: Any, fs: Any, inode: int | None) -> tuple[tuple[int, int], ...]:
    """``(file system byte, bytes)`` of each run of the directory at TSK's address
    ``inode``, in directory order (kept per ``fs``); () for None or one TSK cannot
    open."""
    if inode is None:
        return ()
    known = getattr(fs, "directory_runs", None)
    if known is None:
        known = fs.directory_runs = {}
    if inode not in known:
        try:
            attrs = list(_data_attributes(tsk, fs.open_meta(inode=inode)))
        except OSError:
            attrs = []
        known[inode] = tuple((disk, size) for _, disk, size in sorted(
            run for attr in attrs for run in _runs(tsk, attr, fs.info.block_size)))
    return known[inode]


def _onward(runs: tuple[tuple[int, int], ...], at: int, length: int) -> Iterator[tuple[int, int]]:
    """``(start, bytes)`` pieces of ``length`` bytes read from byte ``at`` on along
    ``runs`` (``(start, bytes)``, in order): to the end of the run holding ``at``, then
    from the start of each next one; straight on where no run holds ``at``."""
    here = next((i for i, (start, size) in enumerate(runs) if start <= at < start + size),
                None)
    if here is None:
        yield at, length
        return
    for start, size in runs[here:]:
        begin = max(at, start)
        take = min(length, start + size - begin)
        yield begin, take
        length -= take
        if not length:
            return
    yield start + size, length  # past the directory's last run: as it lies on disk


def _fat_entry_times(raw: bytes, size: int, is_dir: bool, deleted: bool) -> _Times | None:
    """MAC-B times decoded from the FAT directory entry itself (``raw``, read at its
    slot: :func:`_slot_bytes`), its wall clock read as UTC: TSK gives 0 for a date after
    2037 (FAT goes to 2107).  None when that slot is not this entry (its size or kind
    differs, or it is free: a deleted entry's first byte is 0xE5, its times are
    intact)."""
    if len(raw) < 32 or raw[0] == 0 or (raw[0] == 0xE5) != deleted or raw[11] & 0x3F == 0x0F \
            or bool(raw[11] & 0x10) != is_dir \
            or (not is_dir and int.from_bytes(raw[28:32], "little") != size):
        return None

    def stamp(date: int, clock: int = 0) -> int:
        return _dos_time(date << 16 | clock)

    def field(lo: int) -> int:
        return int.from_bytes(raw[lo : lo + 2], "little")

    created = stamp(field(16), field(14))
    hundredths = raw[13] if created else 0
    times = {"mtime": stamp(field(24), field(22)), "atime": stamp(field(18)), "ctime": 0,
             "crtime": created + hundredths // 100}
    nanos = {"mtime": 0, "atime": 0, "ctime": 0, "crtime": hundredths % 100 * 10_000_000}
    return times, nanos, WALL_CLOCK


def _dos_time(stamp: int) -> int:
    """A DOS date (high 16 bits) and time (low 16) as if UTC; 0 when the date is unset
    or invalid (month 0 or 13-15, day 0).  An hour past 23, a minute past 59 or a second
    past 60 reads as 0, as TSK reads them (a day past the month's end runs into the
    next, as ``mktime``'s)."""
    date, clock = stamp >> 16, stamp & 0xFFFF
    year, month, day = 1980 + (date >> 9), (date >> 5) & 15, date & 31
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return 0
    hour, minute, second = clock >> 11, (clock >> 5) & 63, (clock & 31) * 2
    return calendar.timegm((year, month, day, hour if hour <= 23 else 0,
                            minute if minute <= 59 else 0, second if second <= 60 else 0,
                            0, 0, 0))


def _exfat_set_damage(raw: bytes) -> str:
    """Why the exFAT File entry set ``raw`` (:func:`_slot_bytes` of a file listed as
    allocated) fails its own check, or "" (it holds, or the slot holds no File entry):
    :func:`~blockforensics.fs.sleuthkit.exfat_set_state`."""
    from blockforensics.fs.sleuthkit import EXFAT_FILE, EXFAT_IN_USE, exfat_set_state

    if len(raw) < 2 or raw[0] | EXFAT_IN_USE != EXFAT_FILE \
            or exfat_set_state(raw[: (raw[1] + 1) * 32]) != "damaged":
        return ""
    return "its exFAT entry set fails its SetChecksum"


def _exfat_entry_times(raw: bytes, size: int, is_dir: bool, deleted: bool
                       ) -> _Times | None:
    """MAC-B times from the exFAT file entry itself (``raw``, its entry set read at its
    slot: :func:`_slot_bytes`), with its 10 ms steps and UTC offsets (a valid offset
    turns the writer's wall clock into UTC; without one it is read as UTC).  None when
    that slot is not this file's entry set (type, kind or length differ)."""
    if len(raw) < 64 or raw[0] != (0x05 if deleted else 0x85) \
            or raw[32] != (0x40 if deleted else 0xC0) \
            or bool(raw[4] & 0x10) != is_dir \
            or (not is_dir and int.from_bytes(raw[56:64], "little") != size):
        return None

    def when(at: int, offset_at: int, tens_at: int | None = None) -> tuple[int, int]:
        seconds = _dos_time(int.from_bytes(raw[at : at + 4], "little"))
        if not seconds:
            return 0, 0
        tens = raw[tens_at] if tens_at is not None else 0
        zone = raw[offset_at]
        if zone & 0x80:  # valid: signed 7 bits of 15 minutes east of UTC
            seconds -= ((zone & 0x7F) - (0x80 if zone & 0x40 else 0)) * 900
        return seconds + tens // 100, tens % 100 * 10_000_000

    (crtime, crtime_ns), (mtime, mtime_ns), (atime, _) = \
        when(8, 22, 20), when(12, 23, 21), when(16, 24)
    wall_clock = tuple(name for name, zone in zip(("crtime", "mtime", "atime"), raw[22:25],
                                                  strict=True) if not zone & 0x80)
    return ({"mtime": mtime, "atime": atime, "ctime": 0, "crtime": crtime},
            {"mtime": mtime_ns, "atime": 0, "ctime": 0, "crtime": crtime_ns}, wall_clock)


#: 100 ns intervals from 1601-01-01 to 1970-01-01
_FILETIME_EPOCH = 116444736000000000
#: $STANDARD_INFORMATION: byte offsets of crtime, mtime, MFT change (ctime), atime
_SI_TIMES = {"crtime": 0, "mtime": 8, "ctime": 16, "atime": 24}


def _ntfs_info(tsk: Any, fs_file: Any) -> bytes:
    """The first 36 bytes of ``$STANDARD_INFORMATION`` (four times, file attributes) or
    fewer when it has none."""
    for attr in fs_file:
        if attr.info.type == tsk.TSK_FS_ATTR_TYPE_NTFS_SI:
            return bytes(fs_file.read_random(0, 36, tsk.TSK_FS_ATTR_TYPE_NTFS_SI, attr.info.id))
    return b""


def _mft_record(tsk: Any, fs: Any, to_disk: ToDisk, inode: int) -> np.ndarray:
    """Disk byte ranges ``(k, 2)`` of an NTFS file's MFT record (its base record: its
    names, times, resident data), through ``$MFT``'s data runs; none when unknown."""
    if not hasattr(fs, "mft_runs"):
        boot = fs.image.read(fs.offset, 512) if hasattr(fs, "image") else b""
        per = int.from_bytes(boot[0x40:0x41], "little", signed=True) if len(boot) > 0x40 else 0
        fs.record_size = per * fs.info.block_size if per > 0 else 1 << -per if per else 0
        fs.mft_runs = sorted(run for attr in _data_attributes(tsk, fs.open_meta(inode=0))
                             for run in _runs(tsk, attr, fs.info.block_size))
        fs.mft_starts = [run[0] for run in fs.mft_runs]
    lo, hi = inode * fs.record_size, (inode + 1) * fs.record_size
    pieces = []
    i = max(bisect.bisect_right(fs.mft_starts, lo) - 1, 0)
    while lo < hi and i < len(fs.mft_runs):  # a record over two runs: clusters < a record
        at, disk, length = fs.mft_runs[i]
        if at <= lo < at + length:
            stop = min(hi, at + length)
            pieces.append((disk + lo - at, disk + stop - at))
            lo = stop
        i += 1
    return to_disk(np.array(pieces, np.int64).reshape(-1, 2))


def _ntfs_names(tsk: Any, fs_file: Any, name: str
                ) -> tuple[int, tuple[int, int, int, int, int] | tuple[()], str]:
    """The names (hard links) of an NTFS file — its ``$FILE_NAME`` attributes but 8.3 short
    names (namespace 2, DOS: the second name of a long one; the record header's count,
    which TSK gives, counts those too: every file Windows gave a short name had two) —
    and the size and times (atime, mtime, ctime, crtime; nanoseconds since the epoch) and
    TSK's address (``TYPE-ID``) of the one called ``name`` (the first long one if none
    is: TSK's body file gives every name the last one's)."""
    from blockforensics.fs.ntfs import (
        FILE_NAME_LENGTH,
        FILE_NAME_NAME,
        FILE_NAME_NAMESPACE,
        FILE_NAME_TIMES,
        NAMESPACE_DOS,
    )

    names, chosen, named = 0, None, False
    for attr in fs_file:
        if attr.info.type != tsk.TSK_FS_ATTR_TYPE_NTFS_FNAME:
            continue
        raw = bytes(fs_file.read_random(0, int(attr.info.size), attr.info.type, attr.info.id))
        if len(raw) <= FILE_NAME_NAMESPACE or raw[FILE_NAME_NAMESPACE] == NAMESPACE_DOS:
            continue
        names += 1
        own = raw[FILE_NAME_NAME : FILE_NAME_NAME + 2 * raw[FILE_NAME_LENGTH]] \
            .decode("utf-16-le", "replace") == name
        if chosen is None or (own and not named):
            times = {key: _filetime_ns(raw[at : at + 8]) for key, at in FILE_NAME_TIMES.items()}
            chosen = ((int(attr.info.size), times["atime"], times["mtime"], times["ctime"],
                       times["crtime"]), f"{int(attr.info.type)}-{int(attr.info.id)}")
            named = own
    return (names, *chosen) if chosen else (names, (), "")


def _ntfs_attributes(tsk: Any, fs_file: Any) -> tuple[tuple[str, str], ...]:
    """:attr:`Entry.attributes` of an NTFS file but its ``$FILE_NAME``: each ``$DATA`` and
    ``$INDEX_ROOT`` by name ("" for the unnamed one and ``$I30``)."""
    out: dict[str, str] = {}
    for attr in fs_file:
        if attr.info.type in (tsk.TSK_FS_ATTR_TYPE_NTFS_DATA, tsk.TSK_FS_ATTR_TYPE_NTFS_IDXROOT):
            name = name_text(attr.info.name) if attr.info.name else ""
            out.setdefault("" if name == "$I30" else name,
                           f"{int(attr.info.type)}-{int(attr.info.id)}")
    return tuple(out.items())


def _ntfs_times(info: bytes, times: dict[str, int], nanos: dict[str, int]
                ) -> tuple[dict[str, int], dict[str, int]]:
    """MACB times from ``$STANDARD_INFORMATION`` itself (``info``: its first bytes): TSK
    gives 0 for a time before 1970 and drops nothing else, but its 100 ns are read here
    too."""
    if len(info) < 32:
        return times, nanos
    times, nanos = dict(times), dict(nanos)
    for name, offset in _SI_TIMES.items():
        times[name], nanos[name] = divmod(_filetime_ns(info[offset : offset + 8]), 10**9)
    return times, nanos


def _filetime_ns(raw: bytes) -> int:
    """An NTFS time (``FILETIME``: 100 ns intervals since 1601-01-01 UTC, 8 bytes) in
    nanoseconds since the epoch; 0 (not recorded) for the zero ``FILETIME``, which
    Windows writes for "no time", not for 1601."""
    ticks = int.from_bytes(raw, "little")
    return (ticks - _FILETIME_EPOCH) * 100 if ticks else 0


def _ntfs_link_target(tsk: Any, fs_file: Any, info: bytes, content: _Content, size: int
                      ) -> bytes | None:
    """The target of an NTFS symbolic link: a junction's or a Windows symbolic link's
    reparse point, or an Interix link as ntfs-3g writes them (a system file whose
    content is ``IntxLNK\x01`` and the target); None for anything else."""
    from blockforensics.fs import ntfs

    flags = int.from_bytes(info[32:36], "little") if len(info) >= 36 else 0
    if flags & ntfs.FILE_ATTRIBUTE_REPARSE_POINT:
        for attr in fs_file:
            if attr.info.type == tsk.TSK_FS_ATTR_TYPE_NTFS_REPARSE:
                return ntfs.reparse_target(bytes(fs_file.read_random(
                    0, int(attr.info.size), tsk.TSK_FS_ATTR_TYPE_NTFS_REPARSE, attr.info.id)))
    if flags & ntfs.FILE_ATTRIBUTE_SYSTEM and len(ntfs.INTERIX_SYMLINK) < size <= 1 << 16 \
            and content.unit == 0:
        head = content.resident if content.resident is not None \
            else bytes(fs_file.read_random(0, size))
        return ntfs.interix_target(head)
    return None


def _ext_times(fs: Any, inode: int, times: dict[str, int], nanos: dict[str, int]
               ) -> tuple[dict[str, int], dict[str, int]]:
    """ext times read from the inode itself where TSK's may be wrong: TSK reads the 32-bit
    seconds unsigned and ignores the epoch bits, so 1901-1969 come out as 2038-2106 and
    2106-2446 as 1970-2310 (:func:`blockforensics.fs.ext.inode_times`: the kernel's rule).
    The inode is read only when that can differ: a time past 2^31 (the sign) or inodes
    with extra fields (the epoch bits)."""
    from blockforensics.fs.ext import GOOD_OLD_INODE_SIZE, ExtFileSystem, inode_times

    image = getattr(fs, "image", None)
    if image is None:
        return times, nanos
    if not hasattr(fs, "ext"):
        fs.ext_chunks = {}  # :func:`_ext_inode`'s pieces of the inode tables
        try:
            fs.ext = ExtFileSystem(image.disk, fs.offset)
            fs.ext_tables = fs.ext.inode_tables()
        except FormatError:  # a superblock the reader refuses: TSK's times
            fs.ext = None
    if fs.ext is None or (fs.ext.inode_size <= GOOD_OLD_INODE_SIZE
                          and max(times.values()) < 1 << 31):
        return times, nanos
    try:
        return inode_times(_ext_inode(fs, inode))
    except FormatError:  # no such inode (TSK's virtual ones): TSK's times
        return times, nanos


#: the HFS+ catalog file's catalog node ID (TN1150: kHFSCatalogFileID), TSK's inode of it
HFS_CATALOG_FILE = 4


def _hfs_times(fs: Any, inode: int, times: dict[str, int]) -> dict[str, int]:
    """HFS+ times read from the file's catalog record where TSK's may be wrong: TSK gives
    0 for a date from 1904 to 1969 (:mod:`blockforensics.fs.hfsplus`).  The catalog is
    read (once per file system) only when a time TSK gives is 0."""
    from blockforensics.fs.hfsplus import catalog_dates

    if not hasattr(fs, "hfs_dates"):
        try:
            catalog = fs.open_meta(inode=HFS_CATALOG_FILE)
            fs.hfs_dates = catalog_dates(catalog.read_random(0, int(catalog.info.meta.size)))
        except (OSError, RuntimeError, FormatError):  # a catalog TSK cannot read: TSK's times
            fs.hfs_dates = {}
    return fs.hfs_dates.get(inode, times)


#: bytes of an ext inode table read at a time (a power of two: no inode crosses one)
INODE_CHUNK = 1 << 16
#: inode table pieces kept, the oldest dropped first (16 MiB: a hashed directory lists
#: its files in no inode order)
INODE_CHUNKS_KEPT = 256


def _ext_inode(fs: Any, inode: int) -> bytes:
    """The raw record of inode ``inode`` of ``fs.ext``, read :data:`INODE_CHUNK` bytes of
    its table at a time (a read per inode made a listing 3.5 times slower)."""
    chunk, at = divmod(fs.ext.inode_offset(inode, fs.ext_tables), INODE_CHUNK)
    cache: dict[int, bytes] = fs.ext_chunks
    if chunk not in cache:
        if len(cache) >= INODE_CHUNKS_KEPT:
            del cache[next(iter(cache))]
        start = chunk * INODE_CHUNK
        cache[chunk] = fs.ext.read(start, min(INODE_CHUNK, fs.ext.size - start))
    return cache[chunk][at : at + fs.ext.inode_size]


def _skipped(tsk: Any, fs: Any, text: str, item: Any, allocated: bool) -> bool:
    name, meta = item.info.name, item.info.meta
    is_fat = bool(int(fs.info.ftype) & int(tsk.TSK_FS_TYPE_FAT_DETECT))
    is_ntfs = bool(int(fs.info.ftype) & int(tsk.TSK_FS_TYPE_NTFS_DETECT))
    flag = tsk.TSK_FS_NAME_FLAG_ALLOC if allocated else tsk.TSK_FS_NAME_FLAG_UNALLOC
    return (text in (".", "..") or meta is None or not int(name.flags) & int(flag)
            or meta.type not in (tsk.TSK_FS_META_TYPE_REG, tsk.TSK_FS_META_TYPE_DIR,
                                 tsk.TSK_FS_META_TYPE_LNK)
            or (is_fat and text.endswith("(Volume Label Entry)"))
            # exFAT's allocation bitmap and up-case table, listed as files with no times
            or (is_fat and text.startswith("$") and not (meta.mtime or meta.crtime or meta.atime))
            or (is_ntfs and text.startswith("$") and int(meta.addr) < 27))


def _walk(tsk: Any, fs: Any, to_disk: ToDisk, directory: Any, dir_path: str,
          entries: dict[str, Entry], seen: set[int], problems: list[str]) -> frozenset[str]:
    """Add the allocated, non-virtual entries below ``directory`` (path ``dir_path``,
    ending in "/"); returns the names it lists, and adds to ``problems`` the entries
    whose content cannot be read.  Directories wait on a stack, not in recursion: a
    tree a thousand levels deep is a few kilobytes of path."""
    top: frozenset[str] = frozenset()
    stack: list[tuple[str, Entry | None]] = [(dir_path, None)]
    while stack:
        dir_path, owner = stack.pop()
        names = []
        for item in directory if owner is None else fs.open_dir(inode=owner.inode):
            text = name_text(item.info.name.name)
            if _skipped(tsk, fs, text, item, allocated=True):
                continue
            path = dir_path + text
            if path in entries:  # NTFS lists a name twice (long and DOS 8.3 index entries)
                continue
            try:
                entry = entries[path] = _entry(tsk, fs, to_disk, path, item)
            except FormatError as exc:  # damaged metadata: named, not listed as gone
                problems.append(f"{path}: {exc}")
                continue
            names.append(text)
            if entry.type == "dir" and entry.inode not in seen:
                seen.add(entry.inode)
                stack.append((path + "/", entry))
        if owner is None:
            top = frozenset(names)
        else:
            owner.children = frozenset(names)
    return top


class Lister(Protocol):
    """How the files of one file system are listed and read: through The Sleuth Kit
    (:class:`TskLister`) or, for XFS, which TSK 4.11 does not read, through
    dissect.xfs (:class:`blockforensics.xfsfiles.XfsLister`), for Btrfs through
    dissect.btrfs (:class:`blockforensics.btrfsfiles.BtrfsLister`).  Paths handed in are the
    listing's (``p1:/dir/file``) and, as ``inner``, the same inside the file system.
    ``recovery``: what the listing shows of changes waiting in the file system's
    journal or log (replayed, or why not; "": none wait)."""

    recovery: str

    def walk(self, root_path: str, entries: dict[str, Entry]) -> list[str]:
        """Add the root (``root_path``, ending in "/") and every allocated entry below it;
        returns why any part could not be read ([]: all was)."""

    def read_allocated(self, path: str, inner: str) -> tuple[Entry, Iterator[bytes]] | None:
        """An allocated file (or directory) and its content (holes as zeros), or None."""

    def find_deleted(self, path: str, inner_parent: str, name: str
                     ) -> tuple[Entry, bytes] | None:
        """A deleted file ``name`` of directory ``inner_parent`` and its content, or None."""


class TskLister:
    """:class:`Lister` of a file system The Sleuth Kit opens (``fs``: its ``FS_Info``),
    at byte ``offset`` of ``view``."""

    recovery = ""

    def __init__(self, fs: Any, to_disk: ToDisk, view: Disk, offset: int):
        self.tsk, self.fs, self.to_disk = pytsk3(), fs, to_disk
        self.view, self.offset = view, offset

    def walk(self, root_path: str, entries: dict[str, Entry]) -> list[str]:
        tsk, fs = self.tsk, self.fs
        root = entries[root_path] = _entry(tsk, fs, self.to_disk, root_path,
                                           fs.open_meta(inode=fs.info.root_inum))
        problems: list[str] = []
        root.children = _walk(tsk, fs, self.to_disk, fs.open_dir(inode=fs.info.root_inum),
                              root_path, entries, {fs.info.root_inum}, problems)
        return problems

    def find_deleted(self, path: str, inner_parent: str, name: str
                     ) -> tuple[Entry, bytes] | None:
        tsk, fs = self.tsk, self.fs
        try:
            directory = fs.open_dir(path=inner_parent or "/")
        except OSError:
            return None
        is_fat = bool(int(fs.info.ftype) & int(tsk.TSK_FS_TYPE_FAT_DETECT))
        for item in directory:
            text = name_text(item.info.name.name)
            if (not _deleted_name_matches(is_fat, text, name)
                    or _skipped(tsk, fs, text, item, allocated=False)
                    or int(item.info.meta.flags) & int(tsk.TSK_FS_META_FLAG_ALLOC)):
                continue
            entry = _entry(tsk, fs, self.to_disk, path, item, deleted=True)
            if entry.type == "file":
                if entry.fs in NAME_ADDRESSED and self.marked_deleted(entry) is False:
                    entry.deleted = False  # there, unmarked: damage to its FAT, no deletion
                return entry, item.read_random(0, entry.size) if entry.size else b""
        return None

    def still_held(self, entry: Entry) -> bool:
        """Does the file system still hold ``entry`` (listed at another point, missing
        now)?  Then damage hid it: it was neither deleted nor (the other way) created.
        Held: its metadata allocated, linked and the same file; where metadata has an
        address of its own (not FAT's directory entries, which move and are reused by
        other entries), also metadata TSK cannot read, or allocated yet blank (a zeroed
        inode).  A deleted file's metadata is unallocated, or another file's, or
        unlinked (nlink 0: open when copied)."""
        tsk = self.tsk
        own_address = entry.fs not in NAME_ADDRESSED
        try:
            fs_file = self.fs.open_meta(inode=entry.inode)
        except OSError:
            return own_address
        meta = fs_file.info.meta
        if meta is None or not int(meta.flags) & int(tsk.TSK_FS_META_FLAG_ALLOC):
            return False
        if int(meta.flags) & int(tsk.TSK_FS_META_FLAG_UNUSED):  # allocated, yet blank
            return own_address
        try:
            now = _entry(tsk, self.fs, self.to_disk, entry.path, fs_file)
        except FormatError:  # held, its content unreadable
            return True
        return now.same_file(entry) and bool(int(meta.nlink))

    @cached_property
    def heap(self) -> ClusterHeap | str | None:
        """A FAT or exFAT volume's clusters as this point has them, or why not (its FATs
        or allocation bitmap cannot be read); None on another file system."""
        from blockforensics.fs.fat import FatFileSystem
        from blockforensics.fs.sleuthkit import TskFileSystem

        kind = _fs_name(self.tsk, self.fs)
        try:
            if kind == "fat":
                return FatFileSystem(self.view, self.offset).heap()
            if kind == "exfat":
                return TskFileSystem(self.view, self.offset).exfat_heap()
        except FormatError as exc:
            return str(exc)
        return None

    def clusters_held(self, entry: Entry, taken: Taken) -> bool | None:
        """FAT, exFAT: are the clusters of ``entry`` (listed at another point, with data)
        still allocated as it had them (:meth:`ClusterHeap.holds`), and none of them
        ``taken`` by the files listed now?  A deletion frees them (FAT: zeroes the
        chain in every FAT; exFAT: clears their bits), a file written since takes them.
        None: not decidable (:attr:`heap` unreadable, or FAT copies that disagree)."""
        heap = self.heap
        if heap is None or not len(entry.extents) or taken.overlaps(entry.extents):
            return False
        if isinstance(heap, str):
            return None
        own = _from_disk(self.to_disk, int(self.fs.info.block_count)
                         * int(self.fs.info.block_size), entry.extents)
        return heap.holds(heap.clusters(own))

    def marked_deleted(self, entry: Entry, data: Taken | None = None) -> bool | None:
        """FAT, exFAT: does the place of ``entry``'s directory entry (its metadata
        address) hold it now (:meth:`Entry.same_file`), marked deleted?  True: a
        deletion's own mark, which damage does not write (FAT: the name's first byte
        0xE5; exFAT: every entry of its set with the in-use bit clear and the set's
        checksum holding, :func:`~blockforensics.fs.sleuthkit.exfat_set_state`); False:
        it is there, not so marked, in a cluster one FAT (exFAT: the bitmap) has
        allocated (TSK calls an entry in a cluster the first FAT has free unallocated
        too; a directory deleted whole frees its clusters in all); None: something else
        is there, or its cluster is free or its allocation unreadable, or (``data``: the
        content of the files listed now) the place's cluster holds another file's data:
        a deleted directory's cluster given to a file, stale entries past its bytes."""
        from blockforensics.fs.fat import FAT_DELETED
        from blockforensics.fs.sleuthkit import exfat_set_state

        heap, exfat = self.heap, entry.fs == "exfat"
        try:
            at = _entry_slot(self.fs, entry.inode, exfat)
            raw = _slot_bytes(self.fs, entry.inode, exfat, entry.directory)
            if at is None or len(raw) < 2:
                return None
            if data is not None and isinstance(heap, ClusterHeap):  # the slot's cluster
                first = at - int(self.fs.offset) - heap.start
                first = heap.start + first - first % heap.cluster_size
                if data.overlaps(self.to_disk(np.array([[first, first + heap.cluster_size]],
                                                       np.int64))):
                    return None
            deleted = exfat_set_state(raw[: (raw[1] + 1) * 32]) == "deleted" if exfat \
                else raw[0] == FAT_DELETED
            fs_file = self.fs.open_meta(inode=entry.inode)
            if fs_file.info.meta is None or not _entry(
                    self.tsk, self.fs, self.to_disk, entry.path, fs_file,
                    deleted=True, directory=entry.directory).same_file(entry):
                return None
        except (OSError, BlockforensicsError):
            return None
        if deleted:
            return True
        return False if isinstance(heap, ClusterHeap) \
            and heap.allocated_at(at - int(self.fs.offset)) else None

    def read_allocated(self, path: str, inner: str) -> tuple[Entry, Iterator[bytes]] | None:
        with damage_raised(self.fs.image):
            return self._read_allocated(path, inner)

    def _read_allocated(self, path: str, inner: str) -> tuple[Entry, Iterator[bytes]] | None:
        tsk = self.tsk
        fs_file = _open_listed(tsk, self.fs, inner)
        if fs_file is None:
            return None
        name = fs_file.info.name
        if fs_file.info.meta is None or (
                name is not None and not int(name.flags) & int(tsk.TSK_FS_NAME_FLAG_ALLOC)):
            return None  # TSK's path lookup also finds deleted names
        try:
            entry = _entry(tsk, self.fs, self.to_disk, path, fs_file)
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}") from None
        where: tuple[Any, ...] = ()  # the attribute read: the default one
        stream = _stream_named(inner, name)
        if stream is not None:  # "file:stream", which TSK's lookup opens as the file
            attr = next((a for a in fs_file if a.info.type == tsk.TSK_FS_ATTR_TYPE_NTFS_DATA
                         and name_text(a.info.name or b"") == stream), None)
            if attr is None:
                return None
            where = attr.info.type, attr.info.id
            entry = dataclasses.replace(entry, size=int(attr.info.size), kind="file",
                                        resident=None, streams=())

        def chunks(fs_file: Any = fs_file, size: int = entry.size,
                   target: bytes | None = entry.resident if entry.kind == "symlink" else None
                   ) -> Iterator[bytes]:
            if target is not None:
                yield target  # the target (TSK reads a fast symlink as zeros)
                return
            for lo in range(0, size, CHUNK_BYTES):
                try:
                    with damage_raised(self.fs.image):
                        chunk = fs_file.read_random(lo, min(CHUNK_BYTES, size - lo), *where)
                    yield chunk
                except OSError as exc:  # TSK's read failing on damaged metadata
                    why = str(exc).splitlines()[0].split("Read error: ")[-1]
                    raise FormatError(f"{path}: The Sleuth Kit could not read it at byte "
                                      f"{lo} ({why})") from None

        return entry, chunks()


def _from_disk(to_disk: ToDisk, size: int, ranges: np.ndarray) -> np.ndarray:
    """Disk byte ranges ``(k, 2)`` of a file system of ``size`` bytes (each inside one
    piece of it, as ``to_disk`` splits them) as the file system's own."""
    pieces = to_disk(np.array([[0, size]], np.int64))
    at = np.cumsum(pieces[:, 1] - pieces[:, 0]) - (pieces[:, 1] - pieces[:, 0])
    order = np.argsort(pieces[:, 0])
    which = order[np.searchsorted(pieces[order, 0], ranges[:, 0], side="right") - 1]
    return ranges - (pieces[which, 0] - at[which])[:, None]


class Taken:
    """Disk byte ranges files own (``(k, 2)``, any order, overlapping or not), asked
    whether other ranges overlap them."""

    def __init__(self, ranges: np.ndarray):
        ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
        self.starts = ranges[:, 0]
        #: the furthest stop of the ranges up to each one
        self.reach = np.maximum.accumulate(ranges[:, 1])

    def overlaps(self, ranges: np.ndarray) -> bool:
        """Does any of ``ranges`` ``(k, 2)`` overlap one of these?"""
        if not len(self.starts):
            return False
        before = np.searchsorted(self.starts, ranges[:, 1], side="left") - 1  # start < stop
        return bool(np.any((before >= 0)
                           & (self.reach[np.maximum(before, 0)] > ranges[:, 0])))


def _stream_named(inner: str, name: Any) -> str | None:
    """The stream a path ``dir/file:stream`` names (as the timeline lists NTFS named
    streams) when TSK's lookup opened ``file`` (``name``: its name), else None."""
    last = inner.rsplit("/", 1)[-1]
    opened = name_text(name.name) if name is not None else last
    if len(last) > len(opened) and last[: len(opened) + 1].lower() == opened.lower() + ":":
        return last[len(opened) + 1:]
    return None


def _open_filesystems(disk: Disk) -> Iterator[tuple[str, Lister | None, str | None]]:
    """``(prefix, lister or None, problem)`` for each file system of the disk: XFS read
    by dissect.xfs, Btrfs by dissect.btrfs, ext volumes TSK misreads by the project's
    ext reader, everything else by The Sleuth Kit."""
    from blockforensics.fs.btrfs import SUPER_OFFSET as BTRFS_SUPER_OFFSET
    from blockforensics.fs.btrfs import SUPER_SIZE as BTRFS_SUPER_SIZE
    from blockforensics.fs.btrfs import has_btrfs_magic
    from blockforensics.fs.xfs import has_xfs_magic

    images: dict[int, Any] = {}
    for prefix, view, offset, to_disk in _filesystem_places(disk):
        where = f"byte {offset}" if view is disk else f"logical volume {prefix[:-1]}"
        if has_xfs_magic(view.read(offset, 4)):
            from blockforensics.xfsfiles import XfsLister

            try:
                yield prefix, XfsLister(view, offset, to_disk), None
            except FormatError as exc:
                yield prefix, None, f"the XFS file system at {where}: {exc}"
            continue
        if has_btrfs_magic(view.read(offset + BTRFS_SUPER_OFFSET, BTRFS_SUPER_SIZE)):
            from blockforensics.btrfsfiles import BtrfsLister

            try:
                yield prefix, BtrfsLister(view, offset, to_disk), None
            except FormatError as exc:
                yield prefix, None, f"the Btrfs volume at {where}: {exc}"
            continue
        recovered, recovery = _ext_recovered(view, offset)
        lister: Lister
        if _tsk_misreads_ext(view, offset):
            from blockforensics.extfiles import ExtLister

            try:
                lister = ExtLister(recovered, offset, to_disk)
            except FormatError as exc:
                yield prefix, None, f"the ext file system at {where}: {exc}"
                continue
            lister.recovery = recovery
            yield prefix, lister, None
            continue
        key = id(recovered)  # a replayed journal: an image of its own
        if key not in images:
            images[key] = ChainImgInfo(recovered)
        try:
            lister = TskLister(open_fs(images[key], offset), to_disk, view, offset)
            lister.recovery = recovery
            yield prefix, lister, None
        except OSError as exc:
            yield prefix, None, (f"The Sleuth Kit cannot open the file system at "
                                 f"{where}: {str(exc).splitlines()[0]}")


def list_entries(disk: Disk | None) -> Listing:
    """Every allocated file and directory of every file system of ``disk`` (None: an
    empty volume, nothing), by path."""
    listing = Listing()
    if disk is None:
        return listing
    for prefix, lister, problem in _open_filesystems(disk):
        if lister is None:
            listing.unreadable[prefix] = problem or ""
            continue
        try:
            problems = lister.walk(f"{prefix}/", listing.entries)
        except Exception as exc:  # its root unreadable (a walk names damage below it):
            problems = [f"the root directory could not be read ({exc})"]  # noted
        if lister.recovery:
            listing.recovery[prefix] = lister.recovery
        if problems:
            listing.unreadable[prefix] = "; ".join(problems)
    return listing


@dataclass
class Unreached:
    """Files of one file system, listed at another point and missing now: those it
    still holds (``paths``: no directory reaches them); FAT and exFAT, empty files
    nothing tells apart (``untold``: no cluster to find allocated; kept as deleted),
    and files whose allocation state cannot be told (``undecided``, ``why``: neither
    deleted nor held)."""

    paths: list[str] = field(default_factory=list)
    untold: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    why: str = ""


def unreached(disk: Disk, entries: list[Entry], listed: list[Entry]
              ) -> dict[str, Unreached]:
    """Of ``entries`` (listed at another point, missing from ``disk``'s listing
    ``listed``), those a file system read by The Sleuth Kit still holds, by file system
    prefix: :meth:`TskLister.still_held`, or (FAT, exFAT, where the directory entry is
    the metadata) the entry's place holding it unmarked, or :meth:`TskLister.clusters_held`,
    unless the place holds it marked deleted (:meth:`TskLister.marked_deleted`); where
    none of these can be told, undecided."""
    found: dict[str, Unreached] = {}
    named = any(e.fs in NAME_ADDRESSED for e in entries)
    none = np.empty((0, 2), np.int64)
    taken = Taken(np.concatenate([none, *(e.owned for e in listed if named)]))
    data = Taken(np.concatenate([none, *(e.extents for e in listed
                                         if named and e.type == "file")]))
    for prefix, lister, _ in _open_filesystems(disk):
        if not isinstance(lister, TskLister):
            continue
        mine = Unreached()
        for e in entries:
            if not e.path.startswith(prefix + "/"):
                continue
            if lister.still_held(e):
                mine.paths.append(e.path)
                continue
            if e.fs not in NAME_ADDRESSED:
                continue
            marked = lister.marked_deleted(e, data)
            if marked:
                continue
            held = marked is False or lister.clusters_held(e, taken)
            if held:
                mine.paths.append(e.path)
            elif e.type == "file" and not len(e.extents):
                mine.untold.append(e.path)
            elif held is None:
                mine.undecided.append(e.path)
        if mine.undecided:
            mine.why = lister.heap if isinstance(lister.heap, str) else \
                "its FAT copies disagree over their clusters, none holding them"
        if mine.paths or mine.undecided:
            found[prefix] = mine
    return found


def _deleted_name_matches(fs_is_fat: bool, listed: str, wanted: str) -> bool:
    """FAT marks a deleted entry by overwriting its first byte: TSK lists
    ``report.txt`` as ``_eport.txt``."""
    if listed == wanted:
        return True
    return fs_is_fat and listed[:1] == "_" and listed[1:].lower() == wanted[1:].lower()


def find_deleted(disk: Disk, path: str) -> tuple[Entry, bytes] | None:
    """A deleted file named ``path`` whose metadata TSK still reaches and no other file
    took over (a reallocated inode is refused), with its content as TSK recovers it
    (from the parent directory's unallocated names); None if none (always on XFS,
    which clears a deleted file's extents).  On FAT and exFAT, an entry TSK calls
    unallocated that bears no deletion mark (:meth:`TskLister.marked_deleted`) is
    returned with ``deleted`` False."""
    parent, _, name = path.rpartition("/")
    for prefix, lister, _ in _open_filesystems(disk):
        if lister is None or not path.startswith(prefix + "/"):
            continue
        found = lister.find_deleted(path, parent[len(prefix):], name)
        if found is not None:
            return found
    return None


def _open_listed(tsk: Any, fs: Any, inner: str) -> Any:
    """A file by its path as :func:`list_entries` names it (None: no such path): TSK's own
    lookup where it found each name as written (it ignores case on NTFS, whose POSIX
    names may differ in case only: ``a`` and ``A`` in one directory), else component by
    component through the allocated names, where a name's bytes that are no UTF-8 read
    ``\\xNN`` (:func:`name_text`)."""
    parts = [part for part in inner.split("/") if part]
    try:
        found = fs.open(inner)
    except OSError:
        found = None
    if found is not None and (not parts or _found_as_written(tsk, fs, found, parts)):
        return found
    directory = fs.open_dir(inode=fs.info.root_inum)
    for depth, part in enumerate(parts):
        found = next((item for item in directory if name_text(item.info.name.name) == part
                      and not _skipped(tsk, fs, part, item, allocated=True)), None)
        if found is None:
            return None
        if depth + 1 < len(parts):
            if found.info.meta is None or found.info.meta.type != tsk.TSK_FS_META_TYPE_DIR:
                return None
            directory = found.as_directory()
    return found


def _found_as_written(tsk: Any, fs: Any, found: Any, parts: list[str]) -> bool:
    """Is ``found``, TSK's lookup of the path of ``parts``, named by the last part exactly
    (a named stream's ``file:stream`` by its file's name), in the directory the other
    parts name exactly?"""
    name = found.info.name
    if name is None:
        return False
    text = name_text(name.name)
    if parts[-1] != text and not parts[-1].startswith(text + ":"):
        return False
    if len(parts) == 1:
        return int(name.par_addr) == int(fs.info.root_inum)
    parent = _open_listed(tsk, fs, "/".join(parts[:-1]))
    return parent is not None and parent.info.meta is not None \
        and int(parent.info.meta.addr) == int(name.par_addr)


def _read_allocated(disk: Disk, path: str) -> tuple[Entry, Iterator[bytes]] | None:
    """An allocated file by path and its content as its lister reads it (holes as zeros)."""
    for prefix, lister, _ in _open_filesystems(disk):
        if lister is None or not path.startswith(prefix + "/"):
            continue
        found = lister.read_allocated(path, path[len(prefix):])
        if found is not None:
            return found
    return None


def _hidden(chain: Any, p: int, path: str, disk: Disk) -> str:
    """Why ``path``, listed at point ``p``'s parent and missing at ``p``, may still be
    there (:func:`unreached`: damage hides it), as the end of a sentence; "" if not."""
    parent = chain.parent(p)
    earlier = None if parent is None else list_entries(chain.disk(parent)).entries.get(path)
    if earlier is None:
        return ""
    found = unreached(disk, [earlier], list(list_entries(disk).entries.values()))
    if any(path in f.paths for f in found.values()):
        return (f", but point {parent} lists it and it is still there: no directory "
                f"reaches it (damage, not a deletion); extract it from point {parent}")
    if any(path in f.undecided for f in found.values()):
        return (f", but point {parent} lists it; its allocation state is unreadable "
                f"(not decided); extract it from point {parent}")
    return ""


def extract(chain: Any, point: int | str, path: str, out: str | os.PathLike[str], *,
            force: bool = False) -> tuple[Path, int, bool]:
    """Write file ``path`` as it was at ``point`` of ``chain`` to ``out`` (atomically);
    deleted files too while TSK reaches their metadata.  Returns (out, bytes, deleted).
    A path that is not a file there is a UsageError (exit 2); so is ``out`` inside a
    chain, or existing without ``force`` (:func:`blockforensics.fileio.check_output`)."""
    from blockforensics.fileio import atomic_writer, check_output

    p = chain.point(point)
    out = check_output(out, force=force)
    path = listed_path(path)
    disk = chain.disk(p)
    found = _read_allocated(disk, path)
    deleted = False
    if found is None:
        recovered = find_deleted(disk, path)
        if recovered is None:
            raise UsageError(f"{path}: no such file at point {p} (not even a deleted one "
                             f"The Sleuth Kit can reach){_hidden(chain, p, path, disk)}")
        entry, data = recovered
        found, deleted = (entry, iter([data])), entry.deleted
    entry, chunks = found
    if entry.type != "file":
        raise UsageError(f"{path}: a directory at point {p}, not a file")
    size = 0
    with atomic_writer(out) as fh:
        for chunk in chunks:
            fh.write(chunk)
            size += len(chunk)
    return out, size, deleted

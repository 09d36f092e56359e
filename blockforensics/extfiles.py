"""The files of an ext2/3/4 volume The Sleuth Kit 4.11 cannot list right, as
:class:`~blockforensics.tsk.Entry` rows read by the project's own ext reader.

TSK does not open ``bigalloc`` volumes and looks for every group descriptor
after the superblock, which ``meta_bg`` moves for the groups past the first meta
group (:func:`blockforensics.tsk._tsk_misreads_ext`).  Here the inodes are found
through :class:`~blockforensics.fs.ext.ExtFileSystem`'s descriptors (either
layout), their blocks through its extent-tree and indirect-block walk, and
directories parsed as the ext4 disk layout documentation gives them: linear
``ext4_dir_entry_2`` records in every directory block (an htree's index blocks
read as one empty record, the checksum tail as an entry of inode 0), or, with
``inline_data``, in the inode itself after the parent's inode number and on in the
``system.data`` extended attribute.  Fast symbolic links keep their target in
``i_block``; inline files their content in ``i_block`` and ``system.data``.  The
rows are TSK's for the same volume (cross-checked in the tests) but for three
things TSK gets wrong or leaves out: a slow symbolic link carries its target (TSK:
no content), ext3 inodes' extra time fields are read (TSK: creation time 0), and
adjacent runs are one (TSK splits them at indirect blocks).

Units: extents in bytes of the disk; ext block numbers times the block size are
bytes of the volume, ``to_disk`` makes them the disk's.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

import numpy as np

from blockforensics.dissectfiles import DissectLister
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.ext import (
    EXTENTS_FL,
    GOOD_OLD_INODE_SIZE,
    INODE,
    INODE_EXTRA,
    ExtFileSystem,
    inode_times,
)
from blockforensics.fs.structure import Structure
from blockforensics.tsk import CHUNK_BYTES, Entry, ToDisk

ROOT_INODE = 2
INLINE_DATA_FL = 0x10000000
I_BLOCK_SIZE = 60  # bytes of i_block: a fast symlink's target, inline data's start
DIR_ENTRY = Structure("Ext4DirEntry2", 8, [
    (0x0, "I", "inode"),
    (0x4, "H", "rec_len"),
    (0x6, "B", "name_len"),
])
#: in-inode extended attributes (after the extra fields): magic, then entries
XATTR_MAGIC = 0xEA020000
XATTR_ENTRY = Structure("Ext4XattrEntry", 16, [
    (0x0, "B", "e_name_len"),
    (0x1, "B", "e_name_index"),
    (0x2, "H", "e_value_offs"),
    (0x8, "I", "e_value_size"),
])
SYSTEM_DATA = (7, b"data")  # name index 7 ("system."), name "data": inline data's rest
MAX_REC_LEN = 1 << 16  # a record spanning a whole 64 KiB block (stored as 0 or 65535)
MAX_FILE_BLOCKS = 1 << 32


class ExtLister(DissectLister):
    """Lists and reads the files of the ext volume at byte ``offset`` of ``disk``
    (``to_disk`` turns its byte ranges into the disk's)."""

    library = "the ext reader"

    def __init__(self, disk: Disk, offset: int, to_disk: ToDisk):
        self.ext = ExtFileSystem(disk, offset)
        self.to_disk = to_disk
        self.tables = self.ext.inode_tables()

    # ------------------------------------------------------------------ inodes
    def _inode(self, ino: int) -> tuple[int, bytes]:
        return ino, self.ext.raw_inode(ino, self.tables)

    def _system_data(self, raw: bytes) -> bytes:
        """The value of the in-inode ``system.data`` attribute (b"" when none)."""
        if len(raw) <= GOOD_OLD_INODE_SIZE:
            return b""
        start = GOOD_OLD_INODE_SIZE + INODE_EXTRA.parse(raw[GOOD_OLD_INODE_SIZE:]
                                                        .ljust(INODE_EXTRA.size, b"\0")
                                                        ).i_extra_isize
        if int.from_bytes(raw[start : start + 4], "little") != XATTR_MAGIC:
            return b""
        first = at = start + 4
        while at + XATTR_ENTRY.size <= len(raw) and int.from_bytes(raw[at : at + 4], "little"):
            entry = XATTR_ENTRY.parse(raw, at)
            name = raw[at + XATTR_ENTRY.size : at + XATTR_ENTRY.size + entry.e_name_len]
            if (entry.e_name_index, name) == SYSTEM_DATA:
                offs = first + entry.e_value_offs
                return raw[offs : offs + entry.e_value_size]
            at += -(-(XATTR_ENTRY.size + entry.e_name_len) // 4) * 4
        return b""

    def _inline(self, raw: bytes, size: int) -> bytes | None:
        """An inline-data inode's bytes (``size`` of them), or None when it has blocks."""
        inode = INODE.parse(raw)
        if not inode.i_flags & INLINE_DATA_FL:
            return None
        return (inode.i_block + self._system_data(raw))[:size]

    def _runs(self, raw: bytes, size: int) -> np.ndarray:
        """``(k, 3)``: file byte, volume byte, length of each mapped run, file order,
        cut at ``size`` (holes left out)."""
        blocks = self.ext.inode_blocks(raw, MAX_FILE_BLOCKS)
        mapped = np.flatnonzero(blocks)
        if not mapped.size:
            return np.empty((0, 3), np.int64)
        physical = blocks[mapped]
        breaks = np.flatnonzero((np.diff(mapped) != 1) | (np.diff(physical) != 1)) + 1
        firsts = np.r_[0, breaks]
        counts = np.diff(np.r_[firsts, mapped.size])
        bs = self.ext.block_size
        starts = mapped[firsts] * bs
        lengths = np.minimum(counts * bs, size - starts)
        keep = lengths > 0
        return np.stack([starts[keep], physical[firsts][keep] * bs, lengths[keep]], axis=1)

    # ------------------------------------------------------------------ entries
    def _entry(self, path: str, node: Any) -> Entry:
        ino, raw = node
        inode = INODE.parse(raw)
        mode = int(inode.i_mode)
        kind = ("dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode)
                else "file")
        size = int(inode.i_size_lo) | int(inode.i_size_high) << 32
        extents = np.empty((0, 2), np.int64)
        resident = self._inline(raw, size)
        if kind == "symlink" and resident is None and size < I_BLOCK_SIZE \
                and not inode.i_flags & EXTENTS_FL:
            resident = inode.i_block[:size]  # a fast symlink
        if resident is None:
            runs = self._runs(raw, size)
            extents = self.to_disk(np.stack([runs[:, 1], runs[:, 1] + runs[:, 2]], axis=1))
            if kind == "symlink":
                resident, extents = self._read(raw, size), np.empty((0, 2), np.int64)
        times, nanos = inode_times(raw)
        return Entry(path=path, type="dir" if kind == "dir" else "file", inode=ino, size=size,
                     mtime=times["mtime"], atime=times["atime"], ctime=times["ctime"],
                     crtime=times["crtime"], mode=mode & 0o7777,
                     uid=int(inode.i_uid) | int(inode.l_i_uid_high) << 16,
                     gid=int(inode.i_gid) | int(inode.l_i_gid_high) << 16, extents=extents,
                     resident=None if kind == "dir" else resident, kind=kind,
                     crtime_ns=nanos["crtime"], mtime_ns=nanos["mtime"],
                     ctime_ns=nanos["ctime"], atime_ns=nanos["atime"],
                     nlink=int(inode.i_links_count), fs="ext")

    # -------------------------------------------------------------- directories
    def _read(self, raw: bytes, size: int) -> bytes:
        """A file's whole content (holes as zeros)."""
        return b"".join(self._chunks(raw, size))

    def _chunks(self, raw: bytes, size: int) -> Iterator[bytes]:
        inline = self._inline(raw, size)
        if inline is not None:
            yield inline
            return
        at = 0
        for start, volume_byte, length in self._runs(raw, size).tolist():
            while at < start:
                step = min(CHUNK_BYTES, start - at)
                yield bytes(step)
                at += step
            for lo in range(0, length, CHUNK_BYTES):
                yield self.ext.read(volume_byte + lo, min(CHUNK_BYTES, length - lo))
            at = start + length
        while at < size:
            step = min(CHUNK_BYTES, size - at)
            yield bytes(step)
            at += step

    def _children(self, node: Any) -> list[tuple[str, Any]]:
        ino, raw = node
        inode = INODE.parse(raw)
        size = int(inode.i_size_lo) | int(inode.i_size_high) << 32
        inline = self._inline(raw, size)
        if inline is not None:  # the parent's inode number, then records; then system.data
            regions = [inline[4:I_BLOCK_SIZE], inline[I_BLOCK_SIZE:]]
        else:
            data = self._read(raw, size)
            bs = self.ext.block_size
            regions = [data[at : at + bs] for at in range(0, len(data), bs)]
        out = []
        for region in regions:
            at = 0
            while at + DIR_ENTRY.size <= len(region):
                entry = DIR_ENTRY.parse(region, at)
                rec_len = entry.rec_len or MAX_REC_LEN  # 64 KiB blocks: 0 is 65536
                if rec_len == MAX_REC_LEN - 1:
                    rec_len = MAX_REC_LEN
                if rec_len < DIR_ENTRY.size or at + rec_len > len(region):
                    if at == 0 and not any(region):
                        break  # a hole in the directory
                    raise FormatError(f"directory inode {ino}: bad record at byte {at}")
                name = region[at + DIR_ENTRY.size : at + DIR_ENTRY.size + entry.name_len]
                if entry.inode and name not in (b".", b".."):
                    out.append((name.decode("utf-8", "backslashreplace"),
                                self._inode(int(entry.inode))))
                at += rec_len
        return out

    # ------------------------------------------------------------------ lister
    def _root(self) -> Any:
        return self._inode(ROOT_INODE)

    def read_allocated(self, path: str, inner: str) -> tuple[Entry, Iterator[bytes]] | None:
        """The file at ``inner`` (its path inside the file system) as an Entry named
        ``path``, and its content (holes as zeros)."""
        try:
            node = self._node(inner)
        except (KeyError, FormatError):
            return None
        entry = self._entry(path, node)
        return entry, self._chunks(node[1], entry.size)

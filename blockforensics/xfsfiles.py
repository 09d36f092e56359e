"""The files of an XFS file system as :class:`~blockforensics.tsk.Entry` rows, through
dissect.xfs (Fox-IT's XFS implementation): The Sleuth Kit 4.11 does not read XFS.

dissect.xfs walks the directories (short-form, block, leaf and node formats) and
reads the inodes; the extent list of each file is decoded here from its inode
(dissect's extent records: file block, file-system block, block count, unwritten
flag) so that :attr:`Entry.extents` are disk byte runs in file order, holes and
unwritten (preallocated, reads-as-zeros) extents left out, exactly as the TSK
lister leaves out sparse runs.  Symbolic links carry their target as resident
bytes.  XFS clears a file's extent list when it is deleted, so a deleted file is
never recoverable from its inode: :meth:`XfsLister.find_deleted` finds none.

Units: extents in bytes of the disk; XFS file-system block numbers (AG number
shifted by ``sb_agblklog`` | AG block) are turned into positions from the
volume's start (AG number × ``sb_agblocks`` + AG block) before they are bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

import numpy as np

from blockforensics.dissectfiles import DissectLister, Window, dissect_module
from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.fs.xfs import XfsFileSystem
from blockforensics.fs.xfslog import replayed
from blockforensics.tsk import CHUNK_BYTES, Entry, ToDisk

#: di_format of an inode whose data lives in the inode itself
FMT_LOCAL = 1
#: di_flags: the file's data is on the realtime device (another device, not this image)
DIFLAG_REALTIME = 0x1
#: di_flags2: the inode's times are ``bigtime`` (nanoseconds from 1901, to 2486)
DIFLAG2_BIGTIME = 0x8
#: directory data blocks: block format (data, leaf and tail in one block), data format
DIR_BLOCK_MAGICS = (0x58444233, 0x58443242)  # "XDB3" (v5), "XD2B"
DIR_DATA_MAGICS = (0x58444433, 0x58443244)  # "XDD3" (v5), "XD2D"
DIR_HEADER = {True: 64, False: 16}  # bytes of a data block's header, v5 and v4
DIR_FREE_TAG = 0xFFFF  # an unused region's first two bytes
DIR_BLOCK_TAIL = 8  # count, stale: the last bytes of a block-format directory block
DIR_LEAF_ENTRY = 8  # hashval, address: the leaf entries before the tail


class XfsLister(DissectLister):
    """Lists and reads the files of the XFS file system at byte ``offset`` of ``disk``
    (``to_disk`` turns its byte ranges into the disk's); FormatError when dissect.xfs
    cannot open it."""

    fs_name = "xfs"
    library = "dissect.xfs"

    def __init__(self, disk: Disk, offset: int, to_disk: ToDisk):
        self.geometry = XfsFileSystem(disk, offset)
        #: what a dirty log made of the listing: replayed, or why not ("": clean)
        self.recovery = ""
        if self.geometry.log_problem:
            disk, self.recovery = replayed(self.geometry)
            self.geometry = XfsFileSystem(disk, offset)
        self.to_disk = to_disk
        self.disk, self.offset = disk, offset
        module = dissect_module("xfs")
        try:
            self.xfs = module.XFS(Window(disk, offset, self.geometry.size))
        except Exception as exc:  # dissect raises its own errors and struct's EOFError
            raise FormatError(f"dissect.xfs cannot open the XFS file system: {exc}") from None
        self.block_size = self.geometry.block_size
        #: paths of files whose data is on the realtime device, met by :meth:`_entry`
        self.realtime: list[str] = []

    # ------------------------------------------------------------------ extents
    def _runs(self, node: Any) -> list[tuple[int, int, int]]:
        """``(file byte, volume byte, length)`` of each written extent, file order, cut
        at the file's size (holes and unwritten extents left out)."""
        if node.inode.di_format == FMT_LOCAL or node.inode.di_flags & DIFLAG_REALTIME:
            return []  # in the inode, or on the realtime device: no extents here
        size, bs, runs = int(node.size), self.block_size, []
        for offset, fsblock, count, unwritten in node._iter_blocks():
            start = int(offset) * bs
            length = min(int(count) * bs, size - start)
            if length > 0 and not unwritten:
                runs.append((start, self.geometry.linear(int(fsblock)) * bs, length))
        return sorted(runs)

    def _entry(self, path: str, node: Any) -> Entry:
        inode = node.inode
        mode = int(inode.di_mode)
        kind = ("dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode)
                else "file")
        if inode.di_flags & DIFLAG_REALTIME and kind == "file":
            self.realtime.append(path)
        runs = self._runs(node)
        extents = self.to_disk(np.array([(v, v + n) for _, v, n in runs], dtype=np.int64)
                               .reshape(-1, 2))
        resident = None
        if kind == "symlink":
            resident = node.link.encode("utf-8", "surrogateescape")
            extents = np.empty((0, 2), np.int64)
        elif kind == "file" and inode.di_format == FMT_LOCAL and node.size:
            resident = node.open().read()
        return self._node_entry(
            path, node, kind=kind, mode=mode,
            crtime_ns=self._time_ns(node, "crtime") if inode.di_version >= 3 else 0,
            uid=int(inode.di_uid), gid=int(inode.di_gid), extents=extents, resident=resident,
            seq=int(inode.di_gen),
            nlink=int(inode.di_nlink if inode.di_version >= 2 else inode.di_onlink))

    def _time_ns(self, node: Any, name: str) -> int:
        """Time ``name`` (mtime, atime, ctime, crtime) of the inode: with ``bigtime``,
        nanoseconds from 1901-12-13 (dissect's reading); without, the legacy
        ``xfs_timestamp`` whose 32-bit seconds are signed (the kernel's: before 1970
        negative; dissect reads them unsigned, 1960 as 2096) and nanoseconds after."""
        inode = node.inode
        if inode.di_version >= 3 and inode.di_flags2 & DIFLAG2_BIGTIME:
            return int(getattr(node, f"{name}_ns"))
        raw = int(getattr(inode, f"di_{name}"))
        return int(np.int32(np.uint32(raw >> 32))) * 10**9 + (raw & 0xFFFFFFFF)

    # -------------------------------------------------------------- directories
    def _children(self, node: Any) -> list[tuple[str, Any]]:
        """``(name, inode)`` of a directory's entries but "." and "..".  Short-form
        (in the inode) directories through dissect.xfs; block, leaf and node ones
        parsed here, directory block by directory block (``4096 << sb_dirblklog``
        bytes may span several file-system blocks, which dissect.xfs 3.x does not
        follow)."""
        if node.inode.di_format == FMT_LOCAL:
            return [(c.filename.encode("utf-8", "surrogateescape")
                     .decode("utf-8", "backslashreplace"), c)
                    for c in node.iterdir() if c.filename not in (".", "..")]
        dir_block = self.block_size << self.geometry.sb_dirblklog
        data = node.open().read()
        header = DIR_HEADER[self.geometry.crc]
        out = []
        for at in range(0, len(data) - dir_block + 1, dir_block):
            block = data[at : at + dir_block]
            magic = int.from_bytes(block[:4], "big")
            if magic in DIR_BLOCK_MAGICS:
                count = int.from_bytes(block[-DIR_BLOCK_TAIL : -DIR_BLOCK_TAIL + 4], "big")
                end = dir_block - DIR_BLOCK_TAIL - count * DIR_LEAF_ENTRY
            elif magic in DIR_DATA_MAGICS:
                end = dir_block
            else:
                continue  # a hole: a data block freed in a leaf or node directory
            pos = header
            while pos + 8 <= end:
                if int.from_bytes(block[pos : pos + 2], "big") == DIR_FREE_TAG:
                    length = int.from_bytes(block[pos + 2 : pos + 4], "big")
                    if length < 8 or length % 8:
                        raise FormatError(f"bad free region in directory {node.inum}")
                    pos += length
                    continue
                inum = int.from_bytes(block[pos : pos + 8], "big")
                namelen = block[pos + 8]
                name = block[pos + 9 : pos + 9 + namelen].decode("utf-8", "backslashreplace")
                pos += -(-(9 + namelen + self.geometry.ftype + 2) // 8) * 8
                if name not in (".", ".."):
                    out.append((name, self.xfs.get_inode(inum, name)))
        return out

    # ------------------------------------------------------------------ lister
    def _root(self) -> Any:
        return self.xfs.root

    def _notes(self) -> list[str]:
        if not self.realtime:
            return []
        return [f"{len(self.realtime)} files keep their data on the realtime device, not "
                f"in this image (listed without content), e.g. {self.realtime[0]}"]

    def read_allocated(self, path: str, inner: str) -> tuple[Entry, Iterator[bytes]] | None:
        """The file at ``inner`` (its path inside the file system) as an Entry named
        ``path``, and its content (holes and unwritten extents as zeros)."""
        try:
            node = self._node(inner)
        except Exception:  # not there (dissect's FileNotFoundError), or unreadable
            return None
        entry = self._entry(path, node)
        if node.inode.di_flags & DIFLAG_REALTIME and entry.size:
            raise UsageError(f"{path}: its data is on the XFS realtime device, which is "
                             "not in this image")
        return entry, self._chunks(entry, node)

    def _chunks(self, entry: Entry, node: Any) -> Iterator[bytes]:
        if entry.resident is not None:
            yield entry.resident
            return
        at = 0
        for start, volume_byte, length in self._runs(node):
            while at < start:  # a hole, or an unwritten extent
                step = min(CHUNK_BYTES, start - at)
                yield bytes(step)
                at += step
            for lo in range(0, length, CHUNK_BYTES):
                n = min(CHUNK_BYTES, length - lo)
                yield self.geometry.read(volume_byte + lo, n)
            at = start + length
        while at < entry.size:
            step = min(CHUNK_BYTES, entry.size - at)
            yield bytes(step)
            at += step

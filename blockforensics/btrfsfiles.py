"""The files of a Btrfs volume as :class:`~blockforensics.tsk.Entry` rows, through
dissect.btrfs (Fox-IT's Btrfs implementation).

Every subvolume and snapshot is listed, from the top-level subvolume (id 5) down:
paths read as when id 5 is mounted (``/@home/user/file``,
``/@/.snapshots/1/snapshot/etc/fstab``), whichever subvolume is the default one.
dissect.btrfs reads the directories (DIR_INDEX items), inodes and file extents,
decompressing zlib, LZO and zstd extents.  A directory entry naming a subvolume is
followed only when the root tree's ROOT_REF item (parent subvolume, child, the
directory and the name) confirms it, as the kernel does: a snapshot of a subvolume
keeps the entries of subvolumes nested in it, which the kernel shows as empty
directories (inode 2), and so are they listed here.  Inode numbers count per
subvolume (a snapshot's files keep their source's): :attr:`Entry.volume` holds
the subvolume's id.  Each file's
EXTENT_DATA items give logical byte ranges; they are mapped here through the chunk
tree (:class:`~blockforensics.fs.btrfs.BtrfsFileSystem`) so that
:attr:`Entry.extents` are *physical* disk byte runs in file order: for a plain
extent the part of the on-disk extent the file references (cut at the file's
size), for a compressed one the whole compressed extent on disk; holes and
preallocated (reads-as-zeros) extents left out.  Inline data (in the tree) is
the entry's resident content; a symbolic link's target too.  Btrfs keeps no deleted
file's extents: :meth:`BtrfsLister.find_deleted` finds none.

Units: extents in bytes of the disk; "logical" bytes are Btrfs addresses.
"""

from __future__ import annotations

import importlib
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from blockforensics.dissectfiles import DissectLister, Window, dissect_module
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.btrfs import BtrfsFileSystem
from blockforensics.fs.btrfslog import replayed
from blockforensics.tsk import CHUNK_BYTES, Entry, ToDisk

#: the inode number the kernel gives the empty directory standing for a subvolume a
#: snapshot does not hold (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID)
EMPTY_SUBVOL_DIR = 2
#: the top-level subvolume (BTRFS_FS_TREE_OBJECTID)
TOP_LEVEL = 5


@dataclass(frozen=True)
class EmptySubvolumeDir:
    """The empty directory in subvolume ``volume`` where a snapshot kept the entry of a
    subvolume nested in its source (no ROOT_REF backs it)."""

    volume: int


def _checked_btrfs(module: Any, geometry: BtrfsFileSystem) -> Any:
    """dissect.btrfs's volume class reading every tree node through ``geometry``'s checks
    (checksum, own address, level, item count), and refusing a node without items:
    dissect checks none of this, and its binary search of a node whose item count reads
    0 never ends (a damaged volume hung ``diff``).  Each is a FormatError instead."""

    class CheckedBtrfs(module.Btrfs):
        def _read_node(self, address: int) -> bytes:
            head, data = geometry.node(address)
            if not head.nritems:
                raise FormatError(f"{geometry.name}: tree node at logical byte {address} "
                                  f"has no items")
            return data

    return CheckedBtrfs


class BtrfsLister(DissectLister):
    """Lists and reads the files of every subvolume of the Btrfs volume at byte
    ``offset`` of ``disk`` (``to_disk`` turns its byte ranges into the disk's);
    FormatError when the volume is not one this project maps (several devices, RAID)
    or dissect.btrfs cannot open it."""

    fs_name = "btrfs"
    library = "dissect.btrfs"

    def __init__(self, disk: Disk, offset: int, to_disk: ToDisk):
        self.geometry = BtrfsFileSystem(disk, offset)
        #: what a log tree made of the listing: replayed, or why not ("": none)
        self.recovery = ""
        if self.geometry.sb.log_root:
            disk, self.recovery = replayed(self.geometry)
            self.geometry = BtrfsFileSystem(disk, offset)
        self.geometry.read_chunk_tree()
        self.to_disk = to_disk
        module = dissect_module("btrfs")
        try:
            self.btrfs = _checked_btrfs(module, self.geometry)(
                Window(disk, offset, self.geometry.size))
            self.top = self.btrfs.open_subvolume(TOP_LEVEL).root
        except Exception as exc:  # dissect raises its own errors and struct's EOFError
            raise FormatError(f"dissect.btrfs cannot open the Btrfs volume: {exc}") from None
        self.c_btrfs = importlib.import_module("dissect.btrfs.c_btrfs").c_btrfs

    # ------------------------------------------------------------------ extents
    def _runs(self, node: Any) -> list[tuple[int, int, int]]:
        """``(file byte, volume byte, length)`` of each extent with data on disk, file
        order (holes and preallocated extents left out; a compressed extent: the whole
        compressed extent, at its first file byte)."""
        extents = node.extents() if node.is_file() and node.size else None
        runs, at, size = [], 0, int(node.size)
        for extent in extents or ():
            if (extent.disk_offset, extent.disk_length) != (0, 0) and at < size:
                if extent.compression:
                    logical, length = int(extent.disk_offset), int(extent.disk_length)
                else:
                    logical = int(extent.disk_offset + extent.offset)
                    length = min(int(extent.length), size - at)
                runs.append((at, self.geometry.physical(logical, length)[0], length))
            at += int(extent.length)
        return runs

    def _entry(self, path: str, node: Any) -> Entry:
        if isinstance(node, EmptySubvolumeDir):
            return Entry(path=path, type="dir", inode=EMPTY_SUBVOL_DIR, size=0, mtime=0,
                         atime=0, ctime=0, crtime=0, mode=0o755, uid=0, gid=0,
                         extents=np.empty((0, 2), dtype=np.int64), kind="dir", nlink=1,
                         fs=self.fs_name, volume=node.volume)
        inode = node.inode
        mode = int(inode.mode)
        kind = ("dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode)
                else "file")
        runs = self._runs(node) if kind == "file" else []
        compressed = kind == "file" and any(extent.compression
                                            for extent in node.extents() or ())
        extents = self.to_disk(np.array([(v, v + n) for _, v, n in runs], dtype=np.int64)
                               .reshape(-1, 2))
        resident = None
        if kind == "symlink":
            resident = node.link.encode("utf-8", "surrogateescape")
        elif kind == "file" and node.size and node.extents() is None:  # inline
            resident = node.open().read()
        return self._node_entry(
            path, node, kind=kind, mode=mode, crtime_ns=self._time_ns(node, "otime"),
            uid=int(inode.uid), gid=int(inode.gid), extents=extents, resident=resident,
            seq=int(inode.generation), nlink=int(inode.nlink),
            reader=partial(self._decoded, node, int(node.size)) if compressed else None,
            volume=int(node.subvolume.objectid))

    def _time_ns(self, node: Any, name: str) -> int:
        """Time ``name`` (mtime, atime, ctime, otime) of the inode: ``btrfs_timespec``'s
        seconds are signed (the kernel's ``s64``: before 1970 negative; dissect reads
        them unsigned) and its nanoseconds below."""
        spec = getattr(node.inode, name)
        seconds = int(np.int64(np.uint64(spec.sec)))
        return seconds * 10**9 + int(spec.nsec)

    def _children(self, node: Any) -> list[tuple[str, Any]]:
        """``(name, inode)`` of a directory's entries but "." and ".." (a subvolume's
        root, or an :class:`EmptySubvolumeDir` where no ROOT_REF backs the entry)."""
        if isinstance(node, EmptySubvolumeDir):
            return []
        here = node.subvolume.objectid
        out = []
        for name, child in node.iterdir():
            if name in (".", ".."):
                continue
            if child.subvolume.objectid != here and not self._linked(here, child, node, name):
                child = EmptySubvolumeDir(here)
            out.append((name.encode("utf-8", "surrogateescape")
                        .decode("utf-8", "backslashreplace"), child))
        return out

    def _linked(self, parent: int, child: Any, directory: Any, name: str) -> bool:
        """Whether the root tree links subvolume ``child`` (its root) into ``parent`` at
        ``directory``/``name`` (a ROOT_REF item saying so)."""
        try:
            _, data = self.btrfs._root_tree.find(parent, self.c_btrfs.BTRFS_ROOT_REF_KEY,
                                                 child.subvolume.objectid)
        except KeyError:
            return False
        ref = self.c_btrfs.btrfs_root_ref(data)
        return bool(ref.dirid == directory.inum
                    and ref.name == name.encode("utf-8", "surrogateescape"))

    # ------------------------------------------------------------------ lister
    def _root(self) -> Any:
        return self.top

    def read_allocated(self, path: str, inner: str) -> tuple[Entry, Iterator[bytes]] | None:
        """The file at ``inner`` (its path inside the file system) as an Entry named
        ``path``, and its content (holes as zeros, compressed extents decompressed)."""
        try:
            node = self._node(inner)
        except Exception:  # not there, or unreadable
            return None
        entry = self._entry(path, node)
        return entry, self._chunks(entry, node)

    def _chunks(self, entry: Entry, node: Any) -> Iterator[bytes]:
        if entry.resident is not None or entry.type == "dir":
            yield entry.resident or b""
            return
        yield from self._decoded(node, entry.size)

    @staticmethod
    def _decoded(node: Any, size: int) -> Iterator[bytes]:
        """A file's content as dissect reads it: compressed extents decompressed, holes
        as zeros (bytes)."""
        with node.open() as fh:
            for lo in range(0, size, CHUNK_BYTES):
                data = fh.read(min(CHUNK_BYTES, size - lo))
                yield data + bytes(min(CHUNK_BYTES, size - lo) - len(data))

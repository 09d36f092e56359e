"""The files of a Btrfs volume as :class:`~blockforensics.tsk.Entry` rows, through
dissect.btrfs (Fox-IT's Btrfs implementation).

dissect.btrfs walks the default subvolume's directories (DIR_INDEX items) and reads
inodes and file extents, decompressing zlib, LZO and zstd extents.  Each file's
EXTENT_DATA items give logical byte ranges; they are mapped here through the chunk
tree (:class:`~blockforensics.fs.btrfs.BtrfsFileSystem`) so that
:attr:`Entry.extents` are *physical* disk byte runs in file order: for a plain
extent the part of the on-disk extent the file references (cut at the file's
size), for a compressed one the whole compressed extent on disk; holes and
preallocated (reads-as-zeros) extents left out.  Inline data (in the tree) is
the entry's resident content; a symbolic link's target too.  Subvolumes nested in
the default one are named, not descended.  Btrfs keeps no deleted file's extents:
:meth:`BtrfsLister.find_deleted` finds none.

Units: extents in bytes of the disk; "logical" bytes are Btrfs addresses.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

import numpy as np

from blockforensics.dissectfiles import DissectLister, Window, dissect_module
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.btrfs import BtrfsFileSystem
from blockforensics.tsk import CHUNK_BYTES, Entry, ToDisk


class BtrfsLister(DissectLister):
    """Lists and reads the files of the default subvolume of the Btrfs volume at byte
    ``offset`` of ``disk`` (``to_disk`` turns its byte ranges into the disk's);
    FormatError when the volume is not one this project maps (several devices, RAID)
    or dissect.btrfs cannot open it."""

    fs_name = "btrfs"
    library = "dissect.btrfs"

    def __init__(self, disk: Disk, offset: int, to_disk: ToDisk):
        self.geometry = BtrfsFileSystem(disk, offset)
        self.geometry.read_chunk_tree()
        self.to_disk = to_disk
        module = dissect_module("btrfs")
        try:
            self.btrfs = module.Btrfs(Window(disk, offset, self.geometry.size))
            self.subvolume = self.btrfs.default_subvolume
        except Exception as exc:  # dissect raises its own errors and struct's EOFError
            raise FormatError(f"dissect.btrfs cannot open the Btrfs volume: {exc}") from None
        #: paths of subvolumes met below the default one (not descended)
        self.nested: list[str] = []

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
        inode = node.inode
        mode = int(inode.mode)
        kind = ("dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode)
                else "file")
        runs = self._runs(node) if kind == "file" else []
        extents = self.to_disk(np.array([(v, v + n) for _, v, n in runs], dtype=np.int64)
                               .reshape(-1, 2))
        resident = None
        if kind == "symlink":
            resident = node.link.encode("utf-8", "surrogateescape")
        elif kind == "file" and node.size and node.extents() is None:  # inline
            resident = node.open().read()
        times = {name: divmod(int(getattr(node, f"{name}_ns")), 10**9)
                 for name in ("mtime", "atime", "ctime", "otime")}
        return Entry(path=path, type="dir" if kind == "dir" else "file", inode=int(node.inum),
                     size=int(node.size), mtime=times["mtime"][0], atime=times["atime"][0],
                     ctime=times["ctime"][0], crtime=times["otime"][0], mode=mode & 0o7777,
                     uid=int(inode.uid), gid=int(inode.gid), extents=extents,
                     resident=resident, kind=kind, crtime_ns=times["otime"][1],
                     mtime_ns=times["mtime"][1], ctime_ns=times["ctime"][1],
                     seq=int(inode.generation), nlink=int(inode.nlink), fs=self.fs_name)

    def _children(self, node: Any) -> list[tuple[str, Any]]:
        """``(name, inode)`` of a directory's entries but "." and ".."."""
        return [(name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
                 child) for name, child in node.iterdir() if name not in (".", "..")]

    # ------------------------------------------------------------------ lister
    def _root(self) -> Any:
        return self.subvolume.root

    def _descend(self, path: str, node: Any) -> bool:
        """Not into a subvolume nested in the default one (named in the notes)."""
        if node.subvolume.objectid != self.subvolume.objectid:
            self.nested.append(path)
            return False
        return True

    def _notes(self) -> list[str]:
        if not self.nested:
            return []
        return [f"{len(self.nested)} subvolumes inside the default one are named but not "
                f"listed, e.g. {self.nested[0]}"]

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
        with node.open() as fh:
            for lo in range(0, entry.size, CHUNK_BYTES):
                data = fh.read(min(CHUNK_BYTES, entry.size - lo))
                yield data + bytes(min(CHUNK_BYTES, entry.size - lo) - len(data))

"""What the listers of file systems read through Fox-IT's dissect (XFS, Btrfs) share:
the walk of the directory tree into :class:`~blockforensics.tsk.Entry` rows, the
lookup of a path, and a byte window of the disk for dissect to read.  Each file
system's lister says how a directory's children, an entry and the root are read
(:mod:`blockforensics.xfsfiles`, :mod:`blockforensics.btrfsfiles`).

Units: bytes.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk
from blockforensics.tsk import Entry


def dissect_module(name: str) -> Any:
    """dissect's module of file system ``name`` ("xfs", "btrfs"): ``dissect.NAME.NAME``;
    UsageError naming the pip package when it is not installed."""
    try:
        return importlib.import_module(f"dissect.{name}.{name}")
    except ImportError as exc:
        raise UsageError(f"{name} file listings need dissect.{name} "
                         f"(pip install dissect.{name})") from exc


class Window:
    """Bytes ``offset .. offset + length`` of ``disk`` as a read-only file object (what
    dissect's readers open)."""

    def __init__(self, disk: Disk, offset: int, length: int):
        self.disk, self.offset, self.length, self.pos = disk, offset, length, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.length + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        stop = self.length if n is None or n < 0 else min(self.pos + n, self.length)
        if stop <= self.pos:
            return b""
        data = self.disk.read(self.offset + self.pos, stop - self.pos)
        self.pos += len(data)
        return data


class DissectLister(ABC):
    """The walk and path lookup of a :class:`~blockforensics.tsk.Lister` over a dissect
    file system; subclasses give its root, children and entries."""

    #: the library named when a directory cannot be read ("dissect.xfs" …)
    library: str
    #: the file system's name in the rows (``Entry.fs``)
    fs_name: str
    #: what the listing shows of changes waiting in a log (see ``tsk.Lister``)
    recovery = ""

    @abstractmethod
    def _root(self) -> Any:
        """The root directory's node."""

    @abstractmethod
    def _children(self, node: Any) -> list[tuple[str, Any]]:
        """``(name, node)`` of a directory's entries but "." and ".."."""

    @abstractmethod
    def _entry(self, path: str, node: Any) -> Entry:
        """The Entry named ``path`` of ``node``."""

    def _notes(self) -> list[str]:
        """What the walk met that it does not list (said after it)."""
        return []

    def _node_entry(self, path: str, node: Any, *, kind: str, mode: int, crtime_ns: int,
                    **fields: Any) -> Entry:
        """The Entry of a dissect inode ``node`` of ``kind``: its number, size and
        modification, access and change times (``*_ns``, nanoseconds) read by name;
        the creation time given, as each file system keeps it elsewhere; ``fields``:
        the rest (uid, gid, extents, resident, seq, nlink …)."""
        seconds = {name: divmod(self._time_ns(node, name), 10**9)
                   for name in ("mtime", "atime", "ctime")}
        crtime, crtime_frac = divmod(crtime_ns, 10**9)
        return Entry(path=path, type="dir" if kind == "dir" else "file", inode=int(node.inum),
                     size=int(node.size), mtime=seconds["mtime"][0], atime=seconds["atime"][0],
                     ctime=seconds["ctime"][0], crtime=crtime, mode=mode & 0o7777, kind=kind,
                     crtime_ns=crtime_frac, mtime_ns=seconds["mtime"][1],
                     ctime_ns=seconds["ctime"][1], atime_ns=seconds["atime"][1],
                     fs=self.fs_name, **fields)

    def _time_ns(self, node: Any, name: str) -> int:
        """Time ``name`` (mtime, atime, ctime …) of ``node``: nanoseconds since the epoch."""
        return int(getattr(node, f"{name}_ns"))

    def walk(self, root_path: str, entries: dict[str, Entry]) -> list[str]:
        """Add the root (``root_path``, ending in "/") and every file and directory below
        it to ``entries``; returns why any part could not be read (none: [])."""
        problems: list[str] = []
        top = self._root()
        root = entries[root_path] = self._entry(root_path, top)
        seen = {(root.volume, root.inode)}
        stack: list[tuple[str, Any, Entry]] = [(root_path, top, root)]
        while stack:  # a stack, not recursion: trees may be thousands of levels deep
            dir_path, node, owner = stack.pop()
            names = []
            try:
                for name, child in self._children(node):
                    path = dir_path + name
                    entry = entries[path] = self._entry(path, child)
                    names.append(name)
                    if entry.type == "dir" and (entry.volume, entry.inode) not in seen:
                        seen.add((entry.volume, entry.inode))
                        stack.append((path + "/", child, entry))
            except Exception as exc:  # a damaged directory or inode: named, not hidden
                problems.append(f"{dir_path}: {self.library} could not read it ({exc})")
            owner.children = frozenset(names)
        return problems + self._notes()

    def _node(self, inner: str) -> Any:
        """The node at path ``inner`` inside the file system (KeyError, or dissect's
        own error, when there is none)."""
        node = self._root()
        for part in inner.split("/"):
            if part:
                node = dict(self._children(node))[part]
        return node

    def find_deleted(self, path: str, inner_parent: str, name: str) -> tuple[Entry, bytes] | None:
        """None: neither XFS nor Btrfs keeps a deleted file's extents to recover."""
        return None

"""Btrfs log-tree replay for reading: the subvolume trees as the kernel's
``btrfs_recover_log_trees`` leaves them, written into an overlay.

A Btrfs volume copied while mounted may carry a log tree (the superblock's
``log_root``): files fsync'd since the last transaction commit are there only.  The
log root tree holds a ROOT_ITEM per subvolume log (objectid ``TREE_LOG``, offset the
subvolume's id); each log holds the logged inodes' items.  They are applied over
the subvolume's items as the kernel's three walks of each log do (``tree-log.c``):

1. inode items: a directory's DIR_LOG_INDEX ranges first delete every entry of the
   subvolume in them that the log does not hold (its name, its index and the
   victim's back reference), then the INODE_ITEM is copied (a directory keeps the
   size it has, a new one starts at 0 and grows by twice each name's length as names
   are added; an item logged with generation 0 only says the inode exists), a
   regular file's extents past its size are dropped;
2. DIR_INDEX items: the name added (or put in place of another inode's);
3. INODE_REF / INODE_EXTREF items: the inode's names in that directory not in the
   log removed, the logged ones linked (DIR_INDEX and DIR_ITEM in the directory);
   EXTENT_DATA items: the range they cover dropped from the file (extents cut or
   split) and the logged extent inserted; XATTR_ITEMs copied;

then each touched inode's link count is the number of names it has.  The result
is written as a B-tree that keeps every old leaf whose key range holds no changed
item where it is; the others' items are packed into new leaves, and every node
above is new, at logical addresses free in the metadata chunks (neither in the
extent tree, the logs' own blocks nor the logged data), every copy of a DUP chunk,
with checksums; the root tree leaf holding the subvolume's ROOT_ITEM is rewritten
to point at it.  Nothing is written
to the source: the bytes go to an :class:`~blockforensics.snapshot.OverlayDisk`
that dissect.btrfs reads.

Not replayed: the extent tree (references of the logged extents), checksums of the
logged data (EXTENT_CSUM items), xattrs the log deletes, orphan cleanup of inodes
left without names (they are unreachable, so not listed).

Units: bytes; "logical" bytes are Btrfs addresses.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockforensics.errors import UNPARSABLE, FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.btrfs import (
    BG_DATA,
    BG_METADATA,
    CSUM_SIZE,
    HEADER,
    ITEM,
    KEY_PTR,
    ROOT_ITEM_KEY,
    BtrfsFileSystem,
    checksum,
)
from blockforensics.fs.structure import Structure
from blockforensics.snapshot import OverlayDisk

Key = tuple[int, int, int]
Items = dict[Key, bytes]


@dataclass(frozen=True)
class Leaf:
    """A leaf of a tree as read: its logical address, keys and generation."""

    logical: int
    keys: list[Key]
    generation: int


TREE_LOG_OBJECTID = (1 << 64) - 6
INODE_ITEM, INODE_REF, INODE_EXTREF, XATTR_ITEM = 1, 12, 13, 24
DIR_LOG_INDEX, DIR_ITEM, DIR_INDEX, EXTENT_DATA = 72, 84, 96, 108
INODE = Structure("BtrfsInodeItem", 160, [
    (0x00, "Q", "generation"),
    (0x10, "Q", "size"),
    (0x28, "I", "nlink"),
    (0x34, "I", "mode"),
])
INODE_SIZE_AT, INODE_NLINK_AT = 0x10, 0x28
DIR_ENTRY = Structure("BtrfsDirItem", 30, [  # then name_len bytes of name, data_len of data
    (0x00, "Q", "location_objectid"),
    (0x08, "B", "location_type"),
    (0x09, "Q", "location_offset"),
    (0x11, "Q", "transid"),
    (0x19, "H", "data_len"),
    (0x1B, "H", "name_len"),
    (0x1D, "B", "type"),
])
FILE_EXTENT = Structure("BtrfsFileExtentItem", 53, [
    (0x00, "Q", "generation"),
    (0x08, "Q", "ram_bytes"),
    (0x14, "B", "type"),  # 0 inline, 1 regular, 2 preallocated
    (0x15, "Q", "disk_bytenr"),
    (0x1D, "Q", "disk_num_bytes"),
    (0x25, "Q", "offset"),
    (0x2D, "Q", "num_bytes"),
])
EXTENT_INLINE = 0
EXTENT_OFFSET_AT, EXTENT_NUM_BYTES_AT = 0x25, 0x2D
ROOT_BYTENR_AT, ROOT_LEVEL_AT = 176, 238
#: file types of directory entries (BTRFS_FT_*) by the mode's S_IFMT
FILE_TYPES = {0o100000: 1, 0o040000: 2, 0o020000: 3, 0o060000: 4, 0o010000: 5,
              0o140000: 6, 0o120000: 7}
S_IFMT, S_IFDIR = 0o170000, 0o040000
#: header flags of a node written here: WRITTEN, backref revision 1 (top byte)
NODE_FLAGS = 1 | 1 << 56
NODE_FLAGS_AT, CHUNK_UUID_AT = 0x38, 0x40


def name_hash(name: bytes) -> int:
    """The DIR_ITEM key offset of ``name``: the kernel's ``crc32c(~1, name)``, raw."""
    import google_crc32c

    return int(google_crc32c.extend(1, name)) ^ 0xFFFFFFFF


def _entries(data: bytes) -> list[tuple[Any, bytes, bytes]]:
    """The ``(dir item, name, raw bytes)`` packed in a DIR_ITEM / DIR_INDEX item."""
    out, at = [], 0
    while at + DIR_ENTRY.size <= len(data):
        entry = DIR_ENTRY.parse(data, at)
        end = at + DIR_ENTRY.size + entry.name_len + entry.data_len
        out.append((entry, data[at + DIR_ENTRY.size : at + DIR_ENTRY.size + entry.name_len],
                    data[at:end]))
        at = end
    return out


def _refs(key: Key, data: bytes) -> list[tuple[int, int, bytes]]:
    """``(parent, index, name)`` of each name in an INODE_REF or INODE_EXTREF item."""
    out, at = [], 0
    while at < len(data):
        if key[1] == INODE_REF:
            parent, index = key[2], int.from_bytes(data[at : at + 8], "little")
            at += 8
        else:
            parent = int.from_bytes(data[at : at + 8], "little")
            index = int.from_bytes(data[at + 8 : at + 16], "little")
            at += 16
        n = int.from_bytes(data[at : at + 2], "little")
        out.append((parent, index, data[at + 2 : at + 2 + n]))
        at += 2 + n
    return out


def _ref_bytes(kind: int, parent: int, index: int, name: bytes) -> bytes:
    head = index.to_bytes(8, "little") if kind == INODE_REF else \
        parent.to_bytes(8, "little") + index.to_bytes(8, "little")
    return head + len(name).to_bytes(2, "little") + name


def _set(data: bytes, at: int, value: int, size: int) -> bytes:
    return data[:at] + value.to_bytes(size, "little") + data[at + size :]


@dataclass
class BtrfsRecovery:
    """The subvolumes whose logs were replayed and the items the logs held."""

    subvolumes: list[int] = field(default_factory=list)
    logged: int = 0

    def summary(self) -> str:
        ids = ", ".join(map(str, self.subvolumes))
        return (f"Btrfs log tree (files fsync'd since the last commit: {self.logged} items "
                f"in the logs of subvolume {ids}, replayed)")


class _Subvolume:
    """One subvolume's items with a log's items applied, as the kernel's walks do."""

    def __init__(self, items: Items, sectorsize: int):
        self.items, self.sector = items, sectorsize
        self.touched: set[int] = set()  # inodes whose names changed: links recounted

    # ----------------------------------------------------------------- names
    def _inode(self, ino: int) -> Any | None:
        data = self.items.get((ino, INODE_ITEM, 0))
        return None if data is None else INODE.parse(data)

    def _grow(self, directory: int, by: int) -> None:
        key = (directory, INODE_ITEM, 0)
        if key in self.items:
            size = INODE.parse(self.items[key]).size
            self.items[key] = _set(self.items[key], INODE_SIZE_AT, max(size + by, 0), 8)

    def unlink(self, directory: int, index: int) -> None:
        """Remove entry ``index`` of ``directory``: its DIR_INDEX, its name in the
        DIR_ITEM, and the victim's back reference."""
        data = self.items.pop((directory, DIR_INDEX, index), None)
        if data is None:
            return
        for entry, name, _ in _entries(data):
            key = (directory, DIR_ITEM, name_hash(name))
            kept = b"".join(raw for _, other, raw in _entries(self.items.get(key, b""))
                            if other != name)
            if kept:
                self.items[key] = kept
            else:
                self.items.pop(key, None)
            victim = entry.location_objectid
            if entry.location_type == INODE_ITEM:
                self._drop_ref(victim, directory, name)
            self._grow(directory, -2 * len(name))

    def _drop_ref(self, ino: int, parent: int, name: bytes) -> None:
        for key in [k for k in self.items if k[0] == ino and k[1] in (INODE_REF, INODE_EXTREF)]:
            refs = [r for r in _refs(key, self.items[key])
                    if not (r[0] == parent and r[2] == name)]
            if refs:
                self.items[key] = b"".join(_ref_bytes(key[1], *r) for r in refs)
            else:
                del self.items[key]
        self.touched.add(ino)

    def link(self, ino: int, parent: int, index: int, name: bytes, transid: int) -> None:
        """``name`` (entry ``index`` of ``parent``) made to name ``ino``, in place of what
        it named before."""
        inode = self._inode(ino)
        kind = FILE_TYPES.get(inode.mode & S_IFMT, 0) if inode is not None else 0
        hashed = (parent, DIR_ITEM, name_hash(name))
        for entry, other, _ in _entries(self.items.get(hashed, b"")):
            if other == name and entry.location_objectid != ino:
                self.unlink(parent, self._index_of(parent, name))
        existing = self.items.get((parent, DIR_INDEX, index))
        if existing is not None and _entries(existing)[0][1] != name:
            self.unlink(parent, index)
        raw = (DIR_ENTRY.pack(ino, INODE_ITEM, 0, transid, 0, len(name), kind) + name)
        fresh = (parent, DIR_INDEX, index) not in self.items
        self.items[(parent, DIR_INDEX, index)] = raw
        same = [r for e, other, r in _entries(self.items.get(hashed, b"")) if other != name]
        self.items[hashed] = b"".join(same) + raw
        if fresh:
            self._grow(parent, 2 * len(name))

    def _index_of(self, parent: int, name: bytes) -> int:
        for (obj, kind, offset), data in self.items.items():
            if obj == parent and kind == DIR_INDEX and _entries(data)[0][1] == name:
                return offset
        return -1

    # --------------------------------------------------------------- extents
    def _end(self, data: bytes, start: int) -> int:
        extent = FILE_EXTENT.parse(data + bytes(max(0, FILE_EXTENT.size - len(data))))
        if extent.type == EXTENT_INLINE:
            return start + -(-extent.ram_bytes // self.sector) * self.sector
        return start + extent.num_bytes

    def drop_extents(self, ino: int, start: int, end: int) -> None:
        """The file's extents cut to leave ``[start, end)`` empty (split when one spans
        it, trimmed where one overlaps it)."""
        keys = [k for k in self.items if k[0] == ino and k[1] == EXTENT_DATA]
        for key in keys:
            data = self.items[key]
            lo, hi = key[2], self._end(data, key[2])
            if hi <= start or lo >= end:
                continue
            del self.items[key]
            inline = FILE_EXTENT.parse(data + bytes(53)).type == EXTENT_INLINE
            if inline:
                continue
            offset = FILE_EXTENT.parse(data).offset
            if lo < start:
                self.items[key] = _set(data, EXTENT_NUM_BYTES_AT, start - lo, 8)
            if hi > end:
                tail = _set(data, EXTENT_OFFSET_AT, offset + end - lo, 8)
                self.items[(ino, EXTENT_DATA, end)] = _set(tail, EXTENT_NUM_BYTES_AT, hi - end, 8)

    # ----------------------------------------------------------------- walks
    def replay(self, log: Items) -> None:
        keys = sorted(log)
        for key in keys:  # 1: inodes
            if key[1] == INODE_ITEM:
                self._replay_inode(key, log)
        for key in keys:  # 2: directory indexes
            if key[1] == DIR_INDEX:
                for entry, name, _ in _entries(log[key]):
                    if entry.location_type == INODE_ITEM and \
                            self._inode(entry.location_objectid) is not None:
                        self.link(entry.location_objectid, key[0], key[2], name, entry.transid)
        for key in keys:  # 3: names, extents, xattrs
            if key[1] in (INODE_REF, INODE_EXTREF):
                self._replay_refs(key, log[key])
            elif key[1] == EXTENT_DATA:
                if self.items.get(key) != log[key]:
                    self.drop_extents(key[0], key[2], self._end(log[key], key[2]))
                    self.items[key] = log[key]
            elif key[1] == XATTR_ITEM:
                self.items[key] = log[key]
        for ino in self.touched:  # links: the names each inode has
            inode = self._inode(ino)
            if inode is None or inode.mode & S_IFMT == S_IFDIR:
                continue
            count = sum(len(_refs(k, d)) for k, d in self.items.items()
                        if k[0] == ino and k[1] in (INODE_REF, INODE_EXTREF))
            self.items[(ino, INODE_ITEM, 0)] = _set(self.items[(ino, INODE_ITEM, 0)],
                                                    INODE_NLINK_AT, count, 4)

    def _replay_inode(self, key: Key, log: Items) -> None:
        logged = INODE.parse(log[key])
        ino, here = key[0], self.items.get(key)
        if logged.mode & S_IFMT == S_IFDIR:
            ranges = [(k[2], int.from_bytes(d[:8], "little")) for k, d in log.items()
                      if k[0] == ino and k[1] == DIR_LOG_INDEX]
            for start, end in ranges:
                doomed = [k[2] for k in self.items if k[0] == ino and k[1] == DIR_INDEX
                          and start <= k[2] <= end and k not in log]
                for index in doomed:
                    self.unlink(ino, index)
        if here is not None and logged.generation == 0:
            return  # logged only to say it exists
        data = log[key]
        if logged.mode & S_IFMT == S_IFDIR:
            size = INODE.parse(here).size if here is not None else 0
            data = _set(data, INODE_SIZE_AT, size, 8)
        self.items[key] = data
        if logged.mode & S_IFMT == 0o100000:
            end = -(-logged.size // self.sector) * self.sector
            self.drop_extents(ino, end, 1 << 64)

    def _replay_refs(self, key: Key, data: bytes) -> None:
        ino = key[0]
        logged = _refs(key, data)
        parents = {parent for parent, _, _ in logged}
        for other in [k for k in self.items if k[0] == ino and k[1] in (INODE_REF, INODE_EXTREF)]:
            for parent, index, name in _refs(other, self.items[other]):
                if parent in parents and (parent, index, name) not in logged:
                    self.unlink(parent, index)
                    self._drop_ref(ino, parent, name)
        transid = INODE.parse(self.items[(ino, INODE_ITEM, 0)]).generation \
            if (ino, INODE_ITEM, 0) in self.items else 0
        for parent, index, name in logged:
            self.link(ino, parent, index, name, transid)
        kept = self.items.get(key, b"")
        names = {(p, i, n) for p, i, n in _refs(key, kept)} if kept else set()
        self.items[key] = kept + b"".join(_ref_bytes(key[1], *r) for r in logged
                                          if r not in names)
        self.touched.add(ino)


class _TreeWriter:
    """New tree nodes at free logical addresses of the metadata chunks, written to an
    overlay with checksums (every copy of a DUP chunk)."""

    def __init__(self, fs: BtrfsFileSystem, overlay: OverlayDisk, taken: list[tuple[int, int]],
                 template: bytes):
        self.fs, self.overlay, self.template = fs, overlay, template
        edges = np.array(sorted(taken), dtype=np.int64).reshape(-1, 2)
        #: logical ranges in use, by start; stops made non-decreasing (overlaps merged)
        self.starts = edges[:, 0]
        self.stops = np.maximum.accumulate(edges[:, 1]) if len(edges) else edges[:, 1]
        self.free = self._free_slots()
        #: the generation of the nodes written here (that of the tree root they copy)
        self.generation = int.from_bytes(template[0x50:0x58], "little")

    def _free_slots(self) -> list[int]:
        n = self.fs.nodesize
        out = []
        for chunk in self.fs._chunks:
            if not chunk.flags & BG_METADATA or chunk.flags & BG_DATA:
                continue
            first = -(-chunk.logical // n) * n
            slots = np.arange(first, chunk.logical + chunk.length - n + 1, n, dtype=np.int64)
            at = np.searchsorted(self.starts, slots + n, side="left") - 1
            clear = (at < 0) | (self.stops[np.maximum(at, 0)] <= slots)
            out += slots[clear].tolist()
        return out[::-1]

    def write_node(self, data: bytearray, logical: int) -> None:
        data[:CSUM_SIZE] = bytes(CSUM_SIZE)
        digest = checksum(self.fs.sb.csum_type, bytes(data[CSUM_SIZE:]))
        data[: len(digest)] = digest
        for physical in self.fs.physical(logical, self.fs.nodesize):
            self.overlay.write(self.fs.offset + physical, bytes(data))

    def _node(self, logical: int, owner: int, level: int, count: int) -> bytearray:
        data = bytearray(self.fs.nodesize)
        data[: HEADER.size] = self.template[: HEADER.size]
        for at, value, size in ((0x30, logical, 8), (NODE_FLAGS_AT, NODE_FLAGS, 8),
                                (0x58, owner, 8), (0x60, count, 4), (0x64, level, 1)):
            data[at : at + size] = value.to_bytes(size, "little")
        return data

    def tree(self, items: Items, owner: int, leaves: list[Leaf], changed: set[Key]
             ) -> tuple[int, int]:
        """The tree of ``items`` written: the old ``leaves`` whose key range holds no
        ``changed`` key kept where they are, the others' items packed into new leaves,
        every node above new; ``(root logical, level)``."""
        firsts = [leaf.keys[0] if leaf.keys else (0, 0, 0) for leaf in leaves]
        dirty = [False] * len(leaves)
        for key in changed:
            dirty[max(bisect.bisect_right(firsts, key) - 1, 0)] = True
        ordered = sorted(items)
        pointers: list[tuple[Key, int, int]] = []  # first key, logical, generation
        i = 0
        while i < len(leaves):
            if not dirty[i]:
                pointers.append((firsts[i], leaves[i].logical, leaves[i].generation))
                i += 1
                continue
            j = i
            while j < len(leaves) and dirty[j]:
                j += 1
            lo = bisect.bisect_left(ordered, firsts[i]) if i else 0
            hi = bisect.bisect_left(ordered, firsts[j]) if j < len(leaves) else len(ordered)
            pointers += self._leaves(ordered[lo:hi], items, owner)
            i = j
        if not pointers:
            pointers = self._leaves([], items, owner)  # an empty tree: one empty leaf
        level = 0
        fanout = (self.fs.nodesize - HEADER.size) // KEY_PTR.size
        while len(pointers) > 1:
            level += 1
            upper = []
            for lo in range(0, len(pointers), fanout):
                group = pointers[lo : lo + fanout]
                logical = self._take()
                node = self._node(logical, owner, level, len(group))
                for k, (key, child, generation) in enumerate(group):
                    at = HEADER.size + k * KEY_PTR.size
                    node[at : at + KEY_PTR.size] = KEY_PTR.pack(*key, child, generation)
                self.write_node(node, logical)
                upper.append((group[0][0], logical, self.generation))
            pointers = upper
        return pointers[0][1], level

    def _leaves(self, keys: list[Key], items: Items, owner: int
                ) -> list[tuple[Key, int, int]]:
        """``keys`` (sorted) packed into new leaves, written; their pointers."""
        room = self.fs.nodesize - HEADER.size
        groups: list[list[Key]] = [[]]
        used = 0
        for key in keys:
            need = ITEM.size + len(items[key])
            if used + need > room and groups[-1]:
                groups.append([])
                used = 0
            groups[-1].append(key)
            used += need
        out = []
        for group in groups:
            if not group and keys:
                continue
            logical = self._take()
            node = self._node(logical, owner, 0, len(group))
            end = room
            for k, key in enumerate(group):
                data = items[key]
                end -= len(data)
                node[HEADER.size + end : HEADER.size + end + len(data)] = data
                node[HEADER.size + k * ITEM.size : HEADER.size + (k + 1) * ITEM.size] = \
                    ITEM.pack(*key, end, len(data))
            self.write_node(node, logical)
            out.append((group[0] if group else (0, 0, 0), logical, self.generation))
        return out

    def _take(self) -> int:
        if not self.free:
            raise FormatError("no free metadata space to lay the replayed trees in")
        return self.free.pop()


def _leaf_of(fs: BtrfsFileSystem, key: Key) -> tuple[int, bytearray, int]:
    """The root tree leaf holding ``key`` (objectid and type; any offset): its logical
    address, bytes and the item's place."""
    logical, level = fs.sb.root, fs.sb.root_level
    while True:
        head, data = fs.node(logical, level)
        if level == 0:
            items = ITEM.parse_array(data[HEADER.size :], head.nritems)
            for i in range(head.nritems):
                if (int(items["objectid"][i]), int(items["type"][i])) == key[:2]:
                    return logical, bytearray(data), i
            raise FormatError(f"the root tree has no ROOT_ITEM for subvolume {key[0]}")
        ptrs = KEY_PTR.parse_array(data[HEADER.size :], head.nritems)
        keys = list(zip(ptrs["objectid"].tolist(), ptrs["type"].tolist(),
                        ptrs["offset"].tolist()))
        below = [i for i, k in enumerate(keys) if k <= (*key[:2], (1 << 64) - 1)]
        i = below[-1] if below else 0
        logical, level = int(ptrs["blockptr"][i]), level - 1


def replayed(fs: BtrfsFileSystem) -> tuple[Disk, str]:
    """The disk ``fs`` lies on with its log trees replayed (an overlay) and a note
    saying so; the disk itself and why not, when they cannot be (FormatError met); the
    disk itself and "" without a log tree."""
    if not fs.sb.log_root:
        return fs.disk, ""
    try:
        overlay, recovery = _replay(fs)
    except UNPARSABLE as exc:
        why = str(exc).removeprefix(f"{fs.name}: ")
        return fs.disk, (f"Btrfs log tree (files fsync'd since the last commit) cannot be "
                         f"replayed ({why}): listings show the pre-recovery state")
    return overlay, f"{recovery.summary()}: listings show the recovered state"


def _replay(fs: BtrfsFileSystem) -> tuple[OverlayDisk, BtrfsRecovery]:
    sb = fs.sb
    starts, lengths = fs.extents()
    taken = list(zip(starts.tolist(), (starts + lengths).tolist()))
    log_nodes: set[int] = set()
    recovery = BtrfsRecovery()
    logs: dict[int, Items] = {}
    for obj, kind, offset, data in fs.items(sb.log_root, sb.log_root_level, log_nodes):
        if obj == TREE_LOG_OBJECTID and kind == ROOT_ITEM_KEY:
            root = int.from_bytes(data[ROOT_BYTENR_AT : ROOT_BYTENR_AT + 8], "little")
            items = fs.items(root, data[ROOT_LEVEL_AT], log_nodes)
            logs[offset] = {(o, t, f): d for o, t, f, d in items}
            recovery.logged += len(items)
    taken += [(n, n + fs.nodesize) for n in log_nodes]
    for log in logs.values():  # the data fsync'd files wrote: not in the extent tree
        for (_, kind, _), data in log.items():
            if kind == EXTENT_DATA and len(data) >= FILE_EXTENT.size:
                extent = FILE_EXTENT.parse(data)
                if extent.type != EXTENT_INLINE and extent.disk_bytenr:
                    taken.append((extent.disk_bytenr,
                                  extent.disk_bytenr + extent.disk_num_bytes))
    overlay = OverlayDisk(fs.disk)
    template = fs.node(sb.root)[1]
    writer = _TreeWriter(fs, overlay, taken, template)
    current = BtrfsFileSystem(overlay, fs.offset)  # root tree leaves as rewritten so far
    current.read_chunk_tree()
    for subvolume, log in sorted(logs.items()):
        root, level = fs.tree_root(subvolume)
        read: list[tuple[int, int, int]] = []
        items = fs.items(root, level, leaves=read)
        before = {(o, t, f): d for o, t, f, d in items}
        leaves, at = [], 0
        for logical, count, generation in read:
            leaves.append(Leaf(logical, [k[:3] for k in items[at : at + count]], generation))
            at += count
        tree = _Subvolume(dict(before), sb.sectorsize)
        tree.replay(log)
        changed = {k for k in before.keys() | tree.items.keys()
                   if before.get(k) != tree.items.get(k)}
        new_root, new_level = writer.tree(tree.items, subvolume, leaves, changed)
        leaf, leaf_data, i = _leaf_of(current, (subvolume, ROOT_ITEM_KEY, 0))
        item = ITEM.parse(bytes(leaf_data), HEADER.size + i * ITEM.size)
        at = HEADER.size + item.data_offset
        leaf_data[at + ROOT_BYTENR_AT : at + ROOT_BYTENR_AT + 8] = new_root.to_bytes(8, "little")
        leaf_data[at + ROOT_LEVEL_AT] = new_level
        writer.write_node(leaf_data, leaf)
        recovery.subvolumes.append(subvolume)
    return overlay, recovery


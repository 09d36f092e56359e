"""Btrfs (the Btrfs wiki's on-disk format): allocation from the extent tree.

Btrfs addresses everything in a *logical* byte space; the chunk tree maps each
chunk (a logical range) to one or more *stripes*, byte ranges on devices
(*physical* bytes).  The superblock (4 KiB at 64 KiB, mirrored at 64 MiB and
256 GiB when the device is that large) carries the chunks of the SYSTEM block
groups in its ``sys_chunk_array`` (enough to read the chunk tree), the chunk
tree's root and the root tree's root.  The root tree's ROOT_ITEM of objectid 2
roots the extent tree, whose EXTENT_ITEMs (key type 168: objectid = logical
start, offset = length in bytes) and METADATA_ITEMs (169: one tree node,
``nodesize`` bytes) are every allocated logical range.  Each is mapped through
the chunks to its physical bytes (both copies of a DUP chunk); with the
superblock copies and the whole stripes of the SYSTEM chunks (the safe side)
they are the allocated blocks.

Only volumes on one device whose chunks are SINGLE or DUP are read; RAID
profiles, a second device, a log tree (fsync'd data not yet in the extent tree),
extent tree v2 or an unknown checksum type (crc32c, xxhash64, sha256 and blake2b are
read) are FormatErrors: the volume is then copied whole.  Checks: superblock and
every tree node checksum, each node's own address (bytenr), level, file-system id
and sorted keys (a child's first key equal to its parent's pointer key); the
extents of each block group summed must equal the block group's ``used`` bytes.

Units: ``unit`` is the sector size (``sectorsize`` bytes, 4 KiB usually);
"logical" bytes are Btrfs addresses, "physical" bytes are offsets on the device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.checksum import crc32c
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.base import FileSystem, units_map
from blockforensics.fs.structure import Structure

SUPER_OFFSET = 0x10000  # the primary superblock, bytes from the device's start
SUPER_SIZE = 0x1000
#: the superblock and its mirrors (bytes); a mirror exists when the device holds it
SUPER_MIRRORS = (0x10000, 0x4000000, 0x4000000000)
MAGIC = b"_BHRfS_M"
CSUM_SIZE = 32  # checksum field of superblock and node headers (bytes)
SUPERBLOCK = Structure("BtrfsSuperBlock", SUPER_SIZE, [
    (0x20, "16s", "fsid"),
    (0x30, "Q", "bytenr"),
    (0x40, "8s", "magic"),
    (0x48, "Q", "generation"),
    (0x50, "Q", "root"),  # root tree root (logical)
    (0x58, "Q", "chunk_root"),  # chunk tree root (logical)
    (0x60, "Q", "log_root"),
    (0x70, "Q", "total_bytes"),
    (0x78, "Q", "bytes_used"),
    (0x88, "Q", "num_devices"),
    (0x90, "I", "sectorsize"),
    (0x94, "I", "nodesize"),
    (0xA0, "I", "sys_chunk_array_size"),
    (0xB4, "Q", "compat_ro_flags"),
    (0xBC, "Q", "incompat_flags"),
    (0xC4, "H", "csum_type"),
    (0xC6, "B", "root_level"),
    (0xC7, "B", "chunk_root_level"),
    (0xC8, "B", "log_root_level"),
    (0xC9, "Q", "dev_item_devid"),  # dev_item (98 bytes) starts here
    (0xD1, "Q", "dev_item_total_bytes"),
    (0x23B, "16s", "metadata_uuid"),
])
SYS_CHUNK_ARRAY = 0x32B  # offset of sys_chunk_array (2048 bytes) in the superblock
SYS_CHUNK_ARRAY_SIZE = 2048
#: tree node header (101 bytes), then items (leaf) or key pointers (node)
HEADER = Structure("BtrfsHeader", 0x65, [
    (0x20, "16s", "fsid"),
    (0x30, "Q", "bytenr"),  # this node's logical address
    (0x50, "Q", "generation"),
    (0x58, "Q", "owner"),
    (0x60, "I", "nritems"),
    (0x64, "B", "level"),
])
#: a leaf item: key (objectid, type, offset), then where its data lies (bytes from
#: the end of the header) and its size
ITEM = Structure("BtrfsItem", 25, [
    (0x00, "Q", "objectid"),
    (0x08, "B", "type"),
    (0x09, "Q", "offset"),
    (0x11, "I", "data_offset"),
    (0x15, "I", "data_size"),
])
KEY_PTR = Structure("BtrfsKeyPtr", 33, [
    (0x00, "Q", "objectid"),
    (0x08, "B", "type"),
    (0x09, "Q", "offset"),
    (0x11, "Q", "blockptr"),  # the child's logical address
    (0x19, "Q", "generation"),
])
DISK_KEY_SIZE = 17
CHUNK = Structure("BtrfsChunk", 48, [
    (0x00, "Q", "length"),  # logical bytes
    (0x10, "Q", "stripe_len"),
    (0x18, "Q", "type"),  # block group flags
    (0x2C, "H", "num_stripes"),
    (0x2E, "H", "sub_stripes"),
])
STRIPE = Structure("BtrfsStripe", 32, [
    (0x00, "Q", "devid"),
    (0x08, "Q", "offset"),  # physical bytes on the device
])
ROOT_ITEM = Structure("BtrfsRootItem", 239, [
    (176, "Q", "bytenr"),  # the tree's root node (logical)
    (238, "B", "level"),
])
BLOCK_GROUP_ITEM = Structure("BtrfsBlockGroupItem", 24, [
    (0x00, "Q", "used"),  # bytes of extents in the block group
    (0x10, "Q", "flags"),
])

# key types
DEV_ITEM_KEY = 216
CHUNK_ITEM_KEY = 228
ROOT_ITEM_KEY = 132
EXTENT_ITEM_KEY = 168
METADATA_ITEM_KEY = 169
BLOCK_GROUP_ITEM_KEY = 192
# tree objectids
EXTENT_TREE_OBJECTID = 2
CHUNK_TREE_OBJECTID = 3
BLOCK_GROUP_TREE_OBJECTID = 11
# block group flags
BG_DATA, BG_SYSTEM, BG_METADATA = 0x1, 0x2, 0x4
BG_DUP = 0x20
BG_RAID = 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400  # RAID0/1/10/5/6/1C3/1C4
# feature flags
INCOMPAT_METADATA_UUID = 1 << 10
INCOMPAT_EXTENT_TREE_V2 = 1 << 13
COMPAT_RO_BLOCK_GROUP_TREE = 1 << 3
CSUM_CRC32C, CSUM_XXHASH, CSUM_SHA256, CSUM_BLAKE2 = 0, 1, 2, 3
MAX_LEVEL = 8


def has_btrfs_magic(superblock: bytes) -> bool:
    """True when the 4 KiB read at 64 KiB of a volume carry the Btrfs magic."""
    return superblock[0x40:0x48] == MAGIC


def checksum(csum_type: int, data: bytes) -> bytes:
    """The checksum Btrfs stores (first bytes of the 32-byte field) for ``data``."""
    if csum_type == CSUM_CRC32C:
        return crc32c(data).to_bytes(4, "little")
    if csum_type == CSUM_SHA256:
        return hashlib.sha256(data).digest()
    if csum_type == CSUM_BLAKE2:
        return hashlib.blake2b(data, digest_size=32).digest()
    if csum_type == CSUM_XXHASH:
        return xxh64(data).to_bytes(8, "little")
    raise FormatError(f"unknown Btrfs checksum type {csum_type}")


_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5, _M64 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5, (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    return _rotl((acc + lane * _P2) & _M64, 31) * _P1 & _M64


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` (Btrfs's ``xxhash`` checksum, seed 0)."""
    n, at = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        stripes = n // 32
        lanes = np.frombuffer(data, "<u8", stripes * 4).reshape(stripes, 4).tolist()
        for lane in lanes:
            v = [_round(v[0], lane[0]), _round(v[1], lane[1]),
                 _round(v[2], lane[2]), _round(v[3], lane[3])]
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for acc in v:
            h = ((h ^ _round(0, acc)) * _P1 + _P4) & _M64
        at = stripes * 32
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while at + 8 <= n:
        h = (_rotl(h ^ _round(0, int.from_bytes(data[at : at + 8], "little")), 27) * _P1
             + _P4) & _M64
        at += 8
    if at + 4 <= n:
        h = (_rotl(h ^ (int.from_bytes(data[at : at + 4], "little") * _P1 & _M64), 23) * _P2
             + _P3) & _M64
        at += 4
    for byte in data[at:]:
        h = _rotl(h ^ (byte * _P5 & _M64), 11) * _P1 & _M64
    h = (h ^ (h >> 33)) * _P2 & _M64
    h = (h ^ (h >> 29)) * _P3 & _M64
    return h ^ (h >> 32)


@dataclass(frozen=True)
class Chunk:
    """A chunk: ``length`` logical bytes from ``logical``, stored at each physical
    byte offset of ``stripes`` (one for SINGLE, two for DUP)."""

    logical: int
    length: int
    flags: int
    stripes: tuple[int, ...]


class BtrfsFileSystem(FileSystem):
    """A single-device Btrfs volume; allocation unit: the sector (``sectorsize``)."""

    kinds: ClassVar[tuple[str, ...]] = ("btrfs",)

    def __init__(self, disk: Disk, offset: int = 0):
        super().__init__(disk, offset)
        self.kind = "btrfs"
        raw = self.read(SUPER_OFFSET, SUPER_SIZE)
        sb = SUPERBLOCK.parse(raw)
        if sb.magic != MAGIC:
            raise FormatError(f"no Btrfs file system at byte {offset} (bad superblock magic)")
        self.sb = sb
        if raw[:CSUM_SIZE][: len(checksum(sb.csum_type, b""))] != checksum(
                sb.csum_type, raw[CSUM_SIZE:]):
            raise FormatError(f"{self.name}: superblock checksum mismatch")
        if not (sb.sectorsize in (4096, 8192, 16384, 32768, 65536)
                and sb.nodesize >= sb.sectorsize and sb.nodesize <= 65536
                and sb.nodesize & (sb.nodesize - 1) == 0
                and sb.bytenr == SUPER_OFFSET
                and 0 < sb.sys_chunk_array_size <= SYS_CHUNK_ARRAY_SIZE
                and sb.dev_item_total_bytes > SUPER_OFFSET + SUPER_SIZE):
            raise FormatError(f"{self.name}: inconsistent superblock")
        self.fsid = sb.metadata_uuid if sb.incompat_flags & INCOMPAT_METADATA_UUID else sb.fsid
        self.unit = sb.sectorsize
        self.nodesize = sb.nodesize
        self.devid = sb.dev_item_devid
        #: this device's size in bytes (its dev_item)
        self.size = sb.dev_item_total_bytes // sb.sectorsize * sb.sectorsize
        #: the root tree's items (read by :meth:`extents`)
        self.root_items: list[tuple[int, int, int, bytes]] = []
        self._chunks: list[Chunk] = []
        self._starts = np.empty(0, np.int64)
        self._super = raw

    # ------------------------------------------------------------------ chunks
    def _chunk(self, data: bytes, at: int, logical: int) -> tuple[Chunk, int]:
        """The chunk item at byte ``at`` of ``data`` (for logical byte ``logical``) and
        its size in bytes; FormatError for profiles or devices not read here."""
        item = CHUNK.parse(data, at)
        n = item.num_stripes
        stripes = [STRIPE.parse(data, at + CHUNK.size + i * STRIPE.size) for i in range(n)]
        profile = "DUP" if item.type & BG_DUP else "SINGLE"
        if item.type & BG_RAID:
            raise FormatError(f"{self.name}: chunk at logical byte {logical} has a RAID "
                              f"profile (flags {item.type:#x}): not read")
        if n != (2 if profile == "DUP" else 1) or item.length == 0:
            raise FormatError(f"{self.name}: {profile} chunk at logical byte {logical} "
                              f"has {n} stripes")
        for stripe in stripes:
            if stripe.devid != self.devid:
                raise FormatError(f"{self.name}: chunk at logical byte {logical} lies on "
                                  f"device {stripe.devid}, another device")
            if stripe.offset + item.length > self.size:
                raise FormatError(f"{self.name}: chunk at logical byte {logical} runs past "
                                  f"the device's end")
        chunk = Chunk(logical, item.length, item.type, tuple(s.offset for s in stripes))
        return chunk, CHUNK.size + n * STRIPE.size

    def _sys_chunks(self, raw: bytes) -> list[Chunk]:
        """The chunks the superblock's ``sys_chunk_array`` carries."""
        array = raw[SYS_CHUNK_ARRAY : SYS_CHUNK_ARRAY + self.sb.sys_chunk_array_size]
        chunks, at = [], 0
        while at < len(array):
            key = ITEM.parse(array + bytes(8), at)  # the key part only
            if key.type != CHUNK_ITEM_KEY:
                raise FormatError(f"{self.name}: sys_chunk_array holds a key of type "
                                  f"{key.type}")
            chunk, size = self._chunk(array, at + DISK_KEY_SIZE, key.offset)
            chunks.append(chunk)
            at += DISK_KEY_SIZE + size
        if at != len(array) or not chunks:
            raise FormatError(f"{self.name}: sys_chunk_array is malformed")
        return chunks

    def _add_chunk(self, chunk: Chunk) -> None:
        for known in self._chunks:
            if known.logical == chunk.logical:
                if known != chunk:
                    raise FormatError(f"{self.name}: two chunks at logical byte "
                                      f"{chunk.logical} differ")
                return
            if known.logical < chunk.logical + chunk.length and \
                    chunk.logical < known.logical + known.length:
                raise FormatError(f"{self.name}: chunks overlap at logical byte "
                                  f"{chunk.logical}")
        self._chunks.append(chunk)
        self._chunks.sort(key=lambda c: c.logical)
        self._starts = np.array([c.logical for c in self._chunks], np.int64)

    def physical(self, logical: int, length: int) -> tuple[int, ...]:
        """Where the ``length`` logical bytes from ``logical`` lie on the device: one
        physical byte offset per copy; FormatError when no chunk holds them whole."""
        i = int(np.searchsorted(self._starts, logical, side="right")) - 1
        if i >= 0:
            chunk = self._chunks[i]
            if logical + length <= chunk.logical + chunk.length:
                return tuple(s + logical - chunk.logical for s in chunk.stripes)
        raise FormatError(f"{self.name}: logical bytes {logical}+{length} are in no chunk")

    # ------------------------------------------------------------------- trees
    def node(self, logical: int, level: int | None = None) -> tuple[Any, bytes]:
        """The tree node at logical byte ``logical`` (its header and bytes), checked:
        checksum, own address, file-system id, level (when given), item count."""
        at = self.physical(logical, self.nodesize)[0]
        data = self.read(at, self.nodesize)
        head = HEADER.parse(data)
        stored = checksum(self.sb.csum_type, data[CSUM_SIZE:])
        if data[: len(stored)] != stored:
            raise FormatError(f"{self.name}: tree node at logical byte {logical} "
                              f"checksum mismatch")
        if head.bytenr != logical or head.fsid != self.fsid:
            raise FormatError(f"{self.name}: tree node at logical byte {logical} says it "
                              f"is elsewhere (bytenr {head.bytenr}) or of another volume")
        if head.level > MAX_LEVEL or (level is not None and head.level != level):
            raise FormatError(f"{self.name}: tree node at logical byte {logical} has "
                              f"level {head.level}, expected {level}")
        room = (self.nodesize - HEADER.size) // (KEY_PTR.size if head.level else ITEM.size)
        if head.nritems > room:
            raise FormatError(f"{self.name}: tree node at logical byte {logical} has "
                              f"{head.nritems} items, more than fit")
        return head, data

    def items(self, root: int, level: int, nodes: set[int] | None = None,
              leaves: list[tuple[int, int, int]] | None = None
              ) -> list[tuple[int, int, int, bytes]]:
        """Every leaf item of the tree rooted at logical byte ``root`` (of height
        ``level``), in key order: ``(objectid, type, offset, data)``; the logical
        address of each of its nodes added to ``nodes``, and ``(logical address,
        items, generation)`` of each leaf in key order to ``leaves``, when given."""
        out: list[tuple[int, int, int, bytes]] = []
        self._walk(root, level, None, out, set() if nodes is None else nodes, leaves)
        keys = [(o, t, f) for o, t, f, _ in out]
        if any(a >= b for a, b in pairwise(keys)):
            raise FormatError(f"{self.name}: tree at logical byte {root}: keys not sorted")
        return out

    def _walk(self, logical: int, level: int, first: tuple[int, int, int] | None,
              out: list[tuple[int, int, int, bytes]], seen: set[int],
              leaves: list[tuple[int, int, int]] | None = None) -> None:
        if logical in seen:
            raise FormatError(f"{self.name}: tree node at logical byte {logical} seen twice")
        seen.add(logical)
        head, data = self.node(logical, level)
        n = head.nritems
        if level:
            ptrs = KEY_PTR.parse_array(data[HEADER.size :], n)
            keys = list(zip(ptrs["objectid"].tolist(), ptrs["type"].tolist(),
                            ptrs["offset"].tolist()))
        else:
            items = ITEM.parse_array(data[HEADER.size :], n)
            keys = list(zip(items["objectid"].tolist(), items["type"].tolist(),
                            items["offset"].tolist()))
        if any(a >= b for a, b in pairwise(keys)) or (
                first is not None and (not keys or keys[0] != first)):
            raise FormatError(f"{self.name}: tree node at logical byte {logical}: keys "
                              f"not sorted or not those its parent points with")
        if level:
            for key, child in zip(keys, ptrs["blockptr"].tolist()):
                self._walk(int(child), level - 1, key, out, seen, leaves)
            return
        if leaves is not None:
            leaves.append((logical, n, head.generation))
        space = self.nodesize - HEADER.size
        for key, start, size in zip(keys, items["data_offset"].tolist(),
                                    items["data_size"].tolist()):
            if start + size > space or start < n * ITEM.size:
                raise FormatError(f"{self.name}: leaf at logical byte {logical}: item "
                                  f"data outside the leaf")
            out.append((*key, data[HEADER.size + start : HEADER.size + start + size]))

    def tree_root(self, objectid: int) -> tuple[int, int]:
        """``(logical byte, level)`` of the root of tree ``objectid`` (root tree)."""
        for obj, kind, _, data in self.root_items:
            if obj == objectid and kind == ROOT_ITEM_KEY:
                item = ROOT_ITEM.parse(data)
                return item.bytenr, item.level
        raise FormatError(f"{self.name}: the root tree has no tree {objectid}")

    def read_chunk_tree(self) -> None:
        """The chunks: the superblock's SYSTEM ones, then the chunk tree's; FormatError
        for several devices, RAID profiles or features not read here."""
        sb = self.sb
        if sb.num_devices != 1:
            raise FormatError(f"{self.name}: a volume of {sb.num_devices} devices "
                              f"(only single-device volumes are read)")
        if sb.incompat_flags & INCOMPAT_EXTENT_TREE_V2:
            raise FormatError(f"{self.name}: extent tree v2 is not read")
        for chunk in self._sys_chunks(self._super):
            self._add_chunk(chunk)
        for _, kind, offset, data in self.items(sb.chunk_root, sb.chunk_root_level):
            if kind == DEV_ITEM_KEY and offset != self.devid:
                raise FormatError(f"{self.name}: the chunk tree lists device {offset}, "
                                  f"another device")
            if kind == CHUNK_ITEM_KEY:
                chunk, size = self._chunk(data, 0, offset)
                if size != len(data):
                    raise FormatError(f"{self.name}: chunk item at logical byte {offset} "
                                      f"has {len(data)} bytes")
                self._add_chunk(chunk)

    # -------------------------------------------------------------- allocation
    def extents(self) -> tuple[np.ndarray, np.ndarray]:
        """Allocated logical ranges from the extent tree: ``(starts, lengths)`` in
        logical bytes, sorted; FormatError when they do not add up to each block
        group's ``used`` bytes.  A log tree's blocks, and the data its fsync'd files
        wrote, are not among them."""
        sb = self.sb
        self.read_chunk_tree()
        self.root_items = self.items(sb.root, sb.root_level)
        extent_items = self.items(*self.tree_root(EXTENT_TREE_OBJECTID))
        if sb.compat_ro_flags & COMPAT_RO_BLOCK_GROUP_TREE:
            groups = self.items(*self.tree_root(BLOCK_GROUP_TREE_OBJECTID))
        else:
            groups = extent_items
        starts, lengths = [], []
        for obj, kind, offset, _ in extent_items:
            if kind == EXTENT_ITEM_KEY:
                starts.append(obj)
                lengths.append(offset)
            elif kind == METADATA_ITEM_KEY:
                starts.append(obj)
                lengths.append(self.nodesize)
        start = np.array(starts, np.int64)
        length = np.array(lengths, np.int64)
        if start.size and ((length <= 0).any() or (start[1:] < start[:-1] + length[:-1]).any()):
            raise FormatError(f"{self.name}: extent items overlap or are empty")
        block_groups = [(obj, offset, BLOCK_GROUP_ITEM.parse(data))
                        for obj, kind, offset, data in groups if kind == BLOCK_GROUP_ITEM_KEY]
        chunk_at = {c.logical: c for c in self._chunks}
        for logical, size, item in block_groups:
            chunk = chunk_at.get(logical)
            if chunk is None or chunk.length != size:
                raise FormatError(f"{self.name}: block group at logical byte {logical} "
                                  f"is not a chunk")
            lo, hi = np.searchsorted(start, [logical, logical + size])
            inside = length[lo:hi]
            if hi > lo and start[hi - 1] + inside[-1] > logical + size:
                raise FormatError(f"{self.name}: an extent runs past the end of block "
                                  f"group at logical byte {logical}")
            if int(inside.sum()) != item.used:
                raise FormatError(f"{self.name}: block group at logical byte {logical} "
                                  f"holds {int(inside.sum())} bytes of extents, its item "
                                  f"says {item.used} used")
        if len(block_groups) != len(self._chunks):
            raise FormatError(f"{self.name}: {len(block_groups)} block groups for "
                              f"{len(self._chunks)} chunks")
        return start, length

    def recovery_note(self) -> str:
        """A log tree: the volume is copied whole, and listings replay it
        (:mod:`blockforensics.fs.btrfslog`, which says what it replayed).  The replay is
        not run here: it reads each logged subvolume's whole tree, which a backup's
        survey (its memory bounded whatever the volume) must not."""
        if not self.sb.log_root:
            return ""
        return ("Btrfs log tree (files fsync'd since the last commit): copied whole; "
                "listings replay it")

    def allocation(self) -> BlockMap:
        """Allocated sectors of the device: the extents' physical bytes (every copy),
        the superblock copies and the SYSTEM chunks whole; FormatError when it has a
        log tree."""
        if self.sb.log_root:
            raise FormatError(f"{self.name}: it has a log tree (fsync'd writes not yet "
                              f"in the extent tree: log replay would add them)")
        start, length = self.extents()
        chunks = self._chunks
        logical = np.array([c.logical for c in chunks], np.int64)
        which = np.searchsorted(logical, start, side="right") - 1
        ends = logical + np.array([c.length for c in chunks], np.int64)
        if (which < 0).any() or (start + length > ends[np.maximum(which, 0)]).any():
            raise FormatError(f"{self.name}: an extent lies outside every chunk")
        phys_starts, phys_stops = [], []
        for copy in range(2):
            has = np.array([len(c.stripes) > copy for c in chunks])
            stripe = np.array([c.stripes[copy] if len(c.stripes) > copy else 0
                               for c in chunks], np.int64)
            pick = has[which]
            begin = stripe[which[pick]] + start[pick] - logical[which[pick]]
            phys_starts.append(begin)
            phys_stops.append(begin + length[pick])
        for chunk in chunks:
            if chunk.flags & BG_SYSTEM:
                phys_starts.append(np.array(chunk.stripes, np.int64))
                phys_stops.append(np.array(chunk.stripes, np.int64) + chunk.length)
        mirrors = np.array([m for m in SUPER_MIRRORS if m + SUPER_SIZE <= self.size], np.int64)
        phys_starts.append(mirrors)
        phys_stops.append(mirrors + SUPER_SIZE)
        lo = np.concatenate(phys_starts) // self.unit
        hi = -(-np.concatenate(phys_stops) // self.unit)
        return units_map(lo, hi, self.n_units, self.unit)

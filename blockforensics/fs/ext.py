"""ext2/3/4 (the ext4 disk layout documentation): allocation from block bitmaps.

The volume is an array of blocks of ``1024 << s_log_block_size`` bytes, cut
into groups of ``s_blocks_per_group`` blocks starting at
``s_first_data_block`` (1 for 1 KiB blocks: block 0 holds the boot sector and
is outside every group, hence always allocated).  Each group's descriptor
names its block bitmap, one bit per block (per cluster with bigalloc).  A group
flagged ``BLOCK_UNINIT`` (only honoured with group-descriptor checksums) has no
bitmap on disk: its allocated blocks are exactly its metadata — superblock and
descriptor copies where the group carries a backup, and any group's bitmaps
and inode table lying inside it (flex_bg packs them together).

A volume that needs journal recovery (``needs_recovery``: mounted, snapshotted
live, or crashed) may have block bitmaps and descriptors newer in its journal
than in place; a block is then allocated when either copy of its bitmap says so
(``fs/jbd2.py``).  Without that, a file written in the last transactions before
the snapshot was copied as free space and lost after recovery.  With
``fast_commit``, a file fsync'd since the last full commit has its blocks in no
bitmap at all, only in the fast commits recovery replays (``fs/ext4fc.py``):
every block they name is allocated too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UNPARSABLE, FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.base import FileSystem, units_map
from blockforensics.fs.ext4fc import fast_commits
from blockforensics.fs.jbd2 import (
    INCOMPAT_FAST_COMMIT,
    fast_commit_blocks,
    journal_features,
    logged_blocks,
)
from blockforensics.fs.structure import Structure
from blockforensics.snapshot import OverlayDisk

SUPERBLOCK_OFFSET = 1024  # bytes from the start of the volume, whatever the block size
SUPERBLOCK = Structure("ExtSuperblock", 1024, [
    (0x000, "I", "s_inodes_count"),
    (0x004, "I", "s_blocks_count_lo"),
    (0x014, "I", "s_first_data_block"),
    (0x018, "I", "s_log_block_size"),
    (0x01C, "I", "s_log_cluster_size"),
    (0x020, "I", "s_blocks_per_group"),
    (0x024, "I", "s_clusters_per_group"),
    (0x028, "I", "s_inodes_per_group"),
    (0x038, "H", "s_magic"),
    (0x04C, "I", "s_rev_level"),
    (0x058, "H", "s_inode_size"),
    (0x05C, "I", "s_feature_compat"),
    (0x060, "I", "s_feature_incompat"),
    (0x064, "I", "s_feature_ro_compat"),
    (0x0CE, "H", "s_reserved_gdt_blocks"),
    (0x0E0, "I", "s_journal_inum"),
    (0x0E4, "I", "s_journal_dev"),
    (0x0FE, "H", "s_desc_size"),
    (0x104, "I", "s_first_meta_bg"),
    (0x150, "I", "s_blocks_count_hi"),
    (0x24C, "I", "s_backup_bgs_0"),
    (0x250, "I", "s_backup_bgs_1"),
])
MAGIC = 0xEF53
GOOD_OLD_REV = 0
GOOD_OLD_INODE_SIZE = 128
MAX_LOG_BLOCK_SIZE = 6  # 64 KiB

_GROUP_DESC_LO = [  # the 32-byte descriptor; 64-bit file systems extend it
    (0x00, "I", "bg_block_bitmap_lo"),
    (0x04, "I", "bg_inode_bitmap_lo"),
    (0x08, "I", "bg_inode_table_lo"),
    (0x12, "H", "bg_flags"),
]
GROUP_DESC_32 = Structure("ExtGroupDesc", 32, _GROUP_DESC_LO)
GROUP_DESC_64 = Structure("ExtGroupDesc64", 64, [
    *_GROUP_DESC_LO,
    (0x20, "I", "bg_block_bitmap_hi"),
    (0x24, "I", "bg_inode_bitmap_hi"),
    (0x28, "I", "bg_inode_table_hi"),
])
BG_BLOCK_UNINIT = 0x2
INODE = Structure("ExtInode", GOOD_OLD_INODE_SIZE, [
    (0x00, "H", "i_mode"),
    (0x02, "H", "i_uid"),
    (0x04, "I", "i_size_lo"),
    (0x08, "I", "i_atime"),
    (0x0C, "I", "i_ctime"),
    (0x10, "I", "i_mtime"),
    (0x14, "I", "i_dtime"),
    (0x18, "H", "i_gid"),
    (0x1A, "H", "i_links_count"),
    (0x20, "I", "i_flags"),
    (0x28, "60s", "i_block"),
    (0x64, "I", "i_generation"),
    (0x6C, "I", "i_size_high"),
    (0x78, "H", "l_i_uid_high"),
    (0x7A, "H", "l_i_gid_high"),
])
#: the fields after the 128-byte inode, present up to ``128 + i_extra_isize``
INODE_EXTRA = Structure("ExtInodeExtra", 0x98 - GOOD_OLD_INODE_SIZE, [
    (0x00, "H", "i_extra_isize"),
    (0x04, "I", "i_ctime_extra"),
    (0x08, "I", "i_mtime_extra"),
    (0x0C, "I", "i_atime_extra"),
    (0x10, "I", "i_crtime"),
    (0x14, "I", "i_crtime_extra"),
])
#: the 2 low bits of a *_extra time: seconds above 32 bits; the rest: nanoseconds << 2
EPOCH_BITS = 2
def deletion_time(ext: ExtFileSystem, ino: int) -> int:
    """When inode ``ino`` was deleted (``i_dtime``, seconds since the epoch; unsigned
    32 bits, no epoch bits); 0 while it has links, or when the field is the next inode
    of the orphan list (an inode number: unlinked but still open when the volume was
    copied)."""
    inode = INODE.parse(ext.raw_inode(ino))
    if inode.i_links_count or inode.i_dtime <= ext.sb.s_inodes_count:
        return 0
    return int(inode.i_dtime)


#: each time's ``*_extra`` field: where it ends in the extra fields (present when
#: ``i_extra_isize`` reaches it)
TIME_EXTRA_ENDS = {"ctime": 0x8, "mtime": 0xC, "atime": 0x10, "crtime": 0x18}


def inode_times(raw: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """The times of inode record ``raw`` as the kernel reads them: seconds since the
    epoch (the 32-bit field signed, plus the epoch bits << 32: 1901 to 2446) and the
    nanoseconds (below 10^9), where the inode's extra fields hold them (a 128-byte
    inode: none, and no creation time: 0)."""
    inode = INODE.parse(raw)
    times = {name: int(np.int32(np.uint32(getattr(inode, f"i_{name}"))))
             for name in ("atime", "ctime", "mtime")}
    times["crtime"] = 0
    nanos = dict.fromkeys(times, 0)
    if len(raw) > GOOD_OLD_INODE_SIZE:
        extra = INODE_EXTRA.parse(raw[GOOD_OLD_INODE_SIZE:].ljust(INODE_EXTRA.size, b"\0"))
        for name, end in TIME_EXTRA_ENDS.items():
            if extra.i_extra_isize < end:
                continue
            if name == "crtime":
                times[name] = int(np.int32(np.uint32(extra.i_crtime)))
            value = int(getattr(extra, f"i_{name}_extra"))
            times[name] += (value & ((1 << EPOCH_BITS) - 1)) << 32
            # 30 bits hold up to 1.07 s: the kernel adds them as they are
            carry, nanos[name] = divmod(value >> EPOCH_BITS, 10**9)
            times[name] += carry
    return times, nanos


EXTENTS_FL = 0x80000
N_DIRECT = 12  # i_block without extents: 12 direct pointers, then 1-, 2-, 3-level indirect
EXTENT_HEADER = Structure("ExtentHeader", 12, [
    (0x0, "H", "eh_magic"),
    (0x2, "H", "eh_entries"),
    (0x6, "H", "eh_depth"),
])
EXTENT = Structure("Extent", 12, [  # a leaf's entry (eh_depth 0)
    (0x0, "I", "ee_block"),
    (0x4, "H", "ee_len"),
    (0x6, "H", "ee_start_hi"),
    (0x8, "I", "ee_start_lo"),
])
EXTENT_INDEX = Structure("ExtentIndex", 12, [  # an inner node's entry
    (0x4, "I", "ei_leaf_lo"),
    (0x8, "H", "ei_leaf_hi"),
])
EXTENT_MAGIC = 0xF30A
MAX_EXTENT_DEPTH = 5
INIT_EXTENT_MAX_LEN = 32768  # longer ee_len: an unwritten extent of ee_len - 32768 blocks
#: a journal of more blocks than this (64 GiB of 4 KiB blocks) is not one mke2fs makes
MAX_JOURNAL_BLOCKS = 1 << 24

COMPAT_HAS_JOURNAL = 0x4
COMPAT_SPARSE_SUPER2 = 0x200
INCOMPAT_FILETYPE = 0x2
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_LARGE_FILE = 0x2
RO_COMPAT_BTREE_DIR = 0x4
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_METADATA_CSUM = 0x400
#: features an ext3 driver understands; anything beyond makes the volume ext4
EXT3_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG
EXT3_RO_COMPAT = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR


def has_ext_magic(superblock: bytes) -> bool:
    """True when 1024 bytes read at ``SUPERBLOCK_OFFSET`` carry the ext magic."""
    return len(superblock) >= SUPERBLOCK.size and SUPERBLOCK.parse(superblock).s_magic == MAGIC


class ExtFileSystem(FileSystem):
    """An ext2/3/4 volume; allocation unit: the block (the cluster with bigalloc)."""

    kinds: ClassVar[tuple[str, ...]] = ("ext2", "ext3", "ext4")

    def __init__(self, disk: Disk, offset: int = 0):
        super().__init__(disk, offset)
        self.kind = "ext"
        sb = SUPERBLOCK.parse(self.read(SUPERBLOCK_OFFSET, SUPERBLOCK.size))
        if sb.s_magic != MAGIC:
            raise FormatError(f"no ext file system at byte {offset} (bad superblock magic)")
        self.sb = sb
        self.kind = _kind(sb)
        if sb.s_feature_incompat & INCOMPAT_JOURNAL_DEV:
            raise FormatError(f"{self.name}: an external journal device, not a file system")
        if sb.s_log_block_size > MAX_LOG_BLOCK_SIZE:
            raise FormatError(f"{self.name}: bad block size exponent {sb.s_log_block_size}")
        self.block_size = 1024 << sb.s_log_block_size
        bigalloc = bool(sb.s_feature_ro_compat & RO_COMPAT_BIGALLOC)
        #: log2 of blocks per allocation unit (0 unless bigalloc)
        self.cluster_shift = sb.s_log_cluster_size - sb.s_log_block_size if bigalloc else 0
        self.unit = self.block_size << self.cluster_shift
        self.units_per_group = sb.s_clusters_per_group if bigalloc else sb.s_blocks_per_group
        is64 = bool(sb.s_feature_incompat & INCOMPAT_64BIT)
        self.blocks_count = sb.s_blocks_count_lo | (sb.s_blocks_count_hi << 32 if is64 else 0)
        if not (0 < self.units_per_group <= 8 * self.block_size
                and sb.s_blocks_per_group > 0
                and sb.s_first_data_block < self.blocks_count
                and self.cluster_shift >= 0):
            raise FormatError(f"{self.name}: inconsistent superblock geometry")
        self.size = self.blocks_count * self.block_size
        self.n_groups = -(-(self.blocks_count - sb.s_first_data_block) // sb.s_blocks_per_group)
        self.desc_size = max(sb.s_desc_size, GROUP_DESC_64.size) if is64 else GROUP_DESC_32.size
        self._desc_struct = GROUP_DESC_64 if is64 else GROUP_DESC_32
        inode_size = GOOD_OLD_INODE_SIZE if sb.s_rev_level == GOOD_OLD_REV else sb.s_inode_size
        self.inode_size = inode_size
        self.inode_table_blocks = -(-sb.s_inodes_per_group * inode_size // self.block_size)

    # ---------------------------------------------------------------- geometry
    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    def group_first_block(self, groups: np.ndarray) -> np.ndarray:
        """First block of each group (block 1 for group 0 of a 1 KiB bigalloc volume)."""
        first = self.sb.s_first_data_block + groups.astype(np.int64) * self.sb.s_blocks_per_group
        if self.block_size == 1024 and self.sb.s_first_data_block == 0:
            first[groups == 0] = 1
        return first

    def has_super(self, groups: np.ndarray) -> np.ndarray:
        """Whether each group carries a superblock (and descriptor) backup."""
        sb = self.sb
        if sb.s_feature_compat & COMPAT_SPARSE_SUPER2:
            backups = [g for g in (sb.s_backup_bgs_0, sb.s_backup_bgs_1) if g]
            return (groups == 0) | np.isin(groups, backups)
        if not sb.s_feature_ro_compat & RO_COMPAT_SPARSE_SUPER:
            return np.ones(groups.shape, dtype=bool)
        powers = [0, 1]
        for base in (3, 5, 7):
            power = base
            while power < self.n_groups:
                powers.append(power)
                power *= base
        return np.isin(groups, powers)

    @property
    def meta_bg_groups(self) -> int:
        """Groups whose descriptors lie in meta groups after the first (``meta_bg``: in
        the first group of their meta group, not after the superblock); 0 without it."""
        if not self.sb.s_feature_incompat & INCOMPAT_META_BG:
            return 0
        classic = max(self.sb.s_first_meta_bg, 1) * self.descs_per_block
        return max(self.n_groups - classic, 0)

    # ------------------------------------------------------------- descriptors
    def group_descriptors(self, recovered: bool = True) -> np.ndarray:
        """Every group descriptor as a structured array (fields named as in the spec),
        as journal recovery leaves them (``recovered``) or as they are on the volume."""
        gdt_block = SUPERBLOCK_OFFSET // self.block_size + 1  # the block after the superblock
        if not self.sb.s_feature_incompat & INCOMPAT_META_BG:
            count = -(-self.n_groups * self.desc_size // self.block_size)
            data = self._blocks(gdt_block, count, recovered)
            return self._desc_struct.parse_array(data, self.n_groups, self.desc_size)
        # meta_bg: the first s_first_meta_bg descriptor blocks follow the superblock,
        # later ones sit in the first group of each meta group (after its backup).
        per_block = self.descs_per_block
        n_blocks = -(-self.n_groups // per_block)
        meta_groups = np.arange(self.sb.s_first_meta_bg, n_blocks) * per_block
        locations = np.concatenate([
            gdt_block + np.arange(min(self.sb.s_first_meta_bg, n_blocks)),
            self.group_first_block(meta_groups) + self.has_super(meta_groups)])
        data = b"".join(self._blocks(int(b), 1, recovered) for b in locations)
        return self._desc_struct.parse_array(data, self.n_groups, self.desc_size)

    def _blocks(self, first: int, count: int, recovered: bool) -> bytes:
        """``count`` blocks from block ``first``; ``recovered``: as journal recovery
        would leave them."""
        data = bytearray(self.read(first * self.block_size, count * self.block_size))
        for block, copy in self.logged.items() if recovered else ():
            if first <= block < first + count:
                at = (block - first) * self.block_size
                data[at : at + self.block_size] = copy
        return bytes(data)

    # ----------------------------------------------------------------- journal
    @cached_property
    def _journal(self) -> Callable[[int], bytes] | None:
        """Reads block *i* of the internal journal, when the volume needs recovery
        (None when it does not); FormatError when it needs recovery from a journal not
        in the volume."""
        sb = self.sb
        if not (sb.s_feature_incompat & INCOMPAT_RECOVER
                and sb.s_feature_compat & COMPAT_HAS_JOURNAL):
            return None
        if not sb.s_journal_inum:
            raise FormatError(f"{self.name}: needs recovery from an external journal (device "
                              f"{sb.s_journal_dev:#x}), which is not in this image")
        where = self.file_blocks(sb.s_journal_inum, MAX_JOURNAL_BLOCKS)

        def read(block: int) -> bytes:
            if not 0 <= block < where.size or where[block] == 0:
                raise FormatError(f"{self.name}: journal block {block} is not mapped")
            return self.read(int(where[block]) * self.block_size, self.block_size)

        return read

    @cached_property
    def logged(self) -> dict[int, bytes]:
        """Blocks journal recovery would write, by block number: the newest committed
        copy of each block the internal journal logs, when the volume needs recovery;
        FormatError when it needs recovery from a journal not in the volume."""
        if self._journal is None:
            return {}
        try:
            return logged_blocks(self._journal)
        except FormatError as exc:
            raise FormatError(f"{self.name}: needs recovery, but its journal is "
                              f"unreadable: {exc}") from None

    def recovery_note(self) -> str:
        """Needing recovery: what the listings show (:func:`replayed`)."""
        if not self.sb.s_feature_incompat & INCOMPAT_RECOVER:
            return ""
        return replayed(self)[1]

    def fast_commit_units(self) -> BlockMap:
        """Units the replay of the journal's fast commits marks in use (none unless the
        volume needs recovery): every extent they add, and the root of each logged
        inode's extent tree (its extents, or its index blocks).  The rest of such an
        inode's blocks predate the fast commits (in the bitmaps) or are extents they
        add; the tree below the root is not followed — stale tags from earlier commits
        may point at blocks reused since."""
        none = units_map(np.zeros(0), np.zeros(0), self.n_units, self.unit)
        if self._journal is None:
            return none
        try:
            found = fast_commits(self._journal, fast_commit_blocks(self._journal))
        except FormatError as exc:
            raise FormatError(f"{self.name}: needs recovery, but its journal is "
                              f"unreadable: {exc}") from None
        extents = [EXTENT.parse_array(bytes(found.extents), len(found.extents) // EXTENT.size)]
        nodes = [np.zeros(0, np.int64)]
        for raw in found.inodes:
            inode = INODE.parse(raw) if len(raw) >= INODE.size else None
            if inode is None or not inode.i_flags & EXTENTS_FL:
                continue  # no extent tree (inline data; a block-mapped file's are ranges)
            head = EXTENT_HEADER.parse(inode.i_block)
            entries = inode.i_block[EXTENT_HEADER.size :]
            if head.eh_magic != EXTENT_MAGIC or head.eh_entries * EXTENT.size > len(entries):
                continue  # not an extent tree root: nothing replay could follow either
            if head.eh_depth:
                index = EXTENT_INDEX.parse_array(entries, head.eh_entries)
                nodes.append(index["ei_leaf_lo"].astype(np.int64)
                             | index["ei_leaf_hi"].astype(np.int64) << 32)
            else:
                extents.append(EXTENT.parse_array(entries, head.eh_entries))
        leaves, inner = np.concatenate(extents), np.concatenate(nodes)
        starts = np.r_[leaves["ee_start_lo"].astype(np.int64)
                       | leaves["ee_start_hi"].astype(np.int64) << 32, inner]
        lengths = leaves["ee_len"].astype(np.int64)
        lengths = np.r_[np.where(lengths > INIT_EXTENT_MAX_LEN, lengths - INIT_EXTENT_MAX_LEN,
                                 lengths), np.ones(inner.size, dtype=np.int64)]
        ratio = 1 << self.cluster_shift
        return units_map(starts // ratio, -(-(starts + lengths) // ratio), self.n_units, self.unit)

    def raw_inode(self, ino: int, tables: np.ndarray | None = None) -> bytes:
        """Inode ``ino``'s record (``inode_size`` bytes) as it is on the volume;
        ``tables``: every group's inode table block, when the caller has them."""
        return self.read(self.inode_offset(ino, tables), self.inode_size)

    def inode_offset(self, ino: int, tables: np.ndarray | None = None) -> int:
        """Where inode ``ino``'s record is: a byte offset in the volume (``tables``: as
        :meth:`raw_inode`)."""
        group, index = divmod(ino - 1, self.sb.s_inodes_per_group)
        if not 0 <= group < self.n_groups or ino < 1:
            raise FormatError(f"{self.name}: no inode {ino}")
        if tables is None:
            tables = self._field(self.group_descriptors(recovered=False)[group : group + 1],
                                 "bg_inode_table")
            group = 0
        return int(tables[group]) * self.block_size + index * self.inode_size

    def inode_tables(self) -> np.ndarray:
        """Every group's inode table block, as on the volume."""
        return self._field(self.group_descriptors(recovered=False), "bg_inode_table")

    def file_blocks(self, ino: int, max_blocks: int) -> np.ndarray:
        """The volume block of each block of inode ``ino``'s file, in file order (0: a
        hole), from its extent tree or its direct and indirect block pointers;
        FormatError for a file of more than ``max_blocks`` blocks."""
        return self.inode_blocks(self.raw_inode(ino), max_blocks)

    def inode_blocks(self, raw: bytes, max_blocks: int) -> np.ndarray:
        """:meth:`file_blocks` of an inode record."""
        inode = INODE.parse(raw)
        n_blocks = -(-(inode.i_size_lo | inode.i_size_high << 32) // self.block_size)
        if n_blocks > max_blocks:
            raise FormatError(f"{self.name}: an inode of {n_blocks} blocks")
        out = np.zeros(n_blocks, dtype=np.int64)
        if inode.i_flags & EXTENTS_FL:
            self._extent_node(inode.i_block, out, MAX_EXTENT_DEPTH)
        else:
            pointers = np.frombuffer(inode.i_block, "<u4").astype(np.int64)
            out[:N_DIRECT] = pointers[: min(N_DIRECT, out.size)]
            logical = N_DIRECT
            for level, pointer in enumerate(pointers[N_DIRECT:], start=1):
                logical = self._indirect(int(pointer), level, logical, out)
        return out

    def _extent_leaves(self, node: bytes, depth_left: int) -> Iterator[np.ndarray]:
        """The leaf entries (EXTENT arrays) of the extent tree below ``node``."""
        head = EXTENT_HEADER.parse(node)
        if head.eh_magic != EXTENT_MAGIC or head.eh_depth > depth_left:
            raise FormatError(f"{self.name}: bad extent tree node")
        if not head.eh_depth:
            yield EXTENT.parse_array(node[EXTENT_HEADER.size :], head.eh_entries)
            return
        for entry in EXTENT_INDEX.parse_array(node[EXTENT_HEADER.size :], head.eh_entries):
            leaf = int(entry["ei_leaf_lo"]) | int(entry["ei_leaf_hi"]) << 32
            yield from self._extent_leaves(self.read(leaf * self.block_size, self.block_size),
                                           head.eh_depth - 1)

    def _extent_node(self, node: bytes, out: np.ndarray, depth_left: int) -> None:
        """Fill ``out`` (volume block per file block) from one node of an extent tree."""
        for leaf in self._extent_leaves(node, depth_left):
            for entry in leaf:
                length = int(entry["ee_len"])
                length -= INIT_EXTENT_MAX_LEN if length > INIT_EXTENT_MAX_LEN else 0
                first = int(entry["ee_block"])
                start = int(entry["ee_start_lo"]) | int(entry["ee_start_hi"]) << 32
                stop = min(first + length, out.size)
                out[first:stop] = start + np.arange(max(stop - first, 0))

    def _indirect(self, pointer: int, level: int, logical: int, out: np.ndarray) -> int:
        """Fill ``out`` from a ``level``-deep indirect block mapping file blocks from
        ``logical`` on; returns the file block after the ones it maps."""
        per_block = self.block_size // 4
        if logical >= out.size or pointer == 0:
            return logical + per_block**level
        children = np.frombuffer(self.read(pointer * self.block_size, self.block_size),
                                 "<u4").astype(np.int64)
        if level == 1:
            stop = min(logical + per_block, out.size)
            out[logical:stop] = children[: stop - logical]
            return logical + per_block
        for child in children.tolist():
            logical = self._indirect(child, level - 1, logical, out)
        return logical

    def _field(self, desc: np.ndarray, name: str) -> np.ndarray:
        value = desc[f"{name}_lo"].astype(np.int64)
        if f"{name}_hi" in (desc.dtype.names or ()):
            value |= desc[f"{name}_hi"].astype(np.int64) << 32
        return value

    # -------------------------------------------------------------- allocation
    def metadata_units(self, desc: np.ndarray) -> BlockMap:
        """The units every group's metadata occupies.

        Superblock/descriptor backups and reserved descriptor blocks where a
        group has a backup, and every group's block bitmap, inode bitmap and
        inode table — what a ``BLOCK_UNINIT`` group's implicit bitmap holds.
        """
        groups = np.arange(self.n_groups)
        first = self.group_first_block(groups)
        backup = self.has_super(groups)
        meta_bg = bool(self.sb.s_feature_incompat & INCOMPAT_META_BG)
        desc_blocks = -(-self.n_groups // self.descs_per_block)
        old_desc = self.sb.s_first_meta_bg if meta_bg else (
            desc_blocks + self.sb.s_reserved_gdt_blocks)
        per_block = self.descs_per_block
        in_old = (groups // per_block < self.sb.s_first_meta_bg) if meta_bg else (
            np.ones(self.n_groups, dtype=bool))
        # superblock + classic descriptor blocks, or one meta_bg descriptor block
        # in the first, second and last group of each meta group
        length = np.where(in_old, backup * (1 + old_desc), backup.astype(np.int64))
        meta_desc = ~in_old & np.isin(groups % per_block, (0, 1, per_block - 1))
        length = length + meta_desc
        starts = np.concatenate([first, self._field(desc, "bg_block_bitmap"),
                                 self._field(desc, "bg_inode_bitmap"),
                                 self._field(desc, "bg_inode_table")])
        lengths = np.concatenate([length, np.ones(2 * self.n_groups, dtype=np.int64),
                                  np.full(self.n_groups, self.inode_table_blocks)])
        starts, lengths = starts[lengths > 0], lengths[lengths > 0]
        ratio = 1 << self.cluster_shift  # a unit is in use when any of its blocks is
        return units_map(starts // ratio, -(-(starts + lengths) // ratio), self.n_units, self.unit)

    def _bitmaps(self, locations: np.ndarray) -> np.ndarray:
        """The block bitmaps at ``locations`` as a (len, block_size) array, read run by
        run, each ORed with the journal's copy of it."""
        if ((locations < 0) | (locations >= self.blocks_count)).any():
            raise FormatError(f"{self.name}: a block bitmap lies outside the volume")
        out = np.empty((locations.size, self.block_size), dtype=np.uint8)
        order = np.argsort(locations, kind="stable")
        ordered = locations[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for run in np.split(np.arange(ordered.size), breaks):
            if run.size:
                first, count = int(ordered[run[0]]), int(ordered[run[-1]] - ordered[run[0]] + 1)
                data = self.read(first * self.block_size, count * self.block_size)
                out[order[run]] = np.frombuffer(data, np.uint8).reshape(count, -1)
        if self.logged:  # a block is in use when the volume's or the journal's bitmap says so
            logged = np.fromiter(self.logged, dtype=np.int64, count=len(self.logged))
            for row in np.flatnonzero(np.isin(locations, logged)).tolist():
                out[row] |= np.frombuffer(self.logged[int(locations[row])], np.uint8)
        return out

    def allocation(self) -> BlockMap:
        """Allocated units (blocks, or clusters with bigalloc) of the whole volume.

        The groups' bitmaps laid end to end are the packed map of the units from
        group 0 on; units before it (block 0 of a 1 KiB volume) are allocated, the
        last group's bits past the end of the volume dropped.  Never one flag per
        unit: a 16 TiB volume has 2**32 blocks.
        """
        desc = self.group_descriptors()
        uninit = np.zeros(self.n_groups, dtype=bool)
        if self.sb.s_feature_ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM):
            uninit = (desc["bg_flags"] & BG_BLOCK_UNINIT) != 0
            if self.logged:  # uninitialised only when also so on the volume
                uninit &= (self.group_descriptors(recovered=False)["bg_flags"]
                           & BG_BLOCK_UNINIT) != 0
        per_group = self.units_per_group
        if per_group % 8:  # mke2fs refuses such a geometry
            raise FormatError(f"{self.name}: {per_group} units per group, not a multiple of 8")
        grouped = np.zeros((self.n_groups, per_group // 8), dtype=np.uint8)
        grouped[~uninit] = self._bitmaps(
            self._field(desc, "bg_block_bitmap")[~uninit])[:, : per_group // 8]
        starts, lengths = BlockMap(grouped.size * 8, self.unit, grouped.reshape(-1)).run_arrays()
        first_unit = self.sb.s_first_data_block >> self.cluster_shift
        starts = np.r_[0, starts + first_unit]
        flags = units_map(starts, starts + np.r_[first_unit, lengths], self.n_units, self.unit)
        if uninit.any():  # implicit bitmaps: the metadata inside those groups
            groups = np.flatnonzero(uninit) * per_group + first_unit
            flags |= self.metadata_units(desc) & units_map(groups, groups + per_group,
                                                           self.n_units, self.unit)
        return flags | self.fast_commit_units()


def replayed(ext: ExtFileSystem) -> tuple[Disk, str]:
    """The disk ``ext`` lies on with its journal's committed transactions replayed as
    recovery does (an overlay of the newest unrevoked copy of each logged block) and a
    note saying so; the disk itself and why not, when the journal cannot be read or is
    not in the image.  Fast commits are not replayed (the note says so)."""
    try:
        journal = ext._journal
        if journal is None:
            return ext.disk, ""
        blocks = logged_blocks(journal, revoke=True)
        fast = journal_features(journal) & INCOMPAT_FAST_COMMIT
    except UNPARSABLE as exc:
        why = str(exc).removeprefix(f"{ext.name}: ")
        return ext.disk, (f"ext journal needs recovery but cannot be replayed ({why}): "
                          f"listings show the pre-recovery state")
    overlay = OverlayDisk(ext.disk)
    for block, copy in sorted(blocks.items()):
        if (block + 1) * ext.block_size <= ext.size:
            overlay.write(ext.offset + block * ext.block_size, copy)
    unreplayed = "; its fast commits are not replayed" if fast else ""
    return overlay, (f"ext journal needs recovery ({len(blocks)} blocks replayed"
                     f"{unreplayed}): listings show the recovered state")


def _kind(sb: Any) -> str:
    """ext4 when any feature beyond ext3's is on; ext3 with a journal; else ext2."""
    if (sb.s_feature_incompat & ~EXT3_INCOMPAT) or (sb.s_feature_ro_compat & ~EXT3_RO_COMPAT):
        return "ext4"
    return "ext3" if sb.s_feature_compat & COMPAT_HAS_JOURNAL else "ext2"

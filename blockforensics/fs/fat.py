"""FAT12/16/32 (Microsoft's FAT specification): allocation from the FAT itself.

Layout of a FAT volume, in sectors of ``BPB_BytsPerSec`` bytes: the reserved
region (``BPB_RsvdSecCnt``, starting with the boot sector), ``BPB_NumFATs``
copies of the FAT, the fixed root directory (FAT12/16 only), then the data
region of clusters numbered from 2.  A cluster is allocated when its FAT entry
is non-zero (in use, end of chain, or marked bad).

The FAT type is decided as Linux (``fs/fat/inode.c``) and Windows (fastfat)
decide it, never by the ``BS_FilSysType`` label: a boot sector with
``BPB_FATSz16 == 0`` carries the FAT32 BPB and the volume is FAT32 whatever its
cluster count (``mkfs.fat -F 32`` makes FAT32 volumes of fewer than 65,525
clusters, the count the specification names); otherwise the count of clusters
chooses FAT12 or FAT16.  The count cross-checks the BPB: a FAT12/16 BPB with
65,525 clusters or more, a FAT32 BPB with a fixed root directory, a root
cluster outside the volume or an active FAT (``BPB_ExtFlags``, mirroring off)
beyond ``BPB_NumFATs``, or a FAT too small for the clusters, is not a
volume this reader can be sure of (FormatError; the backup then copies every
block and says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.base import FileSystem
from blockforensics.fs.structure import Structure

#: the boot sector's BIOS parameter block; offsets 0x24+ are FAT32-only fields
BOOT_SECTOR = Structure("FatBootSector", 512, [
    (0x00, "B", "BS_jmpBoot"),
    (0x0B, "H", "BPB_BytsPerSec"),
    (0x0D, "B", "BPB_SecPerClus"),
    (0x0E, "H", "BPB_RsvdSecCnt"),
    (0x10, "B", "BPB_NumFATs"),
    (0x11, "H", "BPB_RootEntCnt"),
    (0x13, "H", "BPB_TotSec16"),
    (0x15, "B", "BPB_Media"),
    (0x16, "H", "BPB_FATSz16"),
    (0x20, "I", "BPB_TotSec32"),
    (0x24, "I", "BPB_FATSz32"),
    (0x28, "H", "BPB_ExtFlags"),
    (0x2A, "H", "BPB_FSVer"),
    (0x2C, "I", "BPB_RootClus"),
])
JUMP_OPCODES = (0xEB, 0xE9)
SECTOR_SIZES = (512, 1024, 2048, 4096)
MEDIA_BYTES = (0xF0, *range(0xF8, 0x100))
DIR_ENTRY_SIZE = 32
#: a directory entry's first name byte once the entry is deleted (spec, DIR_Name[0])
FAT_DELETED = 0xE5
#: cluster counts below these are FAT12, FAT16 (spec, "FAT Type Determination")
MAX_FAT12_CLUSTERS = 4085
MAX_FAT16_CLUSTERS = 65525
#: FAT32 cluster numbers are 28 bits; 0x0FFFFFF7 and up are bad/end-of-chain marks
MAX_FAT32_CLUSTERS = 0x0FFFFFF5
FAT32_ENTRY_MASK = 0x0FFFFFFF
#: BPB_ExtFlags: bit 7 set = only the FAT numbered in bits 0-3 is active
EXT_FLAGS_NO_MIRRORING = 0x80
EXT_FLAGS_ACTIVE_FAT = 0x0F
FIRST_CLUSTER = 2


@dataclass(frozen=True)
class ClusterHeap:
    """The clusters of a FAT or exFAT volume as one state of it has them, in each copy of
    its allocation state kept alike (rows of ``next`` and ``allocated``).

    FAT12/16/32: a cluster is allocated when its FAT entry is non-zero, and a file's
    clusters are a chain, each entry naming the next; deleting a file zeroes every
    entry of its chain in every FAT (``BPB_NumFATs`` copies, mirrored unless a FAT32's
    ``BPB_ExtFlags`` say only one is active; FAT specification, "FAT" and "Directory
    Structure").  exFAT (specification, sections 4.1, 7.1, 7.6.2): the allocation bitmap
    says which clusters are allocated (deleting clears their bits); a file's clusters
    are a FAT chain, or contiguous with FAT entries that mean nothing (``NoFatChain``).
    """

    start: int  # bytes from the file system's start to cluster 2
    cluster_size: int  # bytes
    next: np.ndarray  # uint32 (copies, clusters): each FAT entry (column 0 = cluster 2)
    allocated: np.ndarray  # bool (copies, clusters), as ``next``
    always_chained: bool  # FAT: yes; exFAT: contiguous clusters need no chain

    def clusters(self, ranges: np.ndarray) -> np.ndarray:
        """The cluster numbers (int64, in order, none repeated twice running) that byte
        ranges ``(k, 2)`` of the file system, [start, stop), touch."""
        first = (ranges[:, 0] - self.start) // self.cluster_size
        counts = (ranges[:, 1] - 1 - self.start) // self.cluster_size - first + 1
        starts = np.cumsum(counts) - counts  # where each range's clusters begin
        numbers = np.arange(counts.sum()) + np.repeat(first - starts, counts)
        kept = np.r_[True, np.diff(numbers) != 0] if len(numbers) else np.empty(0, bool)
        return numbers[kept] + FIRST_CLUSTER

    def allocated_at(self, byte: int) -> bool:
        """Is the cluster holding ``byte`` (from the file system's start) allocated in
        one of the copies?  Bytes before the heap (FAT12/16's fixed root directory) are
        always allocated."""
        cluster = (byte - self.start) // self.cluster_size
        return byte < self.start or (cluster < self.allocated.shape[1]
                                     and bool(self.allocated[:, cluster].any()))

    def holds(self, clusters: np.ndarray) -> bool | None:
        """Are ``clusters`` (numbers, file order; at least one) still allocated as a file
        had them: each one allocated, and each FAT entry naming the next one (on exFAT
        not needed of contiguous clusters: a ``NoFatChain`` file's entries are void)?
        Asked of every copy: held in one but not another, the copies' entries were
        damaged, not freed (a deletion frees them in all): True.  Held in none: False
        where the copies agree over these clusters, None (not decidable) where not."""
        index = clusters - FIRST_CLUSTER
        if index.min() < 0 or index.max() >= self.next.shape[1]:
            return False
        held = self.allocated[:, index].all(axis=1)
        if self.always_chained or not np.all(np.diff(clusters) == 1):
            held &= (self.next[:, index[:-1]] == clusters[1:]).all(axis=1)
        if held.any():
            return True
        agree = (self.next[:, index] == self.next[:1, index]).all() \
            and (self.allocated[:, index] == self.allocated[:1, index]).all()
        return False if agree else None


class FatFileSystem(FileSystem):
    """A FAT12/16/32 volume; allocation unit: the sector (``BPB_BytsPerSec`` bytes)."""

    kinds: ClassVar[tuple[str, ...]] = ("fat12", "fat16", "fat32")

    def __init__(self, disk: Disk, offset: int = 0):
        super().__init__(disk, offset)
        self.kind = "fat"
        bpb = BOOT_SECTOR.parse(self.read(0, BOOT_SECTOR.size))
        problem = bpb_problem(bpb)
        if problem:
            raise FormatError(f"no FAT file system at byte {offset}: {problem}")
        self.bpb = bpb
        self.unit = bpb.BPB_BytsPerSec
        self.sectors_per_cluster = bpb.BPB_SecPerClus
        #: a FAT32 BPB (Linux and Windows: ``BPB_FATSz16 == 0``)
        fat32 = bpb.BPB_FATSz16 == 0
        self.fat_sectors = bpb.BPB_FATSz32 if fat32 else bpb.BPB_FATSz16
        self.total_sectors = bpb.BPB_TotSec16 or bpb.BPB_TotSec32
        root_dir_sectors = -(-bpb.BPB_RootEntCnt * DIR_ENTRY_SIZE // self.unit)
        #: first sector after the FATs: the fixed root directory (FAT12/16) or cluster 2
        self.entries_sector = entries_sector(bpb)
        #: first sector of cluster 2 (reserved + FATs + fixed root directory before it)
        self.first_data_sector = self.entries_sector + root_dir_sectors
        if self.first_data_sector >= self.total_sectors:
            raise FormatError(f"{self.name}: no data region (metadata fills all "
                              f"{self.total_sectors} sectors)")
        self.n_clusters = (self.total_sectors - self.first_data_sector) // self.sectors_per_cluster
        if fat32:
            self.kind, self.entry_bits = "fat32", 32
        elif self.n_clusters < MAX_FAT12_CLUSTERS:
            self.kind, self.entry_bits = "fat12", 12
        else:
            self.kind, self.entry_bits = "fat16", 16
        self.size = self.total_sectors * self.unit
        problem = self._type_problem()
        if problem:
            raise FormatError(f"{self.name}: {problem}")

    def _type_problem(self) -> str | None:
        """Why the BPB's type and the cluster count disagree, or None when they agree."""
        bpb, n = self.bpb, self.n_clusters
        if self.kind == "fat32":
            checks = [
                (bpb.BPB_RootEntCnt == 0,
                 f"FAT32 BPB with a fixed root directory of {bpb.BPB_RootEntCnt} entries"),
                (bpb.BPB_FSVer == 0, f"FAT32 version {bpb.BPB_FSVer:#x}"),
                (n <= MAX_FAT32_CLUSTERS, f"{n} clusters, more than FAT32 can number"),
                (FIRST_CLUSTER <= bpb.BPB_RootClus < FIRST_CLUSTER + n,
                 f"root directory cluster {bpb.BPB_RootClus} outside clusters 2..{n + 1}"),
                (not bpb.BPB_ExtFlags & EXT_FLAGS_NO_MIRRORING
                 or bpb.BPB_ExtFlags & EXT_FLAGS_ACTIVE_FAT < bpb.BPB_NumFATs,
                 f"active FAT {bpb.BPB_ExtFlags & EXT_FLAGS_ACTIVE_FAT} of "
                 f"{bpb.BPB_NumFATs} FATs"),
            ]
        else:
            checks = [(n < MAX_FAT16_CLUSTERS,
                       f"FAT16 BPB (BPB_FATSz16 = {bpb.BPB_FATSz16}) but {n} clusters, "
                       f"a FAT32 count")]
        checks.append((
            -(-(n + FIRST_CLUSTER) * self.entry_bits // 8) <= self.fat_sectors * self.unit,
            f"a FAT of {self.fat_sectors} sectors cannot hold {n} clusters"))
        return next((why for ok, why in checks if not ok), None)

    @property
    def cluster_size(self) -> int:
        """Bytes per cluster."""
        return self.sectors_per_cluster * self.unit

    def mirrored_fats(self) -> list[int]:
        """The FATs kept alike (0-based): all ``BPB_NumFATs``, or a FAT32's active one
        alone when its ``BPB_ExtFlags`` turn mirroring off (bits 0-3 name it)."""
        if self.kind == "fat32" and self.bpb.BPB_ExtFlags & EXT_FLAGS_NO_MIRRORING:
            return [self.bpb.BPB_ExtFlags & EXT_FLAGS_ACTIVE_FAT]
        return list(range(self.bpb.BPB_NumFATs))

    def fat_entries(self, copy: int | None = None) -> np.ndarray:
        """FAT ``copy``'s (0-based; None: the active one) entries for clusters
        2 .. n_clusters+1 (uint32, index 0 = cluster 2)."""
        copy = self.mirrored_fats()[0] if copy is None else copy
        start = (self.bpb.BPB_RsvdSecCnt + copy * self.fat_sectors) * self.unit
        count = self.n_clusters + FIRST_CLUSTER
        raw = np.frombuffer(self.read(start, -(-count * self.entry_bits // 8)), dtype=np.uint8)
        if self.entry_bits == 12:  # two entries packed in three bytes, low nibble first
            triples = np.pad(raw, (0, -raw.size % 3)).reshape(-1, 3).astype(np.uint32)
            entries = np.empty(triples.shape[0] * 2, dtype=np.uint32)
            entries[0::2] = triples[:, 0] | (triples[:, 1] & 0x0F) << 8
            entries[1::2] = triples[:, 1] >> 4 | triples[:, 2] << 4
        elif self.entry_bits == 16:
            entries = raw.view("<u2").astype(np.uint32)
        else:
            entries = raw.view("<u4") & np.uint32(FAT32_ENTRY_MASK)
        return entries[FIRST_CLUSTER:count]

    def heap(self) -> ClusterHeap:
        """The data region's clusters as the FATs kept alike have them, a copy that
        cannot be read (a damaged block of a backup) left out; FormatError when none
        can be read."""
        copies, problems = [], []
        for copy in self.mirrored_fats():
            try:
                copies.append(self.fat_entries(copy))
            except FormatError as exc:
                problems.append(f"FAT {copy + 1}: {exc}")
        if not copies:
            raise FormatError("; ".join(problems))
        entries = np.stack(copies)
        return ClusterHeap(self.first_data_sector * self.unit, self.cluster_size, entries,
                           entries != 0, always_chained=True)

    def cluster_allocation(self) -> BlockMap:
        """Allocated clusters (non-zero FAT entry); block *i* is cluster *i* + 2."""
        return BlockMap.from_bools(self.fat_entries() != 0, self.cluster_size)

    def allocation(self) -> BlockMap:
        """Allocated sectors: reserved region, FATs, root directory, allocated clusters.

        Sectors after the last whole cluster belong to no cluster: unallocated.
        Built from runs of clusters, never one flag per sector: a 2 TiB volume has
        2**32 sectors.
        """
        starts, lengths = self.cluster_allocation().run_arrays()  # in clusters
        spc = self.sectors_per_cluster
        return BlockMap.from_run_arrays(
            self.total_sectors, np.r_[0, self.first_data_sector + starts * spc],
            np.r_[self.first_data_sector, lengths * spc], self.unit)


def bpb_problem(bpb: Any) -> str | None:
    """Why a parsed boot sector is not a FAT BPB, or None when it is plausible."""
    checks = [
        (bpb.BS_jmpBoot in JUMP_OPCODES, "no jump instruction"),
        (bpb.BPB_BytsPerSec in SECTOR_SIZES, f"bytes per sector {bpb.BPB_BytsPerSec}"),
        (bpb.BPB_SecPerClus in (1, 2, 4, 8, 16, 32, 64, 128),
         f"sectors per cluster {bpb.BPB_SecPerClus}"),
        (bpb.BPB_RsvdSecCnt > 0, "no reserved sectors"),
        (bpb.BPB_NumFATs > 0, "no FAT"),
        (bpb.BPB_Media in MEDIA_BYTES, f"media byte {bpb.BPB_Media:#x}"),
        (bool(bpb.BPB_TotSec16 or bpb.BPB_TotSec32), "zero sectors"),
        (bool(bpb.BPB_FATSz16 or bpb.BPB_FATSz32), "zero-sized FAT"),
    ]
    return next((why for ok, why in checks if not ok), None)


def entries_sector(bpb: Any) -> int:
    """The first sector after the FATs of a parsed boot sector: the fixed root directory
    (FAT12/16) or cluster 2 (FAT32); read whatever the other fields say."""
    return bpb.BPB_RsvdSecCnt + bpb.BPB_NumFATs * (bpb.BPB_FATSz16 or bpb.BPB_FATSz32)

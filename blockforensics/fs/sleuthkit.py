"""File systems beyond the teaching readers, opened by The Sleuth Kit (pytsk3).

TSK recognises the file system (NTFS, exFAT, HFS+, ISO 9660, UFS, APFS …) and
reads its files; the allocation map is the file system's own allocation bitmap,
read as a file through TSK:

- NTFS: ``$Bitmap`` (MFT record 6), one bit per cluster from LCN 0, least
  significant bit first; TSK's block is the cluster.
- exFAT: the allocation bitmap (TSK's ``$ALLOC_BITMAP`` in the root directory),
  one bit per cluster of the cluster heap; everything before the heap (boot
  region, FAT) is metadata.  TSK's block is the sector, the heap's geometry
  comes from the boot sector (exFAT specification, section 3.1).  A volume with
  two FATs and two bitmaps (TexFAT, ``NumberOfFats`` 2: ``VolumeFlags`` say which
  is active) is copied whole.
- HFS+ and HFSX: the allocation file (catalog node ID 6), one bit per
  allocation block from block 0, most significant bit first (Apple TN1150);
  its extents come from the volume header at byte 1024, checked against TSK's
  block size and count.  TSK's block is the allocation block.  The blocks
  holding the boot blocks and volume header (first 1536 bytes) and the
  alternate volume header (last 1024 bytes) are always kept.  A volume not cleanly
  unmounted (``kHFSVolumeUnmountedBit`` clear: mounted, or crashed) is read only
  when it is journaled and its journal is empty (header ``start == end``): else
  the allocation file may lag what replay or ``fsck_hfs`` would make of it, and
  the volume is copied whole.

Any other file system TSK opens is named, and copied whole (FormatError saying
so: the backup lists it as recognised but not read).  The readers are
cross-checked against ``ntfscluster``, ``blkls`` and ``hpfsck`` in the tests.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.base import FileSystem
from blockforensics.fs.fat import FIRST_CLUSTER, ClusterHeap
from blockforensics.fs.structure import Structure

#: the exFAT boot sector: only the FAT's and heap's geometry are needed here
EXFAT_BOOT_SECTOR = Structure("ExfatBootSector", 512, [
    (0x03, "8s", "FileSystemName"),
    (0x48, "Q", "VolumeLength"),
    (0x50, "I", "FatOffset"),  # sectors
    (0x58, "I", "ClusterHeapOffset"),
    (0x5C, "I", "ClusterCount"),
    (0x6C, "B", "BytesPerSectorShift"),
    (0x6D, "B", "SectorsPerClusterShift"),
    (0x6E, "B", "NumberOfFats"),
])
EXFAT_NAME = b"EXFAT   "
#: an exFAT File directory entry (section 7.4), the first of its entry set: the count of
#: entries after it (Stream Extension, File Name …), and the set's checksum
EXFAT_FILE_ENTRY = Structure("ExfatFileEntry", 32, [
    (0x00, "B", "EntryType"),
    (0x01, "B", "SecondaryCount"),
    (0x02, "H", "SetChecksum"),
])
EXFAT_ENTRY_SIZE = 32
#: an entry type's in-use bit (section 6.2.1.4); a File entry's type in use, deleted
EXFAT_IN_USE = 0x80
EXFAT_FILE, EXFAT_FILE_DELETED = 0x85, 0x05
#: the HFS+ volume header (TN1150), at byte 1024; the allocation file's fork data
#: at 112: logical size, clump size, block count, 8 extents (start, count) as 64 bytes
HFSPLUS_VOLUME_HEADER = Structure("HFSPlusVolumeHeader", 512, [
    (0, "2s", "signature"),
    (2, "H", "version"),
    (4, "I", "attributes"),
    (12, "I", "journalInfoBlock"),
    (40, "I", "blockSize"),
    (44, "I", "totalBlocks"),
    (112, "Q", "allocationLogicalSize"),
    (124, "I", "allocationTotalBlocks"),
    (128, "64s", "allocationExtents"),
], byteorder=">")
HFSPLUS_HEADER_AT = 1024  # bytes from the volume's start
HFSPLUS_SIGNATURES = {b"H+": 4, b"HX": 5}  # signature -> version
HFSPLUS_ALLOCATION_FILE_ID = 6  # kHFSAllocationFileID
HFS_VOLUME_UNMOUNTED = 1 << 8  # kHFSVolumeUnmountedBit: cleared while mounted
HFS_VOLUME_JOURNALED = 1 << 13  # kHFSVolumeJournaledBit
#: the journal info block (TN1150 "Journal"), big-endian, at journalInfoBlock
JOURNAL_INFO_BLOCK = Structure("JournalInfoBlock", 52, [
    (0, "I", "flags"),
    (36, "Q", "offset"),  # bytes from the volume's start to the journal header
    (44, "Q", "size"),
], byteorder=">")
JOURNAL_IN_FS, JOURNAL_ON_OTHER_DEVICE = 0x1, 0x2  # kJIJournalInFSMask, ...OnOtherDeviceMask
#: the journal header: its byte order is the writer's, told by ``endian``
JOURNAL_HEADER = {order: Structure("JournalHeader", 28, [
    (0, "I", "magic"),
    (4, "I", "endian"),
    (8, "Q", "start"),  # bytes from the header: the oldest transaction not yet replayed
    (16, "Q", "end"),  # where the next transaction goes; start == end: empty
], byteorder=order) for order in (">", "<")}
JOURNAL_MAGIC, JOURNAL_ENDIAN = 0x4A4E4C78, 0x12345678  # "JNLx"
NTFS_BITMAP_RECORD = 6  # MFT record number of $Bitmap
EXFAT_BITMAP_NAME = b"$ALLOC_BITMAP"


def _pytsk3() -> Any:
    from blockforensics.tsk import pytsk3

    return pytsk3()


def tsk_kind(ftype: int) -> str:
    """TSK's file-system type number as a short name ("ntfs", "exfat", "hfs" …)."""
    tsk = _pytsk3()
    for name in dir(tsk):
        if (name.startswith("TSK_FS_TYPE_") and not name.endswith(("_DETECT", "_ENUM"))
                and int(getattr(tsk, name)) == ftype):
            return name.removeprefix("TSK_FS_TYPE_").lower()
    return f"tsk-type-{ftype:#x}"


class TskFileSystem(FileSystem):
    """A file system The Sleuth Kit opens; allocation unit: TSK's block."""

    kinds: ClassVar[tuple[str, ...]] = ("ntfs", "exfat", "hfs")  # read; any other is only named

    def __init__(self, disk: Disk, offset: int = 0):
        super().__init__(disk, offset)
        from blockforensics.tsk import ChainImgInfo, open_fs

        self.kind = "unknown"
        try:
            self.fs = open_fs(ChainImgInfo(disk), offset)
        except OSError as exc:
            raise FormatError(f"no file system The Sleuth Kit opens at byte {offset}: "
                              f"{str(exc).splitlines()[0]}") from None
        info = self.fs.info
        self.kind = tsk_kind(int(info.ftype))
        self.unit = int(info.block_size)
        self.size = int(info.block_count) * self.unit

    def allocation(self) -> BlockMap:
        if self.kind == "ntfs":
            flags = self._bitmap(self.fs.open_meta(inode=NTFS_BITMAP_RECORD), self.n_units)
        elif self.kind == "exfat":
            flags = self._exfat()
        elif self.kind == "hfs":
            flags = self._hfsplus()
        else:
            raise FormatError(f"{self.name}: The Sleuth Kit opens it, but its allocation is "
                              "not read here")
        return BlockMap.from_bools(flags, self.unit)

    def _bitmap(self, fs_file: Any, bits: int) -> np.ndarray:
        """The first ``bits`` bits of a bitmap file (least significant bit first)."""
        need = -(-bits // 8)
        try:
            data = fs_file.read_random(0, need) if need else b""
        except OSError as exc:  # TSK's read failing (a damaged block of a backup)
            raise FormatError(f"{self.name}: allocation bitmap unreadable "
                              f"({str(exc).splitlines()[0]})") from None
        if len(data) != need:
            raise FormatError(f"{self.name}: allocation bitmap of {len(data)} bytes, "
                              f"{need} needed")
        return np.unpackbits(np.frombuffer(data, np.uint8), count=bits,
                             bitorder="little").view(bool)

    def _exfat_boot(self) -> Any:
        """The exFAT boot sector, checked against TSK's geometry (one FAT and bitmap)."""
        boot = EXFAT_BOOT_SECTOR.parse(self.read(0, EXFAT_BOOT_SECTOR.size))
        heap_end = boot.ClusterHeapOffset + (boot.ClusterCount << boot.SectorsPerClusterShift)
        if (boot.FileSystemName != EXFAT_NAME or 1 << boot.BytesPerSectorShift != self.unit
                or heap_end > self.n_units):
            raise FormatError(f"{self.name}: boot sector disagrees with The Sleuth Kit")
        if boot.NumberOfFats != 1:  # TexFAT: a second FAT and allocation bitmap
            raise FormatError(f"{self.name}: {boot.NumberOfFats} FATs and allocation bitmaps "
                              "(TexFAT): which one is current is not read here")
        return boot

    def _exfat_bitmap(self, boot: Any) -> np.ndarray:
        """The allocation bitmap: one flag per cluster of the heap (index 0 = cluster 2)."""
        root = self.fs.open_dir(inode=self.fs.info.root_inum)
        bitmap = next((f for f in root if f.info.name.name == EXFAT_BITMAP_NAME), None)
        if bitmap is None:
            raise FormatError(f"{self.name}: no allocation bitmap in the root directory")
        return self._bitmap(bitmap, boot.ClusterCount)

    def _exfat(self) -> np.ndarray:
        boot = self._exfat_boot()
        per_cluster = 1 << boot.SectorsPerClusterShift
        flags = np.zeros(self.n_units, dtype=bool)
        flags[: boot.ClusterHeapOffset] = True  # boot region, FATs
        flags[boot.ClusterHeapOffset : boot.ClusterHeapOffset + boot.ClusterCount
              * per_cluster] = np.repeat(self._exfat_bitmap(boot), per_cluster)
        return flags

    def exfat_heap(self) -> ClusterHeap:
        """An exFAT volume's cluster heap: the allocation bitmap and the FAT (32-bit
        entries from ``FatOffset``)."""
        if self.kind != "exfat":
            raise FormatError(f"{self.name}: not exFAT")
        boot = self._exfat_boot()
        if boot.FatOffset * self.unit + (boot.ClusterCount + FIRST_CLUSTER) * 4 \
                > boot.ClusterHeapOffset * self.unit:
            raise FormatError(f"{self.name}: the FAT at sector {boot.FatOffset} runs into "
                              f"the cluster heap")
        entries = np.frombuffer(self.read(boot.FatOffset * self.unit,
                                          (boot.ClusterCount + FIRST_CLUSTER) * 4), "<u4")
        return ClusterHeap(boot.ClusterHeapOffset * self.unit,
                           self.unit << boot.SectorsPerClusterShift,
                           entries[None, FIRST_CLUSTER:], self._exfat_bitmap(boot)[None],
                           always_chained=False)

    def _hfsplus_settled(self, head: Any) -> None:
        """FormatError unless the allocation file is the volume's last word: a journaled
        volume whose journal holds transactions not yet replayed (a live or crashed
        Mac: replay may allocate blocks the file marks free), or one without a journal
        that was not cleanly unmounted (its allocation file may lag its catalog)."""
        if not head.attributes & HFS_VOLUME_JOURNALED or not head.journalInfoBlock:
            if not head.attributes & HFS_VOLUME_UNMOUNTED:
                raise FormatError(f"{self.name}: not cleanly unmounted and not journaled "
                                  "(its allocation file may lag its catalog)")
            return
        if head.attributes & HFS_VOLUME_UNMOUNTED:
            return  # unmounted cleanly: the journal was replayed and emptied
        info = JOURNAL_INFO_BLOCK.parse(self.read(head.journalInfoBlock * self.unit,
                                                  JOURNAL_INFO_BLOCK.size))
        if info.flags & JOURNAL_ON_OTHER_DEVICE or not info.flags & JOURNAL_IN_FS:
            raise FormatError(f"{self.name}: mounted (or not cleanly unmounted) with its "
                              "journal on another device, which is not in this image")
        raw = self.read(info.offset, JOURNAL_HEADER[">"].size)
        journal = next((j for j in (h.parse(raw) for h in JOURNAL_HEADER.values())
                        if j.magic == JOURNAL_MAGIC and j.endian == JOURNAL_ENDIAN), None)
        if journal is None:
            raise FormatError(f"{self.name}: mounted (or not cleanly unmounted) and no "
                              f"journal header at byte {info.offset}")
        if journal.start != journal.end:
            raise FormatError(f"{self.name}: its journal holds transactions not yet "
                              "replayed (mounted, or not cleanly unmounted: replay may "
                              "allocate blocks the allocation file marks free)")

    def _hfsplus(self) -> np.ndarray:
        """HFS+/HFSX: the allocation file's bits, most significant bit first, one per
        allocation block; the blocks of the first 1536 and last 1024 bytes always set."""
        head = HFSPLUS_VOLUME_HEADER.parse(self.read(HFSPLUS_HEADER_AT,
                                                     HFSPLUS_VOLUME_HEADER.size))
        if HFSPLUS_SIGNATURES.get(head.signature) != head.version:
            raise FormatError(f"{self.name}: no HFS+ volume header (signature "
                              f"{head.signature!r}, version {head.version}): HFS wrapper?")
        if head.blockSize != self.unit or head.totalBlocks != self.n_units:
            raise FormatError(f"{self.name}: volume header ({head.totalBlocks} blocks of "
                              f"{head.blockSize} bytes) disagrees with The Sleuth Kit")
        self._hfsplus_settled(head)
        extents = np.frombuffer(head.allocationExtents, ">u4").reshape(8, 2).astype(np.int64)
        starts, counts = extents[:, 0], extents[:, 1]
        need = -(-self.n_units // 8)  # bytes of bitmap
        in_header = int(counts.sum())
        if (np.any(starts + counts > self.n_units) or in_header > head.allocationTotalBlocks
                or head.allocationLogicalSize < need
                or head.allocationLogicalSize > head.allocationTotalBlocks * self.unit):
            raise FormatError(f"{self.name}: allocation file ({head.allocationLogicalSize} "
                              f"bytes, extents {extents[counts > 0].tolist()}) does not fit "
                              f"{self.n_units} blocks")
        if in_header * self.unit >= need:  # no overflow extents needed: read them here
            data = b"".join(self.read(int(s) * self.unit, int(c) * self.unit)
                            for s, c in zip(starts, counts) if c)[:need]
        else:  # the rest is in the extents overflow file: TSK follows it
            data = self.fs.open_meta(inode=HFSPLUS_ALLOCATION_FILE_ID).read_random(0, need)
        if len(data) != need:
            raise FormatError(f"{self.name}: allocation file of {len(data)} bytes, "
                              f"{need} needed")
        flags = np.unpackbits(np.frombuffer(data, np.uint8), count=self.n_units,
                              bitorder="big").view(bool).copy()
        mine = np.zeros(self.n_units, dtype=bool)
        for start, count in zip(starts, counts):
            mine[start : start + count] = True
        if not flags[mine].all():
            raise FormatError(f"{self.name}: the allocation file does not mark its own "
                              "blocks as used")
        flags[: -(-(HFSPLUS_HEADER_AT + HFSPLUS_VOLUME_HEADER.size) // self.unit)] = True
        flags[(self.size - HFSPLUS_HEADER_AT) // self.unit :] = True  # alternate header
        return flags


def exfat_set_checksum(entries: bytes | bytearray) -> int:
    """The SetChecksum of an exFAT directory entry set (section 6.3.3): every byte but
    the field itself (bytes 2 and 3), each added to the sum rotated right by one bit."""
    total = 0
    for index, byte in enumerate(entries):
        if index not in (2, 3):
            total = ((total >> 1) | (total & 1) << 15) + byte & 0xFFFF
    return total


def exfat_set_state(entries: bytes) -> str:
    """An exFAT File entry set (``(SecondaryCount + 1) * 32`` bytes, File entry first)
    as it stands: "deleted" (every entry's in-use bit clear, as a deletion leaves it,
    the set otherwise as written: its SetChecksum holds with the bits set), "in use"
    (every bit set, the checksum holding), or "damaged" (anything else: a bit cleared
    in some entries only, or bytes the checksum refuses)."""
    head = EXFAT_FILE_ENTRY.parse(entries)
    types = entries[::EXFAT_ENTRY_SIZE]
    if len(entries) != (head.SecondaryCount + 1) * EXFAT_ENTRY_SIZE \
            or head.EntryType & ~EXFAT_IN_USE != EXFAT_FILE & ~EXFAT_IN_USE:
        return "damaged"
    in_use = {bool(t & EXFAT_IN_USE) for t in types}
    restored = bytearray(entries)
    restored[::EXFAT_ENTRY_SIZE] = bytes(t | EXFAT_IN_USE for t in types)
    if len(in_use) != 1 or exfat_set_checksum(restored) != head.SetChecksum:
        return "damaged"
    return "in use" if in_use == {True} else "deleted"

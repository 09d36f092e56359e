"""File systems beyond the teaching readers, opened by The Sleuth Kit (pytsk3).

TSK recognises the file system (NTFS, exFAT, HFS+, ISO 9660, UFS, APFS …) and
reads its files; the allocation map is the file system's own allocation bitmap,
read as a file through TSK:

- NTFS: ``$Bitmap`` (MFT record 6), one bit per cluster from LCN 0, least
  significant bit first; TSK's block is the cluster.
- exFAT: the allocation bitmap (TSK's ``$ALLOC_BITMAP`` in the root directory),
  one bit per cluster of the cluster heap; everything before the heap (boot
  region, FAT) is metadata.  TSK's block is the sector, the heap's geometry
  comes from the boot sector (exFAT specification, section 3.1).

Any other file system TSK opens is named, and copied whole (FormatError saying
so: the backup lists it as recognised but not read).  The readers are
cross-checked against ``ntfscluster`` and ``blkls`` in the tests.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.base import FileSystem
from blockforensics.fs.structure import Structure

#: the exFAT boot sector: only the heap geometry is needed here
EXFAT_BOOT_SECTOR = Structure("ExfatBootSector", 512, [
    (0x03, "8s", "FileSystemName"),
    (0x48, "Q", "VolumeLength"),
    (0x58, "I", "ClusterHeapOffset"),
    (0x5C, "I", "ClusterCount"),
    (0x6C, "B", "BytesPerSectorShift"),
    (0x6D, "B", "SectorsPerClusterShift"),
])
EXFAT_NAME = b"EXFAT   "
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

    kinds: ClassVar[tuple[str, ...]] = ("ntfs", "exfat")  # read; any other is only named

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
        else:
            raise FormatError(f"{self.name}: The Sleuth Kit opens it, but its allocation is "
                              "not read here")
        return BlockMap.from_bools(flags, self.unit)

    def _bitmap(self, fs_file: Any, bits: int) -> np.ndarray:
        """The first ``bits`` bits of a bitmap file (least significant bit first)."""
        need = -(-bits // 8)
        data = fs_file.read_random(0, need) if need else b""
        if len(data) != need:
            raise FormatError(f"{self.name}: allocation bitmap of {len(data)} bytes, "
                              f"{need} needed")
        return np.unpackbits(np.frombuffer(data, np.uint8), count=bits,
                             bitorder="little").view(bool)

    def _exfat(self) -> np.ndarray:
        boot = EXFAT_BOOT_SECTOR.parse(self.read(0, EXFAT_BOOT_SECTOR.size))
        per_cluster = 1 << boot.SectorsPerClusterShift
        heap_end = boot.ClusterHeapOffset + boot.ClusterCount * per_cluster
        if (boot.FileSystemName != EXFAT_NAME or 1 << boot.BytesPerSectorShift != self.unit
                or heap_end > self.n_units):
            raise FormatError(f"{self.name}: boot sector disagrees with The Sleuth Kit")
        root = self.fs.open_dir(inode=self.fs.info.root_inum)
        bitmap = next((f for f in root if f.info.name.name == EXFAT_BITMAP_NAME), None)
        if bitmap is None:
            raise FormatError(f"{self.name}: no allocation bitmap in the root directory")
        flags = np.zeros(self.n_units, dtype=bool)
        flags[: boot.ClusterHeapOffset] = True  # boot region, FATs
        flags[boot.ClusterHeapOffset : heap_end] = np.repeat(
            self._bitmap(bitmap, boot.ClusterCount), per_cluster)
        return flags

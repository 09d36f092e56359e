"""Readers for the on-disk structures of real volumes: MBR, GPT, LVM2, FAT12/16/32,
ext2/3/4, XFS, Btrfs.

One small module per format, each declaring its structures once
(:mod:`blockforensics.fs.structure`) and decoding tables with numpy.
:mod:`blockforensics.allocation` is the front door.
"""

from __future__ import annotations

from blockforensics.fs.base import FileSystem
from blockforensics.fs.btrfs import BtrfsFileSystem
from blockforensics.fs.ext import ExtFileSystem
from blockforensics.fs.fat import FatFileSystem
from blockforensics.fs.mbr import Partition, read_partitions
from blockforensics.fs.xfs import XfsFileSystem

__all__ = ["BtrfsFileSystem", "ExtFileSystem", "FatFileSystem", "FileSystem", "Partition",
           "XfsFileSystem", "read_partitions"]

"""What every file-system reader here provides: its extent and its allocation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk


class FileSystem(ABC):
    """A file system found at byte ``offset`` of a disk.

    ``size`` is the file system's own extent in bytes (from its superblock or
    boot sector) and ``unit`` its allocation granularity in bytes (sectors for
    FAT, blocks — or bigalloc clusters — for ext).
    """

    #: short names this reader reports ("fat12", "ext4", …)
    kinds: ClassVar[tuple[str, ...]]

    kind: str
    size: int
    unit: int

    def __init__(self, disk: Disk, offset: int = 0):
        self.disk = disk
        self.offset = offset

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from byte ``offset`` of the file system; FormatError when short."""
        data = self.disk.read(self.offset + offset, length)
        if len(data) != length:
            raise FormatError(
                f"{self.name}: truncated, {length} bytes at byte {self.offset + offset} "
                f"run past the end of the disk ({self.disk.size} bytes)")
        return data

    @property
    def name(self) -> str:
        return f"{self.kind} at byte {self.offset}"

    @property
    def n_units(self) -> int:
        """Number of allocation units (``size // unit``)."""
        return self.size // self.unit

    def check_fits(self, available: int) -> None:
        """FormatError unless the file system's ``size`` fits in ``available`` bytes."""
        if self.size > available:
            raise FormatError(f"{self.name}: truncated, declares {self.size} bytes "
                              f"but only {available} are there")

    def recovery_note(self) -> str:
        """What file listings of it show when its journal or log holds changes not yet
        in place: the state after recovery (replayed for reading) or before; "" when
        nothing waits for recovery (or the reader does not say)."""
        return ""

    @abstractmethod
    def allocation(self) -> BlockMap:
        """Allocated units: a map of ``n_units`` blocks of ``unit`` bytes."""


def units_map(starts: np.ndarray, stops: np.ndarray, n: int, unit: int) -> BlockMap:
    """A map of ``n`` units of ``unit`` bytes: those in any range ``[start, stop)``.

    Ranges (in units) are clipped to the map and may overlap or come in any
    order.  The map is set run by run in its packed bits, never one flag per
    unit: a 16 TiB volume has 2**32 blocks.
    """
    starts = np.clip(np.asarray(starts, dtype=np.int64), 0, n)
    stops = np.clip(np.asarray(stops, dtype=np.int64), starts, n)
    return BlockMap.from_run_arrays(n, starts, stops - starts, unit)


def covered(starts: np.ndarray, stops: np.ndarray, n: int) -> np.ndarray:
    """Flags for positions ``0 .. n-1`` that lie in any range ``[start, stop)``.

    Ranges may overlap and come in any order; they are merged first, so the
    work is one byte per position (no per-position counters).
    """
    starts = np.clip(np.asarray(starts, dtype=np.int64), 0, n)
    stops = np.clip(np.asarray(stops, dtype=np.int64), 0, n)
    keep = stops > starts
    if not keep.any():
        return np.zeros(n, dtype=bool)
    order = np.argsort(starts[keep], kind="stable")
    starts, stops = starts[keep][order], np.maximum.accumulate(stops[keep][order])
    begins = np.ones(starts.size, dtype=bool)
    begins[1:] = starts[1:] > stops[:-1]  # touching or overlapping ranges merge
    last_of_merged = np.r_[np.flatnonzero(begins)[1:] - 1, starts.size - 1].astype(np.int64)
    toggles = np.zeros(n + 1, dtype=np.uint8)
    toggles[starts[begins]] = 1
    toggles[stops[last_of_merged]] = 1
    return np.bitwise_xor.accumulate(toggles[:-1]).view(bool)

"""Raw disk images: the file's bytes are the disk's bytes.

The catch-all plugin (probed last).  Holes of sparse files are reported as
absent blocks, found with ``SEEK_DATA``/``SEEK_HOLE`` where the file system
supports them, so exporting a sparse raw image to a dynamic VHD stays small.  Found
and copied without numpy (:meth:`RawDisk.present_runs`, :meth:`RawDisk.write_to`): an
export of a raw file does not pay for its import.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, ClassVar

from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk, Format, InPlaceDisk

if TYPE_CHECKING:
    import numpy as np

    from blockforensics.blockmap import BlockMap
    from blockforensics.crypto import KeySource
    from blockforensics.formats.placement import PlacedWriter


class RawDisk(InPlaceDisk):
    """A raw file (or block device) read with ``os.pread``."""

    def __init__(self, path: str | os.PathLike[str], block_size: int = 4096):
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot open ({exc.strerror})") from exc
        self.size = os.lseek(self._fd, 0, os.SEEK_END)
        self.block_size = block_size

    def read_blocks_into(self, start: int, out: np.ndarray) -> None:
        flat = out.reshape(-1)
        got = os.preadv(self._fd, [flat.data], start * self.block_size) if len(flat) else 0
        flat[got:] = 0  # past the end of the file

    def fileno(self) -> int:
        """The open file descriptor (what a byte plan reads from)."""
        return self._fd

    def write_to(self, out: PlacedWriter) -> None:
        """Have the data extents copied file to file (see :meth:`Disk.write_to`)."""
        bs = self.block_size
        runs = self.present_runs()
        starts = [first * bs for first, _ in runs]
        out.copy(self._fd, starts, starts, [count * bs for _, count in runs])

    def present_runs(self) -> list[tuple[int, int]]:
        """Runs of blocks overlapping data extents of the file (holes excluded)."""
        runs: list[tuple[int, int]] = []
        offset = 0
        try:
            while offset < self.size:
                data = os.lseek(self._fd, offset, os.SEEK_DATA)
                hole = os.lseek(self._fd, data, os.SEEK_HOLE)
                first = data // self.block_size
                runs.append((first, -(-hole // self.block_size) - first))
                offset = hole
        except OSError as exc:  # ENXIO: no data past offset (none at all: a file of holes)
            if exc.errno != errno.ENXIO and not runs:  # no SEEK_DATA support
                return [(0, self.n_blocks)] if self.n_blocks else []
        return runs

    def present(self) -> BlockMap:
        """Blocks overlapping data extents of the file (holes excluded)."""
        from blockforensics.blockmap import BlockMap

        return BlockMap.from_runs(self.n_blocks, self.present_runs(), self.block_size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RawFormat(Format):
    """Any regular file or block device, byte for byte."""

    name: ClassVar[str] = "raw"
    priority: ClassVar[int] = 1000

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return os.path.isfile(path) or (os.path.exists(path) and not os.path.isdir(path))

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        if point not in (None, 0, "0"):
            raise UsageError(f"{path}: a raw image has a single point (0)")
        return RawDisk(path)

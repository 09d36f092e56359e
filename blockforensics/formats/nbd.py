"""NBD exports as disks: ``nbd+unix:///EXPORT?socket=PATH`` and ``nbd://HOST[:PORT]/EXPORT``.

A running QEMU, qemu-storage-daemon, qemu-nbd or ``blockforensics serve`` is read
like a file: blocks through NBD_CMD_READ, the blocks that may hold data from the
``base:allocation`` context (neither a hole nor reading as zeros), and a QEMU dirty
bitmap as a :class:`BlockMap` (:meth:`NbdDisk.dirty_map`) for incremental backups of
exactly the changed blocks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk, Format, InPlaceDisk
from blockforensics.formats.signature import is_nbd_uri
from blockforensics.nbd import protocol as p
from blockforensics.nbd.client import SCHEMES, NbdAddress, NbdConnection

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource


class NbdDisk(InPlaceDisk):
    """One NBD export, read over one connection."""

    def __init__(self, address: NbdAddress | str, block_size: int = 4096):
        self.address = NbdAddress.parse(address) if isinstance(address, str) else address
        self.path = self.address.uri()
        self._conn = NbdConnection.open(self.address, contexts=(p.BASE_ALLOCATION,),
                                        required=False)
        self.size = self._conn.size
        self.block_size = block_size

    def read_blocks_into(self, start: int, out: np.ndarray) -> None:
        flat = out.reshape(-1)
        offset = start * self.block_size
        inside = max(0, min(len(flat), self.size - offset))
        if inside:
            self._conn.read_into(offset, flat[:inside].data)
        flat[inside:] = 0

    def _read_run_into(self, start: int, out: np.ndarray) -> None:
        self.read_blocks_into(start, out)   # read_at: straight into its array

    def present(self) -> BlockMap:
        """Blocks touched by an extent that may hold data (not NBD_STATE_ZERO); every
        block when the server has no ``base:allocation``."""
        if p.BASE_ALLOCATION not in self._conn.contexts:
            return super().present()
        return self._conn.status_map(p.BASE_ALLOCATION, p.NBD_STATE_ZERO, self.block_size,
                                     when_set=False)

    def dirty_map(self, bitmap: str, block_size: int | None = None) -> BlockMap:
        """The blocks QEMU's dirty bitmap ``bitmap`` marks, at ``block_size`` (default the
        disk's); the export must carry the bitmap (``block-export-add ... bitmaps``)."""
        with NbdConnection.open(self.address,
                                contexts=(p.QEMU_DIRTY_BITMAP + bitmap,)) as conn:
            return conn.dirty_map(bitmap, block_size or self.block_size)

    def close(self) -> None:
        self._conn.close()


class NbdFormat(Format):
    """A disk exported over NBD, named by its URI."""

    name: ClassVar[str] = "nbd"
    priority: ClassVar[int] = 15
    schemes = SCHEMES

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return is_nbd_uri(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        if point not in (None, 0, "0"):
            raise UsageError(f"{path}: an NBD export has a single point (0)")
        return NbdDisk(os.fspath(path))

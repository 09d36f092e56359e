"""The core's disk interface: a read-only byte range read in blocks.

A :class:`Disk` is ``size`` bytes read in blocks of ``block_size`` bytes, with a
map of the blocks that hold data (``present``) so that writers of sparse formats
can skip the rest.  Volumes, snapshots, chain points and every reader plugin
(``blockforensics.formats``) implement it; everything downstream — backup, VHD
export, the FUSE-exposed disk file, forensic file access — reads through it.
The plugins import this module; it imports no plugin.  numpy is imported by the
methods that use it, not here: a raw file is exported without it (see
:meth:`Disk.present_runs` and :class:`~blockforensics.formats.placement.PlacedWriter`).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

    from blockforensics.blockmap import BlockMap
    from blockforensics.formats.placement import PlacedWriter


def nonzero_rows(blocks: np.ndarray) -> np.ndarray:
    """A bool per block: does it hold any non-zero byte?

    Most data blocks are non-zero in their first 64 bytes, so those are looked at
    first and only the rest are scanned whole (3-4x faster than one full scan).
    """
    import numpy as np

    words = blocks.view(np.uint64) if blocks.shape[1] % 8 == 0 else blocks
    head = min(words.shape[1], 64 // words.itemsize)
    nonzero = np.asarray(words[:, :head].any(axis=1))
    rest = np.flatnonzero(~nonzero)
    if len(rest):
        nonzero[rest] = words[rest, head:].any(axis=1)
    return nonzero


class Disk(ABC):
    """A read-only disk: ``size`` bytes, read in blocks of ``block_size`` bytes."""

    size: int
    block_size: int
    #: whether :meth:`write_to` hands its bytes over in ascending disk order
    in_order: ClassVar[bool] = True
    #: reads may run in several threads at once (else the NBD server takes turns)
    thread_safe: ClassVar[bool] = False
    #: what the reader has to say of the source that its bytes do not show (e.g. states
    #: of it that are not read); ``backup`` prints them
    notes: tuple[str, ...] = ()

    @property
    def n_blocks(self) -> int:
        """Number of blocks; the last one is partial when size is not a multiple."""
        return -(-self.size // self.block_size)

    @abstractmethod
    def read_blocks(self, start: int, count: int) -> np.ndarray:
        """Blocks ``start .. start+count-1`` as a ``(count, block_size)`` uint8 array.

        Bytes past ``size`` (in the last, partial block) read as zeros.
        """

    def read_at(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The blocks at sorted, unique ``positions`` as ``(len(positions), block_size)``
        (in ``out`` when given: a buffer reused from batch to batch); one ``read_blocks``
        per run of consecutive positions."""
        import numpy as np

        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = np.empty((positions.size, self.block_size), dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, positions.size]):
            if b > a:
                self._read_run_into(int(positions[a]), out[a:b])
        return out

    def _read_run_into(self, start: int, out: np.ndarray) -> None:
        """Blocks ``start ..`` into the rows of ``out`` (:meth:`read_at`'s one run)."""
        out[:] = self.read_blocks(start, len(out))

    def present(self) -> BlockMap:
        """Blocks that may hold non-zero data; the others read as zeros.

        The default says every block; sparse formats narrow it.
        """
        from blockforensics.blockmap import BlockMap

        return BlockMap.full(self.n_blocks, self.block_size)

    def present_runs(self) -> list[tuple[int, int]]:
        """``(first block, blocks)`` of the runs of :meth:`present`, ascending: what
        writers walk.  A reader that finds its runs without a map (a raw file's data
        extents) overrides this and makes :meth:`present` from it."""
        starts, lengths = self.present().run_arrays()
        return list(zip(starts.tolist(), lengths.tolist()))

    def write_to(self, out: PlacedWriter) -> None:
        """Hand the disk's present blocks to ``out``, which writes them where its
        placement says (unwritten bytes of its new file read as zeros).

        This default reads chunks of ``COPY_BUFFER`` bytes; readers that know where
        their bytes lie in files override it to have them copied file to file.
        """
        import numpy as np

        from blockforensics.formats.placement import COPY_BUFFER  # the shared copy size

        bs = self.block_size
        step = max(1, COPY_BUFFER // bs)
        for start, length in self.present_runs():
            for first in range(start, start + length, step):
                count = min(step, start + length - first)
                blocks = self.read_blocks(first, count).data.cast("B")
                out.put(blocks, np.array([first * bs]), np.zeros(1, np.int64),
                            np.array([count * bs]))

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from byte ``offset`` (short at the end of the disk)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        first = offset // self.block_size
        last = (end - 1) // self.block_size
        blocks = self.read_blocks(first, last - first + 1).reshape(-1)
        skip = offset - first * self.block_size
        return blocks[skip : skip + end - offset].tobytes()

    def patched(self, offset: int, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """The blocks a byte-level write of ``data`` at ``offset`` would leave:
        ``(positions, blocks)``, for read-modify-write by writable disks."""
        import numpy as np

        if offset < 0 or offset + len(data) > self.size:
            raise IndexError(f"bytes [{offset}, {offset + len(data)}) outside the disk")
        if not data:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.block_size), dtype=np.uint8)
        first, last = offset // self.block_size, (offset + len(data) - 1) // self.block_size
        blocks = self.read_blocks(first, last - first + 1)
        skip = offset - first * self.block_size
        blocks.reshape(-1)[skip : skip + len(data)] = np.frombuffer(data, dtype=np.uint8)
        return np.arange(first, last + 1), blocks

    def open_file(self) -> DiskFile:
        """A read-only file object (read/seek/tell) over the disk's bytes."""
        return DiskFile(self)

    def __repr__(self) -> str:
        where = f" {self.path}" if hasattr(self, "path") else ""
        return (f"{type(self).__name__}({self.size} B = {self.n_blocks} blocks × "
                f"{self.block_size} B{where})")

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release files the disk holds open."""

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InPlaceDisk(Disk):
    """A Disk that reads straight into the caller's array (no temporary, no copy):
    exports and restores fill their output buffers through :meth:`read_blocks_into`."""

    @abstractmethod
    def read_blocks_into(self, start: int, out: np.ndarray) -> None:
        """Fill the C-contiguous ``(count, block_size)`` uint8 array ``out`` with blocks
        ``start .. start+count-1``; bytes past ``size`` read as zeros."""

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        import numpy as np

        out = np.empty((count, self.block_size), dtype=np.uint8)
        self.read_blocks_into(start, out)
        return out

    def _read_run_into(self, start: int, out: np.ndarray) -> None:
        if type(self).read_blocks is InPlaceDisk.read_blocks:  # straight into the rows
            self.read_blocks_into(start, out)
        else:  # a subclass that reads its own way (a plugin's RawDisk with a header)
            super()._read_run_into(start, out)


class DiskFile(io.RawIOBase):
    """A seekable, read-only file object over a :class:`Disk`.

    Forensic libraries that take a Python file (pytsk3 through an Img_Info
    adapter, dissect) read a chain point through this without a restore.
    """

    def __init__(self, disk: Disk):
        super().__init__()
        self.disk = disk
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.disk.size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.disk.read(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.disk.size - self._pos)
        data = self.disk.read(self._pos, size)
        self._pos += len(data)
        return data


class MappedDisk(Disk):
    """A volume laid out piece by piece on another disk (an LVM2 logical volume).

    ``pieces`` are ``(volume byte, base byte, bytes)``, in volume order and tiling
    the volume from byte 0; ``size`` is their total.  Reads go to ``base``;
    :meth:`to_base` turns the volume's byte ranges into the base disk's.
    """

    def __init__(self, base: Disk, pieces: tuple[tuple[int, int, int], ...] | list[
            tuple[int, int, int]]):
        import numpy as np

        self.base = base
        self.pieces = tuple((int(v), int(b), int(n)) for v, b, n in pieces)
        reached = 0
        for volume_byte, base_byte, length in self.pieces:
            if volume_byte != reached or length <= 0 or base_byte < 0:
                raise ValueError(f"pieces must tile the volume from byte 0: {self.pieces}")
            reached += length
        self.size = reached
        self._starts = np.array([p[0] for p in self.pieces], dtype=np.int64)
        self._bases = np.array([p[1] for p in self.pieces], dtype=np.int64)
        aligned = all(v % 4096 == 0 and b % 4096 == 0 and n % 4096 == 0
                      for v, b, n in self.pieces)
        self.block_size = 4096 if aligned else 512

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        import numpy as np

        bs = self.block_size
        out = np.zeros((count, bs), dtype=np.uint8)
        flat = out.reshape(-1)
        lo, hi = start * bs, min((start + count) * bs, self.size)
        for a, b in self.to_base(np.array([lo]), np.array([hi])).tolist():
            data = self.base.read(a, b - a)
            flat[lo - start * bs : lo - start * bs + len(data)] = np.frombuffer(data, np.uint8)
            lo += b - a
        return out

    def to_base(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """Volume byte ranges ``[start, stop)`` (clipped to the volume) as ``(k, 2)``
        base-disk byte ranges, in the same order, split where a piece ends."""
        import numpy as np

        rows: list[tuple[int, int]] = []
        for start, stop in zip(np.asarray(starts).tolist(), np.asarray(stops).tolist()):
            start, stop = max(start, 0), min(stop, self.size)
            at = int(np.searchsorted(self._starts, start, side="right")) - 1
            while start < stop:
                volume_byte, base_byte, length = self.pieces[at]
                end = min(stop, volume_byte + length)
                rows.append((base_byte + start - volume_byte, base_byte + end - volume_byte))
                start, at = end, at + 1
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def close(self) -> None:
        """The base disk belongs to the caller."""

"""Volume: a disk as a numpy array of blocks, in memory or over a raw file.

A Volume is ``size`` bytes seen as ``n_blocks`` blocks of ``block_size`` bytes;
when ``size`` is not a multiple of ``block_size`` the last block is partial:
it reads zero-padded and writes past ``size`` are dropped, so the exact size
survives every step (backup, restore, export).

Every write goes through :meth:`Volume.write_blocks`, which first tells the
registered write hooks which positions are about to change.  Change trackers
(CBT) and copy-on-write snapshots are such hooks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from blockforensics.disk import Disk
from blockforensics.errors import UsageError

#: called with the sorted, unique block positions about to be written, before the write
WriteHook = Callable[["Volume", np.ndarray], None]


def check_block_size(block_size: int) -> int:
    """``block_size`` if it is a power of two of at least 512 bytes; UsageError otherwise."""
    if block_size < 512 or block_size & (block_size - 1) or block_size > 1 << 24:
        raise UsageError(
            f"block size must be a power of two between 512 and 16 MiB, got {block_size}")
    return block_size


#: bytes of memory per disk block that a backup's maps take while they are built, at most:
#: per-block flags (numpy bools, a byte each) of the source's allocation, the survey's,
#: those combined, and the packed maps made of them
MAP_BYTES_PER_BLOCK = 4


def check_disk_size(source: Disk, block_size: int) -> None:
    """UsageError when ``source`` cannot be backed up in blocks of ``block_size`` bytes:
    larger than a chain holds (``MAX_VOLUME_SIZE``), or of so many blocks that their
    maps would not fit in this machine's memory — the backup's blocks, and the source's
    own (its reader maps what it holds in its ``block_size``).  When a larger
    ``--block-size`` would do, the error names the smallest that does."""
    from blockforensics.image.format import MAX_VOLUME_SIZE

    size = source.size
    if size > MAX_VOLUME_SIZE:
        raise UsageError(f"the source's {size} bytes exceed the {MAX_VOLUME_SIZE} bytes "
                         "(1 PiB) a chain holds")
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    def fits(unit: int) -> bool:
        return -(-size // min(unit, source.block_size)) * MAP_BYTES_PER_BLOCK <= memory

    if fits(block_size):
        return
    larger = block_size
    while larger < min(source.block_size, 1 << 24) and not fits(larger):
        larger *= 2
    if fits(larger):
        raise UsageError(f"the source's {size} bytes in blocks of {block_size} bytes need "
                         f"maps larger than this machine's {memory >> 20} MiB of memory: back "
                         f"it up with --block-size {larger} or larger")
    raise UsageError(f"the source's {size} bytes are too many for this machine's "
                     f"{memory >> 20} MiB of memory: its reader maps them in "
                     f"{-(-size // source.block_size)} blocks of {source.block_size} bytes, "
                     f"{MAP_BYTES_PER_BLOCK} bytes of maps each")


class Volume(Disk):
    """``size`` bytes addressed in blocks of ``block_size`` bytes; writable, observable."""

    def __init__(self, buffer: np.ndarray, size: int, block_size: int = 4096,
                 path: Path | None = None):
        check_block_size(block_size)
        if buffer.dtype != np.uint8 or buffer.ndim != 1 or buffer.size < size:
            raise ValueError("buffer must be a 1-D uint8 array of at least size bytes")
        self._buf = buffer
        self.size = int(size)
        self.block_size = int(block_size)
        self.path = path
        self._hooks: list[WriteHook] = []

    # ------------------------------------------------------------ construction
    @classmethod
    def zeros(cls, size: int, block_size: int = 4096) -> Volume:
        """An in-memory volume of ``size`` bytes, all zero."""
        n_blocks = -(-size // block_size)
        return cls(np.zeros(n_blocks * block_size, dtype=np.uint8), size, block_size)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | np.ndarray, block_size: int = 4096) -> Volume:
        """An in-memory volume holding a copy of ``data``."""
        arr = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else data.astype(np.uint8, copy=False).ravel()
        vol = cls.zeros(arr.size, block_size)
        vol._buf[: arr.size] = arr
        return vol

    @classmethod
    def open(cls, path: str | os.PathLike[str], block_size: int = 4096,
             writable: bool = False) -> Volume:
        """A volume over a raw file via ``np.memmap``: nothing is loaded up front."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size == 0:
            return cls(np.zeros(0, dtype=np.uint8), 0, block_size, path)
        buf = np.memmap(path, dtype=np.uint8, mode="r+" if writable else "r", shape=(size,))
        return cls(buf, size, block_size, path)

    # --------------------------------------------------------------- reading
    @property
    def blocks(self) -> np.ndarray:
        """The whole blocks as a ``(k, block_size)`` view (a partial last block is left out
        of file-backed volumes; in-memory volumes are padded, so all blocks are there)."""
        whole = self._buf.size // self.block_size
        return self._buf[: whole * self.block_size].reshape(whole, self.block_size)

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        """A copy of blocks ``start .. start+count-1``; bytes past ``size`` are zero."""
        if start < 0 or count < 0 or start + count > self.n_blocks:
            raise IndexError(f"blocks [{start}, {start + count}) outside [0, {self.n_blocks})")
        lo, hi = start * self.block_size, (start + count) * self.block_size
        if hi <= self._buf.size and hi <= self.size:
            return np.array(self._buf[lo:hi]).reshape(count, self.block_size)
        out = np.zeros((count, self.block_size), dtype=np.uint8)
        end = min(hi, self.size)
        out.reshape(-1)[: end - lo] = self._buf[lo:end]
        return out

    def read_block(self, position: int) -> np.ndarray:
        """One block (zero-padded if it is the partial last block)."""
        return self.read_blocks(position, 1)[0]

    def tobytes(self) -> bytes:
        """The volume's exact bytes (``size`` of them)."""
        return self._buf[: self.size].tobytes()

    def copy(self) -> Volume:
        """An in-memory copy (hooks are not copied)."""
        return Volume.from_bytes(self._buf[: self.size], self.block_size)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the exact bytes to a raw file (temporary name, fsync, rename)."""
        from blockforensics.fileio import atomic_writer

        with atomic_writer(path) as fh:
            fh.write(self._buf[: self.size].data)
        return Path(path)

    # --------------------------------------------------------------- writing
    def add_hook(self, hook: WriteHook) -> None:
        """Call ``hook(volume, positions)`` before every write."""
        self._hooks.append(hook)

    def remove_hook(self, hook: WriteHook) -> None:
        self._hooks.remove(hook)

    def write_blocks(self, start: int, data: np.ndarray | bytes) -> None:
        """Overwrite whole blocks from ``start``; ``data`` is ``k * block_size`` bytes."""
        arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) \
            else np.asarray(data, dtype=np.uint8).ravel()
        if arr.size % self.block_size:
            raise ValueError(f"data must be whole blocks of {self.block_size} bytes")
        count = arr.size // self.block_size
        self.write_at(np.arange(start, start + count), arr.reshape(count, self.block_size))

    def write_at(self, positions: np.ndarray, blocks: np.ndarray) -> None:
        """Write ``blocks[i]`` at block ``positions[i]`` (hooks see them first)."""
        positions = np.asarray(positions, dtype=np.int64).ravel()
        blocks = np.asarray(blocks, dtype=np.uint8).reshape(positions.size, self.block_size)
        if positions.size == 0:
            return
        if positions.min() < 0 or positions.max() >= self.n_blocks:
            raise IndexError(f"block positions outside [0, {self.n_blocks})")
        for hook in self._hooks:
            hook(self, np.unique(positions))
        bs = self.block_size
        whole_count = self._buf.size // bs  # blocks wholly inside the buffer
        inside = positions < whole_count
        self._buf[: whole_count * bs].reshape(whole_count, bs)[positions[inside]] = blocks[inside]
        for position, block in zip(positions[~inside], blocks[~inside]):  # the partial last block
            length = self.size - position * bs
            self._buf[position * bs : position * bs + length] = block[:length]

    def write(self, offset: int, data: bytes) -> None:
        """Write bytes at a byte offset (read-modify-write of the blocks it touches)."""
        self.write_at(*self.patched(offset, data))

    def flush(self) -> None:
        """Push a file-backed volume's writes to the file."""
        if isinstance(self._buf, np.memmap):
            self._buf.flush()

    def __repr__(self) -> str:
        where = f" over {self.path}" if self.path else " in memory"
        return (f"Volume({self.size} B = {self.n_blocks} blocks × {self.block_size} B{where}, "
                f"{len(self._hooks)} hooks)")

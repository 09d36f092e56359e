"""BlockMap: a set of block positions stored as a packed bitmap.

A BlockMap answers "which blocks?" — changed since the last backup, allocated
by the file system, written into a snapshot by quiescence, stored in an image.
Bit *i* (little-endian bit order inside each byte) is set when block *i* is in
the set.  Set algebra works on the packed bytes, so a map of 2^28 blocks is
32 MiB and ``a & b`` takes milliseconds.

Units: positions and counts are in blocks; ``block_size`` is in bytes and is
only used to report byte offsets (``runs()``) and to convert between maps of
different granularity (``rescale``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

_BIT_ORDER: Final = "little"
_MAGIC = "blockforensics-blockmap-v1"


#: 64-bit words of a map scanned at once for run edges (8 MiB)
_RUN_WORDS = 1 << 20


def _packed_len(n_blocks: int) -> int:
    return (n_blocks + 7) // 8


def _words(bits: np.ndarray) -> np.ndarray:
    """A packed map as little-endian 64-bit words (bit *i* is bit ``i % 64`` of word
    ``i // 64``, padded with clear bits); numpy scans words several times faster than
    bytes."""
    if len(bits) % 8 == 0:
        return bits.view("<u8")
    padded = np.zeros(-(-len(bits) // 8) * 8, dtype=np.uint8)
    padded[: len(bits)] = bits
    return padded.view("<u8")


def _bit_positions(words: np.ndarray) -> np.ndarray:
    """Sorted positions (int64) of the set bits of 64-bit words, unpacking only the
    words that are not zero."""
    nonzero = np.flatnonzero(words)
    flags = np.unpackbits(words[nonzero].view(np.uint8), bitorder=_BIT_ORDER).reshape(-1, 64)
    row, bit = np.nonzero(flags)
    return (nonzero[row] << 6) + bit


class BlockMap:
    """A set of block positions in ``range(n_blocks)``, as a packed bitmap."""

    __slots__ = ("_bits", "block_size", "n_blocks")

    def __init__(self, n_blocks: int, block_size: int = 4096, bits: np.ndarray | None = None):
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        self.n_blocks = int(n_blocks)
        self.block_size = int(block_size)
        if bits is None:
            bits = np.zeros(_packed_len(n_blocks), dtype=np.uint8)
        elif bits.dtype != np.uint8 or bits.shape != (_packed_len(n_blocks),):
            raise ValueError("bits must be a uint8 array of ceil(n_blocks / 8) bytes")
        self._bits = bits
        self._clear_tail()

    # ----------------------------------------------------------------- construction
    @classmethod
    def empty(cls, n_blocks: int, block_size: int = 4096) -> BlockMap:
        """No block set."""
        return cls(n_blocks, block_size)

    @classmethod
    def full(cls, n_blocks: int, block_size: int = 4096) -> BlockMap:
        """Every block set."""
        return cls(n_blocks, block_size, np.full(_packed_len(n_blocks), 0xFF, dtype=np.uint8))

    @classmethod
    def from_bools(cls, flags: np.ndarray, block_size: int = 4096) -> BlockMap:
        """From a boolean array with one element per block."""
        flags = np.asarray(flags, dtype=bool).ravel()
        return cls(flags.size, block_size, np.packbits(flags, bitorder=_BIT_ORDER))

    @classmethod
    def from_positions(
        cls, n_blocks: int, positions: Iterable[int] | np.ndarray, block_size: int = 4096
    ) -> BlockMap:
        """From block positions (duplicates allowed, order irrelevant)."""
        bmap = cls(n_blocks, block_size)
        bmap.add(positions)
        return bmap

    @classmethod
    def from_runs(
        cls, n_blocks: int, runs: Iterable[tuple[int, int]], block_size: int = 4096
    ) -> BlockMap:
        """From ``(start, length)`` pairs in blocks."""
        pairs = np.array(list(runs), dtype=np.int64).reshape(-1, 2)
        return cls.from_run_arrays(n_blocks, pairs[:, 0], pairs[:, 1], block_size)

    @classmethod
    def from_run_arrays(cls, n_blocks: int, starts: np.ndarray, lengths: np.ndarray,
                        block_size: int = 4096) -> BlockMap:
        """From runs given as arrays of starts and lengths (blocks), set byte by byte in
        the packed map: the cost follows the number of runs and bytes, not of blocks."""
        starts = np.asarray(starts, dtype=np.int64)
        stops = starts + np.asarray(lengths, dtype=np.int64)
        if len(starts) and (starts.min() < 0 or (stops < starts).any() or stops.max() > n_blocks):
            raise IndexError(f"runs must lie in [0, {n_blocks})")
        bmap = cls(n_blocks, block_size)
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        first, last = starts >> 3, (stops - 1) >> 3  # bytes holding each run's ends
        head = np.left_shift(0xFF, starts & 7) & 0xFF
        tail = np.right_shift(0xFF, 7 - ((stops - 1) & 7))
        one = first == last
        bits = bmap._bits
        np.bitwise_or.at(bits, first, np.where(one, head & tail, head).astype(np.uint8))
        np.bitwise_or.at(bits, last[~one], tail[~one].astype(np.uint8))
        inner = first + 1 < last
        for lo, hi in zip((first[inner] + 1).tolist(), last[inner].tolist()):
            bits[lo:hi] = 0xFF
        return bmap

    @classmethod
    def from_byte_ranges(cls, size: int, offsets: np.ndarray, lengths: np.ndarray,
                         block_size: int = 4096) -> BlockMap:
        """The blocks of a ``size``-byte volume touched by any byte range
        ``[offset, offset + length)`` (empty ranges touch nothing)."""
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        keep = lengths > 0
        n_blocks = -(-size // block_size)
        first = offsets[keep] // block_size
        last = np.minimum(-(-(offsets[keep] + lengths[keep]) // block_size), n_blocks)
        return cls.from_run_arrays(n_blocks, first, last - first, block_size)

    # ------------------------------------------------------------------- basics
    @property
    def packed(self) -> np.ndarray:
        """The packed bitmap (read-only view)."""
        view = self._bits.view()
        view.flags.writeable = False
        return view

    def to_bools(self) -> np.ndarray:
        """A boolean array with one element per block."""
        return np.unpackbits(self._bits, count=self.n_blocks, bitorder=_BIT_ORDER).view(bool)

    def count(self) -> int:
        """Number of blocks in the set."""
        return int(np.bitwise_count(_words(self._bits)).sum(dtype=np.int64))

    def positions(self) -> np.ndarray:
        """Sorted block positions in the set (int64); only non-zero bytes are unpacked."""
        return _bit_positions(_words(self._bits))

    def copy(self) -> BlockMap:
        return BlockMap(self.n_blocks, self.block_size, self._bits.copy())

    def __len__(self) -> int:
        return self.n_blocks

    def __bool__(self) -> bool:
        return bool(self._bits.any())

    def __contains__(self, position: int) -> bool:
        if not 0 <= position < self.n_blocks:
            return False
        return bool(self._bits[position >> 3] >> (position & 7) & 1)

    def contains(self, positions: np.ndarray) -> np.ndarray:
        """Vectorised membership: a bool per position (positions must lie in range)."""
        positions = np.asarray(positions, dtype=np.int64)
        return ((self._bits[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1).astype(bool)

    # ---------------------------------------------------------------- mutation
    def add(self, positions: int | Iterable[int] | np.ndarray) -> None:
        """Set the given block positions (in place)."""
        self._update(positions, True)

    def discard(self, positions: int | Iterable[int] | np.ndarray) -> None:
        """Clear the given block positions (in place)."""
        self._update(positions, False)

    def add_range(self, start: int, stop: int) -> None:
        """Set positions ``start <= p < stop`` (in place); cheap for long ranges."""
        start, stop = max(0, start), min(self.n_blocks, stop)
        if start >= stop:
            return
        first_full, last_full = -(-start // 8), stop // 8
        if first_full < last_full:
            self._bits[first_full:last_full] = 0xFF
            self._update(np.r_[start:first_full * 8, last_full * 8:stop], True)
        else:
            self._update(np.arange(start, stop), True)

    def assign(self, start: int, flags: np.ndarray) -> None:
        """Make positions ``start .. start+len(flags)-1`` hold ``flags`` (bools), in place,
        packed a byte at a time: ``start`` must be a multiple of 8 and the window must
        end at a multiple of 8 or at ``n_blocks``."""
        stop = start + len(flags)
        if start % 8 or not (stop % 8 == 0 or stop == self.n_blocks) or stop > self.n_blocks:
            raise ValueError(f"window [{start}, {stop}) is not byte-aligned in the map")
        self._bits[start // 8 : -(-stop // 8)] = np.packbits(flags, bitorder=_BIT_ORDER)

    def clear(self) -> None:
        """Remove every position (in place)."""
        self._bits[:] = 0

    def _update(self, positions: int | Iterable[int] | np.ndarray, value: bool) -> None:
        pos = np.atleast_1d(np.asarray(
            positions if isinstance(positions, (int, np.integer, np.ndarray)) else list(positions),
            dtype=np.int64))
        if pos.size == 0:
            return
        if pos.min() < 0 or pos.max() >= self.n_blocks:
            raise IndexError(f"positions must lie in [0, {self.n_blocks})")
        masks = (np.uint8(1) << (pos & 7).astype(np.uint8)).astype(np.uint8)
        if value:
            np.bitwise_or.at(self._bits, pos >> 3, masks)
        else:
            np.bitwise_and.at(self._bits, pos >> 3, ~masks)

    def _clear_tail(self) -> None:
        spare = self._bits.size * 8 - self.n_blocks
        if spare:
            self._bits[-1] &= np.uint8(0xFF >> spare)

    # ------------------------------------------------------------- set algebra
    def _check(self, other: object) -> BlockMap:
        if not isinstance(other, BlockMap):
            return NotImplemented
        if other.n_blocks != self.n_blocks:
            raise ValueError(
                f"BlockMaps differ in size: {self.n_blocks} vs {other.n_blocks} blocks")
        return other

    def __and__(self, other: BlockMap) -> BlockMap:
        o = self._check(other)
        return BlockMap(self.n_blocks, self.block_size, self._bits & o._bits)

    def __or__(self, other: BlockMap) -> BlockMap:
        o = self._check(other)
        return BlockMap(self.n_blocks, self.block_size, self._bits | o._bits)

    def __xor__(self, other: BlockMap) -> BlockMap:
        o = self._check(other)
        return BlockMap(self.n_blocks, self.block_size, self._bits ^ o._bits)

    def __sub__(self, other: BlockMap) -> BlockMap:
        o = self._check(other)
        return BlockMap(self.n_blocks, self.block_size, self._bits & ~o._bits)

    def __invert__(self) -> BlockMap:
        return BlockMap(self.n_blocks, self.block_size, ~self._bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockMap):
            return NotImplemented
        return self.n_blocks == other.n_blocks and np.array_equal(self._bits, other._bits)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def issubset(self, other: BlockMap) -> bool:
        """True when every position of self is in ``other``."""
        o = self._check(other)
        return not (self._bits & ~o._bits).any()

    # ------------------------------------------------------------------- runs
    def run_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Maximal runs of consecutive set positions as ``(starts, lengths)`` in blocks.

        Worked on the packed bytes: bit *i* of ``w ^ (w << 1)`` is set where a run starts
        or stops, so only the bytes holding a run's edge are unpacked."""
        words = _words(self._bits)
        pieces, carry = [], np.uint64(0)
        for first in range(0, len(words), _RUN_WORDS):  # bounded temporaries
            chunk = words[first : first + _RUN_WORDS]
            edges = chunk << np.uint64(1)
            edges[0] |= carry
            edges[1:] |= chunk[:-1] >> np.uint64(63)
            edges ^= chunk
            carry = chunk[-1] >> np.uint64(63)
            pieces.append(_bit_positions(edges) + (first << 6))
        found = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        if len(found) % 2:  # the last run reaches the end of the map
            found = np.r_[found, self.n_blocks]
        return found[0::2], found[1::2] - found[0::2]

    def runs(self) -> pd.DataFrame:
        """Runs (extents) as a DataFrame: start, length (blocks), start_byte, length_bytes."""
        import pandas as pd

        starts, lengths = self.run_arrays()
        return pd.DataFrame({
            "start": starts,
            "length": lengths,
            "start_byte": starts * self.block_size,
            "length_bytes": lengths * self.block_size,
        })

    # ------------------------------------------------------------ conversion
    def rescale(self, block_size: int) -> BlockMap:
        """The same byte ranges at another block size.

        Going to larger blocks, a block is set when any byte of it was covered
        (the conservative choice for "must be copied"); going to smaller ones,
        each block expands to all the blocks it covers.
        """
        if block_size == self.block_size:
            return self.copy()
        starts, lengths = self.run_arrays()
        return BlockMap.from_byte_ranges(self.n_blocks * self.block_size,
                                         starts * self.block_size, lengths * self.block_size,
                                         block_size)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the map to ``path`` (an ``.npz``: packed bits, n_blocks, block_size)."""
        path = Path(path)
        with path.open("wb") as fh:
            np.savez_compressed(fh, magic=np.array(_MAGIC), bits=self._bits,
                                n_blocks=np.int64(self.n_blocks),
                                block_size=np.int64(self.block_size))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BlockMap:
        """Read a map written by :meth:`save`; ValueError if the file is not one."""
        if not Path(path).is_file():  # np.load opens a FIFO, and waits for a writer
            raise ValueError(f"{path}: not a saved BlockMap (not a regular file)")
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                if str(data["magic"]) != _MAGIC:
                    raise ValueError
                return cls(int(data["n_blocks"]), int(data["block_size"]),
                           data["bits"].astype(np.uint8))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: not a saved BlockMap") from exc

    # ------------------------------------------------------------ presentation
    def __repr__(self) -> str:
        starts, lengths = self.run_arrays()
        shown = ", ".join(
            f"{s}" if n == 1 else f"{s}-{s + n - 1}" for s, n in zip(starts[:6], lengths[:6]))
        more = f", … {starts.size - 6} more runs" if starts.size > 6 else ""
        return (f"BlockMap({self.count()} of {self.n_blocks} blocks × {self.block_size} B"
                f"{'; ' + shown + more if starts.size else ''})")

    def plot(self, ax: Axes | None = None, **kwargs: object) -> Axes:
        """Draw the map as a grid of blocks (``layout='strip'``: runs on a line); returns
        the Axes (see :func:`blockforensics.plot.plot_blockmap`)."""
        from blockforensics.plot import plot_blockmap

        options: dict[str, object] = {"layout": "auto"} | kwargs
        return plot_blockmap(self, ax=ax, **options)  # type: ignore[arg-type]

    def _repr_png_(self) -> bytes:
        """Jupyter shows a map as its picture, titled with its counts."""
        from blockforensics.plot import blockmap_png

        return blockmap_png(self)

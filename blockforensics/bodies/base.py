"""What every body check shares: the result of a check (:data:`Found`: where the body breaks
and what its format requires there) and decompression fed a bounded piece at a time,
which says where a stream stops decoding (PNG's and PDF's Flate data, zip members, TIFF
strips, the compressed streams)."""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14
    from backports import zstd


#: compressed bytes fed to the inflater at once; a piece that fails is fed again in
#: steps, which locate the break
INFLATE_PIECE, INFLATE_STEP = 64 << 10, 64
#: bytes of inflated output produced at once (a zip bomb is not expanded in memory)
INFLATE_OUTPUT = 1 << 20
#: what a check finds: (byte offset of the break, what the format requires there), or
#: None where the body keeps its structure (or ends before a break)
Found = tuple[int, str] | None


if TYPE_CHECKING:  # a decompressor of any of the streams here (bounded pieces of output)
    Decompressor: TypeAlias = zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor \
        | zstd.ZstdDecompressor


ZLIB_DECOMPRESSOR = type(zlib.decompressobj())
#: what they raise on data that is not their format
DECOMPRESS_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError, zstd.ZstdError)


def inflate(data: bytes, start: int, wbits: int) -> tuple[int | None, int | None]:
    """:func:`decompress` of the zlib (``wbits``: deflate, gzip) stream at ``start``."""
    return decompress(data, start, lambda: zlib.decompressobj(wbits))


def decompress(data: bytes, start: int,
               make: Callable[[], Decompressor]) -> tuple[int | None, int | None]:
    """Decompress the stream at byte ``start`` (``make``: a new decompressor for it):
    (its end, None) when it ends, (None, where it fails to within :data:`INFLATE_STEP`)
    when it fails, (None, None) when the data ends first."""
    decompressor = make()
    view = memoryview(data)
    for pos in range(start, len(data), INFLATE_PIECE):
        piece = view[pos : pos + INFLATE_PIECE]
        if not feed(decompressor, piece):  # again, the failing piece a little at a time
            again = make()
            feed(again, view[start:pos])
            for at in range(pos, pos + len(piece), INFLATE_STEP):
                if again.eof or not feed(again, view[at : at + INFLATE_STEP]):
                    return None, at
            return None, pos
        if decompressor.eof:
            return pos + len(piece) - len(decompressor.unused_data), None
    return None, None


def feed(decompressor: Decompressor, piece: memoryview) -> bool:
    """Feed ``piece`` to ``decompressor``, :data:`INFLATE_OUTPUT` bytes of output at a
    time (dropped); False if it fails."""
    try:
        decompressor.decompress(piece, INFLATE_OUTPUT)
        while not decompressor.eof:
            if isinstance(decompressor, ZLIB_DECOMPRESSOR):
                if not decompressor.unconsumed_tail:
                    break
                decompressor.decompress(decompressor.unconsumed_tail, INFLATE_OUTPUT)
            elif decompressor.needs_input:
                break
            else:
                decompressor.decompress(b"", INFLATE_OUTPUT)
    except DECOMPRESS_ERRORS:
        return False
    return True

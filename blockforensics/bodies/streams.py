"""Body checks of compressed streams: gzip (RFC 1952), xz, bzip2 and zstd (RFC 8878), one
stream after another."""

from __future__ import annotations

import bz2
import functools
import lzma
import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from blockforensics.bodies.base import Found, decompress, zstd

if TYPE_CHECKING:
    from blockforensics.bodies.base import Decompressor

#: the largest zstd window checked, in bytes: zstd's own default decoding limit.  A frame
#: asking for more (``zstd --long=31`` makes 2 GiB ones) is valid but not checked: its
#: decoder would hold up to the window in memory, which a hostile file sets
ZSTD_WINDOW_MAX = 1 << 27
#: RFC 8878 §3.1.1.1: Dictionary_ID and Frame_Content_Size field sizes by their flags
ZSTD_DID_BYTES, ZSTD_FCS_BYTES = (0, 1, 2, 4), (1, 2, 4, 8)
ZSTD_SINGLE_SEGMENT = 0x20
#: compressed stream formats: their magic, a new decompressor, what a stream is called
STREAMS: dict[str, tuple[bytes, Callable[[], Decompressor], str]] = {
    "gzip": (b"\x1f\x8b", lambda: zlib.decompressobj(31), "a gzip member's deflate stream"),
    "xz": (b"\xfd7zXZ\x00", lzma.LZMADecompressor, "an xz stream"),
    "bzip2": (b"BZh", bz2.BZ2Decompressor, "a bzip2 stream"),
    "zstd": (b"\x28\xb5\x2f\xfd", zstd.ZstdDecompressor, "a zstd frame"),
}
#: between streams: xz's stream padding (null bytes, 4 at a time) and zstd's skippable
#: frames (magic 0x184D2A50-5F, little-endian size of the data in bytes, the data)
XZ_PADDING = bytes(4)
ZSTD_SKIPPABLE = struct.Struct("<II")
ZSTD_SKIPPABLE_MAGIC = 0x184D2A50


def _streams(fmt: str, data: bytes) -> Found:
    """The ``fmt`` streams (:data:`STREAMS`) decompress, one after another."""
    magic, make, what = STREAMS[fmt]
    pos = 0
    while pos < len(data):
        while data[pos : pos + 4] == XZ_PADDING and fmt == "xz":
            pos += 4
        while fmt == "zstd" and pos + ZSTD_SKIPPABLE.size <= len(data) \
                and ZSTD_SKIPPABLE.unpack_from(data, pos)[0] & ~0xF == ZSTD_SKIPPABLE_MAGIC:
            pos += ZSTD_SKIPPABLE.size + ZSTD_SKIPPABLE.unpack_from(data, pos)[1]
        if pos >= len(data) or data[pos : pos + len(magic)] == magic[: len(data) - pos]:
            if pos + len(magic) > len(data):
                return None
        else:
            return pos, f"{what} must follow the one before"
        if fmt == "zstd" and _zstd_window(data, pos + len(magic)) > ZSTD_WINDOW_MAX:
            return None  # not checked (see ZSTD_WINDOW_MAX)
        end, broken = decompress(data, pos, make)
        if broken is not None:
            return broken, f"{what} must decompress"
        if end is None:
            return None
        pos = end
    return None


def _zstd_window(data: bytes, pos: int) -> int:
    """The window size in bytes a zstd frame header at ``pos`` (after the magic) asks
    for (RFC 8878 §3.1.1.1.2: the Window_Descriptor, or with Single_Segment_flag the
    Frame_Content_Size); 0 when the header is cut short."""
    if pos >= len(data):
        return 0
    descriptor = data[pos]
    if not descriptor & ZSTD_SINGLE_SEGMENT:
        if pos + 1 >= len(data):
            return 0
        exponent, mantissa = data[pos + 1] >> 3, data[pos + 1] & 7
        base = 1 << (10 + exponent)
        return base + base // 8 * mantissa
    start = pos + 1 + ZSTD_DID_BYTES[descriptor & 3]
    size = ZSTD_FCS_BYTES[descriptor >> 6]
    if start + size > len(data):
        return 0
    return int.from_bytes(data[start : start + size], "little") + (256 if size == 2 else 0)


#: format -> its check
CHECKS: dict[str, Callable[[bytes], Found]] = {
    fmt: functools.partial(_streams, fmt) for fmt in STREAMS}

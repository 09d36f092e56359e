"""Body checks of pictures: JPEG (ITU T.81), PNG, GIF (89a) and TIFF (6.0, and the raw
photos built on it).  Each returns where the body stops keeping its format's structure
(:data:`~blockforensics.bodies.base.Found`)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blockforensics.bodies.base import INFLATE_PIECE, INFLATE_STEP, Found, feed, inflate

#: JPEG markers standing alone (TEM, RST0-7) and those a length follows
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
JPEG_SEGMENTS = frozenset({*range(0xC0, 0xC8), *range(0xC9, 0xD0), *range(0xDA, 0xE0),
                           *range(0xE0, 0xF0), 0xF7, 0xF8, 0xFE})
JPEG_SOS, JPEG_EOI, JPEG_LS_FRAME = 0xDA, 0xD9, 0xF7
#: a JPEG marker segment's start: 0xFF, marker, length (counting itself, bytes)
JPEG_SEGMENT = struct.Struct(">BBH")
#: a PNG chunk's start (length of its data in bytes, type) and its CRC-32 after the data
PNG_CHUNK = struct.Struct(">I4s")
PNG_CRC = struct.Struct(">I")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: GIF: signature and version, logical screen width and height, packed fields (bit 7: a
#: global colour table of 3 * 2 ** (bits 0-2 + 1) bytes follows), background, aspect
GIF_SCREEN = struct.Struct("<6sHHBBB")
#: an image descriptor after its 0x2C: left, top, width, height, packed fields (as above,
#: for a local colour table)
GIF_IMAGE = struct.Struct("<HHHHB")
GIF_EXTENSION, GIF_IMAGE_SEPARATOR, GIF_TRAILER = 0x21, 0x2C, 0x3B
GIF_COLOUR_TABLE = 0x80
#: the sub-block lengths encoders fill an image's data with (giflib, Pillow; ImageMagick)
GIF_FULL_SUB_BLOCKS = (255, 254)
#: the LZW minimum code size an image's data starts with (bits; GIF allows 2-8, some
#: writers write 1 for two-colour pictures)
GIF_LZW_BITS = range(1, 9)
#: TIFF: byte order ("II" little-endian, "MM" big), 42, the first IFD's offset; an IFD is
#: an entry count, 12-byte entries (tag, type, count, value or offset of the values),
#: the next IFD's offset.  Types 1-12 (TIFF 6.0) and 13 (IFD); 16-18 are BigTIFF's
TIFF_MAGIC, TIFF_ORDERS = 42, {b"II": "<", b"MM": ">"}
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                   13: 4}
TIFF_MAX_ENTRIES = 4096  # far more than any writer's
#: at most this many directories are read, and this many values of a tag (strips of an
#: image): a hostile file cannot make the check run long
TIFF_MAX_DIRECTORIES, TIFF_MAX_VALUES = 256, 1 << 16
TIFF_COMPRESSION, TIFF_SUB_IFDS, TIFF_EXIF_IFD = 259, 330, 34665
#: (offsets tag, byte counts tag) of strips and of tiles
TIFF_PIECES = ((273, 279), (324, 325))
#: compressions whose data has a structure of its own: JPEG (old-style 6, 7, DNG's lossy
#: 34892) and Deflate (Adobe's 8, 32946)
TIFF_JPEG, TIFF_DEFLATE = frozenset({6, 7, 34892}), frozenset({8, 32946})
#: the tags whose values the check reads
TIFF_READ = frozenset({TIFF_COMPRESSION, TIFF_SUB_IFDS, TIFF_EXIF_IFD,
                       *(tag for pair in TIFF_PIECES for tag in pair)})


def _jpeg(data: bytes) -> Found:
    a = np.frombuffer(data, np.uint8)
    ff = np.flatnonzero(a[:-1] == 0xFF)
    after = a[ff + 1]
    # in entropy-coded data: 0xFF 0x00 is a stuffed byte, 0xFF RSTn a restart marker
    ends = ff[(after != 0) & ((after < 0xD0) | (after > 0xD7))]
    pos = 2
    while pos + JPEG_SEGMENT.size <= len(data):
        if a[pos] != 0xFF:
            return pos, "a marker (0xFF) must begin the next segment"
        while pos + 1 < len(data) and a[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos + JPEG_SEGMENT.size > len(data):
            return None
        _, marker, length = JPEG_SEGMENT.unpack_from(data, pos)
        if marker in (JPEG_EOI, JPEG_LS_FRAME):  # JPEG-LS stuffs a 0 bit, not a 0 byte
            return None
        if marker in JPEG_STANDALONE:
            pos += 2
            continue
        if marker not in JPEG_SEGMENTS or length < 2:
            return pos, f"a JPEG marker must follow 0xFF (0x{marker:02X} is none)"
        end = pos + 2 + length
        if marker != JPEG_SOS and end < len(data) and a[end] != 0xFF:
            return pos, f"a segment (marker 0x{marker:02X}) must end where a marker begins"
        pos = end
        if marker == JPEG_SOS:  # entropy-coded data to the next marker
            i = int(np.searchsorted(ends, pos))
            if i == len(ends):
                return None
            pos = int(ends[i])
    return None


def _png(data: bytes) -> Found:
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    idats: list[tuple[int, int]] = []  # byte ranges of the image data chunks' data
    while pos + PNG_CHUNK.size + PNG_CRC.size <= len(data):
        length, kind = PNG_CHUNK.unpack_from(data, pos)
        if not kind.isalpha():
            return pos, "a PNG chunk must begin (a type of 4 ASCII letters)"
        end = pos + PNG_CHUNK.size + length + PNG_CRC.size
        if end > len(data):
            return None
        (crc,) = PNG_CRC.unpack_from(data, end - PNG_CRC.size)
        if kind == b"IDAT":
            idats.append((pos + PNG_CHUNK.size, end - PNG_CRC.size))
        if zlib.crc32(view[pos + 4 : end - PNG_CRC.size]) != crc:
            if kind == b"IDAT" and (inside := _png_idat_break(view, idats)) is not None:
                return inside, "the PNG's image data (a zlib stream over its IDAT chunks, " \
                               "whose CRC-32 fails) must inflate"
            return pos, "a PNG chunk's CRC-32 must match its type and data"
        if kind == b"IEND":
            return None
        pos = end
    return None


def _png_idat_break(view: memoryview, idats: list[tuple[int, int]]) -> int | None:
    """Where the zlib stream the IDAT chunks' data make fails to inflate, from the last
    of them (whose CRC-32 failed) on, the bytes after it fed on as its continuation
    (located to :data:`INFLATE_STEP` bytes); None if it does not within
    :data:`INFLATE_PIECE` bytes."""
    inflater = zlib.decompressobj(15)
    for start, stop in idats[:-1]:
        if not feed(inflater, view[start:stop]):
            return None
    start = idats[-1][0]
    for at in range(start, min(len(view), idats[-1][1] + INFLATE_PIECE), INFLATE_STEP):
        if inflater.eof or not feed(inflater, view[at : at + INFLATE_STEP]):
            return at
    return None


def _gif(data: bytes) -> Found:
    if len(data) < GIF_SCREEN.size:
        return None
    packed = GIF_SCREEN.unpack_from(data)[3]
    pos = GIF_SCREEN.size + _colour_table(packed)
    while pos < len(data):
        kind = data[pos]
        if kind == GIF_TRAILER:
            return None
        if kind == GIF_EXTENSION:
            ended = _sub_blocks(data, pos + 2)  # after the introducer and the label
        elif kind == GIF_IMAGE_SEPARATOR:
            if pos + 1 + GIF_IMAGE.size >= len(data):
                return None
            pos += 1 + GIF_IMAGE.size + _colour_table(GIF_IMAGE.unpack_from(data, pos + 1)[4])
            if pos < len(data) and data[pos] not in GIF_LZW_BITS:
                return pos, "an image's data must begin (an LZW code size of 1 to 8 bits)"
            ended = _sub_blocks(data, pos + 1, uniform=True)
        else:
            return pos, "a GIF block must begin (an extension 0x21, an image 0x2C or the " \
                        "trailer 0x3B)"
        if ended is None or isinstance(ended, tuple):
            return ended
        pos = ended
    return None


def _colour_table(packed: int) -> int:
    """Bytes of the colour table a GIF descriptor's packed fields announce."""
    return 3 << ((packed & 7) + 1) if packed & GIF_COLOUR_TABLE else 0


def _sub_blocks(data: bytes, pos: int, uniform: bool = False) -> int | Found:
    """Where a chain of GIF data sub-blocks (a length byte, that many bytes) from ``pos``
    ends, after its zero-length terminator; None if the data ends first.  ``uniform``
    (an image's LZW data): when the first sub-block is full (255 bytes: giflib, Pillow;
    254: ImageMagick), every one but the last must be as long — encoders cut the code
    stream into full sub-blocks — so random bytes break the chain within one sub-block,
    not only where a random length byte is zero (the spec's rule, for other writers)."""
    full = data[pos] if pos < len(data) else 0
    uniform = uniform and full in GIF_FULL_SUB_BLOCKS
    while pos < len(data):
        length = data[pos]
        if length == 0:
            return pos + 1
        after = pos + 1 + length
        if uniform and length != full and after < len(data) and data[after] != 0:
            return pos, "an image's data sub-blocks must all be as long as the first " \
                        "but the last"
        pos = after
    return None


def _tiff(data: bytes) -> Found:
    order = TIFF_ORDERS.get(data[:2])
    if order is None or len(data) < 8 or struct.unpack_from(order + "H", data, 2)[0] != TIFF_MAGIC:
        return None  # BigTIFF (43) and what is not TIFF are not checked
    todo, breaks = [struct.unpack_from(order + "I", data, 4)[0]], []
    seen: set[int] = set()
    while todo and len(seen) < TIFF_MAX_DIRECTORIES:
        at = todo.pop()
        if not at or at in seen or at + 2 > len(data):
            continue  # none, a loop, or past what was read
        seen.add(at)
        read = _tiff_directory(data, at, order)
        if not isinstance(read, _TiffDirectory):
            breaks += [read] if read is not None else []
            continue
        tags = read.tags
        todo += [read.following, *tags.get(TIFF_SUB_IFDS, ()), *tags.get(TIFF_EXIF_IFD, ())]
        compression = tags.get(TIFF_COMPRESSION, (1,))[0]
        for offsets_tag, counts_tag in TIFF_PIECES:
            for offset, count in zip(tags.get(offsets_tag, ()), tags.get(counts_tag, ())):
                found = _tiff_piece(data, offset, count, compression)
                if found is not None:
                    breaks.append(found)
                    break
    return min(breaks, default=None)


@dataclass(frozen=True)
class _TiffDirectory:
    """What an IFD says: its integer values by tag (SHORT, LONG and IFD entries), the
    next IFD's offset."""

    tags: dict[int, tuple[int, ...]]
    following: int


def _tiff_directory(data: bytes, at: int, order: str) -> _TiffDirectory | Found:
    """The IFD at byte ``at``; a break if it is none; None if it runs past the data."""
    (count,) = struct.unpack_from(order + "H", data, at)
    rule = "a TIFF image file directory must begin (an entry count, entries of TIFF's types)"
    if not 0 < count <= TIFF_MAX_ENTRIES:
        return at, rule
    end = at + 2 + 12 * count
    if end + 4 > len(data):
        return None
    tags: dict[int, tuple[int, ...]] = {}
    for entry in range(at + 2, end, 12):
        tag, kind, n, value = struct.unpack_from(order + "HHII", data, entry)
        size = TIFF_TYPE_BYTES.get(kind)
        if size is None:
            return at, rule
        if tag not in TIFF_READ or tag in tags or kind not in (3, 4, 13) \
                or n > TIFF_MAX_VALUES:  # the values read: SHORT, LONG and IFD ones
            continue
        where = entry + 8 if n * size <= 4 else value  # in the entry, or where it says
        if where + n * size <= len(data):
            tags[tag] = struct.unpack_from(f"{order}{n}{'H' if kind == 3 else 'I'}", data,
                                           where)
    return _TiffDirectory(tags, struct.unpack_from(order + "I", data, end)[0])


def _tiff_piece(data: bytes, offset: int, count: int, compression: int) -> Found:
    """The break in one strip or tile of ``count`` bytes at ``offset``, by its
    compression's own structure; None where it keeps it, has none, or lies past the data."""
    piece = data[offset : offset + count]
    if compression in TIFF_JPEG and piece[:2] == b"\xff\xd8":
        found = _jpeg(piece)
    elif compression in TIFF_DEFLATE:
        _, failed = inflate(piece, 0, 15)
        found = None if failed is None else (failed, "a strip's Deflate stream must inflate")
    else:
        return None
    return None if found is None else (offset + found[0], found[1])


#: format -> its check
CHECKS: dict[str, Callable[[bytes], Found]] = {"jpeg": _jpeg, "png": _png, "gif": _gif,
                                               "tiff": _tiff}

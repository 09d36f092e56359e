"""Does a file's body keep the structure its header promises?

Ransomware that keeps a file's first bytes and encrypts the rest (from an offset, or in
stripes) leaves a JPEG's, zip's or PDF's signature in place; their bodies are random
already, so entropy alone cannot tell.  Each format here has a cheap structural test
its own specification makes, which random bytes fail within a few hundred bytes:

- JPEG (ITU T.81): segments chain from SOI by their lengths; in the entropy-coded data
  after SOS every 0xFF is followed by 0x00 (stuffing), RST0-7 or the next segment's
  marker — random bytes give an 0xFF followed by something else about every 256 bytes;
- PNG: chunks (length, 4-letter type, data, CRC-32) chain to IEND, each CRC checks
  (in image data, the break is where the zlib stream over the IDAT chunks fails);
- zip (APPNOTE): local headers chain through the members (a deflated member inflates,
  a stored one checks its CRC-32), then central directory entries pointing at local
  headers, then the end records (zip64 included);
- gzip (RFC 1952), xz, bzip2, zstd: the streams decompress, one after another;
- PDF: the classic cross-reference table points at ``N G obj``; Flate streams inflate;
- ISO BMFF (MP4/MOV/HEIC): top-level boxes (size, type of 4 printable bytes) chain;
- Ogg (RFC 3533: Vorbis, Opus, FLAC in Ogg): pages chain, each page's CRC-32 checks;
- RIFF (WebP, WAV, AVI): chunks (id of 4 printable bytes, size, padded to even) chain
  to the RIFF size;
- FLAC: metadata blocks chain from STREAMINFO, then a frame header (sync code, its
  CRC-8 checking) begins where they end and within the largest frame size of the one
  before, to the end;
- MP3 (MPEG audio): after the ID3v2 tag, frames chain by the lengths their headers give
  (:mod:`blockforensics.mpegaudio`), to the end or a closing tag (ID3v1, APE, Lyrics3);
- GIF (89a): after the screen descriptor and colour table, blocks chain — an extension
  (0x21) or an image (0x2C) whose data sub-blocks run to a zero-length one — to the
  trailer (0x3B);
- Matroska/WebM (EBML, RFC 8794 and 9559): the segment's elements, and the elements of
  each cluster (where the coded frames are), chain by their sizes, each with an ID the
  format defines at that level;
- 7z: the start header's CRC-32 checks, and the end header it points at checks its own
  (the packed streams between have no structure of their own);
- TIFF (6.0) and the raw photos built on it (DNG, CR2, NEF, ARW...): every image file
  directory (IFD0's chain, SubIFDs, Exif) parses — an entry count, entries of the
  types TIFF defines — and each strip or tile of a JPEG- or Deflate-compressed image
  keeps its own structure (as above);
- RAR (4 and 5, rarlab's technical notes): blocks chain by their header and data sizes,
  each header's CRC-32 (RAR 4: its low 16 bits) checking, to the end-of-archive block.

A file cut short (a download in progress) is not broken: the body that exists is valid,
it just ends.  A break counts (:func:`body_break`) only where the bytes from it are
random (:data:`~blockforensics.evidence.RANDOM_SEGMENT_ENTROPY` bits per byte and the
chi-square test) — a bit flip in a photo is not ciphertext.  At most
:data:`BODY_BYTES` of a file are read; beyond, a body is not checked.
"""

from __future__ import annotations

import bz2
import functools
import lzma
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from blockforensics import mpegaudio

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14
    from backports import zstd

from blockforensics.evidence import (
    RANDOM_SEGMENT_ENTROPY,
    SEGMENT_BYTES,
    UNIFORM_P,
    entropy,
    uniform_p,
)

#: bytes of a file read for its body check (the first ones)
BODY_BYTES = 64 << 20
#: bytes from a break whose randomness is judged (at least SEGMENT_BYTES of them)
WINDOW_BYTES = 4 * SEGMENT_BYTES
#: compressed bytes fed to the inflater at once; a piece that fails is fed again in
#: steps, which locate the break
INFLATE_PIECE, INFLATE_STEP = 64 << 10, 64
#: bytes of inflated output produced at once (a zip bomb is not expanded in memory)
INFLATE_OUTPUT = 1 << 20

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
#: zip records (APPNOTE 4.3.7, 4.3.12): local file header, central directory header
ZIP_LOCAL = struct.Struct("<4sHHHHHIIIHH")
ZIP_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
ZIP_LOCAL_SIG, ZIP_CENTRAL_SIG = b"PK\x03\x04", b"PK\x01\x02"
ZIP_END_SIG, ZIP64_END_SIG, ZIP64_LOCATOR_SIG = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
ZIP_DESCRIPTOR_SIG = b"PK\x07\x08"
#: records that may stand before the central directory (archive extra data: signature,
#: 4-byte length) or after it (digital signature: signature, 2-byte length)
ZIP_EXTRA_DATA_SIG, ZIP_SIGNATURE_SIG = b"PK\x06\x08", b"PK\x05\x05"
#: an APK Signing Block: its size (bytes after this field) at both ends, then the magic
APK_BLOCK = struct.Struct("<Q")
APK_MAGIC = b"APK Sig Block 42"
ZIP_END_BYTES, ZIP64_LOCATOR_BYTES = 22, 20
#: zip64 end record: signature, size of the rest (bytes)
ZIP64_END = struct.Struct("<4sQ")
#: an extra field's header (id, size) and the zip64 one's id
ZIP_EXTRA = struct.Struct("<HH")
ZIP64_EXTRA_ID = 0x0001
ZIP_DEFLATED, ZIP_STORED = 8, 0
ZIP_FLAG_ENCRYPTED, ZIP_FLAG_DESCRIPTOR = 0x0001, 0x0008
ZIP_MAX32 = 0xFFFFFFFF
#: an ISO BMFF box's start: size (bytes, 1: a 64-bit size follows, 0: to the end), type
BOX = struct.Struct(">I4s")
BOX_LARGE = struct.Struct(">Q")
#: an Ogg page's header (RFC 3533 6): capture pattern, version, header type, granule
#: position, serial number, page sequence number, CRC-32, number of segments (then the
#: segment table: each segment's length in bytes)
OGG_PAGE = struct.Struct("<4sBBqIIIB")
OGG_CAPTURE, OGG_CRC_OFFSET = b"OggS", 22
#: byte -> the byte with its bits in reverse order
BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))
#: RIFF: the file's header (RIFF, size of the rest in bytes, form type: WEBP, WAVE,
#: AVI ), then chunks (id, size of the data in bytes; the data padded to even)
RIFF_HEADER = struct.Struct("<4sI4s")
RIFF_CHUNK = struct.Struct("<4sI")
#: FLAC: a metadata block's header (bit 7: the last one; bits 0-6: type; 24-bit length
#: in bytes), STREAMINFO's fields up to the frame sizes and those after (sample rate,
#: channels - 1, bits per sample - 1 in the top 28 bits) — all big-endian
FLAC_BLOCK = struct.Struct(">I")
FLAC_STREAMINFO = struct.Struct(">HH3s3sQ")
FLAC_INVALID_BLOCK = 127
#: a frame header's first 4 bytes: sync code (0xFFF8 fixed, 0xFFF9 variable block
#: size), block size and sample rate codes, channels and sample size codes
FLAC_FRAME = struct.Struct(">HBB")
FLAC_SYNC_MASK, FLAC_SYNC = 0xFFFE, 0xFFF8
#: bytes more at the header's end (8 or 16 bits) by block size / sample rate code; a
#: header's most bytes before its CRC-8 (4, a 7-byte number, 2 and 2)
FLAC_BLOCK_SIZE_EXTRA = np.array([0] * 6 + [1, 2] + [0] * 8)
FLAC_RATE_EXTRA = np.array([0] * 12 + [1, 2, 2, 0])
FLAC_HEADER_BYTES = 15
#: a byte's leading 1 bits: a UTF-8 coded number's bytes (0: one byte, 1: invalid)
FLAC_LEADING_ONES = np.array([8 - (~b & 0xFF).bit_length() for b in range(256)])
#: the CRC-8 of a frame header (polynomial 0x07, from 0), byte by byte
FLAC_CRC8 = np.array([functools.reduce(lambda c, _: (c << 1 ^ (0x07 if c & 0x80 else 0))
                                       & 0xFF, range(8), b) for b in range(256)], np.uint8)
#: bytes of a PDF's end searched for ``startxref``
PDF_TAIL = 2048
PDF_STARTXREF = re.compile(rb"startxref\s+(\d+)")
PDF_SUBSECTION = re.compile(rb"\s*(\d+)\s+(\d+)\s*\r?\n?")
PDF_ENTRY_BYTES = 20  # "oooooooooo ggggg n\r\n"
PDF_OBJECT = re.compile(rb"\s*(\d+)\s+(\d+)\s+obj")
PDF_STREAM = re.compile(rb"(?<!end)stream\r?\n")
#: bytes before a stream keyword searched for its dictionary's /FlateDecode
PDF_DICT_BYTES = 512
#: a stream dictionary's direct length (bytes of data); ``endstream`` after the data,
#: an end of line before it allowed (and counted in the slack)
PDF_LENGTH = re.compile(rb"/Length\s+(\d+)(?!\d)(?!\s+\d+\s+R)")
PDF_ENDSTREAM = re.compile(rb"\s{0,2}endstream")
PDF_ENDSTREAM_SLACK = 11
#: a trailer naming an encryption dictionary: the streams are encrypted by the PDF itself
PDF_ENCRYPT = b"/Encrypt"
#: ID3v2 (id3.org, v2.3/2.4): "ID3", version (2 bytes), flags, size of what follows the
#: 10-byte header (and the footer, flag 0x10, 10 bytes more), 4 bytes of 7 bits each
ID3V2 = struct.Struct(">3sHB4s")
ID3V2_FOOTER_FLAG, ID3V2_FOOTER_BYTES = 0x10, 10
#: what may follow an MP3's last frame: ID3v1 ("TAG"), APEv2, Lyrics3, an appended ID3v2
MP3_TRAILERS = (b"TAG", b"APETAGEX", b"LYRICS", b"ID3")
NOT_ZERO = re.compile(rb"[^\x00]")
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
#: EBML (RFC 8794) and Matroska (RFC 9559) element IDs: the EBML header, the segment,
#: those a segment holds (level 1) and those a cluster holds, with the two allowed anywhere
EBML_HEADER, EBML_VOID, EBML_CRC32 = 0x1A45DFA3, 0xEC, 0xBF
MKV_SEGMENT, MKV_CLUSTER = 0x18538067, 0x1F43B675
MKV_SEGMENT_CHILDREN = frozenset({0x114D9B74, 0x1549A966, 0x1654AE6B, MKV_CLUSTER, 0x1C53BB6B,
                                  0x1941A469, 0x1043A770, 0x1254C367, EBML_VOID, EBML_CRC32})
MKV_CLUSTER_CHILDREN = frozenset({0xE7, 0x5854, 0xA7, 0xAB, 0xA3, 0xA0, 0xAF, EBML_VOID,
                                  EBML_CRC32})
#: 7z's signature header: signature, version (major, minor), CRC-32 of the start header
#: (the 20 bytes after it): the end header's offset from byte 32, its size, its CRC-32
SEVENZIP = struct.Struct("<6sBBIQQI")
SEVENZIP_START_HEADER = slice(12, 32)
#: the end header's first byte: kHeader, or kEncodedHeader (the header packed as a stream)
SEVENZIP_HEADER_IDS = (0x01, 0x17)
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
#: RAR 5: signature; a block is the header's CRC-32, the header's size (a vint, bytes
#: from the type on), type, flags (vints), the extra area's and the data's sizes (vints,
#: by flag), ...; the data follows the header.  Types: main, file, service, encryption
#: (every header after it encrypted), end of archive; a header is at most 2 MiB
RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"
RAR5_CRC = struct.Struct("<I")
RAR5_TYPES = range(1, 6)
RAR5_ENCRYPTION, RAR5_END = 4, 5
RAR5_EXTRA_AREA, RAR5_DATA_AREA = 0x0001, 0x0002
RAR5_FLAGS = 0x007F  # the header flags defined (extra area ... preserve child)
RAR5_MAX_HEADER = 2 << 20
#: RAR 4: signature (itself the marker block); a block's header: CRC-16 (the low 16
#: bits of the CRC-32 of the header from its type on), type, flags, size of the header in
#: bytes; ADD_SIZE (data bytes after the header) when flag 0x8000 — a file's or a
#: service block's packed size, with its high 32 bits at HIGH_OFFSET when flag 0x100
RAR4_SIGNATURE = b"Rar!\x1a\x07\x00"
RAR4_BLOCK = struct.Struct("<HBHH")
RAR4_ADD_SIZE = struct.Struct("<I")
RAR4_TYPES = range(0x72, 0x7C)
RAR4_MAIN, RAR4_FILE, RAR4_SERVICE, RAR4_END = 0x73, 0x74, 0x7A, 0x7B
RAR4_HAS_DATA, RAR4_LARGE, RAR4_HEADERS_ENCRYPTED = 0x8000, 0x0100, 0x0080
RAR4_HIGH_OFFSET = 32


@dataclass(frozen=True)
class Break:
    """Where a body stops keeping its format's structure: byte ``offset`` in the file,
    ``rule``: what the format requires there."""

    format: str
    offset: int
    rule: str

    def describe(self) -> str:
        return (f"the {self.format} body breaks its own structure from byte {self.offset}: "
                f"random bytes where {self.rule}")


def body_break(fmt: str | None, data: bytes) -> Break | None:
    """The break in ``data`` (a file's first bytes) of the structure format ``fmt``
    promises, where the bytes from it are random; None when the body keeps it, ends
    early, the format has no test here, or the bytes there are not random."""
    check = CHECKS.get(fmt or "")
    found = check(data) if check is not None else None
    if found is None:
        return None
    offset, rule = found
    a = np.frombuffer(data, np.uint8)
    window = a[offset : offset + WINDOW_BYTES]
    if window.size < SEGMENT_BYTES and len(data) < BODY_BYTES:  # a break near the end:
        window = a[max(0, len(data) - SEGMENT_BYTES):]  # judged with the bytes before it
    if window.size < SEGMENT_BYTES:
        return None
    counts = np.bincount(window, minlength=256)
    if entropy(counts)[0] < RANDOM_SEGMENT_ENTROPY or uniform_p(counts) < UNIFORM_P:
        return None
    assert fmt is not None
    return Break(fmt, offset, rule)


Found = tuple[int, str] | None


if TYPE_CHECKING:  # a decompressor of any of the streams here (bounded pieces of output)
    Decompressor: TypeAlias = zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor \
        | zstd.ZstdDecompressor
ZLIB_DECOMPRESSOR = type(zlib.decompressobj())
#: what they raise on data that is not their format
DECOMPRESS_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError, zstd.ZstdError)


def _inflate(data: bytes, start: int, wbits: int) -> tuple[int | None, int | None]:
    """:func:`_decompress` of the zlib (``wbits``: deflate, gzip) stream at ``start``."""
    return _decompress(data, start, lambda: zlib.decompressobj(wbits))


def _decompress(data: bytes, start: int,
                make: Callable[[], Decompressor]) -> tuple[int | None, int | None]:
    """Decompress the stream at byte ``start`` (``make``: a new decompressor for it):
    (its end, None) when it ends, (None, where it fails to within :data:`INFLATE_STEP`)
    when it fails, (None, None) when the data ends first."""
    decompressor = make()
    view = memoryview(data)
    for pos in range(start, len(data), INFLATE_PIECE):
        piece = view[pos : pos + INFLATE_PIECE]
        if not _feed(decompressor, piece):  # again, the failing piece a little at a time
            again = make()
            _feed(again, view[start:pos])
            for at in range(pos, pos + len(piece), INFLATE_STEP):
                if again.eof or not _feed(again, view[at : at + INFLATE_STEP]):
                    return None, at
            return None, pos
        if decompressor.eof:
            return pos + len(piece) - len(decompressor.unused_data), None
    return None, None


def _feed(decompressor: Decompressor, piece: memoryview) -> bool:
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
        if not _feed(inflater, view[start:stop]):
            return None
    start = idats[-1][0]
    for at in range(start, min(len(view), idats[-1][1] + INFLATE_PIECE), INFLATE_STEP):
        if inflater.eof or not _feed(inflater, view[at : at + INFLATE_STEP]):
            return at
    return None


def _zip64(extra: bytes, values: list[int]) -> list[int]:
    """``values`` of a zip header with those at 0xFFFFFFFF taken, in order, from the
    zip64 extra field (8 bytes each)."""
    pos = 0
    while pos + ZIP_EXTRA.size <= len(extra):
        kind, size = ZIP_EXTRA.unpack_from(extra, pos)
        if kind == ZIP64_EXTRA_ID:
            count = min(size, len(extra) - pos - ZIP_EXTRA.size) // 8
            wide = iter(struct.unpack_from(f"<{count}Q", extra, pos + ZIP_EXTRA.size))
            return [next(wide, v) if v == ZIP_MAX32 else v for v in values]
        pos += ZIP_EXTRA.size + size
    return values


def _zip_member(data: bytes, pos: int) -> tuple[int | None, Found]:
    """The end of the member whose local header is at ``pos`` (None: the data ends
    first, or it cannot be found) and where it breaks, if it does."""
    (_, _, flags, method, _, _, crc, csize, usize, nlen,
     xlen) = ZIP_LOCAL.unpack_from(data, pos)
    start = pos + ZIP_LOCAL.size + nlen + xlen
    usize, csize = _zip64(data[start - xlen : start], [usize, csize])
    if method == ZIP_DEFLATED and not flags & ZIP_FLAG_ENCRYPTED:
        end, broken = _inflate(data, start, -15)
        if broken is not None:
            return None, (broken, "a zip member's deflate stream must inflate")
    elif flags & ZIP_FLAG_DESCRIPTOR:
        return None, None  # no size to skip by
    else:
        end = start + csize
        if end > len(data):
            return None, None
        if method == ZIP_STORED and not flags & ZIP_FLAG_ENCRYPTED \
                and zlib.crc32(memoryview(data)[start:end]) != crc:
            return None, (start, "a stored zip member must match its CRC-32")
    if end is not None and flags & ZIP_FLAG_DESCRIPTOR:
        end += 4 if data[end : end + 4] == ZIP_DESCRIPTOR_SIG else 0
        # crc and sizes: 4 + 4 + 4 bytes, or 4 + 8 + 8 (zip64): the one a record follows
        end += 12 if data[end + 12 : end + 14] == b"PK" or data[end + 20 : end + 22] != b"PK" \
            else 20
    return end, None


def _zip(data: bytes) -> Found:
    pos, locals_ = 0, set()
    while data[pos : pos + 4] == ZIP_LOCAL_SIG:
        if pos + ZIP_LOCAL.size > len(data):
            return None
        locals_.add(pos)
        end, broken = _zip_member(data, pos)
        if broken is not None or end is None:
            return broken
        pos = end
    while pos + 4 <= len(data):
        sig = data[pos : pos + 4]
        if sig == ZIP_CENTRAL_SIG and pos + ZIP_CENTRAL.size <= len(data):
            fields = ZIP_CENTRAL.unpack_from(data, pos)
            nlen, xlen, clen, offset = fields[10], fields[11], fields[12], fields[16]
            extra = pos + ZIP_CENTRAL.size + nlen
            _, _, offset = _zip64(data[extra : extra + xlen], [fields[9], fields[8], offset])
            if offset not in locals_ and data[offset : offset + 4] != ZIP_LOCAL_SIG \
                    and offset < len(data):
                return offset, "a central directory entry must point at a local header"
            pos = extra + xlen + clen
        elif sig == ZIP64_END_SIG and pos + ZIP64_END.size <= len(data):
            pos += ZIP64_END.size + ZIP64_END.unpack_from(data, pos)[1]
        elif sig == ZIP64_LOCATOR_SIG:
            pos += ZIP64_LOCATOR_BYTES
        elif sig in (ZIP_EXTRA_DATA_SIG, ZIP_SIGNATURE_SIG) and pos + 8 <= len(data):
            size = struct.unpack_from("<I" if sig == ZIP_EXTRA_DATA_SIG else "<H", data, pos + 4)[0]
            pos += (8 if sig == ZIP_EXTRA_DATA_SIG else 6) + size
        elif (block := _apk_signing_block(data, pos)) is not None:
            pos = block
        elif sig == ZIP_END_SIG:
            return None
        else:
            return pos, "a zip record (local header, central directory, end) must begin"
    return None


def _apk_signing_block(data: bytes, pos: int) -> int | None:
    """The end of an APK Signing Block at ``pos`` (Android's v2+ signatures, between the
    last member and the central directory: its size, pairs, its size again, the magic),
    or None when there is none."""
    if pos + APK_BLOCK.size > len(data):
        return None
    (size,) = APK_BLOCK.unpack_from(data, pos)
    end = pos + APK_BLOCK.size + size
    if size < len(APK_MAGIC) + APK_BLOCK.size or end > len(data) \
            or data[end - len(APK_MAGIC) : end] != APK_MAGIC:
        return None
    return end


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
        end, broken = _decompress(data, pos, make)
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


def _pdf(data: bytes) -> Found:
    breaks = [found for found in (_pdf_xref(data), _pdf_streams(data)) if found is not None]
    return min(breaks, default=None)


def _pdf_xref(data: bytes) -> Found:
    """The last cross-reference section's first entry in use not pointing at its object."""
    found = list(PDF_STARTXREF.finditer(data, max(0, len(data) - PDF_TAIL)))
    if not found:
        return None
    xref = int(found[-1].group(1))
    if data[xref : xref + 4] != b"xref":
        if xref < len(data) and PDF_OBJECT.match(data, xref) is None:
            return xref, "startxref says a cross-reference stream object begins"
        return None
    pos = xref + 4
    while (sub := PDF_SUBSECTION.match(data, pos)) is not None:
        first, count = int(sub.group(1)), int(sub.group(2))
        pos = sub.end()
        table = data[pos : pos + count * PDF_ENTRY_BYTES]
        for i in range(count):
            entry = table[i * PDF_ENTRY_BYTES : (i + 1) * PDF_ENTRY_BYTES].split()
            if len(entry) == 3 and entry[2] == b"n" and entry[0].isdigit() and int(entry[0]):
                offset = int(entry[0])
                obj = PDF_OBJECT.match(data, offset)
                if obj is None or int(obj.group(1)) != first + i:
                    return offset, f"the cross-reference table says object {first + i} begins"
        pos += count * PDF_ENTRY_BYTES
    return None


def _zlib_header(data: bytes, pos: int) -> bool:
    """Is there a zlib header (RFC 1950: deflate, no preset dictionary, check bits) at
    ``pos``?"""
    cmf, flg = data[pos : pos + 2].ljust(2, b"\xff")
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf << 8 | flg) % 31 == 0


def _pdf_streams(data: bytes) -> Found:
    """The first stream whose direct /Length does not end at ``endstream``, or whose
    Flate data does not inflate — unless the PDF encrypts its streams itself (its
    trailer names /Encrypt; once that is gone, a stream encrypted whole by it has no
    zlib header: not judged)."""
    encrypted = PDF_ENCRYPT in data  # the standard security handler's streams: ciphertext
    for stream in PDF_STREAM.finditer(data):
        head = data[max(0, stream.start() - PDF_DICT_BYTES) : stream.start()]
        head = head[head.rfind(b"obj"):]
        length = PDF_LENGTH.search(head)
        if length is not None:
            end = stream.end() + int(length.group(1))
            if end + PDF_ENDSTREAM_SLACK > len(data):
                return None  # cut short
            if PDF_ENDSTREAM.match(data, end) is None:
                return end, "the stream's /Length says endstream follows"
        if b"/FlateDecode" in head and not encrypted and _zlib_header(data, stream.end()):
            # raw deflate after the 2-byte zlib header: readers ignore a bad Adler-32
            _, broken = _inflate(data, stream.end() + 2, -15)
            if broken is not None:
                return broken, "a Flate stream must inflate"
    return None


def _boxes(data: bytes) -> Found:
    pos = 0
    while pos + BOX.size <= len(data):
        size, kind = BOX.unpack_from(data, pos)
        if not all(0x20 <= c < 0x7F for c in kind):
            return pos, "a top-level box must begin (a type of 4 printable bytes)"
        if size == 0:
            return None
        if size == 1:
            if pos + BOX.size + BOX_LARGE.size > len(data):
                return None
            (size,) = BOX_LARGE.unpack_from(data, pos + BOX.size)
        if size < BOX.size:
            return pos, "a top-level box must begin (a size of at least 8 bytes)"
        pos += size
    return None


def _ogg_crc(reversed_: memoryview, start: int, stop: int) -> int:
    """The CRC-32 of the Ogg page at bytes ``[start, stop)`` (RFC 3533 6: polynomial
    0x04C11DB7, not reflected, initial value and final XOR 0), its CRC field taken as
    zeros, from ``reversed_``: the data with each byte's bits reversed.  This CRC is
    the bit reversal of the reflected one (zlib's, polynomial 0xEDB88320) of their bit
    reversals, from initial value 0 — zlib's from 0xFFFFFFFF, XORed with its CRC of as
    many zeros."""
    crc_at = start + OGG_CRC_OFFSET
    crc = zlib.crc32(reversed_[start:crc_at])
    crc = zlib.crc32(reversed_[crc_at + 4 : stop], zlib.crc32(XZ_PADDING, crc))
    crc ^= zlib.crc32(bytes(stop - start))
    return int(f"{crc:032b}"[::-1], 2)


def _ogg(data: bytes) -> Found:
    pos, reversed_ = 0, memoryview(data.translate(BIT_REVERSED))
    while pos + OGG_PAGE.size <= len(data):
        capture, version, *_, crc, segments = OGG_PAGE.unpack_from(data, pos)
        if capture != OGG_CAPTURE or version != 0:
            return pos, "an Ogg page must begin (capture pattern OggS, version 0)"
        table = pos + OGG_PAGE.size
        if table + segments > len(data):
            return None
        end = table + segments + sum(data[table : table + segments])
        if end > len(data):
            return None
        if _ogg_crc(reversed_, pos, end) != crc:  # the next page gone too: located there
            if end + 4 <= len(data) and data[end : end + 4] != OGG_CAPTURE:
                return end, "an Ogg page must begin (capture pattern OggS)"
            return pos, "an Ogg page's CRC-32 must match its bytes"
        pos = end
    return None


def _riff(data: bytes) -> Found:
    if len(data) < RIFF_HEADER.size:
        return None
    _, size, _ = RIFF_HEADER.unpack_from(data)
    end, pos = RIFF_CHUNK.size + size, RIFF_HEADER.size
    while pos + RIFF_CHUNK.size <= min(end, len(data)):
        chunk, size = RIFF_CHUNK.unpack_from(data, pos)
        if not all(0x20 <= c < 0x7F for c in chunk):
            return pos, "a RIFF chunk must begin (an id of 4 printable bytes)"
        if pos + RIFF_CHUNK.size + size > end:
            return pos, "a RIFF chunk must end within the RIFF size"
        pos += RIFF_CHUNK.size + size + size % 2
    return None


def _flac(data: bytes) -> Found:
    pos, limit = 4, 0
    while True:  # metadata blocks
        if pos + FLAC_BLOCK.size > len(data):
            return None
        (header,) = FLAC_BLOCK.unpack_from(data, pos)
        kind, length = header >> 24 & 0x7F, header & 0xFFFFFF
        if kind == FLAC_INVALID_BLOCK or (pos == 4 and (kind != 0 or length < 34)):
            return pos, "a FLAC metadata block must begin (STREAMINFO first)"
        if pos == 4 and pos + FLAC_BLOCK.size + FLAC_STREAMINFO.size <= len(data):
            _, largest, _, frame, rest = FLAC_STREAMINFO.unpack_from(data, pos + 4)
            channels, bits = (rest >> 41 & 7) + 1, (rest >> 36 & 31) + 1
            # the largest frame: as STREAMINFO says, or (0: unknown) verbatim samples
            limit = int.from_bytes(frame, "big") or largest * channels * bits // 8 + 64
        pos += FLAC_BLOCK.size + length
        if header >> 31:
            break
    starts = _flac_frames(data, pos)
    if pos + FLAC_FRAME.size < len(data) and (starts.size == 0 or starts[0] != pos):
        return pos, "a FLAC frame (sync code, header CRC-8) must begin after the metadata"
    # where the next frame must have begun: each frame within the largest frame size
    due = starts + limit
    late = np.flatnonzero(np.append(starts[1:], len(data)) > due)
    if late.size and due[late[0]] < len(data):
        return int(due[late[0]]), "a FLAC frame (sync code, header CRC-8) must begin " \
                                  "within the largest frame size of the one before"
    return None


def _flac_frames(data: bytes, start: int) -> np.ndarray:
    """Where frame headers (sync code, header CRC-8 checking) begin from ``start``: every
    candidate checked at once, one header byte at a time."""
    a = np.frombuffer(data + bytes(FLAC_HEADER_BYTES), np.uint8)
    at = np.flatnonzero((a[start : len(data) - 1] == 0xFF)
                        & (a[start + 1 : len(data)] & 0xFE == 0xF8)) + start
    size, rate = a[at + 2] >> 4, a[at + 2] & 0xF
    ones = FLAC_LEADING_ONES[a[at + 4]]  # the frame or sample number, UTF-8 coded
    length = 4 + np.maximum(ones, 1) + FLAC_BLOCK_SIZE_EXTRA[size] + FLAC_RATE_EXTRA[rate]
    crc = np.zeros(at.size, np.uint8)
    for k in range(FLAC_HEADER_BYTES):
        crc = np.where(k < length, FLAC_CRC8[crc ^ a[at + k]], crc)
    ok = (size != 0) & (rate != 15) & (ones != 1) & (ones <= 7) \
        & (at + length < len(data)) & (crc == a[at + length])
    return at[ok]


def _mp3(data: bytes) -> Found:
    pos = 0
    if data[:3] == b"ID3" and len(data) >= ID3V2.size:
        _, _, flags, size = ID3V2.unpack_from(data)
        pos = ID3V2.size + int.from_bytes(bytes(b & 0x7F for b in size), "big") \
            + (ID3V2_FOOTER_BYTES if flags & ID3V2_FOOTER_FLAG else 0)
        padded = NOT_ZERO.search(data, pos)  # the tag's padding, if uncounted
        pos = padded.start() if padded else len(data)
    if pos + mpegaudio.HEADER.size > len(data):
        return None
    if mpegaudio.frame_at(data, pos) is None:
        if data[pos] == 0xFF and data[pos + 1] & 0xE0 == 0xE0 and data[pos + 2] >> 4 == 0:
            return None  # a free-format stream: its headers give no lengths to chain
        return pos, "an MPEG audio frame must begin after the ID3v2 tag"
    pos = mpegaudio.stream_end(data, pos)
    if pos + mpegaudio.HEADER.size > len(data) or data.startswith(MP3_TRAILERS, pos):
        return None
    return pos, "an MPEG audio frame (of the stream's version, layer and rate) must begin " \
                "where the one before ends"


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


def _ebml_number(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """The EBML variable-length number at ``pos`` (its first byte's leading zeros give
    its length): ``(value, length in bytes)``, the marker bit kept for an ID; a size of
    all ones is -1 (unknown); None if invalid or past the data."""
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 9 - data[pos].bit_length()
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos : pos + length], "big")
    if keep_marker:
        return value, length
    value &= (1 << 7 * length) - 1
    return (-1 if value == (1 << 7 * length) - 1 else value), length


def _ebml_element(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """``(ID, where its data begins, its size or -1)`` of the element at ``pos``; None if
    its header is not EBML (or the data ends inside it)."""
    found = _ebml_number(data, pos, keep_marker=True)
    if found is None or found[1] > 4:  # IDs are 1 to 4 bytes long
        return None
    ident, id_length = found
    size = _ebml_number(data, pos + id_length, keep_marker=False)
    if size is None:
        return None
    return ident, pos + id_length + size[1], size[0]


def _matroska(data: bytes) -> Found:
    head = _ebml_element(data, 0)
    if head is None or head[0] != EBML_HEADER or head[2] < 0:
        return None
    pos = head[1] + head[2]
    segment = _ebml_element(data, pos)
    if segment is None or segment[0] != MKV_SEGMENT:
        return None if pos + 12 > len(data) else (pos, "the Matroska segment must begin")
    end = len(data) if segment[2] < 0 else min(len(data), segment[1] + segment[2])
    return _ebml_children(data, segment[1], end, MKV_SEGMENT_CHILDREN, "segment")[0]


#: the IDs that end a cluster of unknown size: the next element of the segment's level
MKV_CLUSTER_END = MKV_SEGMENT_CHILDREN - {EBML_VOID, EBML_CRC32}


def _ebml_children(data: bytes, pos: int, end: int, allowed: frozenset[int],
                   parent: str, stop: frozenset[int] = frozenset()) -> tuple[Found, int]:
    """Check that the elements from ``pos`` to ``end`` chain, each one of ``allowed`` (a
    cluster's own elements checked too): the first break (or None), and where the walk
    stopped — at ``end``, or at an element of ``stop`` (which ends a parent of unknown
    size)."""
    while pos < end:
        element = _ebml_element(data, pos)
        if element is None:
            if pos + 12 > len(data):  # a header cut off where the data ends
                return None, len(data)
            return (pos, f"an element of the Matroska {parent} must begin (an EBML ID "
                         "and size)"), pos
        ident, start, size = element
        if ident in stop:
            return None, pos
        if ident not in allowed:
            return (pos, f"an element of the Matroska {parent} must begin (an ID it may "
                         "hold)"), pos
        if size < 0 and ident != MKV_CLUSTER:
            return (pos, f"an element of the Matroska {parent} must have a size"), pos
        stop_at = end if size < 0 else start + size
        if stop_at > end and end < len(data):
            return (pos, f"an element of the Matroska {parent} must end within it"), pos
        if ident == MKV_CLUSTER:
            found, stop_at = _ebml_children(data, start, min(stop_at, len(data)),
                                            MKV_CLUSTER_CHILDREN, "cluster",
                                            MKV_CLUSTER_END if size < 0 else frozenset())
            if found is not None:
                return found, pos
        pos = stop_at
    return None, pos


def _sevenzip(data: bytes) -> Found:
    if len(data) < SEVENZIP.size:
        return None
    *_, start_crc, offset, size, end_crc = SEVENZIP.unpack_from(data)
    if zlib.crc32(data[SEVENZIP_START_HEADER]) != start_crc:
        return SEVENZIP_START_HEADER.start, "the 7z start header must match its CRC-32"
    at = SEVENZIP.size + offset
    if at + size > len(data) or not size:
        return None
    if zlib.crc32(data[at : at + size]) != end_crc and data[at] not in SEVENZIP_HEADER_IDS:
        return at, "the 7z end header must begin (a header ID) and match the CRC-32 the " \
                   "start header gives"
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
        _, failed = _inflate(piece, 0, 15)
        found = None if failed is None else (failed, "a strip's Deflate stream must inflate")
    else:
        return None
    return None if found is None else (offset + found[0], found[1])


def _rar(data: bytes) -> Found:
    if data.startswith(RAR5_SIGNATURE):
        return _rar5(data, len(RAR5_SIGNATURE))
    return _rar4(data, len(RAR4_SIGNATURE))


def _vint(data: bytes, pos: int) -> tuple[int, int] | None:
    """RAR 5's variable-length integer at ``pos`` (7 bits a byte, low first, the top bit
    set on all but the last): ``(value, where it ends)``; None past the data."""
    value, shift = 0, 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
    return None


def _rar5(data: bytes, pos: int) -> Found:
    rule = "a RAR block must begin (a header of a known type, its size and CRC-32 right)"
    while pos + RAR5_CRC.size < len(data):
        (crc,) = RAR5_CRC.unpack_from(data, pos)
        size = _vint(data, pos + RAR5_CRC.size)
        if size is None:
            return None
        length, body = size
        if length > RAR5_MAX_HEADER:
            return pos, rule
        fields = _vints(data, body, 2)
        if fields is None:
            return None
        (kind, flags), at = fields
        header = kind in RAR5_TYPES and not flags & ~RAR5_FLAGS
        if body + length > len(data):  # cut short, unless no header begins here
            return None if header else (pos, rule)
        if zlib.crc32(data[pos + RAR5_CRC.size : body + length]) != crc:
            return None if header else (pos, rule)  # a header damaged, or random bytes
        if kind in (RAR5_ENCRYPTION, RAR5_END):
            return None
        sizes = _vints(data, at, bin(flags & (RAR5_EXTRA_AREA | RAR5_DATA_AREA)).count("1"))
        if sizes is None:
            return None
        pos = body + length + (sizes[0][-1] if flags & RAR5_DATA_AREA else 0)
    return None


def _vints(data: bytes, pos: int, count: int) -> tuple[list[int], int] | None:
    """``count`` RAR 5 vints from ``pos`` and where they end; None past the data."""
    values = []
    for _ in range(count):
        found = _vint(data, pos)
        if found is None:
            return None
        values.append(found[0])
        pos = found[1]
    return values, pos


def _rar4(data: bytes, pos: int) -> Found:
    while pos + RAR4_BLOCK.size <= len(data):
        crc, kind, flags, size = RAR4_BLOCK.unpack_from(data, pos)
        if size < RAR4_BLOCK.size or pos + size > len(data):
            return None if pos + size > len(data) and kind in RAR4_TYPES else \
                (pos, "a RAR block must begin (a header of a known type and size)")
        if zlib.crc32(data[pos + 2 : pos + size]) & 0xFFFF != crc:
            if kind in RAR4_TYPES:
                return None  # a header damaged, not random: not evidence either way
            return pos, "a RAR block must begin (a header of a known type matching its CRC)"
        if kind == RAR4_END or (kind == RAR4_MAIN and flags & RAR4_HEADERS_ENCRYPTED):
            return None
        added = 0
        if flags & RAR4_HAS_DATA and size >= RAR4_BLOCK.size + RAR4_ADD_SIZE.size:
            (added,) = RAR4_ADD_SIZE.unpack_from(data, pos + RAR4_BLOCK.size)
            if kind in (RAR4_FILE, RAR4_SERVICE) and flags & RAR4_LARGE \
                    and size >= RAR4_HIGH_OFFSET + RAR4_ADD_SIZE.size:
                added |= RAR4_ADD_SIZE.unpack_from(data, pos + RAR4_HIGH_OFFSET)[0] << 32
        pos += size + added
    return None


#: format (an :data:`~blockforensics.evidence.SIGNATURES` name) -> its structural test:
#: (byte offset, what the format requires there) of the first break, or None
CHECKS: dict[str, Callable[[bytes], Found]] = {
    "jpeg": _jpeg, "png": _png, "zip": _zip, "pdf": _pdf, "mp4": _boxes, "ogg": _ogg,
    "riff": _riff, "flac": _flac, "mp3": _mp3, "gif": _gif, "matroska": _matroska,
    "7z": _sevenzip, "rar": _rar, "tiff": _tiff,
    **{fmt: functools.partial(_streams, fmt) for fmt in STREAMS}}

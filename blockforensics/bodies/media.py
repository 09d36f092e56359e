"""Body checks of audio and video: ISO BMFF (MP4, MOV, HEIC), Ogg (RFC 3533), RIFF (WAV,
WebP, AVI), FLAC, MP3 (MPEG audio) and Matroska/WebM (EBML)."""

from __future__ import annotations

import functools
import re
import struct
import zlib
from collections.abc import Callable

import numpy as np

from blockforensics import mpegaudio
from blockforensics.bodies.base import Found

#: an ISO BMFF box's start: size (bytes, 1: a 64-bit size follows, 0: to the end), type
BOX = struct.Struct(">I4s")
BOX_LARGE = struct.Struct(">Q")
#: an Ogg page's header (RFC 3533 6): capture pattern, version, header type, granule
#: position, serial number, page sequence number, CRC-32, number of segments (then the
#: segment table: each segment's length in bytes)
OGG_PAGE = struct.Struct("<4sBBqIIIB")
OGG_CAPTURE, OGG_CRC_OFFSET = b"OggS", 22
#: the CRC field as the CRC is computed over it
OGG_CRC_FIELD_ZEROED = bytes(4)
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
#: ID3v2 (id3.org, v2.3/2.4): "ID3", version (2 bytes), flags, size of what follows the
#: 10-byte header (and the footer, flag 0x10, 10 bytes more), 4 bytes of 7 bits each
ID3V2 = struct.Struct(">3sHB4s")
ID3V2_FOOTER_FLAG, ID3V2_FOOTER_BYTES = 0x10, 10
#: what may follow an MP3's last frame: ID3v1 ("TAG"), APEv2, Lyrics3, an appended ID3v2
MP3_TRAILERS = (b"TAG", b"APETAGEX", b"LYRICS", b"ID3")
NOT_ZERO = re.compile(rb"[^\x00]")
#: EBML (RFC 8794) and Matroska (RFC 9559) element IDs: the EBML header, the segment,
#: those a segment holds (level 1) and those a cluster holds, with the two allowed anywhere
EBML_HEADER, EBML_VOID, EBML_CRC32 = 0x1A45DFA3, 0xEC, 0xBF
MKV_SEGMENT, MKV_CLUSTER = 0x18538067, 0x1F43B675
MKV_SEGMENT_CHILDREN = frozenset({0x114D9B74, 0x1549A966, 0x1654AE6B, MKV_CLUSTER, 0x1C53BB6B,
                                  0x1941A469, 0x1043A770, 0x1254C367, EBML_VOID, EBML_CRC32})
MKV_CLUSTER_CHILDREN = frozenset({0xE7, 0x5854, 0xA7, 0xAB, 0xA3, 0xA0, 0xAF, EBML_VOID,
                                  EBML_CRC32})


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
    crc = zlib.crc32(reversed_[crc_at + 4 : stop], zlib.crc32(OGG_CRC_FIELD_ZEROED, crc))
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


#: format -> its check
CHECKS: dict[str, Callable[[bytes], Found]] = {
    "mp4": _boxes, "ogg": _ogg, "riff": _riff, "flac": _flac, "mp3": _mp3,
    "matroska": _matroska}

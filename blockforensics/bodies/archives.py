"""Body checks of archives: zip (APPNOTE; docx, jar, apk...), 7z and RAR (4 and 5)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from blockforensics.bodies.base import Found, inflate

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
#: 7z's signature header: signature, version (major, minor), CRC-32 of the start header
#: (the 20 bytes after it): the end header's offset from byte 32, its size, its CRC-32
SEVENZIP = struct.Struct("<6sBBIQQI")
SEVENZIP_START_HEADER = slice(12, 32)
#: the end header's first byte: kHeader, or kEncodedHeader (the header packed as a stream)
SEVENZIP_HEADER_IDS = (0x01, 0x17)
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
        end, broken = inflate(data, start, -15)
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


#: format -> its check
CHECKS: dict[str, Callable[[bytes], Found]] = {"zip": _zip, "7z": _sevenzip, "rar": _rar}

"""The body check of a PDF (ISO 32000-1): the classic cross-reference table's offsets and
the Flate streams."""

from __future__ import annotations

import re
from collections.abc import Callable

from blockforensics.bodies.base import Found, inflate

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
            _, broken = inflate(data, stream.end() + 2, -15)
            if broken is not None:
                return broken, "a Flate stream must inflate"
    return None


#: format -> its check
CHECKS: dict[str, Callable[[bytes], Found]] = {"pdf": _pdf}

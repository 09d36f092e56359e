"""Does a file's body keep the structure its header promises?

Ransomware that keeps a file's first bytes and encrypts the rest (from an offset, or in
stripes) leaves a JPEG's, zip's or PDF's signature in place; their bodies are random
already, so entropy alone cannot tell.  Each format has a cheap structural test its own
specification makes, which random bytes fail within a few hundred bytes — one module per
family (:mod:`~blockforensics.bodies.images`, :mod:`~blockforensics.bodies.archives`,
:mod:`~blockforensics.bodies.streams`, :mod:`~blockforensics.bodies.pdf`,
:mod:`~blockforensics.bodies.media`), each registering its checks in its ``CHECKS``:

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blockforensics.bodies import archives, images, media, pdf, streams
from blockforensics.bodies.base import Found
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



#: format (an :data:`~blockforensics.evidence.SIGNATURES` name) -> its structural test:
#: (byte offset, what the format requires there) of the first break, or None
CHECKS: dict[str, Callable[[bytes], Found]] = {
    **images.CHECKS, **archives.CHECKS, **streams.CHECKS, **pdf.CHECKS, **media.CHECKS}

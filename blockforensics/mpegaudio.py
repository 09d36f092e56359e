"""MPEG audio frames (ISO/IEC 11172-3, 13818-3 and the MPEG 2.5 extension): what an MP3
(or MP2) stream is made of, back to back — a 4-byte header giving the frame's length in
bytes, then its data.  A stream is told by its frames chaining: a header where the one
before ends, with the same version, layer and sampling rate.

The header, big-endian, from its first bit: sync (11 bits, all ones), version (2: 00
MPEG 2.5, 01 reserved, 10 MPEG 2, 11 MPEG 1), layer (2: 01 III, 10 II, 11 I, 00
reserved), protection (1), bitrate index (4: 0 free format, 15 invalid), sampling rate
index (2: 3 reserved), padding (1), private (1), channel mode (2), mode extension (2),
copyright (1), original (1), emphasis (2: 10 reserved).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">I")
VERSIONS = {0b00: "2.5", 0b10: "2", 0b11: "1"}
LAYERS = {0b01: 3, 0b10: 2, 0b11: 1}
#: kbit/s by (MPEG 1 or not, layer), for bitrate indexes 1-14
BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
#: Hz by version, for sampling rate indexes 0-2
SAMPLE_RATES = {"1": (44100, 48000, 32000), "2": (22050, 24000, 16000),
                "2.5": (11025, 12000, 8000)}
EMPHASIS_RESERVED = 0b10
#: frames that must chain from the start for a content to be taken as MPEG audio
FRAMES_TO_TELL = 3


@dataclass(frozen=True)
class Frame:
    """One frame's header: what must stay the same along a stream, and its length."""

    version: str
    layer: int
    sample_rate: int  # Hz
    length: int  # bytes, header included

    def continues(self, other: Frame) -> bool:
        """Whether ``other`` can follow this frame in one stream."""
        return (self.version, self.layer, self.sample_rate) == \
            (other.version, other.layer, other.sample_rate)


def frame_at(data: bytes, pos: int) -> Frame | None:
    """The frame whose header is at byte ``pos``; None if there is none (or a free-format
    frame, whose length its header does not give)."""
    if pos + HEADER.size > len(data):
        return None
    (header,) = HEADER.unpack_from(data, pos)
    version = VERSIONS.get(header >> 19 & 3)
    layer = LAYERS.get(header >> 17 & 3)
    bitrate_index, rate_index = header >> 12 & 15, header >> 10 & 3
    if header >> 21 != 0x7FF or version is None or layer is None or bitrate_index in (0, 15) \
            or rate_index == 3 or header & 3 == EMPHASIS_RESERVED:
        return None
    mpeg1 = version == "1"
    bitrate = BITRATES[mpeg1, layer][bitrate_index - 1] * 1000
    rate = SAMPLE_RATES[version][rate_index]
    padding = header >> 9 & 1
    if layer == 1:  # 384 samples, in 4-byte slots
        length = (12 * bitrate // rate + padding) * 4
    else:  # 1152 samples (576 for layer III of MPEG 2 and 2.5), in bytes
        samples = 576 if layer == 3 and not mpeg1 else 1152
        length = samples // 8 * bitrate // rate + padding
    return Frame(version, layer, rate, length)


@functools.cache
def lengths() -> list[int]:
    """Frame length in bytes by a header's 2nd and 3rd bytes (sync end, version, layer,
    protection; bitrate, sampling rate, padding, private): 0 where there is no frame."""
    sync_end = 0xE000  # the 3 sync bits of the 2nd byte
    table = [0] * sync_end
    for middle in range(sync_end, 1 << 16):
        frame = frame_at(bytes([0xFF, middle >> 8, middle & 0xFF, 0]), 0)
        table.append(frame.length if frame is not None else 0)
    return table


#: the bits of a header's 2nd and 3rd bytes a stream keeps: version, layer, sampling rate
STREAM_BITS = 0x1E0C


def stream_end(data: bytes, pos: int) -> int:
    """Where the frames chaining from a frame at byte ``pos`` stop: at the first byte
    that is not a header of a frame of the same stream, or past the data's end."""
    (first,) = struct.unpack_from(">H", data, pos + 1)
    stream, table, end = first & STREAM_BITS, lengths(), len(data) - HEADER.size
    while pos <= end:
        middle = data[pos + 1] << 8 | data[pos + 2]
        length = table[middle]
        if data[pos] != 0xFF or not length or middle & STREAM_BITS != stream \
                or data[pos + 3] & 3 == EMPHASIS_RESERVED:
            return pos
        pos += length
    return pos


def starts_stream(data: bytes, pos: int = 0, frames: int = FRAMES_TO_TELL) -> bool:
    """Whether ``frames`` frames chain from byte ``pos`` (or up to the data's end)."""
    first = frame_at(data, pos)
    if first is None:
        return False
    at = pos
    for _ in range(frames):
        if at + HEADER.size > len(data):
            return True  # the data ends first
        frame = frame_at(data, at)
        if frame is None or not first.continues(frame):
            return False
        at += frame.length
    return True

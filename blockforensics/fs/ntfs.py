"""NTFS facts the file listing needs beyond what The Sleuth Kit's Python binding gives.

- **Compressed ``$DATA``** (the ``compression`` attribute, LZNT1): the data runs hold
  compression units of :data:`UNIT_CLUSTERS` clusters.  A unit whose clusters are all
  allocated is stored as is; one with fewer allocated clusters (the rest sparse) holds
  its LZNT1-compressed bytes in them; one with none is a hole.  The unit is
  ``2 ** compression_unit`` clusters from the attribute header; Windows and ntfs-3g
  write 4 (and compress only with clusters up to 4 KiB), and pytsk3 does not expose
  the field, so 16 clusters is taken ([MS-FSCC] 2.4 compressed files; [MS-XCA] 2.5
  LZNT1, decoded in ``_native.c``).  :func:`compressed_content` yields a file's content
  unit by unit.
- **Interix symbolic links**, as ntfs-3g writes them: a file with the system attribute
  whose content is ``IntxLNK\\x01`` followed by the target in UTF-16LE
  (:func:`interix_target`).
- **Reparse points** (``$REPARSE_POINT``, attribute type 0xC0): a Windows symbolic link
  (tag ``IO_REPARSE_TAG_SYMLINK``) or a junction (``IO_REPARSE_TAG_MOUNT_POINT``)
  names its target in a substitute and a print name ([MS-FSCC] 2.1.2);
  :func:`reparse_target` reads the print name (the substitute one when it is empty).

Units: bytes unless said.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from blockforensics.formats.base import Disk

#: clusters in a compression unit (attribute header's compression unit: 4, as 2**4)
UNIT_CLUSTERS = 16
#: $STANDARD_INFORMATION's file attribute flags (at byte 32): system; reparse point
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
#: $FILE_NAME: the name's length (UTF-16 units), its namespace, the name (UTF-16LE);
#: the 8.3 short name's namespace (DOS)
FILE_NAME_LENGTH = 0x40
FILE_NAME_NAMESPACE = 0x41
FILE_NAME_NAME = 0x42
#: $FILE_NAME: byte offsets of its times (FILETIME), as in $STANDARD_INFORMATION
FILE_NAME_TIMES = {"crtime": 0x08, "mtime": 0x10, "ctime": 0x18, "atime": 0x20}
NAMESPACE_DOS = 2
#: the content of an Interix symbolic link begins with this
INTERIX_SYMLINK = b"IntxLNK\x01"
#: reparse tags whose data names a target: junction (mount point), symbolic link
IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
IO_REPARSE_TAG_SYMLINK = 0xA000000C
#: REPARSE_DATA_BUFFER: tag, data length, reserved; then substitute name offset and
#: length, print name offset and length (bytes, from the path buffer)
REPARSE_HEADER = struct.Struct("<IHH")
REPARSE_NAMES = struct.Struct("<HHHH")
#: a symbolic link's buffer has 4 bytes of flags before its path buffer
SYMLINK_FLAGS_BYTES = 4


def _lznt1(raw: bytes, unit: int) -> bytes:
    """One compression unit's LZNT1 bytes decompressed (at most ``unit`` bytes): by the C
    extension, where a damaged unit yields what comes before its first malformed chunk
    or token; without it by dissect.util, where a damaged unit yields nothing."""
    from blockforensics import batch

    if batch.native is not None:
        out = bytearray(unit)
        return bytes(out[: batch.native.lznt1_decompress(raw, out)])
    from dissect.util.compression import lznt1

    try:
        return bytes(lznt1.decompress(raw)[:unit])
    except Exception:  # dissect raises struct's errors, TypeError and its own
        return b""


def compressed_content(disk: Disk, extents: np.ndarray, offsets: np.ndarray, unit: int,
                       size: int) -> Iterator[bytes]:
    """The content of a compressed attribute, unit by unit, holes (units with no
    allocated cluster) left out as for any sparse file; ``extents``: ``(k, 2)`` disk
    byte ranges of its allocated clusters in file order, ``offsets``: each one's byte
    offset in the file, ``unit``: the compression unit in bytes, ``size``: the file's."""
    extents, offsets = _split(extents, offsets, unit)
    which = offsets // unit
    starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])
    for lo, hi in zip(starts, [*starts[1:], len(which)]):
        first = int(which[lo]) * unit
        if first >= size:
            break
        raw = b"".join(disk.read(int(a), int(b - a)) for a, b in extents[lo:hi].tolist())
        want = min(unit, size - first)
        data = (raw if len(raw) >= unit else _lznt1(raw, unit))[:want]
        yield data + bytes(want - len(data))  # a unit's last chunks may be left out: zeros


def _split(extents: np.ndarray, offsets: np.ndarray, unit: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Disk byte ranges (and their offsets in the file) cut where compression units
    end: The Sleuth Kit joins adjacent runs of several units into one."""
    lengths = extents[:, 1] - extents[:, 0]
    first, last = offsets // unit, (offsets + lengths - 1) // unit
    counts = (last - first + 1).clip(min=0)
    row = np.repeat(np.arange(len(extents)), counts)
    cu = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + first[row]
    lo = np.maximum(offsets[row], cu * unit)
    hi = np.minimum(offsets[row] + lengths[row], (cu + 1) * unit)
    start = extents[row, 0] + lo - offsets[row]
    return np.stack([start, start + hi - lo], axis=1), lo


def interix_target(content: bytes) -> bytes | None:
    """The target of an Interix symbolic link (UTF-8), or None if ``content`` is none."""
    if not content.startswith(INTERIX_SYMLINK) or len(content) % 2:
        return None
    return content[len(INTERIX_SYMLINK):].decode("utf-16-le", "replace").encode()


def reparse_target(data: bytes) -> bytes | None:
    """The target (UTF-8) named by a junction's or a symbolic link's reparse data, or
    None for any other reparse point (deduplication, OneDrive, WOF ...)."""
    if len(data) < REPARSE_HEADER.size + REPARSE_NAMES.size:
        return None
    tag, length, _ = REPARSE_HEADER.unpack_from(data)
    if tag not in (IO_REPARSE_TAG_MOUNT_POINT, IO_REPARSE_TAG_SYMLINK):
        return None
    sub_at, sub_len, print_at, print_len = REPARSE_NAMES.unpack_from(data, REPARSE_HEADER.size)
    base = REPARSE_HEADER.size + REPARSE_NAMES.size + (
        SYMLINK_FLAGS_BYTES if tag == IO_REPARSE_TAG_SYMLINK else 0)
    at, n = (print_at, print_len) if print_len else (sub_at, sub_len)
    name = data[base + at : base + at + n]
    if not name or base + at + n > REPARSE_HEADER.size + length:
        return None
    return name.decode("utf-16-le", "replace").encode()

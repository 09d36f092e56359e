"""On-disk structures declared once, by the specification's field table.

A :class:`Structure` is built from rows ``(offset, code, name)`` exactly as a
specification lists them (offset in bytes from the structure's start, a
:mod:`struct` code, the spec's field name).  Gaps between declared fields are
skipped, so only the fields a reader needs are declared, each at its documented
offset.  One declaration serves both a single record (``parse`` -> a named
tuple read by field name) and an array of records (``parse_array`` -> a numpy
structured array, one column per field), which keeps per-group or per-entry
tables vectorised.  Structures are little-endian, as FAT, MBR and ext are, unless
declared big-endian (``byteorder=">"``: the ext3/4 journal, jbd2).
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any

import numpy as np

from blockforensics.errors import FormatError

_NUMPY_CODES = {"B": "u1", "H": "u2", "I": "u4", "Q": "u8"}


class Structure:
    """A record of ``size`` bytes with named fields at fixed offsets, little-endian
    unless ``byteorder`` is ``">"``."""

    def __init__(self, name: str, size: int, rows: list[tuple[int, str, str]],
                 byteorder: str = "<"):
        self.name = name
        self.size = size
        fmt, end = byteorder, 0
        for offset, code, field in rows:
            if offset < end:
                raise ValueError(f"{name}.{field}: offset {offset:#x} overlaps the previous field")
            fmt += f"{offset - end}x{code}" if offset > end else code
            end = offset + struct.calcsize("<" + code)
        if end > size:
            raise ValueError(f"{name}: fields end at {end:#x}, past the size {size:#x}")
        self._struct = struct.Struct(fmt)
        self._record: type[Any] = namedtuple(name, [field for _, _, field in rows])  # type: ignore[misc]
        self._columns: dict[str, Any] = {
            "names": [field for _, _, field in rows],
            "formats": [byteorder + _NUMPY_CODES[code] if code in _NUMPY_CODES
                        else f"S{code[:-1]}" for _, code, _ in rows],
            "offsets": [offset for offset, _, _ in rows],
        }

    def parse(self, data: bytes, offset: int = 0) -> Any:
        """One record from ``data[offset:]``, fields read by name; FormatError when short."""
        if len(data) < offset + self.size:
            raise FormatError(f"truncated {self.name}: {len(data) - offset} of {self.size} bytes")
        return self._record._make(self._struct.unpack_from(data, offset))

    def pack(self, *values: int | bytes) -> bytes:
        """One record of the fields' ``values`` in declaration order (gaps zero)."""
        data = self._struct.pack(*values)
        return data + bytes(self.size - len(data))

    def parse_array(self, data: bytes, count: int, stride: int | None = None) -> np.ndarray:
        """``count`` records, one every ``stride`` bytes (default ``size``), as a numpy array."""
        stride = self.size if stride is None else stride
        if stride < self.size:
            raise FormatError(f"{self.name} records of {stride} bytes are shorter than {self.size}")
        if len(data) < stride * count:
            raise FormatError(f"truncated {self.name} table: {count} records do not fit")
        columns = self._columns
        dtype = np.dtype({"names": columns["names"], "formats": columns["formats"],
                          "offsets": columns["offsets"], "itemsize": stride})
        return np.frombuffer(data, dtype=dtype, count=count)

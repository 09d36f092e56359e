"""On-disk records of image formats, declared once as dataclasses whose fields carry
their struct codes in the specification's order, packed and unpacked by name.

Hypervisor formats mix byte orders (VHD and qcow2 are big-endian, VHDX and VMDK
little-endian): a record class says its own in ``_ORDER``.  ``_TAIL`` is trailing
reserved padding (a struct code such as ``"427x"``).
"""

from __future__ import annotations

import dataclasses
import struct
from functools import cache
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


def f(fmt: str) -> Any:
    """A record field of struct code ``fmt`` (use as ``name: int = f("I")``)."""
    return dataclasses.field(metadata={"fmt": fmt})


class Record:
    """Base of the records: ``pack``/``unpack`` by the fields' struct codes."""

    _ORDER: ClassVar[str] = ">"
    _TAIL: ClassVar[str] = ""

    @classmethod
    @cache
    def _struct(cls) -> struct.Struct:
        codes = "".join(fl.metadata["fmt"] for fl in dataclasses.fields(cls))  # type: ignore[arg-type]
        return struct.Struct(cls._ORDER + codes + cls._TAIL)

    @classmethod
    def packed_size(cls) -> int:
        """Bytes of the packed record."""
        return cls._struct().size

    def pack(self) -> bytes:
        return self._struct().pack(*dataclasses.astuple(self))  # type: ignore[call-overload]

    @classmethod
    def unpack(cls: type[R], buf: bytes, offset: int = 0) -> R:
        return cls(*cls._struct().unpack_from(buf, offset))

    def replace(self: R, **changes: object) -> R:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

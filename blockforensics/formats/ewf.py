"""EWF (Expert Witness Format: EnCase's ``.E01``, ``.Ex01``) images as sources.

Read with libewf (Joachim Metz's reference implementation, through its Python
binding ``pyewf``): the first segment's path is given, the others (``.E02`` …,
``.EAA`` … past ``.E99``) are found beside it by libewf's own glob.  The disk's
size is the media size in the EWF header; the chunks are decompressed and checked
(Adler-32) by libewf.  libewf does not say which chunks are sparse or empty without
reading them, so every block is present (a backup's survey and its zero-block test
still leave out what holds nothing).

The acquisition's stored hashes (MD5, SHA-1 when written) are kept in
:attr:`EwfDisk.hashes`, and shown in the disk's ``repr``.  Between
:meth:`EwfDisk.start_hashing` and :meth:`EwfDisk.finish_hashing` the medium is
hashed in order as it is read, what reads skip read for the hashes alone: a backup
checks the stored hashes against the whole medium while reading it once (see
:mod:`blockforensics.image.sources`).  pyewf reads a chunk whose checksum fails as
zeros, without an error: only that check finds it.  L01/Lx01 (logical
evidence: files, not a disk) are refused by name, by the raw catch-all (see
:func:`~blockforensics.formats.signature.container`) and here when forced.

Units: sizes and offsets are bytes.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk, Format, InPlaceDisk
from blockforensics.formats.signature import (
    EWF_LOGICAL_SIGNATURES,
    EWF_SIGNATURES,
    LOGICAL_EVIDENCE,
    is_ewf,
)

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource

#: bytes of an EWF1 section descriptor, the last thing in every segment file (its type
#: first: ``next`` in all but the last segment, ``done`` in that one)
SECTION_DESCRIPTOR = 76
#: the hashes an acquisition may store, by libewf's names
HASH_NAMES = ("MD5", "SHA1", "SHA256")


#: libewf's hash names -> hashlib's
HASHLIB_NAMES = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256"}
#: bytes read at a time to hash what a backup leaves unread
HASH_STEP = 4 << 20


def _one_line(exc: BaseException) -> str:
    """libewf's error, a chain of ``function: what failed.`` from the binding's own down
    to the outermost of libewf's, as one short line: the cause just under libewf's
    outermost (``unable to read segment files``, ``unable to retrieve chunk data for
    offset: 0``), without the function names."""
    parts = [part.strip().rstrip(".") for part in str(exc).replace("\n", " ").split(". ")]
    causes = [part.partition(": ")[2] or part for part in parts if part]
    if not causes:
        return type(exc).__name__
    return causes[-2] if len(causes) > 2 else causes[-1]


def _pyewf() -> Any:
    try:
        import pyewf
    except ImportError:
        raise UsageError("reading EWF (E01) images needs libewf's Python binding: "
                         "pip install libewf-python") from None
    return pyewf


class EwfDisk(InPlaceDisk):
    """An EWF image (all its segments) read through libewf."""

    def __init__(self, path: str | os.PathLike[str], block_size: int = 4096):
        pyewf = _pyewf()
        self.path = os.fspath(path)
        self.block_size = block_size
        try:
            self.segments: list[str] = list(pyewf.glob(self.path))
        except (OSError, TypeError, ValueError) as exc:
            raise FormatError(f"{self.path}: its EWF segment files are not found "
                              f"({_one_line(exc)})") from None
        self._check_last_segment()
        handle = pyewf.handle()
        try:
            handle.open(self.segments)
        except (OSError, TypeError, ValueError) as exc:
            raise FormatError(f"{self.path}: not a readable EWF image ({_one_line(exc)}; "
                              f"segments: {', '.join(map(os.path.basename, self.segments))})"
                              ) from None
        self._handle: Any = handle
        self._hashers: dict[str, Any] | None = None  # see start_hashing
        self._hashed_to = 0  # bytes of the medium hashed, from its start
        self.size = int(handle.get_media_size())
        #: hashes stored by the acquisition, e.g. ``{"MD5": "1a2b…"}`` (lower-case hex)
        self.hashes: dict[str, str] = {}
        for name in HASH_NAMES:
            try:
                value = handle.get_hash_value(name)
            except (OSError, KeyError, ValueError):
                value = None
            if value:
                self.hashes[name] = str(value).lower()

    def _check_last_segment(self) -> None:
        """FormatError when the last EWF1 segment found is not the last one written (its
        closing section is ``next``: a following segment expected, not ``done``) or is cut
        off (neither: every writer closes its segments with one of them)."""
        last = self.segments[-1] if self.segments else self.path
        try:
            with open(last, "rb") as fh:
                if not fh.read(8).startswith(EWF_SIGNATURES[0]):
                    return  # EWF2 (Ex01) closes its segments otherwise: libewf checks them
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - SECTION_DESCRIPTOR))
                closing = fh.read(16).rstrip(b"\0")
        except OSError as exc:
            raise FormatError(f"{last}: cannot read ({exc.strerror})") from None
        if closing == b"next":
            names = ", ".join(map(os.path.basename, self.segments))
            raise FormatError(f"{self.path}: the EWF segment file after {os.path.basename(last)} "
                              f"is missing (segments found: {names})")
        if closing != b"done":
            raise FormatError(f"{last}: ends without its closing section (done or next): a "
                              "truncated or damaged EWF segment file (ewfverify tells more)")

    def _read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the medium at byte ``offset`` (inside it), hashed when they
        extend what :meth:`start_hashing` has hashed (a gap before them read first)."""
        if self._hashers is not None and offset > self._hashed_to:
            self._hash_to(offset)
        try:
            data = self._handle.read_buffer_at_offset(length, offset)
        except (OSError, ValueError) as exc:
            raise FormatError(f"{self.path}: {length} bytes at byte {offset} do not "
                              f"read ({_one_line(exc)})") from None
        if len(data) != length:
            raise FormatError(f"{self.path}: {length} bytes at byte {offset} read as "
                              f"{len(data)}: a truncated or damaged EWF image")
        if self._hashers is not None and offset + length > self._hashed_to:
            new = memoryview(data)[self._hashed_to - offset :]
            for hasher in self._hashers.values():
                hasher.update(new)
            self._hashed_to = offset + length
        return data

    def _hash_to(self, end: int) -> None:
        """Hash the medium from where hashing stands up to byte ``end``."""
        while self._hashed_to < end:
            self._read(self._hashed_to, min(HASH_STEP, end - self._hashed_to))

    def start_hashing(self) -> None:
        """Hash the medium with each stored hash's algorithm as it is read from now on,
        from byte 0: what reads skip is read for the hashes when a later read passes it
        (and by :meth:`finish_hashing`), so a backup reads it in order once."""
        self._hashers = {name: hashlib.new(HASHLIB_NAMES[name]) for name in self.hashes}
        self._hashed_to = 0

    def finish_hashing(self) -> dict[str, str]:
        """The hashes of the whole medium as read (lower-case hex, by the names of
        :attr:`hashes`), reading what was not read since :meth:`start_hashing`.  A
        chunk libewf finds damaged (its checksum wrong) reads as zeros and so shows as
        a mismatch with the stored hash."""
        if self._hashers is None:
            raise RuntimeError("start_hashing was not called")
        self._hash_to(self.size)
        found = {name: hasher.hexdigest() for name, hasher in self._hashers.items()}
        self._hashers = None
        return found

    def read_blocks_into(self, start: int, out: np.ndarray) -> None:
        flat = out.reshape(-1)
        offset = start * self.block_size
        length = max(0, min(len(flat), self.size - offset))
        if length:
            flat[:length] = np.frombuffer(self._read(offset, length), dtype=np.uint8)
        flat[length:] = 0

    def __repr__(self) -> str:
        stored = "".join(f", {name} {value}" for name, value in self.hashes.items())
        return (f"EwfDisk({self.size} B = {self.n_blocks} blocks × {self.block_size} B "
                f"{self.path}, {len(self.segments)} segments{stored})")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class EwfFormat(Format):
    """EnCase EWF images (E01, Ex01), split into segment files or not."""

    name: ClassVar[str] = "ewf"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return is_ewf(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        if point not in (None, 0, "0", -1, "-1"):
            raise UsageError(f"{path}: a disk image has a single point (0)")
        with open(path, "rb") as fh:
            if fh.read(8).startswith(EWF_LOGICAL_SIGNATURES):
                kind, todo = LOGICAL_EVIDENCE
                raise UsageError(f"{path}: {kind}, not a disk image: {todo}")
        return EwfDisk(path)

"""Reader plugins for other hypervisors' disk images, through dissect.hypervisor.

VHDX (Hyper-V, differencing ones by their parent locator), VMDK (VMware: a
descriptor or a monolithic sparse file, with its extents and parent) and qcow2
(QEMU, over a chain of backing files) are read with Fox-IT's well-kept parsers
rather than new ones; each is probed by its signature only, and opened as a
:class:`~blockforensics.formats.base.Disk` like every other source, so
``backup``, ``export`` and the forensic commands take them as they are.

A qcow2 backing file is opened through :func:`blockforensics.formats.open_disk`
(so it may itself be a qcow2, a VHD, raw …), found as qemu finds it: the name in
the header, relative to the overlay's directory unless absolute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import numpy as np

from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk, Format

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource

#: how many backing files deep a qcow2 chain may go before it is taken as a loop
MAX_BACKING_DEPTH = 64


class StreamDisk(Disk):
    """A Disk over a seekable, readable stream of ``size`` bytes (a dissect image)."""

    def __init__(self, path: str | os.PathLike[str], stream: Any, size: int,
                 keep: list[Any], block_size: int = 4096):
        self.path = os.fspath(path)
        self.size = int(size)
        self.block_size = block_size
        self._stream = stream
        self._keep = keep  # files and disks the stream reads through, closed with it

    def read_blocks(self, start: int, count: int) -> np.ndarray:
        out = np.zeros((count, self.block_size), dtype=np.uint8)
        offset = start * self.block_size
        length = max(0, min(count * self.block_size, self.size - offset))
        if length:
            self._stream.seek(offset)
            data = self._stream.read(length)
            out.reshape(-1)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        return out

    def close(self) -> None:
        for item in reversed(self._keep):
            item.close()
        self._keep = []


def _signature(path: str | os.PathLike[str], length: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(length)
    except OSError:
        return b""


def _failed(path: str | os.PathLike[str], kind: str, exc: Exception) -> FormatError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return FormatError(f"{path}: not a readable {kind} image ({message})")


def _single_point(path: str | os.PathLike[str], point: str | int | None) -> None:
    if point not in (None, 0, "0", -1, "-1"):
        raise UsageError(f"{path}: a disk image has a single point (0)")


def _open_stream(path: str | os.PathLike[str], kind: str, reader: Any) -> Disk:
    """``reader(file)`` (a dissect image that is a stream itself) as a Disk; the file's
    name lets dissect find parents and extents beside it."""
    fh = open(path, "rb")  # noqa: SIM115  (closed with the Disk)
    try:
        image = reader(fh)
    except Exception as exc:  # dissect raises its own errors and struct's alike
        fh.close()
        raise _failed(path, kind, exc) from None
    return StreamDisk(path, image, image.size, [fh])


class VhdxFormat(Format):
    """Hyper-V VHDX, fixed, dynamic or differencing."""

    name: ClassVar[str] = "vhdx"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return _signature(path, 8) == b"vhdxfile"

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        _single_point(path, point)
        from dissect.hypervisor.disk.vhdx import VHDX

        return _open_stream(path, "VHDX", VHDX)


class VmdkFormat(Format):
    """VMware VMDK: a text descriptor (with its extent files) or a sparse extent."""

    name: ClassVar[str] = "vmdk"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        head = _signature(path, 64)
        return head.startswith((b"KDMV", b"COWD")) or b"# Disk DescriptorFile" in head

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        _single_point(path, point)
        from dissect.hypervisor.disk.vmdk import VMDK

        return _open_stream(path, "VMDK", VMDK)


class Qcow2Format(Format):
    """QEMU qcow2 (versions 2 and 3), over its chain of backing files."""

    name: ClassVar[str] = "qcow2"
    priority: ClassVar[int] = 30

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return _signature(path, 4) == b"QFI\xfb"

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        _single_point(path, point)
        return _open_qcow2(Path(path), 0)


def _open_qcow2(path: Path, depth: int) -> Disk:
    from dissect.hypervisor.disk.qcow2 import QCow2

    from blockforensics.formats import open_disk

    if depth > MAX_BACKING_DEPTH:
        raise FormatError(f"{path}: more than {MAX_BACKING_DEPTH} backing files (a loop?)")
    keep: list[Any] = []
    fh: BinaryIO = path.open("rb")
    keep.append(fh)
    try:
        probe = QCow2(fh, allow_no_backing_file=True, allow_no_data_file=True)
        backing = None
        if probe.auto_backing_file:
            name = Path(probe.auto_backing_file)
            below = name if name.is_absolute() else path.parent / name
            if not below.exists():
                raise FormatError(f"{path}: backing file {below} not found")
            parent = (_open_qcow2(below, depth + 1) if Qcow2Format.probe(below)
                      else open_disk(below))
            keep.append(parent)
            backing = parent.open_file()
        image = QCow2(fh, backing_file=backing, allow_no_data_file=True)
        stream = image.open()
    except FormatError:
        for item in reversed(keep):
            item.close()
        raise
    except Exception as exc:
        for item in reversed(keep):
            item.close()
        raise _failed(path, "qcow2", exc) from None
    return StreamDisk(path, stream, image.size, keep)

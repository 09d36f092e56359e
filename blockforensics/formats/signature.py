"""The built-in formats' signatures, tested before any reader is imported.

Every command that opens a source probes it.  Importing every built-in reader for
that (numpy, dissect's parsers, sockets, the chain store: 20-30 ms of start-up) is
avoided: :mod:`blockforensics.formats` names each built-in beside its test here and
imports only the reader whose signature the source bears.  Each reader's ``probe`` is
its test here, so a signature is declared once.  Nothing heavy is imported here.

Units: sizes are bytes.
"""

from __future__ import annotations

import os

from blockforensics.image import is_chain
from blockforensics.nbd import SCHEMES as NBD_SCHEMES

#: the first bytes of a VHD footer (the last 512 bytes of every VHD; copied at offset 0
#: of dynamic ones); older writers leave a 511-byte footer
VHD_COOKIE = b"conectix"
VHD_FOOTER_SIZE = 512
VHDX_SIGNATURE = b"vhdxfile"  # at offset 0
VMDK_MAGICS = (b"KDMV", b"COWD")  # a sparse extent (VMware 4+, ESX 2 COW disk)
VMDK_DESCRIPTOR = b"# Disk DescriptorFile"  # within the first 64 bytes of a descriptor
QCOW2_MAGIC = b"QFI\xfb"

__all__ = ["NBD_SCHEMES", "QCOW2_MAGIC", "VHDX_SIGNATURE", "VHD_COOKIE", "VHD_FOOTER_SIZE",
           "VMDK_DESCRIPTOR", "VMDK_MAGICS", "is_chain", "is_nbd_uri", "is_qcow2", "is_vhd",
           "is_vhdx", "is_vmdk"]


def _head(path: str | os.PathLike[str], length: int) -> bytes:
    """The first ``length`` bytes of ``path`` (fewer if it is shorter; none if it does not
    open)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(length)
    except OSError:
        return b""


def is_vhd(path: str | os.PathLike[str]) -> bool:
    """A VHD footer cookie at the file's start, or 512 or 511 bytes before its end."""
    try:
        with open(path, "rb") as fh:
            found = [fh.read(len(VHD_COOKIE))]
            size = fh.seek(0, os.SEEK_END)
            for back in (VHD_FOOTER_SIZE, VHD_FOOTER_SIZE - 1):
                if size >= back:
                    fh.seek(size - back)
                    found.append(fh.read(len(VHD_COOKIE)))
    except OSError:
        return False
    return VHD_COOKIE in found


def is_vhdx(path: str | os.PathLike[str]) -> bool:
    return _head(path, len(VHDX_SIGNATURE)) == VHDX_SIGNATURE


def is_vmdk(path: str | os.PathLike[str]) -> bool:
    first = _head(path, 64)
    return first.startswith(VMDK_MAGICS) or VMDK_DESCRIPTOR in first


def is_qcow2(path: str | os.PathLike[str]) -> bool:
    return _head(path, len(QCOW2_MAGIC)) == QCOW2_MAGIC


def is_nbd_uri(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).partition("://")[0] in NBD_SCHEMES

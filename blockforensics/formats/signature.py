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

from blockforensics.image import MANIFEST
from blockforensics.nbd import SCHEMES as NBD_SCHEMES

#: the first bytes of a VHD footer (the last 512 bytes of every VHD; copied at offset 0
#: of dynamic ones); older writers leave a 511-byte footer
VHD_COOKIE = b"conectix"
VHD_FOOTER_SIZE = 512
VHDX_SIGNATURE = b"vhdxfile"  # at offset 0
VMDK_MAGICS = (b"KDMV", b"COWD")  # a sparse extent (VMware 4+, ESX 2 COW disk)
VMDK_DESCRIPTOR = b"# Disk DescriptorFile"  # within the first 64 bytes of a descriptor
QCOW2_MAGIC = b"QFI\xfb"
#: EWF (Expert Witness: EnCase) segment files: E01 (EWF1) and Ex01 (EWF2), at offset 0
EWF_SIGNATURES = (b"EVF\x09\x0d\x0a\xff\x00", b"EVF2\x0d\x0a\x81\x00")
#: EWF logical evidence files (L01, Lx01): files and folders, not a disk
EWF_LOGICAL_SIGNATURES = (b"LVF\x09\x0d\x0a\xff\x00", b"LEF2\x0d\x0a\x81\x00")
#: VirtualBox VDI: the little-endian u32 0xbeda107f after a 64-byte text pre-header
VDI_SIGNATURE = b"\x7f\x10\xda\xbe"
VDI_SIGNATURE_OFFSET = 64

__all__ = ["EWF_LOGICAL_SIGNATURES", "EWF_SIGNATURES", "LOGICAL_EVIDENCE", "NBD_SCHEMES",
           "QCOW2_MAGIC", "VDI_SIGNATURE", "VHDX_SIGNATURE", "VHD_COOKIE", "VHD_FOOTER_SIZE",
           "VMDK_DESCRIPTOR", "VMDK_MAGICS", "container", "holds_manifest", "is_ewf", "is_nbd_uri",
           "is_qcow2", "is_vdi", "is_vhd", "is_vhdx", "is_vmdk"]


def _head(path: str | os.PathLike[str], length: int) -> bytes:
    """The first ``length`` bytes of ``path`` (fewer if it is shorter; none if it does not
    open)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(length)
    except OSError:
        return b""


def holds_manifest(path: str | os.PathLike[str]) -> bool:
    """A directory with a ``chain.json`` entry of any kind: the chain reader claims it,
    so that one whose manifest is not a regular file (a directory, a symbolic link) is
    refused by the chain store in its own words, not as "a directory with no chain"."""
    return os.path.isdir(path) and os.path.lexists(os.path.join(path, MANIFEST))


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


def is_ewf(path: str | os.PathLike[str]) -> bool:
    """An EWF segment file of a disk, E01 or Ex01 (not L01/Lx01: see :func:`container`)."""
    return _head(path, 8).startswith(EWF_SIGNATURES)


def is_vdi(path: str | os.PathLike[str]) -> bool:
    head = _head(path, VDI_SIGNATURE_OFFSET + len(VDI_SIGNATURE))
    return head[VDI_SIGNATURE_OFFSET:] == VDI_SIGNATURE


# ------------------------------------------------- containers no reader opens
#: (first bytes, format, what to do) of containers that no built-in reads: the raw
#: catch-all refuses them rather than back their container bytes up as a disk
_HEADS: tuple[tuple[bytes, str, str], ...] = (
    (b"AFF10\r\n\0", "an AFF (Advanced Forensic Format) image",
     "convert it to raw first (affconvert -r, from AFFLIB)"),
    (b"WithoutFreeSpace", "a Parallels disk image",
     "convert it with qemu-img convert -O raw"),
    (b"WithouFreSpacExt", "a Parallels disk image",
     "convert it with qemu-img convert -O raw"),
    (b"QED\0", "a QED image", "convert it with qemu-img convert -O raw"),
    (b"\xfd7zXZ\0", "an xz-compressed file", "decompress it first (unxz -k)"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it first (zstd -d)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "extract the disk image from it first (7z x)"),
    # image.format.HEADER_MAGIC, spelled here: importing the image format costs start-up
    (b"BFIMAGE\0", "an image file of a blockforensics chain",
     "give its chain directory (and --point); an image alone is part of a chain"),
)
#: what an L01/Lx01 is and what to do with it (the EWF reader says it too, when forced)
LOGICAL_EVIDENCE = ("an EWF logical evidence file (L01/Lx01) holding files",
                    "nothing to back up block by block (its files can be reached with "
                    "ewfmount -f files)")
_DMG_TRAILER = b"koly\x00\x00\x00\x04\x00\x00\x02\x00"  # magic, version 4, 512-byte size
_ZIP_HEAD = b"PK\x03\x04"
_AFF4_INFORMATION = "information.turtle"


def _compressed(head: bytes) -> tuple[str, str] | None:
    """gzip (deflate, no reserved flag bits) or bzip2 (a block or an empty stream)."""
    if head[:3] == b"\x1f\x8b\x08" and len(head) > 3 and not head[3] & 0xE0:
        return "a gzip-compressed file", "decompress it first (gunzip -k)"
    if (head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) >= 10
            and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")):
        return "a bzip2-compressed file", "decompress it first (bunzip2 -k)"
    return None


def _zip(path: str | os.PathLike[str]) -> tuple[str, str]:
    """A zip file: AFF4 when it holds ``information.turtle``, else an archive."""
    import zipfile  # only for a file that starts like a zip

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        names = []
    if any(name.rsplit("/", 1)[-1] == _AFF4_INFORMATION for name in names):
        return ("an AFF4 image",
                "export its disk stream to a raw file first (aff4imager -e, or pyaff4)")
    return "a zip archive", "extract the disk image from it first (unzip)"


def container(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(format, what to do)`` when ``path`` bears the signature of a container no
    built-in reader opens (AFF, AFF4, DMG, Parallels, QED, EWF logical evidence, a
    compressed file, an archive): its bytes are not a disk.  None otherwise (or if it
    does not open)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            size = fh.seek(0, os.SEEK_END)
            tail = b""
            if size >= 512 + len(head):
                fh.seek(size - 512)
                tail = fh.read(len(_DMG_TRAILER))
    except OSError:
        return None
    for magic, kind, todo in _HEADS:
        if head.startswith(magic):
            return kind, todo
    if head.startswith(EWF_LOGICAL_SIGNATURES):
        return LOGICAL_EVIDENCE
    found = _compressed(head)
    if found:
        return found
    if head.startswith(_ZIP_HEAD):
        return _zip(path)
    if tail == _DMG_TRAILER:
        return ("an Apple disk image (DMG)",
                "convert it with qemu-img convert -O raw (or hdiutil convert -format UDTO)")
    return None

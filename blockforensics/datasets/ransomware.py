"""A second sample investigation: benign high-entropy days, then three kinds of ransomware.

:func:`build_ransomware` makes an ext4 (``mkfs.ext4`` + ``debugfs -w``) or FAT32
(``mkfs.vfat`` + mtools) volume and backs it up after each of eight days:

====  =====  =================================================================
day   point  what happens
====  =====  =================================================================
1     0      documents (text, csv, a .docx zip), photos (JPEG), a package
             (ELF binaries, a gzip), data (a 320 KiB csv, a SQLite file), a
             random /archive.bin
2     1      ordinary edits: text appended, csv edited in place, a note added
3     2      *benign, high entropy*: six photos and a video clip added
4     3      *benign, high entropy*: the .docx rewritten (a zip updated), a new
             .tar.gz backup
5     4      *benign, many files*: package upgrade — tool-1.0 removed, tool-1.1
             (ten files) installed
6     5      **copy-encrypt-delete**: three documents copied to ``*.locked``
             (random bytes, 512 bytes longer), originals deleted, ransom notes
7     6      **intermittent encryption in place**: the first KiB of a csv; every
             other 64 KiB of the 320 KiB csv
8     7      **rename to a new extension + encrypt in place**: the .docx and the
             SQLite file renamed to ``*.crypt`` and encrypted; a photo encrypted
             in place under its own name
====  =====  =================================================================

:attr:`Ransomware.expected` holds, per point, the verdict triage must give and the
files it must flag (suspected of encryption, or matched by a ransom-note rule);
benign days must flag nothing.  The last clean point is 4.  Content is seeded.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockforensics.datasets.investigation import _Site, _text, day_start

SIZES = {"ext4": 24 << 20, "fat32": 40 << 20}  # bytes of the raw volume
NOTE = (b"!!! ALL YOUR FILES HAVE BEEN ENCRYPTED !!!\r\n\r\n"
        b"Your documents, photos and databases are encrypted. To get the decryption tool\r\n"
        b"and your private key, pay 0.5 BTC (Bitcoin) within 72 hours.\r\n"
        b"Contact us: http://restorefiles3xamplexyz.onion (use Tor Browser).\r\n"
        b"Do not rename encrypted files. Do not try to decrypt them yourself: permanent "
        b"data loss.\r\n")
LAST_CLEAN_POINT = 4


@dataclass
class Ransomware:
    """A built sample: chain directory, the live volume, and what triage must find."""

    chain_dir: Path
    image: Path
    fs: str
    expected: list[dict]  # per point: {"verdict": str, "flagged": set of paths, "day": int}
    encrypted_files: dict[int, set[str]]  # per point: the files the attack encrypted

    @property
    def last_clean_point(self) -> int:
        return LAST_CLEAN_POINT


# ------------------------------------------------------------------ content
#: a baseline JPEG's segments before its entropy-coded data (ITU T.81): SOI, JFIF APP0,
#: a quantisation table (DQT), a 64x64 one-component frame (SOF0), one scan (SOS)
JPEG_HEADER = (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
               b"\xff\xdb\x00\x43\x00" + bytes(range(1, 65))
               + b"\xff\xc0\x00\x0b\x08\x00\x40\x00\x40\x01\x01\x11\x00"
               + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00")


def _jpeg(rng: np.random.Generator, n: int) -> bytes:
    """``n`` bytes with a JPEG's structure: :data:`JPEG_HEADER`, random entropy-coded data
    with every 0xFF stuffed (followed by 0x00), EOI — a photo's entropy, not a picture."""
    scan = rng.bytes(n).replace(b"\xff", b"\xff\x00")[: n - len(JPEG_HEADER) - 2]
    if scan.endswith(b"\xff"):  # its stuffing cut off
        scan = scan[:-1] + b"\x00"
    return JPEG_HEADER + scan + b"\xff\xd9"


def _mp4(rng: np.random.Generator, n: int) -> bytes:
    """``n`` bytes of ISO BMFF boxes: ``ftyp``, then ``mdat`` holding random (coded) data."""
    header = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
    return header + (n - len(header)).to_bytes(4, "big") + b"mdat" + rng.bytes(n - len(header) - 8)


def _docx(rng: np.random.Generator, paragraphs: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in (("[Content_Types].xml", b"<Types/>"),
                           ("word/document.xml", b"<w:document><w:body>" + b"".join(
                               b"<w:p>" + _text(rng, 600) + b"</w:p>"
                               for _ in range(paragraphs)) + b"</w:body></w:document>")):
            zf.writestr(zipfile.ZipInfo(name, (2024, 3, 1, 8, 0, 0)), body)
    return out.getvalue()


def _elf(rng: np.random.Generator, n: int) -> bytes:
    """ELF-looking bytes: a header, then 'code' drawn from a few dozen opcodes (~5 bits/byte)."""
    opcodes = rng.integers(0, 256, 40, dtype=np.uint8)
    body = rng.choice(opcodes, n - 64).astype(np.uint8).tobytes()
    return b"\x7fELF\x02\x01\x01" + bytes(57) + body


def _sqlite(rng: np.random.Generator, n: int) -> bytes:
    rows = b"".join(b"%06d|" % i + _text(rng, 58) + b"\n" for i in range(n // 64))
    return (b"SQLite format 3\x00" + rows)[:n].ljust(n, b"\x00")


PACKAGE_FILES = ("tool", "libtool.so", "data.tar.gz", "tool.deb",
                 *(f"lib{i}.py" for i in range(6)))


def _package(rng: np.random.Generator, version: str) -> list[tuple[str, bytes]]:
    contents = [_elf(rng, 48_000), _elf(rng, 64_000),
                gzip.compress(_text(rng, 60_000), mtime=0),
                b"!<arch>\ndebian-binary   " + gzip.compress(rng.bytes(20_000), mtime=0),
                *(_text(rng, 3000) for _ in range(6))]
    return [(f"/pkg/tool-{version}/{name}", data) for name, data in zip(PACKAGE_FILES, contents)]


def _encrypt(rng: np.random.Generator, data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """``data`` with the byte ranges ``[start, stop)`` replaced by random bytes."""
    out = bytearray(data)
    for start, stop in spans:
        stop = min(stop, len(out))
        out[start:stop] = rng.bytes(stop - start)
    return bytes(out)


# ------------------------------------------------------------------ history
def _history(rng: np.random.Generator) -> list[list[tuple]]:
    """The eight days as lists of ``(operation, path, data or new path)``."""
    report, budget, letter = _text(rng, 9000), _text(rng, 4500), _text(rng, 3000)
    records = _text(rng, 320 << 10)
    docx, ledger, photo1 = _docx(rng, 8), _sqlite(rng, 24_000), _jpeg(rng, 60_000)
    notes = _text(rng, 2000)
    edited_budget = bytearray(budget)
    edited_budget[200:260] = _text(rng, 60)
    new_docx = _docx(rng, 14)
    return [
        [("mkdir", "/docs", None), ("mkdir", "/photos", None), ("mkdir", "/pkg", None),
         ("mkdir", "/pkg/tool-1.0", None), ("mkdir", "/data", None),
         ("write", "/docs/report.txt", report), ("write", "/docs/budget.csv", budget),
         ("write", "/docs/letter.txt", letter), ("write", "/docs/plan.docx", docx),
         ("write", "/photos/img001.jpg", photo1), ("write", "/photos/img002.jpg",
                                                   _jpeg(rng, 50_000)),
         *[("write", p, d) for p, d in _package(rng, "1.0")],
         ("write", "/data/records.csv", records), ("write", "/data/ledger.db", ledger),
         ("write", "/archive.bin", rng.bytes(20_000))],
        [("write", "/docs/report.txt", report + _text(rng, 1500)),
         ("write", "/docs/budget.csv", bytes(edited_budget)),
         ("write", "/data/notes.md", notes)],
        [*[("write", f"/photos/img{i:03d}.jpg", _jpeg(rng, 40_000 + 5000 * i))
           for i in range(3, 9)],
         ("write", "/photos/clip.mp4", _mp4(rng, 200_000))],
        [("write", "/docs/plan.docx", new_docx),
         ("write", "/data/site-backup.tar.gz", gzip.compress(_text(rng, 80_000), mtime=0)),
         ("write", "/data/notes.md", notes + _text(rng, 500))],
        [*[("delete", f"/pkg/tool-1.0/{name}", None) for name in PACKAGE_FILES],
         ("rmdir", "/pkg/tool-1.0", None), ("mkdir", "/pkg/tool-1.1", None),
         *[("write", p, d) for p, d in _package(rng, "1.1")]],
        [*[op for path, size in (("/docs/report.txt", 10_500), ("/docs/letter.txt", 3000),
                                 ("/data/notes.md", 2500))
           for op in (("write", path + ".locked", rng.bytes(size + 512)),
                      ("delete", path, None))],
         ("write", "/README_RESTORE_FILES.txt", NOTE),
         ("write", "/docs/README_RESTORE_FILES.txt", NOTE)],
        [("overwrite", "/docs/budget.csv", _encrypt(rng, bytes(edited_budget), [(0, 1024)])),
         ("overwrite", "/data/records.csv", _encrypt(rng, records, [
             (start, start + (64 << 10)) for start in range(0, len(records), 128 << 10)]))],
        [("rename", "/docs/plan.docx", "/docs/plan.docx.crypt"),
         ("overwrite", "/docs/plan.docx.crypt", rng.bytes(len(new_docx))),
         ("rename", "/data/ledger.db", "/data/ledger.db.crypt"),
         ("overwrite", "/data/ledger.db.crypt", _encrypt(rng, ledger, [(0, 4096)])),
         ("overwrite", "/photos/img001.jpg", rng.bytes(len(photo1)))],
    ]


def _expected() -> tuple[list[dict], dict[int, set[str]]]:
    encrypted = {5: {"/docs/report.txt.locked", "/docs/letter.txt.locked",
                     "/data/notes.md.locked"},
                 6: {"/docs/budget.csv", "/data/records.csv"},
                 7: {"/docs/plan.docx.crypt", "/data/ledger.db.crypt", "/photos/img001.jpg"}}
    notes = {"/README_RESTORE_FILES.txt", "/docs/README_RESTORE_FILES.txt"}
    expected = [{"day": p + 1, "verdict": "clean", "flagged": set()} for p in range(5)]
    expected += [{"day": 6, "verdict": "encrypted", "flagged": encrypted[5] | notes},
                 {"day": 7, "verdict": "encrypted", "flagged": encrypted[6]},
                 {"day": 8, "verdict": "encrypted", "flagged": encrypted[7]}]
    return expected, encrypted


def build_ransomware(directory: str | os.PathLike[str], fs: str = "ext4", seed: int = 0
                     ) -> Ransomware:
    """Build the sample in ``directory``: ``chain/`` and ``volume.img``.  Needs e2fsprogs
    (ext4: in-place overwrites through ``debugfs blocks``) or mtools + dosfstools (fat32:
    mtools writes new content to fresh clusters)."""
    chain_dir, image = play(directory, fs, _history(np.random.default_rng(seed)))
    expected, encrypted = _expected()
    return Ransomware(chain_dir, image, fs, expected, encrypted)


def play(directory: str | os.PathLike[str], fs: str, days: list[list[tuple]],
         size: int | None = None) -> tuple[Path, Path]:
    """Make an ``fs`` volume (``size`` bytes; default :data:`SIZES`) in ``directory``,
    apply each day's ``(operation, path, data or new path)`` with the real tools — mkdir,
    write, overwrite (in place on ext4 and mounted volumes), rename, delete, rmdir — and
    back it up after each day; the chain directory and the volume's raw file.  ``fs``:
    "ext4" (debugfs), "fat32" (mtools), or "ntfs", "xfs", "btrfs" (mounted: root)."""
    site = _Site.make(directory, fs)
    with tempfile.TemporaryDirectory() as scratch:
        volume = site.volume(site.image, Path(scratch), size or SIZES.get(fs, SIZES["fat32"]))
        for day, operations in enumerate(days, start=1):
            start = day_start(day)
            for minute, (operation, path, data) in enumerate(operations):
                mtime = start + 60 * minute
                if operation in ("mkdir", "delete", "rmdir"):
                    getattr(volume, operation)(path, mtime)
                else:
                    getattr(volume, operation)(path, data, mtime)
            volume.settle()
            site.back_up(day)
    site.chain.close()
    return site.chain.directory, site.image

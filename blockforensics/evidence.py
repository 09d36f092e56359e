"""Content evidence: what a file's bytes are (by signature) and whether they look encrypted.

- :func:`content_type` names a file's format from its first bytes with a small
  signature table (:data:`SIGNATURES`); :data:`EXTENSIONS` says which format an
  extension promises, so a ``.docx`` that is no longer a zip is seen.
- :class:`ByteStats` accumulates, over bytes fed in any number of pieces, the byte
  histogram (Shannon entropy), SHA-256, and a *per-segment* randomness test:
  the bytes are cut in :data:`SEGMENT_BYTES` segments and each segment whose entropy
  reaches :data:`RANDOM_SEGMENT_ENTROPY` bits per byte counts as random.  Encrypting
  only the first KiB of a file, or every other 64 KiB, leaves the whole file's
  entropy ordinary, but not its segments.
- A segment of base64 or hex text whose symbols are as uniform as their alphabet
  allows (:data:`ENCODINGS`, within :data:`ENCODED_DEFICIT` bits of log2 of its
  size) is ciphertext written as text: it counts as random too.  Its bytes stay
  below 6 (base64) or 4 (hex) bits per byte, so the raw entropy would not see it.
- :func:`uniform_p` is a chi-square test of a histogram against the uniform
  distribution over its symbols: ciphertext passes it (raw over 256 byte values,
  encoded over its alphabet), text and executables do not.  Compressed formats
  often pass it too — which is why they are recognised by signature first.

Thresholds, in bits per byte: 1 KiB of uniform random bytes has an entropy of about
7.82 (a finite sample never reaches 8), deflate output about 7.8, English text
about 4.3, x86 code about 6.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from blockforensics import mpegaudio

if TYPE_CHECKING:
    from blockforensics.bodies import Break

#: bytes per segment of the per-segment randomness test
SEGMENT_BYTES = 1024
#: a trailing piece shorter than this is not judged (too few bytes for a histogram)
MIN_SEGMENT_BYTES = 256
#: entropy (bits per byte) at or above which a segment counts as random
RANDOM_SEGMENT_ENTROPY = 7.5
#: chi-square p-value (bytes vs uniform) at or above which bytes look random
UNIFORM_P = 1e-3
#: text encodings of binary data: name -> (alphabet, bytes that may stand between
#: symbols: line breaks, padding)
ENCODINGS: dict[str, tuple[bytes, bytes]] = {
    "hex": (b"0123456789abcdef", b"\r\n"), "HEX": (b"0123456789ABCDEF", b"\r\n"),
    "base64": (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
               b"\r\n="),
    "base64url": (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                  b"\r\n="),
}
#: an encoded segment is random when its symbols' entropy is within this many bits
#: per symbol of log2(alphabet size): 1 KiB of random base64 falls ~0.05 short of 6,
#: random hex ~0.01 short of 4; English text ~1.5 short over the letters it uses
ENCODED_DEFICIT = 0.15
#: bytes of the start of the content kept for signatures and rule scans
HEAD_BYTES = 64 << 10

#: (format, offset, magic) — first match wins; formats in COMPRESSED are high-entropy by nature
SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("zip", 0, b"PK\x03\x04"), ("zip", 0, b"PK\x05\x06"),
    ("gzip", 0, b"\x1f\x8b"), ("bzip2", 0, b"BZh"), ("xz", 0, b"\xfd7zXZ\x00"),
    ("zstd", 0, b"\x28\xb5\x2f\xfd"), ("7z", 0, b"7z\xbc\xaf\x27\x1c"),
    ("rar", 0, b"Rar!\x1a\x07"), ("jpeg", 0, b"\xff\xd8\xff"),
    ("png", 0, b"\x89PNG\r\n\x1a\n"), ("gif", 0, b"GIF87a"), ("gif", 0, b"GIF89a"),
    ("pdf", 0, b"%PDF-"), ("mp4", 4, b"ftyp"), ("riff", 0, b"RIFF"), ("mp3", 0, b"ID3"),
    ("ogg", 0, b"OggS"), ("flac", 0, b"fLaC"), ("deb", 0, b"!<arch>\n"),
    ("elf", 0, b"\x7fELF"), ("pe", 0, b"MZ"), ("sqlite", 0, b"SQLite format 3\x00"),
    ("ole2", 0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), ("rtf", 0, b"{\\rtf"),
    ("git-pack", 0, b"PACK\x00\x00\x00"), ("git-index", 0, b"\xfftOc\x00\x00\x00"),
    ("qcow", 0, b"QFI\xfb"), ("vmdk", 0, b"KDMV"), ("vhdx", 0, b"vhdxfile"),
    ("squashfs", 0, b"hsqs"), ("luks", 0, b"LUKS\xba\xbe"), ("lz4", 0, b"\x04\x22\x4d\x18"),
    ("woff2", 0, b"wOF2"), ("tiff", 0, b"II*\x00"), ("tiff", 0, b"MM\x00*"),
    ("cab", 0, b"MSCF\x00\x00\x00\x00"), ("wim", 0, b"MSWIM\x00\x00\x00"),
    ("xpress", 0, b"MAM\x04"),  # Windows' Xpress Huffman files (Prefetch, since Windows 10)
    ("pst", 0, b"!BDN"),  # Outlook PST/OST: a store of mails and their attachments
    ("rpm", 0, b"\xed\xab\xee\xdb"), ("matroska", 0, b"\x1a\x45\xdf\xa3"),
    ("mozlz4", 0, b"mozLz40\x00"), ("iso9660", 0x8001, b"CD001"),
    # Linux swap (mkswap): the signature ends the first 4 KiB page
    ("swap", 4086, b"SWAPSPACE2"), ("swap", 4086, b"SWAP-SPACE"),
)
#: formats whose content is high-entropy by nature: compressed, media, packed object
#: stores (git packs), disk images and encrypted containers made by their own tools
COMPRESSED = frozenset({"zip", "gzip", "bzip2", "xz", "zstd", "7z", "rar", "jpeg", "png",
                        "gif", "pdf", "mp4", "mp3", "ogg", "flac", "deb", "riff", "git-pack",
                        "git-index", "qcow", "vmdk", "vhdx", "squashfs", "luks", "lz4",
                        "woff2", "tiff", "swap", "cab", "wim", "xpress", "pst", "rpm",
                        "matroska", "mozlz4", "iso9660"})
#: operating-system files whose bytes are memory or copies of old blocks — Windows'
#: paging, swap and hibernation files, crash dumps, Volume Shadow Copy stores (named
#: ``{GUID}{3808876b-c176-4e48-b7ae-04046e6cc752}``), Linux swap files, macOS's — random
#: in places by nature and rewritten as the system runs: paths within their volume,
#: lower case (see :func:`system_memory_file`)
SYSTEM_MEMORY_PATHS = re.compile(
    r"/(pagefile|swapfile|hiberfil)\.sys|/windows/memory\.dmp|/windows/minidump/[^/]+\.dmp"
    r"|/system volume information/\{[0-9a-f-]{36}\}\{3808876b-c176-4e48-b7ae-04046e6cc752\}"
    r"|/swapfile|/swap\.img|/private/var/vm/(sleepimage|swapfile\d+)")
#: the partition a path of a partitioned disk starts with (``p5:``)
PARTITION_PREFIX = re.compile(r"^p\d+:(?=/)")
#: extension (lower case, no dot) -> the format its content must have
EXTENSIONS: dict[str, str] = {
    **dict.fromkeys(["zip", "docx", "xlsx", "pptx", "odt", "ods", "odp", "jar", "apk",
                     "epub", "whl"], "zip"),
    **dict.fromkeys(["gz", "tgz"], "gzip"), "bz2": "bzip2", **dict.fromkeys(["xz", "txz"], "xz"),
    "zst": "zstd", "7z": "7z", "rar": "rar", **dict.fromkeys(["jpg", "jpeg"], "jpeg"),
    "png": "png", "gif": "gif", "pdf": "pdf",
    **dict.fromkeys(["mp4", "m4a", "m4v", "mov", "heic"], "mp4"),
    **dict.fromkeys(["wav", "avi", "webp"], "riff"), "mp3": "mp3", "ogg": "ogg",
    "flac": "flac", "deb": "deb", **dict.fromkeys(["exe", "dll"], "pe"),  # .sys: not only PE
    **dict.fromkeys(["sqlite", "sqlite3"], "sqlite"),
    **dict.fromkeys(["doc", "xls", "ppt", "msi"], "ole2"), "rtf": "rtf",
    "pack": "git-pack", **dict.fromkeys(["qcow", "qcow2"], "qcow"), "vmdk": "vmdk",
    "vhdx": "vhdx", **dict.fromkeys(["squashfs", "snap"], "squashfs"), "lz4": "lz4",
    "woff2": "woff2", **dict.fromkeys(["tif", "tiff", "cr2", "nef", "dng", "arw"], "tiff"),
    **dict.fromkeys(["cab", "msu"], "cab"), **dict.fromkeys(["wim", "esd"], "wim"),
    **dict.fromkeys(["pst", "ost"], "pst"), "rpm": "rpm",
    **dict.fromkeys(["mkv", "webm", "mka"], "matroska"), "jsonlz4": "mozlz4",
    **dict.fromkeys(["txt", "csv", "md", "log", "json", "xml", "html", "htm", "ini", "cfg",
                     "conf", "yaml", "yml", "py", "c", "h", "sh", "js", "css", "tex"], "text"),
}
#: extensions ransomware families are known to append (a hint, never proof on its own)
RANSOM_EXTENSIONS = frozenset({"locked", "lock", "encrypted", "enc", "crypt", "crypted",
                               "crypto", "cry", "locky", "cerber", "wncry", "wcry", "ryk",
                               "ransom", "pay", "akira", "lockbit", "royal", "babyk"})

#: a zip local file header's start (APPNOTE 4.3.7): signature, version needed, general
#: purpose flags (bit 0: the member is encrypted — ZipCrypto or, with method 99, AES)
ZIP_LOCAL_HEADER = struct.Struct("<4sHH")
ZIP_ENCRYPTED_FLAG = 0x0001


def encrypted_archive(head: bytes) -> bool:
    """Does a content's start show an archive whose members are encrypted (a zip whose
    first member has the encryption flag)?  Its members cannot be read without a key."""
    if len(head) < ZIP_LOCAL_HEADER.size:
        return False
    magic, _, flags = ZIP_LOCAL_HEADER.unpack_from(head)
    return magic == b"PK\x03\x04" and bool(flags & ZIP_ENCRYPTED_FLAG)


def extension(path: str) -> str:
    """The last extension of a path, lower case, without the dot ("" when none)."""
    return PurePosixPath(path).suffix.lower().removeprefix(".")


def system_memory_file(path: str) -> bool:
    """Whether ``path`` (``/dir/name`` or ``pN:/dir/name``) is one of
    :data:`SYSTEM_MEMORY_PATHS`: its content is judged by none of the encryption rules."""
    inside = PARTITION_PREFIX.sub("", path, count=1)
    return SYSTEM_MEMORY_PATHS.fullmatch(inside.lower()) is not None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end is fine
        if exc.start < len(head) - 3:
            return False
    return True


def content_type(head: bytes) -> str | None:
    """The format the first bytes of a content show: a :data:`SIGNATURES` name, "mp3"
    (MPEG audio frames chaining from byte 0), "text" (UTF-8 without NUL), or None
    (unknown — random bytes are unknown)."""
    for name, offset, magic in SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if mpegaudio.starts_stream(head):  # an MP3 without an ID3 tag: frames from byte 0
        return "mp3"
    return "text" if _looks_like_text(head[:4096]) else None


def _entropy_rows(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy, bits per byte, of each row of byte histograms ``(k, 256)``; 0 if empty."""
    counts = np.atleast_2d(counts).astype(np.float64)
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=1) + 0.0  # + 0.0 turns -0.0 into 0.0


#: rows histogrammed per bincount: its output (rows x 256 counts) stays in the CPU cache
#: (one bincount over a whole 8 MiB chunk scatters into 16 MB and runs 10x slower)
HISTOGRAM_ROWS = 128


def _segment_entropy(counts: np.ndarray, n: int) -> np.ndarray:
    """Entropy (bits per byte) of rows of histograms of exactly ``n`` bytes each:
    log2(n) - sum(c log2 c) / n, with c log2 c looked up in a table."""
    table = _clogc(n)
    return np.log2(n) - table[counts].sum(axis=1) / n


@functools.lru_cache(maxsize=8)
def _clogc(n: int) -> np.ndarray:
    c = np.arange(n + 1, dtype=np.float64)
    return c * np.log2(np.maximum(c, 1))


def histograms(rows: np.ndarray) -> np.ndarray:
    """Per-row byte histograms ``(k, 256)`` of a ``(k, n)`` uint8 array: one bincount per
    :data:`HISTOGRAM_ROWS` rows, each row's bytes offset by 256 × its index."""
    k = rows.shape[0]
    out = np.empty((k, 256), np.int64)
    offsets = (np.arange(min(k, HISTOGRAM_ROWS), dtype=np.intp) << 8)[:, None]
    for lo in range(0, k, HISTOGRAM_ROWS):
        part = rows[lo : lo + HISTOGRAM_ROWS]
        n = part.shape[0]
        keys = part.astype(np.intp) + offsets[:n]
        out[lo : lo + n] = np.bincount(keys.ravel(), minlength=n * 256).reshape(n, 256)
    return out


def entropy(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits per byte) of each row of byte histograms."""
    return _entropy_rows(counts)


@functools.lru_cache(maxsize=1)
def _encoding_tables() -> tuple[np.ndarray, list[np.ndarray]]:
    """Per encoding of :data:`ENCODINGS`: a (256, n) 0/1 matrix of the bytes outside
    it (alphabet and separators), and each alphabet's byte values."""
    outside = np.ones((256, len(ENCODINGS)), np.float64)
    alphabets = []
    for i, (alphabet, separators) in enumerate(ENCODINGS.values()):
        outside[list(alphabet + separators), i] = 0
        alphabets.append(np.frombuffer(alphabet, np.uint8).astype(np.intp))
    return outside, alphabets


def encoded_random(counts: np.ndarray) -> np.ndarray:
    """Which rows of byte histograms ``(k, 256)`` are random data in a text encoding:
    the index of their :data:`ENCODINGS` entry (-1: none) — every byte in the
    encoding's alphabet or separators, the symbols' entropy within
    :data:`ENCODED_DEFICIT` bits of log2 of the alphabet's size."""
    out = np.full(counts.shape[0], -1, np.int64)
    outside, alphabets = _encoding_tables()
    # every alphabet lies within b"\n"..b"z" and has no space: a cheap first cut
    candidates = np.flatnonzero(~(counts[:, :0x0A].any(axis=1) | counts[:, 0x7B:].any(axis=1)
                                  | (counts[:, 0x20] > 0)))
    inside = (counts[candidates].astype(np.float64) @ outside) == 0
    for i, alphabet in enumerate(alphabets):
        rows = candidates[inside[:, i] & (out[candidates] < 0)]
        if rows.size:
            symbols = counts[np.ix_(rows, alphabet)]
            uniform = _entropy_rows(symbols) >= np.log2(alphabet.size) - ENCODED_DEFICIT
            out[rows[uniform]] = i
    return out


def uniform_p(counts: np.ndarray) -> float:
    """p-value of a chi-square test of a histogram against uniform over its ``len(counts)``
    symbols (256 for bytes; Wilson–Hilferty approximation); 0 for no symbols."""
    n = counts.sum()
    if n == 0:
        return 0.0
    expected = n / len(counts)
    chi2 = float(((counts - expected) ** 2).sum() / expected)
    k = len(counts) - 1
    z = ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class ByteStats:
    """Statistics of bytes fed with :meth:`update` (in order); :meth:`finish` judges the tail.

    ``counts``: byte histogram; ``segments`` / ``random_segments``: segments judged and
    those at or above :data:`RANDOM_SEGMENT_ENTROPY` or random in a text encoding
    (:func:`encoded_random`); ``random_counts``: the histogram of the raw random
    segments alone, ``encoded_counts`` of the encoded ones, a row per encoding (for the
    chi-square test); ``head``: the first
    :data:`HEAD_BYTES` bytes; ``random_at``: byte offset (in the fed bytes) of the first
    random segment, or -1.
    """

    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    random_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    encoded_counts: np.ndarray = field(
        default_factory=lambda: np.zeros((len(ENCODINGS), 256), np.int64))
    segments: int = 0
    random_segments: int = 0
    random_at: int = -1
    size: int = 0
    head: bytes = b""
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    _carry: bytes = b""

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        data = self._carry + data
        whole = len(data) // SEGMENT_BYTES * SEGMENT_BYTES
        self._judge(np.frombuffer(data, np.uint8, whole).reshape(-1, SEGMENT_BYTES))
        self._carry = data[whole:]

    def finish(self) -> ByteStats:
        """Judge the trailing partial segment (if long enough); returns self."""
        if len(self._carry) >= MIN_SEGMENT_BYTES:
            self._judge(np.frombuffer(self._carry, np.uint8)[None, :])
        elif self._carry:
            self.counts += np.bincount(np.frombuffer(self._carry, np.uint8), minlength=256)
            self.size += len(self._carry)
        self._carry = b""
        return self

    def _judge(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        counts = histograms(rows)
        random = _segment_entropy(counts, rows.shape[1]) >= RANDOM_SEGMENT_ENTROPY
        total = counts.sum(axis=0)
        self.counts += total
        if random.all():
            self.random_counts += total
        else:
            if random.any():
                self.random_counts += counts[random].sum(axis=0)
            encoding = encoded_random(counts)
            np.add.at(self.encoded_counts, encoding[encoding >= 0], counts[encoding >= 0])
            random |= encoding >= 0
        if random.any() and self.random_at < 0:
            self.random_at = self.size + int(np.argmax(random)) * rows.shape[1]
        self.segments += rows.shape[0]
        self.random_segments += int(random.sum())
        self.size += rows.size

    @property
    def entropy(self) -> float:
        return float(_entropy_rows(self.counts)[0])

    @property
    def random_share(self) -> float:
        return self.random_segments / self.segments if self.segments else 0.0

    @property
    def random_p(self) -> float:
        """Chi-square p-value of the random segments against uniform: the raw ones' bytes
        over 256 values, each encoding's symbols over its alphabet; the smallest."""
        _, alphabets = _encoding_tables()
        groups = [self.random_counts] + [row[alphabet] for row, alphabet
                                         in zip(self.encoded_counts, alphabets)]
        return min((uniform_p(g) for g in groups if g.any()), default=0.0)

    @property
    def encodings(self) -> list[str]:
        """The :data:`ENCODINGS` some random segments are written in."""
        return [name for name, row in zip(ENCODINGS, self.encoded_counts) if row.any()]

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def content_type(self) -> str | None:
        return content_type(self.head) if self.size else None


def stats_of(data: bytes) -> ByteStats:
    """:class:`ByteStats` of one byte string."""
    stats = ByteStats()
    stats.update(data)
    return stats.finish()


#: a file that had random segments must gain at least this share of them to be judged
RANDOM_SHARE_RISE = 0.25


class Judgement(NamedTuple):
    """What :func:`judge` found: ``suspected`` of encryption; ``explained``: its random
    segments are accounted for (a compressed format its extension allows, as many
    random segments before, or appended after the old bytes kept whole); ``evidence``:
    why, with numbers."""

    suspected: bool
    explained: bool
    evidence: list[str]


def judge(path: str, before_path: str | None, before: ByteStats | None, after: ByteStats,
          type_before: str | None, type_after: str | None, *, replaced: bool = False,
          appended: bool = False, body: Break | None = None) -> Judgement:
    """Is a file's new content suspected of encryption, and why (evidence with numbers).

    ``before``: the bytes it is compared with (the same file's old bytes; for a created
    file that took a deleted one's place, the deleted file's; None for a new file);
    ``after``: the new bytes; ``type_*``: :func:`content_type` of each version's start.

    Suspected when random segments appeared — at least one segment of
    :data:`SEGMENT_BYTES` at or above :data:`RANDOM_SEGMENT_ENTROPY` bits per byte where
    the old bytes had none (or their share rose by :data:`RANDOM_SHARE_RISE`), and the
    random segments pass the chi-square test (p >= :data:`UNIFORM_P`) — unless the new
    content is a compressed format its extension allows (a zip updated, a photo added).
    Random segments include ciphertext written as base64 or hex (see
    :func:`encoded_random`).  A compressed file (by signature) whose signature is gone,
    with random bytes in its place, is suspected too: its old bytes were random
    already, so only the lost format tells; any other signature lost (a database
    XORed with a short key) is named in the evidence, not suspected.  A new file with
    no predecessor is suspected only when it also lies about its type (its extension
    promises a format its bytes do not have) or carries an extension ransomware appends.
    ``appended``: the new bytes begin with the old ones, whole — data was added (a mail
    with an attachment, a log of compressed records), none destroyed: not suspected.
    An archive of encrypted members (:func:`encrypted_archive`) where the bytes compared
    were none — ``report.txt`` deleted for a password-protected ``report.txt.zip`` — is
    suspected: its format explains its randomness, not what became of the content.
    ``body``: where the new content breaks the structure its format promises, with random
    bytes from there (:func:`blockforensics.bodies.body_break`): its format explains
    nothing, and the break is named like a content contradicting its extension.
    """
    if system_memory_file(path):
        return Judgement(False, True, ["an operating system's paging, hibernation, swap, "
                                       "crash-dump or shadow-copy file: its bytes are memory "
                                       "or copies of old blocks, random in places by nature"])
    evidence = []
    ext = extension(path)
    promised = EXTENSIONS.get(ext)
    if before_path is not None and extension(before_path) != ext:
        evidence.append(f"extension .{extension(before_path) or '(none)'} -> .{ext or '(none)'}")
    lost = (type_before in COMPRESSED and type_after in (None, "text")
            and after.random_segments > 0 and after.random_p >= UNIFORM_P)
    mismatch = bool(after.size and promised and promised != type_after)
    if mismatch:
        evidence.append(f"extension .{ext} promises {promised}, content is "
                        f"{type_after or 'of no known format'}")
    elif type_before not in (None, "text") and type_after in (None, "text") and after.size \
            and not lost:
        evidence.append(f"{type_before} signature gone, content is "
                        f"{type_after or 'of no known format'}")
    elif type_before and type_after and type_before != type_after:
        evidence.append(f"content type {type_before} -> {type_after}")
    ransom_ext = ext in RANSOM_EXTENSIONS
    if ransom_ext:
        evidence.append(f"extension .{ext} is one ransomware appends")
    explained = type_after in COMPRESSED and promised in (None, type_after) and body is None
    if body is not None:
        evidence.append(body.describe())
    if lost:
        evidence.append(f"{type_before} signature gone, random bytes in its place")
    share_before = before.random_share if before is not None else 0.0
    appeared = after.random_segments > 0 and after.random_p >= UNIFORM_P and (
        before is None or before.random_segments == 0
        or after.random_share - share_before >= RANDOM_SHARE_RISE) and not appended
    if appended and before is not None:
        evidence.append(f"its old {before.size} bytes kept whole at its start: "
                        f"{after.size - before.size} bytes appended")
    if after.random_segments:
        was = (f"; before {before.random_segments} of {before.segments}"
               if before is not None else "")
        evidence.append(
            f"{after.random_segments} of {after.segments} {SEGMENT_BYTES}-byte segments random "
            f"(entropy >= {RANDOM_SEGMENT_ENTROPY} bits/byte"
            + "".join(f", or {e} text uniform over its alphabet" for e in after.encodings)
            + f"{was}), first at byte "
            f"{after.random_at}; chi-square p {after.random_p:.3g} "
            f"({'>=' if after.random_p >= UNIFORM_P else '<'} {UNIFORM_P})")
    if before is not None and before.size and after.size:
        evidence.append(f"entropy {before.entropy:.2f} -> {after.entropy:.2f} bits/byte "
                        f"over {before.size} -> {after.size} bytes compared")
    if explained and after.random_segments:
        evidence.append(f"{type_after} by signature: a compressed format, high entropy expected")
    locked = (before is not None and encrypted_archive(after.head)
              and not encrypted_archive(before.head))
    if locked:
        evidence.append("an archive of encrypted members where the bytes compared were "
                        "none: nothing in it reads without a key")
    suspected = lost or locked or (appeared and not explained and (
        before is not None or replaced or mismatch or ransom_ext))
    random_already = (before is not None and before.random_segments > 0 and not appeared
                      and not suspected)
    if random_already and after.random_segments:
        evidence.append("as random before: no new randomness")
    return Judgement(suspected, not suspected and (explained or random_already or appended),
                     evidence)

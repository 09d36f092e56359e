"""The on-disk layout of a blockforensics image file (documented in docs/FORMAT.md).

    +----------------------+  offset 0
    | header (4096 bytes)  |  identity, parent link, geometry, crypto parameters
    +----------------------+  HEADER_SIZE
    | block payloads       |  stored bytes of each block, in write order
    +----------------------+  footer.index_offset
    | block index          |  one INDEX_DTYPE record per stored block, sorted by position
    +----------------------+
    | footer (64 bytes)    |  where the index is, its digest; absent => half-written file
    +----------------------+

All integers are little-endian.  Every structure is declared once here and
read by field name; nothing else in the package knows an offset.

numpy is imported on first use of :data:`INDEX_DTYPE` or :func:`digest_rows`:
``list`` reads headers, footers and indexes without it (see :mod:`.summary`).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from blockforensics.errors import FormatError

if TYPE_CHECKING:
    import numpy as np

HEADER_MAGIC = b"BFIMAGE\x00"
FOOTER_MAGIC = b"BFINDEX\x00"
FORMAT_VERSION = 1
HEADER_SIZE = 4096  # one page, so payloads start page-aligned and copy file to file fast
DIGEST_SIZE = 16  # bytes kept of SHA-256 (or HMAC-SHA-256) per block

#: the format's limits: block sizes, and the largest volume (1 PiB; block positions and
#: byte offsets then fit in int64 everywhere, whatever the block size)
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 512, 1 << 24
MAX_VOLUME_SIZE = 1 << 50

KIND_FULL, KIND_INCREMENTAL = 0, 1
KIND_NAMES = {KIND_FULL: "full", KIND_INCREMENTAL: "incremental"}

CIPHER_NONE, CIPHER_AES256GCM = 0, 1
KDF_RAW_KEY, KDF_SCRYPT = 0, 1

# Index record flags (per stored block).
FLAG_ZERO = 1  # the block is all zeros; no payload stored
FLAG_ZLIB = 2  # payload is zlib-compressed (before encryption)
FLAG_ENCRYPTED = 4  # payload is nonce || AES-256-GCM ciphertext || tag
FLAG_ZSTD = 8  # payload is one zstd frame (before encryption); what --compress writes
FLAG_CRC32 = 16  # stored_digest is the payload's CRC-32 (bytes 0-3, little-endian; 4-15 zero)
KNOWN_FLAGS = FLAG_ZERO | FLAG_ZLIB | FLAG_ENCRYPTED | FLAG_ZSTD | FLAG_CRC32
#: the flags that say how a payload encodes its block (FLAG_CRC32 says how it is checked)
ENCODING_FLAGS = FLAG_ZERO | FLAG_ZLIB | FLAG_ENCRYPTED | FLAG_ZSTD
#: bytes an encrypted payload adds to its block: nonce before, GCM tag after
NONCE_SIZE, TAG_SIZE = 12, 16

#: one index record per stored block, in file order (little-endian numpy codes)
INDEX_FIELDS = (
    ("position", "<u8"),  # block position in the volume
    ("offset", "<u8"),  # byte offset of the payload in this file
    ("length", "<u4"),  # payload length in bytes (0 for FLAG_ZERO)
    ("flags", "<u4"),  # FLAG_* bits
    ("stored_digest", f"V{DIGEST_SIZE}"),  # SHA-256/128 (or CRC-32) of the payload as stored
    ("content_digest", f"V{DIGEST_SIZE}"),  # digest of the plaintext block (see codec)
)
INDEX_RECORD_SIZE = 56  # bytes per record (INDEX_DTYPE.itemsize)

if TYPE_CHECKING:
    INDEX_DTYPE: np.dtype[np.void]


def __getattr__(name: str) -> Any:
    """``INDEX_DTYPE``, made (importing numpy) on first use."""
    if name == "INDEX_DTYPE":
        import numpy as np

        globals()[name] = dtype = np.dtype(list(INDEX_FIELDS))
        assert dtype.itemsize == INDEX_RECORD_SIZE
        return dtype
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def digest_rows(field: np.ndarray) -> np.ndarray:
    """A digest field of index records (``V16``) as a ``(k, 16)`` uint8 array."""
    import numpy as np

    return np.ascontiguousarray(field).view(np.uint8).reshape(-1, DIGEST_SIZE)


@dataclass(frozen=True)
class Header:
    """The image header: who this image is, whom it extends, and how blocks are stored."""

    kind: int
    block_size: int  # bytes per block
    volume_size: int  # bytes of the volume at this point (last block may be partial)
    created_ns: int  # when the captured state was taken (ns since the Unix epoch)
    written_ns: int  # when this file was written (differs after consolidation)
    image_id: bytes  # 16 random bytes; children name it as parent
    parent_id: bytes  # 16 bytes; all zero for a full image
    volume_id: bytes  # 16 bytes shared by every image of one chain
    cipher: int = CIPHER_NONE
    kdf: int = KDF_RAW_KEY
    kdf_n: int = 0  # scrypt cost parameters (kdf == KDF_SCRYPT)
    kdf_r: int = 0
    kdf_p: int = 0
    salt: bytes = bytes(16)  # scrypt salt
    key_check: bytes = bytes(32)  # HMAC proving the key, see crypto.py
    label: str = ""  # free text, e.g. "quiesced snapshot 2" (UTF-8, <= 64 bytes)
    point_mac: bytes = bytes(32)  # encrypted chains: keyed digest of the whole point, see crypto
    #: blocks at the end of this volume not inherited from the parent (a consolidation
    #: merged a shrink); 0 for every image a backup writes
    hidden_tail: int = 0
    version: int = FORMAT_VERSION
    magic: bytes = HEADER_MAGIC

    # field name -> struct code, in file order; the SHA-256 of all of it follows
    LAYOUT: ClassVar[tuple[tuple[str, str], ...]] = (
        ("magic", "8s"), ("version", "H"), ("kind", "B"), ("cipher", "B"), ("kdf", "B"),
        ("block_size", "I"), ("volume_size", "Q"), ("created_ns", "q"), ("written_ns", "q"),
        ("image_id", "16s"), ("parent_id", "16s"), ("volume_id", "16s"),
        ("kdf_n", "I"), ("kdf_r", "I"), ("kdf_p", "I"), ("salt", "16s"), ("key_check", "32s"),
        ("label", "64s"), ("point_mac", "32s"), ("hidden_tail", "Q"),
    )
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<" + "".join(c for _, c in LAYOUT))

    @property
    def encrypted(self) -> bool:
        return self.cipher != CIPHER_NONE

    @property
    def is_full(self) -> bool:
        return self.kind == KIND_FULL

    @property
    def n_blocks(self) -> int:
        return -(-self.volume_size // self.block_size)

    @property
    def inherit_blocks(self) -> int:
        """Positions ``0 .. inherit_blocks-1`` may be read from the parent; positions past
        them read as zeros unless this image holds them (docs/FORMAT.md, reading rule)."""
        return self.n_blocks - self.hidden_tail

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_ns / 1e9, tz=timezone.utc)

    def pack(self) -> bytes:
        values = []
        for name, _ in self.LAYOUT:
            value = getattr(self, name)
            values.append(value.encode()[:64] if name == "label" else value)
        body = self.STRUCT.pack(*values)
        body += bytes(HEADER_SIZE - 32 - len(body))
        return body + hashlib.sha256(body).digest()

    @classmethod
    def unpack(cls, raw: bytes, name: str = "image") -> Header:
        if len(raw) < HEADER_SIZE:
            raise FormatError(f"{name}: truncated (shorter than the {HEADER_SIZE}-byte header)")
        if raw[:8] != HEADER_MAGIC:
            raise FormatError(f"{name}: not a blockforensics image (bad magic)")
        body, digest = raw[: HEADER_SIZE - 32], raw[HEADER_SIZE - 32 : HEADER_SIZE]
        if hashlib.sha256(body).digest() != digest:
            raise FormatError(f"{name}: header damaged (checksum mismatch)")
        values = dict(zip((n for n, _ in cls.LAYOUT), cls.STRUCT.unpack_from(body)))
        if values["version"] != FORMAT_VERSION:
            raise FormatError(f"{name}: unsupported format version {values['version']}")
        values["label"] = values["label"].rstrip(b"\0").decode(errors="replace")
        header = cls(**values)
        problem = header.impossible()
        if problem:
            raise FormatError(f"{name}: header has impossible values ({problem})")
        return header

    def impossible(self) -> str:
        """What makes this header impossible under the format's limits ("" if nothing)."""
        bs = self.block_size
        if self.kind not in KIND_NAMES:
            return f"kind {self.kind}"
        if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE or bs & (bs - 1):
            return f"block size {bs}"
        if self.volume_size > MAX_VOLUME_SIZE:
            return f"volume size {self.volume_size} exceeds {MAX_VOLUME_SIZE}"
        if self.hidden_tail > self.n_blocks:
            return f"hidden tail of {self.hidden_tail} blocks"
        if (self.parent_id == bytes(16)) != (self.kind == KIND_FULL):
            return "a full image with a parent, or an incremental without one"
        if self.cipher not in (CIPHER_NONE, CIPHER_AES256GCM):
            return f"cipher {self.cipher}"
        return ""

    def replace(self, **changes: object) -> Header:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Header(**values)


def new_id() -> bytes:
    """A fresh random 16-byte identifier (image id, volume id)."""
    import uuid  # here: reading images (``list``) makes none, and uuid imports platform (2-3 ms)

    return uuid.uuid4().bytes


@dataclass(frozen=True)
class Footer:
    """Last 64 bytes of a complete image: where the index lies and its digest."""

    index_offset: int  # byte offset of the first index record
    index_count: int  # number of index records
    index_digest: bytes  # SHA-256 of the index bytes
    magic: bytes = field(default=FOOTER_MAGIC)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<8sQQ32s")  # + 8-byte self check
    SIZE: ClassVar[int] = 64

    def pack(self) -> bytes:
        body = self.STRUCT.pack(self.magic, self.index_offset, self.index_count,
                                self.index_digest)
        return body + hashlib.sha256(body).digest()[:8]

    @classmethod
    def unpack(cls, raw: bytes, name: str = "image") -> Footer:
        body, check = raw[: cls.STRUCT.size], raw[cls.STRUCT.size : cls.SIZE]
        if len(raw) != cls.SIZE or body[:8] != FOOTER_MAGIC:
            raise FormatError(f"{name}: incomplete image (no footer: truncated or half-written)")
        if hashlib.sha256(body).digest()[:8] != check:
            raise FormatError(f"{name}: footer damaged (checksum mismatch)")
        magic, offset, count, digest = cls.STRUCT.unpack(body)
        return cls(offset, count, digest, magic)

"""SHA-256/128 and CRC-32 of many blocks at once: the per-block digests image records carry.

A backup hashes every block it reads, so this is the hottest loop of the
toolkit.  With the C extension a whole batch of spans is hashed per call by
libcrypto without the GIL, split over a thread per core (:mod:`blockforensics.batch`);
without it the same digests come from hashlib, one Python call per block (about
3x slower on two cores).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

import numpy as np

from blockforensics import batch
from blockforensics.image.format import DIGEST_SIZE


def sha256_128(data: bytes | memoryview) -> bytes:
    """The first 16 bytes of SHA-256 of one byte string."""
    return hashlib.sha256(data).digest()[:DIGEST_SIZE]


def sha256_128_rows(rows: np.ndarray) -> np.ndarray:
    """SHA-256/128 of every row of a 2-D uint8 array, as a ``(k, 16)`` uint8 array."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    k, width = rows.shape
    return sha256_128_spans(rows.reshape(-1), np.arange(k, dtype=np.int64) * width,
                            np.full(k, width, dtype=np.int64))


def sha256_128_spans(data: bytes | memoryview | np.ndarray, offsets: np.ndarray,
                     lengths: np.ndarray) -> np.ndarray:
    """SHA-256/128 of the spans ``data[offset : offset + length]`` (bytes), as ``(k, 16)``."""
    out = np.empty((len(offsets), DIGEST_SIZE), dtype=np.uint8)
    _over_spans("sha256_spans", sha256_128, data, offsets, lengths, out)
    return out


def crc32_spans(data: bytes | memoryview | np.ndarray, offsets: np.ndarray,
                lengths: np.ndarray) -> np.ndarray:
    """CRC-32 (zlib's) of the spans ``data[offset : offset + length]`` (bytes), as uint32."""
    out = np.empty(len(offsets), dtype="<u4")
    _over_spans("crc32_spans", lambda span: zlib.crc32(span).to_bytes(4, "little"),
                data, offsets, lengths, out.view(np.uint8).reshape(-1, 4))
    return out


def _over_spans(native: str, one: Callable[[memoryview], bytes],
                data: bytes | memoryview | np.ndarray, offsets: np.ndarray,
                lengths: np.ndarray, out: np.ndarray) -> None:
    """Fill row ``i`` of ``out`` with the digest of span ``i`` of ``data``: by the C
    extension's function ``native`` over the batch on a thread per core, or without
    it by ``one`` per span."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if batch.native is None:
        view = memoryview(data).cast("B")
        out.reshape(-1)[:] = np.frombuffer(b"".join(
            one(view[s : s + n]) for s, n in zip(offsets.tolist(), lengths.tolist())),
            np.uint8)
        return
    function = getattr(batch.native, native)
    batch.run(lambda part: function(data, offsets[part], lengths[part], out[part]),
              batch.parts(lengths))


def stored_checks(data: bytes | memoryview | np.ndarray, offsets: np.ndarray,
                  lengths: np.ndarray) -> np.ndarray:
    """The stored digests of payloads written with ``FLAG_CRC32``: each span's CRC-32,
    little-endian, in the first 4 of 16 bytes (the rest zero), as ``(k, 16)`` uint8."""
    out = np.zeros((len(offsets), DIGEST_SIZE), dtype=np.uint8)
    out[:, :4] = crc32_spans(data, offsets, lengths).view(np.uint8).reshape(-1, 4)
    return out

"""Block codecs: how plaintext blocks become stored payloads, and back.

One codec per chain.  :class:`PlainCodec` stores blocks as they are (all-zero
blocks as a flag without payload, optionally zstd-compressed);
:class:`EncryptedCodec` compresses (optionally), then encrypts every block on
its own.  Both produce the same :class:`EncodedBlocks` bundle, so the image
writer, consolidation and verify never branch on encryption.
"""

from __future__ import annotations

import collections
import copy
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from blockforensics import batch
from blockforensics.crypto import NONCE_SIZE, TAG_SIZE, ChainKeys
from blockforensics.disk import nonzero_rows
from blockforensics.errors import CryptoKeyError, FormatError
from blockforensics.image.format import (
    DIGEST_SIZE,
    ENCODING_FLAGS,
    FLAG_CRC32,
    FLAG_ENCRYPTED,
    FLAG_ZERO,
    FLAG_ZLIB,
    FLAG_ZSTD,
    INDEX_DTYPE,
)
from blockforensics.spanhash import sha256_128, sha256_128_rows, sha256_128_spans, stored_checks

#: a compressed payload is kept only when it saves at least this share of the block
MIN_SAVING = 1 / 16
ZSTD_LEVEL = 1  # ~400 MB/s per core on 4 KiB blocks; level -1 is ~30 % faster but stores 8 % more
#: bytes sampled per block by the incompressibility test, and the distinct values among
#: them from which a block is taken as random (random bytes: ~101 of 128, rarely under 92;
#: text, code and tables: far fewer)
SAMPLE_BYTES, RANDOM_DISTINCT = 128, 92


_per_thread = threading.local()


def _zstd() -> tuple[object, object]:
    """One zstd compressor and decompressor per thread (their methods must not run in two
    threads at once; imported on first use only)."""
    pair = getattr(_per_thread, "zstd", None)
    if pair is None:
        import zstandard

        pair = _per_thread.zstd = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False),
            zstandard.ZstdDecompressor())
    return pair


def random_rows(blocks: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A bool per row of ``blocks[rows]``: does it look random (compressed media, archives,
    ciphertext)?  ``SAMPLE_BYTES`` bytes spread over each block are sorted (a radix sort
    for bytes) and their distinct values counted: ~8 % of a zstd pass over the blocks,
    and it spares zstd the ones it could not shrink (a few % of a backup's CPU)."""
    block_size = blocks.shape[1]
    stride = max(1, block_size // SAMPLE_BYTES)
    sample = np.sort(blocks[rows, stride // 2 :: stride], axis=1, kind="stable")
    distinct = 1 + np.count_nonzero(sample[:, 1:] != sample[:, :-1], axis=1)
    return distinct >= RANDOM_DISTINCT


@dataclass
class Packed:
    """Rows packed for storage: row ``i``'s payload is ``data[starts[i] : starts[i] +
    lengths[i]]`` (bytes), a zstd frame where ``flags[i]`` is ``FLAG_ZSTD``, else the block."""

    flags: np.ndarray  # uint32 per row: FLAG_ZSTD or 0
    starts: np.ndarray  # int64 per row: where its payload starts in ``data`` (bytes)
    lengths: np.ndarray  # uint32 per row: payload bytes
    data: np.ndarray  # uint8, read-only: the blocks stored raw, in row order, then the frames

    def piece(self, i: int) -> memoryview:
        """Row ``i``'s payload."""
        start = int(self.starts[i])
        return self.data[start : start + int(self.lengths[i])].data


#: bytes of frames a :class:`FrameCache` holds (frames plus ``FRAME_ENTRY_BYTES`` each):
#: a disk repeats blocks (copies of files, licence texts, versions of a library), often
#: close together.  On issue 19's 1 GiB image 40 % of the compressible blocks repeat one
#: 8-16 MiB of frames before (none within 8 MiB): 16 MiB spares zstd all of them, 32 MiB
#: leaves a margin (peak RSS +26 MiB)
FRAME_CACHE_BYTES = 32 << 20
FRAME_ENTRY_BYTES = 128  # a dict slot, a 16-byte key and a bytes object's header


class FrameCache:
    """The zstd frames of recently compressed blocks by their SHA-256/128 content digest,
    oldest dropped first past ``FRAME_CACHE_BYTES``: a block seen again is not compressed
    again (same content, same frame).  ``b""`` stands for a block stored raw (its frame
    saved too little).  One per image writer: not for use by two threads at once."""

    def __init__(self, limit: int = FRAME_CACHE_BYTES):
        self.frames: dict[bytes, bytes] = {}
        self.order: collections.deque[bytes] = collections.deque()
        self.nbytes, self.limit = 0, limit

    def add(self, frames: dict[bytes, bytes]) -> None:
        """Remember ``frames`` (digest -> frame), then forget the oldest past the limit."""
        for key, frame in frames.items():
            if key not in self.frames:
                self.frames[key] = frame
                self.order.append(key)
                self.nbytes += len(frame) + FRAME_ENTRY_BYTES
        while self.nbytes > self.limit:
            self.nbytes -= len(self.frames.pop(self.order.popleft())) + FRAME_ENTRY_BYTES


def compress_rows(blocks: np.ndarray, rows: np.ndarray, digests: np.ndarray,
                  cache: FrameCache) -> Packed:
    """zstd-compress ``blocks[rows]`` (``rows``: indices into the ``(k, block_size)`` array)
    as one batch, on every core without the GIL.  A row becomes a frame where that saves
    at least ``MIN_SAVING`` of the block; rows that look random (:func:`random_rows`) are
    not compressed at all, and they and the frames too large are stored raw.  A row whose
    SHA-256/128 (``digests``: ``(len(rows), 16)``) is in ``cache``, or earlier in the
    batch, takes that frame instead of being compressed; the frames made join the cache."""
    import zstandard

    block_size = blocks.shape[1]
    limit = block_size - int(block_size * MIN_SAVING)
    blocks = np.ascontiguousarray(blocks)
    rows = np.asarray(rows, dtype=np.int64)
    flags = np.zeros(len(rows), dtype=np.uint32)
    if len(rows) == 0:
        return Packed(flags, np.zeros(0, np.int64), np.zeros(0, np.uint32),
                      np.zeros(0, np.uint8))
    tried = np.flatnonzero(~random_rows(blocks, rows))
    joined = np.ascontiguousarray(digests[tried], dtype=np.uint8).tobytes()
    keys = [joined[i : i + DIGEST_SIZE] for i in range(0, len(joined), DIGEST_SIZE)]
    known = cache.frames
    todo: dict[bytes, int] = {}  # digest -> the first row of ``tried`` holding it
    for i, key in enumerate(keys):
        if key not in known and key not in todo:
            todo[key] = i
    if todo:
        firsts = tried[np.fromiter(todo.values(), dtype=np.int64, count=len(todo))]
        segments = np.empty((len(firsts), 2), dtype=np.uint64)  # (byte offset, bytes)
        segments[:, 0], segments[:, 1] = rows[firsts] * block_size, block_size
        source = zstandard.BufferWithSegments(blocks.reshape(-1).data, segments.tobytes())
        made = _zstd()[0].multi_compress_to_buffer(  # type: ignore[attr-defined]
            source, threads=batch.threads())
        fresh = {key: made[j].tobytes() if len(made[j]) <= limit else b""
                 for j, key in enumerate(todo)}
        del made  # zstd's buffers, before the payload is laid out
        frames = [fresh.get(key) or known.get(key, b"") for key in keys]
        cache.add(fresh)
    else:
        frames = [known[key] for key in keys]
    sizes = np.fromiter(map(len, frames), dtype=np.uint32, count=len(tried))
    kept = sizes > 0
    zipped = tried[kept]
    flags[zipped] = FLAG_ZSTD
    raw = np.flatnonzero(flags == 0)
    lengths = np.full(len(rows), block_size, dtype=np.uint32)
    lengths[zipped] = sizes[kept]
    # one copy: the raw rows, then the frames (the raw ones' are b"": nothing)
    data = np.frombuffer(b"".join([*(blocks[r].data for r in rows[raw].tolist()), *frames]),
                         dtype=np.uint8)
    starts = np.empty(len(rows), dtype=np.int64)
    starts[raw] = np.arange(len(raw), dtype=np.int64) * block_size
    starts[zipped] = len(raw) * block_size + _starts(sizes[kept])
    return Packed(flags, starts, lengths, data)


def decompress_rows(payloads: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                    block_size: int, positions: np.ndarray) -> np.ndarray:
    """``(k, block_size)`` blocks from the ``k`` zstd frames at ``starts`` (``lengths``
    bytes) of ``payloads``, decompressed as one batch on every core without the GIL and no
    object per frame; FormatError naming the first frame that is damaged or does not hold
    exactly one block (zstd checks each against the size it is given)."""
    import zstandard

    k = len(starts)
    segments = np.empty((k, 2), dtype=np.uint64)
    segments[:, 0], segments[:, 1] = starts, lengths
    source = zstandard.BufferWithSegments(payloads.reshape(-1).data, segments.tobytes())
    try:
        blocks = _zstd()[1].multi_decompress_to_buffer(  # type: ignore[attr-defined]
            source, decompressed_sizes=np.full(k, block_size, np.uint64).tobytes(),
            threads=batch.threads())
    except zstandard.ZstdError:  # which one: the first that fails on its own
        bad = next((i for i in range(k) if not _inflates(source[i].tobytes(), block_size)), 0)
        raise FormatError(f"block {int(positions[bad])}: damaged compressed payload") from None
    return np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(k, block_size)


def _inflates(frame: bytes, block_size: int) -> bool:
    """Does this zstd frame hold exactly one block?"""
    try:
        return len(decompress(FLAG_ZSTD, frame, block_size)) == block_size
    except ValueError:
        return False


def decompress(flags: int, data: bytes | memoryview, block_size: int) -> bytes:
    """The block behind a (possibly) compressed payload; ValueError if it is damaged."""
    if flags & FLAG_ZSTD:
        import zstandard

        try:  # the frame's own size claim is checked before anything is allocated
            if zstandard.frame_content_size(data) not in (block_size, -1):
                raise ValueError("zstd frame of another size than a block")
            return _zstd()[1].decompress(data, max_output_size=block_size)  # type: ignore[attr-defined]
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from exc
    if flags & FLAG_ZLIB:  # written by --compress before zstd; still read
        try:
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, block_size + 1)
        except zlib.error as exc:
            raise ValueError(str(exc)) from exc
        if not inflater.eof:
            raise ValueError("truncated or oversized zlib stream")
        return out
    return bytes(data)


@dataclass
class EncodedBlocks:
    """Blocks ready to store: their index records (offset still relative) and payload bytes."""

    records: np.ndarray  # INDEX_DTYPE; "offset" relative to the start of ``payload``
    payload: bytes | memoryview  # the stored bytes of all blocks, back to back


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Byte offsets of back-to-back payloads of these lengths."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def _records(positions: np.ndarray, flags: np.ndarray, lengths: np.ndarray,
             stored: np.ndarray, content: np.ndarray, starts: np.ndarray | None = None
             ) -> np.ndarray:
    """Index records; payloads at ``starts`` (bytes into the batch's payload), by default
    back to back in record order."""
    rec = np.zeros(len(positions), dtype=INDEX_DTYPE)
    rec["position"] = positions
    rec["flags"] = flags
    rec["length"] = lengths
    rec["offset"] = _starts(lengths) if starts is None else starts
    rec["stored_digest"] = stored.view(f"V{DIGEST_SIZE}").ravel()
    rec["content_digest"] = content.view(f"V{DIGEST_SIZE}").ravel()
    return rec


class BlockCodec:
    """Turns plaintext blocks into stored payloads and back (subclasses: plain, encrypted)."""

    encrypted: bool = False

    def __init__(self, block_size: int, compress: bool = False):
        self.block_size = block_size
        self.compress = compress
        self.frames = FrameCache()  # of the blocks this codec compressed lately

    def compressing(self, compress: bool = True) -> BlockCodec:
        """The same codec (same keys), storing zstd-compressed payloads where smaller.

        Compression is a per-image choice: readers follow each record's flags."""
        other = copy.copy(self)
        other.compress = compress
        other.frames = FrameCache()
        return other

    def content_digests(self, blocks: np.ndarray) -> np.ndarray:
        """``(k, 16)`` digests of plaintext blocks, comparable with index content digests."""
        raise NotImplementedError

    def zero_digest(self) -> np.ndarray:
        """The content digest of an all-zero block (what absent blocks hold)."""
        return self.content_digests(np.zeros((1, self.block_size), dtype=np.uint8))[0]

    def encode(self, positions: np.ndarray, blocks: np.ndarray) -> EncodedBlocks:
        raise NotImplementedError

    def batchable(self, records: np.ndarray) -> np.ndarray:
        """A bool per record: can :meth:`decode_rows` decode it with others at once?
        (Plain payloads need no decoding, or are compressed: never.)"""
        return np.zeros(len(records), dtype=bool)

    def decode_rows(self, records: np.ndarray, payloads: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode batchable ``records`` from their ``(k, length)`` payloads at once: the
        ``(k, block_size)`` plaintexts and a bool per row, False where it fails
        authentication (its row then holds zeros)."""
        raise NotImplementedError

    def decode_many(self, records: np.ndarray, payloads: np.ndarray, starts: np.ndarray
                    ) -> np.ndarray:
        """The ``(k, block_size)`` plaintexts of ``records`` whose payloads lie back to back
        in ``payloads`` from ``starts``: zstd frames of a plain chain decompressed as one
        batch on every core, anything else block by block; FormatError on a bad block."""
        out = np.empty((len(records), self.block_size), dtype=np.uint8)
        ends = starts + records["length"].astype(np.int64)
        encoding = records["flags"] & ENCODING_FLAGS
        frames = np.flatnonzero(encoding == FLAG_ZSTD)  # plain chains only: no other bit
        if len(frames):
            out[frames] = decompress_rows(payloads, starts[frames], ends[frames] - starts[frames],
                                          self.block_size, records["position"][frames])
        for i in np.flatnonzero(encoding != FLAG_ZSTD).tolist():
            block = self.decode(records[i], payloads[starts[i] : ends[i]].tobytes())
            out[i] = np.frombuffer(block, dtype=np.uint8)
        return out

    def decode(self, record: np.void, payload: bytes) -> bytes:
        """The plaintext block behind one index record and its payload."""
        flags, position = int(record["flags"]), int(record["position"])
        if flags & FLAG_ZERO:
            return bytes(self.block_size)
        if flags & FLAG_ENCRYPTED:
            raise CryptoKeyError("this chain is encrypted: give its key (--key-file)")
        return self._inflate(flags, payload, position)

    def _inflate(self, flags: int, data: bytes, position: int) -> bytes:
        try:
            data = decompress(flags, data, self.block_size)
        except ValueError as exc:
            raise FormatError(f"block {position}: damaged compressed payload") from exc
        if len(data) != self.block_size:
            raise FormatError(f"block {position}: payload decodes to {len(data)} bytes")
        return data


class PlainCodec(BlockCodec):
    """Unencrypted storage; zero blocks cost an index record only."""

    def content_digests(self, blocks: np.ndarray) -> np.ndarray:
        return sha256_128_rows(blocks)

    def _zero_content_digests(self, zero: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """:meth:`content_digests` of ``blocks``; the rows marked in ``zero`` (all-zero
        blocks) take the one digest of a zero block instead of being hashed."""
        if not zero.any():
            return sha256_128_rows(blocks)
        blocks = np.ascontiguousarray(blocks)
        width = blocks.shape[1]
        rows = np.flatnonzero(~zero)
        content = np.empty((len(blocks), DIGEST_SIZE), dtype=np.uint8)
        content[zero] = np.frombuffer(sha256_128(bytes(width)), np.uint8)
        content[rows] = sha256_128_spans(blocks.reshape(-1), rows * width,
                                         np.full(len(rows), width, np.int64))
        return content

    def encode(self, positions: np.ndarray, blocks: np.ndarray) -> EncodedBlocks:
        zero = ~nonzero_rows(blocks)
        data = ~zero
        content = self._zero_content_digests(zero, blocks)
        flags = np.where(zero, FLAG_ZERO, FLAG_CRC32).astype(np.uint32)
        lengths = np.where(zero, 0, self.block_size).astype(np.uint32)
        stored = np.empty_like(content)
        stored[zero] = np.frombuffer(sha256_128(b""), np.uint8)
        if not self.compress:
            kept = blocks[data] if zero.any() else np.ascontiguousarray(blocks)
            width = np.full(len(kept), self.block_size, np.int64)
            stored[data] = stored_checks(kept.reshape(-1), _starts(width), width)
            return EncodedBlocks(_records(positions, flags, lengths, stored, content),
                                 kept.reshape(-1).data)
        packed = compress_rows(blocks, np.flatnonzero(data), content[data], self.frames)
        flags[data], lengths[data] = packed.flags | FLAG_CRC32, packed.lengths
        starts = np.zeros(len(positions), dtype=np.int64)
        starts[data] = packed.starts
        stored[data] = stored_checks(packed.data, packed.starts, packed.lengths)
        return EncodedBlocks(_records(positions, flags, lengths, stored, content, starts),
                             packed.data.data)


class EncryptedCodec(BlockCodec):
    """AES-256-GCM per block (after optional compression); keyed content digests."""

    encrypted = True

    def __init__(self, keys: ChainKeys, block_size: int, compress: bool = False):
        super().__init__(block_size, compress)
        self.keys = keys

    def content_digests(self, blocks: np.ndarray) -> np.ndarray:
        return self.keys.content_digests(sha256_128_rows(blocks))

    def encode(self, positions: np.ndarray, blocks: np.ndarray) -> EncodedBlocks:
        k = len(positions)
        plain = sha256_128_rows(blocks)
        content = self.keys.content_digests(plain)
        if not self.compress:  # every payload has the same size: one array, no joins
            sealed_flags = FLAG_ENCRYPTED | FLAG_CRC32
            out = self.keys.encrypt_rows(positions, sealed_flags, blocks)
            flags: np.ndarray = np.full(k, sealed_flags, dtype=np.uint32)
            width = np.full(k, out.shape[1], dtype=np.int64)
            return EncodedBlocks(_records(positions, flags, width.astype(np.uint32),
                                          stored_checks(out.reshape(-1), _starts(width), width),
                                          content), out.reshape(-1).data)
        packed = compress_rows(blocks, np.arange(k), plain, self.frames)
        flags = packed.flags | FLAG_ENCRYPTED | FLAG_CRC32
        sealed, starts = self.keys.encrypt_spans(positions, flags, packed.data, packed.starts,
                                                 packed.lengths)
        lengths = packed.lengths + np.uint32(NONCE_SIZE + TAG_SIZE)
        return EncodedBlocks(_records(positions, flags, lengths,
                                      stored_checks(sealed, starts, lengths), content),
                             sealed.data)

    def decode_many(self, records: np.ndarray, payloads: np.ndarray, starts: np.ndarray
                    ) -> np.ndarray:
        """As :meth:`BlockCodec.decode_many`: every payload opened in one batch, then the
        zstd frames among the plaintexts decompressed in another."""
        flags, positions = records["flags"], records["position"]
        injected = np.flatnonzero((flags & FLAG_ENCRYPTED) == 0)
        if len(injected):  # never written by an encrypted chain
            raise FormatError(f"block {int(positions[injected[0]])}: stored unencrypted in an "
                              "encrypted chain")
        if np.any(records["length"] < NONCE_SIZE + TAG_SIZE):
            bad = int(positions[np.argmax(records["length"] < NONCE_SIZE + TAG_SIZE)])
            raise FormatError(f"block {bad}: {UNAUTHENTIC}")
        plain, at, ok = self.keys.decrypt_spans(positions, flags, payloads, starts,
                                                records["length"])
        if not ok.all():
            raise FormatError(f"block {int(positions[np.argmin(ok)])}: {UNAUTHENTIC}")
        sizes = records["length"].astype(np.int64) - (NONCE_SIZE + TAG_SIZE)
        bs = self.block_size
        out = np.empty((len(records), bs), dtype=np.uint8)
        zstd, legacy = (flags & FLAG_ZSTD) != 0, (flags & FLAG_ZLIB) != 0
        raw = np.flatnonzero(~(zstd | legacy))
        wrong = raw[sizes[raw] != bs]
        if len(wrong):
            raise FormatError(f"block {int(positions[wrong[0]])}: payload decodes to "
                              f"{int(sizes[wrong[0]])} bytes")
        if len(raw) == len(records):  # nothing compressed: the plaintexts are the rows
            return plain.reshape(-1, bs)
        for i in raw.tolist():
            out[i] = plain[at[i] : at[i] + bs]
        for i in np.flatnonzero(legacy).tolist():  # zlib, written by earlier versions
            block = self._inflate(int(flags[i]), plain[at[i] : at[i] + sizes[i]].tobytes(),
                                  int(positions[i]))
            out[i] = np.frombuffer(block, np.uint8)
        rows = np.flatnonzero(zstd & ~legacy)
        if len(rows):
            out[rows] = decompress_rows(plain, at[rows], sizes[rows], bs, positions[rows])
        return out

    def decode(self, record: np.void, payload: bytes) -> bytes:
        flags, position = int(record["flags"]), int(record["position"])
        if not flags & FLAG_ENCRYPTED:  # never written by an encrypted chain: injected
            raise FormatError(f"block {position}: stored unencrypted in an encrypted chain")
        data = self.keys.decrypt(position, flags, payload)
        if data is None:
            raise FormatError(f"block {position}: {UNAUTHENTIC}")
        return self._inflate(flags, data, position)

    @property
    def sealed_length(self) -> int:
        """Bytes of an uncompressed block's payload: nonce, ciphertext, tag."""
        return NONCE_SIZE + self.block_size + TAG_SIZE

    def batchable(self, records: np.ndarray) -> np.ndarray:
        return (((records["flags"] & ENCODING_FLAGS) == FLAG_ENCRYPTED)
                & (records["length"] == self.sealed_length))

    def decode_rows(self, records: np.ndarray, payloads: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        return self.keys.decrypt_rows(records["position"], records["flags"], payloads)


#: what is wrong with a block that fails authentication
UNAUTHENTIC = "fails authentication (altered, moved or from another chain)"

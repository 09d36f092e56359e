"""Block compression: zstd frames per block, compressed as a batch; zlib still read."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from blockforensics.image.codec import (
    MIN_SAVING,
    FrameCache,
    compress_rows,
    decompress,
    random_rows,
)
from blockforensics.image.format import ENCODING_FLAGS, FLAG_ZLIB, FLAG_ZSTD
from blockforensics.spanhash import sha256_128_rows


def _blocks(seed: int = 3) -> np.ndarray:
    """Rows alternating text-like (compressible) and random (incompressible) blocks."""
    rng = np.random.default_rng(seed)
    text = np.frombuffer(b"".join(rng.choice([b"alpha ", b"beta ", b"gamma "], 4000).tolist())
                         [:4096], np.uint8)
    rows = [text if i % 2 == 0 else rng.integers(0, 256, 4096, dtype=np.uint8)
            for i in range(64)]
    return np.stack(rows)


def test_compressible_rows_become_zstd_frames_and_random_rows_stay_raw():
    blocks = _blocks()
    rows = np.arange(1, 64)  # the rows asked for, by index into the batch
    packed = compress_rows(blocks, rows, sha256_128_rows(blocks[rows]), FrameCache())
    assert packed.flags[1::2].tolist() == [FLAG_ZSTD] * 31
    assert packed.flags[0::2].tolist() == [0] * 32
    assert packed.lengths.sum() == packed.data.nbytes  # no byte stored twice or left out
    for i, row in enumerate(rows.tolist()):
        piece = bytes(packed.piece(i))
        assert decompress(int(packed.flags[i]), piece, 4096) == blocks[row].tobytes()
        if packed.flags[i]:
            assert len(piece) <= 4096 * (1 - MIN_SAVING)
        else:
            assert piece == blocks[row].tobytes()


def test_random_rows_are_recognised_without_compressing_them():
    """The sample test flags random blocks, and never text or machine code that zstd
    halves (a real shared library's first blocks)."""
    import zstandard

    library = np.fromfile(zstandard.backend_c.__file__, np.uint8)  # machine code and tables
    code = library[: len(library) // 4096 * 4096].reshape(-1, 4096)[:64]
    blocks = np.concatenate([_blocks(), code])
    random = random_rows(blocks, np.arange(len(blocks)))
    assert random[1:64:2].all() and not random[0:64:2].any()
    sizes = [len(zstandard.ZstdCompressor(level=1).compress(row.tobytes())) for row in code]
    assert not random[64:][np.array(sizes) < 2048].any()  # code that halves is never skipped


def test_images_written_with_zlib_are_still_read():
    block = _blocks()[0].tobytes()
    assert decompress(FLAG_ZLIB, zlib.compress(block, 1), 4096) == block


@pytest.mark.parametrize("flag, payload", [
    (FLAG_ZLIB, zlib.compress(bytes(1 << 20))),  # a bomb: 1 MiB from a 4 KiB block's payload
    (FLAG_ZLIB, zlib.compress(bytes(4096))[:-3]),  # truncated
    (FLAG_ZSTD, b"\x28\xb5\x2f\xfd" + bytes(12)),  # a zstd magic and garbage
])
def test_damaged_or_oversized_payloads_are_refused(flag, payload):
    with pytest.raises(ValueError):
        decompress(flag, payload, 4096)


def test_an_oversized_zstd_frame_is_refused():
    import zstandard

    frame = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    with pytest.raises(ValueError):
        decompress(FLAG_ZSTD, frame, 4096)


def test_a_compressed_chain_restores_exactly_and_a_flipped_payload_bit_is_named(tmp_path):
    from blockforensics import Chain, Volume, backup, restore
    from blockforensics.errors import IntegrityError

    blocks = _blocks()
    vol = Volume.from_bytes(blocks.tobytes())
    chain = Chain.create(tmp_path / "c")
    backup(chain, vol, compress=True)
    assert restore(chain, 0).tobytes() == blocks.tobytes()
    image = chain.images[0]
    records = image.index.all()
    record = records[np.flatnonzero((records["flags"] & ENCODING_FLAGS) == FLAG_ZSTD)[5]]
    with open(image.path, "r+b") as fh:
        fh.seek(int(record["offset"]) + int(record["length"]) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(IntegrityError, match=f"block {int(record['position'])}"):
        restore(Chain.open(tmp_path / "c"), 0)


def test_a_batch_of_frames_decompresses_and_a_bad_frame_is_named():
    """Frames read back to back (as a restore reads them) come back as blocks; a frame that
    is damaged, holds a shorter or a longer block fails naming its block position."""
    import zstandard

    from blockforensics.errors import FormatError
    from blockforensics.image.codec import decompress_rows

    blocks = _blocks()[0::2]
    frames = [zstandard.ZstdCompressor(level=1).compress(row.tobytes()) for row in blocks]
    positions = np.arange(100, 100 + len(frames))

    def batch(frames: list[bytes]) -> np.ndarray:
        lengths = np.array([len(f) for f in frames])
        starts = np.cumsum(lengths) - lengths
        payloads = np.frombuffer(b"".join(frames), np.uint8)
        return decompress_rows(payloads, starts, lengths, 4096, positions)

    assert batch(frames).tobytes() == blocks.tobytes()
    short = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(4000))
    longer = zstandard.ZstdCompressor().compress(bytes(8192))
    for bad in (frames[7][:-5] + bytes(5), short, longer):
        with pytest.raises(FormatError, match="block 107: damaged"):
            batch([*frames[:7], bad, *frames[8:]])


def _repeating(seed: int = 5) -> np.ndarray:
    """64 rows: 8 distinct text-like blocks, each 4 times, 2 zero blocks, random blocks."""
    rng = np.random.default_rng(seed)
    words = [b"delta ", b"echo ", b"foxtrot ", b"golf "]
    texts = [np.frombuffer(b"".join(rng.choice(words, 1000).tolist())[:4096], np.uint8)
             for _ in range(8)]
    rows = [*texts * 4, np.zeros(4096, np.uint8), np.zeros(4096, np.uint8),
            *rng.integers(0, 256, (22, 4096), dtype=np.uint8)]
    return np.stack([rows[i] for i in rng.permutation(len(rows))])


def test_a_block_seen_again_takes_the_cached_frame_and_decodes_to_itself():
    """A repeat, in the batch or from an earlier one, stores the frame the cache holds for
    its digest: a cache filled with level-19 frames (other bytes than level 1 makes) is
    what the payloads hold, and every payload decodes to its own block."""
    import zstandard

    blocks = _repeating()
    rows = np.flatnonzero(blocks.any(axis=1))
    digests = sha256_128_rows(blocks[rows])
    cache = FrameCache()
    first = compress_rows(blocks, rows, digests, cache)
    alone = [compress_rows(blocks, rows[i : i + 1], digests[i : i + 1], FrameCache())
             for i in range(len(rows))]  # each row in a batch of its own, no cache
    assert [bytes(first.piece(i)) for i in range(len(rows))] == \
        [bytes(one.piece(0)) for one in alone]
    tried = ~random_rows(blocks, rows)  # each distinct block tried once, by its digest
    assert set(cache.frames) == {digest.tobytes() for digest in digests[tried]}
    assert sum(len(frame) > 0 for frame in cache.frames.values()) == 8  # the text blocks
    strong = zstandard.ZstdCompressor(level=19)
    forced = FrameCache()
    forced.add({digests[i].tobytes(): strong.compress(blocks[row].tobytes())
                for i, row in enumerate(rows.tolist()) if (first.flags[i] == FLAG_ZSTD)})
    second = compress_rows(blocks, rows, digests, forced)
    for i, row in enumerate(rows.tolist()):
        piece = bytes(second.piece(i))
        assert decompress(int(second.flags[i]), piece, 4096) == blocks[row].tobytes()
        if second.flags[i] == FLAG_ZSTD:
            assert piece == forced.frames[digests[i].tobytes()] != bytes(first.piece(i))
    assert second.flags.tolist() == first.flags.tolist()


def test_the_frame_cache_forgets_its_oldest_frames_past_its_limit():
    from blockforensics.image.codec import FRAME_ENTRY_BYTES

    cache = FrameCache(limit=10 * (100 + FRAME_ENTRY_BYTES))
    for n in range(4):
        cache.add({bytes([n, i]) * 8: bytes(100) for i in range(6)})
    assert list(cache.frames) == [bytes([n, i]) * 8 for n in (2, 3) for i in range(6)][2:]
    assert cache.nbytes == 10 * (100 + FRAME_ENTRY_BYTES)


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_compressed_codec_digests_and_decodes_repeated_and_zero_blocks(encrypted):
    """Both codecs, through the cache: content digests as computed block by block (zero
    blocks not hashed but given the zero block's digest), every block decoded back."""
    import os

    from blockforensics.crypto import KEY_SIZE, ChainKeys
    from blockforensics.image.codec import EncryptedCodec, PlainCodec

    blocks = _repeating(seed=9)
    codec = (EncryptedCodec(ChainKeys(os.urandom(KEY_SIZE), os.urandom(16)), 4096)
             if encrypted else PlainCodec(4096)).compressing()
    positions = np.arange(len(blocks), dtype=np.uint64)
    for part in (slice(0, 40), slice(40, 64)):  # the second batch repeats the first's blocks
        encoded = codec.encode(positions[part], blocks[part])
        records = encoded.records
        assert (records["content_digest"].tobytes()
                == codec.content_digests(blocks[part]).tobytes())
        texts = np.count_nonzero(~random_rows(blocks[part], np.arange(len(records)))
                                 & (blocks[part].any(axis=1) | encrypted))  # zeros: a flag
        assert np.count_nonzero(records["flags"] & FLAG_ZSTD) == texts > 0
        payloads = np.frombuffer(encoded.payload, np.uint8)
        decoded = codec.decode_many(records, payloads, records["offset"].astype(np.int64))
        assert decoded.tobytes() == blocks[part].tobytes()


def test_a_backup_stores_a_repeated_block_as_the_same_frame_and_restores_exactly(tmp_path):
    """Through the whole backup: 16 text blocks repeated over 3000 blocks (three batches of
    the reader) and random ones between; every copy of a block is stored as the same zstd
    frame, and the chain restores byte for byte."""
    from blockforensics import Chain, Volume, backup, restore

    rng = np.random.default_rng(12)
    words = [b"hotel ", b"india ", b"juliet ", b"kilo ", b"lima "]
    texts = np.stack([np.frombuffer(b"".join(rng.choice(words, 1000).tolist())[:4096], np.uint8)
                      for _ in range(16)])
    blocks = texts[rng.integers(0, 16, 3000)]
    blocks[::7] = rng.integers(0, 256, (len(blocks[::7]), 4096), dtype=np.uint8)
    chain = Chain.create(tmp_path / "c")
    backup(chain, Volume.from_bytes(blocks.tobytes()), compress=True)
    assert restore(chain, 0).tobytes() == blocks.tobytes()
    image = chain.images[0]
    records = image.index.all()
    stored = image.path.read_bytes()
    payloads: dict[bytes, set[bytes]] = {}
    for record in records[(records["flags"] & FLAG_ZSTD) != 0]:
        start = int(record["offset"])
        payloads.setdefault(record["content_digest"].tobytes(), set()).add(
            stored[start : start + int(record["length"])])
    assert len(payloads) == 16 and all(len(frames) == 1 for frames in payloads.values())

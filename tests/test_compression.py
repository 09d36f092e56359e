"""Block compression: zstd frames per block, compressed as a batch; zlib still read."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from blockforensics.image.codec import MIN_SAVING, compress_rows, decompress, random_rows
from blockforensics.image.format import ENCODING_FLAGS, FLAG_ZLIB, FLAG_ZSTD


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
    packed = compress_rows(blocks, rows)
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

"""The C batch primitives equal their pure-Python equivalents, block for block.

Each property runs twice: with the C extension (``batch.native``) and with it
switched off, so both paths stay correct and interchangeable.
"""

from __future__ import annotations

import hashlib
import os
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockforensics import batch, spanhash
from blockforensics.crypto import KEY_SIZE, NONCE_SIZE, TAG_SIZE, ChainKeys

PATHS = pytest.mark.parametrize("native", [True, False], ids=["c", "python"])


def use(native: bool, patch: pytest.MonkeyPatch) -> None:
    if native and batch.native is None:
        pytest.skip("the C extension is not built")
    if not native:
        patch.setattr(batch, "native", None)


def test_the_c_extension_is_built():
    if batch.native is not None:
        return
    reason = "blockforensics._native was not built (needs a C compiler and libssl-dev)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must build it: {reason}")
    pytest.skip(reason)


@PATHS
@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=3000),
       cuts=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), max_size=20))
def test_span_digests_equal_hashlib(native, data, cuts):
    offsets = [min(s, len(data)) for s, _ in cuts]
    lengths = [min(n, len(data) - s) for s, (_, n) in zip(offsets, cuts)]
    with pytest.MonkeyPatch.context() as patch:
        use(native, patch)
        got = spanhash.sha256_128_spans(data, np.array(offsets), np.array(lengths))
    assert got.shape == (len(cuts), 16)
    assert [row.tobytes() for row in got] == \
        [hashlib.sha256(data[s : s + n]).digest()[:16] for s, n in zip(offsets, lengths)]


@PATHS
def test_row_digests_of_a_batch_split_over_threads_equal_hashlib(native, monkeypatch):
    """8 MiB of 4 KiB blocks is split over every core; each row still gets its own digest."""
    use(native, monkeypatch)
    rows = np.random.default_rng(1).integers(0, 256, (2048, 4096), dtype=np.uint8)
    rows[7] = 0
    got = spanhash.sha256_128_rows(rows)
    assert [r.tobytes() for r in got] == [hashlib.sha256(r).digest()[:16] for r in rows]
    strided = rows[::2, ::2]  # not contiguous: copied first
    assert spanhash.sha256_128_rows(strided)[3].tobytes() == \
        hashlib.sha256(strided[3].tobytes()).digest()[:16]
    assert spanhash.sha256_128_rows(np.zeros((0, 4096), np.uint8)).shape == (0, 16)


@PATHS
@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=5000),
       cuts=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), max_size=20))
def test_span_crcs_equal_zlib(native, data, cuts):
    """Every length (below the 64 bytes the folding needs, and odd tails past it) and
    every alignment gives zlib's CRC-32."""
    offsets = [min(s, len(data)) for s, _ in cuts]
    lengths = [min(n, len(data) - s) for s, (_, n) in zip(offsets, cuts)]
    with pytest.MonkeyPatch.context() as patch:
        use(native, patch)
        got = spanhash.crc32_spans(data, np.array(offsets), np.array(lengths))
    assert got.tolist() == [zlib.crc32(data[s : s + n]) for s, n in zip(offsets, lengths)]


@PATHS
def test_span_crcs_of_every_length_and_alignment_equal_zlib(native, monkeypatch):
    """Lengths 0-600 at offsets 0-16 of random bytes, a block of zeros and one of ones:
    each span's folded lanes and tail meet zlib's CRC-32."""
    use(native, monkeypatch)
    rng = np.random.default_rng(5)
    data = np.concatenate([rng.integers(0, 256, 4096, dtype=np.uint8),
                           np.zeros(4096, np.uint8), np.full(4096, 255, np.uint8)])
    offsets = np.array([base + skew for base in (0, 4096, 8192) for skew in range(17)
                        for _ in range(601)], dtype=np.int64)
    lengths = np.tile(np.arange(601, dtype=np.int64), 3 * 17)
    got = spanhash.crc32_spans(data, offsets, lengths)
    raw = data.tobytes()
    assert got.tolist() == [zlib.crc32(raw[s : s + n])
                            for s, n in zip(offsets.tolist(), lengths.tolist())]


def test_a_span_outside_the_data_is_refused():
    if batch.native is None:
        pytest.skip("the C extension is not built")
    with pytest.raises(ValueError, match="outside"):
        spanhash.sha256_128_spans(b"abc", np.array([2]), np.array([2]))


@PATHS
@pytest.mark.parametrize("rows", [0, 1, 3, 1024], ids=lambda n: f"{n}rows")
def test_sealed_rows_open_with_cryptography_at_their_position_only(native, rows, monkeypatch):
    """Every sealed row decrypts (``cryptography``'s AES-GCM) to its block, under its own
    position and flags, with a fresh nonce; moved to another position it fails."""
    use(native, monkeypatch)
    keys = ChainKeys(os.urandom(KEY_SIZE), os.urandom(16))
    blocks = np.random.default_rng(rows).integers(0, 256, (rows, 4096), dtype=np.uint8)
    positions = np.arange(rows, dtype=np.uint64) * 7 + 5
    sealed = keys.encrypt_rows(positions, 4, blocks)
    assert sealed.shape == (rows, NONCE_SIZE + 4096 + TAG_SIZE)
    for i in range(rows):
        assert keys.decrypt(int(positions[i]), 4, sealed[i].tobytes()) == blocks[i].tobytes()
    assert len({row[:NONCE_SIZE].tobytes() for row in sealed}) == rows
    if rows:
        assert keys.decrypt(int(positions[0]) + 1, 4, sealed[0].tobytes()) is None


@PATHS
def test_opened_rows_equal_the_blocks_and_a_tampered_row_is_refused(native, monkeypatch):
    """A batch of 4 MiB opens (split over threads) to the sealed blocks; one flipped bit,
    or a row opened at another position, fails alone and yields no plaintext."""
    use(native, monkeypatch)
    keys = ChainKeys(os.urandom(KEY_SIZE), os.urandom(16))
    blocks = np.random.default_rng(9).integers(0, 256, (1024, 4096), dtype=np.uint8)
    positions = np.arange(1024, dtype=np.uint64)
    sealed = keys.encrypt_rows(positions, 4, blocks)
    sealed[10, NONCE_SIZE + 100] ^= 0x01
    moved = positions.copy()
    moved[20] = 99999
    plain, ok = keys.decrypt_rows(moved, 4, sealed)
    assert np.flatnonzero(~ok).tolist() == [10, 20]
    assert not plain[[10, 20]].any()
    good = np.flatnonzero(ok)
    assert np.array_equal(plain[good], blocks[good])


def test_batch_work_runs_on_the_worker_threads_and_waits_for_all_before_an_error():
    """``batch.start`` returns results in the pieces' order; when pieces fail, the first
    failed piece's error is raised, and only once every piece has finished."""
    import threading
    import time

    finished: list[int] = []
    names: set[str] = set()

    def work(piece: slice) -> int:
        names.add(threading.current_thread().name)
        if piece.start == 1:
            raise ValueError("piece 1")
        if piece.start == 2:
            time.sleep(0.2)
            finished.append(2)
            raise KeyError("piece 2")
        return piece.start * 10

    pieces = [slice(i, i + 1) for i in range(3)]
    with pytest.raises(ValueError, match="piece 1"):
        batch.start(work, pieces)()
    assert finished == [2]
    assert batch.start(lambda piece: piece.start * 10, pieces)() == [0, 10, 20]
    assert all(name.startswith("blockforensics-batch") for name in names)

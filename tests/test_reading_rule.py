"""One reading rule (docs/FORMAT.md, "Reading a point"), implemented once (``Layout.owners``)
and kept by consolidation and retention (issue 11, item 3).

The example of the issue first, then hypothesis properties: random sequences of
backups (growing, shrinking, branching), consolidations and retention runs, with
every remaining point compared byte for byte with the volume saved when it was taken —
plaintext and encrypted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockforensics.consolidate import apply_retention, consolidate
from blockforensics.crypto import KeySource
from blockforensics.errors import UsageError
from blockforensics.image import imagefile as imagefile_module
from blockforensics.image import index as index_module
from blockforensics.image import layout as layout_module
from blockforensics.image import reader as reader_module
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.image.verify import verify
from blockforensics.volume import Volume

BS = 4096


def _key(tmp: Path, encrypted: bool) -> KeySource | None:
    if not encrypted:
        return None
    (tmp / "key").write_bytes(bytes(range(32)))
    return KeySource.from_file(tmp / "key")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_consolidation_across_a_shrink_and_a_grow_keeps_the_point(tmp_path: Path,
                                                                  encrypted: bool) -> None:
    """The issue's example: 10 blocks of 1, 10 of 2, 5 of 3, 5 of 4 plus 5 zero blocks;
    merging points 1..3 must not let block 7 of point 3 read point 0's 0x01."""
    key = _key(tmp_path, encrypted)
    volumes = [bytes([1]) * 10 * BS, bytes([2]) * 10 * BS, bytes([3]) * 5 * BS,
               bytes([4]) * 5 * BS + bytes(5 * BS)]
    with Chain.create(tmp_path / "c", key) as chain:
        for data in volumes:
            backup(chain, Volume.from_bytes(data, BS))
    consolidate(tmp_path / "c", 3, start=1)
    with Chain.open(tmp_path / "c", key) as chain:
        assert len(chain) == 2
        restored = restore(chain, 1).tobytes()
    assert restored[7 * BS : 8 * BS] == bytes(BS)
    assert restored == volumes[3]
    assert verify(tmp_path / "c", key).ok


# ----------------------------------------------------------------- properties
SMALL = 512  # bytes per block: many blocks, small files

operation = st.one_of(
    st.tuples(st.just("backup"), st.integers(0, 99), st.integers(0, 12 * SMALL),
              st.lists(st.integers(0, 11), max_size=5), st.booleans()),
    st.tuples(st.just("consolidate"), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("retain"), st.integers(1, 3)),
)


def _run(ops: list[tuple], encrypted: bool) -> int:
    """Apply ``ops`` to a new chain, checking every point after every change; the number
    of point checks made."""
    rng = np.random.default_rng(len(ops))
    checks = 0
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "c"
        key = _key(Path(tmp), encrypted)
        saved: dict[bytes, bytes] = {}  # image id -> the volume at that point
        chain = Chain.create(directory, key)
        first = rng.integers(0, 256, 8 * SMALL, dtype=np.uint8).tobytes()
        backup(chain, Volume.from_bytes(first, SMALL), block_size=SMALL)
        saved[chain.images[0].header.image_id] = first
        chain.close()
        for op in ops:
            with Chain.open(directory, key) as chain:
                n = len(chain)
                if op[0] == "backup":
                    _, parent, size, changed, zero = op
                    p = parent % n
                    data = bytearray(saved[chain.images[p].header.image_id][:size])
                    data += bytes(size - len(data))
                    for block in changed:
                        if block * SMALL < size:
                            fill = bytes(SMALL) if zero else rng.integers(
                                0, 256, SMALL, dtype=np.uint8).tobytes()
                            data[block * SMALL : (block + 1) * SMALL] = fill
                    data = data[:size]
                    new = backup(chain, Volume.from_bytes(bytes(data), SMALL), parent=p)
                    saved[chain.images[new].header.image_id] = bytes(data)
                    continue
            if op[0] == "consolidate":
                with Chain.open(directory) as chain:
                    p = op[1] % n
                    path = chain.path(p)
                    start = path[op[2] % len(path)]
                try:
                    consolidate(directory, p, start=start)
                except UsageError:
                    continue  # nothing to merge there
            else:
                apply_retention(directory, keep_last=op[1])
            with Chain.open(directory, key) as chain:
                for i, img in enumerate(chain.images):
                    assert restore(chain, i).tobytes() == saved[img.header.image_id], (ops, i)
                    checks += 1
                _check_maps(chain, [saved[img.header.image_id] for img in chain.images])
        assert verify(directory, key).ok
    return checks


def _blocks(data: bytes, n_blocks: int) -> np.ndarray:
    """``data`` as ``(n_blocks, SMALL)`` blocks, zero-padded."""
    out = np.zeros(n_blocks * SMALL, dtype=np.uint8)
    out[: len(data)] = np.frombuffer(data, np.uint8)
    return out.reshape(n_blocks, SMALL)


def _check_maps(chain: Chain, volumes: list[bytes]) -> None:
    """What the layouts say without reading a payload agrees with the volumes: each
    point's present blocks hold its non-zero ones, ``changed`` between every two points
    is exactly where their bytes differ, and digests looked up by position equal the
    windowed ones."""
    zero = chain.codec.zero_digest()
    for i, data in enumerate(volumes):
        layout = chain.layout(i)
        nonzero = _blocks(data, layout.n_blocks).any(axis=1)
        assert not (nonzero & ~layout.present().to_bools()).any(), i
        positions = np.flatnonzero(np.arange(layout.n_blocks + 3) % 3 != 1)
        expected = np.concatenate([*layout.digest_windows(zero, layout.n_blocks + 3)])
        assert np.array_equal(layout.digests_at(positions, zero), expected[positions]), i
        for j in range(i):
            n_blocks = -(-max(len(data), len(volumes[j])) // SMALL)
            differ = (_blocks(data, n_blocks) != _blocks(volumes[j], n_blocks)).any(axis=1)
            assert np.array_equal(chain.changed(j, i).to_bools(), differ), (j, i)


@pytest.fixture(params=["default windows", "tiny windows"])
def windows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with the real window sizes, and with tiny ones so that every index read,
    fence lookup, layout window and writer spill crosses many boundaries even on
    small chains."""
    if request.param == "tiny windows":
        monkeypatch.setattr(index_module, "FENCE", 3)
        monkeypatch.setattr(index_module, "CHUNK", 5)
        monkeypatch.setattr(layout_module, "WINDOW", 8)
        monkeypatch.setattr(reader_module, "WRITE_WINDOW", 5)
        monkeypatch.setattr(imagefile_module, "SPILL_RECORDS", 4)
    return str(request.param)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_every_point_survives_random_histories(encrypted: bool, windows: str) -> None:
    counts = {"examples": 0, "checks": 0}

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(operation, min_size=1, max_size=10))
    def histories(ops: list[tuple]) -> None:
        counts["checks"] += _run(ops, encrypted)
        counts["examples"] += 1

    histories()
    print(f"reading rule ({'encrypted' if encrypted else 'plain'}, {windows}): "
          f"{counts['examples']} "
          f"histories, {counts['checks']} points checked after consolidation/retention")
    assert counts["checks"] > 20

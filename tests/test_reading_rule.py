"""One reading rule (docs/FORMAT.md, "Reading a point"), implemented once (``Chain.layout``)
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
        assert verify(directory, key).ok
    return checks


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_every_point_survives_random_histories(encrypted: bool) -> None:
    counts = {"examples": 0, "checks": 0}

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(operation, min_size=1, max_size=10))
    def histories(ops: list[tuple]) -> None:
        counts["checks"] += _run(ops, encrypted)
        counts["examples"] += 1

    histories()
    print(f"reading rule ({'encrypted' if encrypted else 'plain'}): {counts['examples']} "
          f"histories, {counts['checks']} points checked after consolidation/retention")
    assert counts["checks"] > 20

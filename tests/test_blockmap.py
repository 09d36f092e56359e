"""BlockMap: set algebra agrees with Python sets; runs, rescale, save/load, speed-relevant paths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockforensics import blockmap as blockmap_module
from blockforensics.blockmap import BlockMap

sizes = st.integers(min_value=0, max_value=300)


@st.composite
def two_sets(draw):
    n = draw(sizes)
    pos = st.sets(st.integers(0, max(0, n - 1)), max_size=n) if n else st.just(set())
    return n, draw(pos), draw(pos)


@given(two_sets())
@settings(max_examples=150, deadline=None)
def test_set_algebra_matches_python_sets(case):
    n, a, b = case
    ma, mb = BlockMap.from_positions(n, sorted(a)), BlockMap.from_positions(n, sorted(b))
    assert set((ma & mb).positions().tolist()) == a & b
    assert set((ma | mb).positions().tolist()) == a | b
    assert set((ma - mb).positions().tolist()) == a - b
    assert set((ma ^ mb).positions().tolist()) == a ^ b
    assert set((~ma).positions().tolist()) == set(range(n)) - a
    assert (~ma).count() == n - len(a)
    assert ma.count() == len(a)
    assert (ma == mb) == (a == b)
    assert ma.issubset(ma | mb)
    runs = ma.runs()
    covered = {p for s, n_ in zip(runs["start"], runs["length"]) for p in range(s, s + n_)}
    assert covered == a
    assert (runs["start_byte"] == runs["start"] * 4096).all()


def test_add_discard_add_range_and_contains():
    m = BlockMap.empty(100)
    m.add([3, 5, 99])
    m.add_range(10, 30)
    m.discard(11)
    assert 3 in m and 99 in m and 11 not in m and 12 in m and 100 not in m
    assert m.count() == 3 + 20 - 1
    with pytest.raises(IndexError):
        m.add(100)


def test_rescale_covers_the_same_bytes():
    m = BlockMap.from_positions(16, [0, 5, 6], block_size=512)
    big = m.rescale(4096)  # 8 small blocks per big one
    assert big.n_blocks == 2 and big.positions().tolist() == [0]
    small = big.rescale(512)
    assert small.positions().tolist() == list(range(8))


def test_save_load_roundtrip(tmp_path):
    m = BlockMap.from_positions(1001, [0, 7, 8, 1000], block_size=1024)
    loaded = BlockMap.load(m.save(tmp_path / "m.npz"))
    assert loaded == m and loaded.block_size == 1024
    (tmp_path / "junk").write_bytes(b"not a map")
    with pytest.raises(ValueError, match="not a saved BlockMap"):
        BlockMap.load(tmp_path / "junk")


def test_repr_names_count_and_runs():
    text = repr(BlockMap.from_positions(50, [1, 2, 3, 10]))
    assert "4 of 50 blocks" in text and "1-3" in text and "10" in text


def test_plot_returns_axes():
    import matplotlib

    matplotlib.use("Agg")
    m = BlockMap.from_positions(64, [1, 2, 40])
    for layout in ("strip", "grid"):
        ax = m.plot(layout=layout)
        assert ax.get_title()


def test_large_map_algebra_is_vectorised():
    n = 1 << 26
    rng = np.random.default_rng(0)
    a = BlockMap(n, 4096, rng.integers(0, 256, n // 8, dtype=np.uint8))
    b = BlockMap(n, 4096, rng.integers(0, 256, n // 8, dtype=np.uint8))
    both = a & b
    assert both.count() == int(np.unpackbits(a.packed & b.packed).sum())


@pytest.mark.parametrize("run_words", [1, 2, 1 << 20])
def test_runs_are_found_across_scan_chunks(monkeypatch: pytest.MonkeyPatch,
                                           run_words: int) -> None:
    """Runs that cross the words scanned at once are neither split nor lost."""
    monkeypatch.setattr(blockmap_module, "_RUN_WORDS", run_words)
    rng = np.random.default_rng(run_words)
    for n in (1, 63, 64, 65, 129, 1000, 20000):
        for _ in range(10):
            flags = rng.random(n) < rng.random()
            edges = np.diff(np.r_[0, flags.astype(np.int8), 0])
            starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            got = BlockMap.from_bools(flags).run_arrays()
            assert got[0].tolist() == starts.tolist()
            assert got[1].tolist() == (stops - starts).tolist()

"""Methods 1–3 (and the naive contrast), checked against states captured independently."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from blockforensics.blockmap import BlockMap
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.methods import (
    BranchingChain,
    HeadStartIncremental,
    QuiescedFullImage,
    branching_chain,
    head_start_incremental,
    naive_linear_chain,
    quiesced_full_image,
)
from blockforensics.tracking import POLICIES
from blockforensics.volume import Volume
from blockforensics.workload import Workload

N_BLOCKS = 160
BS = 512
EXAMPLES = settings(max_examples=15, deadline=None)


@contextmanager
def setup(seed: int) -> Iterator[tuple[Chain, Workload]]:
    with tempfile.TemporaryDirectory() as tmp:
        chain = Chain.create(Path(tmp) / "chain")
        try:
            yield chain, Workload(Volume.zeros(N_BLOCKS * BS, BS), seed)
        finally:
            chain.close()


def stored(chain: Chain, point: int) -> np.ndarray:
    """Positions the image of ``point`` itself holds."""
    return chain.images[point].index.all()["position"].astype(np.int64)


def on(bmap: BlockMap) -> np.ndarray:
    return bmap.positions()


@EXAMPLES
@given(seed=st.integers(0, 2**16),
       actions=st.lists(st.one_of(st.tuples(st.just("live"), st.integers(1, 6)),
                                  st.tuples(st.just("head"), st.integers(0, 20),
                                            st.sampled_from(sorted(POLICIES)))), max_size=8),
       ops_after=st.integers(0, 4))
def test_head_start_restores_volume_at_t2_and_plain_incremental(
        seed: int, actions: list[tuple], ops_after: int) -> None:
    with setup(seed) as (chain, wl):
        m = HeadStartIncremental(chain, wl, seed=seed)
        m.live(5)
        m.start()
        for action in actions:
            if action[0] == "live":
                m.live(action[1])
            else:
                m.head_start(action[1], action[2])
        m.snapshot()
        at_t2 = wl.volume.tobytes()
        m.live(ops_after)
        head, plain = m.finish(), m.plain_incremental()
        rec = m.verify()
        assert restore(chain, head).tobytes() == at_t2
        assert restore(chain, plain).tobytes() == at_t2
        assert rec.ok, rec
        n = rec.numbers
        assert n["copied before snapshot"] == sum(
            rec.maps[f"copy {i}"].count() for i in range(1, 1 + sum(a[0] == "head"
                                                                    for a in actions)))
        assert n["copied after snapshot"] == rec.maps["remaining"].count()
        assert set(stored(chain, head)) == set(on(rec.maps["T"]))


@EXAMPLES
@given(seed=st.integers(0, 2**16), ops_before=st.integers(1, 25),
       quiesce=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       ops_after=st.integers(0, 8))
def test_quiesced_full_restores_quiesced_snapshot_on_a_or_q(
        seed: int, ops_before: int, quiesce: list[int], ops_after: int) -> None:
    with setup(seed) as (chain, wl):
        m = QuiescedFullImage(chain, wl)
        m.live(ops_before)
        allocated = m.snapshot()
        for n in quiesce:  # several quiescing writers, possibly on the same blocks
            m.quiesce(n)
        app = m.snapshots[0].view(quiesced=True).read_blocks(0, N_BLOCKS)
        m.live(ops_after)
        point = m.image()
        rec = m.verify()
        wanted = allocated | m.snapshots[0].quiesced
        assert rec.maps["full"] == wanted
        assert np.array_equal(restore(chain, point).blocks[on(wanted)], app[on(wanted)])
        assert set(stored(chain, point)) <= set(on(wanted))
        assert rec.ok, rec
        assert rec.numbers["snapshot store"] == m.snapshots[0].store_blocks


@EXAMPLES
@given(seed=st.integers(0, 2**16), ops=st.tuples(st.integers(1, 25), st.integers(0, 15)),
       q=st.tuples(st.integers(1, 6), st.integers(1, 6)))
def test_branching_chain_trunk_is_crash_consistent_and_leaves_quiesced(
        seed: int, ops: tuple[int, int], q: tuple[int, int]) -> None:
    with setup(seed) as (chain, wl):
        m = BranchingChain(chain, wl)
        crash, app, allocated, quiesced = [], [], [], []
        for k, n_ops in enumerate(ops):
            m.live(n_ops)
            allocated.append(m.snapshot())
            crash.append(wl.volume.blocks.copy())
            quiesced.append(m.quiesce(q[k]))
            app.append(m.snapshots[k].view(quiesced=True).read_blocks(0, N_BLOCKS))
            if k == 0:
                m.full()
                m.leaf1()
            else:
                m.trunk()
                m.leaf2()
        rec = m.verify()
        p = rec.points
        for k, (trunk, leaf) in enumerate([("full", "I1"), ("I2", "I3")]):
            a, aq = on(allocated[k]), on(allocated[k] | quiesced[k])
            assert np.array_equal(restore(chain, p[trunk]).blocks[a], crash[k][a])
            assert np.array_equal(restore(chain, p[leaf]).blocks[aq], app[k][aq])
            # the trunk image stores crash-consistent content only, and only allocated blocks
            held = stored(chain, p[trunk])
            trunk_blocks = chain.disk(p[trunk]).read_blocks(0, N_BLOCKS)
            assert set(held) <= set(a)
            assert np.array_equal(trunk_blocks[held], crash[k][held])
            # no block that quiescence changed reads its quiesced content in the trunk
            fixed = on(quiesced[k])[(app[k] != crash[k])[on(quiesced[k])].any(axis=1)]
            assert not (trunk_blocks[fixed] == app[k][fixed]).all(axis=1).any()
        assert chain.parent(p["I2"]) == p["full"] and chain.parent(p["I3"]) == p["I2"]
        assert chain.children(p["I1"]) == [] and chain.children(p["I3"]) == []
        assert not m.quiescence_blocks(p["I3"], inherited_only=True)
        assert rec.ok, rec


@EXAMPLES
@given(seed=st.integers(0, 2**16), ops=st.tuples(st.integers(1, 25), st.integers(0, 15)))
def test_naive_chain_leaks_exactly_the_unrewritten_quiescence_writes(
        seed: int, ops: tuple[int, int]) -> None:
    with setup(seed) as (chain, wl):
        rec = naive_linear_chain(chain, wl, ops_before=ops[0], ops_between=ops[1])
        m = rec.maps
        expected = m["Q1"] - ((m["T"] & m["A2"]) | m["Q2"])
        assert m["leaked"] == expected
        assert m["wrong at t2"] == expected & m["A2"]
        assert rec.checks["no quiescence write of t1 in the t2 point"] == (not expected)


def test_naive_chain_leak_is_visible_where_branching_is_clean() -> None:
    with setup(4) as (chain, wl):
        naive = naive_linear_chain(chain, wl)
    with setup(4) as (chain, wl):
        branching = branching_chain(chain, wl)
    assert naive.maps["leaked"] and naive.maps["wrong at t2"] and not naive.ok
    assert branching.ok and not branching.maps["quiescence in trunk"]
    assert naive.maps["Q1"] == branching.maps["Q1"]  # same seed, same workload


def test_convenience_runs_and_records() -> None:
    with setup(1) as (chain, wl):
        rec = head_start_incremental(chain, wl, budget=5, policy="newest")
        assert rec.ok
        steps = rec.steps
        assert list(steps.columns) == ["step", "time", "what", "map", "blocks", "point"]
        assert steps["point"].dropna().tolist() == [0, 1, 2]
        assert "all checks passed" in repr(rec) and "head start=1" in repr(rec)
        assert rec.counts["copy 1"] == 5
    with setup(1) as (chain, wl):
        rec = quiesced_full_image(chain, wl)
        assert rec.ok and rec.points == {"full": 0}
        assert len(chain) == 1

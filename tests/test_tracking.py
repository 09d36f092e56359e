"""ChangeTracker (CBT) and head-start population: properties over random interleavings."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.tracking import POLICIES, ChangeTracker, HeadStart, copy_blocks
from blockforensics.volume import Volume

N_BLOCKS = 48
BS = 512

positions_st = st.lists(st.integers(0, N_BLOCKS - 1), min_size=1, max_size=12)
write_st = st.tuples(st.just("write"), positions_st)
copy_st = st.tuples(st.just("copy"), st.integers(0, 10), st.sampled_from(sorted(POLICIES)))


def random_write(volume: Volume, positions: list[int], rng: np.random.Generator) -> None:
    volume.write_at(np.array(positions), rng.integers(0, 256, (len(positions), BS), np.uint8))


def test_tracker_sees_writes_and_resets() -> None:
    vol = Volume.zeros(N_BLOCKS * BS, BS)
    a, b = ChangeTracker(vol), ChangeTracker(vol)
    vol.write_blocks(3, np.ones(2 * BS, np.uint8))
    vol.write(10 * BS - 1, b"xy")  # straddles blocks 9 and 10
    assert a.changed.positions().tolist() == [3, 4, 9, 10]
    assert a.reset().positions().tolist() == [3, 4, 9, 10]
    assert not a.changed
    assert b.changed.count() == 4  # independent of a's reset
    a.detach()
    a.detach()  # idempotent
    vol.write_blocks(20, np.ones(BS, np.uint8))
    assert not a.changed
    assert 20 in b.changed
    assert "detached" in repr(a)


def test_ordered_tracker_keeps_first_write_since_untrack() -> None:
    vol = Volume.zeros(N_BLOCKS * BS, BS)
    t = ChangeTracker(vol, ordered=True)
    for p in (5, 2, 5, 9):
        vol.write_blocks(p, np.ones(BS, np.uint8))
    assert t.first_write is not None
    assert t.first_write[[5, 2, 9]].tolist() == [1, 2, 4]
    t.untrack(np.array([5]))
    vol.write_blocks(5, np.ones(BS, np.uint8))
    assert t.first_write[5] == 5
    order = POLICIES["oldest"](t.changed.positions(), t.first_write[t.changed.positions()],
                               np.random.default_rng(0))
    assert order.tolist() == [2, 9, 5]


def test_read_and_copy_blocks_by_positions(tmp_path: Path) -> None:
    vol = Volume.from_bytes(np.arange(N_BLOCKS * BS, dtype=np.uint32).astype(np.uint8), BS)
    pos = np.array([0, 1, 2, 7, 30, 31])
    assert np.array_equal(vol.read_at(pos), vol.blocks[pos])
    chain = Chain.create(tmp_path / "c")
    writer = chain.writer(chain.new_header(parent=None, volume_size=vol.size, block_size=BS))
    assert copy_blocks(vol, BlockMap.from_positions(N_BLOCKS, pos, BS), writer) == pos.size
    point = chain.append(writer.commit())
    assert chain.images[point].index.all()["position"].tolist() == pos.tolist()


def test_head_start_rejects_unknown_policy_and_reuse(tmp_path: Path) -> None:
    vol = Volume.zeros(N_BLOCKS * BS, BS)
    chain = Chain.create(tmp_path / "c")
    backup(chain, vol, block_size=BS)
    head = HeadStart(chain, vol)
    with pytest.raises(UsageError, match="policy"):
        head.copy_step(4, "biggest")
    head.abort()
    with pytest.raises(UsageError, match="committed or aborted"):
        head.copy_step(4)
    assert not list(chain.directory.glob("*.tmp")) and len(chain) == 1


@settings(max_examples=30, deadline=None)
@given(before=st.lists(st.one_of(write_st, copy_st), max_size=12),
       after=st.lists(positions_st, max_size=3), seed=st.integers(0, 2**16))
def test_head_start_equals_plain_incremental(before: list[tuple], after: list[list[int]],
                                             seed: int) -> None:
    rng = np.random.default_rng(seed)
    vol = Volume.zeros(N_BLOCKS * BS - 100, BS)  # a partial last block too
    random_write(vol, list(range(0, N_BLOCKS, 3)), rng)
    with tempfile.TemporaryDirectory() as tmp:
        chain = Chain.create(Path(tmp) / "c")
        base = backup(chain, vol, block_size=BS)
        head = HeadStart(chain, vol, parent=base, seed=seed)
        written = BlockMap.empty(N_BLOCKS, BS)
        copies = 0
        for action in before:
            if action[0] == "write":
                random_write(vol, action[1], rng)
                written.add(action[1])
            else:
                tracked = head.tracker.changed.count()
                copied = head.copy_step(action[1], action[2])
                assert copied.count() == min(action[1], tracked)
                assert not (copied & head.tracker.changed)
                copies += copied.count()
        snap = head.snapshot()
        remaining = head.remaining.copy()
        at_t2 = vol.tobytes()
        for positions in after:  # the snapshot, not the live volume, is copied from
            random_write(vol, positions, rng)
        point = head.finish()
        plain = backup(chain, snap.view(), parent=base)

        assert head.copies_before == copies
        assert head.copies_after == remaining.count()
        assert head.copied_early | head.copied_late == written
        assert restore(chain, point).tobytes() == at_t2
        assert restore(chain, plain).tobytes() == at_t2
        assert set(chain.images[point].index.all()["position"]) == set(written.positions())
        assert len(head.log()) == sum(a[0] == "copy" for a in before) + 1
        chain.close()


def test_consecutive_head_starts_lose_no_write_made_between_snapshot_and_finish(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vol = Volume.zeros(N_BLOCKS * BS, BS)
    chain = Chain.create(tmp_path / "c")
    base = backup(chain, vol, block_size=BS)
    head = HeadStart(chain, vol, parent=base)
    random_write(vol, [1, 2], rng)
    head.copy_step(1)
    random_write(vol, [3], rng)
    snap = head.snapshot()
    at_t2 = vol.tobytes()
    random_write(vol, [7, 8], rng)  # after t2, before finish: belongs to the next point
    first = head.finish()
    snap.release()
    assert chain.images[first].index.all()["position"].tolist() == [1, 2, 3]  # not 7, 8
    assert restore(chain, first).tobytes() == at_t2
    second_head = head.next(label="second")
    random_write(vol, [9], rng)
    snap2 = second_head.snapshot()
    second = second_head.finish()
    assert chain.parent(second) == first
    assert chain.images[second].index.all()["position"].tolist() == [7, 8, 9]
    assert restore(chain, second).tobytes() == vol.tobytes() == snap2.view().read(0, vol.size)


def test_head_start_steps_refuse_a_wrong_order_and_say_what_comes_next(tmp_path: Path) -> None:
    vol = Volume.zeros(N_BLOCKS * BS, BS)
    chain = Chain.create(tmp_path / "c")
    backup(chain, vol, block_size=BS)
    head = HeadStart(chain, vol)
    with pytest.raises(UsageError, match=r"run snapshot\(\), then finish\(\)"):
        head.finish()
    with pytest.raises(UsageError, match=r"run snapshot\(\) and finish\(\) first"):
        head.next()
    head.snapshot()
    with pytest.raises(UsageError, match=r"already taken; run finish\(\) next"):
        head.snapshot()
    with pytest.raises(UsageError, match=r"run finish\(\) next"):
        head.copy_step(3)
    head.finish()
    nxt = head.next()
    with pytest.raises(UsageError, match="already called"):
        head.next()
    nxt.abort()
    assert not nxt.tracker.attached and len(chain) == 2

"""Copy-on-write snapshots and quiescence writes: properties over random interleavings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockforensics.blockmap import BlockMap
from blockforensics.errors import UsageError
from blockforensics.snapshot import BlockStore, Snapshot
from blockforensics.volume import Volume

N_BLOCKS = 40
BS = 512

positions_st = st.lists(st.integers(0, N_BLOCKS - 1), min_size=1, max_size=10)
action_st = st.tuples(st.sampled_from(["live", "quiesce", "snapshot"]), positions_st)


def blocks_for(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, BS), np.uint8)


@settings(max_examples=60, deadline=None)
@given(actions=st.lists(action_st, max_size=25), seed=st.integers(0, 2**16))
def test_views_and_store_under_random_interleavings(actions: list[tuple[str, list[int]]],
                                                    seed: int) -> None:
    """Every snapshot keeps its moment (crash view) plus its own quiescence writes (quiesced
    view); its store holds exactly the preserved blocks and the quiesced ones."""
    rng = np.random.default_rng(seed)
    vol = Volume.from_bytes(blocks_for(rng, N_BLOCKS), BS)
    snaps: list[tuple[Snapshot, np.ndarray, np.ndarray, BlockMap]] = []  # snap, crash, app, live
    for kind, positions in actions:
        if kind == "snapshot" or not snaps:
            state = vol.blocks.copy()
            snaps.append((Snapshot(vol), state, state.copy(), BlockMap.empty(N_BLOCKS, BS)))
        if kind == "live":
            vol.write_at(np.array(positions), blocks_for(rng, len(positions)))
            for _, _, _, written in snaps:
                written.add(positions)
        elif kind == "quiesce":
            snap, _, app, _ = snaps[int(rng.integers(len(snaps)))]
            data = blocks_for(rng, len(positions))
            snap.quiesce_write(np.array(positions), data)
            app[positions] = data  # numpy assignment: a repeated position keeps the last
    for snap, crash, app, written in snaps:
        assert np.array_equal(snap.view().read_blocks(0, N_BLOCKS), crash)
        assert np.array_equal(snap.view(quiesced=True).read_blocks(0, N_BLOCKS), app)
        assert snap.preserved == written
        assert len(snap.originals) == written.count()
        assert len(snap.quiescence) == snap.quiesced.count()
        assert snap.store_blocks == written.count() + snap.quiesced.count()
        assert snap.originals.nbytes <= max(16, 2 * written.count()) * BS


def test_store_grows_with_blocks_copied_not_volume_size() -> None:
    vol = Volume.zeros(1 << 16 << 9, BS)  # 65536 blocks
    snap = Snapshot(vol)
    assert snap.store_blocks == 0 and snap.originals.nbytes == 0
    vol.write_blocks(100, np.ones(3 * BS, np.uint8))
    vol.write_blocks(101, np.full(BS, 2, np.uint8))  # already preserved: nothing more kept
    assert len(snap.originals) == 3
    assert snap.originals.nbytes == 16 * BS
    assert not snap.view().read_blocks(100, 3).any()


def test_byte_quiescence_write_and_partial_last_block() -> None:
    vol = Volume.from_bytes(bytes(range(256)) * 7, BS)  # 1792 B: 4 blocks, the last partial
    snap = Snapshot(vol)
    snap.write(BS - 2, b"abcd")
    assert snap.quiesced.positions().tolist() == [0, 1]
    assert snap.view(quiesced=True).read(BS - 2, 4) == b"abcd"
    assert snap.view().read(BS - 2, 4) == vol.read(BS - 2, 4)
    vol.write(vol.size - 1, b"z")
    assert snap.view().read(vol.size - 1, 1) == bytes([(vol.size - 1) % 256])
    assert snap.view().size == vol.size and snap.view().n_blocks == 4
    with pytest.raises(IndexError):
        snap.write(vol.size - 1, b"zz")


def test_release_detaches() -> None:
    vol = Volume.zeros(N_BLOCKS * BS, BS)
    snap = Snapshot(vol, label="t1")
    snap.release()
    snap.release()
    vol.write_blocks(0, np.ones(BS, np.uint8))
    assert not snap.preserved and snap.store_blocks == 0
    with pytest.raises(UsageError, match="released"):
        snap.view().read_blocks(0, 1)
    with pytest.raises(UsageError, match="released"):
        snap.quiesce_write(np.array([0]), np.zeros((1, BS), np.uint8))
    assert "released" in repr(snap)


def test_block_store_replaces_kept_blocks() -> None:
    store = BlockStore(BS)
    store.put(np.array([9, 3]), np.stack([np.full(BS, 9, np.uint8), np.full(BS, 3, np.uint8)]))
    store.put(np.array([3, 5]), np.stack([np.full(BS, 4, np.uint8), np.full(BS, 5, np.uint8)]))
    assert len(store) == 3
    assert store.rows(np.array([3, 4, 5, 9, 10])).tolist() == [1, -1, 2, 0, -1]
    out = np.zeros((4, BS), np.uint8)
    store.overlay(out, 2)
    assert out[:, 0].tolist() == [0, 4, 0, 5]


def test_whole_block_quiescence_write_is_clipped_at_the_volume_end(tmp_path) -> None:
    from blockforensics.image.backup import backup
    from blockforensics.image.chain import Chain

    vol = Volume.from_bytes(bytes(range(256)) * 7, BS)  # 1792 B: 4 blocks, the last partial
    chain = Chain.create(tmp_path / "c")
    backup(chain, vol, block_size=BS)
    snap = Snapshot(vol)
    last = vol.read_blocks(3, 1)
    last[0, vol.size - 3 * BS:] = 0xEE  # same bytes inside the volume, junk past its end
    snap.quiesce_write(np.array([3]), last)
    view = snap.view(quiesced=True)
    assert not view.read_blocks(3, 1)[0, vol.size - 3 * BS:].any()
    point = backup(chain, view, block_size=BS)
    assert not chain.changed(0, point)  # nothing inside the volume changed

"""Chains: every point of a random history with branches restores to the source at that point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockforensics.blockmap import BlockMap
from blockforensics.errors import ChainError, UsageError
from blockforensics.image import reader as reader_module
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.volume import Volume

write = st.tuples(st.floats(0, 1), st.integers(1, 3000), st.integers(0, 255))
step = st.tuples(st.floats(0, 1), st.lists(write, max_size=6))


@given(size=st.one_of(st.sampled_from([0, 1, 511, 512, 513, 4096 + 3]),
                      st.integers(0, 40_000)),
       block_size=st.sampled_from([512, 1024, 4096]),
       steps=st.lists(step, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1),
       compress=st.booleans(), window=st.sampled_from([1, 7, 1 << 18]))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_point_restores_to_the_source_at_that_point(tmp_path_factory, monkeypatch, size,
                                                           block_size, steps, seed, compress,
                                                           window):
    """In memory and to a file, the file written in windows of any number of blocks
    (verbatim runs copied, compressed blocks decoded)."""
    monkeypatch.setattr(reader_module, "WRITE_WINDOW", window)
    rng = np.random.default_rng(seed)
    directory = tmp_path_factory.mktemp("chain")
    chain = Chain.create(directory / "c")
    states = [(rng.integers(0, 256, size, dtype=np.uint8) // 64 * 64).tobytes()]  # compressible
    backup(chain, Volume.from_bytes(states[0], block_size), block_size=block_size,
           compress=compress)
    for parent_choice, writes in steps:
        parent = int(parent_choice * len(states)) % len(states)  # branches off any point
        state = bytearray(states[parent])
        for where, length, value in writes:
            if size:
                offset = int(where * (size - 1))
                state[offset : offset + length] = bytes([value]) * len(
                    state[offset : offset + length])
        states.append(bytes(state))
        point = backup(chain, Volume.from_bytes(state, block_size), parent=parent,
                       compress=compress)
        assert chain.parent(point) == parent
    reopened = Chain.open(directory / "c")
    for point, state in enumerate(states):
        assert restore(reopened, point).tobytes() == state
        assert restore(reopened, point, directory / f"{point}.raw").read_bytes() == state


def test_incremental_holds_exactly_the_changed_blocks(tmp_path):
    vol = Volume.from_bytes(np.random.default_rng(1).integers(0, 256, 100 * 4096,
                                                              dtype=np.uint8))
    chain = Chain.create(tmp_path / "c")
    backup(chain, vol)
    vol.write(5 * 4096 + 10, b"changed")
    vol.write_blocks(50, np.zeros(4096 * 2, np.uint8))  # blocks that became zero count too
    point = backup(chain, vol)
    table = chain.table()
    assert table.loc[point, "blocks"] == 3 and table.loc[point, "kind"] == "incremental"
    assert chain.changed(0, 1) == BlockMap.from_positions(100, [5, 50, 51])
    assert restore(chain, 1).tobytes() == vol.tobytes()


def test_changed_map_is_trusted_and_unchanged_chunks_are_skipped(tmp_path):
    vol = Volume.from_bytes(np.arange(64 * 4096, dtype=np.uint64).astype(np.uint8))
    chain = Chain.create(tmp_path / "c")
    backup(chain, vol)
    vol.write(3 * 4096, b"x" * 10)
    vol.write(9 * 4096, b"y" * 10)
    cbt = BlockMap.from_positions(64, [3])  # a map that misses block 9 is taken at its word
    point = backup(chain, vol, changed=cbt)
    assert chain.table().loc[point, "blocks"] == 1
    restored = restore(chain, point).tobytes()
    assert restored[3 * 4096 : 3 * 4096 + 10] == b"x" * 10
    assert restored[9 * 4096 : 9 * 4096 + 10] != b"y" * 10


def test_only_map_limits_what_is_stored(tmp_path):
    vol = Volume.from_bytes(np.full(32 * 4096, 1, np.uint8))
    chain = Chain.create(tmp_path / "c")
    only = BlockMap.from_runs(32, [(0, 4), (10, 2)])
    backup(chain, vol, only=only)
    assert chain.layout(0).present() == only


def test_full_skips_zero_blocks_and_restores_them_as_zeros(tmp_path):
    data = bytearray(20 * 4096)
    data[4096 * 7 : 4096 * 7 + 3] = b"abc"
    chain = Chain.create(tmp_path / "c")
    backup(chain, Volume.from_bytes(data))
    assert chain.table().loc[0, "blocks"] == 1
    assert restore(chain, 0).tobytes() == bytes(data)


def test_points_by_name_and_negative_index(tmp_path):
    chain = Chain.create(tmp_path / "c")
    vol = Volume.from_bytes(b"a" * 10_000)
    backup(chain, vol)
    vol.write(0, b"b")
    backup(chain, vol)
    assert chain.point("0001-incr.bfi") == 1 == chain.point(-1) == chain.point("-1")
    with pytest.raises(UsageError):
        chain.point(5)


def test_missing_parent_and_not_a_chain(tmp_path):
    with pytest.raises(ChainError, match="not a blockforensics chain"):
        Chain.open(tmp_path)
    chain = Chain.create(tmp_path / "c")
    vol = Volume.from_bytes(b"a" * 10_000)
    backup(chain, vol)
    vol.write(0, b"b")
    backup(chain, vol)
    (tmp_path / "c" / "0000-full.bfi").unlink()
    with Chain.open(tmp_path / "c") as opened:  # the damage stays with the points it touches
        assert opened.damage[0] == "listed but missing"
        assert opened.damage[1].endswith("is missing or unreadable")
        with pytest.raises(ChainError, match=r"point 1 .* damaged: its parent image"):
            opened.disk(1)


def test_a_volume_that_shrinks_and_grows_back_restores_zeros_in_the_regrown_part(tmp_path):
    chain = Chain.create(tmp_path / "c")
    eight = np.random.default_rng(3).integers(1, 256, 8 * 4096, dtype=np.uint8).tobytes()
    backup(chain, Volume.from_bytes(eight))
    backup(chain, Volume.from_bytes(eight[: 4 * 4096]))
    regrown = eight[: 4 * 4096] + bytes(4 * 4096)
    point = backup(chain, Volume.from_bytes(regrown))
    assert [restore(chain, p).tobytes() for p in range(3)] == [eight, eight[: 4 * 4096],
                                                              regrown]
    assert restore(chain, point).tobytes() == regrown


def test_cleanup_spares_the_files_of_a_writer_in_another_process(tmp_path):
    import subprocess
    import sys
    import time

    chain = Chain.create(tmp_path / "c")
    backup(chain, Volume.from_bytes(b"x" * 10_000))
    pending = tmp_path / "c" / ".0001-incr.bfi.abc.tmp"  # a backup in progress elsewhere
    pending.write_bytes(b"half an image")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from blockforensics.fileio import directory_lock\n"
         f"with directory_lock({str(tmp_path / 'c')!r}):\n"
         "    print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert chain.cleanup() == [] and pending.exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert chain.cleanup() == [pending.name] and not pending.exists()


def test_two_writers_on_one_chain_lose_no_point(tmp_path):
    first = Chain.create(tmp_path / "c")
    vol = Volume.from_bytes(b"a" * 20_000)
    backup(first, vol)
    second = Chain.open(tmp_path / "c")  # opened before the next backup: stale afterwards
    vol.write(0, b"b")
    backup(first, vol)
    vol.write(5000, b"c")
    point = backup(second, vol, parent=0)
    reopened = Chain.open(tmp_path / "c")
    assert len(reopened) == 3 and point == 2
    assert restore(reopened, 2).tobytes() == vol.tobytes()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_compressed_images_are_smaller_and_restore_exactly(tmp_path, encrypted):
    from blockforensics.consolidate import consolidate
    from blockforensics.crypto import KeySource
    from blockforensics.image.verify import verify

    key = None
    if encrypted:
        (tmp_path / "key").write_bytes(b"passphrase\n")
        key = KeySource.from_file(tmp_path / "key")
    rng = np.random.default_rng(9)
    text = b"".join(rng.choice([b"alpha ", b"beta ", b"gamma "], 30_000).tolist())[:150_000]
    noise = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()  # stays uncompressed
    vol = Volume.from_bytes(text + noise)
    sizes = {}
    for name, compress in (("packed", True), ("flat", False)):
        chain = Chain.create(tmp_path / name, key)
        backup(chain, vol, compress=compress)
        sizes[name] = chain.table().loc[0, "stored_bytes"]
    assert sizes["packed"] < sizes["flat"] * 0.6
    chain = Chain.open(tmp_path / "packed", key)
    first = vol.tobytes()
    vol.write(3000, b"an edit that compresses too " * 20)
    backup(chain, vol, compress=True)
    assert restore(chain, 0).tobytes() == first and restore(chain, 1).tobytes() == vol.tobytes()
    assert verify(tmp_path / "packed", key).ok
    consolidate(tmp_path / "packed", 1)
    assert restore(Chain.open(tmp_path / "packed", key), 0).tobytes() == vol.tobytes()

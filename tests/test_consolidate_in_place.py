"""Consolidation in place: the merged image holding the most grows into the new one.

Oracles: the source volume at every point (by image id), the bytes of the image
file before the merge (a merge that died is rolled back to exactly them), the
old index's payload offsets (what the merge replaced in runs of 1 MiB or more reads
as zeros: punched out; single blocks stay), and the file's identity (the same inode,
grown, or a new file once a tenth of it is dead).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from chains import assert_restores, build_chain
from killpoints import RUNNER_ENV

from blockforensics.consolidate import apply_retention, consolidate
from blockforensics.crypto import KEY_SIZE, KeySource
from blockforensics.errors import FormatError
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.image.inplace import MERGE_JOURNAL, open_image
from blockforensics.image.store import ChainStore
from blockforensics.image.summary import chain_rows
from blockforensics.image.verify import verify
from blockforensics.volume import Volume

N_BLOCKS = 600
BS = 4096
RUN_BLOCKS = 300  # 1.2 MiB: a run of dead payloads a merge in place punches out


def _records(path: Path) -> np.ndarray:
    with Chain.open(path.parent) as chain:
        return next(img for img in chain.images if img.name == path.name).index.all()


def _history(directory: Path, changes: list[np.ndarray]) -> dict[bytes, bytes]:
    """A full backup of ``N_BLOCKS`` random blocks, then one incremental per entry of
    ``changes`` (the block positions it rewrites), each on the one before; the oracle of
    :func:`chains.build_chain`."""
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (N_BLOCKS, BS), dtype=np.uint8)
    sources: dict[bytes, bytes] = {}
    with Chain.create(directory) as chain:
        for i, changed in enumerate([None, *changes]):
            if changed is not None:
                data = data.copy()
                data[changed] = rng.integers(0, 256, (len(changed), BS), dtype=np.uint8)
            index = backup(chain, Volume.from_bytes(data.reshape(-1), BS),
                           parent=None if i == 0 else i - 1, full=i == 0)
            sources[chain.images[index].header.image_id] = data.tobytes()
    return sources


def test_the_full_grows_and_frees_the_runs_the_merge_replaced(tmp_path: Path) -> None:
    run = np.arange(100, 100 + RUN_BLOCKS)  # 1.2 MiB of adjacent payloads: punched
    scattered = np.array([450, 470, 520])  # single blocks: left dead where they are
    sources = _history(tmp_path, [np.r_[run, scattered]])
    full = tmp_path / "0000-full.bfi"
    old = _records(full)
    inode, old_size = full.stat().st_ino, full.stat().st_size
    old_bytes = full.read_bytes()
    result = consolidate(tmp_path, 1)
    assert result.in_place and result.removed == ["0000-full.bfi", "0001-incr.bfi"]
    grown = tmp_path / result.image
    assert grown.stat().st_ino == inode and grown.stat().st_size > old_size
    new = _records(grown)
    kept = old[~np.isin(old["position"], np.r_[run, scattered])]
    # the full's payloads that still count were not moved: the same offsets
    assert np.array_equal(new[np.isin(new["position"], kept["position"])]["offset"],
                          kept["offset"])
    # the run the merge replaced was punched out: zeros, and not on the disk any more;
    # the scattered blocks are as they were
    with open(grown, "rb") as fh:
        for record in old[np.isin(old["position"], run)]:
            fh.seek(int(record["offset"]))
            assert fh.read(int(record["length"])) == bytes(BS)
        for record in old[np.isin(old["position"], scattered)]:
            at = int(record["offset"])
            fh.seek(at)
            assert fh.read(BS) == old_bytes[at : at + BS]
    assert grown.stat().st_blocks * 512 < grown.stat().st_size - RUN_BLOCKS * BS
    [row] = chain_rows(tmp_path)  # list shows both: the file's size and its disk space
    assert (row["stored_bytes"], row["disk_bytes"]) == (grown.stat().st_size,
                                                        grown.stat().st_blocks * 512)
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)
    # and again: the grown image grows once more
    more = build_chain(tmp_path / "b", [None, 0, 1, 2, 3], n_blocks=N_BLOCKS, seed=3)
    assert consolidate(tmp_path / "b", 2).in_place
    assert consolidate(tmp_path / "b", -1).in_place
    assert verify(tmp_path / "b").ok
    assert_restores(tmp_path / "b", more)


def test_an_image_with_a_tenth_dead_is_not_grown_again(tmp_path: Path) -> None:
    # every fifth block rewritten: a fifth of the full dead after the first merge, in
    # single blocks (not punched); the second merge grows the incremental instead and
    # the full's file, its dead payloads with it, goes
    sources = _history(tmp_path, [np.arange(0, N_BLOCKS, 5), np.array([7, 8, 9])])
    first = consolidate(tmp_path, 1)
    grown = tmp_path / first.image
    inode = grown.stat().st_ino
    assert first.in_place and grown.stat().st_blocks * 512 > (
        N_BLOCKS + N_BLOCKS // 5) * BS
    second = consolidate(tmp_path, -1)
    assert second.in_place and first.image in second.removed
    final = tmp_path / second.image
    assert final.stat().st_ino != inode
    # on the disk: the payloads of the point, its index, header and footer, no more
    assert final.stat().st_blocks * 512 <= N_BLOCKS * BS + (N_BLOCKS * 56 + 4 * BS)
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_an_open_reader_gets_a_rewrite_and_keeps_reading(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1], n_blocks=N_BLOCKS)
    reader = Chain.open(tmp_path)
    try:
        old = {i: reader.layout(i).digests(0, N_BLOCKS, reader.codec.zero_digest())
               for i in range(3)}
        result = consolidate(tmp_path, 2)
        assert not result.in_place  # the reader's images stay as they were
        for i in range(3):
            assert np.array_equal(
                reader.layout(i).digests(0, N_BLOCKS, reader.codec.zero_digest()), old[i])
    finally:
        reader.close()
    assert_restores(tmp_path, sources)


def test_rewrite_copies_everything(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1], n_blocks=N_BLOCKS)
    inode = (tmp_path / "0000-full.bfi").stat().st_ino
    result = consolidate(tmp_path, 2, rewrite=True)
    assert not result.in_place and (tmp_path / result.image).stat().st_ino != inode
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_a_second_name_keeps_the_file_as_it_is(tmp_path: Path) -> None:
    # a hard link elsewhere (a `cp -al` copy of the chain) must not see the file change
    sources = build_chain(tmp_path / "c", [None, 0, 1], n_blocks=N_BLOCKS)
    os.link(tmp_path / "c" / "0000-full.bfi", tmp_path / "copy.bfi")
    before = (tmp_path / "copy.bfi").read_bytes()
    result = consolidate(tmp_path / "c", 2)
    assert result.in_place  # the incremental (one name) was grown instead
    assert (tmp_path / "copy.bfi").read_bytes() == before
    assert_restores(tmp_path / "c", sources)


_KILLED_BEFORE_SWITCH = """
import os, signal, sys
from blockforensics.consolidate import consolidate
from blockforensics.image.store import ChainStore

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

ChainStore.switch = die
consolidate(sys.argv[1], 2)
"""


def test_a_merge_killed_before_its_switch_reads_as_before_and_is_rolled_back(
        tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1], n_blocks=N_BLOCKS)
    full = tmp_path / "0000-full.bfi"
    original = full.read_bytes()
    run = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_SWITCH, str(tmp_path)],
                         env=RUNNER_ENV, capture_output=True, timeout=120)
    assert run.returncode == -9, run.stderr
    grown = full.read_bytes()
    assert len(grown) > len(original) and grown[:4096] != original[:4096]  # header written
    assert (tmp_path / MERGE_JOURNAL).exists()
    # before any cleanup, readers see the old chain: as journaled
    assert not any(row["damaged"] for row in chain_rows(tmp_path))
    with Chain.open(tmp_path) as chain:  # (assert_restores would also check the listing)
        assert [img.name for img in chain.images] == ["0000-full.bfi", "0001-incr.bfi",
                                                      "0002-incr.bfi"]
        assert not chain.damage
    assert verify(tmp_path).ok
    # cleanup rolls the file back, byte for byte
    ChainStore(tmp_path).recover()
    assert full.read_bytes() == original
    assert not (tmp_path / MERGE_JOURNAL).exists()
    assert_restores(tmp_path, sources)
    assert consolidate(tmp_path, 2).in_place
    assert_restores(tmp_path, sources)


def test_retention_grows_in_place(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1, 2, 3], n_blocks=N_BLOCKS)
    result = apply_retention(tmp_path, keep_last=2)
    assert [c.in_place for c in result.consolidations] == [True]
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_an_opening_reader_waits_for_a_merge_and_sees_the_switch(tmp_path: Path) -> None:
    build_chain(tmp_path, [None, 0], n_blocks=40)
    path = tmp_path / "0000-full.bfi"
    merger = os.open(path, os.O_RDONLY)
    fcntl.flock(merger, fcntl.LOCK_EX)  # as a merge in place holds it
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(_try_open(path)))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive() and not outcome  # waiting
    os.link(path, tmp_path / "0000-full-c1.bfi")  # the switch: renamed under it
    os.unlink(path)
    fcntl.flock(merger, fcntl.LOCK_UN)
    reader.join(10)
    os.close(merger)
    assert isinstance(outcome[0], FormatError) and "replaced by a consolidation" in str(
        outcome[0])


def _try_open(path: Path) -> object:
    try:
        opened = open_image(path)
    except FormatError as exc:
        return exc
    os.close(opened.fd)
    return opened


def test_encrypted_chains_grow_in_place_without_the_key(tmp_path: Path) -> None:
    source = KeySource(raw_key=os.urandom(KEY_SIZE))
    sources = build_chain(tmp_path, [None, 0, 1, 2], n_blocks=200, key=source)
    assert consolidate(tmp_path, 2).in_place
    assert verify(tmp_path, source).ok
    assert_restores(tmp_path, sources, source)

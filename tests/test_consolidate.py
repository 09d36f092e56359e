"""Consolidation and retention on real chain directories (plaintext; see test_crypto for keys).

Oracle: the source volume at every point, kept in memory by image id (a
consolidated image keeps the image id of the point it replaces), compared
byte for byte with a restore; the chain's own verify and listing must be clean.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chains import BS, assert_restores, build_chain
from killpoints import RUNNER_ENV
from support import flip_stored_bit

import blockforensics.consolidate as consolidation
from blockforensics.consolidate import apply_retention, consolidate, retention_plan
from blockforensics.errors import ChainError, IntegrityError, UsageError
from blockforensics.image.chain import Chain
from blockforensics.image.format import FLAG_ZERO
from blockforensics.image.imagefile import ImageWriter
from blockforensics.image.verify import verify

DAY_NS = 86_400 * 10**9
EPOCH_NS = 1_700_000_000 * 10**9  # 2023-11-14 22:13:20 UTC, a Tuesday


def image_ids(directory: Path) -> list[bytes]:
    with Chain.open(directory) as chain:
        return [img.header.image_id for img in chain.images]


# ---------------------------------------------------------------------- plaintext
def test_root_to_point_becomes_one_full(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1, 2, 3])
    with Chain.open(tmp_path) as chain:
        before = [img.name for img in chain.images]
        old = chain.images[2].header
    result = consolidate(tmp_path, 2)
    assert result.merged == before[:3] and result.removed == before[:3]
    assert result.kind == "full" and result.kept_for_branches == []
    with Chain.open(tmp_path) as chain:
        assert [img.name for img in chain.images] == [result.image, *before[3:]]
        new = chain.images[0]
        assert new.header.is_full and new.header.image_id == old.image_id
        assert (new.header.created_ns, new.header.label) == (old.created_ns, old.label)
        assert new.header.written_ns > old.written_ns
        assert not np.any(new.index.all()["flags"] & FLAG_ZERO)
        assert new.blocks == result.blocks == chain.layout(0).present().count()
        assert chain.table()["kind"].tolist() == ["full", "incremental", "incremental"]
        assert chain.parent(1) == 0 and chain.parent(2) == 1
    # disk space (holes excluded), up to the file system's own extent blocks written later
    on_disk = sum(p.stat().st_blocks * 512 for p in tmp_path.glob("*.bfi"))
    assert abs(result.bytes_after - on_disk) <= 4 * 4096 and on_disk < result.bytes_before
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_run_of_incrementals_becomes_one_incremental(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1, 2, 3])
    ids = image_ids(tmp_path)
    result = consolidate(tmp_path, 3, start=1)
    assert result.kind == "incremental" and len(result.removed) == 3
    with Chain.open(tmp_path) as chain:
        assert [img.header.image_id for img in chain.images] == [ids[0], ids[3], ids[4]]
        assert chain.parent(1) == 0 and chain.parent(2) == 1
        merged = chain.images[1]
        # the newest record per position, zero-block records included (they hide the parent's)
        assert np.any(merged.index.all()["flags"] & FLAG_ZERO)
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_shrunk_volume(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1], sizes=[40 * BS, 40 * BS, 25 * BS + 7])
    consolidate(tmp_path, 2)
    with Chain.open(tmp_path) as chain:
        assert chain.images[0].index.all()["position"].max() < 26
    assert_restores(tmp_path, sources)


def test_branches_stay_restorable(tmp_path: Path) -> None:
    # 0 <- 1 <- 2 <- 3 <- 4, and branches 5 (off 1) and 6 (off 3, the point itself)
    sources = build_chain(tmp_path, [None, 0, 1, 2, 3, 1, 3])
    with Chain.open(tmp_path) as chain:
        names = [img.name for img in chain.images]
    result = consolidate(tmp_path, 3)
    assert result.kept_for_branches == names[:2]
    assert result.removed == names[2:4]
    with Chain.open(tmp_path) as chain:
        assert len(chain) == 6 and chain.images[2].name == result.image
        assert chain.parent(2) is None and chain.children(2) == [3, 5]
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_branch_off_start_keeps_start(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1, 2, 1])  # 4 branches off 1
    with Chain.open(tmp_path) as chain:
        names = [img.name for img in chain.images]
    result = consolidate(tmp_path, 3, start=1)
    assert result.kept_for_branches == [names[1]] and result.removed == names[2:4]
    with Chain.open(tmp_path) as chain:
        assert chain.parent(chain.point(result.image)) == 0
    assert_restores(tmp_path, sources)


def test_copies_in_few_large_runs_file_to_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sources = build_chain(tmp_path, [None, 0, 1, 2], n_blocks=400)
    runs, copied = [], []
    real_add, real_copy = ImageWriter.place_verbatim, os.copy_file_range

    def add(self: ImageWriter, records: np.ndarray, pieces: list,
            source: object = None) -> np.ndarray:
        runs.append(len(records))
        return real_add(self, records, pieces, source)

    def copy(*args: int) -> int:
        copied.append(args[2])
        return real_copy(*args)

    monkeypatch.setattr(ImageWriter, "place_verbatim", add)
    monkeypatch.setattr(os, "copy_file_range", copy)
    result = consolidate(tmp_path, 3, rewrite=True)
    assert not result.in_place and result.blocks > 390 and len(runs) <= 2 * len(result.merged)
    with Chain.open(tmp_path) as chain:  # every stored byte copied inside the kernel
        assert sum(copied) == int(chain.images[0].index.payload_bytes)
    monkeypatch.undo()
    assert_restores(tmp_path, sources)


@pytest.mark.parametrize("rewrite", [False, True])
@pytest.mark.parametrize("error", [errno.EXDEV, errno.EOPNOTSUPP])
def test_file_systems_without_copy_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              error: int, rewrite: bool) -> None:
    # the bytes checked in place are written instead
    sources = build_chain(tmp_path, [None, 0, 1, 2], n_blocks=100)

    def refuse(*args: int) -> int:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    assert consolidate(tmp_path, 2, rewrite=rewrite).in_place is not rewrite
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


@pytest.mark.parametrize(("window", "run", "gap"), [(7, 3 * BS, 0), (64, 5 * BS + 1, BS),
                                                    (1 << 18, BS, 0)])
def test_small_windows_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int,
                                run: int, gap: int) -> None:
    # many windows, runs and pieces: the two reused buffers take turns under a writer
    # that is still writing the previous run
    monkeypatch.setattr(consolidation, "_WINDOW_BLOCKS", window)
    monkeypatch.setattr(consolidation, "_RUN_BYTES", run)
    monkeypatch.setattr(consolidation, "_GAP_BYTES", gap)
    sources = build_chain(tmp_path, [None, 0, 1, 2, 3, 2], n_blocks=150)
    consolidate(tmp_path, 4, start=1)
    consolidate(tmp_path, 2)
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


@pytest.mark.parametrize("source", ["full", "incremental"])
@pytest.mark.parametrize("which", ["kept", "superseded"])
def test_damaged_payloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str,
                          source: str) -> None:
    # a damaged payload that would be copied is refused, before anything changes; one
    # superseded is dropped; one left where it is (the image grown in place: the full)
    # stays as damaged as it was, and verify names it in the new image
    monkeypatch.setattr(consolidation, "_RUN_BYTES", 6 * BS)
    sources = build_chain(tmp_path, [None, 0, 1], n_blocks=64)
    with Chain.open(tmp_path) as chain:
        full = chain.images[0].index.all()["position"]
        later = np.r_[chain.images[1].index.all()["position"],
                      chain.images[2].index.all()["position"]]
        last = chain.images[2].index.all()["position"]
    kept = np.setdiff1d(full, later)
    if source == "full":
        name = "0000-full.bfi"
        position = int(kept[len(kept) // 2] if which == "kept"
                       else np.intersect1d(full, later)[1])
    else:  # the middle point: kept where the newest does not hold the block
        name = "0001-incr.bfi"
        with Chain.open(tmp_path) as chain:
            middle = chain.images[1].index.all()
        stored = middle["position"][middle["length"] > 0]
        pick = np.setdiff1d(stored, last) if which == "kept" else np.intersect1d(stored, last)
        position = int(pick[0])
    flip_stored_bit(tmp_path / name, position)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if which == "superseded":
        consolidate(tmp_path, 2)
        assert verify(tmp_path).ok
        assert_restores(tmp_path, sources)
    elif source == "incremental":  # copied into the grown full: refused
        with pytest.raises(IntegrityError, match=f"{name}: block {position}: stored"):
            consolidate(tmp_path, 2)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    else:
        with pytest.raises(IntegrityError, match=f"{name}: block {position}: stored"):
            consolidate(tmp_path, 2, rewrite=True)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
        result = consolidate(tmp_path, 2)
        assert result.in_place
        report = verify(tmp_path)
        assert [(pr.image, pr.position) for pr in report.problems] == [(result.image, position)]


@pytest.mark.parametrize(("point", "start", "message"), [
    (9, None, "no point 9"),
    ("nosuch.bfi", None, "no point named"),
    (2, 3, "is not an ancestor of point 2"),
    (3, 3, "nothing to consolidate"),
    (4, 1, "still the parent of a branch"),
])
def test_bad_input(tmp_path: Path, point: int | str, start: int | None, message: str) -> None:
    build_chain(tmp_path, [None, 0, 1, 1, 3, 3])
    with pytest.raises(UsageError, match=message):
        consolidate(tmp_path, point, start=start)


def test_not_a_chain(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="not a blockforensics chain"):
        consolidate(tmp_path, 0)
    Chain.create(tmp_path / "empty").close()
    with pytest.raises(ChainError, match="no images"):
        consolidate(tmp_path / "empty", 0)


# ---------------------------------------------------------------------- retention
def test_retention_plan_and_apply(tmp_path: Path) -> None:
    # two points a day for 10 days (Tue 2023-11-14 ...); a branch leaf off point 4
    created = [EPOCH_NS + (i // 2) * DAY_NS + (i % 2) * 3600 * 10**9 for i in range(20)]
    parents: list[int | None] = [None, *range(19)]
    parents.append(4)
    created.append(created[4] + 60 * 10**9)
    sources = build_chain(tmp_path, parents, created=created, n_blocks=16)
    with Chain.open(tmp_path) as chain:
        plan = retention_plan(chain, keep_last=3, daily=2, weekly=2)
    action = dict(zip(plan["point"], plan["action"]))
    kept = sorted(p for p, a in action.items() if a == "keep")
    # last 3: 19, 18, 17; of the older points, daily: 16 (Wed 11-22) and 15 (Tue 11-21);
    # weekly: 16 again (week of Mon 11-20) and 11 (Sun 11-19, the week before)
    assert kept == [11, 15, 16, 17, 18, 19]
    assert action[20] == "delete" and action[4] == "merge"
    assert plan.loc[plan["point"] == 0, "into"].item() == 11
    assert plan.loc[plan["point"] == 12, "into"].item() == 15
    assert plan.loc[plan["point"] == 11, "reason"].item() == "weekly 2023-W46"
    assert plan.loc[plan["point"] == 16, "reason"].item() == "daily 2023-11-22; weekly 2023-W47"
    result = apply_retention(tmp_path, keep_last=3, daily=2, weekly=2)
    assert len(result.consolidations) == 2 and len(result.deleted) == 1
    with Chain.open(tmp_path) as chain:
        assert len(chain) == 6
        assert [img.header.created_ns for img in chain.images] == [created[p] for p in kept]
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_retention_keeps_parents_of_branches(tmp_path: Path) -> None:
    build_chain(tmp_path, [None, 0, 1, 1], created=[EPOCH_NS + i for i in range(4)])
    with Chain.open(tmp_path) as chain:
        plan = retention_plan(chain, keep_last=2)
    assert plan["action"].tolist() == ["merge", "keep", "keep", "keep"]
    assert plan["reason"][1] == "parent of 2 branches"
    with pytest.raises(UsageError, match="--keep must be at least 1"), \
            Chain.open(tmp_path) as chain:
        retention_plan(chain, keep_last=0)


# ----------------------------------------------------------------------- SIGKILL
# Imports once, then per trial copies the template chain and forks a child that
# consolidates and is SIGKILLed: by itself just before its N-th file-system call
# ("call N"; N = 0 never, the child then prints how many calls it made), or by
# the parent after a delay ("delay S").  Prints "trial-directory exit-status" lines.
_CRASH_RUNNER = """
import os, shutil, signal, sys, time
from blockforensics.consolidate import consolidate
from blockforensics.image.imagefile import ImageWriter
from killpoints import KillAtCall

template, workdir, point, mode = sys.argv[1:5]

def child(kill_at):
    killer = KillAtCall(kill_at)
    killer.hook(os, "open", "pread", "preadv", "pwrite", "fsync", "ftruncate", "link",
                "replace", "unlink", "close")
    killer.hook(ImageWriter, "add_encoded")
    started = time.perf_counter()
    result = consolidate(directory, point)
    print(killer.calls, time.perf_counter() - started, int(result.in_place), flush=True)

for trial, value in enumerate(sys.argv[5:]):
    directory = os.path.join(workdir, f"t{trial}")
    shutil.copytree(template, directory)
    pid = os.fork()
    if pid == 0:
        child(int(value) if mode == "call" else 0)
        os._exit(0)
    if mode == "delay":
        time.sleep(float(value))
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    print(directory, os.waitstatus_to_exitcode(status), flush=True)
"""


def _crash_runs(template: Path, workdir: Path, mode: str,
                values: list[float]) -> list[tuple[Path, int, str]]:
    """Run the crash runner; ``(trial directory, exit status, child's output)`` per value."""
    workdir.mkdir()
    run = subprocess.run([sys.executable, "-c", _CRASH_RUNNER, str(template), str(workdir),
                          "3", mode, *map(str, values)], capture_output=True, text=True,
                         timeout=120, check=True, env=RUNNER_ENV)
    out, trials, lines = [], [], run.stdout.splitlines()
    for line in lines:
        # a child killed while printing leaves half a line: the trial's line may follow it
        head, found, tail = line.partition(str(workdir))
        if found:
            directory, status = (found + tail).rsplit(" ", 1)
            trials.append((Path(directory), int(status), "\n".join([*out, head])))
            out = []
        else:
            out.append(line)
    assert len(trials) == len(values), run.stderr
    return trials


def _check_after_crash(directory: Path, sources: dict[bytes, bytes],
                       states: list[list[bytes]]) -> bool:
    """Cleanup, then the chain is the old or the new one and restores; True if switched."""
    with Chain.open(directory) as chain:
        chain.cleanup()
    ids = image_ids(directory)
    assert ids in states, directory
    assert_restores(directory, sources)
    if ids == states[0]:  # the next command can still do it
        consolidate(directory, 3)
        assert image_ids(directory) == states[1]
        assert_restores(directory, sources)
    return ids == states[1]


#: chains for the kill tests: a branch off 1 keeps 0 and 1, so an incremental is grown
#: in place; without it, the full is
FAMILIES = {"branch": [None, 0, 1, 2, 3, 1], "straight": [None, 0, 1, 2, 3, 3]}


def _crash_template(directory: Path, n_blocks: int,
                    family: str = "branch") -> tuple[dict, list, int, float]:
    """A chain of ``FAMILIES[family]``; sources, states before/after consolidating point
    3 (in place), the number of hooked calls and the seconds it took."""
    sources = build_chain(directory / "template", FAMILIES[family], n_blocks=n_blocks)
    before = image_ids(directory / "template")
    [(done, status, out)] = _crash_runs(directory / "template", directory / "done", "call", [0])
    assert status == 0
    calls, seconds, in_place = out.split()
    assert in_place == "1"
    return sources, [before, image_ids(done)], int(calls), float(seconds)


@pytest.mark.parametrize("family", FAMILIES)
def test_sigkill_at_every_step(tmp_path: Path, family: str) -> None:
    sources, states, total, _ = _crash_template(tmp_path, 24, family)
    assert total >= 20
    trials = _crash_runs(tmp_path / "template", tmp_path / "runs", "call",
                         list(range(1, total + 1)))
    switched = []
    for directory, status, _ in trials:
        assert status == -signal.SIGKILL
        switched.append(_check_after_crash(directory, sources, states))
    assert not switched[0] and switched[-1] and switched == sorted(switched)


def test_sigkill_after_random_delays(tmp_path: Path) -> None:
    sources, states, _, seconds = _crash_template(tmp_path, 3000)
    rng = random.Random(7)
    delays = [rng.uniform(0, 1.2 * seconds) for _ in range(30)]
    for directory, _, _ in _crash_runs(tmp_path / "template", tmp_path / "runs", "delay",
                                       delays):
        _check_after_crash(directory, sources, states)


# ------------------------------------------------------------------ command line
def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_command_line_consolidates_and_applies_retention(tmp_path: Path) -> None:
    sources = build_chain(tmp_path / "c", [None, 0, 1, 2, 3, 4])
    done = _cli("consolidate", tmp_path / "c", "--point", "2")
    assert done.returncode == 0, done.stderr
    assert "0000-full.bfi + 0001-incr.bfi + 0002-incr.bfi" in done.stdout
    assert len(image_ids(tmp_path / "c")) == 4
    assert_restores(tmp_path / "c", sources)
    done = _cli("consolidate", tmp_path / "c", "--keep", "2")
    assert done.returncode == 0, done.stderr
    assert len(image_ids(tmp_path / "c")) == 2
    assert_restores(tmp_path / "c", sources)
    assert _cli("verify", tmp_path / "c").returncode == 0


def test_command_line_without_point_consolidates_up_to_the_newest(tmp_path: Path) -> None:
    sources = build_chain(tmp_path / "c", [None, 0, 0, 2])
    done = _cli("consolidate", tmp_path / "c")
    assert done.returncode == 0, done.stderr
    assert "0000-full.bfi + 0002-incr.bfi + 0003-incr.bfi" in done.stdout
    assert_restores(tmp_path / "c", sources)


@pytest.mark.parametrize("args, words", [
    (["--point", "9"], "no point 9"),
    (["--key-file", "k"], "unrecognized arguments: --key-file"),  # it never takes a key
])
def test_command_line_refuses_bad_input(tmp_path: Path, args: list[str], words: str) -> None:
    build_chain(tmp_path / "c", [None, 0])
    done = _cli("consolidate", tmp_path / "c", *args)
    assert done.returncode == 2 and words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr

"""SIGKILL at any moment loses nothing (issue 11, "Done when").

A backup, an encrypted backup, a consolidation and a retention run are each
killed at evenly spread file-system calls (open, read, write, link, rename,
unlink, close, sync_file_range …) of a complete run, fsync on but for retention (so
direct I/O and early writeback are on the path, over several read batches): the chain
is then the one before or the one after, every listed point restores byte-identical
to the volume saved for it and verifies, and the next command (cleanup, then the same
operation again) succeeds and leaves no temporary file.  The kill counts are printed (``-s``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chains import BS, build_chain
from killpoints import RUNNER_ENV

from blockforensics.consolidate import apply_retention, consolidate
from blockforensics.crypto import KeySource
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import MANIFEST, Chain
from blockforensics.image.verify import verify
from blockforensics.volume import Volume

N_BLOCKS = 24
PARENTS = [None, 0, 1, 2, 1, 4]  # a branch off point 1

# Forks one child per value; the child hooks file-system calls and SIGKILLs itself at
# call number VALUE (0: never; it prints how many calls a whole run makes).
_RUNNER = """
import os, shutil, signal, sys
from blockforensics.consolidate import apply_retention, consolidate
from blockforensics.crypto import KeySource
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.volume import Volume
from killpoints import KillAtCall

template, workdir, op, key_path, source = sys.argv[1:6]
key = KeySource.from_file(key_path) if key_path else None

import blockforensics.fileio, blockforensics.image.backup
blockforensics.fileio.WRITEBACK_WINDOW = 8192  # written ranges waited for and dropped early
blockforensics.image.backup.CHUNK_BYTES = 4 * 4096  # several batches: the read buffers cycle

def child(kill_at):
    killer = KillAtCall(kill_at)
    killer.hook(os, "open", "pread", "preadv", "write", "writev", "fsync", "replace", "link",
                "unlink", "close", "rename", "ftruncate")
    killer.hook(blockforensics.fileio, "sync_file_range")  # early writeback
    if op == "backup":
        with Chain.open(directory, key) as chain:
            backup(chain, Volume.from_bytes(open(source, "rb").read(), 4096))
    elif op == "consolidate":
        consolidate(directory)
    else:
        apply_retention(directory, keep_last=2)
    print(killer.calls, flush=True)

for trial, value in enumerate(sys.argv[6:]):
    directory = os.path.join(workdir, f"t{trial}")
    shutil.copytree(template, directory)
    pid = os.fork()
    if pid == 0:
        child(int(value))
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    print("TRIAL", directory, os.waitstatus_to_exitcode(status), flush=True)
"""


def _runs(template: Path, workdir: Path, op: str, key: Path | None, source: Path,
          values: list[int]) -> list[tuple[Path, int, str]]:
    workdir.mkdir()
    done = subprocess.run([sys.executable, "-c", _RUNNER, str(template), str(workdir), op,
                           str(key or ""), str(source), *map(str, values)],
                          capture_output=True, text=True, timeout=300,
                          env={**RUNNER_ENV, "BLOCKFORENSICS_FSYNC": "0" if op == "retention"
                               else "1"})  # the durable path (retention: many switches, slow)
    assert done.returncode == 0, done.stderr
    trials, out = [], []
    for line in done.stdout.splitlines():
        if line.startswith("TRIAL "):
            _, directory, status = line.split(" ")
            trials.append((Path(directory), int(status), "\n".join(out)))
            out = []
        else:
            out.append(line)
    assert len(trials) == len(values), done.stderr
    return trials


def _ids(directory: Path) -> list[bytes]:
    with Chain.open(directory) as chain:
        return [img.header.image_id for img in chain.images]


def _check(directory: Path, key: KeySource | None, saved: dict[bytes, bytes],
           states: list[list[bytes]] | None) -> list[bytes]:
    """The chain is whole: cleaned, the state before or after (when ``states``), every
    point restoring to its saved volume, verify clean; its image ids."""
    with Chain.open(directory, key) as chain:
        chain.cleanup()
        ids = [img.header.image_id for img in chain.images]
        for i, image_id in enumerate(ids):
            assert restore(chain, i).tobytes() == saved[image_id], (directory, i)
    if states is not None:
        assert ids in states, directory
    assert verify(directory, key).ok
    assert not [n for n in os.listdir(directory) if n.startswith(".")], directory
    return ids


@pytest.mark.parametrize("op", ["backup", "encrypted backup", "consolidate", "retention"])
def test_sigkill_at_spread_moments_loses_nothing(tmp_path: Path, op: str) -> None:
    key_path = None
    key = None
    if op == "encrypted backup":
        key_path = tmp_path / "key"
        KeySource.generate_file(key_path)
        key = KeySource.from_file(key_path)
    template = tmp_path / "template"
    saved = build_chain(template, PARENTS, key=key, n_blocks=N_BLOCKS)
    source = tmp_path / "source.raw"
    rng = np.random.default_rng(5)
    source.write_bytes(rng.integers(0, 256, N_BLOCKS * BS, dtype=np.uint8).tobytes())
    before = _ids(template)
    kind = "backup" if "backup" in op else op

    [(done_dir, status, out)] = _runs(template, tmp_path / "done", kind, key_path, source, [0])
    assert status == 0, out
    total = int(out.split()[-1])
    after = _ids(done_dir)
    if kind == "backup":
        saved[after[-1]] = source.read_bytes()
    states = [before, after] if kind == "consolidate" else None  # retention: several switches
    values = sorted({max(1, round(total * k / 16)) for k in range(1, 17)})
    killed = 0
    for directory, status, _ in _runs(template, tmp_path / "runs", kind, key_path, source,
                                      values):
        killed += status == -9
        if kind == "backup":  # the point the killed backup may have added
            ids = _ids(directory)
            assert ids[: len(before)] == before and len(ids) in (len(before),
                                                                 len(before) + 1)
            for image_id in ids[len(before):]:
                saved[image_id] = source.read_bytes()
        ids = _check(directory, key, saved, states)
        # the next command succeeds
        with Chain.open(directory, key) as chain:
            chain.cleanup()
            if kind == "backup":
                point = backup(chain, Volume.from_bytes(source.read_bytes(), BS))
                saved[chain.images[point].header.image_id] = source.read_bytes()
        if kind == "consolidate" and ids == before:
            consolidate(directory)
        elif kind == "retention":
            apply_retention(directory, keep_last=2)
        _check(directory, key, saved, None if kind == "backup" else [after])
    print(f"SIGKILL {op}: {killed} kills at {len(values)} moments of {total} calls")
    assert killed >= len(values) - 1  # the last value may fall on the very last call
    assert (tmp_path / "done" / "t0" / MANIFEST).exists()

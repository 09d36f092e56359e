"""Helpers shared by the benchmarks: run a command, time it, and read its peak memory."""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Run:
    """One measured command: wall seconds, CPU seconds (user + system, its children's
    included) and peak resident memory (MiB) of the process; for the best of several runs,
    also the median of their seconds and the least CPU seconds of any (the machine's
    other tenants lengthen wall times far more than CPU times)."""

    label: str
    seconds: float
    peak_rss_mib: float
    median_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def rate(self, nbytes: int) -> float:
        """Throughput in MB/s (10^6 bytes per second)."""
        return nbytes / self.seconds / 1e6


#: bytes of memory touched and freed before every run (see :func:`settle`)
PRIME_BYTES = 1 << 30


def settle() -> None:
    """Flush dirty pages first, so one step's writeback does not slow the next one down;
    then touch and free ``PRIME_BYTES`` of memory.

    This machine is a virtual machine whose host takes back guest memory that stays
    free for a while (virtio-balloon free page reporting): the first write to such a
    page costs a fault in the host.  A step that fills fresh page-cache pages (an export
    without fsync) ran up to 3 times slower after a step that had dropped its pages as
    it went (an export with fsync) than after one that had just freed them.  Every run
    now starts with the same supply of recently used free pages.
    """
    subprocess.run(["sync"], check=True)
    bytearray(PRIME_BYTES)  # zero-filled, so every page is written, then freed at once


def measure(label: str, argv: list[str], env: dict[str, str] | None = None,
            timed: bool = False) -> Run:
    """Run ``argv`` to completion under GNU time: wall seconds, CPU seconds and the
    process's peak RSS.  With ``timed``, the seconds the command prints itself (first word
    of its last line)."""
    settle()
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *argv], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed: {proc.stderr.strip()}")
    if timed:
        seconds = float(proc.stdout.strip().splitlines()[-1].split()[0])
    rss, user, system = proc.stderr.strip().splitlines()[-1].split()
    return Run(label, seconds, int(rss) / 1024, cpu_seconds=float(user) + float(system))


@dataclass
class Step:
    """One contender: a command, and what to do before each of its runs (e.g. remove
    the previous run's output); ``timed``: the command prints its own seconds (see
    :func:`measure`), e.g. a reader whose start-up is not what is measured."""

    label: str
    argv: list[str]
    before: Callable[[], object] | None = None
    env: dict[str, str] | None = None
    timed: bool = False


def fastest(steps: list[Step], repeat: int) -> dict[str, Run]:
    """The fastest of ``repeat`` runs of every step, by label, with their median.

    The steps take turns (round after round, not one step's runs in a row), each
    round starting one step later, so a slow spell of this shared machine's noisy disk
    hits every contender alike and none always follows the same one; the fastest run is
    the one least disturbed.  Every run starts from :func:`settle`.
    """
    runs: dict[str, list[Run]] = {step.label: [] for step in steps}
    for turn in range(repeat):
        for step in steps[turn % len(steps):] + steps[:turn % len(steps)]:
            if step.before is not None:
                step.before()
            run = measure(step.label, step.argv, step.env, step.timed)
            print(f"  {run.label}: {run.seconds:.2f} s", file=sys.stderr, flush=True)
            runs[step.label].append(run)
    return {label: dataclasses.replace(min(done, key=lambda run: run.seconds),
                                       median_seconds=statistics.median(r.seconds for r in done),
                                       cpu_seconds=min(r.cpu_seconds for r in done))
            for label, done in runs.items()}


def options(doc: str, size_mib: int | list[int],
            more: Callable[[argparse.ArgumentParser], object] | None = None
            ) -> argparse.Namespace:
    """The options every benchmark takes: source size (several, for a benchmark whose
    default is a list), scratch directory, rounds, JSON; ``more(parser)`` adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if isinstance(size_mib, list):
        parser.add_argument("--size-mib", type=int, nargs="+", default=size_mib,
                            help="source sizes (MiB), each measured in turn")
    else:
        parser.add_argument("--size-mib", type=int, default=size_mib, help="source size (MiB)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="scratch directory (default: the temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per step; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    if more is not None:
        more(parser)
    return parser.parse_args()


def cli(*args: object) -> list[str]:
    """argv for the blockforensics command in this interpreter."""
    return [sys.executable, "-m", "blockforensics.cli", *map(str, args)]


def compiled(*packages: Path) -> None:
    """Run the commands from bytecode, as installed: compile ``packages`` (each the
    directory of a ``blockforensics`` package) and let Python read it."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for package in packages:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True,
                       stdout=subprocess.DEVNULL)


def random_file(path: Path, size: int, seed: int = 0, chunk: int = 64 << 20) -> Path:
    """A file of ``size`` random bytes, written in chunks (never all in memory)."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        for start in range(0, size, chunk):
            fh.write(rng.integers(0, 256, min(chunk, size - start), dtype=np.uint8).tobytes())
    return path


def table(rows: list[dict[str, object]]) -> str:
    """A plain text table of dicts with the same keys."""
    keys = list(rows[0])
    width = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.rjust(width[k]) for k in keys)]
    lines += ["  ".join(str(r[k]).rjust(width[k]) for k in keys) for r in rows]
    return "\n".join(lines)

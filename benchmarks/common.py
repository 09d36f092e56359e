"""Helpers shared by the benchmarks: run a command, time it, and read its peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Run:
    """One measured command: wall seconds and peak resident memory (MiB) of the process."""

    label: str
    seconds: float
    peak_rss_mib: float

    def rate(self, nbytes: int) -> float:
        """Throughput in MB/s (10^6 bytes per second)."""
        return nbytes / self.seconds / 1e6


def measure(label: str, argv: list[str]) -> Run:
    """Run ``argv`` to completion; its wall time and peak RSS (from wait4's rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return Run(label, seconds, usage.ru_maxrss / 1024)


def cli(*args: object) -> list[str]:
    """argv for the blockforensics command in this interpreter."""
    return [sys.executable, "-m", "blockforensics.cli", *map(str, args)]


def random_file(path: Path, size: int, seed: int = 0, chunk: int = 64 << 20) -> Path:
    """A file of ``size`` random bytes, written in chunks (never all in memory)."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        for start in range(0, size, chunk):
            fh.write(rng.integers(0, 256, min(chunk, size - start), dtype=np.uint8).tobytes())
    return path

"""Encryption costs: full backup and consolidation, encrypted vs plaintext, in one run.

Measures, on a random source of ``--size-mib`` MiB (incompressible, no zero blocks):

- full backup, plaintext vs AES-256-GCM (MB/s of source, ratio; target >= 0.7);
- consolidating a full and three incrementals (each rewriting 10 % of the blocks)
  into one full: plaintext vs encrypted (verbatim copy, no key; target >= 0.8),
  and vs a decrypt-and-re-encrypt consolidation implemented here with the codecs
  (what a consolidation that needed the key would cost);
- peak resident memory of every phase (VmHWM, reset between phases; it includes
  the pages of the memory-mapped source that the phase touched).

Each phase runs ``--repeat`` times, the contenders taking turns, each into a new
chain or on a fresh copy of its chain; the fastest run counts (the machine is
shared and its disk noisy).  Image writes fsync, as in production.

Usage: ``python benchmarks/bench_crypto.py [--size-mib 256] [--repeat 3] [--json out.json]``.
MB/s are 10^6 bytes per second of the volume (backup) or of the new image (consolidation).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from common import options

from blockforensics.blockmap import BlockMap
from blockforensics.consolidate import consolidate
from blockforensics.crypto import KEY_SIZE, KeySource
from blockforensics.image.backup import backup, iter_chunks
from blockforensics.image.chain import Chain
from blockforensics.volume import Volume

BLOCK_SIZE = 4096
INCREMENTALS = 3
CHANGED_FRACTION = 0.10
T = TypeVar("T")


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float:
    """Peak resident memory since the last reset (MiB); whole-process peak if unsupported."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(action: Callable[[], T]) -> tuple[T, float, float]:
    """``(result, seconds, peak RSS MiB)`` of one call (earlier writes flushed first)."""
    os.sync()
    _reset_peak_rss()
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started, _peak_rss_mib()


def _make_source(path: Path, size: int, rng: np.random.Generator) -> Volume:
    with path.open("wb") as fh:
        for _ in range(0, size, 64 << 20):
            fh.write(rng.bytes(min(64 << 20, size - fh.tell())))
    return Volume.open(path, BLOCK_SIZE, writable=True)


def _add_incrementals(chains: list[Chain], source: Volume, rng: np.random.Generator) -> None:
    """Rewrite 10 % of the source's blocks, then back it up into every chain, three times."""
    for _ in range(INCREMENTALS):
        positions = np.sort(rng.choice(source.n_blocks, int(source.n_blocks * CHANGED_FRACTION),
                                       replace=False))
        source.write_at(positions, rng.integers(0, 256, (len(positions), BLOCK_SIZE),
                                                dtype=np.uint8))
        source.flush()
        changed = BlockMap.from_positions(source.n_blocks, positions, BLOCK_SIZE)
        for chain in chains:
            backup(chain, source, changed=changed)


def reencrypting_consolidate(directory: Path, key: KeySource, point: int) -> Path:
    """A consolidation that needs the key: read (decrypt) the point, write (encrypt) a full."""
    with Chain.open(directory, key) as chain:
        disk = chain.disk(point)
        header = chain.new_header(parent=None, volume_size=disk.size,
                                  created_ns=chain.images[point].header.created_ns)
        with chain.writer(header) as writer:
            for start, blocks in iter_chunks(disk):
                keep = np.flatnonzero(blocks.view(np.uint64).any(axis=1))
                writer.add(start + keep, blocks[keep])
            return writer.commit()


def _best(results: dict[str, dict[str, float]], name: str, seconds: float, nbytes: int,
          rss: float) -> None:
    """Keep the fastest run of ``name`` (and the highest peak RSS of all its runs)."""
    row = results.get(name)
    if row is None or seconds < row["seconds"]:
        results[name] = {"seconds": seconds, "MB/s": nbytes / seconds / 1e6,
                         "peak_rss_mib": max(rss, row["peak_rss_mib"] if row else 0.0)}
    else:
        row["peak_rss_mib"] = max(rss, row["peak_rss_mib"])


def run(size_mib: int, workdir: Path, repeat: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    size = size_mib << 20
    source = _make_source(workdir / "source.raw", size, rng)
    key = KeySource(raw_key=os.urandom(KEY_SIZE))
    keys = {"plain": None, "encrypted": key}
    results: dict[str, dict[str, float]] = {}
    for attempt in range(repeat):  # plain and encrypted take turns, each into a new chain
        for name, chain_key in keys.items():
            shutil.rmtree(workdir / name, ignore_errors=True)
            chain = Chain.create(workdir / name, chain_key)
            _, seconds, rss = _timed(lambda c=chain: backup(c, source))
            _best(results, f"backup {name}", seconds, size, rss)
            if attempt < repeat - 1:
                chain.close()
    chains = [Chain.open(workdir / name, chain_key) for name, chain_key in keys.items()]
    _add_incrementals(chains, source, rng)
    for chain in chains:
        chain.close()
    scratch = workdir / "scratch"
    cases: dict[str, tuple[str, Callable[[], Path]]] = {
        "consolidate plain": ("plain", lambda: scratch / consolidate(
            scratch, INCREMENTALS).image),
        "consolidate encrypted": ("encrypted", lambda: scratch / consolidate(
            scratch, INCREMENTALS).image),
        "consolidate re-encrypting": ("encrypted", lambda: reencrypting_consolidate(
            scratch, key, INCREMENTALS)),
    }
    for _ in range(repeat):  # each case on a fresh copy of its chain, taking turns
        for name, (chain_name, action) in cases.items():
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(workdir / chain_name, scratch)
            image, seconds, rss = _timed(action)
            _best(results, name, seconds, image.stat().st_size, rss)
    results["ratios"] = {
        "backup encrypted/plain": results["backup plain"]["seconds"]
        / results["backup encrypted"]["seconds"],
        "consolidate encrypted/plain": results["consolidate plain"]["seconds"]
        / results["consolidate encrypted"]["seconds"],
        "consolidate re-encrypting/plain": results["consolidate plain"]["seconds"]
        / results["consolidate re-encrypting"]["seconds"],
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return results


def main() -> None:
    args = options(__doc__, 256)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = run(args.size_mib, Path(tmp), args.repeat)
    print(f"{'phase':28} {'seconds':>8} {'MB/s':>8} {'peak RSS MiB':>13}")
    for name, row in results.items():
        if name != "ratios":
            print(f"{name:28} {row['seconds']:8.2f} {row['MB/s']:8.0f} "
                  f"{row['peak_rss_mib']:13.0f}")
    ratios = results["ratios"]
    print(f"speed ratio backup encrypted/plain:        {ratios['backup encrypted/plain']:.2f}"
          "  (target >= 0.70)")
    print(f"speed ratio consolidate encrypted/plain:   "
          f"{ratios['consolidate encrypted/plain']:.2f}  (target >= 0.80)")
    print(f"speed ratio consolidate re-encrypting/plain: "
          f"{ratios['consolidate re-encrypting/plain']:.2f}")
    print(f"process peak RSS: {ratios['process_peak_rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"size_mib": args.size_mib, **results}, indent=1))


if __name__ == "__main__":
    main()

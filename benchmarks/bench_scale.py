"""Scale: time and peak RSS per command (backup, incremental with a changed map, list,
verify, diff, restore, export, consolidate) on sparse volumes of 1 GiB, 16 GiB and 1 TiB;
backup of a 16 GiB sparse volume holding 1 GiB vs ``cp --sparse=always`` + ``sync``;
an incremental of 1 % with ``--changed`` vs without; fleet wall time for 1, 2 and 4
workers; CLI start-up.  And ``mount``'s peak RSS against the point's stored blocks
(``--mount-mib``, ``--mount-only``: see :func:`mount_reads`).

    python3 benchmarks/bench_scale.py [--data-mib 256] [--workdir DIR] [--json OUT]
                                      [--mount-mib 512 2048 8704] [--mount-only]
                                      [--mount-fragmented]
                                      [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Run, measure, random_file
from exposure import mounted, peak_rss_mib

GiB, MiB = 1 << 30, 1 << 20
BF = [sys.executable, "-m", "blockforensics.cli"]


def sparse_volume(path: Path, size: int, data: int, seed: int = 0) -> None:
    """A sparse file of ``size`` bytes with ``data`` bytes of random data in 8 extents
    spread over it."""
    rng = np.random.default_rng(seed)
    piece = data // 8
    with path.open("wb") as fh:
        fh.truncate(size)
        for k in range(8):
            fh.seek((size // 8) * k // 4096 * 4096)
            for _ in range(0, piece, 64 * MiB):
                fh.write(rng.integers(0, 256, min(64 * MiB, piece), np.uint8).tobytes())


def commands(size: int, data: int, work: Path) -> list[Run]:
    src, chain = work / "src.img", work / "chain"
    sparse_volume(src, size, data)
    runs = [measure("backup", [*BF, "backup", "--all-blocks", str(src), str(chain)])]
    rewrite_scattered(src, size, 1000, work / "changed.npz")
    runs += [measure("incremental --changed (1000 blocks)",
                     [*BF, "backup", "--all-blocks", str(src), str(chain), "--changed",
                      str(work / "changed.npz")]),
             measure("list", [*BF, "list", str(chain)]),
             measure("verify", [*BF, "verify", str(chain)]),
             measure("diff 0 1", [*BF, "diff", str(chain), "0", "1"]),
             measure("restore", [*BF, "restore", str(chain), str(work / "out.img")])]
    (work / "out.img").unlink()
    runs.append(measure("export vhd-dynamic", [*BF, "export", str(chain), str(work / "out.vhd"),
                                                "--format", "vhd-dynamic"]))
    runs.append(measure("consolidate", [*BF, "consolidate", str(chain)]))
    shutil.rmtree(chain)
    src.unlink()
    (work / "out.vhd").unlink()
    return runs


def against_cp(work: Path) -> dict[str, Run]:
    src = work / "src.img"
    sparse_volume(src, 16 * GiB, GiB)
    ours = measure("backup", [*BF, "backup", "--all-blocks", str(src), str(work / "chain")])
    cp = measure("cp --sparse=always + sync", ["sh", "-c", f"cp --sparse=always {src} "
                                               f"{work / 'copy.img'} && sync {work / 'copy.img'}"])
    shutil.rmtree(work / "chain")
    (work / "copy.img").unlink()
    src.unlink()
    return {"ours": ours, "cp": cp}


def rewrite_scattered(src: Path, size: int, count: int, changed: Path) -> None:
    """Write ``count`` random 4 KiB blocks of ``src`` at random positions; save their
    map (what change tracking would report) at ``changed``."""
    from blockforensics.blockmap import BlockMap

    n_blocks = size // 4096
    rng = np.random.default_rng(1)
    positions = np.sort(rng.choice(n_blocks, count, replace=False))
    fd = os.open(src, os.O_WRONLY)
    block = rng.integers(0, 256, 4096, np.uint8).tobytes()
    for p in positions.tolist():
        os.pwrite(fd, block, p * 4096)
    os.close(fd)
    BlockMap.from_positions(n_blocks, positions).save(changed)


def incremental(work: Path) -> dict[str, Run]:
    """1 % of a 16 GiB volume (1 GiB of data) rewritten at random blocks."""
    src, size = work / "src.img", 16 * GiB
    sparse_volume(src, size, GiB)
    n_blocks = size // 4096
    measure("full", [*BF, "backup", "--all-blocks", str(src), str(work / "a")])
    shutil.copytree(work / "a", work / "b")
    rewrite_scattered(src, size, n_blocks // 100, work / "changed.npz")
    runs = {
        "with --changed": measure("incr --changed", [*BF, "backup", "--all-blocks", str(src),
                                                     str(work / "a"), "--changed",
                                                     str(work / "changed.npz")]),
        "without": measure("incr", [*BF, "backup", "--all-blocks", str(src), str(work / "b")]),
    }
    shutil.rmtree(work / "a")
    shutil.rmtree(work / "b")
    src.unlink()
    return runs


def fleet(work: Path, n_chains: int) -> dict[int, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_fleet import N_CHAINS, make_fleet  # the tests' fleet: 21 small chains

    make_fleet(work / "fleet")
    times = {}
    for workers in (1, 2, 4):  # exit 1: the tests' fleet holds one broken chain
        started = time.perf_counter()
        subprocess.run([*BF, "fleet", "triage", str(work / "fleet"), "--workers",
                        str(workers), "--json"], capture_output=True, check=False)
        times[workers] = time.perf_counter() - started
    assert n_chains == N_CHAINS
    shutil.rmtree(work / "fleet")
    return times


def blockmaps() -> dict[str, float]:
    """Fastest of 5 seconds for set algebra, a count and the runs of two maps of a 1 TiB
    volume (2^28 blocks of 4 KiB, 20 000 runs each)."""
    from blockforensics.blockmap import BlockMap

    n = 1 << 28
    rng = np.random.default_rng(5)
    starts = np.sort(rng.choice(n - 1000, 20000, replace=False))
    a = BlockMap.from_run_arrays(n, starts, rng.integers(1, 100, len(starts)))
    b = BlockMap.from_run_arrays(n, starts + 50, np.full(len(starts), 70))
    out = {}
    for label, step in (("(a | b) & ~(a - b)", lambda: (a | b) & ~(a - b)),
                        ("a.count()", a.count), ("a.run_arrays()", a.run_arrays)):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        out[label] = min(times)
    return out


def startup(work: Path) -> dict[str, Run]:
    import blockforensics as bf

    bf.backup(bf.Chain.create(work / "small"), bf.Volume.from_bytes(os.urandom(64 * 4096)))
    best: dict[str, Run] = {}
    for _ in range(5):
        for label, argv in (("python -c pass", [sys.executable, "-c", "pass"]),
                            ("list (small chain)", [*BF, "list", str(work / "small")])):
            run = measure(label, argv)
            if label not in best or run.seconds < best[label].seconds:
                best[label] = run
    return best


def rewrite_every_other_block(src: Path, block: int = 512) -> None:
    """Overwrite every other ``block``-byte block of ``src`` with new random bytes, in
    pieces (an incremental of it then alternates with the full block by block)."""
    data = np.memmap(src, dtype=np.uint8, mode="r+").reshape(-1, block)
    rng = np.random.default_rng(9)
    for lo in range(0, len(data), 1 << 18):
        rows = data[lo : lo + (1 << 18) : 2]
        rows[:] = rng.integers(0, 256, rows.shape, dtype=np.uint8)
    data.flush()
    del data


def mount_reads(work: Path, data_mibs: list[int], baseline: Path | None, rounds: int = 3,
                fragmented: bool = False) -> list[dict[str, object]]:
    """``mount``'s server against the number of stored blocks: for each size, that many
    MiB of random bytes backed up at 512-byte blocks (2 Mi stored blocks a GiB: 8.5 GiB
    is more than 16 Mi blocks, which the plans of session 15 could not hold), mounted
    (seconds until ``disk.raw`` is there: the plans built), ``disk.raw`` read whole by
    ``dd bs=4M`` (seconds; the chain in the page cache), and the server's peak RSS
    (VmHWM) once mounted and after the read; ``rounds`` mounts, each read once, taking
    turns with ``baseline``'s (``DIR`` on ``PYTHONPATH``) if given: fastest and median
    seconds, the largest RSS.  ``fragmented``: every other block rewritten and backed up
    as an incremental, whose point is mounted: as many segments as blocks, alternating
    between the two images."""
    rows: list[dict[str, object]] = []
    checkouts: list[tuple[str, dict[str, str] | None]] = [("ours", None)]
    if baseline:
        checkouts.append(("before", {"PYTHONPATH": str(baseline), "PYTHONSAFEPATH": "1"}))
    for mib in data_mibs:
        src, chain = work / "mount-src.img", work / "mount-chain"
        random_file(src, mib * MiB, seed=mib)
        subprocess.run([*BF, "backup", "--block-size", "512", str(src), str(chain)],
                       check=True, stdout=subprocess.DEVNULL)
        if fragmented:
            rewrite_every_other_block(src)
            subprocess.run([*BF, "backup", str(src), str(chain)], check=True,
                           stdout=subprocess.DEVNULL)
        src.unlink()
        subprocess.run(["cat", *map(str, chain.glob("*.bfi"))], check=True,
                       stdout=subprocess.DEVNULL)  # in the page cache, for every round
        seen: dict[str, list[tuple[float, float, float, float]]] = {}
        for _ in range(rounds):
            for label, env in checkouts:
                started = time.perf_counter()
                with mounted(chain, work / "mnt", "--point", int(fragmented),
                             env=env) as (disk_vhd, proc):
                    up = time.perf_counter() - started
                    rss_up = peak_rss_mib(proc.pid)
                    started = time.perf_counter()
                    subprocess.run(["dd", f"if={disk_vhd.parent / 'disk.raw'}",
                                    "of=/dev/null", "bs=4M"], check=True, capture_output=True)
                    read = time.perf_counter() - started
                    seen.setdefault(label, []).append((up, read, rss_up,
                                                       peak_rss_mib(proc.pid)))
                print(mib, label, seen[label][-1], file=sys.stderr, flush=True)
        for label, runs in seen.items():
            ups, reads, rss_ups, peaks = zip(*runs)
            rows.append({"data MiB": mib, "stored blocks": mib * MiB // 512,
                         "segments": "as many as blocks" if fragmented else "few",
                         "checkout": label, "mount s (median)": f"{median(ups):.2f}",
                         "read s (fastest / median)": f"{min(reads):.2f} / {median(reads):.2f}",
                         "RSS mounted MiB": f"{max(rss_ups):.0f}",
                         "peak RSS MiB": f"{max(peaks):.0f}"})
        shutil.rmtree(chain)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-mib", type=int, default=256,
                        help="data in each sparse volume of the per-command table")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--mount-mib", type=int, nargs="+", default=[512, 2048, 8704],
                        help="data of each point mounted (512-byte blocks: 2 Mi a GiB)")
    parser.add_argument("--mount-only", action="store_true", help="just the mounts")
    parser.add_argument("--mount-fragmented", action="store_true",
                        help="mount an incremental of every other block (see mount_reads)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout's mounts too (its extensions built)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    out: dict[str, object] = {}
    mounts = mount_reads(work, args.mount_mib, args.baseline,
                         fragmented=args.mount_fragmented)
    out["mount"] = mounts
    mount_lines = ["| " + " | ".join(mounts[0]) + " |", "|---" * len(mounts[0]) + "|"]
    mount_lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in mounts]
    if args.mount_only:
        shutil.rmtree(work, ignore_errors=True)
        print("\n".join(mount_lines))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return
    lines = ["| volume | command | seconds | peak RSS MiB |", "|---|---|---|---|"]
    for label, size in (("1 GiB", GiB), ("16 GiB", 16 * GiB), ("1 TiB", 1 << 40)):
        print(f"{label} sparse, {args.data_mib} MiB data", file=sys.stderr, flush=True)
        runs = commands(size, args.data_mib * MiB, work)
        out[label] = {r.label: {"seconds": r.seconds, "peak_rss_mib": r.peak_rss_mib}
                      for r in runs}
        lines += [f"| {label} | {r.label} | {r.seconds:.2f} | {r.peak_rss_mib:.0f} |"
                  for r in runs]
    vs = against_cp(work)
    lines += ["", "| 16 GiB sparse, 1 GiB data | seconds | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {r.label} | {r.seconds:.2f} | {r.peak_rss_mib:.0f} |" for r in vs.values()]
    inc = incremental(work)
    lines += ["", "| incremental, 1 % of 16 GiB (1 GiB data) | seconds | peak RSS MiB |",
              "|---|---|---|"]
    lines += [f"| {k} | {r.seconds:.2f} | {r.peak_rss_mib:.0f} |" for k, r in inc.items()]
    fl = fleet(work, 21)
    lines += ["", "| fleet triage, 21 chains | 1 worker | 2 workers | 4 workers |",
              "|---|---|---|---|",
              "| wall seconds | " + " | ".join(f"{fl[w]:.1f}" for w in (1, 2, 4)) + " |"]
    maps = blockmaps()
    lines += ["", "| block maps of 1 TiB (2^28 blocks) | seconds (fastest of 5) |", "|---|---|"]
    lines += [f"| `{k}` | {v:.3f} |".replace(" | b)", " \\| b)") for k, v in maps.items()]
    lines += ["", *mount_lines]
    st = startup(work)
    lines += ["", "| start-up (fastest of 5) | seconds | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {r.label} | {r.seconds:.3f} | {r.peak_rss_mib:.0f} |" for r in st.values()]
    out.update({"vs_cp": {k: vars(r) for k, r in vs.items()},
                "incremental": {k: vars(r) for k, r in inc.items()},
                "fleet": fl, "blockmaps": maps, "startup": {k: vars(r) for k, r in st.items()}})
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

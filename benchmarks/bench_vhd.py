"""VHD export against ``qemu-img convert`` at several sizes, and reads of the FUSE-served
disk.vhd, in one run.

    python benchmarks/bench_vhd.py [--size-mib 512 2048 4096] [--repeat 5] [--dir /tmp] [--json F]
                                   [--from chain raw] [--baseline DIR]

The data, per size: that many MiB of random bytes with a sparse hole in every
16 MiB, backed up with ``blockforensics backup --all-blocks``.  Measured:

- ``blockforensics export`` of that point to a dynamic VHD against
  ``qemu-img convert -O vpc -o subformat=dynamic`` of the restored raw, like for
  like: qemu-img's default leaves its output in the page cache, so it is matched
  with our export under ``BLOCKFORENSICS_FSYNC=0``; our default export fsyncs, so it
  is matched with the convert followed by ``sync`` of its output, and with
  ``qemu-img convert -t writeback`` (qemu-img's own flushing mode).  Before
  every run its source (chain images, restored raw) is read into the page cache
  and the last output removed: every run reads from memory and writes a new file.
  Both are whole commands: our interpreter and numpy start-up (0.1-0.4 s here,
  depending on the machine's load) is in every figure.
- at the first size only: reading ``MOUNTPOINT/disk.vhd`` (``blockforensics
  mount``) in 4 MiB chunks, with the chain images in the page cache and dropped
  from it, against reading the exported .vhd file after dropping it from the
  page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``), so that it is read from
  the disk.  The reader times itself, from opening the file to its last byte
  (``exposure.READER``, shared with ``bench_peers.py``).

- from a raw file (``--from raw``): ``blockforensics export SOURCE.raw`` to a dynamic
  and to a fixed VHD against ``qemu-img convert -o subformat=dynamic|fixed`` of the
  same file, matched as above.  ``--baseline DIR`` adds the same exports by another
  checkout of the package (``DIR`` on ``PYTHONPATH``; e.g. ``git archive`` of an older
  commit), taking turns with the others: before and after in one run.

Every command runs as an installed package would: bytecode compiled beforehand
(``PYTHONDONTWRITEBYTECODE`` is dropped and the package compiled), not from source.

Each step runs ``--repeat`` times, taking turns with the others of its group;
the fastest run and the median are reported (the machine is shared and noisy).
MB/s are 10^6 bytes per second of the volume (export) or of the .vhd file (reads);
speed ratios are the reference's time over ours (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import Run, cli, compiled, fastest, options, random_file, table
from exposure import (
    LIKE_FOR_LIKE,
    convert_steps,
    drop_cache,
    export_steps,
    fresh,
    identical,
    mounted,
    read_step,
    warm,
)

MiB = 1 << 20
HOLE_EVERY = 16 * MiB  # bytes: one hole per this much data
HOLE_SIZE = 4 * MiB  # bytes, aligned to 2 MiB VHD blocks


def punch_holes(path: Path) -> int:
    """Deallocate HOLE_SIZE bytes in every HOLE_EVERY; returns the bytes punched."""
    size = path.stat().st_size
    offsets = range(HOLE_EVERY // 2, size - HOLE_SIZE, HOLE_EVERY)
    for offset in offsets:
        subprocess.run(["fallocate", "--punch-hole", "--offset", str(offset),
                        "--length", str(HOLE_SIZE), str(path)], check=True)
    return len(offsets) * HOLE_SIZE


def ratio(ours: Run, reference: Run) -> dict[str, float]:
    """Speed ratios, fastest run to fastest run and median to median."""
    return {"fastest": round(reference.seconds / ours.seconds, 2),
            "median": round(reference.median_seconds / ours.median_seconds, 2)}


def figures(runs: dict[str, Run], size: int) -> list[dict[str, object]]:
    return [{"step": run.label, "fastest s": round(run.seconds, 3),
             "median s": round(run.median_seconds, 3), "MB/s": round(run.rate(size), 1),
             "peak RSS MiB": round(run.peak_rss_mib)} for run in runs.values()]


def like_for_like(runs: dict[str, Run], ours: str, who: str = "") -> dict[str, object]:
    """Speed ratios of our export (label ``ours``) to the qemu-img steps it matches."""
    return {f"{who}export{suffix} / {qemu}": ratio(runs[f"{ours}{suffix}"], runs[qemu])
            for suffix, qemu in LIKE_FOR_LIKE}


def raw_exports(work: Path, source: Path, size: int, repeat: int,
                baseline: Path | None) -> dict[str, object]:
    """Race ``export`` of the raw ``source`` to a dynamic and a fixed VHD against
    ``qemu-img convert`` of it (and against ``baseline``'s export, if given)."""
    result: dict[str, object] = {}
    ours, qemu = work / "ours-raw.vhd", work / "qemu-raw.vhd"
    for kind in ("dynamic", "fixed"):
        export = cli("export", source, ours, "--format", f"vhd-{kind}")
        contenders = {"": None, "baseline ": baseline} if baseline else {"": None}
        steps = []
        for who, path in contenders.items():
            steps += export_steps(f"{who}blockforensics export", export, fresh(ours, source),
                                  {"PYTHONPATH": str(path)} if path else None)
        runs = fastest(steps + convert_steps(source, qemu, kind, fresh(qemu, source)), repeat)
        ratios: dict[str, object] = {}
        for who in contenders:
            ratios |= like_for_like(runs, f"{who}blockforensics export", who)
        result[kind] = {"identical": identical(source, ours),
                        "runs": figures(runs, size), "speed_ratios": ratios}
    return result


def exports(work: Path, size_mib: int, repeat: int, sources: tuple[str, ...] = ("chain",),
            baseline: Path | None = None) -> dict[str, object]:
    """Back up ``size_mib`` MiB of data, then race the exports; the figures as a dict."""
    size = size_mib * MiB
    source = random_file(work / "source.raw", size)
    holes = punch_holes(source)
    if "chain" not in sources:
        return {"size_mib": size_mib, "holes_mib": holes // MiB,
                "raw": raw_exports(work, source, size, repeat, baseline)}
    chain, restored = work / "chain", work / "restored.raw"
    for argv in (cli("backup", source, chain, "--all-blocks"), cli("restore", chain, restored)):
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    ours_vhd, qemu_vhd = work / "ours.vhd", work / "qemu.vhd"
    runs = fastest([
        *export_steps("blockforensics export", cli("export", chain, ours_vhd),
                      fresh(ours_vhd, *sorted(chain.glob("*.bfi")))),
        *convert_steps(restored, qemu_vhd, "dynamic", fresh(qemu_vhd, restored)),
    ], repeat)
    return {
        "size_mib": size_mib, "holes_mib": holes // MiB,
        "identical": identical(restored, ours_vhd),
        "vhd_bytes": {"ours": ours_vhd.stat().st_size, "qemu-img": qemu_vhd.stat().st_size},
        "runs": figures(runs, size),
        "speed_ratios": like_for_like(runs, "blockforensics export"),
        **({"raw": raw_exports(work, source, size, repeat, baseline)}
           if "raw" in sources else {}),
    }


def fuse_reads(work: Path, repeat: int) -> dict[str, object]:
    """Read the FUSE disk.vhd of the chain in ``work`` with the chain images in the page
    cache and dropped from it, against the exported file dropped from the page cache."""
    chain, ours_vhd = work / "chain", work / "ours.vhd"
    images = sorted(chain.glob("*.bfi"))
    with mounted(chain, work / "mnt") as (disk_vhd, _):
        file_read, fuse_hot, fuse_cold = fastest([
            read_step("read .vhd file (dropped)", ours_vhd, lambda: drop_cache(ours_vhd)),
            read_step("read FUSE disk.vhd (chain cached)", disk_vhd, lambda: warm(*images)),
            read_step("read FUSE disk.vhd (chain dropped)", disk_vhd,
                      lambda: drop_cache(*images)),
        ], repeat).values()
        vhd_size = disk_vhd.stat().st_size
    return {
        "vhd_bytes": vhd_size,
        "runs": [{"step": run.label, "fastest s": round(run.seconds, 3),
                  "median s": round(run.median_seconds, 3), "MB/s": round(run.rate(vhd_size), 1)}
                 for run in (file_read, fuse_hot, fuse_cold)],
        "speed_ratios": {f"{run.label} / {file_read.label}": ratio(run, file_read)
                         for run in (fuse_hot, fuse_cold)},
    }


def main() -> None:
    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="sources", nargs="+", choices=["chain", "raw"],
                            default=["chain", "raw"], help="export from a chain, a raw file")
        parser.add_argument("--baseline", type=Path, metavar="DIR",
                            help="also run the raw exports with DIR first on PYTHONPATH (a "
                                 "checkout of another version: DIR/blockforensics)")

    args = options(__doc__, [512, 2048, 4096], more)
    os.environ.pop("BLOCKFORENSICS_FSYNC", None)  # our writer fsyncs, as in production
    import blockforensics

    compiled(Path(blockforensics.__file__).parent,
             *([args.baseline / "blockforensics"] if args.baseline else []))
    results: dict[str, object] = {"exports": []}
    for i, size_mib in enumerate(args.size_mib):
        work = Path(tempfile.mkdtemp(prefix="bf-bench-vhd-", dir=args.dir))
        try:
            done = exports(work, size_mib, args.repeat, tuple(args.sources), args.baseline)
            results["exports"].append(done)  # type: ignore[attr-defined]
            for kind, raw in done.get("raw", {}).items():  # type: ignore[attr-defined]
                print(f"\n{size_mib} MiB random, {done['holes_mib']} MiB of it holes; raw file "
                      f"to vhd-{kind}, identical: {raw['identical']}")
                print(table(raw["runs"]))
            if "chain" not in args.sources:
                continue
            print(f"\n{size_mib} MiB random, {done['holes_mib']} MiB of it holes; backed up "
                  f"--all-blocks; export identical to the restored raw: {done['identical']}; "
                  f".vhd bytes {done['vhd_bytes']}")
            print(table(done["runs"]))  # type: ignore[arg-type]
            if i == 0:
                results["fuse"] = reads = fuse_reads(work, args.repeat)
                print(f"\nreads of the {reads['vhd_bytes']}-byte .vhd; the file was dropped "
                      "from the page cache (POSIX_FADV_DONTNEED) before each read")
                print(table(reads["runs"]))  # type: ignore[arg-type]
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\nspeed ratios, fastest and median (> 1: ours is faster)")
    rows = [{"size MiB": f["size_mib"], "comparison": f"from a chain: {name}", **value}
            for f in results["exports"]  # type: ignore[attr-defined]
            for name, value in f.get("speed_ratios", {}).items()]
    rows += [{"size MiB": f["size_mib"], "comparison": f"raw to vhd-{kind}: {name}", **value}
             for f in results["exports"]  # type: ignore[attr-defined]
             for kind, raw in f.get("raw", {}).items()
             for name, value in raw["speed_ratios"].items()]
    if "fuse" in results:
        rows += [{"size MiB": args.size_mib[0], "comparison": name, **value}
                 for name, value in results["fuse"]["speed_ratios"].items()]  # type: ignore[index]
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

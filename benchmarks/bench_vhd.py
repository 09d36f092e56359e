"""VHD export against ``qemu-img convert`` at several sizes, and reads of the FUSE-served
disk.vhd, in one run.

    python benchmarks/bench_vhd.py [--size-mib 512 2048 4096] [--repeat 5] [--dir /tmp] [--json F]
                                   [--from chain raw] [--baseline DIR] [--fuse-only]

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
- at the first size only: reading ``MOUNTPOINT/disk.vhd`` and ``disk.raw``
  (``blockforensics mount``), each dropped from the page cache first (the mount lets
  the kernel keep what it read), with the chain images in the page cache and dropped
  from it, and ``disk.vhd`` once more without dropping it (from the kernel's cache);
  against reading the exported .vhd file dropped from the page cache (read from the
  disk) and in it.  The reader times itself, from opening the file to its last byte
  (``exposure.READER``, shared with ``bench_peers.py``).  Also printed: each mount's
  read-ahead (KiB) and its CPU seconds per read.  ``--baseline DIR`` mounts the chain
  with that checkout too, its reads taking turns with ours; ``--fuse-only`` measures
  just these reads.

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
from contextlib import ExitStack
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
                                  baseline_env(path) if path else None)
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
    if "fuse" in sources:  # just the chain and its export, for the reads
        subprocess.run(cli("backup", source, work / "chain", "--all-blocks"),
                       stdout=subprocess.DEVNULL, check=True)
        subprocess.run(cli("export", work / "chain", work / "ours.vhd"),
                       stdout=subprocess.DEVNULL, check=True)
        return {"size_mib": size_mib, "holes_mib": holes // MiB}
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_ahead_kb(mountpoint: Path) -> int:
    """The kernel's read-ahead (KiB) of the file system mounted at ``mountpoint``."""
    device = os.stat(mountpoint).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
               .read_text())


def fuse_reads(work: Path, repeat: int, baseline: Path | None = None) -> dict[str, object]:
    """Read the FUSE disk.vhd and disk.raw of the chain in ``work`` (and of ``baseline``'s
    mount, in the same rounds), each dropped from the page cache first, against the
    exported .vhd file dropped from the page cache and in it."""
    chain, ours_vhd = work / "chain", work / "ours.vhd"
    images = sorted(chain.glob("*.bfi"))
    contenders = {"": {}, "baseline ": baseline_env(baseline)} if baseline else {"": {}}
    with ExitStack() as stack:
        mounts = {who: stack.enter_context(mounted(chain, work / f"mnt{i}", env=env))
                  for i, (who, env) in enumerate(contenders.items())}
        steps = []
        for who, (vhd, _) in mounts.items():
            raw = vhd.with_name("disk.raw")
            steps += [
                read_step(f"{who}FUSE disk.vhd", vhd,
                          lambda vhd=vhd: (warm(*images), drop_cache(vhd))),
                *([read_step("FUSE disk.vhd again (kernel cache)", vhd)] if not who else []),
                read_step(f"{who}FUSE disk.raw", raw,
                          lambda raw=raw: (warm(*images), drop_cache(raw))),
                read_step(f"{who}FUSE disk.vhd, chain dropped", vhd,
                          lambda vhd=vhd: drop_cache(*images, vhd)),
            ]
        steps += [read_step("read .vhd file (dropped)", ours_vhd, lambda: drop_cache(ours_vhd)),
                  read_step("read .vhd file (page cache)", ours_vhd, lambda: warm(ours_vhd))]
        cpu = {who: cpu_seconds(proc.pid) for who, (_, proc) in mounts.items()}
        runs = fastest(steps, repeat)
        cpu = {who: cpu_seconds(proc.pid) - cpu[who] for who, (_, proc) in mounts.items()}
        read_ahead = {who: read_ahead_kb(vhd.parent) for who, (vhd, _) in mounts.items()}
    sizes = {label: (work / "source.raw" if "disk.raw" in label else ours_vhd).stat().st_size
             for label in runs}
    fuse_steps = [label for label in runs if "FUSE" in label]

    def speed(label: str, reference: str) -> dict[str, float]:
        """MB/s over MB/s, of the fastest runs and of the medians."""
        ours, ref = runs[label], runs[reference]
        scale = sizes[label] / sizes[reference]
        return {"fastest": round(scale * ref.seconds / ours.seconds, 2),
                "median": round(scale * ref.median_seconds / ours.median_seconds, 2)}

    ratios = {f"{label} / {reference}": speed(label, reference) for label in fuse_steps
              for reference in ("read .vhd file (dropped)", "read .vhd file (page cache)")}
    ratios |= {f"{label} / baseline {label}": speed(label, f"baseline {label}")
               for label in fuse_steps if f"baseline {label}" in runs}
    # by each mount: disk.vhd, disk.raw, disk.vhd with the chain dropped; ours also
    # disk.vhd again (in direct mode the server's too)
    reads = {who: (3 if who.strip() else 4) * repeat for who in cpu}
    return {
        "vhd_bytes": sizes["read .vhd file (dropped)"],
        "read_ahead_kb": {who.strip() or "ours": kb for who, kb in read_ahead.items()},
        "mount_cpu_seconds_per_read": {who.strip() or "ours": round(seconds / reads[who], 2)
                                       for who, seconds in cpu.items()},
        "runs": [{"step": run.label, "fastest s": round(run.seconds, 3),
                  "median s": round(run.median_seconds, 3),
                  "MB/s": round(run.rate(sizes[run.label]), 1)} for run in runs.values()],
        "speed_ratios": ratios,
    }


def baseline_env(baseline: Path) -> dict[str, str]:
    """The environment that runs ``baseline``'s package: first on the path, and the
    working directory not (``python -m`` puts it first: a checkout's own package would
    win when run from one)."""
    return {"PYTHONPATH": str(baseline), "PYTHONSAFEPATH": "1"}


def main() -> None:
    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="sources", nargs="+", choices=["chain", "raw"],
                            default=["chain", "raw"], help="export from a chain, a raw file")
        parser.add_argument("--baseline", type=Path, metavar="DIR",
                            help="also run the raw exports and the FUSE reads with DIR first "
                                 "on PYTHONPATH (a checkout of another version: "
                                 "DIR/blockforensics)")
        parser.add_argument("--fuse-only", action="store_true",
                            help="only the FUSE reads, at the first size (the chain is "
                                 "exported once, for the file read they are compared with)")

    args = options(__doc__, [512, 2048, 4096], more)
    os.environ.pop("BLOCKFORENSICS_FSYNC", None)  # our writer fsyncs, as in production
    import blockforensics

    compiled(Path(blockforensics.__file__).parent,
             *([args.baseline / "blockforensics"] if args.baseline else []))
    results: dict[str, object] = {"exports": []}
    if args.fuse_only:
        args.size_mib, args.sources = args.size_mib[:1], ["fuse"]
    for i, size_mib in enumerate(args.size_mib):
        work = Path(tempfile.mkdtemp(prefix="bf-bench-vhd-", dir=args.dir))
        try:
            done = exports(work, size_mib, args.repeat, tuple(args.sources), args.baseline)
            results["exports"].append(done)  # type: ignore[attr-defined]
            for kind, raw in done.get("raw", {}).items():  # type: ignore[attr-defined]
                print(f"\n{size_mib} MiB random, {done['holes_mib']} MiB of it holes; raw file "
                      f"to vhd-{kind}, identical: {raw['identical']}")
                print(table(raw["runs"]))
            if "chain" in args.sources:
                print(f"\n{size_mib} MiB random, {done['holes_mib']} MiB of it holes; backed "
                      f"up --all-blocks; export identical to the restored raw: "
                      f"{done['identical']}; .vhd bytes {done['vhd_bytes']}")
                print(table(done["runs"]))  # type: ignore[arg-type]
            if i == 0 and {"chain", "fuse"} & set(args.sources):
                results["fuse"] = reads = fuse_reads(work, args.repeat, args.baseline)
                print(f"\nreads of the {reads['vhd_bytes']}-byte .vhd (disk.raw: the volume), "
                      "each dropped from the page cache (POSIX_FADV_DONTNEED) first unless it "
                      f"says otherwise; the mounts' read-ahead (KiB): {reads['read_ahead_kb']}; "
                      f"their CPU seconds per read: {reads['mount_cpu_seconds_per_read']}")
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

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
  the disk.

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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from common import Run, Step, cli, fastest, options, random_file, table

MiB = 1 << 20
HOLE_EVERY = 16 * MiB  # bytes: one hole per this much data
HOLE_SIZE = 4 * MiB  # bytes, aligned to 2 MiB VHD blocks
READ_CHUNK = 4 * MiB


def punch_holes(path: Path) -> int:
    """Deallocate HOLE_SIZE bytes in every HOLE_EVERY; returns the bytes punched."""
    size = path.stat().st_size
    offsets = range(HOLE_EVERY // 2, size - HOLE_SIZE, HOLE_EVERY)
    for offset in offsets:
        subprocess.run(["fallocate", "--punch-hole", "--offset", str(offset),
                        "--length", str(HOLE_SIZE), str(path)], check=True)
    return len(offsets) * HOLE_SIZE


def drop_cache(*paths: Path) -> None:
    """Write back, then evict the files' pages from the page cache."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(*paths: Path) -> None:
    for path in paths:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def identical(raw: Path, vhd: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "vpc", str(raw),
                           str(vhd)], check=False).returncode == 0


def reader(path: Path) -> list[str]:
    """Read ``path`` in READ_CHUNK pieces and throw them away (dd: no interpreter start-up
    in the figure, which would flatter the slower reader)."""
    return ["dd", f"if={path}", "of=/dev/null", f"bs={READ_CHUNK}", "status=none"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def mounted_chain(chain: Path, mountpoint: Path, env: dict[str, str]) -> Iterator[int]:
    """``blockforensics mount CHAIN MOUNTPOINT`` (with ``env``) while in the block; its pid.
    It runs in MOUNTPOINT's parent: ``python -m`` puts its working directory first on
    the path, which would hide a ``PYTHONPATH`` in ``env`` when run from a checkout."""
    mountpoint.mkdir()
    proc = subprocess.Popen(cli("mount", chain, mountpoint), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                            cwd=mountpoint.parent)
    try:
        deadline = time.monotonic() + 30
        while not (mountpoint / "disk.vhd").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mount failed: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def read_ahead_kb(mountpoint: Path) -> int:
    """The kernel's read-ahead (KiB) of the file system mounted at ``mountpoint``."""
    device = os.stat(mountpoint).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
               .read_text())


def ratio(ours: Run, reference: Run) -> dict[str, float]:
    """Speed ratios, fastest run to fastest run and median to median."""
    return {"fastest": round(reference.seconds / ours.seconds, 2),
            "median": round(reference.median_seconds / ours.median_seconds, 2)}


def figures(runs: dict[str, Run], size: int) -> list[dict[str, object]]:
    return [{"step": run.label, "fastest s": round(run.seconds, 3),
             "median s": round(run.median_seconds, 3), "MB/s": round(run.rate(size), 1),
             "peak RSS MiB": round(run.peak_rss_mib)} for run in runs.values()]


def raw_exports(work: Path, source: Path, size: int, repeat: int,
                baseline: Path | None) -> dict[str, object]:
    """Race ``export`` of the raw ``source`` to a dynamic and a fixed VHD against
    ``qemu-img convert`` of it (and against ``baseline``'s export, if given)."""
    result: dict[str, object] = {}
    ours, qemu = work / "ours-raw.vhd", work / "qemu-raw.vhd"

    def fresh(vhd: Path) -> Callable[[], None]:
        return lambda: (vhd.unlink(missing_ok=True), warm(source))

    for kind in ("dynamic", "fixed"):
        export = cli("export", source, ours, "--format", f"vhd-{kind}")
        convert = ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={kind}"]
        contenders = {"": None, "baseline ": baseline} if baseline else {"": None}
        steps = []
        for who, path in contenders.items():
            env = {"PYTHONPATH": str(path)} if path else {}
            steps += [Step(f"{who}blockforensics export", export, fresh(ours), env),
                      Step(f"{who}blockforensics export, no fsync", export, fresh(ours),
                           {**env, "BLOCKFORENSICS_FSYNC": "0"})]
        steps += [
            Step("qemu-img convert", [*convert, str(source), str(qemu)], fresh(qemu)),
            Step("qemu-img convert + sync", ["sh", "-c", '"$@" && sync "$0"', str(qemu),
                                             *convert, str(source), str(qemu)], fresh(qemu)),
            Step("qemu-img convert -t writeback",
                 [*convert, "-t", "writeback", str(source), str(qemu)], fresh(qemu)),
        ]
        runs = fastest(steps, repeat)
        ratios = {}
        for who in contenders:
            mine, cached = runs[f"{who}blockforensics export"], \
                runs[f"{who}blockforensics export, no fsync"]
            ratios |= {
                f"{who}export, no fsync / qemu-img convert": ratio(cached,
                                                                   runs["qemu-img convert"]),
                f"{who}export / qemu-img convert + sync": ratio(mine,
                                                                runs["qemu-img convert + sync"]),
                f"{who}export / qemu-img convert -t writeback":
                    ratio(mine, runs["qemu-img convert -t writeback"]),
            }
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
    sources = {ours_vhd: sorted(chain.glob("*.bfi")), qemu_vhd: [restored]}

    def fresh(vhd: Path) -> Callable[[], None]:
        """Before a run: remove the last output, read the source into the page cache
        (this machine pages out what has not been read for a while)."""
        return lambda: (vhd.unlink(missing_ok=True), warm(*sources[vhd]))

    export = cli("export", chain, ours_vhd)
    convert = ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic"]
    runs = fastest([
        Step("blockforensics export", export, fresh(ours_vhd)),
        Step("blockforensics export, no fsync", export, fresh(ours_vhd),
             {"BLOCKFORENSICS_FSYNC": "0"}),
        Step("qemu-img convert", [*convert, str(restored), str(qemu_vhd)], fresh(qemu_vhd)),
        Step("qemu-img convert + sync", ["sh", "-c", '"$@" && sync "$0"', str(qemu_vhd),
                                         *convert, str(restored), str(qemu_vhd)],
             fresh(qemu_vhd)),
        Step("qemu-img convert -t writeback",
             [*convert, "-t", "writeback", str(restored), str(qemu_vhd)], fresh(qemu_vhd)),
    ], repeat)
    ours, ours_cached, qemu, qemu_sync, qemu_flush = runs.values()
    return {
        "size_mib": size_mib, "holes_mib": holes // MiB,
        "identical": identical(restored, ours_vhd),
        "vhd_bytes": {"ours": ours_vhd.stat().st_size, "qemu-img": qemu_vhd.stat().st_size},
        "runs": figures(runs, size),
        "speed_ratios": {
            "export, no fsync / qemu-img convert": ratio(ours_cached, qemu),
            "export / qemu-img convert + sync": ratio(ours, qemu_sync),
            "export / qemu-img convert -t writeback": ratio(ours, qemu_flush),
        },
        **({"raw": raw_exports(work, source, size, repeat, baseline)}
           if "raw" in sources else {}),
    }


def fuse_reads(work: Path, repeat: int, baseline: Path | None = None) -> dict[str, object]:
    """Read the FUSE disk.vhd and disk.raw of the chain in ``work`` (and of ``baseline``'s
    mount, in the same rounds) against the exported .vhd file, dropped from the page
    cache and in it."""
    chain, ours_vhd = work / "chain", work / "ours.vhd"
    images = sorted(chain.glob("*.bfi"))
    contenders = {"": {}, "baseline ": {"PYTHONPATH": str(baseline)}} if baseline else {"": {}}
    with ExitStack() as stack:
        mounts = {who: (work / f"mnt{i}", stack.enter_context(
            mounted_chain(chain, work / f"mnt{i}", env)))
            for i, (who, env) in enumerate(contenders.items())}
        steps = []
        for who, (mountpoint, _) in mounts.items():
            vhd, raw = mountpoint / "disk.vhd", mountpoint / "disk.raw"
            steps += [
                Step(f"{who}FUSE disk.vhd", reader(vhd),
                     lambda vhd=vhd: (warm(*images), drop_cache(vhd))),
                *([Step("FUSE disk.vhd again (kernel cache)", reader(vhd))] if not who else []),
                Step(f"{who}FUSE disk.raw", reader(raw),
                     lambda raw=raw: (warm(*images), drop_cache(raw))),
                Step(f"{who}FUSE disk.vhd, chain dropped", reader(vhd),
                     lambda vhd=vhd: drop_cache(*images, vhd)),
            ]
        steps += [Step("read .vhd file (dropped)", reader(ours_vhd), lambda: drop_cache(ours_vhd)),
                  Step("read .vhd file (page cache)", reader(ours_vhd), lambda: warm(ours_vhd))]
        cpu = {who: cpu_seconds(pid) for who, (_, pid) in mounts.items()}
        runs = fastest(steps, repeat)
        cpu = {who: cpu_seconds(pid) - cpu[who] for who, (_, pid) in mounts.items()}
        read_ahead = {who: read_ahead_kb(mountpoint) for who, (mountpoint, _) in mounts.items()}
    sizes = {label: (work / "source.raw" if "disk.raw" in label else ours_vhd).stat().st_size
             for label in runs}
    size = sizes["read .vhd file (dropped)"]
    fuse_steps = [label for label in runs if "FUSE" in label]

    def speed(label: str, reference: str, median: bool = False) -> float:
        """Rate over rate (MB/s), fastest runs or medians."""
        ours, ref = runs[label], runs[reference]
        if median:
            return (sizes[label] / ours.median_seconds) / (sizes[reference] / ref.median_seconds)
        return (sizes[label] / ours.seconds) / (sizes[reference] / ref.seconds)

    ratios = {f"{label} / {reference}": {"fastest": round(speed(label, reference), 2),
                                         "median": round(speed(label, reference, True), 2)}
              for label in fuse_steps
              for reference in ("read .vhd file (dropped)", "read .vhd file (page cache)")}
    if baseline:
        ratios |= {f"{label} / baseline {label}": {
            "fastest": round(speed(label, f"baseline {label}"), 2),
            "median": round(speed(label, f"baseline {label}", True), 2)}
            for label in fuse_steps if f"baseline {label}" in runs}
    reads = 3 * repeat  # per mount: disk.vhd, disk.raw, disk.vhd with the chain dropped
    return {
        "vhd_bytes": size,
        "read_ahead_kb": {who.strip() or "ours": kb for who, kb in read_ahead.items()},
        "mount CPU s per read": {who.strip() or "ours": round(seconds / reads, 2)
                                 for who, seconds in cpu.items()},
        "runs": [{"step": run.label, "fastest s": round(run.seconds, 3),
                  "median s": round(run.median_seconds, 3),
                  "MB/s": round(run.rate(sizes[run.label]), 1)} for run in runs.values()],
        "speed_ratios": ratios,
    }


def compiled(*packages: Path) -> None:
    """Run the commands from bytecode, as installed: compile ``packages`` (each the
    directory of a ``blockforensics`` package) and let Python read it."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for package in packages:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True,
                       stdout=subprocess.DEVNULL)


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
                print(f"\nreads of the {reads['vhd_bytes']}-byte .vhd in {READ_CHUNK // MiB} MiB "
                      "pieces (dd); the file read was dropped from the page cache "
                      "(POSIX_FADV_DONTNEED) before each read, except where it says page cache; "
                      f"mounts' read-ahead KiB {reads['read_ahead_kb']}, their CPU seconds per "
                      f"read {reads['mount CPU s per read']}")
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

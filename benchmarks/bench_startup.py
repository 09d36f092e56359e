"""Fixed cost of the commands of issue 19's table: this checkout against another one.

``bench_startup.py --image IMG --baseline DIR [--repeat 9]``

Our commands race C programs (``cp``, ``qemu-img convert``) that start in a
millisecond, so what a command imports and computes before its first byte of
work is paid on every run.  Each command runs on the same image (default: the
512 MiB realistic ext4 image of ``bench_peers.py``, built in ``--dir``) by this
checkout (``after``) and by ``--baseline DIR`` (``before``: ``DIR`` on
``PYTHONPATH``), taking turns with ``python -c pass`` (the interpreter's own
start, ``site`` included) and ``python -c "import numpy"`` (the floor of every
command that touches block arrays); the ``start-up`` rows export and back up the
image's first MiB: nearly nothing but the fixed cost.  Outputs are removed before each
run; every other round runs the two versions in reverse order, so that neither
always runs first.  Reported: the fastest wall time and the least CPU time (user +
system, which the machine's other tenants disturb less) of each.  Run it at high
priority, e.g. ``setsid bash -c 'echo -20 > /proc/self/autogroup && exec python3
benchmarks/bench_startup.py ...'``.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import cli, compiled, measure, options, settle, table


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``argv``, after a ``sync``."""
    settle()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime


def main() -> None:
    args = options(__doc__, 512, lambda parser: (
        parser.add_argument("--image", type=Path, help="source image (default: build one)"),
        parser.add_argument("--baseline", type=Path, required=True,
                            help="the other checkout (its blockforensics compiled here)"),
        parser.add_argument("--only", nargs="+", metavar="COMMAND",
                            help="only these: backup, export-raw-fixed, ..., start-up-backup")))
    here = Path(__file__).resolve().parent.parent
    compiled(here / "blockforensics", args.baseline / "blockforensics")
    work = args.dir / "bench-startup"
    work.mkdir(parents=True, exist_ok=True)
    image = args.image
    if image is None:
        from bench_peers import build_image

        image = work / "src.img"
        if not image.exists():
            build_image(image, args.size_mib << 20)
    small = work / "small.img"
    with image.open("rb") as fh:
        small.write_bytes(fh.read(1 << 20))
    chain = work / "chain"
    _remove(chain)
    small_chain = work / "small-chain"
    _remove(small_chain)
    for source, made in ((image, chain), (small, small_chain)):  # read below
        measure("chain", cli("backup", source, made), {"PYTHONPATH": str(here)})
    out = work / "out"
    commands = {
        "backup": ("full, plain backup", ("backup", image, out)),
        "export-raw-fixed": ("export raw -> vhd-fixed",
                             ("export", image, out, "--format", "vhd-fixed")),
        "export-raw-dynamic": ("export raw -> vhd-dynamic",
                               ("export", image, out, "--format", "vhd-dynamic")),
        "export-chain-fixed": ("export chain -> vhd-fixed",
                               ("export", chain, out, "--format", "vhd-fixed")),
        "export-chain-dynamic": ("export chain -> vhd-dynamic",
                                 ("export", chain, out, "--format", "vhd-dynamic")),
        "list": ("list", ("list", chain)),
        "restore": ("restore", ("restore", chain, out)),
        "start-up-export": ("start-up: export 1 MiB -> vhd-fixed",
                            ("export", small, out, "--format", "vhd-fixed")),
        "start-up-backup": ("start-up: backup 1 MiB", ("backup", small, out)),
        "start-up-export-chain": ("start-up: export a chain of 1 MiB -> vhd-fixed",
                                  ("export", small_chain, out, "--format", "vhd-fixed")),
        "start-up-restore": ("start-up: restore a chain of 1 MiB", ("restore", small_chain, out)),
    }
    unknown = set(args.only or ()) - set(commands)
    if unknown:
        raise SystemExit(f"--only: no command {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(commands)}")
    picked = {key: commands[key] for key in args.only or commands}
    versions = {"before": {"PYTHONPATH": str(args.baseline), "PYTHONSAFEPATH": "1"},
                "after": {"PYTHONPATH": str(here), "PYTHONSAFEPATH": "1"}}
    floors = {"python -c pass": "pass", "python -c 'import numpy'": "import numpy"}
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round in range(args.repeat):
        for label, code in floors.items():
            runs.setdefault((label, ""), []).append(timed([sys.executable, "-c", code], {
                "OPENBLAS_NUM_THREADS": "1"}))  # as every command sets it (see cli)
        for name, (_, command) in picked.items():
            for version in sorted(versions, reverse=bool(round % 2)):  # neither always first
                _remove(out)
                runs.setdefault((name, version), []).append(timed(cli(*command),
                                                                  versions[version]))
        print(f"  round {round + 1} of {args.repeat} done", file=sys.stderr, flush=True)
    best = {key: (min(w for w, _ in done), min(c for _, c in done)) for key, done in runs.items()}
    rows = []
    for name, (label, _) in picked.items():
        (wall0, cpu0), (wall1, cpu1) = best[name, "before"], best[name, "after"]
        paired = [b[0] - a[0] for b, a in zip(runs[name, "before"], runs[name, "after"])]
        rows.append({"command": label, "before s": f"{wall0:.3f}", "after s": f"{wall1:.3f}",
                     "saved ms": f"{(wall0 - wall1) * 1000:.0f}",
                     "saved ms (paired med)": f"{statistics.median(paired) * 1000:.0f}",
                     "before CPU s": f"{cpu0:.3f}", "after CPU s": f"{cpu1:.3f}",
                     "saved CPU ms": f"{(cpu0 - cpu1) * 1000:.0f}"})
    print(f"fastest of {args.repeat} (wall and CPU each; paired med: the median over rounds "
          "of before - after, each pair run back to back); "
          + ", ".join(f"{label} {best[label, ''][0]:.3f} s (CPU {best[label, ''][1]:.3f} s)"
                      for label in floors))
    print(table(rows))
    _remove(out)


if __name__ == "__main__":
    main()

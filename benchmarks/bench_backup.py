"""Full backup and restore of a large file against ``cp`` of the same file, in one run.

    python benchmarks/bench_backup.py --size-mib 1024 [--repeat 3] [--dir /tmp] [--json out.json]

Two fair comparisons, each as a speed ratio to cp:

- *durable*: our backup/restore (which fsync before the rename, as a backup must)
  against ``cp`` followed by ``sync FILE`` (fsync of the copy);
- *page cache*: ours with ``BLOCKFORENSICS_FSYNC=0`` against plain ``cp``.

Dirty pages are flushed before every run, and the source is read once first so
every contender finds it in the page cache.  Every step runs ``--repeat`` times,
taking turns with the others, each time into a new output; the fastest run
counts (the machine is shared and its disk noisy).
Peak RSS is each process's own (GNU time); the target is under 256 MiB even for
a 4 GiB source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import Run, Step, cli, fastest, options, random_file, table

NO_FSYNC = {"BLOCKFORENSICS_FSYNC": "0"}


def _row(run: Run, size: int, reference: Run | None) -> dict[str, object]:
    """A table row: time, rate and peak RSS, and the speed ratio to the reference (if any)."""
    return {"step": run.label, "seconds": round(run.seconds, 2), "MB/s": round(run.rate(size)),
            "peak RSS MiB": round(run.peak_rss_mib),
            "vs": reference.label if reference else "",
            "ratio": round(reference.seconds / run.seconds, 2) if reference else ""}


def main() -> None:
    args = options(__doc__, 1024)
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="bf-bench-", dir=args.dir))
    try:
        source = random_file(work / "source.raw", size)
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)
        copy = work / "copy.raw"
        steps = [Step("cp", ["cp", str(source), str(copy)],
                      lambda: copy.unlink(missing_ok=True)),
                 Step("cp + sync", ["sh", "-c", f"cp '{source}' '{copy}' && sync '{copy}'"],
                      lambda: copy.unlink(missing_ok=True))]
        versus, outputs = {}, {}  # our step -> its reference; mode -> restored file
        for mode, env, reference in (("durable", None, "cp + sync"),
                                     ("page cache", NO_FSYNC, "cp")):
            chain = work / f"chain-{mode.replace(' ', '-')}"
            out = outputs[mode] = work / f"restored-{mode.replace(' ', '-')}.raw"
            steps += [Step(f"backup, {mode}", cli("backup", source, chain, "--all-blocks"),
                           lambda chain=chain: shutil.rmtree(chain, ignore_errors=True), env),
                      Step(f"restore, {mode}", cli("restore", chain, out),
                           lambda out=out: out.unlink(missing_ok=True), env)]
            versus[f"backup, {mode}"] = versus[f"restore, {mode}"] = reference
        best = fastest(steps, args.repeat)
        for mode, out in outputs.items():
            if out.stat().st_size != size or subprocess.run(["cmp", "-s", source, out]).returncode:
                raise SystemExit(f"restore ({mode}) differs from the source")
        rows = [_row(run, size, best[versus[label]] if label in versus else None)
                for label, run in best.items()]
        print(f"source: {args.size_mib} MiB of random bytes; every restore equals the source")
        print(table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({"size_mib": args.size_mib, "runs": rows},
                                                  indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

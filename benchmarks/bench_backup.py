"""Full backup and restore of a large file against ``cp`` of the same file, in one run.

    python benchmarks/bench_backup.py --size-mib 1024 [--repeat 3] [--dir /tmp] [--json out.json]

Two fair comparisons, each as a speed ratio to cp:

- *durable*: our backup/restore (which fsync before the rename, as a backup must)
  against ``cp`` followed by ``sync FILE`` (fsync of the copy);
- *page cache*: ours with ``BLOCKFORENSICS_FSYNC=0`` against plain ``cp``.

Dirty pages are flushed before every run, and the source is read once first so
every contender finds it in the page cache.  Each step runs ``--repeat`` times,
each time into a new output, and the fastest run counts (the machine is shared).
Peak RSS is each process's own (GNU time); the target is under 256 MiB even for
a 4 GiB source.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import cli, random_file, table, timed

NO_FSYNC = {"BLOCKFORENSICS_FSYNC": "0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--repeat", type=int, default=3, help="runs per step; the fastest counts")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="bf-bench-", dir=args.dir))
    try:
        source = random_file(work / "source.raw", size)
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)
        copy = work / "copy.raw"
        fresh_copy = lambda: copy.unlink(missing_ok=True)  # noqa: E731
        cp = timed("cp", ["cp", str(source), str(copy)], args.repeat, fresh_copy)
        cp_sync = timed("cp + sync", ["sh", "-c", f"cp '{source}' '{copy}' && sync '{copy}'"],
                        args.repeat, fresh_copy)
        copy.unlink()
        runs = {}
        for mode, env, reference in (("durable", None, cp_sync), ("page cache", NO_FSYNC, cp)):
            chain = work / f"chain-{mode.replace(' ', '-')}"
            out = work / f"restored-{mode.replace(' ', '-')}.raw"
            runs[mode] = [
                (timed(f"backup, {mode}", cli("backup", source, chain, "--all-blocks"),
                       args.repeat, lambda chain=chain: shutil.rmtree(chain, ignore_errors=True),
                       env), reference),
                (timed(f"restore, {mode}", cli("restore", chain, out), args.repeat,
                       lambda out=out: out.unlink(missing_ok=True), env), reference),
            ]
            if out.stat().st_size != size or subprocess.run(["cmp", "-s", source, out]).returncode:
                raise SystemExit(f"restore ({mode}) differs from the source")
            out.unlink()
        rows = [{"step": r.label, "seconds": round(r.seconds, 2), "MB/s": round(r.rate(size)),
                 "peak RSS MiB": round(r.peak_rss_mib), "vs": ref.label,
                 "ratio": round(ref.seconds / r.seconds, 2)}
                for pairs in runs.values() for r, ref in pairs]
        rows += [{"step": ref.label, "seconds": round(ref.seconds, 2),
                  "MB/s": round(ref.rate(size)), "peak RSS MiB": round(ref.peak_rss_mib),
                  "vs": "", "ratio": ""} for ref in (cp, cp_sync)]
        print(f"source: {args.size_mib} MiB of random bytes; every restore equals the source")
        print(table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({"size_mib": args.size_mib, "runs": rows},
                                                  indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

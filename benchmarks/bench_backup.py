"""Full backup and restore of a large file against ``cp`` of the same file, in one run.

    python benchmarks/bench_backup.py --size-mib 1024 [--dir /tmp] [--json out.json]

Reports MB/s, the ratio to cp (target: >= 0.5 for backup and restore) and the
peak RSS of each process (target: < 256 MiB for a 4 GiB source).  The page cache
is warm for every contender alike: the source is read once before timing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import cli, measure, random_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="bf-bench-", dir=args.dir))
    try:
        source = random_file(work / "source.raw", size)
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        cp = measure("cp", ["cp", str(source), str(work / "copy.raw")])
        (work / "copy.raw").unlink()
        full = measure("backup (full)", cli("backup", source, work / "chain", "--all-blocks"))
        restore = measure("restore", cli("restore", work / "chain", work / "restored.raw"))
        ok = (work / "restored.raw").stat().st_size == size
        rows = []
        for run in (cp, full, restore):
            rows.append({"step": run.label, "seconds": round(run.seconds, 3),
                         "MB/s": round(run.rate(size), 1),
                         "ratio_to_cp": round(cp.seconds / run.seconds, 2),
                         "peak_rss_mib": round(run.peak_rss_mib, 1)})
        print(f"source: {args.size_mib} MiB of random bytes; restored size ok: {ok}")
        print(f"{'step':16} {'seconds':>8} {'MB/s':>8} {'x cp':>6} {'peak RSS MiB':>13}")
        for r in rows:
            print(f"{r['step']:16} {r['seconds']:8.2f} {r['MB/s']:8.1f} "
                  f"{r['ratio_to_cp']:6.2f} {r['peak_rss_mib']:13.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"size_mib": args.size_mib, "runs": rows},
                                                  indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

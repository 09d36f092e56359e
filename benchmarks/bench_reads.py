"""What checking every block costs a restore: checked against unchecked, in one run.

    python benchmarks/bench_reads.py --size-mib 1024 [--repeat 5] [--dir /tmp] [--json out.json]

A plain chain (a full and an incremental of 1/8 of the blocks, so the restore
reads from two images) of random data is restored twice per round, taking
turns: with every block checked against its stored digest (what every command
does), and with the digests skipped (``restore(..., check=False)``, which
exists only for this measurement).  Both page-cache (``BLOCKFORENSICS_FSYNC=0``,
where the hashing shows most) and durable.  Each run deletes its previous
output first; the fastest and the median of ``--repeat`` runs are reported,
and the cost as checked / unchecked - 1 (the goal: under 10 %).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Step, cli, fastest, options, random_file, table

NO_FSYNC = {"BLOCKFORENSICS_FSYNC": "0"}
RESTORE = ("import sys; from blockforensics.image.backup import restore;"
           "from blockforensics.image.chain import Chain;"
           "restore(Chain.open(sys.argv[1]), -1, sys.argv[2], check=sys.argv[3] == 'checked')")


def _incremental_source(source: Path, work: Path) -> Path:
    """The source with every 8th MiB rewritten (a second point to read through)."""
    changed = work / "changed.raw"
    shutil.copyfile(source, changed)
    size = source.stat().st_size
    with source.open("rb") as fh:
        rewritten = fh.read(1 << 20)[::-1]
    with changed.open("r+b") as fh:
        for offset in range(0, size, 8 << 20):
            fh.seek(offset)
            fh.write(rewritten)
    return changed


def main() -> None:
    args = options(__doc__, 1024)
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="bf-bench-reads-", dir=args.dir))
    try:
        source = random_file(work / "source.raw", size)
        chain = work / "chain"
        for path in (source, _incremental_source(source, work)):
            subprocess.run(cli("backup", path, chain, "--all-blocks"), check=True,
                           capture_output=True)
        out = work / "restored.raw"
        steps = [Step(f"{mode}, {durability}",
                      [sys.executable, "-c", RESTORE, str(chain), str(out), mode],
                      lambda: out.unlink(missing_ok=True), env)
                 for durability, env in (("page cache", NO_FSYNC), ("durable", None))
                 for mode in ("checked", "unchecked")]
        best = fastest(steps, args.repeat)
        expected = work / "changed.raw"
        if subprocess.run(["cmp", "-s", expected, out]).returncode:
            raise SystemExit("the restore differs from the source")
        rows = []
        for durability in ("page cache", "durable"):
            checked, unchecked = best[f"checked, {durability}"], best[f"unchecked, {durability}"]
            rows.append({
                "mode": durability,
                "checked s (median)": f"{checked.seconds:.2f} ({checked.median_seconds:.2f})",
                "unchecked s (median)":
                    f"{unchecked.seconds:.2f} ({unchecked.median_seconds:.2f})",
                "cost, fastest": f"{checked.seconds / unchecked.seconds - 1:+.1%}",
                "cost, median": f"{checked.median_seconds / unchecked.median_seconds - 1:+.1%}",
                "checked MB/s": round(checked.rate(size)),
                "peak RSS MiB": round(checked.peak_rss_mib)})
        print(f"restore of {args.size_mib} MiB (2 points) of random data; "
              "the restore equals the source")
        print(table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({"size_mib": args.size_mib, "rows": rows},
                                                  indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

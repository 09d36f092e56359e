"""What checking every block costs a restore: checked against unchecked, in one run.

    python benchmarks/bench_reads.py --size-mib 1024 [--repeat 5] [--dir /tmp] [--json out.json]

A plain chain (a full and an incremental of 1/8 of the blocks, so the restore
reads from two images) of random data is restored twice per round, taking
turns: with every block checked against its stored digest (what every command
does), and with the digests skipped (``restore(..., check=False)``, which
exists only for this measurement).  Both page-cache (``BLOCKFORENSICS_FSYNC=0``,
where the hashing shows most) and durable.  Each run deletes its previous
output first; the fastest and the median of ``--repeat`` runs are reported,
and the cost as checked / unchecked - 1 (the goal: under 10 %).  Besides the
whole process (what a user waits for), each run reports the ``restore`` call
alone (without the interpreter's start-up and imports) and the process's CPU
seconds (user + system, every thread): the hashing's CPU cost, which a second
core can hide only while it is free.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Step, cli, fastest, options, random_file, table

NO_FSYNC = {"BLOCKFORENSICS_FSYNC": "0"}
#: a restore that appends ``{"label", "call_s", "cpu_s"}`` to the JSON lines file argv[4]
RESTORE = """
import json, resource, sys, time
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
start = time.perf_counter()
restore(Chain.open(sys.argv[1]), -1, sys.argv[2], check=sys.argv[3].startswith("checked"))
call = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
with open(sys.argv[4], "a") as fh:
    fh.write(json.dumps({"label": sys.argv[3], "call_s": call,
                         "cpu_s": usage.ru_utime + usage.ru_stime}) + "\\n")
"""


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


def _fastest_and_median(records: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = [record[key] for record in records]
    return min(values), statistics.median(values)


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
        out, calls = work / "restored.raw", work / "calls.jsonl"
        steps = [Step(f"{mode}, {durability}",
                      [sys.executable, "-c", RESTORE, str(chain), str(out),
                       f"{mode}, {durability}", str(calls)],
                      lambda: out.unlink(missing_ok=True), env)
                 for durability, env in (("page cache", NO_FSYNC), ("durable", None))
                 for mode in ("checked", "unchecked")]
        best = fastest(steps, args.repeat)
        inside: dict[str, list[dict[str, float]]] = {step.label: [] for step in steps}
        for line in calls.read_text().splitlines():
            record = json.loads(line)
            inside[record["label"]].append(record)
        expected = work / "changed.raw"
        if subprocess.run(["cmp", "-s", expected, out]).returncode:
            raise SystemExit("the restore differs from the source")
        rows = []
        for durability in ("page cache", "durable"):
            checked, unchecked = best[f"checked, {durability}"], best[f"unchecked, {durability}"]
            call = {mode: _fastest_and_median(inside[f"{mode}, {durability}"], "call_s")
                    for mode in ("checked", "unchecked")}
            cpu = {mode: _fastest_and_median(inside[f"{mode}, {durability}"], "cpu_s")[1]
                   for mode in ("checked", "unchecked")}
            rows.append({
                "mode": durability,
                "checked s (median)": f"{checked.seconds:.2f} ({checked.median_seconds:.2f})",
                "unchecked s (median)":
                    f"{unchecked.seconds:.2f} ({unchecked.median_seconds:.2f})",
                "cost, fastest": f"{checked.seconds / unchecked.seconds - 1:+.1%}",
                "cost, median": f"{checked.median_seconds / unchecked.median_seconds - 1:+.1%}",
                "restore call s, checked / unchecked (median)":
                    f"{call['checked'][0]:.2f} / {call['unchecked'][0]:.2f} "
                    f"({call['checked'][1]:.2f} / {call['unchecked'][1]:.2f})",
                "CPU s (median)": f"{cpu['checked']:.2f} / {cpu['unchecked']:.2f}",
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

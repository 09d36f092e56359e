"""Head start on a live disk: time from snapshot to committed point, with and without.

A qemu-storage-daemon serves a raw disk of ``--size-mib`` MiB; tracking starts with a
full point, then ``--dirty-mib`` MiB of random writes arrive (the period's changes);
the incremental is made with the head start (dirty blocks copied from the running
disk before the snapshot, then ``--late-mib`` MiB written, half over blocks already
copied, half new) or without it (the same late writes, then everything from the
snapshot).  Both points are checked equal to their snapshots.  Reported per mode:
blocks tracked, copied ahead, read after the snapshot, seconds ahead and seconds from
snapshot to committed point (fastest of ``--repeat``, median beside it).

Usage: ``python benchmarks/bench_live.py [--size-mib 512] [--dirty-mib 128] [--late-mib 8]``
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table

from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.live.headstart import live_full, live_incremental
from blockforensics.live.ops import LiveDisk
from blockforensics.live.qemu import NODE, StorageDaemon

MIB = 1 << 20


def qemu_io(uri: str, *commands: str) -> None:
    argv = ["qemu-io", "-f", "raw", uri]
    for command in commands:
        argv += ["-c", command]
    subprocess.run(argv, check=True, capture_output=True)


def one_run(work: Path, size: int, dirty: int, late: int, head_start: bool) -> dict[str, object]:
    image = work / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(size)
    with StorageDaemon(image, work / "qsd") as daemon:
        assert daemon.qmp is not None
        live = LiveDisk(daemon.qmp, NODE, daemon.nbd_socket)
        rw = live.export("rw", writable=True).uri()
        chain = Chain.open_or_create(work / "chain")
        live_full(chain, live, work, "b")
        qemu_io(rw, f"write -P 7 0 {dirty}")
        lates = (f"write -P 9 0 {late // 2}", f"write -P 8 {dirty} {late // 2}")
        point = live_incremental(chain, live, work, "b", "b-1", head_start=head_start,
                                 keep_snapshot=work / "snap.raw",
                                 before_snapshot=lambda: qemu_io(rw, *lates))
        restored = restore(chain, point.point, work / "restored.raw")
        same = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                               str(restored), str(work / "snap.raw")], capture_output=True)
        if same.returncode:
            raise SystemExit(f"point != snapshot: {same.stdout!r}")
    return point.to_json()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--dirty-mib", type=int, default=128)
    parser.add_argument("--late-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for head_start in (False, True):
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bf-bench-live-") as work:
                runs.append(one_run(Path(work), args.size_mib * MIB, args.dirty_mib * MIB,
                                    args.late_mib * MIB, head_start))
        after = [float(r["seconds_after_snapshot"]) for r in runs]  # type: ignore[arg-type]
        best = runs[after.index(min(after))]
        rows.append({"mode": "head start" if head_start else "plain",
                     "tracked": best["tracked"], "ahead": best["ahead"], "after": best["after"],
                     "s_ahead": f"{best['seconds_ahead']:.2f}",
                     "s_after_snapshot": f"{best['seconds_after_snapshot']:.2f}",
                     "median_s_after": f"{statistics.median(after):.2f}"})
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

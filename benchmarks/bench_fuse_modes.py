"""The C FUSE server's two modes side by side on real file systems: files opened for
direct I/O (the default where the kernel maps them: no page cache for the served files)
and through the page cache (``mount(..., direct=False)``).

For each file system (ext4, NTFS) a volume of ``--files`` small files is made and backed
up twice by ``bench_investigate.volume`` (a full, an incremental); point 1 is mounted in
each mode in turn, its images in the page cache, and these readers of its ``disk.raw``
run ``--repeat`` times (fastest and median seconds): ``dd bs=4k`` and ``dd bs=4M`` of
the whole file, ``sha256sum``, TSK's ``fls -r -p`` and ``icat`` of five files, each a
first read (page-cache mode: the mount's cache of the file dropped before each run),
then a second ``dd bs=4M`` right after a first one (page-cache mode: from the cache).

    python3 benchmarks/bench_fuse_modes.py [--files 20000] [--fs ext4 ntfs] [--repeat 3]
        [--dir DIR] [--json OUT]
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_investigate import volume
from common import measure, options, table
from exposure import drop_cache, mounted_at, running, warm

MOUNT = ("import sys; from blockforensics.expose import mount;"
         "from blockforensics.image.chain import Chain;"
         "mount(Chain.open(sys.argv[1]).disk(1), sys.argv[2], partitions=False,"
         " direct=sys.argv[3] == 'direct')")


def readers(raw: Path) -> dict[str, list[str]]:
    """The timed readers of ``raw``, by label (``icat``: five files TSK lists)."""
    listing = subprocess.run(["fls", "-r", "-p", "-F", str(raw)], capture_output=True,
                             text=True, check=True).stdout
    inodes = re.findall(r"^r/r (\d+)[-\d]*:\t", listing, re.MULTILINE)  # allocated files
    inodes = inodes[:: max(1, len(inodes) // 5)][:5]
    icat = " && ".join(f"icat {raw} {inode} > /dev/null" for inode in inodes)
    return {"dd bs=4k": ["dd", f"if={raw}", "of=/dev/null", "bs=4k", "status=none"],
            "dd bs=4M": ["dd", f"if={raw}", "of=/dev/null", "bs=4M", "status=none"],
            "sha256sum": ["sha256sum", str(raw)],
            "fls -r -p": ["fls", "-r", "-p", str(raw)],
            "icat of 5 files": ["sh", "-c", icat]}


def race(chain: Path, work: Path, repeat: int) -> list[dict[str, object]]:
    """Every reader of point 1's ``disk.raw`` in both modes: one row per reader."""
    mountpoint = work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    raw = mountpoint / "disk.raw"
    images = sorted(chain.glob("*.bfi"))
    seconds: dict[tuple[str, str], list[float]] = {}
    for mode in ("direct", "page cache"):
        argv = [sys.executable, "-c", MOUNT, str(chain), str(mountpoint), mode.split()[0]]
        with running(argv, raw.exists, f"mount {chain}",
                     lambda: mounted_at(mountpoint) and subprocess.run(
                         ["fusermount3", "-u", "-z", str(mountpoint)], check=False)):
            steps = readers(raw)
            for _ in range(repeat):
                for label, reader in steps.items():
                    warm(*images)
                    drop_cache(raw)
                    seconds.setdefault((label, mode), []).append(measure(label, reader).seconds)
                warm(*images)
                drop_cache(raw)
                measure("first", steps["dd bs=4M"])
                seconds.setdefault(("dd bs=4M, second read", mode), []).append(
                    measure("second", steps["dd bs=4M"]).seconds)
    rows = []
    for label in dict.fromkeys(label for label, _ in seconds):
        direct, cached = seconds[label, "direct"], seconds[label, "page cache"]
        rows.append({"reader": label, "direct s": round(min(direct), 3),
                     "page cache s": round(min(cached), 3),
                     "direct s (med)": round(statistics.median(direct), 3),
                     "page cache s (med)": round(statistics.median(cached), 3),
                     "direct / page cache (med)": round(statistics.median(direct)
                                                        / statistics.median(cached), 2)})
    return rows


def main() -> None:
    args = options(__doc__, 0, lambda p: (p.add_argument("--files", type=int, default=20000),
                                          p.add_argument("--fs", nargs="+",
                                                         default=["ext4", "ntfs"])))
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for fs in args.fs:
            work = Path(tmp) / fs
            work.mkdir()
            _, chain, done = volume(fs, work, args.files)
            rows = race(chain, work, args.repeat)
            results[fs] = rows
            print(f"{fs}: {done}; fastest of {args.repeat} (and medians)")
            print(table(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

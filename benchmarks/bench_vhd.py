"""VHD export against ``qemu-img convert``, and reads of the FUSE-served disk.vhd, in one run.

    python benchmarks/bench_vhd.py --size-mib 512 [--repeat 3] [--dir /tmp] [--json out.json]

The data: ``--size-mib`` MiB of random bytes with a sparse hole in every 16 MiB,
backed up with ``blockforensics backup --all-blocks``.  Measured:

- ``blockforensics export`` of that point to a dynamic VHD against
  ``qemu-img convert -O vpc -o subformat=dynamic`` of the restored raw, like for
  like: qemu-img's default leaves its output in the page cache, so it is matched
  with our export under ``BLOCKFORENSICS_FSYNC=0``; our default export fsyncs, so it
  is matched with the convert followed by ``sync`` of its output, and with
  ``qemu-img convert -t writeback`` (qemu-img's own flushing mode).  Chain images
  and the restored raw are in the page cache for every contender; every run
  writes a new file.
- reading ``MOUNTPOINT/disk.vhd`` (``blockforensics mount``) in 4 MiB chunks,
  with the chain images in the page cache and dropped from it, against reading
  the exported .vhd file after dropping it from the page cache
  (``posix_fadvise(POSIX_FADV_DONTNEED)``), so that it is read from the disk.

Each step runs ``--repeat`` times, taking turns with the others of its group, and
the fastest run counts (the machine is shared and its disk noisy).
MB/s are 10^6 bytes per second of the volume (export) or of the .vhd file (reads);
speed ratios are the reference's time over ours (> 1: ours is faster).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Run, Step, cli, fastest, options, random_file

MiB = 1 << 20
HOLE_EVERY = 16 * MiB  # bytes: one hole per this much data
HOLE_SIZE = 4 * MiB  # bytes, aligned to 2 MiB VHD blocks
READ_CHUNK = 4 * MiB
#: reads a file in READ_CHUNK pieces and throws them away
READER = ("import sys\nwith open(sys.argv[1], 'rb', buffering=0) as f:\n"
          f"    while f.read({READ_CHUNK}):\n        pass\n")


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


def read_fuse(chain: Path, mountpoint: Path, images: list[Path], repeat: int
              ) -> tuple[Run, Run, int]:
    """Read MOUNTPOINT/disk.vhd with the chain warm, then cold; and the file's size."""
    disk_vhd = mountpoint / "disk.vhd"
    proc = subprocess.Popen(cli("mount", chain, mountpoint), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not disk_vhd.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mount failed: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)
        reader = [sys.executable, "-c", READER, str(disk_vhd)]
        hot, cold = fastest([
            Step("read FUSE disk.vhd (chain cached)", reader, lambda: warm(*images)),
            Step("read FUSE disk.vhd (chain dropped)", reader, lambda: drop_cache(*images)),
        ], repeat).values()
        size = disk_vhd.stat().st_size
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return hot, cold, size


def main() -> None:
    args = options(__doc__, 512)
    os.environ.pop("BLOCKFORENSICS_FSYNC", None)  # our writer fsyncs, as in production
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="bf-bench-vhd-", dir=args.dir))
    try:
        source = random_file(work / "source.raw", size)
        holes = punch_holes(source)
        chain, restored = work / "chain", work / "restored.raw"
        for argv in (cli("backup", source, chain, "--all-blocks"), cli("restore", chain, restored)):
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        images = sorted(chain.glob("*.bfi"))
        warm(*images, restored)  # and warm they stay for the exports

        ours_vhd, qemu_vhd = work / "ours.vhd", work / "qemu.vhd"
        fresh = {vhd: (lambda vhd=vhd: vhd.unlink(missing_ok=True)) for vhd in (ours_vhd, qemu_vhd)}
        export = cli("export", chain, ours_vhd)
        convert = ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic"]
        exports = fastest([
            Step("blockforensics export", export, fresh[ours_vhd]),
            Step("blockforensics export, no fsync", export, fresh[ours_vhd],
                 {"BLOCKFORENSICS_FSYNC": "0"}),
            Step("qemu-img convert", [*convert, str(restored), str(qemu_vhd)], fresh[qemu_vhd]),
            Step("qemu-img convert + sync", ["sh", "-c", '"$@" && sync "$0"', str(qemu_vhd),
                                             *convert, str(restored), str(qemu_vhd)],
                 fresh[qemu_vhd]),
            Step("qemu-img convert -t writeback",
                 [*convert, "-t", "writeback", str(restored), str(qemu_vhd)], fresh[qemu_vhd]),
        ], args.repeat)
        ours, ours_cached, qemu, qemu_sync, qemu_flush = exports.values()
        exact = identical(restored, ours_vhd)

        mountpoint = work / "mnt"
        mountpoint.mkdir()
        fuse_hot, fuse_cold, vhd_size = read_fuse(chain, mountpoint, images, args.repeat)
        (file_read,) = fastest([Step("read .vhd file (dropped)",
                                     [sys.executable, "-c", READER, str(ours_vhd)],
                                     lambda: drop_cache(ours_vhd))], args.repeat).values()

        rows = [{"step": run.label, "seconds": round(run.seconds, 3),
                 "MB/s": round(run.rate(nbytes), 1)}
                for run, nbytes in ((ours, size), (ours_cached, size), (qemu, size),
                                    (qemu_sync, size), (qemu_flush, size),
                                    (file_read, vhd_size), (fuse_hot, vhd_size),
                                    (fuse_cold, vhd_size))]
        ratios = {f"{a.label} / {b.label}": round(b.seconds / a.seconds, 2)
                  for a, b in ((ours_cached, qemu), (ours, qemu_sync), (ours, qemu_flush),
                               (fuse_hot, file_read), (fuse_cold, file_read))}
        print(f"source: {args.size_mib} MiB random, {holes // MiB} MiB of it holes; "
              f"backed up --all-blocks; export identical to the restored raw: {exact}")
        print(f"exported .vhd: {ours_vhd.stat().st_size} bytes (qemu-img's: "
              f"{qemu_vhd.stat().st_size}); disk.vhd over FUSE: {vhd_size} bytes")
        print(f"{'step':36} {'seconds':>8} {'MB/s':>8}")
        for r in rows:
            print(f"{r['step']:36} {r['seconds']:8.2f} {r['MB/s']:8.1f}")
        print("speed ratios (> 1: the first is faster); the .vhd file was dropped from the "
              "page cache (POSIX_FADV_DONTNEED) before it was read:")
        for name, ratio in ratios.items():
            print(f"  {name:76} {ratio:5.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"size_mib": args.size_mib, "holes_mib": holes // MiB, "identical": exact,
                 "runs": rows, "speed_ratios": ratios}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Investigation commands on volumes of many files, beside The Sleuth Kit listing them.

For each file system (ext4, NTFS, XFS, Btrfs, FAT32, exFAT) a volume of ``--files``
small files in directories of 1 000 is made with the real tools (mkfs, then a mounted
loop device, ntfs-3g or exfat-fuse, filled by this process; FAT32 by mtools, as no vfat
driver is loaded here) and backed up twice: a full, then an incremental after 2 % of
the files were appended to, 1 % deleted and one directory renamed.  Then, one run each,
wall seconds and peak RSS of ``diff 0 1 --files --json``, ``timeline`` (table),
``timeline --format bodyfile``, ``triage --json`` and ``extract`` of one file, beside
TSK's ``fls -r -p`` and ``fls -r -m /`` of the volume at the incremental (where TSK
4.11 reads it: not XFS nor Btrfs; one listing;
our diff lists two points and reads every changed file, the full's every file for
timeline and triage).  Ratios: TSK's seconds / ours.

    python3 benchmarks/bench_investigate.py [--files 100000] [--fs ext4 ntfs ...]
        [--dir DIR] [--json OUT]
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Run, cli, measure, options, table

PER_DIR = 1000
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F", "-b", "4096"], "xfs": ["mkfs.xfs", "-q", "-f"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"], "ntfs": ["mkfs.ntfs", "-q", "-F", "-f"],
        "exfat": ["mkfs.exfat"], "fat32": ["mkfs.fat", "-F", "32"]}


def _content(i: int) -> bytes:
    """File ``i``'s bytes: 8 to 500 of text (most file-system volumes are small files)."""
    return b"file %d\n" % i * (1 + i % 50)


def _fill(root: Path, n_files: int) -> list[Path]:
    """``n_files`` files under ``root`` in directories of :data:`PER_DIR`; their paths."""
    paths = []
    for i in range(n_files):
        folder = root / f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            folder.mkdir()
        path = folder / f"f{i:06d}.txt"
        path.write_bytes(_content(i))
        paths.append(path)
    return paths


def _change(root: Path, paths: list[Path]) -> tuple[list[Path], list[Path], Path]:
    """2 % of the files appended to, 1 % deleted, then the last directory renamed:
    the files appended to and deleted (their paths before the rename), the directory."""
    picked = random.Random(1).sample(paths, len(paths) * 3 // 100)
    modified, deleted = picked[: len(paths) // 50], picked[len(paths) // 50:]
    for path in modified:
        with path.open("ab") as fh:
            fh.write(b"changed\n")
    for path in deleted:
        path.unlink()
    last = sorted(root.glob("d*"))[-1]
    last.rename(root / f"renamed-{last.name}")
    return modified, deleted, last


@contextlib.contextmanager
def _mounted(fs: str, image: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    if fs == "ntfs":
        subprocess.run(["ntfs-3g", str(image), str(mountpoint)], check=True)
        device = None
    else:
        device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        mount = ["mount.exfat-fuse"] if fs == "exfat" else ["mount"]
        subprocess.run([*mount, device, str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
        if device:
            subprocess.run(["losetup", "-d", device], check=True)


def _mtools_volume(image: Path, work: Path, n_files: int) -> Callable[[], dict[str, int]]:
    """FAT32 filled by mtools from a tree (``mcopy -s``); returns the change step, done
    with mtools too (``mcopy -o`` of the appended files, ``mdel``, ``mren``)."""
    tree = work / "tree"
    tree.mkdir()
    paths = _fill(tree, n_files)
    subprocess.run(["mcopy", "-s", "-i", str(image), *map(str, sorted(tree.iterdir())),
                    "::/"], check=True)

    def change() -> dict[str, int]:
        modified, deleted, last = _change(tree, paths)
        inside = {p: "::/" + str(p.relative_to(tree)) for p in paths}
        for start in range(0, len(deleted), 500):
            subprocess.run(["mdel", "-i", str(image), *(inside[p] for p in
                                                        deleted[start:start + 500])],
                           check=True)
        renamed = tree / f"renamed-{last.name}"
        for path in modified:
            now = renamed / path.name if path.parent == last else path
            subprocess.run(["mcopy", "-o", "-i", str(image), str(now), inside[path]],
                           check=True)
        subprocess.run(["mren", "-i", str(image), f"::/{last.name}", f"::/{renamed.name}"],
                       check=True)
        return {"modified": len(modified), "deleted": len(deleted)}

    return change


def volume(fs: str, work: Path, n_files: int) -> tuple[Path, Path, dict[str, object]]:
    """The image and chain of ``fs`` (full and incremental made) and what was done."""
    image, chain = work / f"{fs}.img", work / f"{fs}-chain"
    with image.open("wb") as fh:
        fh.truncate((512 << 20) + n_files * (12 << 10))  # sparse; XFS wants 300 MiB
    subprocess.run([*MKFS[fs], str(image)], check=True, capture_output=True)
    backup = cli("backup", image, chain)
    if fs == "fat32":
        change = _mtools_volume(image, work, n_files)
        subprocess.run(backup, check=True, capture_output=True)
        counts = change()
    else:
        with _mounted(fs, image, work / "mnt") as root:
            paths = _fill(root, n_files)
        subprocess.run(backup, check=True, capture_output=True)
        with _mounted(fs, image, work / "mnt") as root:
            modified, deleted, _ = _change(root, paths)
        counts = {"modified": len(modified), "deleted": len(deleted)}
    subprocess.run(backup, check=True, capture_output=True)
    return image, chain, {"files": n_files, **counts}


def commands(image: Path, chain: Path, work: Path) -> list[Run]:
    """Ours and TSK's runs on one volume."""
    body = work / "body"
    runs = []
    # TSK 4.11's fsstat spins on an exFAT volume made by mkfs.exfat 1.2: probe with a
    # listing of the root, bounded
    probe = subprocess.run(["timeout", "30", "fls", str(image)], capture_output=True)
    if probe.returncode == 0:
        runs += [measure("fls -r -p", ["fls", "-r", "-p", str(image)]),  # TSK reads it
                 measure("fls -r -m /", ["fls", "-r", "-m", "/", str(image)])]
    runs += [measure("diff 0 1 --files --json", cli("diff", chain, "0", "1", "--files",
                                                    "--json")),
             measure("timeline", cli("timeline", chain))]
    runs.append(measure("timeline --format bodyfile",
                        cli("timeline", chain, "--format", "bodyfile", "-o", body)))
    body.unlink()
    runs.append(measure("triage --json", cli("triage", chain, "--json")))
    runs.append(measure("extract", cli("extract", chain, "1", "/d0000/f000001.txt",
                                       work / "extracted")))
    (work / "extracted").unlink()
    return runs


def main() -> None:
    args = options(__doc__, 0, lambda p: (
        p.add_argument("--files", type=int, default=100_000, help="files per volume"),
        p.add_argument("--fs", nargs="+", default=list(MKFS), choices=list(MKFS))))
    rows: list[dict[str, object]] = []
    for fs in args.fs:
        work = args.dir / f"bench-investigate-{fs}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            image, chain, made = volume(fs, work, args.files)
            print(f"{fs}: {made}", file=sys.stderr, flush=True)
            runs = commands(image, chain, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        fls_m = next((run.seconds for run in runs if run.label == "fls -r -m /"), None)
        for run in runs:
            rows.append({"fs": fs, "files": args.files, "command": run.label,
                         "seconds": round(run.seconds, 2),
                         "fls -m s / ours": "" if run.label.startswith("fls") or not fls_m
                         else round(fls_m / run.seconds, 3),
                         "peak RSS MiB": round(run.peak_rss_mib),
                         "CPU s": round(run.cpu_seconds, 2)})
        print(table(rows[-len(runs):]), file=sys.stderr, flush=True)
    print(f"volumes of {args.files} files in directories of {PER_DIR}; full, then 2 % "
          "appended to, 1 % deleted, a directory renamed; one run each")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()

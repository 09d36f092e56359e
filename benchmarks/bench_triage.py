"""How long ``blockforensics triage`` takes: on the ransomware sample, and on a large ext4
volume (default 1 GiB) with two backups — a full of a populated volume, then an
incremental in which some documents were encrypted in place and photos added.

The volume is filled by ``mkfs.ext4 -d`` from a directory of seeded files (text,
JPEGs of random stuffed scan data, gzip), so no mount is needed for the full; the second
day's edits rewrite files' own blocks found with ``debugfs blocks``.

    python benchmarks/bench_triage.py --size-mib 1024 [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blockforensics.datasets.ransomware import _jpeg, build_ransomware


def _populate(root: Path, nbytes: int, rng: np.random.Generator) -> list[Path]:
    """Seeded files totalling about ``nbytes``: 60 % text, 30 % JPEG, 10 % gzip."""
    words = np.array([b"invoice", b"quarter", b"budget", b"meeting", b"report", b"audit"])
    written, files, i = 0, [], 0
    while written < nbytes:
        kind = ("txt", "txt", "txt", "txt", "txt", "txt", "jpg", "jpg", "jpg", "gz")[i % 10]
        size = int(rng.integers(64 << 10, 4 << 20))
        folder = root / f"d{i % 40:02d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"f{i:05d}.{kind}"
        if kind == "txt":
            data = b" ".join(rng.choice(words, size // 7 + 1))[:size]
        elif kind == "jpg":
            data = _jpeg(rng, size)
        else:
            data = gzip.compress(b" ".join(rng.choice(words, size // 7 + 1))[:size], 1)
        path.write_bytes(data)
        files.append(path)
        written += len(data)
        i += 1
    return files


def _encrypt_in_place(image: Path, paths: list[str], rng: np.random.Generator) -> None:
    for path in paths:
        blocks = subprocess.run(["debugfs", "-R", f"blocks {path}", str(image)],
                                capture_output=True, text=True, check=True).stdout.split()
        with image.open("r+b") as fh:
            for block in blocks:
                fh.seek(int(block) * 4096)
                fh.write(rng.bytes(4096))


def _triage(chain: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "triage", str(chain),
                           "--json"], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", help="scratch directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-triage-"))
    rng = np.random.default_rng(7)
    results: dict[str, object] = {}
    try:
        sample = build_ransomware(scratch / "sample")
        seconds, doc = _triage(sample.chain_dir)
        results["sample"] = {"seconds": round(seconds, 2), "points": len(doc["points"]),
                             "last_clean_point": doc["last_clean_point"]}

        tree, image, chain = scratch / "tree", scratch / "volume.img", scratch / "chain"
        tree.mkdir()
        files = _populate(tree, int(args.size_mib * 0.6) << 20, rng)
        with image.open("wb") as fh:
            fh.truncate(args.size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", "-d",
                        str(tree), str(image)], check=True)
        cli = [sys.executable, "-m", "blockforensics.cli"]
        subprocess.run([*cli, "backup", str(image), str(chain)], check=True,
                       capture_output=True)
        texts = [f for f in files if f.suffix == ".txt"][:40]
        _encrypt_in_place(image, ["/" + str(f.relative_to(tree)) for f in texts], rng)
        subprocess.run([*cli, "backup", str(image), str(chain)], check=True,
                       capture_output=True)
        seconds, doc = _triage(chain)
        flagged = {f["path"] for p in doc["points"] for f in p["files"]
                   if f["suspected_encryption"]}
        encrypted = doc["points"][1]["metrics"]["suspected_files"]
        results["volume"] = {
            "size_mib": args.size_mib, "files": len(files),
            "data_mib": round(sum(f.stat().st_size for f in files) / 2**20),
            "seconds": round(seconds, 2),
            "verdicts": [p["verdict"] for p in doc["points"]],
            "encrypted_in_place": len(texts), "suspected": encrypted,
            "listed_suspected": len(flagged)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for name, values in results.items():
            print(name, values)


if __name__ == "__main__":
    main()

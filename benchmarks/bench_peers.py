"""blockforensics against the peers people compare it with, on one realistic ext4 image.

    python benchmarks/bench_peers.py --size-mib 1024 [--repeat 3] [--dir /tmp] [--json out.json]

The source is an ext4 image built with ``mkfs.ext4 -d`` (no mount): text and
source code, shared libraries, random "media", an all-zero file, and the
remnants of deleted files (written, then removed with debugfs), about 60 %
allocated.  Every contender backs up that same image file:

- ``cp`` + ``sync`` and partclone (which, like us, copies the allocated blocks);
- borg (``--compression none`` / ``lz4``, ``repokey`` encryption) and restic
  (always encrypted), which back the image up as a file.

The table gives, per operation, our time and peak RSS, each peer's, and the
ratio *peer's time / ours* (above 1: we are faster), plus stored sizes.  The
steps take turns, each run into a fresh output; the median of ``--repeat``
runs counts.  Install the peers with ``apt-get install restic borgbackup
partclone`` (``scripts/setup.sh`` does not: the benchmarks are not run in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import Run, Step, cli, measure, options, settle, table

PASSPHRASE = "benchmark passphrase"
PEER_ENV = {"BORG_PASSPHRASE": PASSPHRASE, "RESTIC_PASSWORD": PASSPHRASE,
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes", "RESTIC_CACHE_DIR": "",
            "BORG_BASE_DIR": ""}  # filled in per run (inside the scratch directory)


def realistic_tree(root: Path, size: int, seed: int = 7) -> None:
    """Files for the image: ~20 % text, ~20 % libraries, ~15 % random media, ~5 % zeros
    (of ``size`` bytes of volume), taken from this machine and a seeded generator."""
    rng = np.random.default_rng(seed)
    budget = {"text": size // 5, "lib": size // 5}
    sources = {"text": [Path("/usr/share/doc"), Path(os.__file__).parent],
               "lib": [Path("/usr/lib/x86_64-linux-gnu")]}
    suffixes = {"text": {".py", ".txt", ".html", ".md", ".rst", ".c", ".h", ""},
                "lib": {".so", ".a"}}
    for kind, left in budget.items():
        target = root / kind
        for base in sources[kind]:
            for path in sorted(base.rglob("*")):
                if left <= 0:
                    break
                if not path.is_file() or path.is_symlink() or \
                        (path.suffix not in suffixes[kind] and ".so." not in path.name):
                    continue
                dest = target / path.relative_to(base.parent)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                left -= path.stat().st_size
    media = root / "media"
    media.mkdir()
    for i in range(16):
        (media / f"clip{i:02d}.mp4").write_bytes(
            rng.integers(0, 256, size * 15 // 100 // 16, dtype=np.uint8).tobytes())
    (root / "zeros.bin").write_bytes(bytes(size // 20))


def build_image(path: Path, size: int) -> None:
    """The realistic ext4 image, plus deleted-file remnants (random bytes left in freed
    blocks, as a real disk has)."""
    tree = path.parent / "tree"
    realistic_tree(tree, size)
    (tree / "deleted").mkdir()
    rng = np.random.default_rng(11)
    for i in range(8):
        (tree / "deleted" / f"old{i}.bin").write_bytes(
            rng.integers(0, 256, size // 80, dtype=np.uint8).tobytes())
    with path.open("wb") as fh:
        fh.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    for i in range(8):
        subprocess.run(["debugfs", "-w", "-R", f"rm /deleted/old{i}.bin", str(path)],
                       check=True, capture_output=True)
    shutil.rmtree(tree)


def change_one_percent(source: Path, out: Path, seed: int = 5) -> Path:
    """A copy of ``source`` with 1 % of its 4 KiB blocks overwritten (random places)."""
    shutil.copyfile(source, out)
    n_blocks = source.stat().st_size // 4096
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(n_blocks, n_blocks // 100, replace=False))
    with out.open("r+b") as fh:
        for p in positions.tolist():
            fh.seek(p * 4096)
            fh.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    np.savez(out.with_suffix(".npz"), positions=positions)
    return out


def du(path: Path) -> int:
    """Bytes stored under ``path`` (apparent sizes of its files)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def medians(steps: list[Step], repeat: int) -> dict[str, Run]:
    """Every step ``repeat`` times, taking turns; the run with the median time counts."""
    runs: dict[str, list[Run]] = {step.label: [] for step in steps}
    for _ in range(repeat):
        for step in steps:
            if step.before is not None:
                step.before()
            runs[step.label].append(measure(step.label, step.argv, step.env))
    return {label: sorted(done, key=lambda r: r.seconds)[len(done) // 2]
            for label, done in runs.items()}


def consolidations(c: dict[str, Path], changed: Path, key: Path,
                   env: dict[str, str]) -> list[Step]:
    """Steps that merge a full and a 1 % incremental into one, from saved two-point
    repositories: ours (plain, encrypted), borg prune + compact, restic forget --prune."""
    full_env = {**os.environ, **env}
    two = {}
    for name, argv in (("plain", cli("backup", changed, c["plain"])),
                       ("enc", cli("backup", changed, c["enc"], "--key-file", key)),
                       ("borg-none", ["borg", "create", f"{c['borg-none']}::b2", str(changed)]),
                       ("restic", ["restic", "-q", "--repo", str(c["restic"]), "backup",
                                   str(changed)])):
        subprocess.run(argv, check=True, env=full_env, capture_output=True)
        two[name] = c[name].with_name(c[name].name + ".two")
        shutil.rmtree(two[name], ignore_errors=True)
        shutil.copytree(c[name], two[name])

    def reset(name: str):
        def run() -> None:
            shutil.rmtree(c[name], ignore_errors=True)
            shutil.copytree(two[name], c[name])
        return run

    borg = c["borg-none"]
    return [
        Step("ours: consolidate, plain", cli("consolidate", c["plain"], "--point", 1),
             reset("plain")),
        Step("borg: prune + compact", ["sh", "-c", f"borg prune --keep-last 1 '{borg}' && "
                                       f"borg compact '{borg}'"], reset("borg-none"), env),
        Step("ours: consolidate, encrypted", cli("consolidate", c["enc"], "--point", 1),
             reset("enc")),
        Step("restic: forget --prune", ["restic", "-q", "--repo", str(c["restic"]), "forget",
                                        "--keep-last", "1", "--prune"], reset("restic"), env),
    ]


def main() -> None:
    args = options(__doc__, 1024)
    size = args.size_mib << 20
    for tool in ("restic", "borg", "partclone.ext4", "mkfs.ext4", "debugfs"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: apt-get install restic borgbackup partclone "
                             "e2fsprogs")
    work = Path(tempfile.mkdtemp(prefix="bf-peers-", dir=args.dir))
    env = {**PEER_ENV, "RESTIC_CACHE_DIR": str(work / "restic-cache"),
           "BORG_BASE_DIR": str(work / "borg-base")}
    key = work / "key"
    key.write_text(PASSPHRASE + "\n")
    src, changed = work / "source.img", work / "changed.img"
    build_image(src, size)
    change_one_percent(src, changed)
    cbt = changed.with_suffix(".npz")
    blocks_map = work / "changed-map.npz"
    from blockforensics.blockmap import BlockMap  # the map `backup --changed` reads

    positions = np.load(cbt)["positions"]
    BlockMap.from_positions(size // 4096, positions, 4096).save(blocks_map)

    def fresh(*paths: Path):
        def clear() -> None:
            for p in paths:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return clear

    c = {name: work / name for name in ("plain", "enc", "zstd", "copy.img", "pc.img",
                                        "borg-none", "borg-lz4", "borg-key", "restic",
                                        "out.img", "borg-out", "restic-out")}
    borg_init = {k: ["borg", "init", "-e", e, str(c[k])] for k, e in
                 (("borg-none", "none"), ("borg-lz4", "none"), ("borg-key", "repokey"))}

    def borg_fresh(name: str):
        def run() -> None:
            shutil.rmtree(c[name], ignore_errors=True)
            subprocess.run(borg_init[name], check=True, env={**os.environ, **env},
                           capture_output=True)
        return run

    def restic_fresh() -> None:
        shutil.rmtree(c["restic"], ignore_errors=True)
        subprocess.run(["restic", "init", "-q", "--repo", str(c["restic"])], check=True,
                       env={**os.environ, **env}, capture_output=True)

    full = [
        Step("ours: full, plain", cli("backup", src, c["plain"]), fresh(c["plain"])),
        Step("cp + sync", ["sh", "-c", f"cp '{src}' '{c['copy.img']}' && sync '{c['copy.img']}'"],
             fresh(c["copy.img"])),
        Step("partclone", ["partclone.ext4", "-q", "-c", "-s", str(src), "-o", str(c["pc.img"])],
             fresh(c["pc.img"])),
        Step("borg (none)", ["borg", "create", "-C", "none", f"{c['borg-none']}::a", str(src)],
             borg_fresh("borg-none"), env),
        Step("ours: full, encrypted", cli("backup", src, c["enc"], "--key-file", key),
             fresh(c["enc"])),
        Step("restic", ["restic", "-q", "--repo", str(c["restic"]), "backup", str(src)],
             restic_fresh, env),
        Step("borg (repokey)", ["borg", "create", f"{c['borg-key']}::a", str(src)],
             borg_fresh("borg-key"), env),
        Step("ours: full, --compress", cli("backup", src, c["zstd"], "--compress"),
             fresh(c["zstd"])),
        Step("borg (lz4)", ["borg", "create", "-C", "lz4", f"{c['borg-lz4']}::a", str(src)],
             borg_fresh("borg-lz4"), env),
    ]
    results = medians(full, args.repeat)
    stored = {"ours: full, plain": du(c["plain"]), "cp + sync": du(c["copy.img"]),
              "partclone": du(c["pc.img"]), "borg (none)": du(c["borg-none"]),
              "ours: full, encrypted": du(c["enc"]), "restic": du(c["restic"]),
              "borg (repokey)": du(c["borg-key"]), "ours: full, --compress": du(c["zstd"]),
              "borg (lz4)": du(c["borg-lz4"])}
    # after the full: an incremental of 1 % (ours without / with the map; borg)
    snap = {p: work / f"{p.name}.base" for p in (c["plain"], c["borg-none"])}
    for live, base in snap.items():
        shutil.copytree(live, base)

    def restore_base(live: Path):
        def run() -> None:
            shutil.rmtree(live, ignore_errors=True)
            shutil.copytree(snap[live], live)
        return run

    later = [
        Step("ours: incremental 1 %", cli("backup", changed, c["plain"]),
             restore_base(c["plain"])),
        Step("ours: incremental 1 %, --changed", cli("backup", changed, c["plain"], "--changed",
                                                     blocks_map), restore_base(c["plain"])),
        Step("borg: incremental 1 %", ["borg", "create", f"{c['borg-none']}::b", str(changed)],
             restore_base(c["borg-none"]), env),
    ]
    results |= medians(later, args.repeat)
    restores = [
        Step("ours: restore, plain", cli("restore", c["plain"], c["out.img"], "--point", 0),
             fresh(c["out.img"])),
        Step("partclone: restore", ["partclone.ext4", "-q", "-r", "--overwrite", "-s",
                                    str(c["pc.img"]),
                                    "-o", str(c["out.img"])],
             lambda: subprocess.run(["truncate", "-s", str(size), str(c["out.img"])],
                                    check=True)),
        Step("borg: extract", ["sh", "-c", f"mkdir -p '{c['borg-out']}' && cd '{c['borg-out']}'"
                               f" && borg extract '{c['borg-none']}::a'"],
             fresh(c["borg-out"]), env),
        Step("ours: restore, encrypted", cli("restore", c["enc"], c["out.img"], "--key-file",
                                             key), fresh(c["out.img"])),
        Step("restic: restore", ["restic", "-q", "--repo", str(c["restic"]), "restore",
                                 "latest", "--target", str(c["restic-out"])],
             fresh(c["restic-out"]), env),
    ]
    results |= medians(restores, args.repeat)
    results |= medians(consolidations(c, changed, key, env), args.repeat)
    results["ours: list"] = measure("ours: list", cli("list", c["plain"]))
    results["python -c pass"] = measure("python -c pass", ["python3", "-c", "pass"])
    settle()

    versus = {
        "ours: full, plain": ["cp + sync", "partclone", "borg (none)"],
        "ours: full, encrypted": ["restic", "borg (repokey)"],
        "ours: full, --compress": ["borg (lz4)"],
        "ours: incremental 1 %": ["borg: incremental 1 %"],
        "ours: incremental 1 %, --changed": ["borg: incremental 1 %"],
        "ours: restore, plain": ["partclone: restore", "borg: extract"],
        "ours: restore, encrypted": ["restic: restore"],
        "ours: consolidate, plain": ["borg: prune + compact"],
        "ours: consolidate, encrypted": ["restic: forget --prune"],
        "ours: list": ["python -c pass"],
    }
    rows = []
    for ours, peers in versus.items():
        mine = results[ours]
        for peer in peers:
            theirs = results[peer]
            row: dict[str, object] = {
                "operation": ours.removeprefix("ours: "), "vs": peer,
                "ours s": round(mine.seconds, 2), "peer s": round(theirs.seconds, 2),
                "ratio": round(theirs.seconds / mine.seconds, 2),
                "ours RSS MiB": round(mine.peak_rss_mib), "peer RSS MiB":
                round(theirs.peak_rss_mib)}
            if ours in stored and peer in stored:
                row["stored ratio"] = round(stored[peer] / stored[ours], 2)
            else:
                row["stored ratio"] = ""
            rows.append(row)
    print(f"source: a {args.size_mib} MiB ext4 image; ratio = peer's time / ours (median of "
          f"{args.repeat}); stored ratio = peer's bytes / ours")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"size_mib": args.size_mib, "rows": rows},
                                              indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""blockforensics against the peers people compare it with, on one realistic ext4 image.

    python benchmarks/bench_peers.py --size-mib 1024 [--repeat 3] [--dir /tmp] [--json out.json]
                                     [--only full incremental restore consolidate list
                                             export reads] [--baseline DIR]

The source is an ext4 image built with ``mkfs.ext4 -d`` (no mount): text and
source code, shared libraries, random "media", an all-zero file, and the
remnants of deleted files (written, then removed with debugfs), about 60 %
allocated.  Every contender backs up that same image file:

- ``cp`` + ``sync`` and partclone (which, like us, copies the allocated blocks);
- borg (``--compression none`` / ``lz4``, ``repokey`` encryption) and restic
  (always encrypted), which back the image up as a file.

Then the point (point 0 of our plain chain) is exposed and converted:

- ``export`` to a dynamic and a fixed VHD, from the image file and from the chain,
  against ``qemu-img convert -O vpc`` of the image (of the point restored, for the
  chain), like for like (see ``exposure.py``): our export without fsync against the
  plain convert, ours as it runs against the convert + ``sync FILE`` and against
  ``-t writeback``.  Each source is read into the page cache before every run, and the
  other contenders' VHDs are dropped from it (every run starts with the same cache).
  Afterwards every VHD is compared with its source by ``qemu-img compare``; stored
  ratio: allocated bytes of qemu-img's VHD / ours.
- reads (``reads``): ``MOUNTPOINT/disk.vhd`` (``blockforensics mount``) against reading
  the same point exported to a dynamic VHD file (the same size, in the page cache) and
  against ``qemu-nbd -f raw`` serving that file's bytes; ``blockforensics serve``
  against ``qemu-nbd`` serving the same volume from that VHD (``-f vpc``) and from the
  point restored to a raw file.  One reader for all (``exposure.READER``: 4 MiB
  requests, the project's NBD client for NBD), timed from opening to the last byte;
  the chain or the file is read into the page cache before every run (and ``disk.vhd``
  dropped from it: a first read, not the kernel's cache of it); and like for like from
  the disk: ``disk.vhd`` with the chain's images dropped from the page cache against the
  VHD file dropped from it.  RSS of a read:
  the serving process's peak (VmHWM), the reader's for the plain file.  Afterwards
  every served export is compared with the point by ``qemu-img compare``.

The table gives, per operation, our time and peak RSS, each peer's, and the
ratio *peer's time / ours* (above 1: we are faster) of the fastest runs and of
the medians, plus stored sizes.  The steps of a group take turns, each run into
a fresh output, ``--repeat`` rounds; ``--only`` runs some groups (the repositories
a group needs are made once, untimed, when their group is left out).  After the
runs, every restored volume is compared with the source (or, for partclone, with
ours) and every consolidated repository must hold one point: partclone, for one,
exits 0 on a bad option having restored nothing.  The full backups each start with the
source in the page cache (borg drops what it reads from it).  ``--baseline DIR`` also runs
the full backups, the consolidations and the exports of another checkout (``DIR`` on
``PYTHONPATH``, its extension built) in the same rounds, right after ours ("before: full,
...", "before: consolidate, ...", "before: export ...").  Install the peers with
``apt-get install restic borgbackup partclone``
(``scripts/setup.sh`` does not: the benchmarks are not run in CI); ``qemu-img`` and
``qemu-nbd`` come with ``qemu-utils``.  Our commands run from compiled bytecode, as
installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from common import Run, Step, cli, compiled, fastest, options, settle, table
from exposure import (
    LIKE_FOR_LIKE,
    allocated,
    convert_steps,
    drop_cache,
    export_steps,
    identical,
    mounted,
    peak_rss_mib,
    qemu_nbd,
    read_step,
    serve,
    warm,
)

PASSPHRASE = "benchmark passphrase"
#: partclone restores the used blocks into an existing file of the volume's size, leaving
#: the rest as it was (here: a hole); our restore of a point writes the blocks it stores
#: and leaves the others as holes too: the same bytes, like for like
PARTCLONE_RESTORE = "partclone -r (used blocks)"
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


def consolidations(work: Path, src: Path, changed: Path, key: Path, env: dict[str, str],
                   baseline: Path | None = None) -> tuple[list[Step], Callable[[], None]]:
    """Steps that merge two points into one, each from a saved repository holding a
    backup of the volume file and one of the same file after 1 % of its blocks changed
    (same path, so restic's forget groups them): ours (plain, encrypted), borg (none)
    prune + compact, restic forget --prune, and ``baseline``'s each right after ours if
    given; and a check that each left one point."""
    volume = work / "volume.img"
    saved = {name: work / f"{name}.two" for name in ("plain", "enc", "borg", "restic",
                                                     "borg-base", "restic-cache")}
    live = {name: work / f"{name}.run" for name in saved}
    # borg refuses a repository older than its cache and security records: each run
    # starts from the state the setup left, repository, cache and records alike
    setup_env = {**os.environ, **env, "BORG_BASE_DIR": str(saved["borg-base"]),
                 "RESTIC_CACHE_DIR": str(saved["restic-cache"])}
    run_env = {**env, "BORG_BASE_DIR": str(live["borg-base"]),
               "RESTIC_CACHE_DIR": str(live["restic-cache"])}
    full_env = {**os.environ, **run_env}
    first = [["borg", "init", "-e", "none", str(saved["borg"])],
             ["restic", "init", "-q", "--repo", str(saved["restic"])]]
    for state, tag in ((src, "a"), (changed, "b")):
        shutil.copyfile(state, volume)
        for argv in [*first,
                     cli("backup", volume, saved["plain"]),
                     cli("backup", volume, saved["enc"], "--key-file", key),
                     ["borg", "create", "-C", "none", f"{saved['borg']}::{tag}", str(volume)],
                     ["restic", "-q", "--repo", str(saved["restic"]), "backup", str(volume)]]:
            subprocess.run(argv, check=True, env=setup_env, capture_output=True)
        first = []
    for name in ("borg", "restic"):
        subprocess.run(["borg", "list", str(saved["borg"])] if name == "borg" else
                       ["restic", "-q", "--repo", str(saved["restic"]), "snapshots"],
                       check=True, env=setup_env, capture_output=True)  # caches up to date

    def reset(*names: str) -> Callable[[], None]:
        def run() -> None:
            for name in names:
                shutil.rmtree(live[name], ignore_errors=True)
                shutil.copytree(saved[name], live[name], symlinks=True)
            os.sync()  # the copies' writeback is not the timed step's: ours fsyncs its file
        return run

    def check() -> None:
        """One point left in each repository (else the step did not do its job)."""
        listings = {"plain": cli("list", live["plain"], "--json"),
                    "enc": cli("list", live["enc"], "--json"),
                    "borg": ["borg", "list", "--json", str(live["borg"])],
                    "restic": ["restic", "--repo", str(live["restic"]), "snapshots", "--json"]}
        for name, argv in listings.items():
            listed = json.loads(subprocess.run(argv, check=True, env=full_env,
                                               capture_output=True, text=True).stdout)
            count = len(listed["archives"] if name == "borg" else listed)
            if count != 1:
                raise SystemExit(f"{name}: {count} points left after consolidation, not 1")

    def ours(kind: str, name: str) -> list[Step]:
        step = Step(f"ours: consolidate, {kind}", cli("consolidate", live[name], "--point", 1),
                    reset(name))
        return [step] + ([dataclasses.replace(
            step, label=step.label.replace("ours: ", "before: "),
            env={"PYTHONPATH": str(baseline), "PYTHONSAFEPATH": "1"})] if baseline else [])

    borg = live["borg"]
    return [
        *ours("plain", "plain"),
        Step("borg: prune + compact", ["sh", "-c", f"borg prune --keep-last 1 '{borg}' && "
                                       f"borg compact '{borg}'"], reset("borg", "borg-base"),
             run_env),
        *ours("encrypted", "enc"),
        Step("restic: forget --prune", ["restic", "-q", "--repo", str(live["restic"]), "forget",
                                        "--keep-last", "1", "--prune"],
             reset("restic", "restic-cache"), run_env),
    ], check


def untimed(steps: list[Step]) -> None:
    """Run every step once, unmeasured (the state a left-out group leaves behind)."""
    for step in steps:
        if step.before is not None:
            step.before()
        subprocess.run(step.argv, check=True, capture_output=True,
                       env={**os.environ, **(step.env or {})})


def differing_blocks(restored: Path, reference: Path, size: int) -> int:
    """4 KiB blocks in which ``restored`` differs from ``reference`` (SystemExit unless
    it is ``size`` bytes long)."""
    if restored.stat().st_size != size:
        raise SystemExit(f"{restored}: {restored.stat().st_size} bytes, not {size}")
    a, b = (np.memmap(p, np.uint8, mode="r").reshape(-1, 4096) for p in (restored, reference))
    step = 16384
    return sum(int((a[i : i + step] != b[i : i + step]).any(axis=1).sum())
               for i in range(0, len(a), step))


def alone(output: Path, outputs: list[Path], sources: list[Path]) -> Callable[[], None]:
    """Before an export's run: remove its last ``output``, drop the other contenders'
    ``outputs`` from the page cache and read the ``sources`` into it.  Our durable export
    drops what it writes as it goes, qemu-img keeps it: without the drop, the page cache
    held qemu-img's last VHD (the source's size) through each of our runs, but ours through
    qemu-img's runs only after our page-cache (no fsync) runs."""
    def run() -> None:
        output.unlink(missing_ok=True)
        drop_cache(*(other for other in outputs if other != output and other.exists()))
        warm(*sources)
    return run


def exports(work: Path, src: Path, chain: Path, point0: Path, repeat: int,
            baseline: Path | None = None
            ) -> tuple[dict[str, Run], dict[str, int], list[tuple[str, str]]]:
    """Race ``export`` of the image file and of point 0 of ``chain`` to a dynamic and a
    fixed VHD against ``qemu-img convert`` of the image (of ``point0``, the point restored),
    and ``baseline``'s exports if given; check every VHD against its source.  The runs, the
    stored bytes (allocated) by label, and the (ours, peer) pairs to report."""
    runs: dict[str, Run] = {}
    sizes: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    images = sorted(chain.glob("*.bfi"))
    mine: dict[str, dict[str, str]] = {"ours": {}}
    if baseline:
        mine["before"] = {"PYTHONPATH": str(baseline), "PYTHONSAFEPATH": "1"}  # not the cwd's
    for origin, source, raw, reads in (("raw", src, src, [src]),
                                       ("chain", chain, point0, images)):
        for kind in ("dynamic", "fixed"):
            qemu, tag = work / f"qemu-{origin}-{kind}.vhd", f" [{origin}, {kind}]"
            made = [qemu, *(work / f"{who}-{origin}-{kind}.vhd" for who in mine)]
            outputs: dict[str, Path] = {}
            steps: list[Step] = []
            for who, env in mine.items():
                out = work / f"{who}-{origin}-{kind}.vhd"
                label = f"{who}: export from {origin}, vhd-{kind}"
                argv = cli("export", source, out, "--format", f"vhd-{kind}",
                           *(["--point", 0] if origin == "chain" else []))
                steps += export_steps(label, argv, alone(out, made, reads), env)
                outputs |= {step.label: out for step in steps[-2:]}
                pairs += [(f"{label}{suffix}", f"{peer}{tag}") for suffix, peer in LIKE_FOR_LIKE]
            done = fastest([*steps, *convert_steps(raw, qemu, kind, alone(qemu, made, [raw]),
                                                   tag)], repeat)
            for vhd in {*outputs.values(), qemu}:
                if not identical(raw, vhd):
                    raise SystemExit(f"{vhd}: not the same volume as {raw}")
            runs |= done
            sizes |= {name: allocated(outputs.get(name, qemu)) for name in done}
            for vhd in {*outputs.values(), qemu}:
                vhd.unlink()
    return runs, sizes, pairs


def reads(work: Path, chain: Path, point0: Path, repeat: int
          ) -> tuple[dict[str, Run], list[tuple[str, str]]]:
    """Race reads of point 0 of ``chain`` exposed by FUSE and by ``serve`` against a file
    read and ``qemu-nbd`` (see the module's docstring); check every export read."""
    vhd = work / "point0.vhd"
    subprocess.run(cli("export", chain, vhd, "--point", 0, "--format", "vhd-dynamic"),
                   check=True, stdout=subprocess.DEVNULL)
    images = sorted(chain.glob("*.bfi"))
    fuse, file, qemu_file = "ours: FUSE disk.vhd read", "the .vhd file (cached)", \
        "qemu-nbd -f raw .vhd"
    # like for like from the disk: the chain's images, and the .vhd file, not in the cache
    cold_fuse, cold_file = "ours: FUSE disk.vhd read, chain on disk", "the .vhd file (on disk)"
    nbd, qemu_vpc, qemu_raw = "ours: serve (NBD) read", "qemu-nbd -f vpc .vhd", \
        "qemu-nbd -f raw point.img"
    with ExitStack() as stack:
        disk_vhd, mount = stack.enter_context(mounted(chain, work / "mnt", "--point", 0))
        servers = {nbd: stack.enter_context(serve(chain, work / "serve.sock", "--point", 0)),
                   qemu_file: stack.enter_context(qemu_nbd(vhd, "raw", work / "q-file.sock")),
                   qemu_vpc: stack.enter_context(qemu_nbd(vhd, "vpc", work / "q-vpc.sock")),
                   qemu_raw: stack.enter_context(qemu_nbd(point0, "raw", work / "q-raw.sock"))}
        if disk_vhd.stat().st_size != vhd.stat().st_size:
            raise SystemExit(f"{disk_vhd} and {vhd} differ in size")
        runs = fastest([
            # a first read: the mount lets the kernel keep what it read
            read_step(fuse, disk_vhd, lambda: (warm(*images), drop_cache(disk_vhd))),
            read_step(file, vhd, lambda: warm(vhd)),
            read_step(cold_fuse, disk_vhd, lambda: drop_cache(*images, disk_vhd)),
            read_step(cold_file, vhd, lambda: drop_cache(vhd)),
            read_step(qemu_file, servers[qemu_file][0], lambda: warm(vhd)),
            read_step(nbd, servers[nbd][0], lambda: warm(*images)),
            read_step(qemu_vpc, servers[qemu_vpc][0], lambda: warm(vhd)),
            read_step(qemu_raw, servers[qemu_raw][0], lambda: warm(point0)),
        ], repeat)
        for label, proc in [(fuse, mount), (cold_fuse, mount),
                            *((k, v[1]) for k, v in servers.items())]:
            runs[label] = dataclasses.replace(runs[label], peak_rss_mib=peak_rss_mib(proc.pid))
        checks = [identical(point0, disk_vhd), identical(vhd, servers[qemu_file][0], "raw"),
                  *(identical(point0, servers[k][0], "raw") for k in (nbd, qemu_vpc, qemu_raw))]
        if not all(checks):
            raise SystemExit(f"a read export is not the point: {checks}")
    vhd.unlink()
    return runs, [(fuse, file), (cold_fuse, cold_file), (fuse, qemu_file), (nbd, qemu_vpc),
                  (nbd, qemu_raw)]


GROUPS = ("full", "incremental", "restore", "consolidate", "list", "export", "reads")


def arguments() -> argparse.Namespace:
    """The common options, and ``--only GROUP...``."""
    only = argparse.ArgumentParser(add_help=False)
    only.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    only.add_argument("--baseline", type=Path,
                      help="another checkout's full backups and exports too")
    picked, rest = only.parse_known_args()
    sys.argv[1:] = rest
    args = options(__doc__, 1024)
    args.only, args.baseline = picked.only, picked.baseline
    return args


def main() -> None:
    args = arguments()
    size = args.size_mib << 20
    for tool in ("restic", "borg", "partclone.ext4", "mkfs.ext4", "debugfs", "qemu-img",
                 "qemu-nbd", "fusermount3"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: apt-get install restic borgbackup partclone "
                             "e2fsprogs qemu-utils fuse3")
    os.environ.pop("BLOCKFORENSICS_FSYNC", None)  # our writers fsync, as in production
    import blockforensics

    compiled(Path(blockforensics.__file__).parent,
             *([args.baseline / "blockforensics"] if args.baseline else []))
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

    def fresh(*paths: Path) -> Callable[[], None]:
        def clear() -> None:
            for p in paths:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return clear

    c = {name: work / name for name in ("plain", "enc", "zstd", "copy.img", "pc.img",
                                        "borg-none", "borg-lz4", "borg-key", "restic",
                                        "out.img", "pc-out.img", "borg-out", "restic-out")}
    borg_init = {k: ["borg", "init", "-e", e, str(c[k])] for k, e in
                 (("borg-none", "none"), ("borg-lz4", "none"), ("borg-key", "repokey"))}

    def borg_fresh(name: str) -> Callable[[], None]:
        def run() -> None:
            shutil.rmtree(c[name], ignore_errors=True)
            subprocess.run(borg_init[name], check=True, env={**os.environ, **env},
                           capture_output=True)
        return run

    def restic_fresh() -> None:
        shutil.rmtree(c["restic"], ignore_errors=True)
        subprocess.run(["restic", "init", "-q", "--repo", str(c["restic"])], check=True,
                       env={**os.environ, **env}, capture_output=True)

    def sparse_target() -> None:  # partclone restores into an existing file of the size
        c["pc-out.img"].unlink(missing_ok=True)
        subprocess.run(["truncate", "-s", str(size), str(c["pc-out.img"])], check=True)

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
    outputs = dict(zip([step.label for step in full], (
        c["plain"], c["copy.img"], c["pc.img"], c["borg-none"], c["enc"], c["restic"],
        c["borg-key"], c["zstd"], c["borg-lz4"])))
    timed_full = full
    if args.baseline:  # the same backups by the other checkout, each right after ours
        timed_full = []
        for step in full:
            timed_full.append(step)
            if step.label.startswith("ours: "):
                out = outputs[step.label].with_name(f"before-{outputs[step.label].name}")
                label = step.label.replace("ours: ", "before: ")
                outputs[label] = out
                timed_full.append(Step(label, [*step.argv[:5], str(out), *step.argv[6:]],
                                       fresh(out), {"PYTHONPATH": str(args.baseline),
                                                   "PYTHONSAFEPATH": "1"}))

    def warmed(before: Callable[[], object] | None) -> Callable[[], None]:
        def run() -> None:
            if before is not None:
                before()
            warm(src)
        return run

    # borg drops what it reads from the page cache (posix_fadvise), so the step after it
    # would read the source from the disk: every step starts with the source cached
    timed_full = [dataclasses.replace(step, before=warmed(step.before)) for step in timed_full]
    results: dict[str, Run] = {}
    stored: dict[str, int] = {}
    if "full" in args.only:
        results |= fastest(timed_full, args.repeat)
        stored = {label: du(path) for label, path in outputs.items()}
    elif {"incremental", "restore", "list", "export", "reads"} & set(args.only):
        untimed(full)
    if "incremental" in args.only:  # an incremental of 1 % (ours without / with the map; borg)
        # borg refuses a repository older than its cache and security records: its runs
        # start from the repository and borg's base directory as the full left them
        borg_base = Path(env["BORG_BASE_DIR"])
        snap = {p: work / f"{p.name}.base" for p in (c["plain"], c["borg-none"], borg_base)}
        for live, base in snap.items():
            shutil.copytree(live, base, symlinks=True)

        def restore_base(*lives: Path) -> Callable[[], None]:
            def run() -> None:
                for live in lives:
                    shutil.rmtree(live, ignore_errors=True)
                    shutil.copytree(snap[live], live, symlinks=True)
            return run

        results |= fastest([
            Step("ours: incremental 1 %", cli("backup", changed, c["plain"]),
                 restore_base(c["plain"])),
            Step("ours: incremental 1 %, --changed", cli("backup", changed, c["plain"],
                                                         "--changed", blocks_map),
                 restore_base(c["plain"])),
            Step("borg: incremental 1 %", ["borg", "create", f"{c['borg-none']}::b",
                                           str(changed)],
                 restore_base(c["borg-none"], borg_base), env),
        ], args.repeat)
    if "restore" in args.only:
        results |= fastest([
            Step("ours: restore, plain", cli("restore", c["plain"], c["out.img"], "--point", 0),
                 fresh(c["out.img"])),
            Step(PARTCLONE_RESTORE, ["partclone.ext4", "-q", "-r", "-s", str(c["pc.img"]),
                                     "-O", str(c["pc-out.img"])], sparse_target),
            Step("borg: extract", ["sh", "-c", f"mkdir -p '{c['borg-out']}' && "
                                   f"cd '{c['borg-out']}' && borg extract '{c['borg-none']}::a'"],
                 fresh(c["borg-out"]), env),
            Step("ours: restore, encrypted", cli("restore", c["enc"], c["out.img"], "--point",
                                                 0, "--key-file", key), fresh(c["out.img"])),
            Step("restic: restore", ["restic", "-q", "--repo", str(c["restic"]), "restore",
                                     "latest", "--target", str(c["restic-out"])],
                 fresh(c["restic-out"]), env),
        ], args.repeat)
        # borg and restic back up the file: the source itself; partclone and ours keep
        # the used blocks, the rest reads as zeros (partclone also zeroes parts of a few
        # metadata blocks): a silent failure would leave most blocks differing
        for restored in (next(c["borg-out"].rglob(src.name)),
                         next(c["restic-out"].rglob(src.name))):
            if differing_blocks(restored, src, size):
                raise SystemExit(f"{restored}: not the source volume")
        apart = differing_blocks(c["pc-out.img"], c["out.img"], size)
        print(f"partclone's restore differs from ours in {apart} of {size // 4096} blocks",
              file=sys.stderr)
        if apart > size // 4096 // 100:
            raise SystemExit("partclone's restore is not the volume: did it fail?")
    if "consolidate" in args.only:
        steps, check = consolidations(work, src, changed, key, env, args.baseline)
        results |= fastest(steps, args.repeat)
        check()
    if "list" in args.only:
        results |= fastest([Step("ours: list", cli("list", c["plain"])),
                            Step("python -c pass", ["python3", "-c", "pass"])], args.repeat)
    pairs: list[tuple[str, str]] = []
    point0 = work / "point0.img"
    if {"export", "reads"} & set(args.only):
        subprocess.run(cli("restore", c["plain"], point0, "--point", 0), check=True,
                       stdout=subprocess.DEVNULL)
    if "export" in args.only:
        runs, sizes, more = exports(work, src, c["plain"], point0, args.repeat, args.baseline)
        results |= runs
        stored |= sizes
        pairs += more
    if "reads" in args.only:
        runs, more = reads(work, c["plain"], point0, args.repeat)
        results |= runs
        pairs += more
    settle()

    versus = {
        "ours: full, plain": ["cp + sync", "partclone", "borg (none)"],
        "ours: full, encrypted": ["restic", "borg (repokey)"],
        "ours: full, --compress": ["borg (lz4)"],
        "ours: incremental 1 %": ["borg: incremental 1 %"],
        "ours: incremental 1 %, --changed": ["borg: incremental 1 %"],
        "ours: restore, plain": [PARTCLONE_RESTORE, "borg: extract"],
        "ours: restore, encrypted": ["restic: restore"],
        "ours: consolidate, plain": ["borg: prune + compact"],
        "ours: consolidate, encrypted": ["restic: forget --prune"],
        "ours: list": ["python -c pass"],
    }
    versus = {mine: peers for ours, peers in versus.items()  # --baseline: "before: ..." too
              for mine in (ours, ours.replace("ours: ", "before: "))}
    pairs = [(ours, peer) for ours, peers in versus.items() for peer in peers] + pairs
    rows = []
    for ours, peer in pairs:
        if ours not in results:
            continue
        mine, theirs = results[ours], results[peer]
        rows.append({
            "operation": ours.removeprefix("ours: "), "vs": re.sub(r" \[.*\]$", "", peer),
            "ours s": round(mine.seconds, 2), "peer s": round(theirs.seconds, 2),
            "ratio": round(theirs.seconds / mine.seconds, 2),
            "ours s (med)": round(mine.median_seconds, 2),
            "peer s (med)": round(theirs.median_seconds, 2),
            "ratio (med)": round(theirs.median_seconds / mine.median_seconds, 2),
            "ours CPU s": round(mine.cpu_seconds, 2), "peer CPU s": round(theirs.cpu_seconds, 2),
            "ours RSS MiB": round(mine.peak_rss_mib),
            "peer RSS MiB": round(theirs.peak_rss_mib),
            "stored ratio": round(stored[peer] / stored[ours], 2)
            if ours in stored and peer in stored else ""})
    print(f"source: a {args.size_mib} MiB ext4 image; ratio = peer's time / ours (fastest of "
          f"{args.repeat}; (med): medians); CPU s: least user + system seconds of any run; "
          "stored ratio = peer's bytes / ours")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"size_mib": args.size_mib, "rows": rows},
                                              indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Builders of sample volumes for tests, made by the real tools (mkfs.*, mtools, sgdisk …).

Each builder writes a sparse image file, fills it with a reproducible tree of
files and returns what the test needs to compare against.  Every tool runs
with ``check=True``: a builder that cannot build fails the test loudly.
"""

from __future__ import annotations

import filecmp
import gzip
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIB = 1 << 20
#: mtools refuses some legal geometries (e.g. FAT32 below 65,525 clusters) without this
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


def run(*args: object, **kwargs: object) -> str:
    """Run a tool; its stdout (text).  Raises with the tool's stderr on failure."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          **kwargs)  # type: ignore[call-overload]
    if done.returncode:
        raise AssertionError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def sparse_file(path: Path, size: int) -> Path:
    path.unlink(missing_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


def file_tree(root: Path, seed: int, n_files: int, total: int) -> Path:
    """``n_files`` files of random content and sizes (about ``total`` bytes in all, some
    empty, some a few bytes) in a few nested directories under ``root``."""
    rng = np.random.default_rng(seed)
    sizes = rng.exponential(total / n_files, n_files).astype(np.int64)
    sizes[rng.choice(n_files, max(1, n_files // 20), replace=False)] = 0
    sizes[rng.choice(n_files, max(1, n_files // 20), replace=False)] = rng.integers(1, 100)
    dirs = [Path("."), Path("DOCS"), Path("DOCS/OLD"), Path("PICS"), Path("DATA/X/Y")]
    for i, size in enumerate(sizes.tolist()):
        where = root / dirs[i % len(dirs)]
        where.mkdir(parents=True, exist_ok=True)
        (where / f"F{i:04d}.BIN").write_bytes(rng.bytes(size))
    return root


def same_trees(expected: Path, found: Path) -> list[str]:
    """Relative paths that differ between two directory trees (missing, extra, other bytes)."""
    differ: list[str] = []

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        differ.extend(prefix + n for n in cmp.left_only + cmp.right_only + cmp.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files,
                                               shallow=False)
        differ.extend(prefix + n for n in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(expected, found), "")
    return differ


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


# -------------------------------------------------------------------- FAT
def make_fat(img: Path, size: int, mkfs_options: list[str], tree: Path | None,
             delete: tuple[str, ...] = (), offset: int = 0) -> Path:
    """``mkfs.fat`` on a sparse file (or at byte ``offset`` of an existing disk), the
    tree copied in with ``mcopy -s``, then the ``delete`` paths removed (their
    clusters keep stale bytes)."""
    if offset:
        run("mkfs.fat", *mkfs_options, "--offset", offset // 512, img, size // 1024)
    else:
        run("mkfs.fat", *mkfs_options, sparse_file(img, size))
    target = f"{img}@@{offset}" if offset else str(img)
    if tree is not None:
        entries = sorted(p.name for p in tree.iterdir())
        run("mcopy", "-s", "-Q", "-i", target, *(tree / e for e in entries), "::/", env=MTOOLS_ENV)
    for path in delete:
        run("mdel", "-i", target, f"::/{path}", env=MTOOLS_ENV)
    return img


def fat_files(img: Path, out: Path, offset: int = 0) -> Path:
    """Every file of the FAT volume copied out with ``mcopy -s`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    target = f"{img}@@{offset}" if offset else str(img)
    names = [line.split()[0] for line in run("mdir", "-b", "-i", target, "::/",
                                             env=MTOOLS_ENV).splitlines() if line.strip()]
    if names:
        run("mcopy", "-s", "-n", "-i", target, *names, out, env=MTOOLS_ENV)
    return out


def fat_clean(img: Path) -> None:
    """``fsck.fat -n`` finds nothing to repair (raises with its output otherwise)."""
    out = run("fsck.fat", "-n", img)
    assert "FIXED" not in out.upper() and "differ" not in out, out


# ------------------------------------------------------- Linux's own drivers
# The host kernel has no vfat/exfat driver, and mtools 4.0.32 misreads FAT32
# volumes of fewer than 65,525 clusters ("No directory slots"); such volumes are
# filled by Linux itself: Debian's cloud kernel boots in QEMU (TCG) with a busybox
# initramfs that carries the file trees and the modules, and copies each tree onto
# its virtio disk.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "vfat", "exfat", "nls_cp437", "nls_ascii",
                 "nls_utf8", "nls_iso8859-1")


@dataclass(frozen=True)
class GuestFill:
    """Copy ``tree`` onto the ``fstype`` volume of ``image`` (partition ``partition``, or
    the whole disk), then remove the ``delete`` paths (their clusters keep stale data),
    then run ``script`` (busybox sh, in the mounted volume's root)."""

    image: Path
    fstype: str  # "vfat" or "exfat"
    tree: Path
    delete: tuple[str, ...] = ()
    partition: int | None = None
    script: str = ""


def _cloud_kernel() -> tuple[Path, Path]:
    """(vmlinuz, modules directory) of the newest Debian cloud kernel."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    assert kernels, "no /boot/vmlinuz-*-cloud-amd64 (Debian: linux-image-cloud-amd64)"
    version = kernels[-1].name.removeprefix("vmlinuz-")
    return kernels[-1], Path("/lib/modules", version)


def _modules_in_order(modules: Path, names: tuple[str, ...]) -> list[Path]:
    """The modules' files with their dependencies, each after what it depends on."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[path] = needs.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    ordered: list[str] = []

    def visit(path: str) -> None:
        for dep in reversed(deps[path]):  # modules.dep lists the deepest dependency last
            visit(dep)
        if path not in ordered:
            ordered.append(path)

    for name in names:
        visit(by_name[name.replace("-", "_")])
    return [modules / p for p in ordered]


def fill_in_guest(jobs: list[GuestFill], work: Path, timeout: float = 600) -> None:
    """Run every job in one QEMU boot; fails with the console's tail unless all succeed."""
    kernel, modules = _cloud_kernel()
    root = work / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("bin", "dev", "proc", "sys", "mnt", "mods", "trees"):
        (root / sub).mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
    os.mknod(root / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    loads = []
    for i, module in enumerate(_modules_in_order(modules, GUEST_MODULES)):
        target = root / "mods" / f"{i:02d}-{module.name}"
        shutil.copy(module, target)
        loads.append(f"insmod /mods/{target.name}")
    steps = []
    for i, job in enumerate(jobs):
        shutil.copytree(job.tree, root / "trees" / str(i))
        device = f"/dev/vd{chr(ord('a') + i)}{job.partition or ''}"
        removals = " && ".join(f"rm -r '/mnt/{p}'" for p in job.delete) or "true"
        script = "true"
        if job.script:
            (root / f"script-{i}.sh").write_text(f"set -e\ncd /mnt\n{job.script}\n")
            script = f"sh /script-{i}.sh"
        steps.append(f"wait_for {device}; mount -t {job.fstype} {device} /mnt && "
                     f"cp -r /trees/{i}/. /mnt/ && {removals} && {script} && umount /mnt && "
                     f"echo FILLED-{i}")
    init = root / "init"
    init.write_text("\n".join([
        "#!/bin/busybox sh", "/bin/busybox --install -s /bin",
        "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
        *loads,
        "wait_for() { for n in $(seq 100); do [ -b $1 ] && return; sleep 0.1; done; }",
        *steps, "sync", "echo GUEST-DONE", "poweroff -f", ""]))
    init.chmod(0o755)
    listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing,
                             capture_output=True, check=True).stdout
    initrd = work / "initrd.gz"
    initrd.write_bytes(gzip.compress(archive, compresslevel=1))
    console = work / "guest-console.log"
    drives = [arg for job in jobs for arg in
              ("-drive", f"file={job.image},format=raw,if=virtio,cache=unsafe")]
    run(shutil.which("qemu-system-x86_64"), "-nodefaults", "-display", "none", "-accel", "tcg",
        "-m", "1024", "-no-reboot", "-serial", f"file:{console}", "-kernel", kernel,
        "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet", *drives,
        timeout=timeout)
    log = console.read_text(errors="replace")
    missing = [i for i in range(len(jobs)) if f"FILLED-{i}" not in log]
    assert not missing and "GUEST-DONE" in log, f"guest jobs {missing} failed:\n{log[-3000:]}"
    shutil.rmtree(root)


# ------------------------------------------------------------ reading back
def without(tree: Path, delete: tuple[str, ...], out: Path) -> Path:
    """A copy of ``tree`` with the ``delete`` paths removed: what a volume should hold."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tree, out)
    for path in delete:
        target = out / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return out


def tsk_files(img: Path, out: Path, fstype: str | None = None, offset_sectors: int = 0) -> Path:
    """Every allocated file of the volume, read by The Sleuth Kit into ``out``
    (``tsk_recover -a``, plus the empty files it skips, listed by ``fls``)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    typed = ["-f", fstype] if fstype else []
    where = ["-o", str(offset_sectors)] if offset_sectors else []
    run("tsk_recover", *typed, *where, "-a", img, out)
    for line in run("fls", *typed, *where, "-r", "-p", "-u", "-F", img).splitlines():
        kind, _, path = line.partition("\t")
        if kind.startswith("r/r") and not Path(path).name.startswith("$"):
            target = out / path
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
    return out


# -------------------------------------------------------- ext4, NTFS, GPT
def make_ext4(img: Path, size: int, tree: Path, delete: tuple[str, ...] = (),
              options: tuple[str, ...] = ()) -> Path:
    """``mkfs.ext4 -d TREE`` (populated by e2fsprogs itself), then ``debugfs rm``."""
    run("mkfs.ext4", "-q", "-F", *options, "-d", tree, sparse_file(img, size))
    for path in delete:
        run("debugfs", "-w", "-R", f"{'rmdir' if (tree / path).is_dir() else 'rm'} /{path}",
            img)
    return img


def make_ntfs(img: Path, size: int, tree: Path, delete: tuple[str, ...] = ()) -> Path:
    """``mkntfs -Q``, the tree copied in through ntfs-3g (FUSE), then the deletions."""
    run("mkntfs", "-F", "-Q", "-q", sparse_file(img, size))
    mountpoint = img.parent / f"{img.name}.mnt"
    mountpoint.mkdir(exist_ok=True)
    run("ntfs-3g", img, mountpoint)
    try:
        shutil.copytree(tree, mountpoint, dirs_exist_ok=True)
        for path in delete:
            target = mountpoint / path
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    finally:
        run("umount", mountpoint)
    return img


def place(disk: Path, volume: Path, offset: int) -> None:
    """Copy the volume image into ``disk`` at byte ``offset`` (holes stay holes)."""
    with volume.open("rb") as src, disk.open("r+b") as dst:
        for start in range(0, volume.stat().st_size, 1 << 20):
            chunk = src.read(1 << 20)
            if chunk.count(0) != len(chunk):
                dst.seek(offset + start)
                dst.write(chunk)


def extract(disk: Path, offset: int, length: int, out: Path) -> Path:
    """Bytes ``[offset, offset + length)`` of ``disk`` as a file (for fsck tools)."""
    with disk.open("rb") as src, out.open("wb") as dst:
        src.seek(offset)
        for _ in range(0, length, 1 << 20):
            dst.write(src.read(min(1 << 20, length - dst.tell())))
    return out

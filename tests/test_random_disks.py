"""Random real disk layouts, backed up and checked against the truth (a seeded,
model-based check).

Each seed draws a disk (64-160 MiB, sparse): an MBR (sometimes with an extended
partition and logical partitions) or a GPT, made by ``sfdisk``, partitions of random
count, size, alignment (1 MiB or odd sectors) and gaps, sometimes 4 KiB logical
sectors (``losetup --sector-size 4096``).  Each partition gets a file system made by
the real tool with random non-default options (ext2/3/4, FAT12/16/32, exFAT, NTFS, XFS,
Btrfs), swap, or random bytes of no known type; every gap gets random bytes.  Each
file system is filled through its real driver (a kernel mount of a loop device,
ntfs-3g, exfat-fuse, mtools for FAT) with random files — many small, some sparse, some
in deep directories — some deleted, more written; the test keeps the SHA-256 of every
file it left (the model).

The disk is backed up and restored by the command line; the restored copy must hold:
every file the source holds (read by the same drivers, read-only; its paths must be the
model's) with the same SHA-256 and nothing else, a clean checker run (``e2fsck -fn``,
``xfs_repair -n``, …) wherever the source's was clean, the source's bytes in every unit
The Sleuth Kit's ``blkls -a`` calls allocated, and outside the file systems (tables,
gaps, swap, unknown partitions) every byte.  Then more random writes and an
incremental: point 1 must restore to exactly the files of the second state, and point 0
to the same bytes as before.

A few seeds run by default; ``BF_DISK_SEEDS=N`` runs seeds 0..N-1 (slow).
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sample_disks import MIB, MTOOLS_ENV, fat_files, run, sparse_file
from support import require_module, require_tools

#: the seeds run by default (about 5 s each); BF_DISK_SEEDS=N runs 0..N-1 instead (slow)
DEFAULT_SEEDS = (1, 2, 3)
SEEDS = ([pytest.param(s, marks=pytest.mark.slow) for s in range(int(os.environ["BF_DISK_SEEDS"]))]
         if os.environ.get("BF_DISK_SEEDS") else list(DEFAULT_SEEDS))
#: mkfs.xfs refuses volumes below 300 MB unless it believes it runs under xfstests
XFS_SMALL = {**os.environ, "TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}
#: smallest volume (MiB) per kind
MIN_MIB = {"ext": 6, "fat12": 2, "fat16": 12, "fat32": 40, "exfat": 6, "ntfs": 8, "xfs": 48,
           "btrfs": 40, "swap": 1, "unknown": 1}
#: MBR type and GPT type GUID per kind
MBR_TYPE = {"ext": "83", "xfs": "83", "btrfs": "83", "fat12": "1", "fat16": "6", "fat32": "c",
            "exfat": "7", "ntfs": "7", "swap": "82", "unknown": "da"}
GPT_TYPE = {"fat12": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "fat16": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "fat32": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "exfat": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "ntfs": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            "unknown": "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"}
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
#: kinds whose allocation The Sleuth Kit reads (blkls)
TSK_KINDS = ("ext", "fat12", "fat16", "fat32", "exfat", "ntfs")


@dataclass
class Part:
    """One partition of the plan: its kind, mkfs argv (device appended), mount options;
    where it lies once sfdisk made the table (bytes)."""

    kind: str
    mkfs: list[str]
    mount: list[str] = field(default_factory=list)
    start: int = 0
    size: int = 0
    checker_clean: bool = False


@dataclass
class Plan:
    table: str  # "dos" or "gpt"
    sector: int  # logical sector size, bytes
    size: int  # bytes
    script: str  # sfdisk's input
    parts: list[Part]


def _pick(rng: random.Random, options: dict[str, float]) -> str:
    return rng.choices(list(options), weights=list(options.values()))[0]


def _ext(rng: random.Random, sector: int, size: int) -> list[str]:
    """mkfs.ext2/3/4 with a random block size and features."""
    version = _pick(rng, {"ext2": 1, "ext3": 1, "ext4": 3})
    block = 4096 if sector == 4096 else rng.choice([1024, 2048, 4096])
    argv = [f"mkfs.{version}", "-q", "-F", "-b", str(block)]
    features: list[str] = []
    if version == "ext4":
        if rng.random() < 0.25 and size >= 32 * MIB:
            features.append("bigalloc")
            argv += ["-C", str(block * rng.choice([4, 16]))]
        elif rng.random() < 0.2:
            features += ["^extents", "^64bit"]
        if rng.random() < 0.3:
            features.append("inline_data")
            argv += ["-I", "256"]
        if rng.random() < 0.3:
            features.append("orphan_file")
        if rng.random() < 0.2:
            features.append("^metadata_csum")
    if version != "ext2" and "orphan_file" not in features and rng.random() < 0.2:
        features.append("^has_journal")
    if rng.random() < 0.2:
        features += ["meta_bg", "^resize_inode"]
    if rng.random() < 0.2:
        features.append("^dir_index")
    if rng.random() < 0.15:
        features += rng.choice([["sparse_super2"], ["^sparse_super", "^resize_inode"],
                                ["^flex_bg"]])
    if rng.random() < 0.15:
        argv += ["-N", str(rng.choice([64, 256, 20000 if size >= 64 * MIB else 1024]))]
    if rng.random() < 0.2:
        argv += ["-I", "128"] if "inline_data" not in features else []
    if features:
        argv += ["-O", ",".join(features)]
    return argv


def _fat(rng: random.Random, kind: str, size: int) -> list[str]:
    """mkfs.fat -F 12/16/32 with a cluster size giving that FAT type its cluster count."""
    bits = int(kind[3:])
    logical = 512  # mtools (which fills them) breaks volumes of larger sectors
    low, high = {12: (1, 4000), 16: (4200, 65000), 32: (66000, 1 << 28)}[bits]
    fits = [s for s in (1, 2, 4, 8, 16, 32, 64) if low <= size // (s * logical) <= high]
    argv = ["mkfs.fat", "-F", str(bits), "-S", str(logical)]
    if fits:
        argv += ["-s", str(rng.choice(fits))]
    if rng.random() < 0.3:
        argv += ["-f", "1"]
    if rng.random() < 0.2:
        argv.append("-a")
    if rng.random() < 0.3:
        argv += ["-R", str(rng.choice([2, 8, 32]) if bits != 32 else rng.choice([8, 32, 64]))]
    if rng.random() < 0.3 and bits != 32:
        argv += ["-r", str(rng.choice([16, 112, 512, 1024]))]
    return argv


def _kind_argv(rng: random.Random, kind: str, sector: int, size: int) -> tuple[list[str],
                                                                                  list[str]]:
    """(mkfs argv, mount options) for ``kind`` on a ``size``-byte volume."""
    if kind == "ext":
        return _ext(rng, sector, size), []
    if kind.startswith("fat"):
        return _fat(rng, kind, size), []
    if kind == "exfat":
        clusters = ["512", "4K", "8K", "32K", "128K", "1M"][sector == 4096:]  # >= a sector
        return ["mkfs.exfat", "-c", rng.choice(clusters)], []
    if kind == "ntfs":
        sec = max(sector, rng.choice([512, 512, 1024, 4096]))
        cluster = max(sec, rng.choice([512, 1024, 4096, 4096, 16384, 65536]))
        argv = ["mkntfs", "-F", "-Q", "-q", "-s", str(sec), "-c", str(cluster)]
        return argv + (["-z", str(rng.randint(1, 4))] if rng.random() < 0.3 else []), []
    if kind == "xfs":
        block = 4096 if sector == 4096 else rng.choice([1024, 2048, 4096])
        # the kernel here mounts no V4 (crc=0) XFS; a small volume's log is made big
        # enough for the kernel to mount it
        argv = ["mkfs.xfs", "-q", "-f", "-b", f"size={block}", "-l", "size=16m",
                "-m", f"reflink={rng.randint(0, 1)},rmapbt={rng.randint(0, 1)},"
                f"finobt={rng.randint(0, 1)}"]
        if rng.random() < 0.3:
            # an allocation group holds at least 16 MiB, and the 16 MiB log fits in one
            argv += ["-d", f"agcount={rng.randint(1, max(1, size // (20 * MIB)))}"]
        if rng.random() < 0.3:
            inode = rng.choice([s for s in (512, 1024, 2048) if s <= block // 2])
            argv += ["-i", f"size={inode},sparse={rng.randint(0, 1)}"]
        if rng.random() < 0.3:
            argv += ["-n", f"size={max(block, rng.choice([4096, 16384, 65536]))}"]
        if block == 4096 and rng.random() < 0.3:
            argv += ["-s", "size=4096"]
        return argv, []
    if kind == "btrfs":
        argv = ["mkfs.btrfs", "-q", "-f"]
        if size < 120 * MIB or rng.random() < 0.3:
            argv.append("--mixed")
        else:
            argv += ["--nodesize", str(rng.choice([4096, 16384, 65536])),
                     "-m", rng.choice(["single", "dup"])]
        if rng.random() < 0.4:
            argv += ["--csum", rng.choice(["crc32c", "xxhash", "sha256", "blake2"])]
        if rng.random() < 0.3:
            argv += ["-O", "^no-holes"]
        if rng.random() < 0.3:
            argv += ["-R", "^free-space-tree"]
        mount = [f"compress={rng.choice(['zstd', 'lzo', 'zlib'])}"] if rng.random() < 0.5 else []
        if rng.random() < 0.3:
            mount.append(f"max_inline={rng.choice([0, 2048])}")
        return argv, mount
    if kind == "swap":
        return ["mkswap"], []
    return [], []


def plan(seed: int) -> Plan:
    """The random layout of ``seed``: table, sector size, partitions and their mkfs."""
    rng = random.Random(seed)
    table = rng.choice(["dos", "gpt"])
    sector = 4096 if rng.random() < 0.2 else 512
    size = rng.randint(64, 160) * MIB
    logical = table == "dos" and rng.random() < 0.4
    count = rng.randint(1, 3) + (rng.randint(1, 3) if logical else 0) if table == "dos" \
        else rng.randint(1, 5)
    if table == "dos" and not logical:
        count = min(count, 4)
    primaries = min(count, rng.randint(1, 3)) if logical else count
    kinds = {"ext": 4, "fat12": 1, "fat16": 1, "fat32": 1, "exfat": 1, "ntfs": 2, "xfs": 2,
             "btrfs": 1, "swap": 0.5, "unknown": 0.5}
    if sector == 4096:  # mtools, which fills FAT here, writes broken volumes of 4 KiB sectors
        for kind in ("fat12", "fat16", "fat32"):
            kinds.pop(kind)
    end = size - (34 * 512 if sector == 512 else 6 * 4096) - 2 * MIB  # the backup GPT
    cursor = MIB
    parts: list[Part] = []
    lines = [f"label: {table}"]
    for i in range(count):
        if i == primaries and logical:
            cursor += rng.choice([0, MIB])
            lines.append(f"start={cursor // sector}, type=5")
            cursor += MIB  # room for the first EBR
        if rng.random() < 0.5:
            cursor = -(-cursor // MIB) * MIB  # aligned to 1 MiB
        else:
            cursor += rng.randint(1, 2047) * 512
        cursor += rng.choice([0, 0, rng.randint(1, 4) * MIB])
        cursor = -(-cursor // sector) * sector
        left = end - cursor
        fits = [k for k in kinds if MIN_MIB[k] * MIB <= left - MIB]
        if not fits:
            break
        kind = rng.choices(fits, weights=[kinds[k] for k in fits])[0]
        share = left // max(1, count - i)
        low = MIN_MIB[kind] * MIB
        high = min(left - MIB, max(low, share + rng.randint(0, share)))
        length = rng.randint(low // sector, high // sector) * sector
        if kind == "fat12":
            length = min(length, rng.randint(2, 15) * MIB)
        if kind == "fat16":
            length = min(length, 60 * MIB)
        mkfs, mount = _kind_argv(rng, kind, sector, length)
        parts.append(Part(kind, mkfs, mount))
        code = MBR_TYPE[kind] if table == "dos" else GPT_TYPE.get(kind, LINUX_DATA)
        lines.append(f"start={cursor // sector}, size={length // sector}, type={code}")
        cursor += length + (MIB if logical and i >= primaries else 0)  # the next EBR
    return Plan(table, sector, size, "\n".join(lines) + "\n", parts)


# ----------------------------------------------------------------- devices
@contextlib.contextmanager
def loop(image: Path, sector: int, offset: int = 0, size: int = 0,
         readonly: bool = False) -> Iterator[str]:
    """A loop device showing bytes ``[offset, offset + size)`` of ``image`` with logical
    sectors of ``sector`` bytes; detached on leaving."""
    argv = ["losetup", "-f", "--show", "--sector-size", str(sector), "-o", str(offset)]
    argv += (["--sizelimit", str(size)] if size else []) + (["-r"] if readonly else [])
    device = run(*argv, image).strip()
    try:
        yield device
    finally:
        _idle(device)
        run("losetup", "-d", device)


def _idle(device: str) -> None:
    """Wait until no process (a FUSE daemon finishing its unmount) holds ``device``."""
    deadline = time.monotonic() + 30
    while subprocess.run(["fuser", "-s", device], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{device} still busy"
        time.sleep(0.1)


@contextlib.contextmanager
def mounted(part: Part, device: str, where: Path, readonly: bool = False) -> Iterator[Path]:
    """The file system of ``part`` on ``device`` mounted on ``where`` by its driver."""
    where.mkdir(exist_ok=True)
    options = (["ro"] if readonly else []) + ([] if readonly else part.mount)
    if part.kind == "ntfs":
        argv = ["ntfs-3g", *(["-o", ",".join(options)] if options else []), device, where]
    elif part.kind == "exfat":
        argv = ["mount.exfat-fuse", *(["-o", ",".join(options)] if options else []), device,
                where]
    else:
        argv = ["mount", *(["-o", ",".join(options)] if options else []), device, where]
    run(*argv, timeout=120)
    try:
        yield where
    finally:
        run("umount", where, timeout=120)
        _idle(device)


# ------------------------------------------------------------ file systems
class Files:
    """Random writes to one file system (through a mount or mtools), and the model: the
    SHA-256 of every file that should be there, by path."""

    def __init__(self, rng: random.Random, part: Part, device: str, stage: Path):
        self.rng, self.part, self.device, self.stage = rng, part, device, stage
        self.budget = part.size * 4 // 10
        self.counter = 0

    def writes(self, model: dict[str, str], root: Path | None, count: int) -> None:
        """``count`` new files (stopping at the budget or a full volume)."""
        for _ in range(count):
            self.counter += 1
            depth = self.rng.choice([0, 0, 1, 1, 2, 3, 6])
            path = "/".join([f"d{self.rng.randint(0, 3)}" for _ in range(depth)]
                            + [f"f{self.counter}.bin"])
            roll = self.rng.random()
            size = (0 if roll < 0.05 else self.rng.randint(1, 4096) if roll < 0.55
                    else self.rng.randint(4096, 256 << 10) if roll < 0.9
                    else self.rng.randint(256 << 10, 3 << 20))
            if size > self.budget:
                return
            hole = self.rng.randint(1, 2 << 20) if self.rng.random() < 0.1 else 0
            data = self.rng.randbytes(size)
            if not self._put(root, path, hole, data):
                return
            self.budget -= size
            model[path] = hashlib.sha256(bytes(hole) + data).hexdigest()
            if root is not None:
                self._extra(model, root, path)

    def _extra(self, model: dict[str, str], root: Path, path: str) -> None:
        """Sometimes a hard link or a symbolic link to ``path``, an extended attribute,
        preallocated space past its end (where the file system has them)."""
        roll, target = self.rng.random(), root / path
        posix = self.part.kind in ("ext", "xfs", "btrfs")
        with contextlib.suppress(OSError):
            if roll < 0.05 and self.part.kind != "exfat":
                os.link(target, root / f"{path}.lnk")
                model[f"{path}.lnk"] = model[path]
            elif roll < 0.1 and self.part.kind != "exfat":
                os.symlink(target.name, root / f"{path}.sym")
                model[f"{path}.sym"] = f"symlink:{target.name}"
            elif roll < 0.15 and posix:
                os.setxattr(target, "user.x", self.rng.randbytes(self.rng.randint(1, 3000)))
            elif roll < 0.2 and posix:
                with target.open("r+b") as fh:
                    os.posix_fallocate(fh.fileno(), target.stat().st_size,
                                       self.rng.randint(1, 1 << 20))
        if roll < 0.2:  # a failed preallocation may leave some of it
            model[path] = hashlib.sha256(target.read_bytes()).hexdigest()

    def _put(self, root: Path | None, path: str, hole: int, data: bytes) -> bool:
        """Write ``data`` after ``hole`` zero bytes (a hole where the fs has them) to
        ``path``; False if the volume is full."""
        if root is None:  # FAT, through mtools
            local = self.stage / "put.bin"
            with local.open("wb") as fh:
                fh.write(bytes(hole) + data)
            parent = ""
            for name in path.split("/")[:-1]:
                parent += "/" + name
                subprocess.run(["mmd", "-D", "s", "-i", self.device, f"::{parent}"],
                               env=MTOOLS_ENV, capture_output=True)
            done = subprocess.run(["mcopy", "-o", "-i", self.device, local, f"::/{path}"],
                                  env=MTOOLS_ENV, capture_output=True, text=True)
            if done.returncode:
                subprocess.run(["mdel", "-i", self.device, f"::/{path}"], env=MTOOLS_ENV,
                               capture_output=True)
                return False
            return True
        target = root / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as fh:
                fh.seek(hole)
                fh.write(data)
        except OSError:
            target.unlink(missing_ok=True)
            return False
        return True

    def deletes(self, model: dict[str, str], root: Path | None, share: float) -> None:
        for path in sorted(model):
            if self.rng.random() < share:
                if root is None:
                    run("mdel", "-i", self.device, f"::/{path}", env=MTOOLS_ENV)
                else:
                    (root / path).unlink()
                del model[path]

    def changes(self, model: dict[str, str], root: Path | None) -> None:
        """Appends to and overwrites in place some files (mounted file systems only)."""
        if root is None:
            return
        for path in sorted(model):
            if self.rng.random() < 0.15 and not model[path].startswith("symlink:"):
                with contextlib.suppress(OSError), (root / path).open("r+b") as fh:
                    if self.rng.random() < 0.2:
                        fh.truncate(self.rng.randint(0, (root / path).stat().st_size))
                    fh.seek(self.rng.randint(0, (root / path).stat().st_size))
                    fh.write(self.rng.randbytes(self.rng.randint(1, 20000)))
        for path in sorted(model):  # hard links changed with their other names
            if not model[path].startswith("symlink:"):
                model[path] = hashlib.sha256((root / path).read_bytes()).hexdigest()


def read_back(part: Part, device: str, work: Path) -> dict[str, str]:
    """SHA-256 of every regular file of the file system on ``device``, by path (read
    read-only by its driver)."""
    if part.kind.startswith("fat"):
        out = work / "fat-out"
        subprocess.run(["rm", "-rf", out], check=True)
        root = fat_files(Path(device), out)
    else:
        root = work / "ro"
        with mounted(part, device, root, readonly=True):
            return _hashes(root)
    return _hashes(root)


def _hashes(root: Path) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for name in filenames:
            path = Path(dirpath, name)
            found[path.relative_to(root).as_posix()] = (
                f"symlink:{os.readlink(path)}" if path.is_symlink()
                else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def checker(part: Part, device: str) -> tuple[bool, str]:
    """The file system's own checker, read-only: (clean, its output)."""
    argv = {"ext": ["e2fsck", "-fn"], "xfs": ["xfs_repair", "-n"],
            "btrfs": ["btrfs", "check", "--readonly"], "exfat": ["fsck.exfat", "-n"],
            "ntfs": ["ntfsfix", "-n"]}.get(part.kind, ["fsck.fat", "-n"])
    done = subprocess.run([*argv, device], capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    clean = done.returncode == 0 and not (part.kind.startswith("fat") and "FIXED" in out.upper())
    return clean, out


def allocated_units(disk: Path, part: Part) -> tuple[int, np.ndarray] | None:
    """(unit size in bytes, allocated unit numbers) of ``part``'s file system by
    The Sleuth Kit, or None where it reads no file system there."""
    pytsk3 = require_module("pytsk3", "pytsk3")
    try:
        unit = pytsk3.FS_Info(pytsk3.Img_Info(str(disk)), offset=part.start).info.block_size
    except OSError:
        return None
    done = subprocess.run(["blkls", "-a", "-l", "-o", str(part.start // 512), str(disk)],
                          capture_output=True, text=True)
    if done.returncode:
        return None
    lines = done.stdout.splitlines()[3:]
    return unit, np.array([int(line.split("|")[0]) for line in lines], dtype=np.int64)


# -------------------------------------------------------------------- the disk
def build(seed: int, work: Path) -> tuple[Plan, Path, list[dict[str, str]], list[Files]]:
    """Make the disk of ``seed``: table, random bytes in gaps, file systems filled;
    the plan (partitions placed), the disk, the model per partition, the writers."""
    rng = random.Random(seed * 7919 + 1)
    made = plan(seed)
    disk = sparse_file(work / "disk.img", made.size)
    with disk.open("r+b") as fh:  # random bytes everywhere the table and mkfs leave alone
        for start in range(0, made.size, 4 * MIB):
            if rng.random() < 0.5:
                at = start + rng.randint(0, 3 * MIB)
                fh.seek(at)
                fh.write(rng.randbytes(max(0, min(rng.randint(1, MIB), made.size - at))))
    with loop(disk, made.sector) as device:  # sfdisk takes the sector size from it
        run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", device, input=made.script)
        listed = json.loads(run("sfdisk", "--json", device))
    placed = [p for p in listed["partitiontable"]["partitions"]
              if p["type"].lower() not in ("5", "f", "85")]
    assert len(placed) == len(made.parts), (listed, made.script)
    models: list[dict[str, str]] = []
    writers: list[Files] = []
    for i, (part, where) in enumerate(zip(made.parts, placed)):
        part.start, part.size = where["start"] * made.sector, where["size"] * made.sector
        model: dict[str, str] = {}
        with loop(disk, made.sector, part.start, part.size) as device:
            writer = Files(rng, part, device, work)
            if part.kind == "unknown":
                with open(device, "wb") as fh:
                    fh.write(rng.randbytes(part.size))
            elif part.mkfs:
                done = subprocess.run([*part.mkfs, device], capture_output=True, text=True,
                                      env=XFS_SMALL)
                assert done.returncode == 0, (part.mkfs, done.stderr)
            if part.kind not in ("swap", "unknown"):
                _fill(writer, model, device, work / f"m{i}")
                part.checker_clean = checker(part, device)[0]
        models.append(model)
        writers.append(writer)
    return made, disk, models, writers


def _fill(writer: Files, model: dict[str, str], device: str, where: Path,
          again: bool = False) -> None:
    """Write, delete, write more (fragmentation); with ``again``, also change files."""
    rng, writer.device = writer.rng, device
    if writer.part.kind.startswith("fat"):
        ctx: contextlib.AbstractContextManager[Path | None] = contextlib.nullcontext()
    else:
        ctx = mounted(writer.part, device, where)
    with ctx as root:
        writer.writes(model, root, rng.randint(5, 40))
        writer.deletes(model, root, 0.3)
        if again:
            writer.changes(model, root)
        writer.writes(model, root, rng.randint(5, 30))


def check_restored(made: Plan, source: Path, restored: Path, models: list[dict[str, str]],
                   work: Path) -> None:
    """The restored disk holds every file of the model and nothing else, checks clean
    where the source did, and equals the source in every allocated unit and outside the
    file systems."""
    assert restored.stat().st_size == source.stat().st_size
    src = np.memmap(source, dtype=np.uint8, mode="r")
    got = np.memmap(restored, dtype=np.uint8, mode="r")
    outside = np.ones(src.size, dtype=bool)
    for i, (part, model) in enumerate(zip(made.parts, models)):
        name = f"partition {i + 1} ({part.kind} {' '.join(part.mkfs[1:])})"
        if part.kind in ("swap", "unknown"):
            continue
        outside[part.start : part.start + part.size] = False
        with loop(source, made.sector, part.start, part.size, readonly=True) as device:
            truth = read_back(part, device, work)
        # the drivers' own view of the source is the truth; the model checks the test
        assert truth.keys() == model.keys(), name
        with loop(restored, made.sector, part.start, part.size, readonly=True) as device:
            assert read_back(part, device, work) == truth, name
            if part.checker_clean:
                clean, out = checker(part, device)
                assert clean, f"{name}: {out[-2000:]}"
        if part.kind in TSK_KINDS:
            units = allocated_units(source, part)
            if units is not None:
                unit, numbers = units
                numbers = numbers[(numbers + 1) * unit <= part.size]
                region = slice(part.start, part.start + part.size // unit * unit)
                a = src[region].reshape(-1, unit)[numbers]
                b = got[region].reshape(-1, unit)[numbers]
                bad = numbers[(a != b).any(axis=1)]
                assert bad.size == 0, f"{name}: allocated units differ: {bad[:20]}"
    differ = np.flatnonzero(outside & (src != got))
    assert differ.size == 0, f"bytes outside the file systems differ from {differ[0]}"


def bf(*args: object) -> str:
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("seed", SEEDS)
def test_random_disk(seed: int, tmp_path: Path) -> None:
    require_tools("sfdisk", "losetup", "fuser", "mkfs.ext4", "e2fsck", "mkfs.fat", "fsck.fat",
                  "mcopy", "mmd", "mdel", "mkfs.exfat", "fsck.exfat", "mount.exfat-fuse",
                  "mkntfs", "ntfs-3g", "ntfsfix", "mkfs.xfs", "xfs_repair", "mkfs.btrfs",
                  "btrfs", "mkswap", "blkls")
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    made, disk, models, writers = build(seed, tmp_path)
    chain = tmp_path / "chain"
    bf("backup", disk, chain)
    bf("restore", chain, tmp_path / "r0.img")
    check_restored(made, disk, tmp_path / "r0.img", models, tmp_path)
    for i, (part, model, writer) in enumerate(zip(made.parts, models, writers)):
        if part.kind not in ("swap", "unknown"):
            with loop(disk, made.sector, part.start, part.size) as device:
                writer.budget = part.size * 2 // 10
                _fill(writer, model, device, tmp_path / f"m{i}", again=True)
                part.checker_clean = checker(part, device)[0]
    bf("backup", disk, chain)
    bf("restore", chain, tmp_path / "r1.img", "--point", "1")
    check_restored(made, disk, tmp_path / "r1.img", models, tmp_path)
    bf("restore", chain, tmp_path / "r0-again.img", "--point", "0")  # point 0 unchanged
    assert filecmp.cmp(tmp_path / "r0.img", tmp_path / "r0-again.img", shallow=False)

"""A sample investigation: four days of backups of a small volume, one of them a ransomware burst.

:func:`build_investigation` makes a FAT32 (``mkfs.vfat`` + mtools) or ext4
(``mkfs.ext4`` + ``debugfs -w``) volume in a raw file and backs it up into a
chain after each "day" (only the blocks the file system allocates, as the
``backup`` command does):

====  =====  ================================================================
day   point  what happens
====  =====  ================================================================
1     0      initial tree: /docs (report, budget, letter), /notes/todo.txt,
             /archive.bin (already random: compressed-looking data)
2     1      /docs/report.txt grows (a paragraph appended); /docs/budget.csv
             edited with the same size
3     2      /docs/minutes.txt created; /docs/letter.txt deleted
4     3      the four text files overwritten with random bytes, same sizes
====  =====  ================================================================

Day 4 overwrites: on ext4 the file's own blocks are rewritten in place (found with
``debugfs blocks``), like ransomware encrypting through an open file; on FAT
``mcopy -o`` writes the new content to fresh clusters (mtools frees the old ones).

The returned ``truth`` lists, per point, every change the backups should reveal
(directories whose listings changed count as modified), from a model of the tree
kept alongside the tools — not from reading the volume.  Content is seeded; the
volumes are a few MiB of allocated data (FAT32 needs 65525 clusters, so its raw
file is 34 MiB, mostly never stored).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from blockforensics.allocation import allocation_map
from blockforensics.errors import UsageError
from blockforensics.formats.raw import RawDisk
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.tools import require

BLOCK_SIZE = 4096  # bytes per chain block
#: bytes of the raw volume: FAT32 with 512-byte clusters just above its 65525-cluster minimum
SIZES = {"fat32": 34 << 20, "ext4": 8 << 20}
DAY0 = 1_709_280_000  # 2024-03-01 08:00 UTC, seconds since the epoch
DAY = 86_400  # seconds
BACKUP_HOUR = 14 * 3600  # each day's backup runs 14 h after the day's first edit
TRUTH_COLUMNS = ["point", "day", "path", "type", "change", "encrypted"]

_WORDS = ["invoice", "quarter", "budget", "meeting", "report", "customer", "supplier",
          "travel", "audit", "forecast", "revenue", "project", "deadline", "review", "contract"]


@dataclass
class Investigation:
    """A built sample: the chain directory, the live volume's raw file, and the known history."""

    chain_dir: Path
    image: Path  # the volume as it is after day 4 (raw)
    fs: str  # "fat32" or "ext4"
    truth: pd.DataFrame  # TRUTH_COLUMNS: one row per change each point should show


def _text(rng: np.random.Generator, n_bytes: int) -> bytes:
    """Seeded English-looking text of exactly ``n_bytes`` bytes (entropy about 4 bits/byte)."""
    words = rng.choice(_WORDS, size=n_bytes // 4 + 8)
    return " ".join(words).encode()[:n_bytes]


class _Volume(ABC):
    """Edits a file-system image with real tools; subclasses speak mtools or debugfs."""

    root_entries: tuple[str, ...] = ("/",)

    def __init__(self, image: Path, scratch: Path, size: int):
        """An empty ``image`` of ``size`` bytes (sparse), for the subclass to format."""
        self.image = image
        self.scratch = scratch
        with image.open("wb") as fh:
            fh.truncate(size)

    def host_file(self, data: bytes, mtime: int) -> Path:
        path = self.scratch / "payload"
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        return path

    def run(self, *argv: str, **env: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True,
                              env={**os.environ, "MTOOLS_SKIP_CHECK": "1", **env})
        if done.returncode != 0 or "error" in done.stderr.lower():
            raise UsageError(f"{' '.join(argv[:3])}: {done.stderr.strip()}")
        return done.stdout

    @abstractmethod
    def mkdir(self, path: str, mtime: int) -> None: ...

    @abstractmethod
    def delete(self, path: str, mtime: int) -> None: ...

    def settle(self) -> None:  # noqa: B027 - a hook: tools that edit the image need none
        """Make every edit reach the image before it is backed up (a mount: unmount)."""


class _FatVolume(_Volume):
    def __init__(self, image: Path, scratch: Path, size: int):
        super().__init__(image, scratch, size)
        self.run(require("mkfs.vfat"), "-F", "32", "-s", "1", "--invariant", "-n", "EVIDENCE",
                 str(image))

    def mkdir(self, path: str, mtime: int) -> None:
        self.run(require("mmd"), "-i", str(self.image), f"::{path}")

    def write(self, path: str, data: bytes, mtime: int) -> None:
        self.run(require("mcopy"), "-o", "-m", "-i", str(self.image),
                 str(self.host_file(data, mtime)), f"::{path}")

    overwrite = write  # mcopy -o: new clusters, old ones freed

    def delete(self, path: str, mtime: int) -> None:
        self.run(require("mdel"), "-i", str(self.image), f"::{path}")

    def rmdir(self, path: str, mtime: int) -> None:
        self.run(require("mrd"), "-i", str(self.image), f"::{path}")

    def rename(self, path: str, new_path: str, mtime: int) -> None:
        self.run(require("mren"), "-i", str(self.image), f"::{path}", f"::{new_path}")


def _quoted(path: str) -> str:
    """``path`` as one argument of a debugfs request (which splits on blanks)."""
    if '"' in path:
        raise ValueError(f"debugfs cannot name a path holding a double quote: {path!r}")
    return f'"{path}"'


class _ExtVolume(_Volume):
    root_entries = ("/", "/lost+found")

    def __init__(self, image: Path, scratch: Path, size: int):
        super().__init__(image, scratch, size)
        self.run(require("mkfs.ext4"), "-q", "-F", "-b", "4096", "-N", "128", "-O", "^has_journal",
                 "-U", "42464f52-0000-4000-8000-000000000001",
                 "-E", "hash_seed=42464f52-0000-4000-8000-000000000002", "-L", "evidence",
                 str(self.image), E2FSPROGS_FAKE_TIME=str(DAY0))

    def debugfs(self, *commands: str) -> str:
        """Run each command with ``debugfs -w -R``; their outputs, joined."""
        return "".join(self.run(require("debugfs"), "-w", "-R", command, str(self.image))
                       for command in commands)

    def mkdir(self, path: str, mtime: int) -> None:
        self.debugfs(f"mkdir {_quoted(path)}", *self.born(path, mtime))

    def write(self, path: str, data: bytes, mtime: int) -> None:
        host = self.host_file(data, mtime)
        name = _quoted(path)
        self.debugfs(*([f"rm {name}"] if self.exists(path) else []), f"write {host} {name}",
                     *self.born(path, mtime))

    @staticmethod
    def born(path: str, when: int) -> tuple[str, ...]:
        """debugfs commands dating a new inode at the history's time ``when``: debugfs
        stamps birth and change times with the wall clock of the build, so that an inode
        freed and reused by the next file in the same second would look like a rename."""
        return tuple(f"sif {_quoted(path)} {field} @{when}"
                     for field in ("mtime", "ctime", "crtime"))

    def exists(self, path: str) -> bool:
        return "File not found" not in subprocess.run(
            [require("debugfs"), "-R", f"stat {_quoted(path)}", str(self.image)],
            capture_output=True, text=True).stderr

    def overwrite(self, path: str, data: bytes, mtime: int) -> None:
        """Rewrite the file's own blocks in place (its size unchanged), then its mtime."""
        blocks = [int(b) for b in self.debugfs(f"blocks {_quoted(path)}").split()]
        with self.image.open("r+b") as fh:
            for i, block in enumerate(blocks):
                fh.seek(block * 4096)
                fh.write(data[i * 4096 : (i + 1) * 4096])
        self.debugfs(f"sif {_quoted(path)} mtime @{mtime}")

    def delete(self, path: str, mtime: int) -> None:
        self.debugfs(f"rm {_quoted(path)}")

    def rmdir(self, path: str, mtime: int) -> None:
        self.debugfs(f"rmdir {_quoted(path)}")

    def rename(self, path: str, new_path: str, mtime: int) -> None:
        """A new name for the same inode (link, then unlink the old name), as rename(2)."""
        old, new = _quoted(path), _quoted(new_path)
        self.debugfs(f"ln {old} {new}", f"unlink {old}", f"sif {new} ctime @{mtime}")


class _MountedVolume(_Volume):
    """A volume the kernel (or ntfs-3g) mounts, edited through the mount as programs
    do; mounted at the first operation, unmounted by :meth:`settle` (needs root)."""

    root_entries = ("/",)
    mkfs: tuple[str, ...]
    mount: tuple[str, ...]
    #: the smallest volume the mkfs accepts, bytes
    min_size = 0

    def __init__(self, image: Path, scratch: Path, size: int):
        super().__init__(image, scratch, max(size, self.min_size))
        self.run(require(self.mkfs[0]), *self.mkfs[1:], str(image))
        self.mountpoint = scratch / "mnt"
        self.mountpoint.mkdir()
        self.mounted = False

    def at(self, path: str, mtime: int | None = None) -> Path:
        """``path`` under the mount point (mounted first if need be)."""
        if not self.mounted:
            self.run(require(self.mount[0]), *self.mount[1:], str(self.image),
                     str(self.mountpoint))
            self.mounted = True
        return self.mountpoint / path.lstrip("/")

    def settle(self) -> None:
        if self.mounted:
            self.run(require("umount"), str(self.mountpoint))
            self.mounted = False

    def mkdir(self, path: str, mtime: int) -> None:
        self.at(path).mkdir()

    def write(self, path: str, data: bytes, mtime: int) -> None:
        target = self.at(path)
        target.write_bytes(data)
        os.utime(target, (mtime, mtime))

    def overwrite(self, path: str, data: bytes, mtime: int) -> None:
        """Rewrite the file's bytes through its open inode, its size unchanged."""
        target = self.at(path)
        with target.open("r+b") as fh:
            fh.write(data)
        os.utime(target, (mtime, mtime))

    def delete(self, path: str, mtime: int) -> None:
        self.at(path).unlink()

    def rmdir(self, path: str, mtime: int) -> None:
        self.at(path).rmdir()

    def rename(self, path: str, new_path: str, mtime: int) -> None:
        self.at(path).rename(self.at(new_path))


class _NtfsVolume(_MountedVolume):
    mkfs = ("mkntfs", "-F", "-Q", "-q")
    mount = ("ntfs-3g",)


class _XfsVolume(_MountedVolume):
    mkfs = ("mkfs.xfs", "-q", "-f")
    mount = ("mount", "-t", "xfs", "-o", "loop")
    min_size = 300 << 20


class _BtrfsVolume(_MountedVolume):
    mkfs = ("mkfs.btrfs", "-q", "-f")
    mount = ("mount", "-t", "btrfs", "-o", "loop")
    min_size = 128 << 20


VOLUMES: dict[str, type[_Volume]] = {"fat32": _FatVolume, "ext4": _ExtVolume,
                                     "ntfs": _NtfsVolume, "xfs": _XfsVolume,
                                     "btrfs": _BtrfsVolume}


@dataclass
class _Site:
    """Where a sample is built: its volume's kind, the raw file ``directory/volume.img``
    and the chain ``directory/chain`` (created), which the samples back the volume up
    into, one point a simulated day."""

    volume: type[_Volume]
    image: Path
    chain: Chain

    @classmethod
    def make(cls, directory: str | os.PathLike[str], fs: str) -> _Site:
        if fs not in VOLUMES:
            raise UsageError(f"fs must be one of {sorted(VOLUMES)}, not {fs!r}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(VOLUMES[fs], directory / "volume.img", Chain.create(directory / "chain"))

    def back_up(self, day: int) -> int:
        """Back up the volume's allocated blocks as the point of ``day`` (1-based), dated
        ``BACKUP_HOUR`` after the day began; the point's index."""
        with RawDisk(self.image, BLOCK_SIZE) as disk:
            return backup(self.chain, disk, only=allocation_map(disk),
                          created_ns=(day_start(day) + BACKUP_HOUR) * 10**9, label=f"day {day}")


def day_start(day: int) -> int:
    """Seconds since the epoch at which simulated ``day`` (1-based) begins."""
    return DAY0 + (day - 1) * DAY


def _history(rng: np.random.Generator) -> list[list[tuple]]:
    """The four days as lists of ``(operation, path, data)``; sizes in bytes."""
    report, budget = _text(rng, 9000), _text(rng, 4500)
    edited_budget = bytearray(budget)
    edited_budget[100:140] = _text(rng, 40)
    texts = {"/docs/report.txt": report + b"\n" + _text(rng, 1800),
             "/docs/budget.csv": bytes(edited_budget), "/notes/todo.txt": _text(rng, 2500),
             "/docs/minutes.txt": _text(rng, 6000)}
    return [
        [("mkdir", "/docs", None), ("mkdir", "/notes", None),
         ("write", "/docs/report.txt", report), ("write", "/docs/budget.csv", budget),
         ("write", "/docs/letter.txt", _text(rng, 3000)),
         ("write", "/notes/todo.txt", texts["/notes/todo.txt"]),
         ("write", "/archive.bin", rng.bytes(20000))],
        [("write", "/docs/report.txt", texts["/docs/report.txt"]),
         ("write", "/docs/budget.csv", texts["/docs/budget.csv"])],
        [("write", "/docs/minutes.txt", texts["/docs/minutes.txt"]),
         ("delete", "/docs/letter.txt", None)],
        [("overwrite", path, rng.bytes(len(data))) for path, data in sorted(texts.items())],
    ]


def _expected(before: dict[str, str], after: dict[str, str], modified: set[str]
              ) -> list[tuple[str, str, str]]:
    """``(path, type, change)`` between two trees (path -> type): directories whose
    listings changed count as modified, files as given."""
    def listing(tree: dict[str, str], directory: str) -> set[str]:
        return {p for p in tree if p != directory and os.path.dirname(p) == directory}

    rows = [(p, after[p], "created") for p in after.keys() - before.keys()]
    rows += [(p, before[p], "deleted") for p in before.keys() - after.keys()]
    rows += [(p, "file", "modified") for p in modified]
    rows += [(p, "dir", "modified") for p in before.keys() & after.keys()
             if after[p] == "dir" and listing(before, p) != listing(after, p)]
    return sorted(rows)


def build_investigation(directory: str | os.PathLike[str], fs: str = "fat32", seed: int = 0
                        ) -> Investigation:
    """Build the sample in ``directory`` (created; must be new or empty): ``chain/`` and
    ``volume.img``.  Needs mtools + dosfstools (fat32) or e2fsprogs (ext4)."""
    if fs not in SIZES:
        raise UsageError(f"fs must be one of {sorted(SIZES)}, not {fs!r}")
    site = _Site.make(directory, fs)
    rng = np.random.default_rng(seed)
    truth = []
    with tempfile.TemporaryDirectory() as scratch:
        volume = site.volume(site.image, Path(scratch), SIZES[fs])
        before: dict[str, str] = {}  # the tree at the previous point: at first, no volume
        tree = dict.fromkeys(volume.root_entries, "dir")
        for day, operations in enumerate(_history(rng), start=1):
            start = day_start(day)
            modified = set()
            overwritten = {path for operation, path, _ in operations if operation == "overwrite"}
            for minute, (operation, path, data) in enumerate(operations):
                mtime = start + 60 * minute
                if operation == "mkdir":
                    volume.mkdir(path, mtime)
                    tree[path] = "dir"
                elif operation == "delete":
                    volume.delete(path, mtime)
                    del tree[path]
                else:
                    getattr(volume, operation)(path, data, mtime)
                    if path in tree:
                        modified.add(path)
                    tree[path] = "file"
            point = site.back_up(day)
            truth += [(point, day, path, kind, change, path in overwritten)
                      for path, kind, change in _expected(before, tree, modified)]
            before = dict(tree)
    site.chain.close()
    return Investigation(site.chain.directory, site.image, fs,
                         pd.DataFrame(truth, columns=TRUTH_COLUMNS))

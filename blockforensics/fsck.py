"""Check a point's file systems without restoring it: each partition is served read-only
(FUSE, ``partN.raw`` beside ``disk.raw``, for every partition of an MBR — logical ones
included — or GPT table, ``VG-LV.raw`` for every LVM2 logical volume) and handed to its
file-system checker in no-change mode — ``fsck.fat -n``, ``e2fsck -f -n``,
``fsck.exfat -n``, ``ntfsfix -n``, ``xfs_repair -n``, ``btrfs check --readonly`` — one
result per partition (or for the whole disk when it has no partition table).

What a partition holds is decided by its signature; when its structures no longer hold
together, by the magic bytes alone; when even those are gone (a wiped superblock or boot
sector), by the partition type when that names one family (Linux data: ext; the FAT
types and the EFI system partition: FAT), so that a destroyed file system is checked, and
fails, rather than being passed over as unknown.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockforensics.formats.base import Disk
from blockforensics.fs.mbr import Partition
from blockforensics.tools import PACKAGES, which

#: the checker of each file-system family, in read-only (no change) mode
CHECKERS = {"fat": ["fsck.fat", "-n"], "ext": ["e2fsck", "-f", "-n"],
            "exfat": ["fsck.exfat", "-n"], "ntfs": ["ntfsfix", "-n"],
            "xfs": ["xfs_repair", "-n", "-f"],  # -f: an image file, not a device
            "btrfs": ["btrfs", "check", "--readonly"]}
#: seconds a checker may take
CHECK_TIMEOUT = 600
#: (family, byte offset, magic): what a file system's first bytes still say when its
#: structures fail their checks; also names families without a checker here
SIGNATURES = (("ext", 0x438, b"\x53\xef"), ("ntfs", 3, b"NTFS    "),
              ("exfat", 3, b"EXFAT   "), ("fat", 0x52, b"FAT32   "), ("fat", 0x36, b"FAT1"),
              ("xfs", 0, b"XFSB"), ("btrfs", 0x10040, b"_BHRfS_M"),
              ("swap", 4086, b"SWAPSPACE2"), ("luks", 0, b"LUKS\xba\xbe"))
#: partition types that name one file-system family (MBR type bytes, GPT type GUIDs)
TYPE_FAMILIES: dict[int | str, str] = {
    **dict.fromkeys((0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0xEF), "fat"), 0x83: "ext",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "fat",  # EFI system partition
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "ext",  # Linux file-system data
}


@dataclass
class FsCheck:
    """One file system's check: where, what, and what its checker said."""

    file: str  # the served file checked: partN.raw or disk.raw
    start_byte: int
    filesystem: str | None  # "fat16", "ext4", "ntfs" … or None (not recognised)
    ok: bool | None  # None: not checked (no checker for it, or none installed)
    command: list[str] = field(default_factory=list)
    output: str = field(default="", repr=False)
    note: str = ""  # why it was not checked, or how its file system was found

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "start_byte": self.start_byte,
                "filesystem": self.filesystem, "ok": self.ok, "command": self.command,
                "output": self.output, "note": self.note}

    def __str__(self) -> str:
        verdict = {True: "clean", False: "ERRORS", None: "not checked"}[self.ok]
        tool = f" ({' '.join(self.command)})" if self.command else ""
        note = f": {self.note}" if self.ok is None else f"; {self.note}" if self.note else ""
        return f"{self.file} at byte {self.start_byte}: {self.filesystem or 'unknown'}: " \
               f"{verdict}{tool}{note}"


@dataclass
class FsReport:
    """The checks of a point's file systems, one per partition, and notes on its table."""

    table: str  # "gpt", "mbr" or "none"
    checks: list[FsCheck]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False when a checker found errors (not checked counts as no error)."""
        return all(check.ok is not False for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "ok": self.ok, "notes": self.notes,
                "checks": [check.to_json() for check in self.checks]}

    def __str__(self) -> str:
        return "\n".join([*(f"partition table: {note}" for note in self.notes),
                          *map(str, self.checks)])


def _kind(disk: Disk, part: Partition | None) -> tuple[str | None, str]:
    """What the partition (None: the whole disk) holds, and how that was found when not
    by a reader: "ext4", "fat32", "ntfs" … by its signature; a family ("ext", "fat" …) by
    magic bytes alone or by the partition type; None when nothing says."""
    from blockforensics.allocation import detect

    disk, offset = (disk, 0) if part is None else part.view(disk)  # a volume: its own bytes
    found = detect(disk, offset)
    if found not in (None, "mbr", "gpt"):
        return found, ""
    for name, at, magic in SIGNATURES:
        if disk.read(offset + at, len(magic)) == magic:
            return name, f"{name} signature, structures not recognised"
    family = None if part is None else TYPE_FAMILIES.get(part.type)
    if part is None or family is None:
        return None, ""
    return family, f"no file-system signature; checked as {family} for its type " \
                   f"{part.type_name}"


def _check(disk: Disk, mountpoint: Path, name: str, part: Partition | None) -> FsCheck:
    """Run the checker of what ``part`` holds on its served file ``name``."""
    start = 0 if part is None else part.start_byte
    kind, how = _kind(disk, part)
    if kind is None:
        return FsCheck(name, start, None, None, note="no file system recognised")
    checker = CHECKERS.get(kind.rstrip("0123456789"))
    if checker is None:
        return FsCheck(name, start, kind, None, note=f"no checker for {kind}")
    if which(checker[0]) is None:
        return FsCheck(name, start, kind, None, note=f"{checker[0]} not installed "
                       f"(Debian: {PACKAGES.get(checker[0], checker[0])})")
    try:
        done = subprocess.run([*checker, str(mountpoint / name)], capture_output=True,
                              text=True, timeout=CHECK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return FsCheck(name, start, kind, False, [*checker, name],
                       note=f"{checker[0]} did not finish in {CHECK_TIMEOUT} s")
    return FsCheck(name, start, kind, done.returncode == 0, [*checker, name],
                   done.stdout + done.stderr, how)


def check_filesystems(disk: Disk) -> FsReport:
    """Run each partition's file-system checker, read-only, on its served ``partN.raw``
    (``disk.raw`` for a disk without a partition table or with an unreadable one)."""
    from blockforensics.expose import exposed, partition_files

    table, files, notes = partition_files(disk)
    targets: list[tuple[str, Partition | None]] = [(f.name, f.partition) for f in files]
    with tempfile.TemporaryDirectory(prefix="bf-fsck-") as work:
        mountpoint = Path(work, "mnt")
        mountpoint.mkdir()
        with exposed(disk, mountpoint, partitions=True):
            checks = [_check(disk, mountpoint, name, part)
                      for name, part in targets or [("disk.raw", None)]]
    return FsReport(table, checks, notes)

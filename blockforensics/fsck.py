"""Check a point's file systems without restoring it: each partition is served read-only
(FUSE, ``partN.raw`` beside ``disk.raw``) and handed to its file-system checker in
no-change mode — ``fsck.fat -n``, ``fsck.ext4 -n -f``, ``ntfsfix -n`` — one result per
partition (or for the whole disk when it has no partition table).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockforensics.formats.base import Disk
from blockforensics.tools import which

#: the checker of each file-system family, in read-only (no change) mode
CHECKERS = {"fat": ["fsck.fat", "-n"], "ext": ["fsck.ext4", "-n", "-f"],
            "ntfs": ["ntfsfix", "-n"]}
#: seconds a checker may take
CHECK_TIMEOUT = 600


@dataclass
class FsCheck:
    """One file system's check: where, what, and what its checker said."""

    file: str  # the served file checked: partN.raw or disk.raw
    start_byte: int
    filesystem: str | None  # "fat16", "ext4", "ntfs" … or None (not recognised)
    ok: bool | None  # None: not checked (no checker for it, or none installed)
    command: list[str] = field(default_factory=list)
    output: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "start_byte": self.start_byte,
                "filesystem": self.filesystem, "ok": self.ok, "command": self.command,
                "output": self.output}

    def __str__(self) -> str:
        verdict = {True: "clean", False: "ERRORS", None: "not checked"}[self.ok]
        tool = f" ({' '.join(self.command)})" if self.command else ""
        return f"{self.file} at byte {self.start_byte}: {self.filesystem or 'unknown'}: " \
               f"{verdict}{tool}"


def _kind(disk: Disk, offset: int) -> str | None:
    from blockforensics.allocation import detect

    found = detect(disk, offset)
    if found is None and disk.read(offset + 3, 4) == b"NTFS":
        return "ntfs"
    return None if found == "mbr" else found


def check_filesystems(disk: Disk) -> list[FsCheck]:
    """Run each recognised file system's checker, read-only, on the served disk."""
    from blockforensics.expose import exposed, served_files

    files = served_files(disk, partitions=True)
    parts = {name: served.start for name, served in files.items() if name.startswith("part")}
    if not parts:
        parts = {"disk.raw": 0}
    results = []
    with tempfile.TemporaryDirectory(prefix="bf-fsck-") as work:
        mountpoint = Path(work, "mnt")
        mountpoint.mkdir()
        with exposed(disk, mountpoint, partitions=True):
            for name, start in parts.items():
                kind = _kind(disk, start)
                checker = CHECKERS.get((kind or "").rstrip("0123456789"))
                if checker is None or which(checker[0]) is None:
                    results.append(FsCheck(name, start, kind, None))
                    continue
                command = [*checker, str(mountpoint / name)]
                done = subprocess.run(command, capture_output=True, text=True,
                                      timeout=CHECK_TIMEOUT, check=False)
                results.append(FsCheck(name, start, kind, done.returncode == 0,
                                       [*checker, name], done.stdout + done.stderr))
    return results

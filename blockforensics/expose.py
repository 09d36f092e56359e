"""Expose a Disk as read-only virtual disk files over FUSE: ``MOUNTPOINT/disk.vhd``,
``disk.vhdx``, ``disk.vmdk``, ``disk.raw`` and a ``partN.raw`` per partition.

Each file is synthesised on the fly by its format's
:class:`~blockforensics.formats.layout.FileLayout`: nothing is converted up
front, each read is served from the source disk (a backup chain point, a raw
image …).  A hypervisor boots any of them like the file it looks like (through
a qcow2 overlay, since the files are read-only).  The bytes of ``disk.vhd`` are
exactly those :func:`~blockforensics.formats.vhd.write_vhd` would write for the
same ``unique_id`` and ``timestamp``.

FUSE runs single-threaded, so a Disk need not be thread-safe.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mfusepy

from blockforensics.errors import BlockforensicsError, FormatError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout
from blockforensics.formats.vhd import VhdLayout
from blockforensics.fs.mbr import Partition
from blockforensics.tools import require

FILE_NAME = "disk.vhd"
READ_AHEAD = 4 << 20  # bytes read at once for a sequential reader
LOOP_ENDED = "8"  # fuse_main's status when its loop returned an error


@dataclass(frozen=True)
class Served:
    """A file of the mount: bytes ``start .. start+size`` of a layout's file."""

    layout: FileLayout
    start: int = 0
    size: int | None = None  # default: to the layout's end

    @property
    def length(self) -> int:
        return self.layout.file_size - self.start if self.size is None else self.size

    def readinto(self, offset: int, out: memoryview) -> int:
        n = max(0, min(len(out), self.length - offset))
        return self.layout.readinto(self.start + offset, out[:n])


@dataclass(frozen=True)
class PartitionFile:
    """A partition served as ``name`` (``partN.raw``): ``length`` bytes from its start,
    the table's length cut at the end of the image."""

    name: str
    partition: Partition
    length: int


def partition_files(disk: Disk) -> tuple[str, list[PartitionFile], list[str]]:
    """``(table, files, notes)``: the disk's table ("gpt", "mbr" or "none", as
    :func:`~blockforensics.allocation.partition_table` reads it), a ``partN.raw`` for
    each of its partitions (N as the table numbers it: MBR primaries 1-4 and logical
    partitions from 5, GPT entry numbers; never an extended partition, nor a protective
    MBR's 0xEE entry) and what was noticed: a table that cannot be read, or whose
    blocks fail their checks (no partition served; ``disk.raw`` still is, with EIO for
    the damaged blocks), a partition starting past the end of the image (not served)
    or cut off by it (served up to it)."""
    from blockforensics.allocation import partition_table
    from blockforensics.fs.gpt import looks_like_gpt

    try:
        table, found, table_notes = partition_table(disk)
    except FormatError as exc:
        kind = "GPT" if looks_like_gpt(disk) else "MBR"
        return kind.lower(), [], [f"unreadable {kind} partition table: {exc}"]
    except (BlockforensicsError, RuntimeError) as exc:  # pytsk3 wraps a damaged block's
        return "none", [], [f"partition table not read: {exc}"]  # error in RuntimeError
    files, notes = [], list(table_notes)
    for part in found:
        if part.kind == "extended":
            continue
        end = part.start_byte + part.length_bytes
        if part.start_byte >= disk.size:
            notes.append(f"partition {part.index} starts past the end of the image "
                         f"({disk.size} bytes): not served")
            continue
        if end > disk.size:
            notes.append(f"partition {part.index} runs past the end of the image at byte "
                         f"{disk.size}: served up to there")
        files.append(PartitionFile(f"part{part.index}.raw", part,
                                   min(end, disk.size) - part.start_byte))
    return table, files, notes


def served_files(disk: Disk, *, unique_id: bytes | None = None,
                 timestamp: datetime | None = None, partitions: bool = True
                 ) -> dict[str, Served]:
    """The mount's files: the disk as ``disk.vhd`` (pinned by ``unique_id`` and
    ``timestamp``), ``disk.vhdx``, ``disk.vmdk`` and ``disk.raw``; with ``partitions``,
    each partition's bytes as ``partN.raw`` (see :func:`partition_files`)."""
    from blockforensics.export import layout

    raw = layout(disk, "raw")
    files = {FILE_NAME: Served(VhdLayout(disk, "dynamic", unique_id=unique_id,
                                         timestamp=timestamp)),
             "disk.vhdx": Served(layout(disk, "vhdx")),
             "disk.vmdk": Served(layout(disk, "vmdk", "disk.vmdk")),
             "disk.raw": Served(raw)}
    if partitions:
        for part in partition_files(disk)[1]:
            files[part.name] = Served(raw, part.partition.start_byte, part.length)
    return files


class ImageFileSystem(mfusepy.Operations):
    """A read-only directory of virtual disk files, each read through a FileLayout."""

    use_ns = True

    def __init__(self, files: dict[str, Served]):
        self.files = files
        self._mtime_ns = time.time_ns()
        self._ahead = bytearray(READ_AHEAD)  # bytes read ahead, of file _ahead_name
        self._ahead_name, self._ahead_at, self._ahead_len = "", 0, 0
        self._next = -1  # where a sequential reader's next read starts

    def _file(self, path: str) -> Served:
        served = self.files.get(path.lstrip("/"))
        if served is None or "/" in path.lstrip("/"):
            raise mfusepy.FuseOSError(errno.ENOENT)
        return served

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        times = {"st_atime": self._mtime_ns, "st_mtime": self._mtime_ns,
                 "st_ctime": self._mtime_ns}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, **times}
        size = self._file(path).length
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size,
                "st_blocks": -(-size // 512), **times}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.files]

    def open(self, path: str, flags: int) -> int:
        self._file(path)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes | ctypes.Array:
        """The kernel asks for 128 KiB at a time; a sequential reader (qemu-img, a copy)
        is served from ``READ_AHEAD`` bytes read at once, which costs one trip through
        the chain's index instead of 32, and handed over without a copy (a ctypes view
        that mfusepy moves straight into the kernel's buffer).  Scattered reads (a
        booting guest) read just what they ask."""
        served = self._file(path)
        sequential, self._next = offset == self._next, offset + size
        start = offset - self._ahead_at
        if path != self._ahead_name or start < 0 or start + size > self._ahead_len:
            try:
                if not sequential or size >= READ_AHEAD:
                    out = bytearray(max(0, min(size, served.length - offset)))
                    served.readinto(offset, memoryview(out))
                    return bytes(out)
                self._ahead_name, self._ahead_at, self._ahead_len, start = path, offset, 0, 0
                self._ahead_len = served.readinto(offset, memoryview(self._ahead))
            except BlockforensicsError as exc:  # a damaged block: the reader gets EIO
                print(f"blockforensics: error: {exc}", file=sys.stderr, flush=True)
                raise mfusepy.FuseOSError(errno.EIO) from exc
        return (ctypes.c_char * max(0, min(size, self._ahead_len - start))).from_buffer(
            self._ahead, start)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        raise mfusepy.FuseOSError(errno.EROFS)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        raise mfusepy.FuseOSError(errno.EROFS)


def check_mountpoint(mountpoint: Path) -> None:
    """UsageError unless ``mountpoint`` is an empty directory with nothing mounted on it
    (files there would be hidden while the disk files are served)."""
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint}: mount point is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint}: something is already mounted there")
    if any(mountpoint.iterdir()):
        raise UsageError(f"{mountpoint}: mount point is not empty")


def mount(disk: Disk, mountpoint: str | os.PathLike[str], *, foreground: bool = True,
          unique_id: bytes | None = None, timestamp: datetime | None = None,
          partitions: bool = True) -> None:
    """Serve ``disk`` as ``MOUNTPOINT/disk.vhd`` (and the files of :func:`served_files`)
    until unmounted.

    In the foreground this blocks; Ctrl-C (SIGINT), SIGTERM or SIGHUP, or
    ``fusermount3 -u MOUNTPOINT``, unmounts and returns.  ``foreground=False``
    lets libfuse daemonise (the calling process exits once the mount is up):
    meant for the command line only.
    """
    mountpoint = Path(mountpoint)
    check_mountpoint(mountpoint)
    files = served_files(disk, unique_id=unique_id, timestamp=timestamp, partitions=partitions)
    # libfuse installs its unmount-and-exit handlers only over default dispositions
    restore: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            restore[sig] = signal.signal(sig, signal.SIG_DFL)
    try:
        mfusepy.FUSE(ImageFileSystem(files), str(mountpoint), foreground=foreground,
                     nothreads=True, ro=True, fsname="blockforensics", subtype="vhd")
    except RuntimeError as exc:
        # libfuse's fuse_main returns 8 when its loop ended with an error, which newer
        # libfuse reports for a loop ended by SIGINT/SIGTERM: a clean unmount all the same
        if str(exc) != LOOP_ENDED or _mounted(mountpoint):
            raise
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)


def _mounted(mountpoint: Path) -> bool:
    """True while a FUSE file system is mounted at ``mountpoint`` (per /proc/mounts)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == target for line in fh)


@contextmanager
def exposed(disk: Disk, mountpoint: str | os.PathLike[str], *, timeout: float = 10.0,
            unique_id: bytes | None = None, timestamp: datetime | None = None,
            partitions: bool = True) -> Iterator[Path]:
    """Mount ``disk`` in a child process for the duration of a ``with`` block.

    Yields the path of ``disk.vhd``; on exit unmounts (``fusermount3 -u``) and
    reaps the child, leaving no stale mount.  For notebooks and tests.
    """
    fusermount = require("fusermount3")
    mountpoint = Path(mountpoint)
    # fork: the child inherits the disk as is (open files included), no pickling
    child = multiprocessing.get_context("fork").Process(
        target=mount, args=(disk, mountpoint),
        kwargs={"unique_id": unique_id, "timestamp": timestamp, "partitions": partitions},
        daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + timeout
        while not _mounted(mountpoint):
            if not child.is_alive():
                raise UsageError(f"{mountpoint}: FUSE mount failed (exit code {child.exitcode})")
            if time.monotonic() > deadline:
                raise UsageError(f"{mountpoint}: FUSE mount not up after {timeout} s")
            time.sleep(0.02)
        yield mountpoint / FILE_NAME
    finally:
        if _mounted(mountpoint):
            subprocess.run([fusermount, "-u", str(mountpoint)], capture_output=True)
        child.join(timeout)
        if child.is_alive():  # busy or wedged: force it
            child.kill()
            child.join()
        if _mounted(mountpoint):
            subprocess.run([fusermount, "-u", "-z", str(mountpoint)], capture_output=True)

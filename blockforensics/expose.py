"""Expose a Disk as read-only virtual disk files over FUSE: ``MOUNTPOINT/disk.vhd``,
``disk.vhdx``, ``disk.vmdk``, ``disk.raw`` and a ``partN.raw`` per partition.

Each file is synthesised on the fly by its format's
:class:`~blockforensics.formats.layout.FileLayout`: nothing is converted up
front, each read is served from the source disk (a backup chain point, a raw
image …).  A hypervisor boots any of them like the file it looks like (through
a qcow2 overlay, since the files are read-only).  The bytes of ``disk.vhd`` are
exactly those :func:`~blockforensics.formats.vhd.write_vhd` would write for the
same ``unique_id`` and ``timestamp``.

Two servers serve them.  A disk whose blocks lie as they are in files (a plain chain
point, a raw image file) is served by the C server ``_fuseserve`` from byte plans
(:mod:`blockforensics.formats.byteplan`, :func:`planned`): libfuse 3's multi-threaded
loop reads the image files itself and checks every stored block once, with no Python
per read.  Any other disk (encrypted or compressed blocks, logical volumes) is served
by :class:`ImageFileSystem` (mfusepy), single-threaded: it waits for the read-ahead
thread's read before it reads the Disk itself, so a Disk need not be thread-safe.

Sequential reads are what limits copying or hashing a served file; for the Python
server three things make them fast: libfuse 3 (mfusepy loads libfuse 2 when both are
installed, whose requests stay at 128 KiB; libfuse 3 negotiates up to 1 MiB per
request), a larger read-ahead of the mount's backing device (the kernel's is 128 KiB,
which caps each request at that; raised when the process may write
``/sys/class/bdi``, i.e. as root, for both servers), and a window of the file read by
a background thread while the kernel copies out the last one.  The kernel keeps what
it read (``kernel_cache``, ``keep_cache``): the files never change while
mounted, so a second read comes from the page cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import multiprocessing
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockforensics.errors import BlockforensicsError, FormatError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout
from blockforensics.formats.vhd import VhdLayout
from blockforensics.fs.mbr import Partition
from blockforensics.tools import require


def _import_mfusepy() -> types.ModuleType:
    """mfusepy, over libfuse 3 when it is installed and the environment names no other
    (``FUSE_LIBRARY_PATH``, ``FUSE_LIBRARY_NAME``)."""
    chosen = {"FUSE_LIBRARY_PATH", "FUSE_LIBRARY_NAME"} & os.environ.keys()
    if chosen or not ctypes.util.find_library("fuse3"):
        import mfusepy
        return mfusepy
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy
    finally:
        del os.environ["FUSE_LIBRARY_NAME"]
    return mfusepy


if TYPE_CHECKING:
    import mfusepy
else:
    mfusepy = _import_mfusepy()


FILE_NAME = "disk.vhd"
READ_AHEAD = 4 << 20  # bytes read at once for a sequential reader
READ_AHEAD_KB = 4096  # the kernel's read-ahead for a mount, raised to this (KiB)
LOOP_ENDED = "8"  # fuse_main's status when its loop returned an error
#: fuse_main's other statuses (libfuse 3, lib/helper.c), for one-line messages
FUSE_FAILURES = {1: "bad options", 2: "no mount point", 3: "libfuse setup failed",
                 4: "mounting failed: it needs root, or a fusermount3 this user may run",
                 5: "could not run in the background", 6: "could not set signal handlers",
                 7: "its loop failed"}


def fuse_failure(mountpoint: Path, status: object) -> UsageError:
    """The one-line error for libfuse's ``fuse_main`` status ``status``."""
    with contextlib.suppress(TypeError, ValueError):
        status = FUSE_FAILURES.get(int(str(status)), f"status {status}")
    return UsageError(f"{mountpoint}: FUSE mount failed ({status})")
UNMOUNT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # libfuse's handlers unmount


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
    the table's length cut at the end of the image; or a logical volume (``VG-LV.raw``),
    its pieces put together."""

    name: str
    partition: Partition
    length: int

    def describe(self) -> str:
        """Where its bytes come from, in a line: "partition 2, N bytes from byte B",
        "logical volume vg/lv, N bytes in K pieces"."""
        part = self.partition
        where = (f"in {len(part.pieces)} piece{'s' * (len(part.pieces) > 1)}" if part.pieces
                 else f"from byte {part.start_byte}")
        return f"{part.label}, {self.length} bytes {where}"

    def served(self, disk: Disk, raw: FileLayout) -> Served:
        """The file: a range of the disk's ``raw`` layout, or a volume's own."""
        if not self.partition.pieces:
            return Served(raw, self.partition.start_byte, self.length)
        from blockforensics.export import layout

        return Served(layout(self.partition.view(disk)[0], "raw"), 0, self.length)


def partition_files(disk: Disk) -> tuple[str, list[PartitionFile], list[str]]:
    """``(table, files, notes)``: the disk's table ("gpt", "mbr" or "none", as
    :func:`~blockforensics.allocation.partition_table` reads it), a ``partN.raw`` for
    each of its partitions (N as the table numbers it: MBR primaries 1-4 and logical
    partitions from 5, GPT entry numbers; never an extended partition, nor a protective
    MBR's 0xEE entry), a ``VG-LV.raw`` for each LVM2 logical volume read (see
    :func:`~blockforensics.allocation.logical_volumes`) and what was noticed: a table
    that cannot be read, or whose blocks fail their checks (no partition served;
    ``disk.raw`` still is, with EIO for the damaged blocks), a partition starting past
    the end of the image (not served) or cut off by it (served up to it)."""
    from blockforensics.allocation import logical_volumes, partition_table
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
    files += [PartitionFile(f"{lv.name.replace('/', '-')}.raw", lv, lv.length_bytes)
              for lv in logical_volumes(disk)]
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
            files[part.name] = part.served(disk, raw)
    return files


class ReadAhead:
    """Reads of served files, sequential ones from ``READ_AHEAD``-byte windows.

    A read that continues the last one is served from the current window; once a
    window is in use, the next one is read by a background thread, so that reading
    the source (its index, its digests) overlaps the kernel copying out this one.
    Scattered reads (a booting guest) read just what they ask.  Only one thread uses
    the sources at a time: a read of the caller's own first waits for the background
    one.  A window is handed over without a copy (a ctypes view that mfusepy moves
    straight into the kernel's buffer); the background thread fills the other buffer.
    A window that cannot be read (a damaged block in it) is not kept: the read then
    asks for just its own bytes, and fails only if the damage is in them.
    """

    def __init__(self) -> None:
        self._buffers = (bytearray(READ_AHEAD), bytearray(READ_AHEAD))
        self._window = ("", 0, 0, 0)  # file, start, length (bytes), buffer number
        self._pending: tuple[str, int, Future[int]] | None = None  # the next window's
        self._pool: ThreadPoolExecutor | None = None  # started with the first window
        self._next = -1  # where a sequential reader's next read starts

    def read(self, name: str, served: Served, offset: int, size: int
             ) -> bytes | ctypes.Array:
        """Bytes ``offset .. offset+size`` of ``served`` (file ``name``), fewer at its end."""
        size = max(0, min(size, served.length - offset))
        if size == 0:
            return b""
        sequential, self._next = offset == self._next, offset + size
        window = self._window_for(name, offset)
        if window is None and sequential and size < READ_AHEAD:
            window = self._fill(name, served, offset)
        if window is None:
            self._settle()
            out = bytearray(size)
            served.readinto(offset, memoryview(out))
            return bytes(out)
        _, start, length, number = window
        if self._pending is None and start + length < served.length:
            if self._pool is None:  # signals stay with the FUSE loop, which unmounts
                self._pool = ThreadPoolExecutor(1, "blockforensics-ahead", signal.pthread_sigmask,
                                                (signal.SIG_BLOCK, UNMOUNT_SIGNALS))
            self._pending = (name, start + length, self._pool.submit(
                served.readinto, start + length, memoryview(self._buffers[1 - number])))
        if offset + size <= start + length:
            return (ctypes.c_char * size).from_buffer(self._buffers[number], offset - start)
        # the read runs into the next window: its head from this one, the rest from that
        head = bytes(memoryview(self._buffers[number])[offset - start : length])
        self._next = start + length
        return head + bytes(self.read(name, served, start + length, offset + size - start
                                      - length))

    def _window_for(self, name: str, offset: int) -> tuple[str, int, int, int] | None:
        """The window of file ``name`` holding byte ``offset``: the current one, or the
        one read in the background (which then becomes current), if any."""
        file, start, length, number = self._window
        if file == name and start <= offset < start + length:
            return self._window
        if self._pending is None or self._pending[0] != name or offset < self._pending[1]:
            return None
        _, start, future = self._pending
        self._pending = None
        try:
            length = future.result()
        except Exception:  # a read of its own reports it, if the damage is in its bytes
            return None
        self._window = (name, start, length, 1 - number)
        return self._window if offset < start + length else None

    def _fill(self, name: str, served: Served, offset: int
              ) -> tuple[str, int, int, int] | None:
        """Read the window starting at ``offset`` into the free buffer, now; None if a
        damaged block in it stops that."""
        self._settle()
        number = 1 - self._window[3]
        try:
            length = served.readinto(offset, memoryview(self._buffers[number]))
        except BlockforensicsError:
            return None
        self._window = (name, offset, length, number)
        return self._window

    def _settle(self) -> None:
        """Wait for the background read, if any, and forget it."""
        if self._pending is not None:
            self._pending[2].exception()
            self._pending = None

    def close(self) -> None:
        self._settle()
        if self._pool is not None:
            self._pool.shutdown()


class ImageFileSystem(mfusepy.Operations):
    """A read-only directory of virtual disk files, each read through a FileLayout.

    ``mountpoint``: where it is mounted (a resolved path), to raise its read-ahead
    (:func:`raise_read_ahead`) when a file is first opened.
    """

    use_ns = True

    def __init__(self, files: dict[str, Served], mountpoint: str | None = None):
        self.files = files
        self._mtime_ns = time.time_ns()
        self._mountpoint = mountpoint
        self._ahead = ReadAhead()
        self.failed = 0  # reads answered EIO: a block that failed its check

    def _file(self, path: str) -> Served:
        served = self.files.get(path.lstrip("/"))
        if served is None or "/" in path.lstrip("/"):
            raise mfusepy.FuseOSError(errno.ENOENT)
        return served

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Let the kernel keep what it read across opens (the files never change)."""
        if config is not None:
            config.kernel_cache = 1

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
        if self._mountpoint is not None:  # the kernel set its read-ahead at INIT: now
            raise_read_ahead(self._mountpoint)  # it stays
            self._mountpoint = None
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes | ctypes.Array:
        """``size`` bytes at ``offset`` (fewer at the end of the file), through the
        read-ahead; a damaged block in them is EIO for the reader."""
        try:
            return self._ahead.read(path, self._file(path), offset, size)
        except BlockforensicsError as exc:
            self.failed += 1
            print(f"blockforensics: error: {exc}", file=sys.stderr, flush=True)
            raise mfusepy.FuseOSError(errno.EIO) from exc

    def destroy(self, path: str) -> None:
        self._ahead.close()

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        raise mfusepy.FuseOSError(errno.EROFS)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        raise mfusepy.FuseOSError(errno.EROFS)


def backing_device(mountpoint: str) -> str | None:
    """``MAJOR:MINOR`` of the file system last mounted at ``mountpoint`` (a resolved
    path), as /proc/self/mountinfo says, without touching the mount; None if none."""
    device = None
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]) == mountpoint:
                device = fields[2]
    return device


def raise_read_ahead(mountpoint: str) -> None:
    """Raise the read-ahead of the file system mounted at ``mountpoint`` (a resolved
    path) to ``READ_AHEAD_KB``, never lower it; nothing when not permitted (not root).
    The kernel gives a FUSE mount 128 KiB, which is also the most it then asks for
    in one request; libfuse 3 allows up to 1 MiB."""
    device = backing_device(mountpoint)
    if device is None:
        return
    setting = Path("/sys/class/bdi", device, "read_ahead_kb")
    try:
        if int(setting.read_text()) < READ_AHEAD_KB:
            setting.write_text(f"{READ_AHEAD_KB}\n")
    except (OSError, ValueError):
        pass


def check_mountpoint(mountpoint: Path) -> None:
    """UsageError unless ``mountpoint`` is an empty directory with nothing mounted on it
    (files there would be hidden while the disk files are served)."""
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint}: mount point is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint}: something is already mounted there")
    if any(mountpoint.iterdir()):
        raise UsageError(f"{mountpoint}: mount point is not empty")


def planned(disk: Disk, files: dict[str, Served]) -> tuple[list[tuple[Any, ...]],
                                                            list[tuple[Any, ...]],
                                                            list[Any]] | None:
    """``(files, sources, mapped)`` as the C server takes them (see ``_fuseserve.c``):
    each served file's byte plan, the image files they read with the blocks to check,
    and the mappings of the plans' spill (whose pages the server drops as it goes);
    None when the disk's blocks cannot be read as they are stored (encrypted or
    compressed, or a kind of disk with no plan) or a file is not a range of one of its
    layouts (a logical volume's)."""
    from blockforensics.formats.byteplan import FilePlan, disk_plan, file_plan

    if any(served.layout.disk is not disk for served in files.values()):
        return None
    plan = disk_plan(disk)
    if plan is None:
        return None
    whole: dict[int, FilePlan] = {}
    out = []
    for name, served in files.items():
        layout = served.layout
        if id(layout) not in whole:
            whole[id(layout)] = file_plan(layout, plan)
        file = whole[id(layout)]
        if (served.start, served.length) != (0, layout.file_size):
            file = file.window(served.start, served.length)
        out.append((name, file.size, file.starts, file.kinds, file.offsets, file.disks,
                    file.blob))
    sources = [(s.fd, s.name, s.block_size, s.positions, s.digests, s.crc)
               for s in plan.files]
    plan.spill.drop()
    return out, sources, plan.spill.maps


def _native_server() -> types.ModuleType | None:
    """The C FUSE server, None where it was not built (no libfuse 3 headers)."""
    try:
        from blockforensics import _fuseserve
    except ImportError:
        return None
    return _fuseserve


def mount(disk: Disk, mountpoint: str | os.PathLike[str], *, foreground: bool = True,
          unique_id: bytes | None = None, timestamp: datetime | None = None,
          partitions: bool = True, native: bool = True, direct: bool = True) -> int:
    """Serve ``disk`` as ``MOUNTPOINT/disk.vhd`` (and the files of :func:`served_files`)
    until unmounted; returns how many reads failed their check (each answered EIO, with
    a line on stderr).

    In the foreground this blocks; Ctrl-C (SIGINT), SIGTERM or SIGHUP, or
    ``fusermount3 -u MOUNTPOINT``, unmounts and returns.  ``foreground=False``
    lets libfuse daemonise (the calling process exits once the mount is up):
    meant for the command line only.

    A disk whose bytes lie as they are in files (see :func:`planned`) is served by the C
    server when it was built (``native=False``: by the Python one, to compare them): the
    same files and bytes, every block checked, read by its worker threads.  Where the
    kernel maps files opened for direct I/O (Linux >= 6.6), it serves them so (``direct``;
    ``direct=False``: through the page cache, to compare): each read goes from the server
    to the reader's buffer, with no copy in the page cache.
    """
    mountpoint = Path(mountpoint)
    check_mountpoint(mountpoint)
    files = served_files(disk, unique_id=unique_id, timestamp=timestamp, partitions=partitions)
    server = _native_server() if native else None
    plans = planned(disk, files) if server is not None else None
    if plans is not None:  # the plans hold what is served: the layouts (their metadata
        files.clear()  # tables: 128 MiB for a 1 TiB disk's VMDK) can go
    # libfuse installs its unmount-and-exit handlers only over default dispositions
    restore: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in UNMOUNT_SIGNALS:
            restore[sig] = signal.signal(sig, signal.SIG_DFL)
    resolved = os.path.realpath(mountpoint)  # before the mount: not from inside it
    try:
        if server is not None and plans is not None:
            served, sources, mapped = plans
            status, failed = server.serve(str(mountpoint), served, sources, mapped=mapped,
                                          foreground=foreground,
                                          on_open=functools.partial(raise_read_ahead,
                                                                    resolved),
                                          direct=direct)
            if status:
                raise fuse_failure(mountpoint, status) from RuntimeError(str(status))
            return failed
        fs = ImageFileSystem(files, resolved)
        mfusepy.FUSE(fs, str(mountpoint), foreground=foreground,
                     nothreads=True, ro=True, fsname="blockforensics", subtype="vhd")
    except RuntimeError as exc:
        # libfuse's fuse_main returns 8 when its loop ended with an error, which newer
        # libfuse reports for a loop ended by SIGINT/SIGTERM: a clean unmount all the same
        if str(exc) != LOOP_ENDED or _mounted(mountpoint):
            raise fuse_failure(mountpoint, exc) from exc
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)
    return fs.failed


def _mount_child(disk: Disk, mountpoint: Path, **kwargs: Any) -> None:
    """:func:`mount` in :func:`exposed`'s child: a mount that fails exits with libfuse's
    status, for the parent to explain (no traceback from the child)."""
    try:
        mount(disk, mountpoint, **kwargs)
    except UsageError as exc:
        status = str(exc.__cause__) if isinstance(exc.__cause__, RuntimeError) else ""
        sys.exit(int(status) if status.isdigit() else 1)


def _mounted(mountpoint: Path) -> bool:
    """True while a FUSE file system is mounted at ``mountpoint`` (per /proc/mounts)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == target for line in fh)


@contextmanager
def exposed(disk: Disk, mountpoint: str | os.PathLike[str], *, timeout: float = 10.0,
            unique_id: bytes | None = None, timestamp: datetime | None = None,
            partitions: bool = True, native: bool = True,
            direct: bool = True) -> Iterator[Path]:
    """Mount ``disk`` in a child process for the duration of a ``with`` block
    (``native``, ``direct``: as :func:`mount` says).

    Yields the path of ``disk.vhd``; on exit unmounts (``fusermount3 -u``) and
    reaps the child, leaving no stale mount.  For notebooks and tests.
    """
    fusermount = require("fusermount3")
    mountpoint = Path(mountpoint)
    # fork: the child inherits the disk as is (open files included), no pickling
    child = multiprocessing.get_context("fork").Process(
        target=_mount_child, args=(disk, mountpoint),
        kwargs={"unique_id": unique_id, "timestamp": timestamp, "partitions": partitions,
                "native": native, "direct": direct},
        daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + timeout
        while not _mounted(mountpoint):
            if not child.is_alive():
                raise fuse_failure(mountpoint, child.exitcode)
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

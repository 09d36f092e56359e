"""Crash-safe file output: write to a temporary name, fsync, rename.

A reader never sees a half-written file under the final name: either the old
file (or none) or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from blockforensics.errors import UsageError
from blockforensics.image import chain_containing

try:
    from blockforensics._native import (
        SYNC_FILE_RANGE_WAIT_AFTER,
        SYNC_FILE_RANGE_WAIT_BEFORE,
        SYNC_FILE_RANGE_WRITE,
        sync_file_range,
    )
except ImportError:  # no C extension (no C compiler), or one built before it had these
    sync_file_range = None  # type: ignore[assignment]  # Writeback uses posix_fadvise

#: ``BLOCKFORENSICS_FSYNC=0`` skips fsync (test suites: a killed process loses nothing
#: the page cache holds; only power loss needs the fsyncs, and tests cannot cut power).
SYNC = os.environ.get("BLOCKFORENSICS_FSYNC", "1") != "0"


def fsync(fd: int) -> None:
    """fsync unless disabled by ``BLOCKFORENSICS_FSYNC=0``."""
    if SYNC:
        os.fsync(fd)


#: bytes of a file written after a range before that range is waited for and dropped
#: from the page cache (what a writer keeps dirty or in flight at most, about)
WRITEBACK_WINDOW = 32 << 20
#: bytes per page of the page cache
PAGE = os.sysconf("SC_PAGESIZE")


class Writeback:
    """Sends a file's new bytes to disk while it is being written, so the final fsync
    has little left to wait for and disk writes overlap the work: ``writeback(offset,
    nbytes)`` after each write queues that range's whole pages for writeback at once
    (``sync_file_range``, no waiting; a page it fills only in part is sent with the write
    that completes it, so a page is not written back twice); a range followed by
    ``WRITEBACK_WINDOW`` more bytes is then waited for and dropped from the page cache (a
    backup does not push other files out of it).  Without the C extension,
    ``posix_fadvise`` starts the writeback and drops what it can.  One thread calls it."""

    def __init__(self, fd: int, window: int | None = None):
        self.fd = fd
        self.window = WRITEBACK_WINDOW if window is None else window  # bytes
        self._pending: deque[tuple[int, int]] = deque()  # (offset, nbytes) not yet waited for
        self._held = 0  # bytes in self._pending

    def __call__(self, offset: int, nbytes: int) -> None:
        if not SYNC or not nbytes:
            return
        if sync_file_range is None:
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
            return
        # whole pages only: a page the next write completes is sent once, complete
        first, end = offset // PAGE * PAGE, (offset + nbytes) // PAGE * PAGE
        if end <= first:
            return
        offset, nbytes = first, end - first
        sync_file_range(self.fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)
        self._pending.append((offset, nbytes))
        self._held += nbytes
        while self._pending and self._held - self._pending[0][1] >= self.window:
            first, length = self._pending.popleft()
            self._held -= length
            # wait for its writeback in flight, write what is still dirty, wait for that
            sync_file_range(self.fd, first, length, SYNC_FILE_RANGE_WAIT_BEFORE
                            | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)
            os.posix_fadvise(self.fd, first, length, os.POSIX_FADV_DONTNEED)


def writeback_progress(fd: int, progress: Callable[[int], object]
                       ) -> Callable[[int, int], None]:
    """The ``written(offset, nbytes)`` callback of ``Disk.write_to`` for a file that must
    reach the disk: its :class:`Writeback`, then ``progress``."""
    writeback = Writeback(fd)

    def written(offset: int, nbytes: int) -> None:
        writeback(offset, nbytes)
        progress(nbytes)

    return written


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    if not SYNC:
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_HELD: dict[str, list[int]] = {}  # lock path -> [fd, depth]: re-entrant within a process


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike[str], *, blocking: bool = True,
                   exclusive_here: bool = False) -> Iterator[bool]:
    """An exclusive lock on ``directory`` across processes (``flock`` on the directory
    itself, so no lock file is left behind), re-entrant within this process.

    Yields whether it is held: always when ``blocking``; otherwise False when another
    process holds it, or — with ``exclusive_here`` — when this process already holds
    it (one of its writers is running)."""
    path = os.path.realpath(directory)
    held = _HELD.get(path)
    if held is not None:
        if exclusive_here:
            yield False
            return
        held[1] += 1
        try:
            yield True
        finally:
            held[1] -= 1
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        _HELD[path] = [fd, 1]
        try:
            yield True
        finally:
            del _HELD[path]
    finally:
        os.close(fd)  # closing the descriptor releases the flock


#: a temporary younger than this may belong to a writer that has not locked it yet
STALE_AFTER_SECONDS = 2.0


def remove_stale_temporaries(path: Path, keep: str = "") -> list[str]:
    """Remove the temporaries that killed writers of ``path`` left beside it (their
    writer's lock is gone); their names.  Live writers' temporaries are spared."""
    removed = []
    for other in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if str(other) == keep:
            continue
        try:
            fd = os.open(other, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < STALE_AFTER_SECONDS:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: its writer is gone
            other.unlink(missing_ok=True)
            removed.append(other.name)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched; an
    OSError that names no file (a failed write: disk full, file too large) is
    given ``path``, so that its message says which output failed.  A file replaced
    keeps its permission bits; a new one is readable by its owner only.
    Temporary names start with ``.`` and end with ``.tmp`` so cleanup can find them.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        exc.filename = str(path)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this writer lives: not stale
        remove_stale_temporaries(path, keep=tmp)
        with contextlib.suppress(FileNotFoundError):
            keep_mode(fd, os.stat(path).st_mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


#: errnos of a file system that has no hard links (FAT, exFAT: EPERM) or no POSIX modes
_UNSUPPORTED = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def keep_mode(fd: int, mode: int) -> None:
    """Give file ``fd`` the permission bits of ``mode``; nothing on a file system that
    keeps none (FAT, exFAT: its files have the mount's mode)."""
    try:
        os.fchmod(fd, stat.S_IMODE(mode))
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise


def set_size(fd: int, size: int) -> None:
    """Make file ``fd`` ``size`` bytes long (a hole where it grows, where the file system
    has holes); where ``ftruncate`` cannot grow a file (some FUSE file systems: fusefat)
    the last byte is written instead."""
    current = os.fstat(fd).st_size
    if size == current:  # fusefat refuses even this
        return
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED or size < current:
            raise
        os.pwrite(fd, b"\0", size - 1)


def umask() -> int:
    """The process's umask (read from /proc, not set and reset: other threads may create
    files meanwhile)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def readable_by_all(fd: int) -> None:
    """Give file ``fd`` mode 0644 less the umask: a disk image other users' tools (a
    hypervisor's) may read, unless the user's umask keeps files private."""
    keep_mode(fd, 0o644 & ~umask())


_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst``, never replacing a file there (FileExistsError):
    ``renameat2(RENAME_NOREPLACE)``, or, where the file system does not take that flag
    (FUSE file systems often), a check just before a plain rename — callers hold the
    directory's writer lock, so only a process outside the project could race it."""
    import ctypes  # here: only file systems without hard links pay for it

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                     _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def name_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Give file ``src`` the new name ``dst`` (never replacing a file there) and drop its
    old name: a hard link then an unlink, or a rename where the file system has no hard
    links (FAT, exFAT)."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        rename_noreplace(src, dst)
        return
    os.unlink(src)


def has_hard_links(directory: str | os.PathLike[str]) -> bool:
    """True when the file system holding ``directory`` makes hard links (tried with two
    temporary names, removed)."""
    fd, tmp = tempfile.mkstemp(prefix=".links-", suffix=".tmp", dir=directory)
    os.close(fd)
    other = f"{tmp}.link.tmp"
    try:
        os.link(tmp, other)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        return False
    finally:
        os.unlink(tmp)
    os.unlink(other)
    return True


#: file systems whose files hold at most 4 GiB - 1 byte (FAT's 32-bit size field)
FAT_TYPES = frozenset({"vfat", "msdos", "umsdos", "fuse.fusefat"})
FAT_MAX_BYTES = (1 << 32) - 1
#: the largest size of any file, in bytes (a signed 64-bit file offset, off_t)
MAX_FILE_BYTES = (1 << 63) - 1


def file_system_type(path: str | os.PathLike[str]) -> str:
    """The type of the file system holding ``path`` (an existing file or directory), as
    ``/proc/self/mountinfo`` names it (``ext4``, ``vfat``, ``fuse.fusefat`` …); "" when
    unknown."""
    target = os.path.realpath(path)
    best, kind = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as fh:
        for line in fh:
            fields = line.split()
            if b"-" not in fields:
                continue
            mount = fields[4].decode("unicode_escape", "replace")  # \040 for a space
            mount = os.fsdecode(mount.encode("latin-1", "replace"))
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, os.fsdecode(fields[fields.index(b"-") + 1])
    return kind


def file_size_limit(directory: str | os.PathLike[str]) -> int | None:
    """The largest file the file system holding ``directory`` can hold, in bytes, where
    it is smaller than any disk (FAT: 4 GiB - 1 byte); None otherwise."""
    return FAT_MAX_BYTES if file_system_type(directory) in FAT_TYPES else None


def check_fits(what: str | os.PathLike[str], directory: str | os.PathLike[str],
               size: int) -> None:
    """UsageError, before anything is written, when a file of ``size`` bytes cannot be
    made in ``directory`` (FAT's 4 GiB limit, or past what a file offset holds: a disk
    whose header claims zettabytes); ``what`` names the output."""
    if size > MAX_FILE_BYTES:
        raise UsageError(f"{what}: {size} bytes in one file, more than a file can hold "
                         f"({MAX_FILE_BYTES} bytes)")
    limit = file_size_limit(directory)
    if limit is not None and size > limit:
        raise UsageError(f"{what}: {size} bytes in one file, but {file_system_type(directory)} "
                         "holds at most 4 GiB - 1 byte per file: use exFAT, NTFS, ext4 or XFS")


def check_output(path: str | os.PathLike[str], *, force: bool,
                 inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """The path to write an output (restore, export) to, after refusing what would
    destroy data: a path inside a chain directory (symlinks resolved), one of the
    ``inputs`` itself (same file, whatever the name), a directory, and an existing
    file unless ``force``.  Returns the resolved path (a symlink's target is replaced,
    not the link).  Existing outputs that are not regular files are refused here;
    writers that can fill a block device in place extend this check."""
    out = Path(path)
    real = Path(os.path.realpath(out))
    chain = chain_containing(real)
    if chain is not None:
        raise UsageError(f"{out}: inside the chain directory {chain}; write it elsewhere")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real
    for source in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(source, real):
                raise UsageError(f"{out}: is the input {source} itself")
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{out}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{out}: exists and is not a regular file")
    if not force:
        raise UsageError(f"{out}: exists; give --force to replace it")
    return real


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02  # linux/falloc.h


def punch_holes(fd: int, starts: Iterable[int], ends: Iterable[int], *,
                unit: int = 4096) -> int:
    """Give back to the file system the ``unit``-aligned blocks lying wholly inside each
    byte range ``[starts[i], ends[i])`` of the file ``fd`` (they read as zeros after);
    the file keeps its size.  Bytes freed; 0 where the file system cannot punch holes."""
    import ctypes  # here: only consolidation pays for it

    fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    freed = 0
    for start, end in zip(starts, ends):
        first, last = -(-start // unit) * unit, end // unit * unit
        if last <= first:
            continue
        if fallocate(fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE, first, last - first):
            if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS):
                return freed
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        freed += last - first
    return freed

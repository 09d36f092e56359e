"""Crash-safe file output: write to a temporary name, fsync, rename.

A reader never sees a half-written file under the final name: either the old
file (or none) or the complete new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

#: ``BLOCKFORENSICS_FSYNC=0`` skips fsync (test suites: a killed process loses nothing
#: the page cache holds; only power loss needs the fsyncs, and tests cannot cut power).
SYNC = os.environ.get("BLOCKFORENSICS_FSYNC", "1") != "0"


def fsync(fd: int) -> None:
    """fsync unless disabled by ``BLOCKFORENSICS_FSYNC=0``."""
    if SYNC:
        os.fsync(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a just-written range to disk now (and drop it from the page cache),
    so the final fsync has little left to wait for: disk writes overlap the work."""
    if SYNC:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def writeback_progress(fd: int, progress: Callable[[int], object]
                       ) -> Callable[[int, int], None]:
    """The ``written(offset, nbytes)`` callback of ``Disk.write_to`` for a file that must
    reach the disk: start each written range's writeback, advance ``progress``."""

    def written(offset: int, nbytes: int) -> None:
        start_writeback(fd, offset, nbytes)
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


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched; an
    OSError that names no file (a failed write: disk full, file too large) is
    given ``path``, so that its message says which output failed.
    Temporary names start with ``.`` and end with ``.tmp`` so cleanup can find them.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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

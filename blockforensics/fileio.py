"""Crash-safe file output: write to a temporary name, fsync, rename.

A reader never sees a half-written file under the final name: either the old
file (or none) or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: ``BLOCKFORENSICS_FSYNC=0`` skips fsync (test suites: a killed process loses nothing
#: the page cache holds; only power loss needs the fsyncs, and tests cannot cut power).
SYNC = os.environ.get("BLOCKFORENSICS_FSYNC", "1") != "0"


def fsync(fd: int) -> None:
    """fsync unless disabled by ``BLOCKFORENSICS_FSYNC=0``."""
    if SYNC:
        os.fsync(fd)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    if not SYNC:
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes between files inside the kernel (``copy_file_range``, as ``cp``
    does), falling back to read/write where the file systems do not support it."""
    while length > 0:
        try:
            done = os.copy_file_range(src_fd, dst_fd, length, src_offset, dst_offset)
        except OSError:
            done = os.pwrite(dst_fd, os.pread(src_fd, min(length, 16 << 20), src_offset),
                             dst_offset)
        if done <= 0:
            raise OSError(f"short copy: {length} bytes left at offset {src_offset}")
        src_offset, dst_offset, length = src_offset + done, dst_offset + done, length - done


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

"""Restore a point onto a block device: written in place, never replacing the node.

A restore to a file writes a new file beside the old one and renames it; a
device cannot be renamed over, and must not be: its node is what the system
knows.  So a device is opened for writing as it is (``O_EXCL``: the kernel
refuses a device it has mounted), after checking that it is at least the
volume's size and that neither it nor any partition of it is mounted or used
as swap.  Every block of the point is written — absent blocks as zeros, since
the device holds old data — or, with ``only_changed``, only the blocks whose
current content digest differs from the point's (read, compare, write what
differs: the cost follows the difference).  Blocks are read from the chain, and so
checked, a chunk at a time before that chunk is written: a block that fails its check
stops the restore before anything of its chunk is written, and the error says which
blocks were written (all those before the chunk, or with ``only_changed`` those of them
that differed) and that the rest of the device holds what it held.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockforensics.errors import IntegrityError, UsageError
from blockforensics.fileio import fsync
from blockforensics.formats.placement import write_all
from blockforensics.image.chain import Chain, PointRef
from blockforensics.image.layout import contiguous_runs
from blockforensics.progress import progress_bar

#: bytes of the device compared and written per pass
CHUNK_BYTES = 16 << 20


def is_block_device(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` (symlinks followed) is a block device."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _sysfs(rdev: int) -> Path:
    """The sysfs directory of a block device number (a partition lies inside its disk's)."""
    return Path(os.path.realpath(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))


def device_in_use(path: str | os.PathLike[str]) -> str | None:
    """Why the block device ``path`` must not be written (mounted or swap, itself or a
    partition of it), or None."""
    target = _sysfs(os.stat(path).st_rdev)
    users = []
    with open("/proc/self/mounts") as fh:
        users += [(line.split()[0], f"mounted on {line.split()[1]}") for line in fh]
    if os.path.exists("/proc/swaps"):
        with open("/proc/swaps") as fh:
            users += [(line.split()[0], "used as swap") for line in list(fh)[1:]]
    for source, use in users:
        if not source.startswith("/"):
            continue
        try:
            st = os.stat(source)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            where = _sysfs(st.st_rdev)
            if where == target or target in where.parents:
                return f"{source} is {use}"
    return None


def device_size(fd: int) -> int:
    """Bytes of the block device open as ``fd``."""
    return os.lseek(fd, 0, os.SEEK_END)


@dataclass
class DeviceRestore:
    """What a restore onto a device did: blocks compared and written, bytes of the volume."""

    device: Path
    size: int
    blocks: int
    written: int

    def __str__(self) -> str:
        return (f"{self.device} ({self.size} bytes; {self.written} of {self.blocks} blocks "
                "written)")


def open_device(path: str | os.PathLike[str], size: int, *, force: bool) -> int:
    """The block device ``path`` opened for writing in place, after the checks (see the
    module's description); UsageError naming what stands in the way."""
    if not force:
        raise UsageError(f"{path}: a block device; give --force to overwrite it")
    why = device_in_use(path)
    if why:
        raise UsageError(f"{path}: in use ({why}); unmount it first")
    try:
        fd = os.open(path, os.O_RDWR | os.O_EXCL)
    except OSError as exc:
        raise UsageError(f"{path}: cannot open for writing ({exc.strerror})") from exc
    have = device_size(fd)
    if have < size:
        os.close(fd)
        raise UsageError(f"{path}: the device has {have} bytes; the volume needs {size}")
    return fd


def restore_to_device(chain: Chain, point: PointRef, path: str | os.PathLike[str], *,
                      force: bool = False, only_changed: bool = False,
                      progress: bool = False) -> DeviceRestore:
    """Write ``point`` into the block device ``path`` (its first ``size`` bytes), every
    block checked as it is read from the chain; with ``only_changed`` only the blocks
    whose content differs from what the device holds are written."""
    disk = chain.disk(point)
    bs, n, size = disk.block_size, disk.n_blocks, disk.size
    codec = chain.codec
    zero = codec.zero_digest()
    fd = open_device(path, size, force=force)
    written = start = 0
    step = max(1, CHUNK_BYTES // bs)
    current = np.empty((step, bs), dtype=np.uint8)
    try:
        with progress_bar(size, "restore", progress) as bar:
            for start in range(0, n, step):
                count = min(step, n - start)
                rows = np.arange(count)
                if only_changed:
                    have = current[:count]
                    got = os.preadv(fd, [have.reshape(-1).data], start * bs)
                    have.reshape(-1)[max(0, min(got, size - start * bs)):] = 0
                    expected = disk.layout.digests(start, count, zero)
                    rows = np.flatnonzero((codec.content_digests(have)
                                           != expected).any(axis=1))
                if len(rows):
                    blocks = disk.read_at(start + rows).reshape(-1)  # checked, then written
                    for first, at, length in zip(*contiguous_runs(start + rows,
                                                                  np.arange(len(rows)), 1)):
                        begin = int(first) * bs
                        nbytes = min(int(length) * bs, size - begin)
                        write_all(fd, blocks.data[int(at) * bs : int(at) * bs + nbytes], begin)
                written += len(rows)
                bar.update(min(count * bs, size - start * bs))
        fsync(fd)
    except IntegrityError as exc:
        fsync(fd)  # what the message says was written is on the device
        raise IntegrityError(f"{exc}; {path}: {partly_written(written, start)}") from exc
    finally:
        os.close(fd)
    return DeviceRestore(Path(path), size, n, written)


def partly_written(written: int, stop: int) -> str:
    """What a device restore stopped at block ``stop`` left: ``written`` blocks below it
    written, the device from ``stop`` on as it was."""
    if not written:
        return "nothing written, the device is as it was"
    return (f"{written} blocks before block {stop} written, the device from block {stop} "
            "on as it was")

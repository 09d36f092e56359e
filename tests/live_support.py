"""Helpers of the live-guest tests: a booted guest, a served disk with writes made
through NBD, and checks of raw copies (whole disks, or the file system at a byte offset
of one)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from blockforensics.live.guest import MOUNTED, workload_guest
from blockforensics.live.ops import LiveDisk
from blockforensics.live.qemu import NODE, Guest, StorageDaemon
from blockforensics.nbd.client import NbdAddress
from tests.support import require_tools

BS = 4096
BOOT_TIMEOUT = 180  # seconds (TCG)


@contextmanager
def booted(image: str | os.PathLike[str], workdir: Path, workload: str,
           root: str = "/dev/nvme0n1", fmt: str = "raw") -> Iterator[tuple[Guest, LiveDisk]]:
    """A guest running ``workload`` on ``image`` (format ``fmt``, root device ``root``),
    once it has mounted its ext4, with the LiveDisk of its NVMe disk; killed afterwards."""
    require_tools("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "e2fsck", "dumpe2fs")
    vm = workload_guest(image, workdir, workload, root, fmt)
    vm.start()
    try:
        vm.wait_console(MOUNTED, BOOT_TIMEOUT)
        assert vm.qmp is not None
        yield vm, LiveDisk(vm.qmp, NODE, vm.nbd_socket)
    finally:
        vm.kill()


@contextmanager
def served(image: Path, workdir: Path, fmt: str = "raw"
           ) -> Iterator[tuple[StorageDaemon, LiveDisk, NbdAddress]]:
    """A qemu-storage-daemon serving ``image``, its LiveDisk and a writable export ``rw``
    (the guest's writes, from outside); stopped afterwards (``daemon.kill()`` to crash)."""
    require_tools("qemu-storage-daemon", "qemu-io", "qemu-img")
    daemon = StorageDaemon(image, workdir, fmt=fmt)
    daemon.start()
    try:
        assert daemon.qmp is not None
        live = LiveDisk(daemon.qmp, NODE, daemon.nbd_socket)
        yield daemon, live, live.export("rw", writable=True)
    finally:
        daemon.stop()


def qemu_io(address: NbdAddress, *commands: str) -> None:
    """Run qemu-io ``commands`` (``write -P 7 1M 64k`` …) on the export at ``address``."""
    argv = ["qemu-io", "-f", "raw", address.uri()]
    for command in commands:
        argv += ["-c", command]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def bf(*args: object, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """The blockforensics command in a process of its own (any exit status), with
    ``env`` added to its environment."""
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def same_image(a: Path, b: Path) -> bool:
    """qemu-img compare of two raw files (exit 0: identical contents)."""
    done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(a), str(b)],
                          capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def blocks(path: Path) -> np.ndarray:
    """A raw file as rows of BS bytes."""
    return np.fromfile(path, dtype=np.uint8).reshape(-1, BS)


def _ext(path: Path, offset: int) -> str:
    """The e2fsprogs name of the ext file system at byte ``offset`` of ``path``."""
    return f"{path}?offset={offset}" if offset else str(path)


def needs_recovery(path: Path, offset: int = 0) -> bool:
    """Whether the ext file system at byte ``offset`` needs its journal replayed."""
    header = subprocess.run(["dumpe2fs", "-h", _ext(path, offset)], capture_output=True,
                            text=True, timeout=60).stdout
    return "needs_recovery" in header


def fsck_clean(path: Path, offset: int = 0) -> bool:
    """Whether ``e2fsck -fn`` finds the ext file system at byte ``offset`` clean."""
    return subprocess.run(["e2fsck", "-fn", _ext(path, offset)], capture_output=True,
                          timeout=120).returncode == 0

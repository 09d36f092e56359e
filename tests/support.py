"""Shared test helpers: real system tools, never mocks.

A test that needs a missing tool fails in CI (``CI=true``: CI installs every
tool) and skips, with the reason printed, on a developer machine.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from blockforensics.tools import FILE_PACKAGES, PACKAGES, which


def require_tools(*programs: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless every program is installed."""
    _require([p for p in programs if which(p) is None], PACKAGES)


def require_files(*paths: str | os.PathLike[str]) -> None:
    """Fail (in CI) or skip (elsewhere) unless every data file (firmware, a boot loader)
    is installed."""
    _require([os.fspath(p) for p in paths if not os.path.isfile(p)], FILE_PACKAGES)


def _require(missing: list[str], packages: Mapping[str, str]) -> None:
    """Fail (in CI) or skip (elsewhere) naming what is ``missing`` and the Debian
    packages holding it."""
    if not missing:
        return
    debian = sorted({packages.get(name, name) for name in missing})
    reason = f"missing {', '.join(missing)} (Debian: {' '.join(debian)})"
    if os.environ.get("CI"):
        pytest.fail(f"CI must install these: {reason}")
    pytest.skip(reason)


def require_module(name: str, package: str):
    """Import ``name``; fail (in CI) or skip (elsewhere) if pip package ``package`` is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        reason = f"missing Python module {name} (pip install {package})"
        if os.environ.get("CI"):
            pytest.fail(f"CI must install it: {reason}")
        pytest.skip(reason)


def assert_independent_readers_read(vhd_path, data: bytes) -> None:
    """libvhdi (pyvhdi) and dissect.hypervisor both read ``data`` from the VHD, exactly."""
    pyvhdi = require_module("pyvhdi", "libvhdi-python")
    handle = pyvhdi.file()
    handle.open(str(vhd_path))
    try:
        assert handle.get_media_size() == len(data)
        assert handle.read_buffer_at_offset(len(data), 0) == data
    finally:
        handle.close()
    vhd = require_module("dissect.hypervisor.disk.vhd", "dissect.hypervisor")
    with open(vhd_path, "rb") as fh:
        disk = vhd.VHD(fh)
        assert disk.size == len(data)
        assert disk.read(len(data)) == data


def mounted(mountpoint: str | os.PathLike[str]) -> bool:
    """True while a file system is mounted on ``mountpoint``."""
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == target for line in fh)


@dataclass
class Serving:
    """A mounting command while it serves: its process; once stopped, its output."""

    proc: subprocess.Popen[str]
    out: str = ""
    err: str = ""


@contextlib.contextmanager
def serving(argv: list[str], mountpoint: Path, timeout: float = 30) -> Iterator[Serving]:
    """Run ``argv`` (a FUSE mount in the foreground) until ``mountpoint`` is mounted and
    yield it; on leaving, stop it with SIGTERM unless it already ended (kill it if it
    hangs), keep its output, and lazily unmount whatever it left behind."""
    require_tools("fusermount3")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    run = Serving(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True))
    try:
        deadline = time.monotonic() + timeout
        while not mounted(mountpoint):
            assert run.proc.poll() is None, run.proc.communicate()
            assert time.monotonic() < deadline, f"{mountpoint} was not mounted"
            time.sleep(0.05)
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
        try:
            run.out, run.err = run.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.out, run.err = run.proc.communicate()
        if mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                           capture_output=True)


def flip_stored_bit(image: Path, position: int) -> None:
    """Flip one bit in the middle of the stored payload of block ``position`` of the image
    file ``image`` (its checksums left as they were: bit rot)."""
    from blockforensics.image.imagefile import ImageFile

    with ImageFile(image) as opened:
        records = opened.index.all()
        record = records[np.searchsorted(records["position"], position)]
        offset = int(record["offset"]) + int(record["length"]) // 2
    raw = bytearray(image.read_bytes())
    raw[offset] ^= 0x10
    image.write_bytes(raw)


def formatted(image: Path, size: int, *mkfs: str) -> Path:
    """``image``, made a file of ``size`` zero bytes and formatted by ``mkfs + [image]``
    (its output kept for the error when it fails)."""
    image.write_bytes(bytes(size))
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    return image


@contextlib.contextmanager
def mounted_with(argv: list[str], mountpoint: Path) -> Iterator[Path]:
    """``argv + [mountpoint]`` mounts something there (a loop mount, a FUSE daemon that
    returns once mounted); unmounted on leaving."""
    mountpoint.mkdir(exist_ok=True)
    subprocess.run([*argv, str(mountpoint)], check=True, capture_output=True, timeout=60)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=60)


def loop_mounted(image: Path, mountpoint: Path, *options: str
                 ) -> contextlib.AbstractContextManager[Path]:
    """``image`` loop-mounted on ``mountpoint`` with mount ``options`` (unmounted on
    leaving, whatever happens)."""
    return mounted_with(["mount", "-o", ",".join(("loop", *options)), str(image)], mountpoint)


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[str]:
    """A loop device backed by ``image`` (for FUSE drivers that want a block device,
    e.g. exfat-fuse); detached on leaving."""
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def backup_image(chain, image: Path) -> int:
    """Back the raw file ``image`` up into the open ``chain``; the point made."""
    from blockforensics.formats.raw import RawDisk
    from blockforensics.image.backup import backup

    with RawDisk(image) as disk:
        return backup(chain, disk)


def bf_ok(*args: object, **kwargs: object) -> str:
    """The blockforensics command in a process of its own; its stdout (it must succeed)."""
    import sys

    from sample_disks import run

    return run(sys.executable, "-m", "blockforensics.cli", *args, **kwargs)


def assert_diff(chain: Path, expected: dict[str, str], renamed: dict[str, str],
                untouched: tuple[str, ...] = ()) -> dict[str, str]:
    """``diff CHAIN 0 1 --files`` reports each path of ``expected`` with its change, each
    new name of ``renamed`` with its old path, and nothing under ``untouched``; the
    changes by path."""
    import json

    diff = json.loads(bf_ok("diff", chain, "0", "1", "--files", "--json"))
    changed = {f["path"]: f["change"] for f in diff["files"]}
    for path, change in expected.items():
        assert changed.get(path) == change, (path, changed)
    old = {f["path"]: f.get("old_path") for f in diff["files"]}
    for path, was in renamed.items():
        assert changed.get(path) == "renamed" and old[path] == was, (path, changed)
    assert not any(p.startswith(untouched) for p in changed), changed
    return changed


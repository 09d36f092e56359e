"""Shared test helpers: real system tools, never mocks.

A test that needs a missing tool fails in CI (``CI=true``: CI installs every
tool) and skips, with the reason printed, on a developer machine.
"""

from __future__ import annotations

import importlib
import os

import pytest

from blockforensics.tools import PACKAGES, which


def require_tools(*programs: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless every program is installed."""
    missing = [p for p in programs if which(p) is None]
    if not missing:
        return
    packages = sorted({PACKAGES.get(p, p) for p in missing})
    reason = f"missing {', '.join(missing)} (Debian: {' '.join(packages)})"
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

"""The sample bootable disk and booting disks in QEMU, with the real tools."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import require_tools

from blockforensics.boot import boot, disk_format
from blockforensics.datasets.bootdisk import (
    DEFAULT_SIZE,
    MARKER_PREFIX,
    cached_boot_disk,
    fat_partition,
    read_fat_file,
    set_boot_marker,
    write_fat_file,
)
from blockforensics.errors import UsageError
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.mbr import read_partitions
from blockforensics.tools import require

BUILD_TOOLS = ("sfdisk", "mformat", "mcopy", "syslinux", "busybox")
BOOT_TOOLS = ("qemu-img", "qemu-system-x86_64")
BOOT_TIMEOUT = 60.0  # seconds; a boot takes about 5 s under TCG


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bootdisk-cache")


@pytest.fixture(scope="session")
def boot_disk(cache_dir: Path) -> Path:
    """The sample disk, built once per test session (shared: tests copy it to modify it)."""
    require_tools(*BUILD_TOOLS)
    return cached_boot_disk(cache_dir)


@pytest.fixture
def disk_copy(boot_disk: Path, tmp_path: Path) -> Path:
    return Path(shutil.copyfile(boot_disk, tmp_path / "disk.img"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_reuses_the_built_disk(boot_disk: Path, cache_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    built = boot_disk.stat().st_mtime_ns
    monkeypatch.setenv("BLOCKFORENSICS_CACHE", str(cache_dir))
    assert cached_boot_disk() == boot_disk
    assert boot_disk.stat().st_mtime_ns == built


def test_disk_size_is_deliberately_unaligned(boot_disk: Path) -> None:
    size = boot_disk.stat().st_size
    assert size == DEFAULT_SIZE
    assert size % 512 == 0
    assert size % (2 << 20) and size % 4096 and size % (255 * 63 * 512)


def test_partition_table_matches_sfdisk(boot_disk: Path) -> None:
    require_tools("sfdisk")
    listed = subprocess.run([require("sfdisk"), "--json", str(boot_disk)],
                            capture_output=True, text=True, check=True)
    table = json.loads(listed.stdout)["partitiontable"]
    assert table["label"] == "dos"
    expected = [(p["start"], p["size"], int(p["type"], 16), p.get("bootable", False))
                for p in table["partitions"]]
    with RawDisk(boot_disk) as disk:
        ours = [(p.start_byte // 512, p.length_bytes // 512, p.type, p.bootable)
                for p in read_partitions(disk)]
    assert ours == expected
    start, sectors, _, bootable = expected[0]
    assert bootable
    assert fat_partition(boot_disk) == (start * 512, sectors * 512)
    assert (start + sectors) * 512 == DEFAULT_SIZE  # the partition reaches the odd end


def test_fat_partition_is_clean(boot_disk: Path, tmp_path: Path) -> None:
    require_tools("fsck.vfat")
    offset, length = fat_partition(boot_disk)
    with open(boot_disk, "rb") as f:
        f.seek(offset)
        (tmp_path / "fat.img").write_bytes(f.read(length))
    checked = subprocess.run([require("fsck.vfat"), "-n", str(tmp_path / "fat.img")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_fat_file_roundtrip(disk_copy: Path) -> None:
    data = bytes(range(256)) * 397 + b"tail"  # not a multiple of a sector or cluster
    write_fat_file(disk_copy, "notes.bin", data)
    assert read_fat_file(disk_copy, "notes.bin") == data
    write_fat_file(disk_copy, "notes.bin", b"shorter")
    assert read_fat_file(disk_copy, "notes.bin") == b"shorter"
    assert b"bf.marker=sample" in read_fat_file(disk_copy, "syslinux.cfg")


def test_bad_marker_is_refused(disk_copy: Path) -> None:
    with pytest.raises(UsageError, match="boot marker"):
        set_boot_marker(disk_copy, "two words")


def test_sample_disk_boots_and_is_not_modified(boot_disk: Path) -> None:
    require_tools(*BOOT_TOOLS)
    before = sha256(boot_disk)
    result = boot(boot_disk, expect=f"{MARKER_PREFIX} sample", timeout=BOOT_TIMEOUT)
    assert result.ok, result.tail()
    assert result.seconds_to_marker is not None
    assert result.seconds_to_marker <= result.seconds_total
    assert "SYSLINUX" in result.console
    # stopped soon after the marker: at most the guest's few power-off lines follow it
    assert f"{MARKER_PREFIX} sample" in result.tail(20)
    assert "ok=True" in repr(result)
    assert sha256(boot_disk) == before


def test_new_marker_boots_and_guest_powers_off(disk_copy: Path) -> None:
    require_tools(*BOOT_TOOLS)
    set_boot_marker(disk_copy, "changed-1")
    result = boot(disk_copy, expect=None, timeout=BOOT_TIMEOUT, interface="virtio")
    assert result.ok, result.tail()
    assert result.qemu_exit == 0
    assert result.seconds_to_marker is None
    assert f"{MARKER_PREFIX} changed-1" in result.console.splitlines()


def test_zeroed_boot_code_does_not_boot(disk_copy: Path) -> None:
    require_tools(*BOOT_TOOLS)
    with open(disk_copy, "r+b") as f:
        f.write(bytes(440))
    result = boot(disk_copy, timeout=15)
    assert not result.ok
    assert result.seconds_to_marker is None
    assert MARKER_PREFIX not in result.console


def test_fixed_vhd_boots(boot_disk: Path, tmp_path: Path) -> None:
    require_tools(*BOOT_TOOLS)
    vhd = tmp_path / "disk.vhd"
    subprocess.run([require("qemu-img"), "convert", "-O", "vpc",
                    "-o", "subformat=fixed,force_size=on", str(boot_disk), str(vhd)], check=True)
    assert disk_format(vhd) == "vpc"
    assert disk_format(boot_disk) == "raw"
    result = boot(vhd, timeout=BOOT_TIMEOUT)
    assert result.ok, result.tail()
    assert "BLOCKFORENSICS-BOOT-OK sample" in result.console


def test_missing_disk_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such disk"):
        boot(tmp_path / "absent.img")

"""UEFI boots: the firmware chosen from a disk's first sectors, and the UEFI-only sample
disk (GPT, EFI system partition, systemd-boot) booted through OVMF as a file, as a chain
point served over NBD and as a VHDX export; the BIOS sample still boots through SeaBIOS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sample_disks import run, sparse_file
from support import backup_image, bf_ok, require_files, require_tools

from blockforensics.boot import OVMF_CODE, OVMF_VARS, boot, choose_firmware
from blockforensics.datasets.bootdisk import (
    MARKER_PREFIX,
    SYSTEMD_BOOT,
    cached_boot_disk,
    read_fat_file,
    set_boot_marker,
)
from blockforensics.formats.raw import RawDisk

MIB = 1 << 20
BUILD_TOOLS = ("sgdisk", "mkfs.fat", "mmd", "mcopy", "busybox")
BOOT_TOOLS = ("qemu-img", "qemu-system-x86_64")
BOOT_TIMEOUT = 90.0  # seconds; OVMF under TCG reaches the marker in about 10 s
NO_BOOT_TIMEOUT = 15.0  # seconds SeaBIOS gets to (not) boot the UEFI-only disk


def firmware_of(path: Path) -> tuple[str, str]:
    with RawDisk(path) as disk:
        chosen = choose_firmware(disk)
    return chosen.name, chosen.reason


# ------------------------------------------------------ the auto decision (quick)
@pytest.fixture
def esp_only(tmp_path: Path) -> Path:
    """A 4 MiB GPT disk with one EFI system partition and a bare protective MBR."""
    require_tools("sgdisk")
    disk = sparse_file(tmp_path / "esp.img", 4 * MIB)
    run("sgdisk", "-n1:2048:0", "-t1:ef00", disk)
    return disk


def test_esp_only_gpt_is_uefi(esp_only: Path) -> None:
    name, reason = firmware_of(esp_only)
    assert name == "uefi"
    assert "EFI system partition (partition 1)" in reason


def test_gpt_with_bios_boot_code_is_bios(esp_only: Path) -> None:
    with open(esp_only, "r+b") as f:
        f.write(b"\xfa\x31\xc0\x8e\xd8" + bytes(100))  # cli; xor ax,ax; mov ds,ax …
    assert firmware_of(esp_only) == ("bios", "BIOS boot code in the MBR beside a GPT with an "
                                             "EFI system partition (partition 1)")


def test_gpt_without_esp_is_bios(tmp_path: Path) -> None:
    require_tools("sgdisk")
    disk = sparse_file(tmp_path / "linux.img", 4 * MIB)
    run("sgdisk", "-n1:2048:0", "-t1:8300", disk)
    assert firmware_of(disk) == ("bios", "a GPT without an EFI system partition")


def test_mbr_disk_and_blank_disk_are_bios(tmp_path: Path) -> None:
    require_tools("sfdisk")
    disk = sparse_file(tmp_path / "mbr.img", 4 * MIB)
    run("sfdisk", "--quiet", disk, input="start=2048, type=83\n")
    assert firmware_of(disk) == ("bios", "an MBR partition table without an EFI system partition")
    blank = sparse_file(tmp_path / "blank.img", 4 * MIB)
    assert firmware_of(blank) == ("bios", "no partition table")


def test_mbr_esp_is_uefi_unless_boot_code(tmp_path: Path) -> None:
    """UEFI also takes an MBR partition of type 0xEF as an EFI system partition."""
    require_tools("sfdisk")
    disk = sparse_file(tmp_path / "mbr-esp.img", 4 * MIB)
    run("sfdisk", "--quiet", disk, input="start=2048, size=2048, type=83\nstart=4096, type=ef\n")
    name, reason = firmware_of(disk)
    assert name == "uefi"
    assert reason.startswith("an MBR partition table with an EFI system partition (partition 2)")
    with open(disk, "r+b") as f:
        f.write(b"\xfa\x31\xc0\x8e\xd8")
    assert firmware_of(disk) == ("bios", "BIOS boot code in the MBR beside an MBR partition "
                                         "table with an EFI system partition (partition 2)")


def test_bad_firmware_is_a_usage_error(esp_only: Path) -> None:
    from blockforensics.errors import UsageError

    with pytest.raises(UsageError, match="firmware 'efi'"):
        boot(esp_only, firmware="efi")


# ------------------------------------------------------------ the UEFI sample disk
@pytest.fixture(scope="module")
def uefi_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The UEFI-only sample disk, built once (shared: copy it to modify it)."""
    require_tools(*BUILD_TOOLS)
    require_files(SYSTEMD_BOOT)
    return cached_boot_disk(tmp_path_factory.mktemp("uefi-cache"), uefi=True)


def test_uefi_sample_disk_layout(uefi_disk: Path) -> None:
    assert firmware_of(uefi_disk)[0] == "uefi"
    assert uefi_disk.read_bytes()[:440] == bytes(440)
    assert read_fat_file(uefi_disk, "EFI/BOOT/BOOTX64.EFI") == SYSTEMD_BOOT.read_bytes()
    assert b"timeout 0" in read_fat_file(uefi_disk, "loader/loader.conf")
    entry = read_fat_file(uefi_disk, "loader/entries/bf.conf")
    assert b"linux /vmlinuz" in entry and b"console=ttyS0" in entry
    assert b"bf.marker=sample" in entry


def test_sample_cli_builds_the_uefi_disk(tmp_path: Path) -> None:
    require_tools(*BUILD_TOOLS)
    require_files(SYSTEMD_BOOT)
    out = tmp_path / "uefi.img"
    assert "UEFI" in bf_ok("sample", "bootdisk", out, "--uefi")
    assert firmware_of(out)[0] == "uefi"


def require_boot() -> None:
    require_tools(*BOOT_TOOLS)
    require_files(OVMF_CODE, OVMF_VARS)


def bf_json(*args: object) -> dict:
    """``blockforensics ... --json`` (exit 0 or 1: a boot that failed its check) as data."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=BOOT_TIMEOUT + 60)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_uefi_disk_boots_with_auto(uefi_disk: Path) -> None:
    require_boot()
    result = bf_json("boot", uefi_disk, "--expect", f"{MARKER_PREFIX} sample",
                     "--timeout", BOOT_TIMEOUT, "--firmware", "auto")
    assert result["ok"] is True, result["console"][-2000:]
    assert result["firmware"] == "uefi"
    assert "EFI system partition" in result["firmware_reason"]
    assert any("OVMF_CODE" in arg for arg in result["command"])


@pytest.mark.slow
def test_mbr_esp_disk_boots_with_auto(uefi_disk: Path, tmp_path: Path) -> None:
    """The UEFI sample with its GPT turned into an MBR (the ESP becomes type 0xEF,
    ``sgdisk --gpttombr``): auto still picks OVMF, and the disk boots."""
    require_boot()
    disk = tmp_path / "mbr-esp.img"
    shutil.copyfile(uefi_disk, disk)
    run("sgdisk", "--gpttombr=1", disk)
    name, reason = firmware_of(disk)
    assert (name, reason.split(" (")[0]) == ("uefi", "an MBR partition table with an EFI "
                                                     "system partition")
    result = bf_json("boot", disk, "--expect", f"{MARKER_PREFIX} sample",
                     "--timeout", BOOT_TIMEOUT, "--firmware", "auto")
    assert result["ok"] is True, result["console"][-2000:]
    assert result["firmware"] == "uefi"


@pytest.mark.slow
def test_uefi_disk_does_not_boot_with_bios(uefi_disk: Path) -> None:
    require_boot()
    result = boot(uefi_disk, expect=MARKER_PREFIX, timeout=NO_BOOT_TIMEOUT, firmware="bios")
    assert not result.ok and result.seconds_to_marker is None
    assert result.firmware == "bios" and result.firmware_reason == "asked for"
    assert MARKER_PREFIX not in result.console
    assert not any("OVMF" in arg for arg in result.command)


@pytest.mark.slow
def test_bios_sample_still_picks_bios(tmp_path: Path) -> None:
    require_tools(*BOOT_TOOLS, "sfdisk", "mformat", "mcopy", "syslinux", "busybox")
    disk = cached_boot_disk(tmp_path)
    assert firmware_of(disk) == ("bios", "an MBR partition table without an EFI system partition")
    result = boot(disk, expect=f"{MARKER_PREFIX} sample", timeout=BOOT_TIMEOUT)
    assert result.ok, result.tail()
    assert result.firmware == "bios" and result.to_json()["firmware"] == "bios"


@pytest.fixture(scope="module")
def uefi_chain(uefi_disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The UEFI disk backed up twice: point 0 with marker "full", point 1 with "incr"."""
    from blockforensics.image.chain import Chain

    work = tmp_path_factory.mktemp("uefi-chain")
    disk = Path(shutil.copyfile(uefi_disk, work / "disk.img"))
    chain_dir = work / "chain"
    with Chain.create(chain_dir) as chain:
        for marker in ("full", "incr"):
            set_boot_marker(disk, marker)
            backup_image(chain, disk)
    return chain_dir


@pytest.mark.slow
def test_chain_point_boots_over_nbd_with_uefi(uefi_chain: Path) -> None:
    require_boot()
    result = bf_json("boot", uefi_chain, "--point", "0", "--expect", f"{MARKER_PREFIX} full",
                     "--timeout", BOOT_TIMEOUT)
    assert result["ok"] is True, result["console"][-2000:]
    assert result["firmware"] == "uefi"


@pytest.mark.slow
def test_vhdx_export_boots_with_uefi(uefi_chain: Path, tmp_path: Path) -> None:
    require_boot()
    out = tmp_path / "incr.vhdx"
    bf_ok("export", uefi_chain, out, "--point", "1", "--format", "vhdx")
    result = bf_json("boot", out, "--expect", f"{MARKER_PREFIX} incr", "--timeout", BOOT_TIMEOUT)
    assert result["ok"] is True, result["console"][-2000:]
    assert result["firmware"] == "uefi"

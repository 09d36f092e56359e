"""The sample bootable disk and booting disks in QEMU, with the real tools."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
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

BUILD_TOOLS = ("sfdisk", "mformat", "mcopy", "syslinux", "busybox", "fsck.fat")
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_new_marker_boots_and_guest_powers_off(disk_copy: Path) -> None:
    require_tools(*BOOT_TOOLS)
    set_boot_marker(disk_copy, "changed-1")
    result = boot(disk_copy, expect=None, timeout=BOOT_TIMEOUT, interface="virtio")
    assert result.ok, result.tail()
    assert result.qemu_exit == 0
    assert result.seconds_to_marker is None
    lines = result.console.splitlines()
    assert f"{MARKER_PREFIX} changed-1" in lines
    # nobody pressed Enter: /init powered off instead of starting the shell
    assert "Please press Enter to activate this console." in lines
    assert "built-in shell" not in result.console


@pytest.mark.slow
def test_zeroed_boot_code_does_not_boot(disk_copy: Path) -> None:
    require_tools(*BOOT_TOOLS)
    with open(disk_copy, "r+b") as f:
        f.write(bytes(440))
    result = boot(disk_copy, timeout=15)
    assert not result.ok
    assert result.seconds_to_marker is None
    assert MARKER_PREFIX not in result.console


@pytest.mark.slow
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


def test_what_is_not_a_disk_is_refused_before_qemu(boot_disk: Path, tmp_path: Path) -> None:
    """Files QEMU would boot as raw garbage until the timeout: one line, exit 2, at once."""
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"garbage")
    packed = tmp_path / "disk.img.gz"
    packed.write_bytes(gzip.compress(boot_disk.read_bytes()[:1 << 20]))
    chain = tmp_path / "chain"
    assert bf("backup", boot_disk, chain).returncode == 0
    piece = next(chain.glob("*.bfi"))
    for disk, reason in [(tiny, "less than one 512-byte sector"), (packed, "gzip"),
                         (piece, "a file of the chain"),
                         (boot_disk, "--parent is for a differencing VHD")]:
        extra = ["--parent", tiny] if disk == boot_disk else []
        done = bf("boot", disk, "--timeout", 60, *extra, timeout=30)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert reason in done.stderr


@pytest.mark.slow
def test_an_encase_image_boots_served_by_our_reader(boot_disk: Path, tmp_path: Path) -> None:
    """QEMU has no EWF driver: an E01 of the sample disk is read by libewf and served
    over NBD, and boots."""
    require_tools(*BOOT_TOOLS, "ewfacquire")
    target = tmp_path / "evidence"
    subprocess.run(["ewfacquire", "-u", "-q", "-t", str(target), "-f", "encase6",
                    "-c", "deflate:fast", str(boot_disk)], check=True, capture_output=True)
    done = bf("boot", target.with_name("evidence.E01"), "--expect",
              "BLOCKFORENSICS-BOOT-OK sample", "--timeout", BOOT_TIMEOUT, "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert json.loads(done.stdout)["ok"] is True


@pytest.mark.slow
def test_a_hyper_v_checkpoint_boots_served_by_our_reader(boot_disk: Path, tmp_path: Path) -> None:
    """QEMU does not open a differencing VHDX: a checkpoint of the sample disk is read
    through its parent here and served over NBD.  Its parent alone cannot boot (its boot
    code zeroed); the child holds sector 0 (a partially present block): only the pair
    boots."""
    import numpy as np
    from vhdx_child import BLOCK, PARTIALLY_PRESENT, SECTOR, write_child

    require_tools(*BOOT_TOOLS)
    broken = tmp_path / "parent.raw"
    data = bytearray(boot_disk.read_bytes())
    first = bytes(data[:BLOCK])
    data[:440] = bytes(440)
    broken.write_bytes(data)
    parent = tmp_path / "Disk.vhdx"
    subprocess.run([require("qemu-img"), "convert", "-f", "raw", "-O", "vhdx", "-o",
                    "subformat=dynamic,block_size=1M", str(broken), str(parent)], check=True)
    sectors = np.zeros(BLOCK // SECTOR, dtype=bool)
    sectors[0] = True
    child = tmp_path / "Disk_checkpoint.avhdx"
    write_child(child, parent, {0: (PARTIALLY_PRESENT, first, sectors)}, len(data))
    done = bf("boot", child, "--expect", "BLOCKFORENSICS-BOOT-OK sample", "--timeout",
              BOOT_TIMEOUT, "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert not boot(parent, timeout=15).ok  # the parent alone does not boot


# ------------------------------------------------- checks run inside the guest
def bf(*args: object, timeout: float = 3 * BOOT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """The blockforensics command line, in a subprocess: exit code, stdout, stderr."""
    return subprocess.run([sys.executable, "-m", "blockforensics", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_initramfs_carries_drivers_in_load_order_and_fsck(boot_disk: Path) -> None:
    require_tools("cpio")
    names = subprocess.run([require("cpio"), "-t", "--quiet"],
                           input=gzip.decompress(read_fat_file(boot_disk, "initrd.gz")),
                           capture_output=True, check=True).stdout.decode().split()
    modules = [n.split("-", 1)[1] for n in names if n.startswith("lib/modules/bf/")]
    for before, after in [("scsi_mod.ko", "libata.ko"), ("libata.ko", "ata_piix.ko"),
                          ("scsi_mod.ko", "sd_mod.ko"), ("virtio.ko", "virtio_blk.ko"),
                          ("fat.ko", "vfat.ko")]:
        assert modules.index(before) < modules.index(after)
    assert {"bin/busybox", "bin/fsck.fat", "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6", "init"} <= set(names)
    assert b"console=tty0 console=ttyS0" in read_fat_file(boot_disk, "syslinux.cfg")


@pytest.mark.parametrize("command", ["two\nlines", "tab\there", ""])
def test_run_needs_one_printable_line(boot_disk: Path, command: str) -> None:
    done = bf("boot", boot_disk, "--run", "true", "--run", command)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "check command" in done.stderr


def test_run_needs_an_expected_text(boot_disk: Path) -> None:
    with pytest.raises(UsageError, match="expected text"):
        boot(boot_disk, expect=None, run=["true"])


@pytest.mark.slow
def test_run_checks_the_disk_from_inside_the_guest(disk_copy: Path) -> None:
    """The partition table the guest's kernel sees, the digest of a file read through
    its vfat driver, and fsck.fat: each with its output and exit status 0."""
    require_tools(*BOOT_TOOLS)
    data = os.urandom(300_000)
    write_fat_file(disk_copy, "DATA.BIN", data)
    before = sha256(disk_copy)
    checks = ["cat /proc/partitions",
              "mkdir -p /mnt/fat && mount -t vfat -o ro /dev/sda1 /mnt/fat && "
              "sha256sum /mnt/fat/DATA.BIN",
              "fsck.fat -n /dev/sda1"]
    done = bf("boot", disk_copy, "--expect", f"{MARKER_PREFIX} sample", "--timeout",
              BOOT_TIMEOUT, "--json", *(arg for check in checks for arg in ("--run", check)))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert [run["command"] for run in result["runs"]] == checks
    assert [run["status"] for run in result["runs"]] == [0, 0, 0]
    assert all(run["error"] is None and run["seconds"] > 0 for run in result["runs"])
    partitions, digest, fsck = (run["output"] for run in result["runs"])
    length = fat_partition(disk_copy)[1]
    rows = [line.split() for line in partitions.splitlines()[2:]]
    assert rows == [["8", "0", str(DEFAULT_SIZE // 1024), "sda"],
                    ["8", "1", str(length // 1024), "sda1"]]
    assert digest == f"{hashlib.sha256(data).hexdigest()}  /mnt/fat/DATA.BIN\n"
    assert "/dev/sda1: 7 files" in fsck and "Cannot initialize" not in fsck
    for run in result["runs"]:  # no sentinel, no echo of the typed line
        assert "bf-begin" not in run["output"] and "bf-end" not in run["output"]
        assert run["output"] in result["console"].replace("\r\n", "\n")
    assert sha256(disk_copy) == before


@pytest.mark.slow
def test_failing_check_fails_the_boot(boot_disk: Path) -> None:
    """The marker appears, but a check exits non-zero: exit 1, every status reported."""
    require_tools(*BOOT_TOOLS)
    done = bf("boot", boot_disk, "--expect", f"{MARKER_PREFIX} sample", "--timeout",
              BOOT_TIMEOUT, "--run", "ls /no/such/file", "--run", "echo done; exit 7",
              "--run", "uname -s")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"booted: '{MARKER_PREFIX} sample' appeared after")
    assert lines[1:] == ["$ ls /no/such/file",
                         "ls: /no/such/file: No such file or directory",
                         "[exit status 1]",
                         "$ echo done; exit 7", "done", "[exit status 7]",
                         "$ uname -s", "Linux", "[exit status 0]"]


@pytest.mark.slow
def test_check_that_does_not_finish_times_out(boot_disk: Path) -> None:
    require_tools(*BOOT_TOOLS)
    result = boot(boot_disk, expect=f"{MARKER_PREFIX} sample", timeout=BOOT_TIMEOUT,
                  run=["echo started; sleep 600", "true"], run_timeout=5)
    assert not result.ok and result.seconds_to_marker is not None
    stuck, after = result.runs
    assert stuck.status is None and stuck.error == "timed out after 5 s"
    assert stuck.output == "started\n" and 5 <= stuck.seconds < 15
    assert after.status is None and after.error is not None and "not run" in after.error
    assert "runs 0/2 ok" in repr(result)

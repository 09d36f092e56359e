"""Other hypervisors' disk images as sources: VHDX, VMDK and qcow2 (over backing files),
read through dissect.hypervisor and checked against ``qemu-img convert -O raw``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sample_disks import MIB, file_tree, make_fat, run
from support import require_module, require_tools

from blockforensics.formats import open_disk, probe

CLI = [sys.executable, "-m", "blockforensics.cli"]


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> image file: a FAT32 disk of files in each format, and a qcow2 chain of
    three (a relative and an absolute backing name) with writes at each level."""
    require_tools("qemu-img", "qemu-io", "mkfs.fat", "mcopy")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    work = tmp_path_factory.mktemp("foreign")
    raw = make_fat(work / "disk.raw", 40 * MIB + 3 * 512 * 1024,
                   ["-F", "32", "-s", "1"], file_tree(work / "tree", 7, 40, 8 * MIB))
    out = {"raw": raw}
    for name, args in {"vhdx": ["-O", "vhdx"], "vmdk": ["-O", "vmdk"],
                       "vmdk-flat": ["-O", "vmdk", "-o", "subformat=monolithicFlat"]}.items():
        out[name] = work / f"disk.{name}"
        run("qemu-img", "convert", "-f", "raw", *args, raw, out[name])
    base, mid, top = work / "base.qcow2", work / "chain" / "mid.qcow2", work / "top.qcow2"
    mid.parent.mkdir()
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", mid)
    run("qemu-io", "-c", "write -P 0x61 1M 192k", "-c", "write -z 4M 64k", mid)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
    run("qemu-io", "-c", "write -P 0x62 1088k 4k", "-c", "write -P 0x63 40M 12k", top)
    out["qcow2-chain"] = top
    return out


@pytest.mark.parametrize("name, plugin", [("vhdx", "vhdx"), ("vmdk", "vmdk"),
                                          ("vmdk-flat", "vmdk"), ("qcow2-chain", "qcow2")])
def test_backup_and_export_read_what_qemu_reads(images, tmp_path: Path, name: str,
                                                plugin: str) -> None:
    image = images[name]
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-O", "raw", image, reference)
    assert probe(image).name == plugin
    with open_disk(image) as disk:
        assert disk.size == reference.stat().st_size
        assert disk.read(0, disk.size) == reference.read_bytes()

    done = cli("backup", image, tmp_path / "chain")
    assert done.returncode == 0, done.stderr
    assert "whole disk (fat32)" in done.stdout  # the file system inside is read too
    restored = tmp_path / "restored.raw"
    assert cli("restore", tmp_path / "chain", restored).returncode == 0
    # allocated blocks only: the files equal, and where the volume allocates, the bytes
    run("fsck.fat", "-n", restored)
    done = cli("backup", image, tmp_path / "all", "--all-blocks")
    assert done.returncode == 0, done.stderr
    assert cli("restore", tmp_path / "all", tmp_path / "all.raw").returncode == 0
    assert (tmp_path / "all.raw").read_bytes() == reference.read_bytes()

    vhd = tmp_path / "out.vhd"
    done = cli("export", image, vhd)
    assert done.returncode == 0, done.stderr
    compared = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "raw", str(vhd),
                               str(reference)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr


def test_broken_images_are_one_line_errors(images, tmp_path: Path) -> None:
    for name in ("vhdx", "qcow2-chain"):
        broken = tmp_path / images[name].name
        data = bytearray(images[name].read_bytes()[: 1 << 20])
        data[8:64] = bytes(56)  # headers cut off and zeroed
        broken.write_bytes(bytes(data))
        done = cli("backup", broken, tmp_path / f"chain-{name}")
        assert done.returncode == 2, done.stdout
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_missing_backing_file_is_named(images, tmp_path: Path) -> None:
    top = tmp_path / "lonely.qcow2"
    run("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", top,
        "64M")
    done = cli("backup", top, tmp_path / "chain")
    assert done.returncode == 2 and "gone.qcow2 not found" in done.stderr


@pytest.mark.parametrize("subformat", ["monolithicSparse", "twoGbMaxExtentSparse"])
def test_a_vmdk_whose_parent_was_written_since_is_refused_as_qemu_refuses_it(
        tmp_path: Path, subformat: str) -> None:
    """A snapshot VMDK names its parent's content ID (``parentCID``); writing the parent
    afterwards gives it a new CID.  qemu-img then refuses to read the child; the backup
    refuses it too, in one line naming the parent, where it read the changed parent's
    blocks without a word.  The child on its unchanged parent still reads as QEMU reads
    it."""
    require_tools("qemu-img", "qemu-io")
    parent, child = tmp_path / "base.vmdk", tmp_path / "base-000001.vmdk"
    run("qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", parent, "8M")
    run("qemu-io", "-c", "write -P 0x41 0 1M", parent)
    run("qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", "-b",
        parent.name, "-F", "vmdk", child)
    run("qemu-io", "-c", "write -P 0x42 512k 64k", child)
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-O", "raw", child, reference)
    with open_disk(child) as disk:
        assert disk.read(0, disk.size) == reference.read_bytes()
    run("qemu-io", "-c", "write -P 0x43 2M 64k", parent)  # the parent's CID changes
    assert subprocess.run(["qemu-img", "convert", "-O", "raw", str(child),
                           str(tmp_path / "refused.raw")], capture_output=True).returncode != 0
    done = cli("backup", child, tmp_path / "chain")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "'base.vmdk' was written after it was made" in \
        done.stderr, done.stderr
    assert not (tmp_path / "chain").exists()

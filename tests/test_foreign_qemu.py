"""Images made by the real qemu-img and qemu-io in settings the other tests do not use
(sizes that are no multiple of 8 KiB or of a cluster, data in the last partial
cluster, children larger than their parents, qcow2 version 2, zstd, external data
files …): each reads exactly what ``qemu-img convert -O raw`` reads, and ``present()``
covers every block holding a non-zero byte and agrees with ``qemu-img map``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_tools

from blockforensics.formats import open_disk

MIB = 1 << 20
#: 8 MiB and three sectors: no multiple of 4 KiB, 8 KiB, a grain or a cluster
SIZE = 8 * MIB + 3 * 512
#: qemu-io commands writing a pattern at the start, in the middle, zeros, a partial
#: block, and the disk's last sector
WRITES = ["write -P 0x61 0 4k", "write -P 0x62 1M 100k", "write -z 2M 64k",
          "write -P 0x63 5M 1536", f"write -P 0x64 {SIZE - 512} 512"]


def run(*args: object, cwd: Path | None = None) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=120, cwd=cwd).stdout


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def qemu_io(image: Path, fmt: str, *commands: str) -> None:
    run("qemu-io", "-f", fmt, *(c for command in commands for c in ("-c", command)), image)


def made(work: Path, name: str, fmt: str, *options: str, size: int = SIZE,
         writes: list[str] = WRITES) -> Path:
    """``work/name`` made by ``qemu-img create`` with ``options`` and written by qemu-io."""
    image = work / name
    run("qemu-img", "create", "-q", "-f", fmt, *options, image, size)
    qemu_io(image, fmt, *writes)
    return image


def vmdk_odd(work: Path) -> Path:
    return made(work, "odd.vmdk", "vmdk")


def vmdk_split_odd(work: Path) -> Path:
    return made(work, "split.vmdk", "vmdk", "-o", "subformat=twoGbMaxExtentSparse")


def vmdk_stream_odd(work: Path) -> Path:
    image = work / "stream.vmdk"
    run("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
        vmdk_odd(work), image)
    return image


def vmdk_child_larger(work: Path) -> Path:
    """A child of 10 MiB over an odd-sized parent, with data past the parent's end."""
    vmdk_odd(work)
    child = made(work, "child.vmdk", "vmdk", "-b", "odd.vmdk", "-F", "vmdk", size=10 * MIB,
                 writes=["write -P 0x71 3M 4k", f"write -P 0x72 {9 * MIB} 4k"])
    return child


#: name -> the builder of the image in a directory (returns the file to open)
CASES = {
    "vmdk-odd-size": vmdk_odd,
    "vmdk-2gb-extents-odd-size": vmdk_split_odd,
    "vmdk-stream-odd-size": vmdk_stream_odd,
    "vmdk-child-larger-than-parent": vmdk_child_larger,
}


def flags_of(disk, starts_stops) -> np.ndarray:
    flags = np.zeros(disk.n_blocks, dtype=bool)
    for start, stop in starts_stops:
        flags[start // disk.block_size : -(-stop // disk.block_size)] = True
    return flags


@pytest.mark.parametrize("name", list(CASES))
def test_reads_what_qemu_reads_and_maps_what_qemu_maps(name: str, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    image = CASES[name](tmp_path)
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-O", "raw", image, reference)
    expected = reference.read_bytes()
    with open_disk(image) as disk:
        assert disk.size == len(expected)
        assert disk.read(0, disk.size) == expected
        present = flags_of(disk, [])
        present[disk.present().positions()] = True
        data = np.frombuffer(expected.ljust(disk.n_blocks * disk.block_size, b"\0"), np.uint8)
        holding = data.reshape(disk.n_blocks, -1).any(axis=1)
        assert not (holding & ~present).any(), np.flatnonzero(holding & ~present)[:10]
        mapped = json.loads(run("qemu-img", "map", "--output=json", image))
        qemu = flags_of(disk, [(m["start"], m["start"] + m["length"]) for m in mapped
                               if m["data"] and not m["zero"]])
        assert np.array_equal(present, qemu), np.flatnonzero(present ^ qemu)[:10]


@pytest.mark.parametrize("name", ["vmdk-odd-size", "vmdk-child-larger-than-parent"])
def test_backup_restores_what_qemu_reads(name: str, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    image = CASES[name](tmp_path)
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-O", "raw", image, reference)
    done = cli("backup", image, tmp_path / "chain", "--all-blocks")
    assert done.returncode == 0, done.stderr
    done = cli("restore", tmp_path / "chain", tmp_path / "restored.raw")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "restored.raw").read_bytes() == reference.read_bytes()

"""Foreign images report only what their allocation tables map (formats/foreign.py):
qcow2 L1/L2 (over a backing file; more variants in test_foreign_qemu.py), VMDK grain tables (sparse,
streamOptimized, split in 2 GB extents, over a parent), VHDX BAT, and the project's
own dynamic VHD reader.  ``present()`` is checked against ``qemu-img map`` (VHDX: the
written ranges, qemu maps every VHDX block as data), and a backup that reads only those
blocks restores to exactly ``qemu-img convert -O raw``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_tools

from blockforensics.formats import open_disk

MIB, GIB = 1 << 20, 1 << 30
#: qemu-io writes into every image: (pattern byte or None for a zero write, offset, length)
WRITES = [(0x61, 1 * MIB, 3 * MIB), (0x62, 1500 * MIB, 100 << 10), (None, 10 * MIB, MIB),
          (0x63, 3 * GIB + 7 * MIB, 64 << 10)]
SIZE = 4 * GIB + 3 * 512  # odd: a partial last block
#: images whose block status qemu reports as all data
WHOLE = ("vhdx", "vmdk-flat")
#: the overlays' own writes, over a base holding WRITES
TOP_WRITES = [(0x64, 2 * MIB, 8 << 10), (0x65, 1900 * MIB, 64 << 10)]


def run(*args: object) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=300).stdout


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def qemu_io(image: Path, fmt: str, writes: list[tuple[int | None, int, int]]) -> None:
    commands = [c for pattern, at, n in writes
                for c in ("-c", f"write -z {at} {n}" if pattern is None
                          else f"write -P {pattern:#x} {at} {n}")]
    run("qemu-io", "-f", fmt, *commands, image)


def create(path: Path, fmt: str, *options: str, size: int = SIZE,
           writes: list[tuple[int | None, int, int]] = WRITES) -> Path:
    run("qemu-img", "create", "-q", "-f", fmt, *options, path, size)
    qemu_io(path, fmt, writes)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    work = tmp_path_factory.mktemp("holes")
    out = {
        "qcow2": create(work / "d.qcow2", "qcow2"),
        "vmdk": create(work / "d.vmdk", "vmdk"),
        "vmdk-2gb-extents": create(work / "split.vmdk", "vmdk",
                                   "-o", "subformat=twoGbMaxExtentSparse"),
        "vhdx": create(work / "d.vhdx", "vhdx"),
        "vhd": create(work / "d.vhd", "vpc"),
    }
    out["vmdk-flat"] = create(work / "flat.vmdk", "vmdk", "-o", "subformat=monolithicFlat")
    out["vmdk-stream"] = work / "s.vmdk"
    run("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", out["qcow2"],
        out["vmdk-stream"])
    for fmt in ("qcow2", "vmdk"):
        top = work / "over" / f"top.{fmt}"
        top.parent.mkdir(exist_ok=True)
        run("qemu-img", "create", "-q", "-f", fmt, "-b", f"../d.{fmt}", "-F", fmt, top)
        qemu_io(top, fmt, TOP_WRITES)
        out[f"{fmt}-over-backing"] = top
    return out


def _blocks(starts: list[int], stops: list[int], block_size: int, n: int) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    for start, stop in zip(starts, stops):
        flags[start // block_size : -(-stop // block_size)] = True
    return flags


def _expected(image: Path, name: str, block_size: int, n: int) -> np.ndarray:
    """The blocks qemu maps as data; for VHDX and flat VMDK (whose block status qemu
    does not report) the written, non-zero ranges."""
    if name in WHOLE:
        ranges = [(at, at + length) for pattern, at, length in WRITES if pattern is not None]
    else:
        mapped = json.loads(run("qemu-img", "map", "--output=json", image))
        ranges = [(m["start"], m["start"] + m["length"]) for m in mapped
                  if m["data"] and not m["zero"]]
    return _blocks([a for a, _ in ranges], [b for _, b in ranges], block_size, n)


NAMES = ["qcow2", "qcow2-over-backing", "vmdk", "vmdk-flat", "vmdk-stream",
         "vmdk-2gb-extents", "vmdk-over-backing", "vhdx", "vhd"]


@pytest.mark.parametrize("name", NAMES)
def test_present_is_what_the_allocation_tables_map(images, name: str) -> None:
    image = images[name]
    with open_disk(image) as disk:
        present = disk.present()
        flags = np.zeros(disk.n_blocks, dtype=bool)
        flags[present.positions()] = True
        expected = _expected(image, name, disk.block_size, disk.n_blocks)
        if name in WHOLE:  # whole VHDX blocks, file-system blocks: the data, little more
            assert not (expected & ~flags).any()
            assert present.count() * disk.block_size <= 3 * 32 * MIB
        else:
            assert np.array_equal(flags, expected), (np.flatnonzero(flags ^ expected)[:10])
    print(f"{name}: {present.count() * disk.block_size / MIB:.2f} MiB present of "
          f"{disk.size / GIB:.1f} GiB")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_backup_reads_the_mapped_blocks_and_restores_what_qemu_reads(images, tmp_path: Path,
                                                                     name: str) -> None:
    image = images[name]
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-O", "raw", image, reference)
    started = time.perf_counter()
    done = cli("backup", image, tmp_path / "chain", "--all-blocks")
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    stored = sum(f.stat().st_size for f in (tmp_path / "chain").iterdir())
    assert stored < 40 * MIB  # the data (and whole VHDX blocks), not 4 GiB of zeros
    restored = tmp_path / "restored.raw"
    done = cli("restore", tmp_path / "chain", restored)
    assert done.returncode == 0, done.stderr
    assert restored.stat().st_size == reference.stat().st_size  # VHD: qemu's CHS size
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", restored, reference)
    print(f"{name}: backup of a {SIZE / GIB:.0f} GiB image in {took:.1f} s, "
          f"chain {stored / MIB:.1f} MiB")


def test_an_l2_table_past_the_end_of_the_file_is_one_line(images, tmp_path: Path) -> None:
    cut = tmp_path / "cut.qcow2"
    data = images["qcow2"].read_bytes()
    cut.write_bytes(data[: 3 * 65536])  # header, refcounts, L1: the L2 tables are gone
    done = cli("backup", cut, tmp_path / "chain", "--all-blocks")
    assert done.returncode == 2, done.stdout
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr

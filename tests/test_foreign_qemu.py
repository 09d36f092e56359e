"""Images made by the real qemu-img and qemu-io in settings the other tests do not use
(sizes that are no multiple of 8 KiB or of a cluster, data in the last partial
cluster, children larger than their parents, qcow2 version 2, zstd, external data
files …): each reads exactly what ``qemu-img convert -O raw`` reads, and ``present()``
covers every block holding a non-zero byte and agrees with ``qemu-img map``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_tools

from blockforensics.formats import open_disk
from blockforensics.formats.vhdx import (
    FILE_PARAMETERS,
    LOGICAL_SECTOR_SIZE,
    METADATA_GUID,
    PHYSICAL_SECTOR_SIZE,
    VIRTUAL_DISK_SIZE,
)

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
    run("qemu-io", "-f", fmt, *(c for command in commands for c in ("-c", command)), image,
        cwd=image.parent)


def made(work: Path, name: str, fmt: str, *options: str, size: int = SIZE,
         writes: list[str] = WRITES) -> Path:
    """``work/name`` made by ``qemu-img create`` with ``options`` and written by qemu-io."""
    image = work / name
    run("qemu-img", "create", "-q", "-f", fmt, *options, image, size, cwd=work)
    if writes:
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


def qcow2(*options: str) -> Callable[[Path], Path]:
    return lambda work: made(work, "d.qcow2", "qcow2", "-o", ",".join(options))


def qcow2_compressed(*options: str) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        image = work / "packed.qcow2"
        run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", ",".join(options),
            made(work, "d.qcow2", "qcow2"), image)
        return image
    return build


def qcow2_chain(work: Path) -> Path:
    """base (6 MiB, all 0x11) <- sub/mid (10 MiB, relative name, version 2: its zeros
    are written) <- top (9 MiB, absolute name): zero clusters over the backing files'
    data (with and without unmap), a discard, data past the base's end."""
    run("qemu-img", "create", "-q", "-f", "qcow2", work / "base.qcow2", 6 * MIB)
    qemu_io(work / "base.qcow2", "qcow2", f"write -P 0x11 0 {6 * MIB}")
    mid = work / "sub" / "mid.qcow2"
    mid.parent.mkdir()
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "../base.qcow2",
        "-F", "qcow2", mid, 10 * MIB)
    qemu_io(mid, "qcow2", "write -z 1M 64k", "write -P 0x22 5M 2M", f"write -P 0x23 {9 * MIB} 4k")
    top = work / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top, 9 * MIB)
    qemu_io(top, "qcow2", "write -z 2M 64k", "write -z -u 3M 128k", "discard 4M 64k",
            "write -P 0x33 8M 512")
    return top


def qcow2_over_shorter_backing(work: Path) -> Path:
    """A 10 MiB qcow2 over a 3 MiB raw file, with data past the backing file's end."""
    run("qemu-img", "create", "-q", "-f", "raw", work / "base.raw", 3 * MIB)
    qemu_io(work / "base.raw", "raw", f"write -P 0x44 0 {3 * MIB}")
    return made(work, "over.qcow2", "qcow2", "-b", "base.raw", "-F", "raw", size=10 * MIB,
                writes=["write -P 0x45 2M 2M", "write -P 0x46 8M 4k"])


def qcow2_snapshot_resized(work: Path) -> Path:
    """Written, an internal snapshot taken, written over, grown, shrunk (the L1 table
    larger than the disk needs): the active layer is read."""
    image = made(work, "snap.qcow2", "qcow2")
    run("qemu-img", "snapshot", "-c", "s1", image)
    qemu_io(image, "qcow2", "write -P 0x66 1M 64k", "discard 4M 2M")
    run("qemu-img", "resize", "-q", image, 40 * MIB)
    qemu_io(image, "qcow2", f"write -P 0x67 {39 * MIB} 4k")
    run("qemu-img", "resize", "-q", "--shrink", image, 6 * MIB + 512)
    return image


def qcow2_dirty(work: Path) -> Path:
    """lazy_refcounts and a crash (qemu-io's abort): the dirty bit stays set."""
    image = work / "dirty.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", image, SIZE)
    subprocess.run(["qemu-io", "-c", "write -P 0x55 1M 64k", "-c", "abort", str(image)],
                   capture_output=True, timeout=60)
    return image


def vpc(subformat: str, force_size: str) -> Callable[[Path], Path]:
    return lambda work: made(work, "d.vhd", "vpc", "-o",
                             f"subformat={subformat},force_size={force_size}")


def vmdk_zero_grains_over_parent(work: Path) -> Path:
    """Zero grains (zeroed_grain=on) in a child over a parent full of data: they read
    zeros, never the parent's data."""
    made(work, "full.vmdk", "vmdk", writes=[f"write -P 0x11 0 {SIZE}"])
    return made(work, "zeroed.vmdk", "vmdk", "-o", "zeroed_grain=on", "-b", "full.vmdk", "-F",
                "vmdk", writes=["write -z 1M 64k", "write -z -u 2M 128k", "discard 3M 64k",
                                "write -P 0x12 4M 512"])


#: name -> (the builder of the image in a directory, returning the file to open;
#: qemu's name of its format; whether qemu-img map tells its data blocks: for VHDX and
#: fixed VHDs it maps every block as data)
CASES: dict[str, tuple[Callable[[Path], Path], str, bool]] = {
    "vmdk-odd-size": (vmdk_odd, "vmdk", True),
    "vmdk-2gb-extents-odd-size": (vmdk_split_odd, "vmdk", True),
    "vmdk-stream-odd-size": (vmdk_stream_odd, "vmdk", True),
    "vmdk-child-larger-than-parent": (vmdk_child_larger, "vmdk", True),
    "qcow2-version-2": (qcow2("compat=0.10"), "qcow2", True),
    "qcow2-512-byte-clusters": (qcow2("cluster_size=512"), "qcow2", True),
    "qcow2-2m-clusters-lazy-refcounts": (qcow2("cluster_size=2M,lazy_refcounts=on"),
                                         "qcow2", True),
    "qcow2-extended-l2": (qcow2("extended_l2=on"), "qcow2", True),
    "qcow2-preallocation-falloc-4k-clusters": (qcow2("preallocation=falloc,cluster_size=4k"),
                                               "qcow2", True),
    "qcow2-extended-l2-compressed": (qcow2_compressed("extended_l2=on,cluster_size=128k"),
                                     "qcow2", True),
    "qcow2-external-data-file": (qcow2("data_file=d.data"), "qcow2", True),
    "qcow2-zlib": (qcow2_compressed("cluster_size=4096"), "qcow2", True),
    "qcow2-zstd": (qcow2_compressed("compression_type=zstd"), "qcow2", True),
    "qcow2-chain": (qcow2_chain, "qcow2", True),
    "qcow2-snapshot-resized": (qcow2_snapshot_resized, "qcow2", True),
    "qcow2-dirty": (qcow2_dirty, "qcow2", True),
    "qcow2-empty": (lambda work: made(work, "e.qcow2", "qcow2", writes=[]), "qcow2", True),
    "vmdk-zero-grains-over-parent": (vmdk_zero_grains_over_parent, "vmdk", True),
    "vmdk-empty": (lambda work: made(work, "e.vmdk", "vmdk", writes=[]), "vmdk", True),
    "qcow2-over-shorter-raw": (qcow2_over_shorter_backing, "qcow2", True),
    "vhd-dynamic": (vpc("dynamic", "off"), "vpc", True),
    "vhd-fixed-force-size": (vpc("fixed", "on"), "vpc", False),
    "vhdx-1m-blocks": (lambda work: made(work, "d.vhdx", "vhdx", "-o", "block_size=1M"),
                       "vhdx", False),
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
    build, fmt, maps = CASES[name]
    image = build(tmp_path)
    reference = tmp_path / "reference.raw"
    # QEMU 7.2 finds an external data file from its working directory, the reader
    # beside the image: the same here
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", image, reference, cwd=image.parent)
    expected = reference.read_bytes()
    with open_disk(image) as disk:
        assert disk.size == len(expected)
        assert disk.read(0, disk.size) == expected
        present = flags_of(disk, [])
        present[disk.present().positions()] = True
        data = np.frombuffer(expected.ljust(disk.n_blocks * disk.block_size, b"\0"), np.uint8)
        holding = data.reshape(disk.n_blocks, -1).any(axis=1)
        assert not (holding & ~present).any(), np.flatnonzero(holding & ~present)[:10]
        if maps:
            mapped = json.loads(run("qemu-img", "map", "-f", fmt, "--output=json", image,
                                    cwd=image.parent))
            qemu = flags_of(disk, [(m["start"], m["start"] + m["length"]) for m in mapped
                                   if m["data"] and not m["zero"]])
            assert np.array_equal(present, qemu), np.flatnonzero(present ^ qemu)[:10]


@pytest.mark.parametrize("name", ["vmdk-odd-size", "vmdk-child-larger-than-parent",
                                  "qcow2-chain", "qcow2-over-shorter-raw", "qcow2-zstd"])
def test_backup_restores_what_qemu_reads(name: str, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    build, fmt, _ = CASES[name]
    image = build(tmp_path)
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", image, reference)
    done = cli("backup", image, tmp_path / "chain", "--all-blocks")
    assert done.returncode == 0, done.stderr
    done = cli("restore", tmp_path / "chain", tmp_path / "restored.raw")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "restored.raw").read_bytes() == reference.read_bytes()


#: qemu-img options the cases above leave out: name -> (format, ``-o`` options of
#: ``qemu-img create``, or of ``qemu-img convert`` from a written qcow2 when the third
#: item gives convert's own flags)
MATRIX: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "qcow2-refcount-bits-1": ("qcow2", "refcount_bits=1", None),
    "qcow2-refcount-bits-64": ("qcow2", "refcount_bits=64,lazy_refcounts=on", None),
    "qcow2-preallocation-full": ("qcow2", "preallocation=full", None),
    "qcow2-raw-external-data-file": ("qcow2", "data_file=d.data,data_file_raw=on", None),
    "qcow2-version-2-2m-clusters": ("qcow2", "compat=0.10,cluster_size=2M", None),
    "qcow2-zlib-512-byte-clusters": ("qcow2", "cluster_size=512", ("-c",)),
    "qcow2-zstd-2m-clusters": ("qcow2", "cluster_size=2M,compression_type=zstd", ("-c",)),
    "vhd-fixed": ("vpc", "subformat=fixed", None),
    "vhd-dynamic-force-size": ("vpc", "subformat=dynamic,force_size=on", None),
    "vhd-dynamic-converted": ("vpc", "subformat=dynamic", ()),
    "vhdx-fixed": ("vhdx", "subformat=fixed", None),
    "vhdx-256m-blocks": ("vhdx", "block_size=256M", None),
    "vhdx-4m-log-no-zero-state": ("vhdx", "log_size=4M,block_state_zero=off", None),
    "vhdx-converted": ("vhdx", "subformat=dynamic", ()),
    "vmdk-monolithic-flat": ("vmdk", "subformat=monolithicFlat", None),
    "vmdk-2gb-flat-extents": ("vmdk", "subformat=twoGbMaxExtentFlat", None),
    "vmdk-lsilogic-hwversion-6": ("vmdk", "adapter_type=lsilogic,hwversion=6", None),
    "vmdk-ide-compat6": ("vmdk", "adapter_type=ide,compat6=on", None),
    "vmdk-stream-converted": ("vmdk", "subformat=streamOptimized", ()),
    "vdi-static-converted": ("vdi", "static=on", ()),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MATRIX))
def test_every_qemu_img_option_backs_up_and_restores_what_qemu_reads(name: str,
                                                                     tmp_path: Path) -> None:
    """Each image backed up (as the command line does: its survey, then its blocks)
    and restored is byte for byte what ``qemu-img convert -O raw`` reads of it."""
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    fmt, options, convert = MATRIX[name]
    if convert is None:
        image = made(tmp_path, f"d.{fmt}", fmt, "-o", options)
    else:
        image = tmp_path / f"c.{fmt}"
        run("qemu-img", "convert", *convert, "-O", fmt, "-o", options,
            made(tmp_path, "written.qcow2", "qcow2"), image, cwd=tmp_path)
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", image, tmp_path / "reference.raw",
        cwd=tmp_path)
    done = cli("backup", image, tmp_path / "chain")
    assert done.returncode == 0, done.stderr
    done = cli("restore", tmp_path / "chain", tmp_path / "restored.raw")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "restored.raw").read_bytes() == (tmp_path / "reference.raw").read_bytes()


def test_preallocated_clusters_holding_no_data_are_absent(tmp_path: Path) -> None:
    """``preallocation=metadata`` maps every cluster to a hole of the file: they read
    as zeros, so only the written ones count (qemu-img map: the others are zeros)."""
    require_tools("qemu-img", "qemu-io")
    image = qcow2("preallocation=metadata")(tmp_path)
    with open_disk(image) as disk:
        present = disk.present()
        written = flags_of(disk, [(0, 64 << 10), (MIB, MIB + (128 << 10)),
                                  (5 * MIB, 5 * MIB + (64 << 10)), (8 * MIB, SIZE)])
        flags = flags_of(disk, [])
        flags[present.positions()] = True
        assert not (flags & ~written).any(), np.flatnonzero(flags & ~written)[:10]
        assert flags[flags_of(disk, [(0, 4096), (MIB, MIB + (100 << 10)), (SIZE - 512, SIZE)])
                     ].all()


@pytest.mark.parametrize("name, cut", [("vmdk-odd-size", 0.75), ("vmdk-stream-odd-size", 0.3),
                                       ("vhdx-1m-blocks", 0.75), ("qcow2-zlib", 0.4),
                                       ("qcow2-chain", 0.5)])
def test_a_cut_image_is_one_line_and_exit_2(name: str, cut: float, tmp_path: Path) -> None:
    """An image cut short: its tables or data past the end of the file are a one-line
    error (dissect's own errors included), never a traceback or bytes read short, and
    the chain the backup began (the data is read after it is made) is removed."""
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    image = CASES[name][0](tmp_path)
    data = image.read_bytes()
    image.write_bytes(data[: int(len(data) * cut)])
    done = cli("backup", image, tmp_path / "chain", "--all-blocks")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "chain").exists()


def test_a_qcow2_cut_before_its_last_data_cluster_is_refused(tmp_path: Path) -> None:
    """The last data cluster cut off: QEMU reads it as zeros (``qemu-img check``
    reports it); a backup refuses it rather than store zeros for lost data, and an
    existing empty directory given as the chain stays, empty."""
    require_tools("qemu-img", "qemu-io")
    image = qcow2("cluster_size=64k")(tmp_path)
    with open_disk(image) as disk:
        assert disk.read(SIZE - 512, 512) == b"\x64" * 512
    data = image.read_bytes()
    image.write_bytes(data[: len(data) - 65536])
    (tmp_path / "chain").mkdir()
    done = cli("backup", image, tmp_path / "chain")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "lie past the end of the file" in done.stderr, \
        done.stderr
    assert not any((tmp_path / "chain").iterdir())


def test_a_petabyte_qcow2_of_a_few_clusters_is_refused_in_one_line(tmp_path: Path) -> None:
    """1 PiB of 64 KiB clusters (a 200 KiB file): the per-cluster and per-block maps
    would not fit in memory; refused in one line (no MemoryError), no chain made."""
    require_tools("qemu-img")
    image = tmp_path / "huge.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", image, "1P")
    done = cli("backup", image, tmp_path / "chain")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "memory" in done.stderr, done.stderr
    assert not (tmp_path / "chain").exists()


def _qcow2_first_l2_entry(data: bytes) -> int:
    """Byte offset of the first L2 entry of a qcow2 (header: l1_table_offset at 40)."""
    l1 = int.from_bytes(data[40:48], "big")
    return int.from_bytes(data[l1 : l1 + 8], "big") & 0x00FFFFFFFFFFFE00


@pytest.mark.parametrize("damage", ["unaligned data cluster", "header length past a cluster"])
def test_a_corrupt_qcow2_that_qemu_refuses_is_refused_in_one_line(damage: str,
                                                                  tmp_path: Path) -> None:
    """A data cluster's offset off a cluster boundary, a header longer than its cluster
    (qemu-img convert refuses both): one line, exit 2, never bytes read from the wrong
    place."""
    require_tools("qemu-img", "qemu-io")
    image = qcow2("cluster_size=64k")(tmp_path)
    data = bytearray(image.read_bytes())
    if damage == "unaligned data cluster":
        at = _qcow2_first_l2_entry(data)
        data[at : at + 8] = (int.from_bytes(data[at : at + 8], "big") + 512).to_bytes(8, "big")
    else:
        data[100:104] = (1 << 20).to_bytes(4, "big")  # header_length
    image.write_bytes(data)
    qemu = subprocess.run(["qemu-img", "convert", "-O", "raw", image, tmp_path / "q.raw"],
                          capture_output=True, timeout=60)
    assert qemu.returncode != 0
    done = cli("backup", image, tmp_path / "chain")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "chain").exists()


#: the BAT region's GUID (2DC27766-F623-4200-9D64-115E9BFD4A08) as stored, [MS-VHDX] 2.2.3.2
BAT_REGION = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")


def _sealed_at(data: bytearray, at: int, length: int) -> None:
    """Fill in the CRC-32C at bytes 4-7 of the VHDX structure of ``length`` bytes at ``at``."""
    from blockforensics.checksum import crc32c

    data[at + 4 : at + 8] = bytes(4)
    data[at + 4 : at + 8] = crc32c(bytes(data[at : at + length])).to_bytes(4, "little")


def _vhdx_damaged(data: bytearray, damage: str) -> None:
    """Damage a qemu-made VHDX (headers at 64 and 128 KiB, region tables at 192 and
    256 KiB, the log at 1 MiB): as ``damage`` says."""
    current = max((64 << 10, 128 << 10), key=lambda at: int.from_bytes(data[at + 8 : at + 16],
                                                                       "little"))
    bat_entry = next(at for at in range((192 << 10) + 16, (192 << 10) + 16 + 32 * 8, 32)
                     if data[at : at + 16] == BAT_REGION)  # a region table entry
    bat = int.from_bytes(data[bat_entry + 16 : bat_entry + 24], "little")
    if damage == "both headers' CRC-32C":
        for at in (64 << 10, 128 << 10):
            data[at + 4] ^= 0xFF
    elif damage.startswith("payload block"):  # BAT entry 0: fully present (6) at a MiB
        mib = {"payload block at the header": 0, "payload block on the BAT": bat >> 20,
               "payload block past any file": 1 << 40}[damage]
        data[bat : bat + 8] = (mib << 20 | 6).to_bytes(8, "little")
    elif damage == "BAT region of 0 bytes":
        for table in (192 << 10, 256 << 10):
            at = table + bat_entry - (192 << 10)
            data[at + 24 : at + 28] = bytes(4)
            _sealed_at(data, table, 64 << 10)
    elif damage == "region table CRC-32C":
        data[(192 << 10) + 4] ^= 0xFF
    else:  # a log GUID in the current header; with "log entry", an entry of it in the log
        guid = bytes(range(1, 17))
        data[current + 48 : current + 64] = guid
        _sealed_at(data, current, 4096)
        if damage == "log entry":
            log = int.from_bytes(data[current + 72 : current + 80], "little")
            data[log : log + 4] = b"loge"
            data[log + 8 : log + 12] = (4096).to_bytes(4, "little")
            data[log + 32 : log + 48] = guid
            _sealed_at(data, log, 4096)


@pytest.mark.parametrize("damage, refused", [("both headers' CRC-32C", True),
                                             ("region table CRC-32C", True),
                                             ("payload block at the header", True),
                                             ("payload block on the BAT", True),
                                             ("payload block past any file", True),
                                             ("BAT region of 0 bytes", True),
                                             ("log entry", True),
                                             ("log GUID, no entry", False)])
def test_a_vhdx_qemu_refuses_is_refused_and_one_it_reads_is_read(damage: str, refused: bool,
                                                                 tmp_path: Path) -> None:
    """Headers and region tables are checked (CRC-32C) as QEMU checks them (dissect
    checks none), and a log with an entry to replay is refused (dissect does not replay
    it: it would read the disk as it was before the writes the log holds)."""
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    image = made(tmp_path, "d.vhdx", "vhdx")
    data = bytearray(image.read_bytes())
    _vhdx_damaged(data, damage)
    image.write_bytes(data)
    qemu = subprocess.run(["qemu-img", "convert", "-O", "raw", image, tmp_path / "q.raw"],
                          capture_output=True, timeout=60)
    assert (qemu.returncode != 0) == refused, qemu.stderr
    done = cli("backup", image, tmp_path / "chain")
    if refused:
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert str(image) in done.stderr, done.stderr
        assert not (tmp_path / "chain").exists()
    else:
        assert done.returncode == 0, done.stderr
        with open_disk(image) as disk:
            assert disk.read(0, disk.size) == (tmp_path / "q.raw").read_bytes()


def _vhdx_metadata_item(data: bytes, item: uuid.UUID) -> int:
    """Byte offset of metadata item ``item`` of a VHDX: the metadata region from the first
    region table (entries of 32 bytes after its 16-byte header: GUID, file offset u64,
    length u32, required u32), its table entries (32 bytes after a 32-byte header: GUID,
    offset u32 from the region's start, ...), [MS-VHDX] 2.2.3 and 2.6.1."""
    table = 192 << 10
    for at in range(table + 16, table + 16 + 32 * int.from_bytes(data[table + 8 : table + 12],
                                                                 "little"), 32):
        if data[at : at + 16] == METADATA_GUID.bytes_le:
            region = int.from_bytes(data[at + 16 : at + 24], "little")
    count = int.from_bytes(data[region + 10 : region + 12], "little")
    entry = next(at for at in range(region + 32, region + 32 + 32 * count, 32)
                 if data[at : at + 16] == item.bytes_le)
    return region + int.from_bytes(data[entry + 16 : entry + 20], "little")


@pytest.mark.parametrize("item, value, width, words", [
    (VIRTUAL_DISK_SIZE, SIZE + 100, 8, "is not a multiple of the 512-byte LogicalSectorSize"),
    (VIRTUAL_DISK_SIZE, 65 << 40, 8, "exceeds 64 TiB"),
    (PHYSICAL_SECTOR_SIZE, 1024, 4, "PhysicalSectorSize 1024 is not 512 or 4096"),
    (LOGICAL_SECTOR_SIZE, 1024, 4, "LogicalSectorSize 1024 is not 512 or 4096"),
    (FILE_PARAMETERS, 3 << 20, 4, "BlockSize 3145728 is not a power of 2")])
def test_vhdx_metadata_the_spec_forbids_is_refused(item: uuid.UUID, value: int, width: int,
                                                   words: str, tmp_path: Path) -> None:
    """[MS-VHDX] 2.6.2: a VirtualDiskSize off the logical sector (QEMU reads its whole
    sectors, the rest unread; it was read as a disk 100 bytes longer) or over 64 TiB, sector
    sizes other than 512 or 4096, a block size no power of 2: one line naming the field."""
    require_tools("qemu-img")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    image = made(tmp_path, "d.vhdx", "vhdx")
    data = bytearray(image.read_bytes())
    at = _vhdx_metadata_item(data, item)
    data[at : at + width] = value.to_bytes(width, "little")
    image.write_bytes(data)
    done = cli("export", image, tmp_path / "out.vhd")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and f"{image}: " in done.stderr, done.stderr
    assert words in done.stderr, done.stderr
    assert not (tmp_path / "out.vhd").exists()


@pytest.mark.parametrize("where", ["sub/", "{work}/sub/"])
def test_vmdk_extents_named_in_another_directory_are_read(where: str, tmp_path: Path) -> None:
    """A descriptor naming its extents in a subdirectory, relatively or absolutely (and
    a space in the names): read where QEMU reads them (dissect refused such names)."""
    require_tools("qemu-img", "qemu-io")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    image = made(tmp_path, "my disk.vmdk", "vmdk", "-o", "subformat=twoGbMaxExtentSparse")
    (tmp_path / "sub").mkdir()
    (tmp_path / "my disk-s001.vmdk").rename(tmp_path / "sub" / "my disk-s001.vmdk")
    text = image.read_text()
    assert '"my disk-s001.vmdk"' in text
    image.write_text(text.replace('"my disk-s001.vmdk"',
                                  f'"{where.format(work=tmp_path)}my disk-s001.vmdk"'))
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-f", "vmdk", "-O", "raw", image, reference)
    with open_disk(image) as disk:
        assert disk.read(0, disk.size) == reference.read_bytes()


def test_a_qcow2_with_internal_snapshots_is_backed_up_in_its_active_state(
        tmp_path: Path) -> None:
    """Written, snapshot taken, written over: the backup holds the active state (what
    ``qemu-img convert`` reads), not the snapshot's (``convert -l``), and says so."""
    require_tools("qemu-img", "qemu-io")
    image = made(tmp_path, "snap.qcow2", "qcow2", writes=["write -P 0x07 0 64k"])
    run("qemu-img", "snapshot", "-c", "before", image)
    qemu_io(image, "qcow2", "write -P 0x08 0 64k")
    run("qemu-img", "convert", "-O", "raw", image, tmp_path / "active.raw")
    run("qemu-img", "convert", "-l", "snapshot.name=before", "-O", "raw", image,
        tmp_path / "before.raw")
    done = cli("backup", image, tmp_path / "chain", "--json")
    assert done.returncode == 0, done.stderr
    (note,) = json.loads(done.stdout)["source_notes"]
    assert "1 internal snapshots; its active state is read" in note
    assert cli("restore", tmp_path / "chain", tmp_path / "restored.raw").returncode == 0
    restored = (tmp_path / "restored.raw").read_bytes()
    assert restored == (tmp_path / "active.raw").read_bytes()
    assert restored != (tmp_path / "before.raw").read_bytes()


def test_a_loop_of_vmdk_parents_is_one_short_line(tmp_path: Path) -> None:
    """A child copied over its parent's name: its parent is itself.  dissect opens
    parent after parent until Python's recursion limit (its message nested a thousand
    times); the error is one short line naming the loop."""
    require_tools("qemu-img")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    run("qemu-img", "create", "-q", "-f", "vmdk", tmp_path / "p.vmdk", "8M")
    run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "p.vmdk", "-F", "vmdk",
        tmp_path / "c.vmdk", cwd=tmp_path)
    (tmp_path / "p.vmdk").write_bytes((tmp_path / "c.vmdk").read_bytes())
    done = cli("backup", tmp_path / "c.vmdk", tmp_path / "chain")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and len(done.stderr) < 400, done.stderr[:500]
    assert "loop" in done.stderr
    assert not (tmp_path / "chain").exists()


@pytest.mark.parametrize("kind", ["qcow2 backing file", "vmdk parent", "vmdk flat extent"])
def test_a_fifo_named_by_an_image_is_refused_not_waited_on(kind: str, tmp_path: Path) -> None:
    """A backing file, parent or extent that is a FIFO: opening it blocked the backup for
    ever (a hostile image can name one); now a one-line error naming it."""
    require_tools("qemu-img")
    require_module("dissect.hypervisor", "dissect.hypervisor")
    if kind == "qcow2 backing file":
        os.mkfifo(tmp_path / "below")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "below", "-F", "qcow2",
            tmp_path / "top.qcow2", "8M", cwd=tmp_path)
        image = tmp_path / "top.qcow2"
    elif kind == "vmdk parent":
        run("qemu-img", "create", "-q", "-f", "vmdk", tmp_path / "p.vmdk", "8M")
        image = made(tmp_path, "c.vmdk", "vmdk", "-b", "p.vmdk", "-F", "vmdk", writes=[])
        (tmp_path / "p.vmdk").unlink()
        os.mkfifo(tmp_path / "p.vmdk")
    else:
        image = made(tmp_path, "f.vmdk", "vmdk", "-o", "subformat=monolithicFlat", writes=[])
        (tmp_path / "f-flat.vmdk").unlink()
        os.mkfifo(tmp_path / "f-flat.vmdk")
    done = subprocess.run([sys.executable, "-m", "blockforensics", "backup", str(image),
                           str(tmp_path / "chain")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "a FIFO" in done.stderr, done.stderr
    assert not (tmp_path / "chain").exists()


def test_a_qcow_version_1_image_is_refused_by_name(tmp_path: Path) -> None:
    require_tools("qemu-img")
    run("qemu-img", "create", "-q", "-f", "qcow", tmp_path / "old.qcow", "8M")
    done = cli("backup", tmp_path / "old.qcow", tmp_path / "chain")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "qcow (version 1)" in done.stderr, done.stderr


def _zstd_zeros_frame(size: int) -> bytes:
    """A zstd frame (RFC 8878) of ``size`` zero bytes (a multiple of 128 KiB) as RLE
    blocks of 128 KiB, 4 bytes each: a few KiB that decompress to ``size`` bytes."""
    block = 1 << 17
    header = (0xFD2FB528).to_bytes(4, "little") + bytes([0, 7 << 3])  # window 2**17 B
    blocks = [((block << 3) | (1 << 1) | (last := i == size // block - 1)).to_bytes(3, "little")
              + b"\0" for i in range(size // block)]
    assert last
    return header + b"".join(blocks)


@pytest.mark.parametrize("payload", ["junk", "bomb"])
def test_a_zstd_cluster_that_is_junk_or_a_bomb_costs_one_cluster_at_most(
        payload: str, tmp_path: Path) -> None:
    """A compressed cluster's descriptor re-pointed at bytes no zstd frame starts with
    (one line, exit 2), or at a frame of 2 GiB of zeros (a decompression bomb within the
    descriptor's 128 KiB): only the cluster's 64 KiB are decompressed, under a 1.5 GiB
    address-space limit."""
    require_tools("qemu-img", "qemu-io")
    require_module("zstandard", "zstandard")
    image = qcow2_compressed("compression_type=zstd")(tmp_path)
    data = bytearray(image.read_bytes())
    entry_at = _qcow2_first_l2_entry(data)
    stream = b"junk" * 128 if payload == "junk" else _zstd_zeros_frame(2 << 30)
    at = -(-len(data) // 512) * 512
    data[len(data):] = bytes(at - len(data)) + stream + bytes(-len(stream) % 512)
    sectors = -(-len(stream) // 512)  # a descriptor: 1 << 62, sectors - 1 at bit 54, offset
    data[entry_at : entry_at + 8] = ((1 << 62) | (sectors - 1) << 54 | at).to_bytes(8, "big")
    image.write_bytes(data)
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({3 << 29}, {3 << 29}))"
    done = subprocess.run([sys.executable, "-c", f"{limit}; from blockforensics.cli import run; "
                           "run()", "export", image, tmp_path / "out.raw", "--format", "raw"],
                          capture_output=True, text=True, timeout=120)
    if payload == "junk":
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and "does not decompress" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    out = (tmp_path / "out.raw").read_bytes()
    assert out[: 64 << 10] == bytes(64 << 10)
    assert out[1 << 20 : (1 << 20) + 4] == b"\x62" * 4  # the other clusters as written


def test_flat_extents_at_an_offset_of_their_file_read_what_qemu_reads(tmp_path: Path) -> None:
    """A descriptor whose FLAT extents start inside their (sparse) file — ``RW 4096 FLAT
    "d-flat.vmdk" 2048`` — reads each from that sector, as QEMU does, and the backup
    stores the data found there (the file's holes are placed at the same offset)."""
    require_tools("qemu-img")
    with open(tmp_path / "d-flat.vmdk", "wb") as flat:
        flat.truncate(8 * MIB)
        flat.seek(MIB)
        flat.write(b"\x55" * 4096)
        flat.seek(4 * MIB)
        flat.write(b"\x77" * MIB)
    (tmp_path / "d.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
        'createType="monolithicFlat"\n\n# Extent description\n'
        'RW 4096 FLAT "d-flat.vmdk" 2048\nRW 8192 FLAT "d-flat.vmdk" 4096\n')
    run("qemu-img", "convert", "-O", "raw", tmp_path / "d.vmdk", tmp_path / "qemu.raw")
    qemu = (tmp_path / "qemu.raw").read_bytes()
    assert qemu[:4096] == b"\x55" * 4096 and qemu[4 * MIB : 5 * MIB] == b"\x77" * MIB
    for done in (cli("export", tmp_path / "d.vmdk", tmp_path / "out.raw", "--format", "raw"),
                 cli("backup", tmp_path / "d.vmdk", tmp_path / "chain"),
                 cli("restore", tmp_path / "chain", tmp_path / "restored.raw")):
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.raw").read_bytes() == qemu
    assert (tmp_path / "restored.raw").read_bytes() == qemu


def test_a_raw_export_larger_than_any_file_is_one_line(tmp_path: Path) -> None:
    """A descriptor claiming a FLAT extent of 2**60 sectors (512 EiB): the raw export is
    refused before anything is written, in one line (it was an OverflowError from
    ftruncate), and no output is left."""
    (tmp_path / "d-flat.vmdk").write_bytes(b"\x55" * 4096)
    (tmp_path / "d.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
        f'createType="monolithicFlat"\n\nRW {1 << 60} FLAT "d-flat.vmdk" 0\n')
    done = cli("export", tmp_path / "d.vmdk", tmp_path / "out.raw", "--format", "raw")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "more than a file can hold" in done.stderr, \
        done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d-flat.vmdk", "d.vmdk"]

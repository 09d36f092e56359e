"""VHD writer and reader, checked against qemu-img, libvhdi and dissect (no mocks)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from support import assert_independent_readers_read, require_tools

from blockforensics.errors import FormatError
from blockforensics.formats.raw import RawDisk
from blockforensics.formats.vhd import (
    UNUSED,
    VHD_BLOCK,
    Footer,
    VhdDisk,
    VhdFormat,
    VhdLayout,
    chs_geometry,
    vhd_info,
    write_vhd,
)

MiB = 1024 * 1024
#: odd sizes: neither multiples of 2 MiB nor of any CHS geometry
SIZES = [10 * MiB + 7 * 512, 33 * MiB + 512, 48 * MiB + 3 * 512]
KINDS = ["dynamic", "fixed"]
PINNED = {"unique_id": bytes(range(16)), "timestamp": datetime(2024, 5, 1, tzinfo=timezone.utc)}


def make_source(path: Path, size: int, seed: int = 0) -> tuple[Path, set[int]]:
    """A sparse raw file of ``size`` bytes with random runs; returns it and its data VHD blocks."""
    rng = np.random.default_rng(seed)
    runs = [(4096, 8192), (5 * MiB - 1000, 3000), (size - 5000, 5000), (size // 2, 64 * 1024)]
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset, length in runs:
            fh.seek(offset)
            fh.write(rng.integers(1, 256, length, dtype=np.uint8).tobytes())
    blocks = {b for offset, length in runs
              for b in range(offset // VHD_BLOCK, (offset + length - 1) // VHD_BLOCK + 1)}
    return path, blocks


def qemu_img(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=check)


def virtual_size(path: Path) -> int:
    return json.loads(qemu_img("info", "-f", "vpc", "--output", "json", str(path)).stdout)[
        "virtual-size"]


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s // MiB}MiB+{s % MiB}")
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return make_source(tmp_path_factory.mktemp("src") / "src.raw", request.param)


@pytest.mark.parametrize("kind", KINDS)
def test_qemu_sees_exact_size_and_identical_bytes(source, kind, tmp_path):
    require_tools("qemu-img")
    src, _ = source
    out = write_vhd(RawDisk(src), tmp_path / "out.vhd", kind=kind)
    assert virtual_size(out) == src.stat().st_size
    result = qemu_img("compare", "-f", "raw", "-F", "vpc", str(src), str(out), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # QEMU 7.2's vpc driver has no checker; where one exists it must find nothing
    check = qemu_img("check", "-f", "vpc", str(out), check=False)
    assert check.returncode == 0 or "does not support checks" in check.stderr, check.stderr
    assert os.listdir(tmp_path) == ["out.vhd"]  # no temporary file left behind


@pytest.mark.parametrize("kind", KINDS)
def test_independent_readers(source, kind, tmp_path):
    src, _ = source
    data = src.read_bytes()
    out = write_vhd(RawDisk(src), tmp_path / "out.vhd", kind=kind)
    assert_independent_readers_read(out, data)


@pytest.mark.parametrize("kind", KINDS)
def test_own_reader_round_trip(source, kind, tmp_path):
    src, blocks = source
    out = write_vhd(RawDisk(src), tmp_path / "out.vhd", kind=kind)
    info = vhd_info(out)
    assert (info.kind, info.size) == (kind, src.stat().st_size)
    assert info.footer.creator_application == b"qem2"
    f = info.footer
    assert (f.cylinders, f.heads, f.sectors_per_track) == chs_geometry(info.size // 512)
    assert "VhdInfo(out.vhd" in repr(info)
    with VhdDisk(out) as disk:
        assert disk.read(0, disk.size) == src.read_bytes()
        present = disk.present()
    if kind == "dynamic":
        expected = np.zeros(present.n_blocks, dtype=bool)
        for b in blocks:
            expected[b * VHD_BLOCK // 4096:(b + 1) * VHD_BLOCK // 4096] = True
        assert np.array_equal(present.to_bools(), expected)


def test_dynamic_is_small_and_bat_marks_exactly_the_data_blocks(source, tmp_path):
    require_tools("qemu-img")
    src, blocks = source
    out = write_vhd(RawDisk(src), tmp_path / "out.vhd")
    assert out.stat().st_size < src.stat().st_size
    info = vhd_info(out)
    assert set(info.allocated.tolist()) == blocks
    assert info.bat.size == -(-src.stat().st_size // VHD_BLOCK)
    # QEMU's own view of the allocation agrees
    mapped = json.loads(qemu_img("map", "-f", "vpc", "--output", "json", str(out)).stdout)
    data_blocks = {b for m in mapped if m["data"]
                   for b in range(m["start"] // VHD_BLOCK, (m["start"] + m["length"] - 1)
                                  // VHD_BLOCK + 1)}
    assert data_blocks == blocks


def test_fixed_vhd_of_sparse_source_is_sparse(tmp_path):
    src, _ = make_source(tmp_path / "src.raw", 64 * MiB)
    out = write_vhd(RawDisk(src), tmp_path / "out.vhd", kind="fixed")
    assert out.stat().st_size == 64 * MiB + 512
    assert out.stat().st_blocks * 512 < 8 * MiB


def test_a_raw_file_of_holes_has_no_data_to_read(tmp_path):
    """A file with no data extent at all (SEEK_DATA finds none) has no present block, so
    its export reads nothing; one with data has just that data's blocks present."""
    src = tmp_path / "holes.raw"
    with open(src, "wb") as fh:
        fh.truncate(64 * MiB)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            pytest.skip("this file system cannot seek to data")
    finally:
        os.close(fd)
    disk = RawDisk(src)
    try:
        assert disk.present().count() == 0
    finally:
        disk.close()
    for kind in KINDS:
        out = write_vhd(RawDisk(src), tmp_path / f"{kind}.vhd", kind=kind)
        with VhdDisk(out) as vhd:
            assert not vhd.read_blocks(0, vhd.n_blocks).any()


def test_written_zeros_are_left_out_as_qemu_img_leaves_them(tmp_path):
    """A raw source that stores zeros (written, not holes): the dynamic VHD leaves its
    all-zero 2 MiB blocks unallocated and the fixed one has holes there; both occupy no
    more than qemu-img's VHDs of the same file, and read the same."""
    require_tools("qemu-img")
    src = tmp_path / "src.raw"
    data = bytearray(np.random.default_rng(5).integers(1, 256, 8 * MiB, dtype=np.uint8))
    data[2 * MiB : 6 * MiB] = bytes(4 * MiB)  # VHD blocks 1 and 2
    data[7 * MiB : 7 * MiB + 4096] = bytes(4096)  # one 4 KiB block of VHD block 3
    src.write_bytes(data)
    assert src.stat().st_blocks * 512 >= 8 * MiB  # the zeros are stored
    for kind in KINDS:
        ours, qemu = tmp_path / f"{kind}.vhd", tmp_path / f"qemu-{kind}.vhd"
        write_vhd(RawDisk(src), ours, kind=kind)
        qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={kind}", str(src),
                 str(qemu))
        result = qemu_img("compare", "-f", "raw", "-F", "vpc", str(src), str(ours), check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ours.stat().st_blocks <= qemu.stat().st_blocks
        with VhdDisk(ours) as disk:
            assert disk.read(0, disk.size) == bytes(data)
        if kind == "dynamic":
            info = vhd_info(ours)
            assert info.allocated.tolist() == [0, 3]
            assert info.bat[[1, 2]].tolist() == [UNUSED, UNUSED]
            assert ours.stat().st_size < 5 * MiB  # two blocks, packed
        else:
            assert ours.stat().st_blocks * 512 < 4 * MiB + 64 * 1024  # 4 MiB of data, footer
            fd = os.open(ours, os.O_RDONLY)
            try:
                assert os.lseek(fd, 0, os.SEEK_HOLE) == 2 * MiB
                assert os.lseek(fd, 2 * MiB, os.SEEK_DATA) == 6 * MiB
                assert os.lseek(fd, 6 * MiB, os.SEEK_HOLE) == 7 * MiB
            finally:
                os.close(fd)


def test_layout_reads_any_range_like_the_file(tmp_path):
    src, _ = make_source(tmp_path / "src.raw", 10 * MiB + 7 * 512, seed=3)
    rng = np.random.default_rng(7)
    for kind in KINDS:
        layout = VhdLayout(RawDisk(src), kind, **PINNED)
        data = write_vhd(RawDisk(src), tmp_path / f"{kind}.vhd", kind=kind, **PINNED).read_bytes()
        assert layout.file_size == len(data)
        for _ in range(200):
            offset = int(rng.integers(0, len(data) + 10))
            length = int(rng.choice([1, 511, 513, 4096, VHD_BLOCK + 1000, 5 * MiB]))
            assert layout.read(offset, length) == data[offset:offset + length]


def test_pinned_identity_gives_identical_files(tmp_path):
    src, _ = make_source(tmp_path / "src.raw", 10 * MiB + 7 * 512)
    a = write_vhd(RawDisk(src), tmp_path / "a.vhd", **PINNED).read_bytes()
    b = write_vhd(RawDisk(src), tmp_path / "b.vhd", **PINNED).read_bytes()
    assert a == b
    assert vhd_info(tmp_path / "a.vhd").created == PINNED["timestamp"]


def test_not_sector_multiple_is_rounded_up(tmp_path):
    require_tools("qemu-img")
    src = tmp_path / "odd.raw"
    src.write_bytes(np.random.default_rng(1).bytes(3 * MiB + 100))
    for kind in KINDS:
        out = write_vhd(RawDisk(src), tmp_path / f"{kind}.vhd", kind=kind)
        assert virtual_size(out) == 3 * MiB + 512
        with VhdDisk(out) as disk:
            assert disk.read(0, disk.size) == src.read_bytes() + bytes(412)


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    src, _ = make_source(tmp_path / "src.raw", 10 * MiB + 7 * 512)
    write_vhd(RawDisk(src), tmp_path / "out.vhd", progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "out.vhd" in captured.err


@pytest.mark.parametrize("subformat", ["fixed", "dynamic"])
@pytest.mark.parametrize("force_size", [False, True])
def test_reads_qemu_made_vhds(source, subformat, force_size, tmp_path):
    require_tools("qemu-img")
    src, blocks = source
    out = tmp_path / "qemu.vhd"
    options = f"subformat={subformat}" + (",force_size=on" if force_size else "")
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", options, str(src), str(out))
    assert VhdFormat.probe(out)
    data = src.read_bytes()
    with VhdFormat.open(out) as disk:
        assert disk.size == virtual_size(out)  # CHS-rounded up unless force_size
        assert disk.size == len(data) if force_size else disk.size >= len(data)
        read = disk.read(0, disk.size)
        assert read[:len(data)] == data and not any(read[len(data):])
        if subformat == "dynamic":
            assert set(vhd_info(out).allocated.tolist()) == blocks


@pytest.mark.parametrize("kind", KINDS)
def test_export_of_a_vhd_source(source, kind, tmp_path):
    """A reader without file-to-file copies (VHD) goes through Disk.write_to's default."""
    require_tools("qemu-img")
    src, _ = source
    qemu_vhd = tmp_path / "qemu.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
             str(src), str(qemu_vhd))
    with VhdDisk(qemu_vhd) as disk:
        out = write_vhd(disk, tmp_path / "out.vhd", kind=kind)
    assert virtual_size(out) == src.stat().st_size
    with VhdDisk(out) as disk:
        assert disk.read(0, disk.size) == src.read_bytes()


def test_geometry_matches_qemu(tmp_path):
    """QEMU picks a spec geometry by the same algorithm: ours reproduces its C/H/S."""
    require_tools("qemu-img")
    for size in [*SIZES, 300 * MiB + 512, 1030 * MiB, 40 * 1024 * MiB]:
        out = tmp_path / "g.vhd"
        qemu_img("create", "-f", "vpc", "-o", "subformat=dynamic", str(out), str(size))
        footer = vhd_info(out).footer
        product = footer.cylinders * footer.heads * footer.sectors_per_track
        assert chs_geometry(product) == (footer.cylinders, footer.heads, footer.sectors_per_track)


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated-end":
        data = data[:-100]
    elif how == "truncated-half":
        data = data[:len(data) // 2]
    elif how == "footer-checksum":
        data[-512 + 48] ^= 1  # current size
    elif how == "header-checksum":
        data[512 + 32] ^= 1  # block size
    elif how == "bat-past-end":
        bat = np.frombuffer(bytes(data[1536:1540]), dtype=">u4")
        assert bat[0] != UNUSED
        data[1536:1540] = np.array([0x00FFFFFF], dtype=">u4").tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("how", "kind"), [
    ("truncated-half", "dynamic"), ("truncated-half", "fixed"), ("header-checksum", "dynamic"),
    ("bat-past-end", "dynamic")])
def test_bad_files_raise_format_error(how, kind, tmp_path):
    src, _ = make_source(tmp_path / "src.raw", 10 * MiB + 7 * 512)
    out = write_vhd(RawDisk(src), tmp_path / "out.vhd", kind=kind)
    corrupt(out, how)
    with pytest.raises(FormatError) as err:
        VhdDisk(out)
    assert "\n" not in str(err.value) and "out.vhd" in str(err.value)


@pytest.mark.parametrize("how", ["truncated-end", "footer-checksum"])
def test_a_damaged_footer_is_read_from_its_copy_or_refused(how, tmp_path):
    """The footer at the end cut off or failing its checksum: a dynamic VHD's copy at
    byte 0 is read (as QEMU reads it), with a note, every byte as before; a fixed VHD
    has no copy and is refused."""
    src, _ = make_source(tmp_path / "src.raw", 10 * MiB + 7 * 512)
    dynamic = write_vhd(RawDisk(src), tmp_path / "dynamic.vhd")
    corrupt(dynamic, how)
    with VhdDisk(dynamic) as disk:
        assert disk.read(0, disk.size) == src.read_bytes()
        problem = "is missing" if how == "truncated-end" else "fails its checksum"
        assert disk.notes == (f"dynamic.vhd: the footer at the end of the file {problem}; "
                              "its copy at byte 0 was read",)
    fixed = write_vhd(RawDisk(src), tmp_path / "fixed.vhd", kind="fixed")
    corrupt(fixed, how)
    with pytest.raises(FormatError, match=r"fixed\.vhd: (no VHD footer|VHD footer checksum)"):
        VhdDisk(fixed)


def test_garbage_is_not_a_vhd(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(100_000))
    assert not VhdFormat.probe(junk)
    with pytest.raises(FormatError):
        VhdDisk(junk)
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"conectix")
    with pytest.raises(FormatError):
        vhd_info(tiny)


def test_footer_checksum_of_empty_footer():
    assert Footer.SIZE == 512
    packed = Footer.unpack(bytes(512)).sealed().pack()
    assert len(packed) == 512 and Footer.unpack(packed).checksum == 0xFFFFFFFF

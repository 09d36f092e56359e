"""Every export format (VHD, VHDX, VMDK, qcow2, raw; flattened and as chains) checked by
qemu-img, by independent readers (dissect.hypervisor; libyal's libvhdi, libvmdk, libqcow)
and by our own reader, at odd sizes; the FUSE-servable layout reads exactly like the
written file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chains import build_chain
from support import require_module, require_tools

from blockforensics.errors import FormatError, UsageError
from blockforensics.export import FLAT, QEMU_FORMAT, STREAMED, export, export_chain, layout
from blockforensics.formats import open_disk
from blockforensics.formats.raw import RawDisk
from blockforensics.formats.vhd import VhdDisk, vhd_info
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain

MiB = 1 << 20
#: odd sizes: one sector over a power of two; not a multiple of 1 MiB (nor of 64 KiB)
SIZES = [64 * MiB + 512, 10 * MiB + 7 * 512]
SUFFIX = {"vhd-dynamic": ".vhd", "vhd-fixed": ".vhd", "vhdx": ".vhdx", "vmdk": ".vmdk",
          "qcow2": ".qcow2", "raw": ".raw", "vmdk-stream": ".vmdk"}
#: a branching history: 0 full; 1, 2 on it; 3 branches off 0; 4 on 3.  Sizes change:
#: 2 grows, 4 shrinks to a size that is not a whole block.
PARENTS = [None, 0, 1, 0, 3]
SIZES_CHAIN = [600 * 4096, 600 * 4096, 900 * 4096, 600 * 4096, 500 * 4096 + 512]


def qemu_img(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True,
                          check=check)


def make_source(path: Path, size: int, seed: int = 0) -> Path:
    """A sparse raw file with random runs, one at each end and one across 2 MiB."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset, length in [(4096, 8192), (2 * MiB - 1000, 3000), (size - 5000, 5000),
                               (size // 2, 64 * 1024)]:
            fh.seek(offset)
            fh.write(rng.integers(1, 256, length, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s // MiB}MiB+{s % MiB}")
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("src") / "src.raw", request.param)


@pytest.mark.parametrize("fmt", FLAT + STREAMED)
def test_qemu_reads_exact_size_and_identical_bytes(source: Path, fmt: str, tmp_path: Path):
    require_tools("qemu-img")
    out = export(RawDisk(source), tmp_path / f"out{SUFFIX[fmt]}", fmt)
    info = json.loads(qemu_img("info", "-f", QEMU_FORMAT[fmt], "--output", "json", out).stdout)
    assert info["virtual-size"] == source.stat().st_size
    done = qemu_img("compare", "-f", "raw", "-F", QEMU_FORMAT[fmt], source, out, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    check = qemu_img("check", "-f", QEMU_FORMAT[fmt], out, check=False)
    assert check.returncode == 0 or "does not support checks" in check.stderr, check.stdout
    if fmt == "vmdk-stream":
        assert '"streamOptimized"' in out.read_bytes()[512:2048].decode(errors="replace")
    if fmt != "vhd-fixed" and fmt != "raw":  # sparse: only the data's pieces are stored
        assert out.stat().st_blocks * 512 < 8 * MiB
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left


@pytest.mark.parametrize("fmt", ["vhdx", "vmdk", "qcow2", "vmdk-stream"])
def test_dissect_reads_identical_bytes(source: Path, fmt: str, tmp_path: Path):
    name = fmt.removesuffix("-stream")
    disk = require_module(f"dissect.hypervisor.disk.{name}", "dissect.hypervisor")
    out = export(RawDisk(source), tmp_path / f"out{SUFFIX[fmt]}", fmt)
    data = source.read_bytes()
    with out.open("rb") as fh:
        if fmt == "qcow2":
            stream = disk.QCow2(fh).open()
            assert stream.size == len(data) and stream.read(len(data)) == data
        else:
            image = getattr(disk, name.upper())(fh)
            assert image.size == len(data)
            # dissect 3.21 cannot read a VMDK's last partial grain (QEMU's own files
            # alike): compare what it reads up to there
            whole = len(data) // (64 * 1024) * (64 * 1024) if name == "vmdk" else len(data)
            assert image.read(whole) == data[:whole]


#: libyal's readers (Joachim Metz's, written from the specifications): pip package, module
LIBYAL = {"vhd-dynamic": ("libvhdi-python", "pyvhdi"), "vhd-fixed": ("libvhdi-python", "pyvhdi"),
          "vhdx": ("libvhdi-python", "pyvhdi"), "vmdk": ("libvmdk-python", "pyvmdk"),
          "vmdk-stream": ("libvmdk-python", "pyvmdk"), "qcow2": ("libqcow-python", "pyqcow")}


@pytest.mark.parametrize("fmt", list(LIBYAL))
def test_libyal_reads_identical_bytes(source: Path, fmt: str, tmp_path: Path):
    """A third reader, neither QEMU nor dissect: libvhdi, libvmdk and libqcow read every
    byte and the exact size."""
    package, name = LIBYAL[fmt]
    module = require_module(name, package)
    out = export(RawDisk(source), tmp_path / f"out{SUFFIX[fmt]}", fmt)
    data = source.read_bytes()
    handle = module.handle() if name == "pyvmdk" else module.file()
    handle.open(str(out))
    try:
        if name == "pyvmdk":
            handle.open_extent_data_files()
        assert handle.get_media_size() == len(data)
        assert handle.read_buffer_at_offset(len(data), 0) == data
    finally:
        handle.close()


@pytest.mark.parametrize("fmt", FLAT)
def test_layout_reads_any_range_like_the_written_file(fmt: str, tmp_path: Path):
    """What the FUSE mount serves is byte for byte what export writes."""
    src = make_source(tmp_path / "src.raw", 10 * MiB + 7 * 512, seed=3)
    name = f"disk{SUFFIX[fmt]}"
    served = layout(RawDisk(src), fmt, name)
    written = export(RawDisk(src), tmp_path / name, fmt).read_bytes()
    assert served.file_size == len(written)
    # identity fields (ids, timestamps) differ between two layouts: compare structure
    # through qemu-img for those, and bytes here of every piece after the headers
    rng = np.random.default_rng(7)
    same = served.read(0, len(written))
    differing = np.flatnonzero(np.frombuffer(same, np.uint8) != np.frombuffer(written, np.uint8))
    assert differing.size < 600, f"{differing.size} bytes differ"  # ids, timestamps, CRCs
    for _ in range(100):
        offset = int(rng.integers(0, len(written) + 10))
        length = int(rng.choice([1, 511, 513, 4096, 2 * MiB + 1000, 5 * MiB]))
        assert served.read(offset, length) == same[offset:offset + length]


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("chain") / "chain"
    build_chain(directory, PARENTS, n_blocks=900, sizes=SIZES_CHAIN)
    return directory


@pytest.fixture(scope="module")
def restored(chain_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("restored")
    with Chain.open(chain_dir) as chain:
        return [restore(chain, p, out / f"{p}.raw") for p in range(len(PARENTS))]


@pytest.mark.parametrize("point", range(len(PARENTS)))
def test_qcow2_chain_is_the_point_by_its_backing_files(chain_dir: Path, restored: list[Path],
                                                       point: int, tmp_path: Path):
    require_tools("qemu-img")
    with Chain.open(chain_dir) as chain:
        files = export_chain(chain, point, tmp_path / "disk.qcow2", "qcow2-chain")
        path = chain.path(point)
    assert files[-1] == tmp_path / "disk.qcow2"
    info = json.loads(qemu_img("info", "--backing-chain", "--output", "json", files[-1]).stdout)
    assert [Path(i["filename"]).name for i in info] == [f.name for f in reversed(files)]
    assert [i.get("backing-filename") for i in info[:-1]] == [f.name for f in
                                                               reversed(files[:-1])]
    assert len(files) == len(path)
    done = qemu_img("compare", "-f", "raw", "-F", "qcow2", restored[point], files[-1],
                    check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for f in files:
        assert qemu_img("check", f, check=False).returncode == 0
    # each child holds only its image's clusters: far smaller than the base
    if len(files) > 1:
        assert files[-1].stat().st_size < files[0].stat().st_size


@pytest.mark.parametrize("point", range(len(PARENTS)))
def test_vhd_chain_reads_as_the_point_in_libvhdi_and_ours(chain_dir: Path,
                                                          restored: list[Path], point: int,
                                                          tmp_path: Path):
    pyvhdi = require_module("pyvhdi", "libvhdi-python")
    with Chain.open(chain_dir) as chain:
        files = export_chain(chain, point, tmp_path / "disk.vhd", "vhd-chain")
    data = restored[point].read_bytes()
    kinds = [vhd_info(f).kind for f in files]
    assert kinds == ["dynamic"] + ["differencing"] * (len(files) - 1)
    handles = []
    for f in files:
        handle = pyvhdi.file()
        handle.open(str(f))
        handles.append(handle)
    for child, parent in zip(handles[1:], handles[:-1]):
        child.set_parent(parent)
    try:
        assert handles[-1].get_media_size() == -(-len(data) // 512) * 512
        assert handles[-1].read_buffer_at_offset(len(data), 0) == data
    finally:
        for handle in handles:
            handle.close()
    with VhdDisk(files[-1]) as disk:  # the parents found by their locators
        assert disk.read(0, len(data)) == data
        blocks = np.frombuffer(data.ljust(disk.n_blocks * 4096, b"\0"), np.uint8)
        nonzero = blocks.reshape(-1, 4096).any(axis=1)
        assert disk.present().contains(np.flatnonzero(nonzero)).all()


def test_differencing_vhd_as_a_source_by_locator_and_by_parent(chain_dir: Path,
                                                               restored: list[Path],
                                                               tmp_path: Path):
    (tmp_path / "a").mkdir()
    with Chain.open(chain_dir) as chain:
        files = export_chain(chain, 2, tmp_path / "a" / "disk.vhd", "vhd-chain")
    data = restored[2].read_bytes()
    # moved elsewhere as a directory: the relative locators still find the parents
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    with open_disk(moved / "disk.vhd") as disk:
        assert disk.read(0, len(data)) == data
    # the parent renamed: found only when given, and the wrong parent is refused
    renamed = moved / "renamed.vhd"
    (moved / files[1].name).rename(renamed)
    with pytest.raises(FormatError, match="--parent"):
        open_disk(moved / "disk.vhd")
    with open_disk(moved / "disk.vhd", parent=renamed) as disk:
        assert disk.read(0, len(data)) == data
    with pytest.raises(FormatError, match="is not its parent"):
        open_disk(moved / "disk.vhd", parent=moved / files[0].name)
    with pytest.raises(UsageError, match="takes no parent"):
        open_disk(restored[0], parent=renamed)
    # the command line: a backup of the differencing VHD is the point
    bf = [sys.executable, "-m", "blockforensics.cli"]
    done = subprocess.run([*bf, "export", moved / "disk.vhd", tmp_path / "flat.qcow2",
                           "--format", "qcow2", "--parent", renamed], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", restored[2], tmp_path / "flat.qcow2",
                    check=False).returncode == 0
    done = subprocess.run([*bf, "backup", moved / "disk.vhd", tmp_path / "c",
                           "--source-parent", renamed, "--all-blocks"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Chain.open(tmp_path / "c") as chain:
        assert chain.disk(0).read(0, len(data)) == data


def test_cli_chain_export_and_bad_input(chain_dir: Path, restored: list[Path],
                                        tmp_path: Path):
    require_tools("qemu-img")
    bf = [sys.executable, "-m", "blockforensics.cli"]
    done = subprocess.run([*bf, "export", chain_dir, tmp_path / "p4.qcow2", "--point", "4",
                           "--format", "qcow2-chain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p4.point0.qcow2", "p4.point3.qcow2",
                                                         "p4.qcow2"]
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", restored[4], tmp_path / "p4.qcow2",
                    check=False).returncode == 0
    done = subprocess.run([*bf, "export", restored[0], tmp_path / "x.vhd", "--format",
                           "vhd-chain"], capture_output=True, text=True)
    assert done.returncode == 2 and "not a chain directory" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

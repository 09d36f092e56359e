"""LVM2 physical volumes made by the real tools: linear logical volumes read like
partitions, everything else copied whole with a note.

The machines that run this have loop devices but no device-mapper, so the PVs are
made with ``pvcreate``/``vgcreate``/``lvcreate -an -Zn`` on loop devices under a
private ``LVM_SYSTEM_DIR`` (activation off: LVM writes its metadata and never asks
the kernel for a mapping), and the file systems — made by mkfs.ext4 / mkfs.fat in
files of each LV's size — are written into the LV's extents with ``dd`` at the
offsets ``lvs``/``pvs`` report.  Results are checked with The Sleuth Kit
(``blkls``, ``icat``), debugfs, mtools, e2fsck and dissect.volume's LVM2 reader.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sample_disks import run
from support import backup_image, require_module, require_tools
from support import bf_ok as cli

from blockforensics import forensics
from blockforensics.allocation import filesystem_partitions, partitions, survey
from blockforensics.disk import MappedDisk
from blockforensics.errors import FormatError
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.lvm import (
    MDA_HEADER,
    MDA_HEADER_SIZE,
    RAW_LOCN,
    lvm_crc,
    parse_metadata,
    read_pv,
)
from blockforensics.image.chain import Chain

MIB = 1 << 20
EXTENT = 4 * MIB
PART_START = MIB  # the PV's partition starts at 1 MiB of the disk
LVM_TOOLS = ("pvcreate", "vgcreate", "lvcreate", "lvextend", "lvs", "pvs", "vgcfgbackup",
             "vgcfgrestore", "losetup",
             "sfdisk", "mkfs.ext4", "debugfs", "e2fsck", "mkfs.fat", "mcopy", "blkls", "icat")


@dataclass
class Lvm:
    """The LVM tools under a private configuration that sees only our loop devices."""

    work: Path
    devices: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LVM_SYSTEM_DIR": str(self.work / "lvm"),
                "LVM_SUPPRESS_FD_WARNINGS": "1"}

    def attach(self, image: Path, offset: int = 0, size: int | None = None) -> str:
        args: list[object] = ["losetup", "-f", "--show", "-o", offset]
        if size is not None:
            args += ["--sizelimit", size]
        done = subprocess.run([str(a) for a in [*args, image]], capture_output=True, text=True)
        if done.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"losetup failed: {done.stderr}")
            pytest.skip(f"no loop device: {done.stderr.strip()}")
        self.devices.append(done.stdout.strip())
        self._configure()
        return self.devices[-1]

    def _configure(self) -> None:
        conf = self.work / "lvm"
        conf.mkdir(exist_ok=True)
        accept = ", ".join(f'"a|^{d}$|"' for d in self.devices)
        (conf / "lvm.conf").write_text(
            f'devices {{ scan = [ "/dev" ] filter = [ {accept}, "r|.*|" ] '
            "obtain_device_list_from_udev = 0 use_devicesfile = 0 }\n"
            f'global {{ activation = 0 use_lvmlockd = 0 locking_dir = "{conf}" }}\n'
            "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }\n"
            "backup { backup = 0 archive = 0 }\n")

    def __call__(self, *args: object) -> str:
        return run(*args, env=self.env)

    def segments(self, vg: str) -> dict[str, list[tuple[int, int, int]]]:
        """LV name -> its segments as (first LE, first PE, extent count), in LV order
        (of a striped segment: its first stripe)."""
        out: dict[str, list[tuple[int, int, int]]] = {}
        text = self("lvs", "--noheadings", "-o", "lv_name,seg_start_pe,seg_pe_ranges", vg)
        for line in text.splitlines():
            if not line.strip():
                continue
            name, start, ranges, *_ = line.split()
            first, last = ranges.rsplit(":", 1)[1].split("-")
            out.setdefault(name, []).append((int(start), int(first), int(last) - int(first) + 1))
        return out

    def pe_start(self, device: str) -> int:
        return int(self("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start",
                        device).strip())

    def close(self) -> None:
        for device in self.devices:
            subprocess.run(["losetup", "-d", device], capture_output=True)


@pytest.fixture
def lvm(tmp_path: Path) -> Iterator[Lvm]:
    require_tools(*LVM_TOOLS)
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the LVM tests need root (loop devices)")
        pytest.skip("loop devices need root")
    tools = Lvm(tmp_path)
    try:
        yield tools
    finally:
        tools.close()


def place(disk: Path, pv_offset: int, pe_start: int, segments: list[tuple[int, int, int]],
          volume: Path) -> None:
    """Write the file ``volume`` into its LV's extents on ``disk``."""
    data = volume.read_bytes()
    with disk.open("r+b") as fh:
        for le, pe, count in segments:
            fh.seek(pv_offset + pe_start + pe * EXTENT)
            fh.write(data[le * EXTENT : (le + count) * EXTENT])


def extract_lv(disk: Path, pv_offset: int, pe_start: int,
               segments: list[tuple[int, int, int]], out: Path) -> Path:
    """The LV's bytes, read from ``disk`` extent by extent, as the file ``out``."""
    with disk.open("rb") as fh, out.open("wb") as dst:
        for _, pe, count in segments:
            fh.seek(pv_offset + pe_start + pe * EXTENT)
            dst.write(fh.read(count * EXTENT))
    return out


@dataclass
class Made:
    disk: Path
    pe_start: int
    segments: dict[str, list[tuple[int, int, int]]]
    files: dict[str, bytes]
    free_pe: int  # an extent no LV uses, holding stale bytes


def make_disk(lvm: Lvm, work: Path, metadata_copies: int = 1) -> Made:
    """An MBR disk whose partition 1 (type 0x8e) is a PV of VG vgbf (with
    ``metadata_copies`` metadata areas): lv1 (ext4, two non-adjacent segments), lv2
    (FAT), free extents holding stale data."""
    disk = work / "disk.img"
    size = 80 * MIB
    with disk.open("wb") as fh:
        fh.truncate(size)
    subprocess.run(["sfdisk", "-q", str(disk)], input="start=2048, type=8e\n", text=True,
                   check=True, capture_output=True)
    part_size = size - PART_START
    device = lvm.attach(disk, PART_START, part_size)
    lvm("pvcreate", "-y", "--pvmetadatacopies", metadata_copies, device)
    lvm("vgcreate", "-s", "4m", "vgbf", device)
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "lv1", "-L", "12m", "vgbf")
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "lv2", "-L", "8m", "vgbf")
    lvm("lvextend", "-L", "+12m", "vgbf/lv1")
    segments = lvm.segments("vgbf")
    assert [s[0] for s in segments["lv1"]] == [0, 3]  # two segments, around lv2
    pe_start = lvm.pe_start(device)
    rng = np.random.default_rng(7)
    files = {"big.bin": rng.bytes(9 * MIB), "small.txt": b"hello from lv1\n",
             "tail.bin": rng.bytes(3 * MIB)}
    lv1 = work / "lv1.img"
    with lv1.open("wb") as fh:
        fh.truncate(24 * MIB)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", lv1)
    for name in ("big.bin", "small.txt", "gone.bin", "tail.bin"):
        (work / name).write_bytes(files.get(name, rng.bytes(2 * MIB)))
        run("debugfs", "-w", "-R", f"write {work / name} {name}", lv1)
    run("debugfs", "-w", "-R", "rm gone.bin", lv1)
    lv2 = work / "lv2.img"
    with lv2.open("wb") as fh:
        fh.truncate(8 * MIB)
    run("mkfs.fat", lv2)
    (work / "FAT.TXT").write_bytes(b"in the FAT of lv2\n" * 100)
    run("mcopy", "-i", lv2, work / "FAT.TXT", "::/FAT.TXT")
    files["FAT.TXT"] = (work / "FAT.TXT").read_bytes()
    place(disk, PART_START, pe_start, segments["lv1"], lv1)
    place(disk, PART_START, pe_start, segments["lv2"], lv2)
    used = {pe + i for segs in segments.values() for _, pe, n in segs for i in range(n)}
    free_pe = max(used) + 2
    with disk.open("r+b") as fh:  # a deleted LV's data, say: an investigator wants it
        fh.seek(PART_START + pe_start + free_pe * EXTENT)
        fh.write(rng.bytes(EXTENT))
    return Made(disk, pe_start, segments, files, free_pe)


def lv_block_on_disk(made: Made, name: str, lv_byte: int) -> int:
    """The disk byte holding byte ``lv_byte`` of LV ``name``."""
    for le, pe, count in made.segments[name]:
        if le * EXTENT <= lv_byte < (le + count) * EXTENT:
            return PART_START + made.pe_start + pe * EXTENT + lv_byte - le * EXTENT
    raise AssertionError(lv_byte)


def test_linear_volumes_are_read_backed_up_and_restored(lvm: Lvm, tmp_path: Path) -> None:
    made = make_disk(lvm, tmp_path)
    found = survey(made.disk, 4096)
    by_where = {r.where: r for r in found.regions}
    assert by_where["partition 1"].filesystem == "lvm2"
    assert by_where["logical volume vgbf/lv1"].filesystem == "ext4"
    assert by_where["logical volume vgbf/lv2"].filesystem.startswith("fat")
    assert not any(r.note for r in found.regions)
    frame = partitions(made.disk)
    assert frame[["kind", "name", "filesystem"]].values.tolist()[1:] == [
        ["lv", "vgbf/lv1", "ext4"], ["lv", "vgbf/lv2", by_where["logical volume vgbf/lv2"]
                                     .filesystem]]

    # every allocated block of each LV's file system (as blkls says) is in the map
    amap = found.map.to_bools()
    for name in ("lv1", "lv2"):
        raw = extract_lv(made.disk, PART_START, made.pe_start, made.segments[name],
                         tmp_path / f"{name}.raw")
        unit = 4096 if name == "lv1" else 512
        listing = run("blkls", "-a", "-l", raw).splitlines()
        allocated = [int(line.split("|")[0]) for line in listing if line.endswith("|a")]
        assert allocated
        disk_blocks = {lv_block_on_disk(made, name, b * unit) // 4096 for b in allocated}
        assert all(amap[b] for b in disk_blocks), name
    # the label, the metadata area and the free extent are copied; stale data in lv1 not
    assert amap[PART_START // 4096] and amap[(PART_START + 4096) // 4096]
    free = (PART_START + made.pe_start + made.free_pe * EXTENT) // 4096
    assert amap[free : free + EXTENT // 4096].all()
    assert found.map.count() < (made.disk.stat().st_size - PART_START) // 4096

    out = cli("backup", made.disk, tmp_path / "chain")
    assert "logical volume vgbf/lv1 (ext4):" in out and "logical volume vgbf/lv2 (fat" in out
    with Chain.open(tmp_path / "chain") as chain:
        stored = chain.layout(0).supplied(0).to_bools()
    with RawDisk(made.disk) as disk:
        nonzero = disk.read_blocks(0, disk.n_blocks).any(axis=1)
    assert np.array_equal(stored, amap & nonzero)  # all-zero blocks need no storing
    assert stored.sum() < stored.size
    restored = tmp_path / "restored.img"
    cli("restore", tmp_path / "chain", restored)
    lv1 = extract_lv(restored, PART_START, made.pe_start, made.segments["lv1"],
                     tmp_path / "lv1-restored.raw")
    run("e2fsck", "-fn", lv1)
    for name in ("big.bin", "small.txt", "tail.bin"):
        out_file = tmp_path / f"out-{name}"
        run("debugfs", "-R", f"dump {name} {out_file}", lv1)
        assert out_file.read_bytes() == made.files[name], name
    # tail.bin was written last: it lies in lv1's second segment, after lv2 on the disk
    icat_inode = run("debugfs", "-R", "ls -l /", lv1)
    assert "tail.bin" in icat_inode
    blocks = run("debugfs", "-R", "blocks tail.bin", lv1).split()
    assert min(int(b) for b in blocks) * 4096 >= made.segments["lv1"][1][0] * EXTENT
    lv2_offset = PART_START + made.pe_start + made.segments["lv2"][0][1] * EXTENT
    fat_out = tmp_path / "FAT.out"
    run("mcopy", "-n", "-i", f"{restored}@@{lv2_offset}", "::/FAT.TXT", fat_out)
    assert fat_out.read_bytes() == made.files["FAT.TXT"]
    # icat reads the single-segment LV at its offset in the restored disk
    fls = run("fls", "-o", lv2_offset // 512, restored)
    inode = next(line.split()[1].rstrip(":") for line in fls.splitlines() if "FAT.TXT" in line)
    assert run("icat", "-o", lv2_offset // 512, restored, inode).encode() == made.files["FAT.TXT"]

    # file listings name the LV; a change in lv1's second segment is found as that file
    timeline = cli("timeline", tmp_path / "chain", "--format", "jsonl")
    assert "vgbf/lv1:/tail.bin" in timeline and "vgbf/lv2:/FAT.TXT" in timeline
    (tmp_path / "tail2.bin").write_bytes(bytes(3 * MIB))
    lv1_new = extract_lv(made.disk, PART_START, made.pe_start, made.segments["lv1"],
                         tmp_path / "lv1-new.raw")
    run("debugfs", "-w", "-R", "rm tail.bin", lv1_new)
    run("debugfs", "-w", "-R", f"write {tmp_path / 'tail2.bin'} tail.bin", lv1_new)
    place(made.disk, PART_START, made.pe_start, made.segments["lv1"], lv1_new)
    cli("backup", made.disk, tmp_path / "chain")
    diff = json.loads(cli("diff", tmp_path / "chain", "0", "1", "--files", "--json"))
    changed = {f["path"]: f["change"] for f in diff["files"]}
    assert changed.get("vgbf/lv1:/tail.bin") in ("modified", "created"), changed
    assert not any(p.startswith("vgbf/lv2:") for p in changed)
    extracted = tmp_path / "extracted.bin"
    cli("extract", tmp_path / "chain", "1", "vgbf/lv1:/tail.bin", extracted)
    assert extracted.read_bytes() == bytes(3 * MIB)


def test_dissect_volume_reads_the_same_volumes(lvm: Lvm, tmp_path: Path) -> None:
    lvm2 = require_module("dissect.volume.lvm", "dissect.volume")
    made = make_disk(lvm, tmp_path)
    with RawDisk(made.disk) as disk:
        parts = [p for p in filesystem_partitions(disk) if p.kind == "lv"]
        assert [p.name for p in parts] == ["vgbf/lv1", "vgbf/lv2"]
        with made.disk.open("rb") as fh:
            fh.seek(PART_START)
            theirs = lvm2.LVM2(_Offset(fh, PART_START))
            for part in parts:
                lv = next(v for v in theirs.vg.lv if f"vgbf/{v.name}" == part.name)
                view, _ = part.view(disk)
                assert isinstance(view, MappedDisk)
                ours = view.read(0, view.size)
                assert len(ours) == sum(s.extent_count for s in lv.segments) * EXTENT
                assert lv.open().read(view.size) == ours
        pv = read_pv(disk, PART_START, disk.size - PART_START)
        assert pv.metadata[0].vg_name == theirs.vg.name


class _Offset:
    """A file object whose byte 0 is ``offset`` of ``fh`` (dissect reads a PV from 0)."""

    def __init__(self, fh, offset: int):
        self.fh, self.offset = fh, offset

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 0:
            return self.fh.seek(pos + self.offset) - self.offset
        return self.fh.seek(pos, whence) - self.offset

    def tell(self) -> int:
        return self.fh.tell() - self.offset

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)


def _metadata(disk: Path, pv_offset: int) -> tuple[int, int, int]:
    """(disk byte of the mda header, of the metadata text, the text's size)."""
    with RawDisk(disk) as d:
        pv = read_pv(d, pv_offset, d.size - pv_offset)
    mda = pv_offset + pv.metadata_areas[0][0]
    with disk.open("rb") as fh:
        fh.seek(mda)
        header = fh.read(MDA_HEADER_SIZE)
    locn = RAW_LOCN.parse(header, MDA_HEADER.size)
    return mda, mda + locn.offset, locn.size


def _flip(disk: Path, at: int) -> None:
    """Damage the byte at ``at`` (one bit flipped)."""
    with disk.open("r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x20]))


def _lv_names(lvm: Lvm) -> list[str]:
    """The LVs LVM itself reads on our devices (its warnings left out)."""
    return re.findall(r"^ +(lv\d) *$", lvm("lvs", "--noheadings", "-o", "lv_name"), re.M)


def _descriptions(lvm: Lvm, note: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(PV byte, seqno) of the VG descriptions ``pvck --dump metadata_search`` finds on
    the PV, and of those ``note`` names."""
    theirs = re.findall(r"metadata at (\d+) length \d+ crc \w+ vg vgbf seqno (\d+)",
                        lvm("pvck", "--dump", "metadata_search", lvm.devices[0]))
    ours = re.findall(r"vgbf seqno (\d+) at byte (\d+)", note)
    return ([(int(at), int(seqno)) for at, seqno in theirs],
            [(int(at), int(seqno)) for seqno, at in ours])


def test_corrupt_metadata_checksum_copies_the_whole_pv(lvm: Lvm, tmp_path: Path) -> None:
    """The only metadata area's newest text damaged: LVM finds no VG (it never reads an
    older copy by itself), and the PV is copied whole; the note lists the older
    descriptions where ``pvck --dump metadata_search`` finds them."""
    made = make_disk(lvm, tmp_path)
    _, text_at, _ = _metadata(made.disk, PART_START)
    _flip(made.disk, text_at + 100)
    assert _lv_names(lvm) == []
    found = survey(made.disk, 4096)
    [region] = found.regions
    assert "metadata checksum mismatch" in region.note
    assert region.blocks == region.total
    theirs, ours = _descriptions(lvm, region.note)
    assert len(ours) == 4 and ours == theirs, (ours, theirs)  # vgcreate, 2 lvcreate, lvextend
    out = cli("backup", made.disk, tmp_path / "chain")
    assert "metadata checksum mismatch" in out and "copying all" in out
    with Chain.open(tmp_path / "chain") as chain:
        stored = chain.layout(0).supplied(0).to_bools()
    with RawDisk(made.disk) as disk:
        nonzero = disk.read_blocks(0, disk.n_blocks).any(axis=1)
    assert np.array_equal(stored, nonzero)  # every non-zero block of the disk


@pytest.mark.parametrize("damage", ["text", "header"])
def test_a_damaged_metadata_area_is_read_around_through_the_other(
        lvm: Lvm, tmp_path: Path, damage: str) -> None:
    """A PV with two metadata areas (``pvcreate --pvmetadatacopies 2``), the first's
    newest text or its header damaged: LVM reads the second, and so does the survey —
    the same map as before the damage, with a note."""
    made = make_disk(lvm, tmp_path, metadata_copies=2)
    before = survey(made.disk, 4096)
    mda, text_at, _ = _metadata(made.disk, PART_START)
    _flip(made.disk, text_at + 100 if damage == "text" else mda + 0x100)
    assert _lv_names(lvm) == ["lv1", "lv2"]
    found = survey(made.disk, 4096)
    assert np.array_equal(found.map.to_bools(), before.map.to_bools())
    by_where = {r.where: r for r in found.regions}
    assert by_where["logical volume vgbf/lv1"].filesystem == "ext4"
    assert not any(r.note for r in found.regions)
    [note] = found.notes
    problem = "metadata checksum mismatch" if damage == "text" else "mda header checksum"
    assert f"metadata area at byte {mda - PART_START}: {problem}" in note, note
    assert "read from its intact copy (seqno 4) in the metadata area at byte" in note, note
    out = cli("backup", made.disk, tmp_path / "chain")
    assert note in out and "copying all" not in out


def test_a_newer_description_in_the_damaged_area_copies_the_pv_whole(
        lvm: Lvm, tmp_path: Path) -> None:
    """LVM wrote a new description to the first area, then stopped before the second (a
    crash); the first's text is then damaged.  LVM would read the second, older one,
    without lv3; the survey sees the newer seqno in the damaged area and copies the PV
    whole."""
    made = make_disk(lvm, tmp_path, metadata_copies=2)
    with RawDisk(made.disk) as disk:
        second, size = read_pv(disk, PART_START, disk.size - PART_START).metadata_areas[1]
    with made.disk.open("rb") as fh:
        fh.seek(PART_START + second)
        stale = fh.read(size)
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "lv3", "-L", "4m", "vgbf")
    with made.disk.open("r+b") as fh:
        fh.seek(PART_START + second)
        fh.write(stale)
    _, text_at, _ = _metadata(made.disk, PART_START)
    _flip(made.disk, text_at + 200)
    assert _lv_names(lvm) == ["lv1", "lv2"]
    [region] = survey(made.disk, 4096).regions
    assert "metadata checksum mismatch, and a description there (seqno 5) is newer than " \
           "the intact one (seqno 4)" in region.note, region.note
    assert region.blocks == region.total


def test_a_pv_whose_only_metadata_area_is_damaged_is_read_from_another_pv(
        lvm: Lvm, tmp_path: Path) -> None:
    """Two PVs of one VG on one disk (two partitions), an ext4 LV on the first, whose
    only metadata area's newest text is damaged: LVM reads the VG from the second PV,
    and so does the survey — the LV's file system read, with a note."""
    disk = tmp_path / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(66 * MIB)
    subprocess.run(["sfdisk", "-q", str(disk)], text=True, check=True, capture_output=True,
                   input="start=2048, size=32M, type=8e\nstart=67584, type=8e\n")
    devices = [lvm.attach(disk, PART_START, 32 * MIB), lvm.attach(disk, 33 * MIB, 33 * MIB)]
    for device in devices:
        lvm("pvcreate", "-y", device)
    lvm("vgcreate", "-s", "4m", "vgtwo", *devices)
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "lv1", "-L", "16m", "vgtwo", devices[0])
    volume = tmp_path / "lv1.img"
    with volume.open("wb") as fh:
        fh.truncate(16 * MIB)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", volume)
    pe_start = lvm.pe_start(devices[0])
    place(disk, PART_START, pe_start, lvm.segments("vgtwo")["lv1"], volume)
    before = survey(disk, 4096)
    _, text_at, _ = _metadata(disk, PART_START)
    _flip(disk, text_at + 100)
    assert _lv_names(lvm) == ["lv1"]
    found = survey(disk, 4096)
    assert np.array_equal(found.map.to_bools(), before.map.to_bools())
    by_where = {r.where: r for r in found.regions}
    lv1 = by_where["logical volume vgtwo/lv1"]
    assert lv1.filesystem == "ext4" and not lv1.note and lv1.blocks < lv1.total
    [note] = found.notes
    assert note.startswith(f"LVM2 PV at byte {PART_START}: metadata area at byte 4096: "
                           "metadata checksum mismatch; VG vgtwo read from its intact copy")
    assert f"of the PV at byte {33 * MIB}, as LVM does" in note, note


@pytest.mark.parametrize("text, problem", [
    ('extent_count = 99999999999999999999', "extents"),
    ('extent_count = 0\nstart_extent = 5', "follow"),
    ('type = "thin"', "thin"),
])
def test_hostile_metadata_is_a_note_never_a_traceback(lvm: Lvm, tmp_path: Path, text: str,
                                                      problem: str) -> None:
    """Metadata rewritten with valid checksums but contents no tool wrote."""
    made = make_disk(lvm, tmp_path)
    mda, text_at, size = _metadata(made.disk, PART_START)
    with made.disk.open("r+b") as fh:
        fh.seek(text_at)
        original = fh.read(size).decode()
        lv2 = original.index("lv2 {")
        seg = original.index("segment1 {", lv2) + len("segment1 {")
        end = original.index("}", seg)
        body = original[seg:end]
        for line in text.splitlines():
            key = line.split("=")[0].strip()
            body = "\n".join(line if ln.strip().startswith(key + " ") else ln
                             for ln in body.splitlines())
        new = (original[:seg] + body + original[end:]).encode()
        fh.seek(text_at)
        fh.write(new)
        fh.seek(mda)
        header = bytearray(fh.read(MDA_HEADER_SIZE))
        locn = MDA_HEADER.size
        header[locn + 8 : locn + 20] = len(new).to_bytes(8, "little") + lvm_crc(new).to_bytes(
            4, "little")
        header[:4] = lvm_crc(bytes(header[4:])).to_bytes(4, "little")
        fh.seek(mda)
        fh.write(header)
    found = survey(made.disk, 4096)
    notes = " ".join(r.note for r in found.regions)
    assert problem in notes
    out = cli("backup", made.disk, tmp_path / "chain")
    assert "copying all" in out or "not read" in out
    assert "Traceback" not in out


def test_striped_volume_on_two_disks_is_copied_whole(lvm: Lvm, tmp_path: Path) -> None:
    disks = [tmp_path / "a.img", tmp_path / "b.img"]
    for disk in disks:
        with disk.open("wb") as fh:
            fh.truncate(48 * MIB)
    devices = [lvm.attach(d) for d in disks]
    for device in devices:
        lvm("pvcreate", "-y", device)
    lvm("vgcreate", "-s", "4m", "vgst", *devices)
    lvm("lvcreate", "-an", "-Zn", "-y", "-i", "2", "-I", "64k", "-n", "striped", "-L", "16m",
        "vgst")
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "linear", "-L", "8m", "vgst", devices[0])
    segments = lvm.segments("vgst")
    pe_start = lvm.pe_start(devices[0])
    lin = tmp_path / "linear.img"
    with lin.open("wb") as fh:
        fh.truncate(8 * MIB)
    run("mkfs.ext4", "-q", "-F", lin)
    (tmp_path / "f.txt").write_bytes(b"linear beside striped\n")
    run("debugfs", "-w", "-R", f"write {tmp_path / 'f.txt'} f.txt", lin)
    place(disks[0], 0, pe_start, segments["linear"], lin)
    found = survey(disks[0], 4096)
    by_where = {r.where: r for r in found.regions}
    striped = by_where["logical volume vgst/striped"]
    assert "striped over 2 stripes" in striped.note
    assert striped.blocks == striped.total == 8 * MIB // 4096  # its half on this disk
    assert by_where["logical volume vgst/linear"].filesystem == "ext4"
    out = cli("backup", disks[0], tmp_path / "chain")
    assert "vgst/striped" in out and "striped over 2 stripes" in out
    listing = cli("timeline", tmp_path / "chain", "--format", "jsonl")
    assert "vgst/linear:/f.txt" in listing
    # the other disk: the VG's metadata is there too, but linear's extents are not
    other = {r.where: r for r in survey(disks[1], 4096).regions}
    assert "on pv0, a PV not on this disk" in other["logical volume vgst/linear"].note
    assert other["whole disk"].blocks == other["whole disk"].total


def test_snapshot_written_by_vgcfgrestore_is_copied_whole(lvm: Lvm, tmp_path: Path) -> None:
    """lvcreate --snapshot needs device-mapper, so the snapshot is added to the VG's
    description (from vgcfgbackup) the way LVM lays one out — a visible
    copy-on-write LV and a hidden "snapshot" segment naming origin and store — and
    written by vgcfgrestore, which checks it and writes real metadata."""
    made = make_disk(lvm, tmp_path)
    backup_file = tmp_path / "vgbf.txt"
    lvm("vgcfgbackup", "-f", backup_file, "vgbf")
    text = backup_file.read_text()
    at = text.index("\t\tlv2 {")
    added = f"""\t\tsnap {{
\t\t\tid = "Snap00-aaaa-bbbb-cccc-dddd-eeee-ffffff"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {{
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = 1
\t\t\t\ttype = "striped"
\t\t\t\tstripe_count = 1
\t\t\t\tstripes = ["pv0", {made.free_pe}]
\t\t\t}}
\t\t}}
\t\tsnapshot0 {{
\t\t\tid = "Snap01-aaaa-bbbb-cccc-dddd-eeee-ffffff"
\t\t\tstatus = ["READ"]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {{
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = 2
\t\t\t\ttype = "snapshot"
\t\t\t\tchunk_size = 8
\t\t\t\torigin = "lv2"
\t\t\t\tcow_store = "snap"
\t\t\t}}
\t\t}}
"""
    backup_file.write_text(text[:at] + added + text[at:])
    lvm("vgcfgrestore", "-f", backup_file, "vgbf")
    assert "lv2" in lvm("lvs", "--noheadings", "-o", "origin", "vgbf/snap")
    found = {r.where: r for r in survey(made.disk, 4096).regions}
    assert found["logical volume vgbf/lv1"].filesystem == "ext4"
    origin = found["logical volume vgbf/lv2"]
    assert origin.note.startswith("origin of snapshot") and origin.blocks == origin.total
    assert "copy-on-write store" in found["logical volume vgbf/snap"].note
    out = cli("backup", made.disk, tmp_path / "chain")
    assert "logical volume vgbf/lv2: origin of snapshot snapshot0: copying all" in out


def test_parse_metadata_grammar_and_hostile_text() -> None:
    tree = parse_metadata('vg {\nid = "a\\"b"  # comment\nseqno = 3\nlist = [\n"x", 1\n]\n'
                          'sub {\nempty = []\n}\n}\nversion = 1\n')
    assert tree == {"vg": {"id": 'a"b', "seqno": 3, "list": ["x", 1], "sub": {"empty": []}},
                    "version": 1}
    for bad in ["vg {", "}", "a = ", "a = [1, 2", "a = b", "a { } a { }", "a = 1 a = 2",
                "x" + " { " * 50 + " } " * 50, 'a = "unterminated', "= 3", "a = [[1]]"]:
        with pytest.raises(FormatError):
            parse_metadata(bad)


def test_pv_whose_metadata_is_on_another_disk_is_copied_whole(lvm: Lvm, tmp_path: Path) -> None:
    """A PV made with no metadata area: its layout is known only from the VG's other
    PV, on another disk; backing up its disk alone copies it whole, with a note."""
    disks = [tmp_path / "a.img", tmp_path / "b.img"]
    for disk in disks:
        with disk.open("wb") as fh:
            fh.truncate(32 * MIB)
    devices = [lvm.attach(d) for d in disks]
    lvm("pvcreate", "-y", "--pvmetadatacopies", "0", devices[0])
    lvm("pvcreate", "-y", devices[1])
    lvm("vgcreate", "-s", "4m", "vgmd", *devices)
    lvm("lvcreate", "-an", "-Zn", "-y", "-n", "data", "-L", "8m", "vgmd", devices[0])
    [region] = survey(disks[0], 4096).regions
    assert "no metadata names this PV" in region.note
    assert region.blocks == region.total
    out = cli("backup", disks[0], tmp_path / "chain")
    assert "no metadata names this PV" in out and "copying all" in out
    other = {r.where: r for r in survey(disks[1], 4096).regions}
    assert "a PV not on this disk" in other["logical volume vgmd/data"].note


def test_triage_names_a_logical_volume_encrypted_whole(lvm: Lvm, tmp_path: Path) -> None:
    """lv1 overwritten with random bytes (a volume encrypted whole): triage says the
    ext4 of logical volume vgbf/lv1 is gone, its changed blocks random."""
    made = make_disk(lvm, tmp_path)
    cli("backup", made.disk, tmp_path / "chain")
    noise = tmp_path / "noise.img"
    noise.write_bytes(np.random.default_rng(3).bytes(24 * MIB))
    place(made.disk, PART_START, made.pe_start, made.segments["lv1"], noise)
    cli("backup", made.disk, tmp_path / "chain")
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "triage",
                           tmp_path / "chain", "--json"], capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    reasons = " ".join(r for p in report["points"] for r in p["reasons"])
    assert "ext4 file system of logical volume vgbf/lv1 (read at the parent) is gone" in reasons
    assert report["points"][-1]["verdict"] == "encrypted"


def test_logical_volumes_are_served_and_checked_as_files_of_their_own(
        lvm: Lvm, tmp_path: Path) -> None:
    """A point's logical volumes are served beside its partitions (``vgbf-lv1.raw``, its
    two segments put together) and ``verify --fs`` checks their file systems."""
    from blockforensics.expose import exposed
    from blockforensics.image.chain import Chain

    require_tools("e2fsck", "fsck.fat", "fusermount3")
    made = make_disk(lvm, tmp_path)
    cli("backup", made.disk, tmp_path / "chain")
    report = json.loads(cli("verify", tmp_path / "chain", "--fs", "--json"))
    checks = {c["file"]: c for c in report["filesystems"]["checks"]}
    assert checks["vgbf-lv1.raw"]["filesystem"] == "ext4" and checks["vgbf-lv1.raw"]["ok"]
    assert checks["vgbf-lv2.raw"]["filesystem"].startswith("fat") and checks["vgbf-lv2.raw"]["ok"]
    cli("restore", tmp_path / "chain", tmp_path / "restored.img")
    disk = (tmp_path / "restored.img").read_bytes()  # the point's bytes, extent by extent
    lv1 = b"".join(disk[lv_block_on_disk(made, "lv1", at) : lv_block_on_disk(made, "lv1", at)
                        + EXTENT] for at in range(0, 6 * EXTENT, EXTENT))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with Chain.open(tmp_path / "chain") as chain, exposed(chain.disk(0), mountpoint,
                                                          partitions=True):
        served = (mountpoint / "vgbf-lv1.raw").read_bytes()
    assert len(served) == len(lv1) and served == lv1


def test_a_damaged_fat_directory_in_a_logical_volume_hides_no_deletion(
        lvm: Lvm, tmp_path: Path) -> None:
    """lv2's FAT, read through the LV's extents: a directory whose cluster is overwritten
    hides its file, whose chain the FAT still holds (a note, not a deletion), while
    ``FAT.TXT``, removed by ``mdel``, is a deletion."""
    require_module("pytsk3", "pytsk3")
    require_tools("mmd", "mdel", "ifind", "istat")
    made = make_disk(lvm, tmp_path)
    lv2 = extract_lv(made.disk, PART_START, made.pe_start, made.segments["lv2"],
                     tmp_path / "lv2.raw")
    (tmp_path / "a.bin").write_bytes(os.urandom(5000))
    run("mmd", "-i", lv2, "::/d")
    run("mcopy", "-i", lv2, tmp_path / "a.bin", "::/d/a.bin")
    place(made.disk, PART_START, made.pe_start, made.segments["lv2"], lv2)
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, made.disk)
    run("mdel", "-i", lv2, "::/FAT.TXT")
    inode = run("ifind", "-n", "/d", lv2).strip()
    sector = int(run("istat", lv2, inode).split("Sectors:")[1].split()[0])
    with lv2.open("r+b") as fh:
        fh.seek(sector * 512)
        fh.write(os.urandom(512))
    place(made.disk, PART_START, made.pe_start, made.segments["lv2"], lv2)
    backup_image(chain, made.disk)
    result = forensics.diff(chain, 0, 1, files=True)
    assert {r.path for r in result.files.itertuples() if r.change == "deleted"} \
        == {"vgbf/lv2:/FAT.TXT"}
    assert any(n.startswith("point 1: vgbf/lv2:: 1 file(s) and directories no directory "
                            "reaches") and n.endswith(": vgbf/lv2:/d/a.bin")
               for n in result.notes), result.notes

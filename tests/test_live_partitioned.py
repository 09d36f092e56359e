"""Methods 1-3 on a disk partitioned as real VMs' are (MBR or GPT: an EFI system
partition, the ext4 root, swap): the journal replay runs on the ext4 partition
alone, so Q lies inside it, and every point restored is the view it was taken from
(a booted guest, slow); the per-partition replay itself on a served disk (quick)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from blockforensics.allocation import survey
from blockforensics.blockmap import BlockMap
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.live.guest import SETTLED, make_ext4, make_partitioned_disk
from blockforensics.live.headstart import live_full, live_incremental
from blockforensics.live.methods import branching_chain, quiesced_full_image
from blockforensics.live.ops import LiveDisk
from blockforensics.live.qemu import NODE, StorageDaemon
from blockforensics.live.quiesce import Quiesced
from tests.live_support import (
    BOOT_TIMEOUT,
    BS,
    blocks,
    booted,
    fsck_clean,
    needs_recovery,
)
from tests.support import require_tools
from tests.test_live_nbd import bf
from tests.test_lvm import EXTENT, LVM_TOOLS, PART_START, Lvm, extract_lv, make_disk, place

FAT_NOTE = "partition 1 (fat32): no journal replay for fat32, nothing written"
SWAP_NOTE = "partition 3 (not recognised): swap or unknown content, nothing to replay"


@pytest.mark.parametrize("table", ["bare", "mbr", "gpt"])
def test_replay_writes_only_inside_the_ext_partitions(tmp_path: Path, table: str):
    require_tools("qemu-storage-daemon", "qemu-img", "sfdisk", "mkfs.fat", "mkswap", "e2fsck")
    if table == "bare":
        image, root = make_ext4(tmp_path / "disk.img", 32 << 20), (0, 32 << 20)
    else:
        disk = make_partitioned_disk(tmp_path / "disk.img", table)
        image, root = disk.path, disk.partitions["root"]
    with StorageDaemon(image, tmp_path / "qsd") as daemon:
        assert daemon.qmp is not None
        live = LiveDisk(daemon.qmp, NODE, daemon.nbd_socket)
        with live.fleece(tmp_path) as snap, Quiesced(snap, tmp_path) as quiet:
            notes = quiet.replay()
            q = quiet.written()
            nodes = {n["node-name"] for n in daemon.qmp.execute("query-named-block-nodes")}
    # e2fsck -f on a clean ext4 still writes its superblock (last check time)
    assert q.count() > 0 and inside(q, *root)
    assert not any(name.startswith("bf-window") for name in nodes)  # windows removed
    if table == "bare":
        assert notes == ["whole disk (ext4): e2fsck -fy exited with 0"]
    else:
        assert notes == [FAT_NOTE, "partition 2 (ext4): e2fsck -fy exited with 0", SWAP_NOTE]


def _crashed_ext4(volume: Path, work: Path, data: bytes) -> None:
    """Make the ext4 in the file ``volume`` need its journal replayed: ``new.bin``
    written and fsync'd through a loop mount (in the journal, not yet in place) and the
    volume's bytes taken then, as a crash or a live snapshot leaves them."""
    mountpoint = work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(volume), str(mountpoint)], check=True)
    try:
        with (mountpoint / "new.bin").open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        crashed = volume.read_bytes()
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    volume.write_bytes(crashed)


def test_replay_of_lvm_logical_volumes_in_one_piece_and_in_several(tmp_path: Path):
    """lv1 (ext4 in two pieces around lv2) needs its journal replayed: it is put
    together, replayed, and exactly the blocks that changed are written back into its
    pieces (Q); the replayed volume is clean and holds the file only its journal had.
    lv3 (ext4 in one piece) is replayed through one window."""
    require_tools("qemu-storage-daemon", "qemu-img", "e2fsck", "dumpe2fs", "debugfs", "mount",
                  *LVM_TOOLS)
    tools = Lvm(tmp_path)
    try:
        made = make_disk(tools, tmp_path)
        tools("lvcreate", "-an", "-Zn", "-y", "-n", "lv3", "-L", "8m", "vgbf")
        lv3 = tools.segments("vgbf")["lv3"]
    finally:
        tools.close()
    assert len(lv3) == 1
    place(made.disk, PART_START, made.pe_start, lv3, make_ext4(tmp_path / "lv3.img", 8 << 20))
    lv1 = extract_lv(made.disk, PART_START, made.pe_start, made.segments["lv1"],
                     tmp_path / "lv1.img")
    data = os.urandom(300_000)
    _crashed_ext4(lv1, tmp_path, data)
    place(made.disk, PART_START, made.pe_start, made.segments["lv1"], lv1)
    assert needs_recovery(lv1)
    with StorageDaemon(made.disk, tmp_path / "qsd") as daemon:
        assert daemon.qmp is not None
        live = LiveDisk(daemon.qmp, NODE, daemon.nbd_socket)
        with live.fleece(tmp_path) as snap, Quiesced(snap, tmp_path) as quiet:
            notes = quiet.replay()
            q = quiet.written()
            view = quiet.copy_to(tmp_path / "quiesced.img")
    assert notes[0] == "partition 1 (lvm2): an LVM2 physical volume: its logical volumes follow"
    assert re.fullmatch(r"logical volume vgbf/lv1 \(ext4\): e2fsck -fy exited with [01] \(its "
                        r"2 pieces put together; the blocks it changed written back\)",
                        notes[1]), notes[1]
    assert notes[2:] == [
        "logical volume vgbf/lv2 (fat12): no journal replay for fat12, nothing written",
        "logical volume vgbf/lv3 (ext4): e2fsck -fy exited with 0"]
    replayed = extract_lv(view, PART_START, made.pe_start, made.segments["lv1"],
                          tmp_path / "lv1-replayed.img")
    assert not needs_recovery(replayed) and fsck_clean(replayed)
    subprocess.run(["debugfs", "-R", f"dump /new.bin {tmp_path / 'new.out'}", str(replayed)],
                   check=True, capture_output=True)
    assert (tmp_path / "new.out").read_bytes() == data
    in_lv1 = np.zeros(q.n_blocks, dtype=bool)
    for _, pe, count in made.segments["lv1"]:
        start = (PART_START + made.pe_start + pe * EXTENT) // BS
        in_lv1[start : start + count * EXTENT // BS] = True
    changed = (blocks(made.disk) != blocks(view)).any(axis=1)
    assert changed[in_lv1].any() and np.array_equal(q.to_bools()[in_lv1], changed[in_lv1])
    start = PART_START + made.pe_start + lv3[0][1] * EXTENT
    lv3_q = q.to_bools().copy()
    lv3_q[in_lv1] = False
    assert lv3_q.any() and inside(BlockMap.from_bools(lv3_q, BS), start, 8 << 20)


def test_head_start_full_of_a_partitioned_disk_prints_its_survey(tmp_path: Path):
    require_tools("qemu-storage-daemon", "qemu-img", "sfdisk", "mkfs.fat", "mkswap")
    disk = make_partitioned_disk(tmp_path / "disk.img", "mbr")
    with StorageDaemon(disk.path, tmp_path / "qsd") as daemon:
        assert daemon.qmp is not None
        source = LiveDisk(daemon.qmp, NODE, daemon.nbd_socket).export("disk").uri()
        qmp = ["--head-start", daemon.spare_qmp_socket]
        text = bf("backup", source, tmp_path / "c1", "--bitmap", "b1", *qmp)
        as_json = bf("backup", source, tmp_path / "c2", "--bitmap", "b2", *qmp, "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    assert text.stdout.splitlines()[:4] == [
        "partition table: mbr, 3 partitions",
        "  partition 1 (fat32): 139 of 8704 blocks allocated",
        "  partition 2 (ext4): 1807 of 12288 blocks allocated",
        "  partition 3: not recognised: copying all 2048 blocks"]
    done = json.loads(as_json.stdout)
    assert [p["filesystem"] for p in done["partitions"]] == ["fat32", "ext4", None]
    assert done["point"] == 0 and done["allocated_blocks"] == 139 + 1807 + 2048 + 1536


@pytest.fixture(params=["mbr", "gpt"])
def guest(tmp_path: Path, request: pytest.FixtureRequest):
    require_tools("sfdisk", "mkfs.fat", "mkswap")
    disk = make_partitioned_disk(tmp_path / "disk.img", request.param)
    with booted(disk.path, tmp_path / "vm", "settle", disk.root) as (vm, live):
        yield disk, vm, live


def inside(blockmap: BlockMap, start: int, length: int) -> bool:
    """Whether every block of ``blockmap`` lies in bytes ``[start, start + length)``."""
    positions = blockmap.positions()
    return bool(((positions * BS >= start) & ((positions + 1) * BS <= start + length)).all())


def same_where_allocated(restored: Path, view: Path, held: BlockMap | None = None,
                         before: Path | None = None) -> bool:
    """Whether ``restored`` equals ``view`` byte for byte in every block the view's
    survey marks (methods 2 and 3 store A | Q: a free block may hold a deleted file's
    bytes) and the point's path ``held`` (default: all).  An allocated block not held
    must be one free at the first snapshot and unwritten since (ext4's preallocation
    marks blocks in its bitmap before writing them): its bytes equal ``before``'s."""
    allocated = survey(view, BS).map.to_bools()
    kept = allocated if held is None else allocated & held.to_bools()
    got, want = blocks(restored), blocks(view)
    stale = allocated & ~kept
    if stale.any() and (before is None or (blocks(before)[stale] != want[stale]).any()):
        return False
    return bool((got[kept] == want[kept]).all())


def same_as_snapshot(restored: Path, snapshot: Path, full: BlockMap, first: Path) -> bool:
    """Whether a method-1 point restored equals its ``snapshot`` byte for byte, but in
    the blocks the ``full`` did not store (free at the first snapshot ``first``: their
    stale bytes are left out) and nothing wrote since: those restore as zeros."""
    got, want = blocks(restored), blocks(snapshot)
    differs = (got != want).any(axis=1)
    unstored_and_unwritten = (~full.to_bools() & ~got.any(axis=1)
                              & (blocks(first) == want).all(axis=1))
    return not (differs & ~unstored_and_unwritten).any()


@pytest.mark.slow
def test_live_methods_on_a_partitioned_guest(guest, tmp_path):
    disk, vm, live = guest
    root = disk.partitions["root"]
    export = live.export("disk")
    cli = [export.uri(), tmp_path / "cli", "--bitmap", "cli", "--head-start",
           vm.spare_qmp_socket]
    first = bf("backup", *cli)  # method 1 by the command line: the full, surveyed
    assert first.returncode == 0, first.stderr
    assert f"partition table: {disk.table}, 3 partitions" in first.stdout
    assert "partition 1 (fat32): " in first.stdout and "partition 2 (ext4): " in first.stdout
    assert "partition 3: not recognised: copying all 2048 blocks" in first.stdout
    chain1 = Chain.open_or_create(tmp_path / "m1")
    full = live_full(chain1, live, tmp_path, "cbt-1", keep_snapshot=tmp_path / "s0.raw")
    assert full.found is not None and full.found.table == disk.table

    vm.wait_console(f"{SETTLED} 1", BOOT_TIMEOUT)
    chain2 = Chain.open_or_create(tmp_path / "m2")
    m2 = quiesced_full_image(chain2, live, tmp_path, keep=tmp_path / "m2")
    chain3 = Chain.open_or_create(tmp_path / "m3")
    m3 = branching_chain(chain3, live, tmp_path,
                         lambda: vm.wait_console(f"{SETTLED} 2", BOOT_TIMEOUT),
                         keep=tmp_path / "m3-")
    head = live_incremental(chain1, live, tmp_path, "cbt-1", "cbt-2",  # round 3: after
                            keep_snapshot=tmp_path / "s1.raw",
                            before_snapshot=lambda: vm.wait_console(f"{SETTLED} 3",
                                                                    BOOT_TIMEOUT))
    second = bf("backup", *cli)
    assert second.returncode == 0 and "point 1: " in second.stdout, second.stderr
    vm.kill()
    print("method 2", {k: v for k, v in m2.items() if k != "quiescence_map"}, "\nmethod 3",
          {name: {k: v for k, v in info.items() if k != "map"} for name, info in m3.items()},
          "\nhead start", head)

    for notes in (m2["notes"], m3["leaf1"]["notes"], m3["leaf2"]["notes"]):
        assert notes[0] == FAT_NOTE and notes[2] == SWAP_NOTE
        assert notes[1].startswith("partition 2 (ext4): e2fsck -fy exited with ")
    for q in (m2["quiescence_map"], m3["leaf1"]["map"], m3["leaf2"]["map"]):
        assert q.count() > 0 and inside(q, *root)   # never in the FAT or swap partition

    for point, view in ((full.point, "s0.raw"), (head.point, "s1.raw")):  # method 1
        out = restore(chain1, point, tmp_path / f"m1-{point}.restored")
        assert same_as_snapshot(out, tmp_path / view, full.found.map, tmp_path / "s0.raw"), view
    a1, trunk2 = m3["full"]["map"], m3["full"]["map"] | m3["trunk2"]["map"]
    methods = {(chain2, m2["point"]): ("m2.quiesced.raw", None),
               (chain3, m3["full"]["point"]): ("m3-1.crash.raw", a1),
               (chain3, m3["leaf1"]["point"]): ("m3-1.quiesced.raw", a1 | m3["leaf1"]["map"]),
               (chain3, m3["trunk2"]["point"]): ("m3-2.crash.raw", trunk2),
               (chain3, m3["leaf2"]["point"]): ("m3-2.quiesced.raw", trunk2 | m3["leaf2"]["map"])}
    for (chain, point), (view, held) in methods.items():
        out = restore(chain, point, tmp_path / f"{chain.directory.name}-{point}.restored")
        assert same_where_allocated(out, tmp_path / view, held, tmp_path / "m3-1.crash.raw"), view
        if "quiesced" in view:   # application-consistent: replayed, clean
            assert not needs_recovery(out, root[0]) and fsck_clean(out, root[0]), view
        else:                    # the crash-consistent trunk
            assert needs_recovery(out, root[0]), view
    assert head.ahead > 0 and head.after > 0
    assert chain1.rows()[head.point]["blocks"] == head.tracked

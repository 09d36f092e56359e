"""``blockforensics demo``: the whole story on the built-in sample disk.

The sample is a small bootable Linux disk (MBR, a FAT partition, syslinux);
its boot marker lives in ``syslinux.cfg`` on the FAT partition, so what boots
proves which point's data came back.  The live disk is a :class:`Volume`; each
"day" the demo edits files on the FAT partition with mtools and replays the
changed blocks through the volume's write path, where change tracking and
snapshots observe them.

1. Tracked changes with a head start: the day-2 incremental is partly copied
   before the snapshot, the rest from the snapshot (method 1).
2. Quiesced backups in a branching chain: the crash-consistent trunk holds the
   allocated blocks, each application-consistent point is a leaf holding the
   quiescence writes (method 3).
3. An encrypted chain of the same days, consolidated without the key (method 4).
4. Every point restored and compared; the newest point exported to a dynamic
   VHD and booted in QEMU, its marker checked; the application-consistent leaf
   served as a read-only disk.vhd over FUSE (no conversion) and booted (method 5).

A summary table, the checks and plots are written to ``--out``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from blockforensics.allocation import allocation_map
from blockforensics.blockmap import BlockMap
from blockforensics.consolidate import consolidate
from blockforensics.crypto import KeySource
from blockforensics.datasets.bootdisk import (
    MARKER_PREFIX,
    cached_boot_disk,
    set_boot_marker,
    write_fat_file,
)
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.image.verify import verify
from blockforensics.plot import plot_blockmaps, plot_chain
from blockforensics.snapshot import Snapshot
from blockforensics.tracking import ChangeTracker, HeadStart
from blockforensics.volume import Volume

if TYPE_CHECKING:
    from blockforensics.boot import BootResult
    from blockforensics.formats.base import Disk

BLOCK_SIZE = 4096
#: day -> (files written on the FAT partition that day, boot marker)
DAYS = {
    1: ({}, "day-1"),
    2: ({"NOTES.TXT": b"meeting at ten\n" * 200, "REPORT.TXT": b"quarterly numbers\n" * 900},
        "day-2"),
    3: ({"NOTES.TXT": b"meeting moved to eleven\n" * 150, "PHOTO.BIN": bytes(range(256)) * 300},
        "day-3"),
}
#: what the application's quiescence step writes into a snapshot (its log flush)
QUIESCE = {"APP.LOG": b"transaction log flushed, database consistent\n" * 40}


def _say(text: str) -> None:
    print(text, flush=True)


def fat_edit(state: bytes, files: dict[str, bytes], marker: str | None) -> bytes:
    """The disk bytes after writing ``files`` (and the boot ``marker``) with mtools."""
    with tempfile.TemporaryDirectory(prefix="bf-demo-") as tmp:
        path = Path(tmp) / "disk.img"
        path.write_bytes(state)
        for name, data in files.items():
            write_fat_file(path, name, data)
        if marker is not None:
            set_boot_marker(path, marker)
        return path.read_bytes()


def changed_blocks(old: bytes, new: bytes, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions whose blocks differ between two equal-sized disks, and the new blocks."""
    pad = -len(new) % block_size
    a = np.frombuffer(old + bytes(pad), np.uint8).reshape(-1, block_size)
    b = np.frombuffer(new + bytes(pad), np.uint8).reshape(-1, block_size)
    positions = np.flatnonzero((a != b).any(axis=1))
    return positions, b[positions]


def replay(volume: Volume, new: bytes) -> int:
    """Write the blocks in which ``new`` differs from the volume through its write path."""
    positions, blocks = changed_blocks(volume.tobytes(), new, volume.block_size)
    volume.write_at(positions, blocks)
    return len(positions)


def run_demo(out: Path) -> int:
    """Run the story; returns the exit code (1 if any restore, verify or boot check fails)."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    _say("0. the sample bootable disk (built once, then cached) ...")
    states = [fat_edit(cached_boot_disk().read_bytes(), *DAYS[1])]
    states += [fat_edit(states[0], *DAYS[2])]
    states += [fat_edit(states[1], *DAYS[3])]
    checks: dict[str, bool] = {}
    rows: list[dict[str, object]] = []

    head = _head_start(work, states, checks, rows)
    branching = _branching_chain(work, states, checks, rows)
    secret = _encrypted(work, states, checks, rows)
    booted = _export_and_boot(work, head, checks)
    _boot_exposed(work, branching, checks)
    (out / "console.log").write_text(booted.console)

    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    check_frame = pd.DataFrame({"check": list(checks), "ok": list(checks.values())})
    check_frame.to_csv(out / "checks.csv", index=False)
    _plots(head, branching, out)
    _say("\n" + summary.to_string(index=False))
    _say("\n" + check_frame.to_string(index=False))
    _say(f"\nresults, plots (blockmaps.png, chains.png) and the boot console are in {out}/")
    for chain in (head, branching, secret):
        chain.close()
    return 0 if all(checks.values()) else 1


def _head_start(work: Path, states: list[bytes], checks: dict[str, bool],
                rows: list[dict[str, object]]) -> Chain:
    """Method 1 over three days: a full, then head-start incrementals."""
    _say("1. tracked changes with a head start (method 1) ...")
    volume = Volume.from_bytes(states[0], BLOCK_SIZE)
    chain = Chain.create(work / "chain")
    backup(chain, volume, only=allocation_map(volume, BLOCK_SIZE), label="day 1 full")
    rows.append(_row(chain, 0, "full of the allocated blocks"))
    head = HeadStart(chain, volume, label="day 2 head start")
    for day in (2, 3):
        if day > 2:  # tracking for this day began at the previous day's snapshot
            head = head.next(label=f"day {day} head start")
        half = fat_edit(states[day - 2], DAYS[day][0], None)  # the files first, marker later
        replay(volume, half)
        early = head.copy_step(budget_blocks=10 ** 6)  # copy all tracked so far, ahead of t2
        replay(volume, states[day - 1])  # the rest of the day, some blocks again
        snapshot = head.snapshot(label=f"t{day}")  # this day's tracking ends, the next's begins
        point = head.finish()
        snapshot.release()
        rows.append(_row(chain, point, f"{early.count()} copied before the snapshot, "
                                       f"{head.copies_after} after ({head.recopied.count()} "
                                       "of them again)"))
        _say(f"   day {day}: {head}")
    for point, state in enumerate(states):
        checks[f"head-start chain: point {point} restores day {point + 1} exactly"] = (
            restore(chain, point).tobytes() == state)
    checks["head-start chain verifies"] = verify(chain.directory).ok
    return chain


def _branching_chain(work: Path, states: list[bytes], checks: dict[str, bool],
                     rows: list[dict[str, object]]) -> Chain:
    """Method 3 on days 1 and 2: crash-consistent trunk, application-consistent leaves."""
    _say("2. quiesced backups in a branching chain (method 3) ...")
    volume = Volume.from_bytes(states[0], BLOCK_SIZE)
    chain = Chain.create(work / "chain-quiesced")
    points = {}
    tracker: ChangeTracker | None = None
    for t in (1, 2):
        snapshot = Snapshot(volume, label=f"snapshot {t}")
        crash = snapshot.view(quiesced=False)
        allocated = allocation_map(crash, BLOCK_SIZE)
        positions, blocks = changed_blocks(
            crash.read(0, crash.size), fat_edit(crash.read(0, crash.size), QUIESCE,
                                                f"app-consistent-{t}"), BLOCK_SIZE)
        snapshot.quiesce_write(positions, blocks)
        quiesced = snapshot.quiesced
        if t == 1:
            points["full"] = backup(chain, crash, only=allocated, label="A1 crash-consistent")
            points["I1"] = backup(chain, snapshot.view(quiesced=True), parent=points["full"],
                                  changed=quiesced, label="Q1 app-consistent")
        else:
            assert tracker is not None
            tracked = tracker.detach()
            points["I2"] = backup(chain, crash, parent=points["full"],
                                  changed=tracked & allocated, label="T&A2 crash-consistent")
            points["I3"] = backup(chain, snapshot.view(quiesced=True), parent=points["I2"],
                                  changed=quiesced, label="Q2 app-consistent")
            checks["branching chain: trunk I2 restores day 2 exactly on allocated blocks"] = (
                _equal_on(restore(chain, points["I2"]), crash, allocated))
        checks[f"branching chain: leaf {'I1' if t == 1 else 'I3'} holds the quiescence "
               f"writes of snapshot {t}"] = _equal_on(
            restore(chain, points["I1" if t == 1 else "I3"]), snapshot.view(quiesced=True),
            allocated | quiesced)
        snapshot.release()
        if t == 1:
            tracker = ChangeTracker(volume)  # T: live changes between t1 and t2
            replay(volume, states[1])
    trunk = restore(chain, points["I2"]).tobytes()
    checks["branching chain: no quiescence write in the trunk"] = b"transaction log" not in trunk
    for name, point in points.items():
        parent = chain.parent(point)
        rows.append(_row(chain, point, f"{name}, " + ("the root" if parent is None
                                                     else f"parent {parent}")))
    return chain


def _equal_on(a: Volume, b: Disk, on: BlockMap) -> bool:
    positions = on.positions()
    return bool(np.array_equal(a.read_at(positions), b.read_at(positions)))


def _encrypted(work: Path, states: list[bytes], checks: dict[str, bool],
               rows: list[dict[str, object]]) -> Chain:
    """Method 4: the three days encrypted, then consolidated without the key."""
    _say("3. an encrypted chain, consolidated without the key (method 4) ...")
    key_file = work / "passphrase.key"
    key_file.write_bytes(b"demo passphrase, never stored in the chain\n")
    key = KeySource.from_file(key_file)
    chain = Chain.create(work / "chain-encrypted", key)
    for day, state in enumerate(states, start=1):
        volume = Volume.from_bytes(state, BLOCK_SIZE)
        backup(chain, volume, only=allocation_map(volume, BLOCK_SIZE), label=f"day {day}")
    checks["encrypted chain verifies with the key"] = verify(chain.directory, key).ok
    result = consolidate(chain.directory, 1)  # the API takes no key
    _say(f"   {result}")
    chain.close()
    chain = Chain.open(chain.directory, key)
    for point, state in ((0, states[1]), (1, states[2])):
        checks[f"encrypted point {point} after consolidation restores day {point + 2}"] = (
            restore(chain, point).tobytes() == state)
    for point in range(len(chain)):
        rows.append(_row(chain, point, "encrypted, after consolidation"))
    return chain


def _export_and_boot(work: Path, chain: Chain, checks: dict[str, bool]) -> BootResult:
    """Method 5: export the newest point to a dynamic VHD and boot it."""
    from blockforensics.boot import boot
    from blockforensics.formats.vhd import write_vhd

    _say("4. exporting the newest point to a dynamic VHD and booting it in QEMU ...")
    vhd = write_vhd(chain.disk(-1), work / "day3.vhd", kind="dynamic")
    booted = boot(vhd, expect=f"{MARKER_PREFIX} day-3", timeout=180)
    checks["the exported VHD boots and shows day 3's marker"] = booted.ok
    if booted.seconds_to_marker is not None:
        _say(f"   marker seen after {booted.seconds_to_marker:.1f} s")
    return booted


def _boot_exposed(work: Path, chain: Chain, checks: dict[str, bool]) -> None:
    """Method 5 without conversion: the leaf I3 served as disk.vhd over FUSE, booted."""
    from blockforensics.boot import boot
    from blockforensics.expose import exposed

    _say("5. booting the application-consistent leaf I3 from a FUSE disk.vhd (no export) ...")
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    with exposed(chain.disk(-1), mountpoint) as disk_file:
        booted = boot(disk_file, expect=f"{MARKER_PREFIX} app-consistent-2", timeout=180)
    checks["leaf I3 boots from FUSE and shows its quiescence marker"] = booted.ok
    if booted.seconds_to_marker is not None:
        _say(f"   marker seen after {booted.seconds_to_marker:.1f} s")


def _row(chain: Chain, point: int, note: str) -> dict[str, object]:
    row = chain.table().iloc[point]
    return {"chain": chain.directory.name, "point": point, "kind": row["kind"],
            "label": row["label"], "blocks": row["blocks"],
            "stored_bytes": row["stored_bytes"], "note": note}


def _plots(head: Chain, branching: Chain, out: Path) -> None:
    fig = Figure(figsize=(11, 4.4))
    axes = fig.subplots(2, 1, height_ratios=[1.1, 1])
    plot_chain(head, ax=axes[0], title="head-start chain: full, then two incrementals")
    plot_blockmaps({f"changed day {p}→{p + 1}": head.changed(p - 1, p)
                    for p in range(1, len(head))}, ax=axes[1], columns=64,
                   title="blocks changed between consecutive days")
    fig.tight_layout()
    fig.savefig(out / "blockmaps.png", dpi=110, bbox_inches="tight")
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    plot_chain(branching, ax=ax, leaves=[1, 3],
               title="crash-consistent trunk (full → I2), application-consistent leaves (I1, I3)")
    fig.tight_layout()
    fig.savefig(out / "chains.png", dpi=110, bbox_inches="tight")

"""``blockforensics demo``: the whole story on the built-in sample disk.

A small bootable Linux disk (MBR, FAT partition, syslinux) is backed up over
three "days" of file changes: a full image of the allocated blocks, then
incrementals holding only the changed blocks.  The same history goes into an
encrypted chain, which is consolidated without the key.  Every point is
restored and compared with the source as it was; the newest point is exported
to a dynamic VHD and booted in QEMU, and its boot marker is checked.  A
summary table and plots are written to ``--out``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from blockforensics.allocation import allocation_map
from blockforensics.consolidate import consolidate
from blockforensics.crypto import KeySource
from blockforensics.datasets.bootdisk import (
    MARKER_PREFIX,
    cached_boot_disk,
    set_boot_marker,
    write_fat_file,
)
from blockforensics.formats.raw import RawDisk
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.image.verify import verify
from blockforensics.plot import plot_blockmaps, plot_chain, plot_layout

BLOCK_SIZE = 4096
DAYS = {  # day -> files written on the FAT partition that day
    2: {"NOTES.TXT": b"meeting at ten\n" * 200, "REPORT.TXT": b"quarterly numbers\n" * 900},
    3: {"NOTES.TXT": b"meeting moved to eleven\n" * 150, "PHOTO.BIN": bytes(range(256)) * 300},
}


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(out: Path) -> int:
    """Run the story; returns the exit code (1 if any restore, verify or boot check fails)."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    source = work / "source.img"
    _say("1. building the sample bootable disk (cached after the first build) ...")
    shutil.copyfile(cached_boot_disk(), source)
    key_file = work / "passphrase.key"
    key_file.write_bytes(b"demo passphrase, never stored in the chain\n")
    key = KeySource.from_file(key_file)
    plain = Chain.create(work / "chain")
    secret = Chain.create(work / "chain-encrypted", key)
    states: list[bytes] = []
    rows = []

    for day in (1, 2, 3):
        if day in DAYS:
            for name, data in DAYS[day].items():
                write_fat_file(source, name, data)
            set_boot_marker(source, f"day-{day}")
        else:
            set_boot_marker(source, "day-1")
        states.append(source.read_bytes())
        with RawDisk(source, BLOCK_SIZE) as disk:
            allocated = allocation_map(disk, BLOCK_SIZE)
            for chain in (plain, secret):
                point = backup(chain, disk, only=allocated, label=f"day {day}")
        row = plain.table().iloc[point]
        rows.append({"day": day, "point": point, "kind": row["kind"],
                     "allocated_blocks": allocated.count(), "blocks_stored": row["blocks"],
                     "stored_bytes": row["stored_bytes"]})
        _say(f"2. day {day}: {row['kind']} backup, {row['blocks']} blocks stored "
             f"({allocated.count()} of {allocated.n_blocks} blocks allocated)")

    checks = {}
    for point, state in enumerate(states):
        restored = restore(plain, point, work / f"restored-{point}.img")
        checks[f"restore point {point} == source on day {point + 1}"] = (
            restored.read_bytes() == state)
    checks["verify plaintext chain"] = verify(plain.directory).ok
    checks["verify encrypted chain with the key"] = verify(secret.directory, key).ok

    _say("3. consolidating the encrypted chain up to day 2, without the key ...")
    result = consolidate(secret.directory, 1)
    _say(f"   {result}")
    secret = Chain.open(secret.directory, key)
    for point, state in ((0, states[1]), (1, states[2])):
        restored = restore(secret, point)
        checks[f"encrypted point {point} after consolidation == day {point + 2}"] = (
            restored.tobytes() == state)

    _say("4. exporting the newest point to a dynamic VHD and booting it in QEMU ...")
    from blockforensics.boot import boot
    from blockforensics.formats.vhd import write_vhd

    vhd = write_vhd(plain.disk(-1), work / "day3.vhd", kind="dynamic")
    booted = boot(vhd, expect=f"{MARKER_PREFIX} day-3", timeout=180)
    checks["exported VHD boots and shows day 3's marker"] = booted.ok
    (out / "console.log").write_text(booted.console)

    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    check_frame = pd.DataFrame({"check": list(checks), "ok": list(checks.values())})
    check_frame.to_csv(out / "checks.csv", index=False)
    _plots(plain, out)
    _say("\n" + summary.to_string(index=False))
    _say("\n" + check_frame.to_string(index=False))
    if booted.seconds_to_marker is not None:
        _say(f"\nboot marker seen after {booted.seconds_to_marker:.1f} s")
    _say(f"\nresults, plots and the console log are in {out}/")
    plain.close()
    secret.close()
    return 0 if all(checks.values()) else 1


def _plots(chain: Chain, out: Path) -> None:
    fig, axes = plt.subplots(3, 1, figsize=(11, 7), height_ratios=[1.3, 1, 1])
    plot_chain(chain, ax=axes[0])
    plot_blockmaps({f"changed {p - 1}→{p}": chain.changed(p - 1, p)
                    for p in range(1, len(chain))}, ax=axes[1],
                   title="blocks changed between consecutive days")
    plot_layout(chain.layout(-1), ax=axes[2])
    fig.tight_layout()
    fig.savefig(out / "blockmaps.png", dpi=110)
    plt.close(fig)

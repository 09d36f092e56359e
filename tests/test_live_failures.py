"""Live backups that fail half-way, race, or meet a bitmap they cannot trust, against a
real qemu-storage-daemon (writes through NBD): every point restored equals the disk's
bytes at that point, and a failure never makes a later incremental miss a block."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blockforensics.errors import UsageError
from blockforensics.formats.nbd import NbdDisk
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.live import handover
from blockforensics.live.guest import WROTE, make_ext4
from blockforensics.live.headstart import live_full, live_incremental, live_reread
from blockforensics.live.ops import LiveDisk
from blockforensics.live.qmp import QmpError, action
from blockforensics.nbd.client import NbdAddress
from tests.live_support import bf, booted, qemu_io, same_image, served
from tests.support import mounted_with, require_tools

MIB = 1 << 20


def disk_image(path: Path, size: int = 8 * MIB) -> Path:
    """A raw disk of ``size`` bytes with random data in its first MiB."""
    data = np.zeros(size, dtype=np.uint8)
    data[:MIB] = np.random.default_rng(3).integers(0, 256, MIB, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    return path


def head_start(rw: NbdAddress, chain: Path, qmp: Path, bitmap: str, *more: object,
               **env: str) -> subprocess.CompletedProcess[str]:
    return bf("backup", rw.uri(), chain, "--bitmap", bitmap, "--head-start", qmp, *more, **env)


def assert_point_is_disk(chain: Path, point: int, rw: NbdAddress, out: Path) -> None:
    """The restored ``point`` holds the served disk's bytes now (no write since)."""
    with NbdDisk(rw) as disk:
        now = disk.read(0, disk.size)
    with Chain.open(chain) as opened:
        assert restore(opened, point, out).read_bytes() == now, f"point {point}"


def rows(chain: Path) -> list[dict[str, object]]:
    """The chain's rows (``list --json``'s)."""
    with Chain.open(chain) as opened:
        return opened.rows()


def test_disk_full_in_the_chain_directory_loses_no_write(tmp_path):
    """The incremental does not fit: the hand-over is rolled back (the old bitmap marks
    everything again, the new ones are gone), and the next run stores every write made
    before and after the failure."""
    require_tools("mount", "umount")
    small = mounted_with(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs"], tmp_path / "small")
    with small as room, served(disk_image(tmp_path / "disk.img"), tmp_path / "qsd") as (
            daemon, live, rw):
        chain, qmp = room / "chain", daemon.spare_qmp_socket
        assert head_start(rw, chain, qmp, "c").returncode == 0
        qemu_io(rw, "write -P 1 2M 3M")  # 3 MiB: more than the room left
        failed = head_start(rw, chain, qmp, "c")
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
        assert len(rows(chain)) == 1
        states = live.bitmap_states()
        assert list(states) == ["c"] and states["c"]["recording"]
        assert states["c"]["count"] == 3 * MIB
        wrong = head_start(rw, chain, qmp, "c-1")
        assert wrong.returncode == 2 and "(--bitmap c)" in wrong.stderr, wrong.stderr
        subprocess.run(["mount", "-o", "remount,size=64m", str(room)], check=True)
        qemu_io(rw, "write -P 2 6M 64k")
        done = head_start(rw, chain, qmp, "c", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["tracked"] == 3 * 256 + 16
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")
        qemu_io(rw, "write -P 3 7M 4k")
        assert head_start(rw, chain, qmp, "c-1").returncode == 0
        assert_point_is_disk(chain, 2, rw, tmp_path / "r2.raw")
        assert live.bitmaps() == ["c-2"]


def test_no_snapshot_where_the_guest_writes_could_fill_the_file_system(tmp_path):
    """QEMU fails a guest's write whose old block cannot be copied into the snapshot: a
    snapshot whose overlay's file system cannot hold the whole disk is refused before
    it is taken, and the tracking is untouched."""
    require_tools("mount", "umount")
    with mounted_with(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs"],
                      tmp_path / "tiny") as tiny, \
            served(disk_image(tmp_path / "disk.img"), tmp_path / "qsd") as (daemon, live, rw):
        chain, qmp = tmp_path / "chain", daemon.spare_qmp_socket
        assert head_start(rw, chain, qmp, "c").returncode == 0
        qemu_io(rw, "write -P 1 2M 64k")
        refused = bf("backup", rw.uri(), chain, "--bitmap", "c", "--head-start", qmp,
                     TMPDIR=str(tiny))
        assert refused.returncode == 2 and "set TMPDIR" in refused.stderr, refused.stderr
        states = live.bitmap_states()
        assert list(states) == ["c"] and states["c"]["recording"]
        qemu_io(rw, "write -P 2 4M 64k")
        assert head_start(rw, chain, qmp, "c").returncode == 0
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")


def _stop_after_snapshot(argv: list[str], live: LiveDisk, bitmap: str, how: str,
                         **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``argv`` (``env`` added to its environment); once ``bitmap`` appears (the
    snapshot was taken, the point not yet committed) stop it ``how``: a signal's name,
    or ``"nbd-dropped"`` (QEMU drops the exports it reads through); the process, ended,
    and what it wrote on stderr."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, **env})
    try:
        while process.poll() is None and bitmap not in live.bitmaps():
            time.sleep(0.002)
        assert process.poll() is None, "the backup ended before it was stopped"
        if how == "nbd-dropped":
            dropped = False
            while process.poll() is None and not dropped:
                for export in live.qmp.execute("query-block-exports"):
                    if export["id"] != "rw":
                        with contextlib.suppress(QmpError):  # unless the run removed it
                            live.qmp.execute("block-export-del", id=export["id"], mode="hard")
                            dropped = True
        else:
            process.send_signal(getattr(signal, how))
        return process, process.communicate(timeout=60)[1].decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _write_until(rw: NbdAddress, stop: threading.Event, first: int = 72 * MIB,
                 last: int = 80 * MIB) -> None:
    """4 KiB writes at random places between bytes ``first`` and ``last`` until ``stop``."""
    rng = np.random.default_rng(5)
    while not stop.is_set():
        at = int(rng.integers(first // 4096, last // 4096)) * 4096
        qemu_io(rw, f"write -P {int(rng.integers(1, 255))} {at} 4k")


@pytest.mark.slow
@pytest.mark.parametrize("how, status", [("SIGTERM", 143), ("nbd-dropped", 2),
                                         ("SIGKILL", -9)])
def test_a_backup_stopped_after_its_snapshot_loses_no_write(tmp_path, how, status):
    """SIGTERM, or the NBD connection dropped: the run rolls its hand-over back itself.
    SIGKILL: it leaves its bitmaps, snapshot job, overlay and exports in QEMU; the next
    run removes them and merges the bitmaps back.  Either way the next point holds
    every write, those made while the stopped run ran too."""
    image = disk_image(tmp_path / "disk.img", 80 * MIB)
    with served(image, tmp_path / "qsd") as (daemon, live, rw):
        chain, qmp = tmp_path / "chain", daemon.spare_qmp_socket
        assert head_start(rw, chain, qmp, "c").returncode == 0
        qemu_io(rw, "write -P 1 8M 64M")  # a head start and a point long enough to stop
        argv = [sys.executable, "-m", "blockforensics.cli", "backup", rw.uri(), str(chain),
                "--bitmap", "c", "--head-start", str(qmp)]
        stop = threading.Event()
        writer = threading.Thread(target=_write_until, args=(rw, stop))
        writer.start()  # writes before, during and after the snapshot of the stopped run
        tmp = tmp_path / "tmp"  # the run's TMPDIR: its snapshot overlay
        tmp.mkdir()
        try:
            stopped, stderr = _stop_after_snapshot(argv, live, "c-1", how, TMPDIR=str(tmp))
            assert stopped.returncode == status, stderr
        finally:
            stop.set()
            writer.join(30)
        assert len(rows(chain)) == 1
        if how != "SIGKILL":
            assert list(live.bitmap_states()) == ["c"]
        else:
            assert {"c", "c-after", "c-1"} <= set(live.bitmaps())
            assert handover.load(chain).pending == ["c-after", "c-1"]  # type: ignore[union-attr]
            gone = subprocess.Popen(["true"])  # a pid no longer running, and the tracking
            gone.wait()  # bitmap a method-3 run killed with that pid would leave
            live.add_bitmap(f"bf-t-{gone.pid}-1")
        left = [path.name.rpartition("-")[0] for path in tmp.iterdir()]  # bf-fleece-PID-X
        assert left == ([f"bf-fleece-{stopped.pid}"] if how == "SIGKILL" else [])
        qemu_io(rw, "write -P 2 4M 64k")
        done = head_start(rw, chain, qmp, "c", TMPDIR=str(tmp))
        assert done.returncode == 0, done.stderr
        assert not list(tmp.iterdir())
        if how == "SIGKILL":
            assert "removed what a stopped backup left in QEMU" in done.stdout
            assert f"bf-t-{gone.pid}-1" in done.stdout
            assert "merged back into c" in done.stdout
            assert daemon.qmp is not None
            assert not daemon.qmp.execute("query-block-jobs")
            assert [e["id"] for e in daemon.qmp.execute("query-block-exports")] == ["rw"]
        assert rows(chain)[1]["blocks"] >= 64 * 256 + 16
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")
        assert live.bitmaps() == ["c-1"]


@pytest.mark.slow
def test_a_full_killed_after_its_snapshot(tmp_path):
    """SIGKILL after the full's snapshot started bitmap c: the next run removes c (the
    record lists it as pending, and no point vouches for it) and makes the full."""
    image = disk_image(tmp_path / "disk.img", 80 * MIB)
    with served(image, tmp_path / "qsd") as (daemon, live, rw):
        qemu_io(rw, "write -P 1 8M 64M")  # a full long enough to stop
        chain, qmp = tmp_path / "chain", daemon.spare_qmp_socket
        argv = [sys.executable, "-m", "blockforensics.cli", "backup", rw.uri(), str(chain),
                "--bitmap", "c", "--head-start", str(qmp)]
        killed, stderr = _stop_after_snapshot(argv, live, "c", "SIGKILL")
        assert killed.returncode == -9, stderr
        assert handover.load(chain).pending == ["c"]  # type: ignore[union-attr]
        qemu_io(rw, "write -P 2 4M 64k")
        done = head_start(rw, chain, qmp, "c")
        assert done.returncode == 0, done.stderr
        assert "left bitmaps c; they are not known to start at the newest point" in done.stdout
        assert_point_is_disk(chain, 0, rw, tmp_path / "r0.raw")
        assert live.bitmaps() == ["c"]


@pytest.mark.slow
def test_qemu_killed_during_a_backup(tmp_path):
    """QEMU dies in the head start: a one-line error; once it runs again (its bitmaps
    gone with it) the next point reads the whole snapshot and holds the disk."""
    image = disk_image(tmp_path / "disk.img", 80 * MIB)
    chain = tmp_path / "chain"
    with served(image, tmp_path / "qsd1") as (daemon, live, rw):
        assert head_start(rw, chain, daemon.spare_qmp_socket, "c").returncode == 0
        qemu_io(rw, "write -P 1 8M 64M")
        process = subprocess.Popen(
            [sys.executable, "-m", "blockforensics.cli", "backup", rw.uri(), str(chain),
             "--bitmap", "c", "--head-start", str(daemon.spare_qmp_socket)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while process.poll() is None and "c-after" not in live.bitmaps():
            time.sleep(0.002)
        daemon.kill()
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "connection to QEMU was lost" in err, err
    assert len(err.splitlines()) == 1
    with served(image, tmp_path / "qsd2") as (daemon, live, rw):
        done = head_start(rw, chain, daemon.spare_qmp_socket, "c")
        assert done.returncode == 0 and "bitmap 'c' is gone" in done.stdout, done.stderr
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")


def test_a_bitmap_the_chain_cannot_vouch_for_is_not_trusted(tmp_path):
    """A chain whose newest point no live run made, a bitmap made after writes: the
    point reads the whole snapshot (a note says why); a bitmap other than the one that
    tracks since the newest point is refused, naming the right one."""
    image = disk_image(tmp_path / "disk.img")
    chain = tmp_path / "chain"
    assert bf("backup", image, chain).returncode == 0  # a full of the file, not live
    with served(image, tmp_path / "qsd") as (daemon, live, rw):
        qmp = daemon.spare_qmp_socket
        qemu_io(rw, "write -P 1 3M 64k")  # before any bitmap: no bitmap knows it
        live.add_bitmap("late")
        qemu_io(rw, "write -P 2 5M 4k")
        done = head_start(rw, chain, qmp, "late")
        assert done.returncode == 0, done.stderr
        assert "no record that bitmap 'late' has tracked" in done.stdout
        assert "tracking goes on in bitmap 'late-1'" in done.stdout
        assert rows(chain)[1]["blocks"] == 17
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")
        live.add_bitmap("mine")
        refused = head_start(rw, chain, qmp, "mine")
        assert refused.returncode == 2 and "'mine' started after point 1" in refused.stderr
        assert "(--bitmap late-1)" in refused.stderr
        qemu_io(rw, "write -P 3 6M 4k")
        done = head_start(rw, chain, qmp, "late-1", "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["tracked"] == 1
        assert_point_is_disk(chain, 2, rw, tmp_path / "r2.raw")


def test_a_disabled_removed_or_busy_bitmap(tmp_path):
    """Disabled (writes went unmarked), gone (QEMU restarted) or made again by someone
    else (a granularity the tool does not use): the point reads the whole snapshot and
    says why; busy (exported by someone): refused."""
    with served(disk_image(tmp_path / "disk.img"), tmp_path / "qsd") as (daemon, live, rw):
        chain, qmp = tmp_path / "chain", daemon.spare_qmp_socket
        assert head_start(rw, chain, qmp, "c").returncode == 0
        live.qmp.transaction(live.disable_bitmap_action("c"))
        qemu_io(rw, "write -P 1 2M 8k")
        done = head_start(rw, chain, qmp, "c")
        assert done.returncode == 0 and "bitmap 'c' is disabled" in done.stdout, done.stderr
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")
        assert live.bitmaps() == ["c-1"]
        live.remove_bitmap("c-1")
        qemu_io(rw, "write -P 2 4M 8k")
        done = head_start(rw, chain, qmp, "c-1")
        assert done.returncode == 0 and "bitmap 'c-1' is gone" in done.stdout, done.stderr
        assert_point_is_disk(chain, 2, rw, tmp_path / "r2.raw")
        with live.exported(live.node, bitmaps=("c-1",), writable=True):
            busy = head_start(rw, chain, qmp, "c-1")
        assert busy.returncode == 2 and "'c-1' is busy" in busy.stderr, busy.stderr
        live.remove_bitmap("c-1")  # QEMU restarted; someone adds c-1 again, after a write
        qemu_io(rw, "write -P 3 5M 8k")
        live.qmp.transaction(action("block-dirty-bitmap-add", node=live.node, name="c-1"))
        done = head_start(rw, chain, qmp, "c-1")
        assert done.returncode == 0 and "'c-1' has a granularity of 65536 bytes" in done.stdout
        assert_point_is_disk(chain, 3, rw, tmp_path / "r3.raw")


@pytest.mark.slow
def test_persistent_bitmap_of_a_qcow2_with_a_backing_file_across_restarts(tmp_path):
    """A qcow2 over a raw backing file: the tracking bitmap is persistent, so a clean
    restart keeps it (the next point is a plain head start of both sessions' writes);
    after a crash QEMU marks the bitmap it loaded inconsistent, and the point reads the
    whole snapshot."""
    base = disk_image(tmp_path / "base.img")
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(top)], check=True)
    chain = tmp_path / "chain"
    with served(top, tmp_path / "qsd1", fmt="qcow2") as (daemon, live, rw):
        assert head_start(rw, chain, daemon.spare_qmp_socket, "c").returncode == 0
        assert live.bitmap_states()["c"]["persistent"]
        qemu_io(rw, "write -P 1 1M 64k")
    with served(top, tmp_path / "qsd2", fmt="qcow2") as (daemon, live, rw):
        qemu_io(rw, "write -P 2 5M 4k")
        done = head_start(rw, chain, daemon.spare_qmp_socket, "c", "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["tracked"] == 17, done.stderr
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")
    with served(top, tmp_path / "qsd3", fmt="qcow2") as (daemon, live, rw):
        qemu_io(rw, "write -P 3 6M 4k")
        daemon.kill()
    with served(top, tmp_path / "qsd4", fmt="qcow2") as (daemon, live, rw):
        assert live.bitmap_states()["c-1"].get("inconsistent")
        done = head_start(rw, chain, daemon.spare_qmp_socket, "c-1")
        assert done.returncode == 0 and "'c-1' is inconsistent" in done.stdout, done.stderr
        assert_point_is_disk(chain, 2, rw, tmp_path / "r2.raw")
        assert live.bitmaps() == ["c-2"]


def test_points_of_a_qcow2_with_a_backing_file_are_their_snapshots_while_writes_go_on(
        tmp_path):
    """Writes all the time, on a qcow2 over a raw backing file: each point (full, head
    start with a budget smaller than what it tracked, re-read) equals QEMU's fleecing
    snapshot it was read from, not a mix."""
    base = disk_image(tmp_path / "base.img")
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(top)], check=True)
    with served(top, tmp_path / "qsd", fmt="qcow2") as (_, live, rw):
        chain = Chain.open_or_create(tmp_path / "chain")
        stop = threading.Event()
        writer = threading.Thread(target=_write_until, args=(rw, stop, 0, 8 * MIB))
        writer.start()
        try:
            live_full(chain, live, tmp_path, "c", keep_snapshot=tmp_path / "s0.raw")
            qemu_io(rw, "write -P 1 3M 1M")
            budget = live_incremental(chain, live, tmp_path, "c", "c-1",
                                      keep_snapshot=tmp_path / "s1.raw",
                                      head_start_bytes=64 << 10)
            live_reread(chain, live, tmp_path, "c-2", keep_snapshot=tmp_path / "s2.raw")
        finally:
            stop.set()
            writer.join(30)
        for point in range(3):
            restored = restore(chain, point, tmp_path / f"r{point}.raw")
            assert same_image(restored, tmp_path / f"s{point}.raw"), point
        chain.close()
        # the head start holds 64 KiB at most; the rest of the 1 MiB comes from the snapshot
        assert budget.ahead == 16 and budget.after >= 256 - 16


def test_a_qcow2_version_2_disk(tmp_path):
    """A qcow2 of version 2 cannot store bitmaps: the tracking is not persistent there
    (adding it persistent failed the full), and the points hold the disk."""
    image = tmp_path / "v2.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10",
                    str(disk_image(tmp_path / "disk.img")), str(image)], check=True)
    with served(image, tmp_path / "qsd", fmt="qcow2") as (daemon, live, rw):
        chain, qmp = tmp_path / "chain", daemon.spare_qmp_socket
        done = head_start(rw, chain, qmp, "c")
        assert done.returncode == 0, done.stderr
        assert not live.bitmap_states()["c"]["persistent"]
        qemu_io(rw, "write -P 1 3M 8k")
        assert head_start(rw, chain, qmp, "c").returncode == 0
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")


def test_one_backup_per_disk_and_one_bitmap_per_chain(tmp_path):
    """A second backup of a disk while one runs is refused, and so is a second chain
    starting its tracking in a bitmap another chain owns; with a name of its own, both
    chains track the disk side by side."""
    with served(disk_image(tmp_path / "disk.img"), tmp_path / "qsd") as (daemon, live, rw):
        qmp = daemon.spare_qmp_socket
        with live.locked():  # whatever TMPDIR each says
            busy = bf("backup", rw.uri(), tmp_path / "a", "--bitmap", "c", "--head-start", qmp,
                      TMPDIR=str(tmp_path))
        assert busy.returncode == 2 and "another backup of this disk" in busy.stderr
        assert head_start(rw, tmp_path / "a", qmp, "c").returncode == 0
        other = head_start(rw, tmp_path / "b", qmp, "c")
        assert other.returncode == 2 and "'c' already exists" in other.stderr, other.stderr
        assert live.bitmaps() == ["c"]
        assert head_start(rw, tmp_path / "b", qmp, "w").returncode == 0  # a name of its own
        qemu_io(rw, "write -P 1 2M 64k")
        for chain, bitmap in (("a", "c"), ("b", "w")):  # each tracks on, unhindered
            done = head_start(rw, tmp_path / chain, qmp, bitmap, "--json")
            assert done.returncode == 0 and json.loads(done.stdout)["tracked"] == 16
            assert_point_is_disk(tmp_path / chain, 1, rw, tmp_path / f"{chain}1.raw")
        assert sorted(live.bitmaps()) == ["c-1", "w-1"]


def test_wrong_sockets_and_exports_are_one_line_errors(tmp_path):
    with served(disk_image(tmp_path / "disk.img"), tmp_path / "qsd") as (daemon, _, rw):
        chain = tmp_path / "chain"
        for qmp, expected in ((tmp_path / "none.sock", "cannot connect to QMP"),
                              (daemon.nbd_socket, "not a QMP monitor")):
            done = head_start(rw, chain, qmp, "c")
            assert done.returncode == 2 and expected in done.stderr, done.stderr
            assert len(done.stderr.splitlines()) == 1
        nope = NbdAddress(export="nope", socket_path=str(daemon.nbd_socket))
        done = head_start(nope, chain, daemon.spare_qmp_socket, "c")
        assert done.returncode == 2 and "export 'nope' not present" in done.stderr  # NBD's
        for option in (("--parent", "0"), ("--full",)):
            done = head_start(rw, chain, daemon.spare_qmp_socket, "c", *option)
            assert done.returncode == 2 and "does not go with --head-start" in done.stderr
        refused = head_start(rw, chain, daemon.spare_qmp_socket, "x" * 1100)  # QEMU's limit
        assert refused.returncode == 2 and "Bitmap name too long" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1
        assert head_start(rw, chain, daemon.spare_qmp_socket, "c").returncode == 0


@pytest.mark.parametrize("block_size", [512, 2 * MIB])
def test_block_sizes_odd_disk_sizes_and_resizes(tmp_path, block_size):
    """Chain blocks smaller and larger than the bitmap's 4 KiB granularity, a disk whose
    size is no multiple of 4 KiB, grown and shrunk (block_resize) between points."""
    image = disk_image(tmp_path / "disk.img", 8 * MIB + 1536)
    with served(image, tmp_path / "qsd") as (daemon, live, rw):
        chain, qmp = tmp_path / "chain", daemon.spare_qmp_socket
        assert head_start(rw, chain, qmp, "c", "--block-size", block_size).returncode == 0
        bitmap, size = "c", live.size()
        for point, new_size in enumerate((size, 12 * MIB + 512, 6 * MIB), start=1):
            if new_size != size:  # the writable export does not share resizing
                live.unexport("rw")
                live.qmp.execute("block_resize", **{"node-name": live.node}, size=new_size)
                rw, size = live.export("rw", writable=True), new_size
            qemu_io(rw, f"write -P {point} 4096 1000", f"write -P 9 {size - 700} 700")
            done = head_start(rw, chain, qmp, bitmap, "--json")
            assert done.returncode == 0, done.stderr
            bitmap = json.loads(done.stdout)["next_bitmap"]
            assert_point_is_disk(chain, point, rw, tmp_path / f"r{point}.raw")


def test_two_disks_of_one_qemu_keep_their_own_tracking(tmp_path):
    """Two nodes, a chain each, the same bitmap name on both: each point holds its own
    disk; a chain pointed at the other disk trusts no bitmap there."""
    with served(disk_image(tmp_path / "a.img"), tmp_path / "qsd") as (daemon, live, rw):
        second = disk_image(tmp_path / "b.img", 4 * MIB)
        live.qmp.execute("blockdev-add", driver="raw", **{"node-name": "disk1"},
                         file={"driver": "file", "filename": str(second)})
        rw1 = live.export("rw1", "disk1", writable=True)
        qmp = daemon.spare_qmp_socket
        for address, chain in ((rw, tmp_path / "a"), (rw1, tmp_path / "b")):
            assert head_start(address, chain, qmp, "c").returncode == 0
        qemu_io(rw, "write -P 1 2M 64k")
        qemu_io(rw1, "write -P 2 3M 4k")
        for address, chain, tracked in ((rw, tmp_path / "a", 16), (rw1, tmp_path / "b", 1)):
            done = head_start(address, chain, qmp, "c", "--json")
            assert done.returncode == 0 and json.loads(done.stdout)["tracked"] == tracked
            assert_point_is_disk(chain, 1, address, tmp_path / f"{chain.name}1.raw")
        crossed = head_start(rw1, tmp_path / "a", qmp, "c-1")
        assert crossed.returncode == 0 and "no record that bitmap 'c-1' has tracked disk1" \
            in crossed.stdout, crossed.stderr
        assert_point_is_disk(tmp_path / "a", 2, rw1, tmp_path / "a2.raw")


@pytest.mark.parametrize("granularity", [512, 2 * MIB])
def test_your_own_bitmap_of_any_granularity(tmp_path, granularity):
    """``--bitmap NAME`` on an export carrying a bitmap of 512 B or 2 MiB granularity:
    every block it marks is copied, and the point holds the disk."""
    with served(disk_image(tmp_path / "disk.img", 8 * MIB + 1536), tmp_path / "qsd") as (
            _, live, rw):
        chain = tmp_path / "chain"
        assert bf("backup", rw.uri(), chain, "--all-blocks").returncode == 0
        live.qmp.transaction(action("block-dirty-bitmap-add", node=live.node, name="g",
                                    granularity=granularity))
        qemu_io(rw, "write -P 1 4000 200", f"write -P 2 {live.size() - 100} 100")
        live.qmp.transaction(live.disable_bitmap_action("g"))
        with live.exported(live.node, bitmaps=("g",)) as address:
            done = bf("backup", address.uri(), chain, "--bitmap", "g", "--all-blocks")
            assert done.returncode == 0, done.stderr
        assert_point_is_disk(chain, 1, rw, tmp_path / "r1.raw")


def test_the_full_holds_the_free_space_too(tmp_path):
    """Bytes left in blocks the ext4 does not allocate (a deleted file's): the full
    stores them too, so that the point restores to the disk's bytes everywhere (an
    image of the allocated blocks restored them as zeros); it still reports the survey,
    which ``--all-blocks`` skips."""
    require_tools("mkfs.ext4")
    image = make_ext4(tmp_path / "disk.img", 16 * MIB)
    with served(image, tmp_path / "qsd") as (daemon, _, rw):
        qemu_io(rw, "write -P 0x5a 12M 64k")  # free space of the ext4
        qmp = daemon.spare_qmp_socket
        surveyed = head_start(rw, tmp_path / "a", qmp, "a")
        assert surveyed.returncode == 0 and "whole disk (ext4): " in surveyed.stdout
        unsurveyed = head_start(rw, tmp_path / "b", qmp, "b", "--all-blocks")
        assert unsurveyed.returncode == 0 and "ext4" not in unsurveyed.stdout
        for chain in "ab":
            assert_point_is_disk(tmp_path / chain, 0, rw, tmp_path / f"{chain}0.raw")
        qemu_io(rw, "write -P 1 13M 8k")
        assert head_start(rw, tmp_path / "a", qmp, "a").returncode == 0
        assert_point_is_disk(tmp_path / "a", 1, rw, tmp_path / "a1.raw")


@pytest.mark.slow
def test_a_writing_guest_on_qcow2_whose_backup_is_killed(tmp_path):
    """A TCG guest rewriting files on a qcow2 disk; a head-start backup SIGKILLed in
    its head start while the guest writes; the next points, taken with the guest paused,
    equal QEMU's own copy of the paused disk."""
    raw = make_ext4(tmp_path / "disk.raw", 64 * MIB)
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
                   check=True)
    chain = tmp_path / "chain"
    with booted(image, tmp_path / "vm", "writer", fmt="qcow2") as (vm, live):
        address = live.export("disk")
        qmp = vm.spare_qmp_socket
        assert head_start(address, chain, qmp, "c").returncode == 0
        vm.wait_console(f"{WROTE} 20", 60)
        process = subprocess.Popen(
            [sys.executable, "-m", "blockforensics.cli", "backup", address.uri(), str(chain),
             "--bitmap", "c", "--head-start", str(qmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and "c-after" not in live.bitmaps():
            time.sleep(0.002)
        process.kill()
        assert process.wait() == -9
        vm.wait_console(f"{WROTE} 40", 60)
        outputs = []
        for point, bitmap in ((1, "c"), (2, "c-1")):
            live.qmp.execute("stop")
            try:
                done = head_start(address, chain, qmp, bitmap)
                assert done.returncode == 0, done.stderr
                outputs.append(done.stdout)
                paused = live.copy_node(live.node, tmp_path / f"paused{point}.raw")
                with Chain.open(chain) as opened:
                    restored = restore(opened, point, tmp_path / f"r{point}.raw")
                assert same_image(restored, paused), done.stdout
            finally:
                live.qmp.execute("cont")
            vm.wait_console(f"{WROTE} {40 + 20 * point}", 60)
        assert "merged back into c" in outputs[0] and "note" not in outputs[1]


def test_a_disk_resized_during_the_head_start(tmp_path):
    """block_resize between the head start and the snapshot: the run stops with a
    one-line error and rolls its hand-over back; the next point holds the disk."""
    with served(disk_image(tmp_path / "disk.img"), tmp_path / "qsd") as (_, live, rw):
        chain = Chain.open_or_create(tmp_path / "chain")
        live_full(chain, live, tmp_path, "c")
        qemu_io(rw, "write -P 1 2M 64k")

        def grow() -> None:
            live.unexport("rw")  # the writable export does not share resizing
            live.qmp.execute("block_resize", **{"node-name": live.node}, size=12 * MIB)
            qemu_io(live.export("rw", writable=True), "write -P 2 10M 4k")

        with pytest.raises(UsageError, match="resized during the backup"):
            live_incremental(chain, live, tmp_path, "c", "c-1", before_snapshot=grow)
        states = live.bitmap_states()
        assert list(states) == ["c"] and states["c"]["recording"]
        done = live_incremental(chain, live, tmp_path, "c", "c-1",
                                keep_snapshot=tmp_path / "s1.raw")
        assert done.tracked == 17
        assert same_image(restore(chain, 1, tmp_path / "r1.raw"), tmp_path / "s1.raw")
        chain.close()


def test_an_empty_live_disk_is_refused_as_every_empty_source_is(tmp_path):
    """``--head-start`` on a 0-byte disk: the one line (exit 2) every backup of an empty
    source gives, and no chain left behind."""
    (tmp_path / "disk.img").write_bytes(b"")
    with served(tmp_path / "disk.img", tmp_path / "qsd") as (daemon, _, rw):
        chain = tmp_path / "chain"
        done = head_start(rw, chain, daemon.spare_qmp_socket, "c")
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [f"blockforensics: error: {rw.uri()}: the source "
                                            "is empty (0 bytes): no disk to read"]
        assert not chain.exists()

"""NBD client, dirty-bitmap backups, fleecing and head start against a real
qemu-storage-daemon (no guest: writes arrive through a writable NBD export)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blockforensics.blockmap import BlockMap
from blockforensics.formats import open_disk
from blockforensics.formats.nbd import NbdDisk
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.live.headstart import live_full, live_incremental, next_bitmap_name
from blockforensics.live.qemu import NODE
from blockforensics.nbd.client import NbdAddress, NbdConnection
from tests import live_support
from tests.live_support import bf, qemu_io
from tests.support import require_tools

SIZE = 8 << 20
BS = 4096


@pytest.fixture
def served(tmp_path: Path):
    """A daemon serving an 8 MiB image with data in its first and last MiB; the
    LiveDisk and a writable export ``rw``."""
    image = tmp_path / "disk.img"
    rng = np.random.default_rng(7)
    data = np.zeros(SIZE, dtype=np.uint8)
    data[: 1 << 20] = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    data[-(1 << 20):] = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    image.write_bytes(data.tobytes())
    with live_support.served(image, tmp_path / "qsd") as (daemon, live, rw):
        yield live, rw, image, daemon.spare_qmp_socket


def test_nbd_disk_reads_the_export_byte_for_byte(served):
    _, rw, image, _ = served
    with open_disk(rw.uri()) as disk:
        assert isinstance(disk, NbdDisk)
        assert disk.size == SIZE
        assert disk.read(0, SIZE) == image.read_bytes()
        assert disk.read(SIZE - 10, 100) == image.read_bytes()[-10:]
    with NbdConnection.open(rw) as conn:
        assert conn.read(12345, 6789) == image.read_bytes()[12345 : 12345 + 6789]


def test_backup_with_bitmap_stores_exactly_the_dirty_blocks(served, tmp_path):
    live, rw, _, _ = served
    chain = tmp_path / "chain"
    assert bf("backup", rw.uri(), chain, "--all-blocks").returncode == 0
    live.add_bitmap("b0")
    qemu_io(rw, "write -P 0xab 8192 12288", "write -P 1 3M 4k", "write -P 2 7340000 100")
    live.qmp.transaction(live.disable_bitmap_action("b0"))
    expected = BlockMap.from_positions(SIZE // BS, [2, 3, 4, 768, 1791, 1792])
    with live.exported(NODE, bitmaps=("b0",)) as address:
        with NbdDisk(address) as disk:
            assert disk.dirty_map("b0") == expected
            assert disk.dirty_map("b0", 65536).positions().tolist() == [0, 48, 111, 112]
        done = bf("backup", address.uri(), chain, "--bitmap", "b0", "--all-blocks")
        assert done.returncode == 0, done.stderr
    row = Chain.open(chain).rows()[1]
    assert (row["kind"], row["blocks"]) == ("incremental", 6)
    restored = restore(Chain.open(chain), 1, tmp_path / "out.img")
    with NbdDisk(rw) as disk:
        assert restored.read_bytes() == disk.read(0, SIZE)


def test_bitmap_option_needs_an_nbd_source(served, tmp_path):
    _, _, image, _ = served
    done = bf("backup", image, tmp_path / "c", "--bitmap", "b0")
    assert done.returncode == 2 and "NBD source" in done.stderr
    assert "Traceback" not in done.stderr


def test_fleece_holds_the_moment_while_writes_go_on(served, tmp_path):
    live, rw, image, _ = served
    before = image.read_bytes()
    with live.fleece(tmp_path, live.add_bitmap_action("t")) as snap:
        qemu_io(rw, "write -P 0xcd 0 64k", "write -P 0xee 5M 1M")
        with snap.exported() as address, NbdDisk(address) as disk:
            assert disk.read(0, SIZE) == before
        copy = snap.copy_to(tmp_path / "snap.raw")
        assert copy.read_bytes() == before
        live.qmp.transaction(live.disable_bitmap_action("t"))
        assert live.dirty_map("t").count() == 16 + 256
    assert not snap.overlay.exists()


def _writer(rw: NbdAddress, stop: threading.Event) -> None:
    """Random 4-32 KiB writes until stopped (the guest's workload, from outside)."""
    rng = np.random.default_rng(1)
    while not stop.is_set():
        at = int(rng.integers(0, SIZE // BS - 8)) * BS
        qemu_io(rw, f"write -P {int(rng.integers(1, 255))} {at} {int(rng.integers(1, 9)) * BS}")


def test_head_start_points_equal_their_snapshots_while_writes_go_on(served, tmp_path):
    live, rw, _, _ = served
    chain = Chain.open_or_create(tmp_path / "chain")
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(rw, stop))
    writer.start()
    try:
        points = [live_full(chain, live, tmp_path, "bm-1", keep_snapshot=tmp_path / "s0.raw")]
        for i, head_start in enumerate((True, True, False), start=1):
            qemu_io(rw, f"write -P {i} {i}M 256k")
            points.append(live_incremental(chain, live, tmp_path, points[-1].next_bitmap,
                                           next_bitmap_name(points[-1].next_bitmap),
                                           head_start=head_start,
                                           keep_snapshot=tmp_path / f"s{i}.raw"))
    finally:
        stop.set()
        writer.join(30)
    print(*points, sep="\n")
    for p in points:
        out = restore(chain, p.point, tmp_path / f"r{p.point}.raw")
        assert out.read_bytes() == (tmp_path / f"s{p.point}.raw").read_bytes(), p
    for p in points[1:]:
        assert chain.rows()[p.point]["blocks"] == p.tracked
    for p in points[1:3]:
        assert p.ahead >= 64 and p.after < p.tracked
    assert points[3].ahead == 0 and points[3].after == points[3].tracked
    assert live.bitmaps() == [points[-1].next_bitmap]


def test_cli_head_start_makes_the_full_then_rotates_bitmaps(served, tmp_path):
    live, rw, _, qmp = served
    chain = tmp_path / "chain"
    first = bf("backup", rw.uri(), chain, "--bitmap", "cli", "--head-start", qmp, "--json")
    assert first.returncode == 0, first.stderr
    qemu_io(rw, "write -P 9 2M 64k")
    second = bf("backup", rw.uri(), chain, "--bitmap", "cli", "--head-start", qmp, "--json")
    assert second.returncode == 0, second.stderr
    done = json.loads(second.stdout)
    assert (done["point"], done["tracked"], done["ahead"], done["next_bitmap"]) == \
        (1, 16, 16, "cli-1")
    assert live.bitmaps() == ["cli-1"]
    out = restore(Chain.open(chain), 1, tmp_path / "r.raw")
    with NbdDisk(rw) as disk:
        assert out.read_bytes() == disk.read(0, SIZE)
    missing = bf("backup", rw.uri(), chain, "--bitmap", "nope", "--head-start", qmp)
    assert missing.returncode == 2 and "no dirty bitmap 'nope'" in missing.stderr
    assert "(--bitmap cli-1)" in missing.stderr
    assert "--bitmap cli-1" in missing.stderr


def test_qemu_nbd_export_reads_and_reports_its_holes(tmp_path):
    require_tools("qemu-nbd")
    image = tmp_path / "sparse.img"
    with open(image, "wb") as fh:
        fh.truncate(4 << 20)
        for block in (10, 500):
            fh.seek(block * BS)
            fh.write(bytes(range(256)) * 16)
    sock = tmp_path / "nbd.sock"
    server = subprocess.Popen(["qemu-nbd", "-t", "-r", "-f", "raw", "-k", str(sock), str(image)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        with open_disk(f"nbd+unix:///?socket={sock}") as disk:
            assert isinstance(disk, NbdDisk)
            assert disk.present().positions().tolist() == [10, 500]
            assert disk.read(0, disk.size) == image.read_bytes()
    finally:
        server.kill()
        server.wait()

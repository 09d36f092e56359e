"""Methods 1-3 on a booted, writing QEMU guest (TCG): real dirty bitmaps, fleecing
snapshots, head start and quiescence writes (e2fsck's journal replay)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.live.guest import SETTLED, WROTE, make_ext4
from blockforensics.live.headstart import live_full, live_incremental, next_bitmap_name
from blockforensics.live.methods import branching_chain, quiesced_full_image
from tests.live_support import (
    BOOT_TIMEOUT,
    blocks,
    booted,
    fsck_clean,
    needs_recovery,
    same_image,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def guest(tmp_path: Path, request: pytest.FixtureRequest):
    with booted(make_ext4(tmp_path / "disk.img"), tmp_path / "vm", request.param) as running:
        yield running


@pytest.mark.parametrize("guest", ["writer"], indirect=True)
def test_head_start_points_of_a_writing_guest_are_its_snapshots(guest, tmp_path):
    vm, live = guest
    chain = Chain.open_or_create(tmp_path / "chain")
    points = [live_full(chain, live, tmp_path, "cbt-1", keep_snapshot=tmp_path / "s0.raw")]
    for i, head_start in enumerate((True, True, False), start=1):
        vm.wait_console(f"{WROTE} {40 * i}", BOOT_TIMEOUT)  # the guest writes on
        points.append(live_incremental(chain, live, tmp_path, points[-1].next_bitmap,
                                       next_bitmap_name(points[-1].next_bitmap),
                                       head_start=head_start,
                                       keep_snapshot=tmp_path / f"s{i}.raw"))
    vm.kill()
    print(*points, sep="\n")
    for p in points:
        out = restore(chain, p.point, tmp_path / f"r{p.point}.raw")
        assert same_image(out, tmp_path / f"s{p.point}.raw"), p
        assert fsck_clean(out) or needs_recovery(out)   # a crash-consistent ext4
    for p in points[1:]:
        assert p.tracked > 0 and chain.rows()[p.point]["blocks"] == p.tracked
    assert all(p.ahead > 0 for p in points[1:3]) and points[3].ahead == 0


@pytest.mark.parametrize("guest", ["settle"], indirect=True)
def test_quiescence_writes_of_a_guest_single_image_and_branching_chain(guest, tmp_path):
    vm, live = guest
    vm.wait_console(f"{SETTLED} 1", BOOT_TIMEOUT)
    chain2 = Chain.open_or_create(tmp_path / "m2")
    m2 = quiesced_full_image(chain2, live, tmp_path, keep=tmp_path / "m2")
    crash, quiet = tmp_path / "m2.crash.raw", tmp_path / "m2.quiesced.raw"
    assert needs_recovery(crash) and not needs_recovery(quiet) and fsck_clean(quiet)
    image = restore(chain2, 0, tmp_path / "m2.restored")
    assert fsck_clean(image) and not needs_recovery(image)
    print("method 2", m2)
    assert m2["quiescence"] > 0

    chain3 = Chain.open_or_create(tmp_path / "m3")
    m3 = branching_chain(chain3, live, tmp_path,
                         lambda: vm.wait_console(f"{SETTLED} 3", BOOT_TIMEOUT),
                         keep=tmp_path / "m3-")
    vm.kill()
    print("method 3", m3)
    rows = chain3.rows()
    assert [r["parent"] for r in rows] == [None, 0, 0, 2]
    for name, snap in (("full", "m3-1"), ("trunk2", "m3-2")):
        out = restore(chain3, m3[name]["point"], tmp_path / f"{name}.raw")
        assert needs_recovery(out), name           # the trunk is crash-consistent
        crash_blocks = blocks(tmp_path / f"{snap}.crash.raw")
        quiet_blocks = blocks(tmp_path / f"{snap}.quiesced.raw")
        got = blocks(out)
        replayed = np.flatnonzero((crash_blocks != quiet_blocks).any(axis=1))
        assert replayed.size and (got[replayed] == crash_blocks[replayed]).all(), name
    for name, snap in (("leaf1", "m3-1"), ("leaf2", "m3-2")):
        out = restore(chain3, m3[name]["point"], tmp_path / f"{name}.raw")
        assert fsck_clean(out) and not needs_recovery(out), name
        quiet_blocks = blocks(tmp_path / f"{snap}.quiesced.raw")
        replayed = np.flatnonzero((blocks(tmp_path / f"{snap}.crash.raw") != quiet_blocks)
                                  .any(axis=1))
        assert (blocks(out)[replayed] == quiet_blocks[replayed]).all(), name

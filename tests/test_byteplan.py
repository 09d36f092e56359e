"""Byte plans: every served file read segment by segment from the image files equals the
layout's own bytes, and the blocks each plan names carry the digests of their bytes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from chains import build_chain

from blockforensics.crypto import KeySource
from blockforensics.errors import UsageError
from blockforensics.expose import served_files
from blockforensics.formats import byteplan
from blockforensics.formats.byteplan import (
    METADATA,
    ZEROS,
    DiskPlan,
    FilePlan,
    disk_plan,
    file_plan,
)
from blockforensics.formats.raw import RawDisk
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.image.imagefile import stored_digests
from blockforensics.volume import Volume

N_BLOCKS = 1300  # 5.1 MiB: three VHD blocks, the last one partial


def plan_bytes(plan: FilePlan, disk: DiskPlan) -> bytes:
    """The file as its plan says, read segment by segment; a segment of a file is also
    where the disk plan says its disk bytes are."""
    out = bytearray()
    ends = np.r_[plan.starts[1:], plan.size]
    for start, end, kind, offset, at in zip(plan.starts.tolist(), ends.tolist(),
                                            plan.kinds.tolist(), plan.offsets.tolist(),
                                            plan.disks.tolist()):
        assert end > start
        if kind == ZEROS:
            out += bytes(end - start)
        elif kind == METADATA:
            out += plan.blob[offset : offset + end - start].tobytes()
        else:
            run = int(np.searchsorted(disk.starts, at, side="right")) - 1
            assert disk.sources[run] == kind
            assert disk.offsets[run] + at - disk.starts[run] == offset
            out += os.pread(disk.files[kind].fd, end - start, offset)
    return bytes(out)


def block_offsets(plan: DiskPlan, kind: int, positions: np.ndarray) -> np.ndarray:
    """Where the disk plan reads the blocks at ``positions`` from, in its file ``kind``."""
    bs = plan.files[kind].block_size
    run = np.searchsorted(plan.starts, positions * bs, side="right") - 1
    assert np.all(plan.sources[run] == kind)
    return plan.offsets[run] + positions * bs - plan.starts[run]


def assert_plans_read_as_layouts(disk) -> None:
    plan = disk_plan(disk)
    assert plan is not None
    for kind, source in enumerate(plan.files):  # each block named: its digest is its bytes'
        bs = source.block_size
        assert np.all(np.diff(source.positions) > 0)
        offsets = block_offsets(plan, kind, source.positions)
        data = np.frombuffer(b"".join(os.pread(source.fd, bs, o) for o in offsets.tolist()),
                             np.uint8)
        records = np.zeros(len(offsets), [("length", "<u4"), ("flags", "<u4"),
                                          ("stored_digest", "V16")])
        records["length"] = bs
        records["flags"] = np.where(source.crc == 1, 16, 0)
        assert np.array_equal(stored_digests(data, np.arange(len(records)) * bs, records),
                              source.digests)
    for name, served in served_files(disk, partitions=False).items():
        whole = file_plan(served.layout, plan)
        assert plan_bytes(whole, plan) == served.layout.read(0, served.layout.file_size), name
        for start, length in [(0, 1), (511, 3 * 4096 + 7), (2 * 1024 * 1024 - 5, 9000),
                              (served.length - 700, 700)]:
            length = min(length, served.length - start)
            if length <= 0:
                continue
            part = whole.window(start, length)
            assert plan_bytes(part, plan) == served.layout.read(start, length), (name, start)


def test_chain_points_with_several_images_plan_to_the_layouts_bytes(tmp_path: Path):
    sizes = [N_BLOCKS * 4096 - 100, N_BLOCKS * 4096 + 3000, (N_BLOCKS - 400) * 4096]
    build_chain(tmp_path, [None, 0, 1], n_blocks=N_BLOCKS + 1, sizes=sizes)
    with Chain.open(tmp_path) as chain:
        for point in range(3):
            disk = chain.disk(point)
            assert_plans_read_as_layouts(disk)
        assert len(disk_plan(chain.disk(2)).files) == 3  # blocks of every image


def test_a_raw_file_plans_to_the_layouts_bytes(tmp_path: Path):
    path = tmp_path / "src.raw"
    rng = np.random.default_rng(2)
    with path.open("wb") as fh:
        fh.truncate(5 * 1024 * 1024 + 7 * 512)
        fh.seek(3 * 1024 * 1024 + 4096)
        fh.write(rng.bytes(300_000))
    with RawDisk(path) as disk:
        assert_plans_read_as_layouts(disk)


def test_zero_metadata_is_left_out_of_the_blob(tmp_path: Path):
    """A sparse disk's VMDK grain tables are mostly zeros: they are zero segments, not
    blob bytes, and still read as the layout's."""
    path = tmp_path / "sparse.raw"
    with path.open("wb") as fh:
        fh.truncate(1 << 30)
        fh.seek(700 << 20)
        fh.write(b"x" * 5000)
    with RawDisk(path) as disk:
        plan = disk_plan(disk)
        layout = served_files(disk, partitions=False)["disk.vmdk"].layout
        tables = sum(len(piece) for piece in layout._extents[3])
        whole = file_plan(layout, plan)
        assert len(whole.blob) < tables // 4
        assert plan_bytes(whole, plan) == layout.read(0, layout.file_size)


@pytest.mark.parametrize("kind", ["compressed", "encrypted"])
def test_chains_with_encoded_blocks_are_not_planned(tmp_path: Path, kind: str):
    key = None
    if kind == "encrypted":
        key = KeySource.from_file(KeySource.generate_file(tmp_path / "key"))
    data = np.tile(np.arange(4096, dtype=np.uint8), 64)  # compressible
    with Chain.create(tmp_path / "chain", key) as chain:
        backup(chain, Volume.from_bytes(data, 4096), compress=kind == "compressed")
        assert disk_plan(chain.disk(0)) is None


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_plans_built_a_few_rows_at_a_time_read_as_the_layouts(tmp_path: Path, monkeypatch,
                                                              rows: int):
    """The same code builds the plan of a point of any size, ``ROWS`` rows at a time (a
    window of the index, a batch of pieces, of extents): a few at a time here."""
    sizes = [N_BLOCKS * 4096 - 100, N_BLOCKS * 4096 + 3000]
    build_chain(tmp_path, [None, 0], n_blocks=N_BLOCKS + 1, sizes=sizes)
    monkeypatch.setattr(byteplan, "ROWS", rows)
    with Chain.open(tmp_path) as chain:
        assert_plans_read_as_layouts(chain.disk(1))


def test_no_room_for_a_plan_is_one_line(tmp_path: Path, monkeypatch):
    """A temporary directory that cannot hold the plan's spill: a UsageError naming it."""
    monkeypatch.setattr(byteplan.tempfile, "tempdir", str(tmp_path / "missing"))
    build_chain(tmp_path / "chain", [None], n_blocks=64)
    with Chain.open(tmp_path / "chain") as chain, pytest.raises(UsageError, match="missing"):
        disk_plan(chain.disk(0))


def test_empty_windows_and_files_have_no_segments(tmp_path: Path):
    path = tmp_path / "src.raw"
    path.write_bytes(bytes(range(256)) * 64)
    with RawDisk(path) as disk:
        plan = disk_plan(disk)
        whole = file_plan(served_files(disk, partitions=False)["disk.raw"].layout, plan)
        assert whole.window(100, 0).starts.size == 0 and whole.window(100, 0).size == 0
        assert plan_bytes(whole.window(100, 50), plan) == path.read_bytes()[100:150]

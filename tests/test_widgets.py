"""ChainExplorer driven headlessly through its callbacks, on a real FAT32 history."""

from __future__ import annotations

import matplotlib
import pytest
from support import require_module, require_tools

from blockforensics.datasets.investigation import build_investigation
from blockforensics.hexview import hexdump
from blockforensics.image.chain import Chain
from blockforensics.widgets import ChainExplorer

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.vfat", "mcopy", "mmd", "mdel")
    sample = build_investigation(tmp_path_factory.mktemp("fat32"), "fat32")
    with Chain.open(sample.chain_dir) as chain:
        yield ChainExplorer(chain)


def test_opens_on_the_most_suspicious_change(explorer):
    """Before anyone picks anything: the burst (point 3) against its parent, its most
    suspicious file selected with before/after bytes, busy and done said in the status."""
    assert (explorer.base, explorer.point) == (2, 3)
    assert explorer.point_picker.value == 3
    assert explorer.file is not None and explorer.file["suspected_encryption"]
    assert explorer.file_picker.value == explorer.file["path"]
    assert "suspected encryption" in explorer.file_html.value
    assert "<mark>" in explorer.file_html.value and "^^" in explorer.file_hex
    log = explorer.status_log
    assert log[0].startswith("⏳ triaging") and any(s.startswith("✓ comparing point 2 with "
                                                                  "point 3") for s in log)


def test_select_point_shows_its_diff_and_first_run(explorer):
    explorer.select_point(3)
    assert explorer.point == 3 and explorer.diff.a == 2
    assert "/docs/report.txt" in explorer.files_html.value
    assert explorer.figure is not None and len(explorer.figure.axes) == 2
    assert len(explorer.run_picker.options) == len(explorer.diff.runs)
    assert explorer.run == explorer.diff.runs.iloc[0].to_dict()
    first = explorer.hexdump.splitlines()[0]
    assert first.startswith(f"{explorer.run['start_byte']:010x}")


def test_the_zoomed_picture_says_so(explorer):
    explorer.select_point(1)
    lo, hi = explorer.zoomed
    assert 0 <= lo < hi < explorer.diff.n_blocks
    title = explorer.figure.axes[1].get_title()
    assert f"zoomed to blocks {lo}–{hi} of {explorer.diff.n_blocks}" in title
    assert "whole volume" in explorer.figure.axes[0].get_title()


def test_any_two_points_compare_across_days(explorer):
    explorer.base_picker.value = 0
    explorer.point_picker.value = 3
    assert (explorer.base, explorer.point) == (0, 3) and explorer.diff.a == 0
    changes = dict(zip(explorer.diff.files["path"], explorer.diff.files["change"]))
    assert changes["/docs/minutes.txt"] == "created" and changes["/docs/letter.txt"] == "deleted"
    explorer.compare("empty", 0)
    assert explorer.base is None and "/archive.bin" in explorer.files_html.value


def test_select_run_aligns_the_block_before_and_after(explorer):
    explorer.compare("parent", "-1")
    runs = explorer.diff.runs
    index = next(i for i, files in enumerate(runs["files"]) if "/docs/report.txt" in files)
    explorer.select_run(index)
    assert "/docs/report.txt" in explorer.owners
    assert "/docs/report.txt" in explorer.run_html.value
    assert explorer.run["start"] == runs["start"].iloc[index]
    assert "before" in explorer.run_hex.splitlines()[0] and "^^" in explorer.run_hex
    assert "<mark>" in explorer.run_html.value


def test_dropdowns_drive_the_callbacks(explorer):
    explorer.base_picker.value = "parent"
    explorer.point_picker.value = 0  # the full, against an empty volume
    assert explorer.point == 0 and explorer.diff.a is None
    assert "/archive.bin" in explorer.files_html.value
    explorer.run_picker.value = len(explorer.diff.runs) - 1
    assert explorer.run["start"] == explorer.diff.runs["start"].iloc[-1]
    explorer.file_picker.value = "/docs/budget.csv"
    assert explorer.file["path"] == "/docs/budget.csv" and explorer.file["change"] == "created"


def test_hexdump_format():
    assert hexdump(b"AB\x00", 16) == "0000000010  41 42 00" + " " * 39 + "  |AB.|"

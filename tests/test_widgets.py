"""ChainExplorer driven headlessly through its callbacks, on a real FAT32 history."""

from __future__ import annotations

import matplotlib
import pytest
from support import require_module, require_tools

from blockforensics.datasets.investigation import build_investigation
from blockforensics.image.chain import Chain
from blockforensics.widgets import ChainExplorer, hexdump

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.vfat", "mcopy", "mmd", "mdel")
    sample = build_investigation(tmp_path_factory.mktemp("fat32"), "fat32")
    with Chain.open(sample.chain_dir) as chain:
        yield ChainExplorer(chain)


def test_select_point_shows_its_diff_and_first_run(explorer):
    explorer.select_point(3)
    assert explorer.point == 3 and explorer.diff.a == 2
    assert "/docs/report.txt" in explorer.files_html.value
    assert explorer.figure is not None and len(explorer.figure.axes) == 2
    assert len(explorer.run_picker.options) == len(explorer.diff.runs)
    assert explorer.run == explorer.diff.runs.iloc[0].to_dict()
    first = explorer.hexdump.splitlines()[0]
    assert first.startswith(f"{explorer.run['start_byte']:010x}")


def test_select_run_names_the_owning_file(explorer):
    explorer.select_point("-1")
    runs = explorer.diff.runs
    index = next(i for i, files in enumerate(runs["files"]) if "/docs/report.txt" in files)
    explorer.select_run(index)
    assert "/docs/report.txt" in explorer.owners
    assert "/docs/report.txt" in explorer.run_html.value
    assert explorer.run["start"] == runs["start"].iloc[index]


def test_dropdowns_drive_the_callbacks(explorer):
    explorer.point_picker.value = 0  # the full, against an empty volume
    assert explorer.point == 0 and explorer.diff.a is None
    assert "/archive.bin" in explorer.files_html.value
    explorer.run_picker.value = len(explorer.diff.runs) - 1
    assert explorer.run["start"] == explorer.diff.runs["start"].iloc[-1]


def test_hexdump_format():
    assert hexdump(b"AB\x00", 16) == "0000000010  41 42 00" + " " * 39 + "  |AB.|"

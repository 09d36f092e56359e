"""Forensic diffs on real FAT32 and ext4 histories made with mtools and debugfs, read with TSK."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from support import require_module, require_tools

from blockforensics import forensics
from blockforensics.blockmap import BlockMap
from blockforensics.datasets.investigation import build_investigation
from blockforensics.formats.raw import RawDisk
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.volume import Volume

TOOLS = {"fat32": ("mkfs.vfat", "mcopy", "mmd", "mdel", "fls"),
         "ext4": ("mkfs.ext4", "debugfs", "fls")}


@pytest.fixture(scope="module", params=["fat32", "ext4"])
def investigation(request, tmp_path_factory):
    require_module("pytsk3", "pytsk3")
    require_tools(*TOOLS[request.param])
    return build_investigation(tmp_path_factory.mktemp(request.param), request.param, seed=1)


@pytest.fixture(scope="module")
def chain(investigation):
    with Chain.open(investigation.chain_dir) as opened:
        yield opened


def _changes(result: forensics.DiffResult) -> list[tuple[str, str, str]]:
    return sorted(result.files[["path", "type", "change"]].itertuples(index=False, name=None))


def test_files_reported_are_exactly_the_files_changed(investigation, chain):
    truth = investigation.truth
    for point in range(len(chain)):
        result = forensics.diff(chain, chain.parent(point), point, files=True)
        expected = truth[truth["point"] == point]
        assert _changes(result) == sorted(
            expected[["path", "type", "change"]].itertuples(index=False, name=None)), point
        assert set(result.suspected()["path"]) == set(expected.loc[expected["encrypted"],
                                                                   "path"]), point


def test_encrypted_files_flagged_and_edits_not(chain):
    edits = forensics.diff(chain, "0", "1", files=True).files
    assert len(edits) == 2 and not edits["suspected_encryption"].any()
    same_size = edits[edits["path"] == "/docs/budget.csv"].iloc[0]
    assert same_size["size_before"] == same_size["size_after"]
    burst = forensics.diff(chain, "2", "-1", files=True).files
    assert burst["suspected_encryption"].all()
    assert (burst["entropy_after"] > 7.5).all() and (burst["entropy_before"] < 5).all()


def test_diff_across_non_adjacent_points_and_runs(investigation, chain):
    result = forensics.diff(chain, 0, 3, files=True)
    assert result.changed_map() == chain.changed(0, 3)
    assert list(result.runs.columns[:4]) == ["start", "length", "start_byte", "length_bytes"]
    changes = dict(zip(result.files["path"], result.files["change"]))
    assert changes["/docs/letter.txt"] == "deleted"
    assert changes["/docs/minutes.txt"] == "created"
    assert "/archive.bin" not in changes
    owned = result.owners[result.owners["path"] == "/docs/report.txt"]
    assert len(owned) and all(result.owner_of(int(s)) for s in owned["start"])
    plain = forensics.diff(chain, 0, 3)
    assert not plain.files_checked and plain.to_json()["files"] == []
    # minutes.txt was created, then encrypted: random bytes under a .txt name
    assert "suspected encryption: 4 file(s)" in str(result)


def _fls(image) -> list[tuple[str, str]]:
    """(path, type) of allocated, non-virtual entries as ``fls -r -p`` lists them."""
    out = subprocess.run(["fls", "-r", "-p", str(image)], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        kinds, _, path = line.partition("\t")
        kind = kinds.split()[0]
        if "*" in kinds or kind not in ("r/r", "d/d") or path.endswith("(Volume Label Entry)"):
            continue
        found.append(("/" + path, "dir" if kind == "d/d" else "file"))
    return sorted(found)


def test_adapter_lists_the_same_files_as_the_restored_image(chain, tmp_path):
    for point in range(len(chain)):
        out = restore(chain, point, tmp_path / f"point{point}.img")
        listed = forensics.list_files(chain.disk(point))
        assert sorted(zip(listed["path"], listed["type"]))[1:] == _fls(out)  # [0]: the root
        image = forensics.ChainImgInfo(chain.disk(point))
        assert image.get_size() == out.stat().st_size
        assert image.read(0, 4096) == out.read_bytes()[:4096]


def test_timeline_counts_follow_the_history(investigation, chain):
    frame = forensics.timeline(chain)
    truth = investigation.truth
    assert frame["point"].tolist() == list(range(4))
    assert frame["label"].tolist() == [f"day {d}" for d in range(1, 5)]
    for row in frame.itertuples():
        expected = truth[truth["point"] == row.point]["change"].value_counts()
        assert (row.files_created, row.files_modified, row.files_deleted) == tuple(
            int(expected.get(c, 0)) for c in ("created", "modified", "deleted"))
    assert frame["suspected_encryption"].tolist() == [0, 0, 0, 4]
    assert frame["changed_entropy"].iloc[3] == frame["changed_entropy"].max()
    assert set(forensics.changes(chain)["point"]) == {0, 1, 2, 3}


def test_cli_diff_files_json_matches_the_contract(investigation):
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "diff",
                           str(investigation.chain_dir), "0", "1", "--files", "--json"],
                          capture_output=True, text=True, check=True)
    doc = json.loads(done.stdout)
    assert doc["runs"] and all(isinstance(r["start"], int) and isinstance(r["length"], int)
                               for r in doc["runs"])
    assert {(f["path"], f["change"]) for f in doc["files"]} == {
        ("/docs/report.txt", "modified"), ("/docs/budget.csv", "modified")}
    for f in doc["files"]:
        assert f["type"] in ("file", "dir")
        assert isinstance(f["entropy_before"], float) and isinstance(f["entropy_after"], float)


def test_content_change_with_same_size_and_mtime_is_a_modification(tmp_path):
    """zap_block rewrites file bytes without touching the inode: only content tells."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "debugfs")
    image, text = tmp_path / "v.img", tmp_path / "t.txt"
    image.write_bytes(bytes(4 << 20))
    text.write_bytes(b"quarterly figures " * 400)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", str(image)],
                   check=True)
    subprocess.run(["debugfs", "-w", "-R", f"write {text} /t.txt", str(image)], check=True,
                   capture_output=True)
    chain = Chain.create(tmp_path / "chain")
    with RawDisk(image) as disk:
        backup(chain, disk)
    subprocess.run(["debugfs", "-w", "-R", "zap_block -f /t.txt -p 65 -o 0 -l 16 1",
                    str(image)], check=True, capture_output=True)
    with RawDisk(image) as disk:
        backup(chain, disk)
    result = forensics.diff(chain, 0, 1, files=True)
    assert _changes(result) == [("/t.txt", "file", "modified")]
    row = result.files.iloc[0]
    assert row["size_before"] == row["size_after"] and not row["suspected_encryption"]


def test_block_entropy_of_known_data():
    rng = np.random.default_rng(0)
    data = np.concatenate([np.zeros(4096, np.uint8), rng.integers(0, 256, 4096, np.uint8),
                           np.tile(np.array([7, 200], np.uint8), 2048)])
    volume = Volume.from_bytes(data, 4096)
    entropy = forensics.block_entropy(volume)
    assert entropy[0] == 0 and entropy[2] == pytest.approx(1.0)
    assert 7.9 < entropy[1] <= 8
    assert forensics.block_entropy(volume, np.array([2, 0])).tolist() == [entropy[2], 0.0]
    assert forensics.block_entropy(volume, BlockMap.from_positions(3, [1])).tolist() == [
        entropy[1]]
    assert forensics.block_entropy(volume, np.array([], np.int64)).size == 0


def test_files_inside_an_mbr_partition_are_named_by_partition(tmp_path):
    require_module("pytsk3", "pytsk3")
    require_tools("sfdisk", "mkfs.vfat", "mcopy")
    image, note = tmp_path / "disk.img", tmp_path / "note.txt"
    with image.open("wb") as fh:
        fh.truncate(40 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], input="2048,,c\n", text=True, check=True)
    subprocess.run(["mkfs.vfat", "-F", "32", "-s", "1", "--offset", "2048", str(image),
                    str((40 << 20) // 1024 - 1024)], check=True, capture_output=True)
    chain = Chain.create(tmp_path / "chain")
    with RawDisk(image) as disk:
        backup(chain, disk)
    note.write_bytes(b"meet at noon\n" * 100)
    subprocess.run(["mcopy", "-i", f"{image}@@{2048 * 512}", str(note), "::/note.txt"],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    with RawDisk(image) as disk:
        backup(chain, disk)
    result = forensics.diff(chain, 0, 1, files=True)
    assert _changes(result) == [("p1:/", "dir", "modified"), ("p1:/note.txt", "file", "created")]


def test_sample_command_builds_the_case_the_readme_investigates(tmp_path):
    require_tools("mkfs.vfat", "mcopy", "fls")
    require_module("pytsk3", "pytsk3")

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "known changes" in cli("sample", "investigation", tmp_path / "case")
    timeline = json.loads(cli("timeline", tmp_path / "case" / "chain", "--json"))
    assert [row["suspected_encryption"] for row in timeline] == [0, 0, 0, 4]
    assert "suspected encryption: 4 file(s)" in cli("diff", tmp_path / "case" / "chain", "2",
                                                     "3", "--files")


def test_an_inode_reused_within_a_second_by_a_copy_named_after_another_file_is_no_rename():
    """Ransomware writes ``b.txt.locked`` right after deleting ``a.txt``: the file system
    may hand it a.txt's inode and blocks in the same second (TSK's times are whole
    seconds), yet it took b.txt's place, not a.txt's.  A plain rename still pairs."""
    import numpy as np

    from blockforensics.forensics import _Comparison
    from blockforensics.tsk import Entry

    def entry(path: str, inode: int, size: int = 4096) -> Entry:
        return Entry(path, "file", inode, size, 100, 100, 100, 100, 0o644, 0, 0,
                     np.array([[8192, 8192 + size]], dtype=np.int64))

    gone = {"/a.txt": entry("/a.txt", 12), "/b.txt": entry("/b.txt", 13)}
    comparison = _Comparison(None, None, BlockMap(4))
    new = {"/b.txt.locked": entry("/b.txt.locked", 12, 4608)}  # other size: no content match
    assert comparison.renames(dict(gone), dict(new)) == []
    new = {"/c.txt": entry("/c.txt", 12, 4608)}  # named after nothing gone: a.txt renamed
    assert [(old.path, now.path) for old, now in comparison.renames(dict(gone), new)] == \
        [("/a.txt", "/c.txt")]


def test_diff_picture_names_each_changed_file_and_the_grey_metadata(chain):
    import matplotlib
    from matplotlib.colors import to_hex

    matplotlib.use("Agg")
    from blockforensics.plot_forensics import UNOWNED, plot_diff_files

    result = forensics.diff(chain, "2", "-1", files=True)
    ax = plot_diff_files(result)
    legend = ax.get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    suspected = set(result.suspected()["path"])
    assert labels[:-1] and {label.removesuffix(" (suspected encryption)")
                            for label in labels[:-1]} == suspected  # the burst: all encrypted
    assert labels[-1].startswith("no changed file") and to_hex(
        legend.legend_handles[-1].get_facecolor()) == UNOWNED


def test_ciphertext_written_as_base64_or_hex_counts_as_random_and_text_does_not():
    import base64

    from blockforensics.datasets.investigation import _text
    from blockforensics.evidence import UNIFORM_P, stats_of

    rng = np.random.default_rng(3)
    text = _text(rng, 8192)
    for data, name in ((base64.encodebytes(rng.bytes(6000)), "base64"),
                       (rng.bytes(4096).hex().encode(), "hex"),
                       (rng.bytes(4096).hex().upper().encode(), "HEX"),
                       (base64.urlsafe_b64encode(rng.bytes(6000)), "base64url")):
        stats = stats_of(data)
        assert stats.random_segments == stats.segments and stats.encodings == [name]
        assert stats.random_p >= UNIFORM_P and stats.entropy < 6.1
    for data in (text, text.replace(b" ", b""), base64.b64encode(text),  # encoded, not random
                 text.hex().encode(), "".join(map(str, rng.integers(0, 10, 8192))).encode()):
        assert stats_of(data).random_segments == 0

"""Triage of real chains (FAT32 and ext4 histories made with mtools and debugfs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from support import require_module, require_tools

from blockforensics import triage
from blockforensics.datasets.investigation import build_investigation
from blockforensics.hexview import aligned, first_difference
from blockforensics.image.chain import Chain


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4", "debugfs")
    return build_investigation(tmp_path_factory.mktemp("ext4"), "ext4", seed=2)


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_triage_chain_names_the_burst_and_the_last_clean_point(case):
    doc = triage.triage_chain(case.chain_dir)
    assert [p["verdict"] for p in doc["points"]] == ["clean", "clean", "clean", "encrypted"]
    assert doc["last_clean_point"] == 2
    burst = doc["points"][3]
    encrypted = set(case.truth.loc[case.truth["encrypted"], "path"])
    assert {f["path"] for f in burst["files"] if f["suspected_encryption"]} == encrypted
    assert all(f["evidence"] for f in burst["files"] if f["suspected_encryption"])
    assert any("suspected of encryption" in r for r in burst["reasons"])


def test_cli_triage_json_is_the_api_object(case):
    done = _cli("triage", case.chain_dir, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    expected = triage.triage_chain(case.chain_dir)
    doc.pop("seconds"), expected.pop("seconds")
    assert doc == expected
    for point in doc["points"]:
        assert point["verdict"] in triage.VERDICTS and point["reasons"]
        for f in point["files"]:
            assert f["change"] in ("created", "modified", "deleted", "renamed")
            assert isinstance(f["suspected_encryption"], bool)


def test_explain_shows_aligned_hex_of_the_first_changed_block(case):
    done = _cli("triage", case.chain_dir, "--explain", "/docs/budget.csv", "--point", "3")
    assert done.returncode == 0, done.stderr
    assert "SUSPECTED ENCRYPTION" in done.stdout
    assert "first changed byte at file offset 0" in done.stdout
    assert "^^" in done.stdout
    missing = _cli("triage", case.chain_dir, "--explain", "/no/such.txt")
    assert missing.returncode == 2 and "no change" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_rules_option_adds_user_rules(case, tmp_path):
    require_module("yara", "yara-python")
    (tmp_path / "mine.yar").write_text(
        'rule budget_words { strings: $a = "invoice" condition: $a }')
    with Chain.open(case.chain_dir) as chain:
        result = triage.triage(chain, tmp_path)
    hits = result.points[0].metrics["rule_hits"]
    assert hits >= 1 and result.points[0].verdict == "suspicious"
    bad = _cli("triage", case.chain_dir, "--rules", tmp_path / "none")
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_aligned_hex_marks_changed_bytes():
    before, after = b"A" * 40, b"A" * 20 + b"B" + b"A" * 19
    assert first_difference(before, after) == 20
    text = aligned(before, after)
    lines = text.splitlines()
    assert lines[1].startswith("0000000010") and "42" in lines[1]
    assert lines[2].strip() == "^^"
    assert aligned(b"x", b"x") == "(no difference)"


# ------------------------------------------------------------ the ransomware sample
@pytest.fixture(scope="module", params=["ext4", "fat32"])
def ransomware(request, tmp_path_factory):
    from blockforensics.datasets.ransomware import build_ransomware

    require_module("pytsk3", "pytsk3")
    require_module("yara", "yara-python")
    require_tools(*{"ext4": ("mkfs.ext4", "debugfs"),
                    "fat32": ("mkfs.vfat", "mcopy", "mren", "mrd")}[request.param])
    sample = build_ransomware(tmp_path_factory.mktemp(request.param), request.param)
    return sample, triage.triage_chain(sample.chain_dir)


def test_ransomware_points_verdicts_and_last_clean_point(ransomware):
    sample, doc = ransomware
    assert [p["verdict"] for p in doc["points"]] == [e["verdict"] for e in sample.expected]
    assert doc["last_clean_point"] == sample.last_clean_point == 4


def test_ransomware_flags_exactly_the_attacked_files_and_no_benign_file(ransomware):
    sample, doc = ransomware
    for point, expected in zip(doc["points"], sample.expected):
        flagged = {f["path"] for f in point["files"] if f["flagged"]}
        assert flagged == expected["flagged"], point["point"]
        suspected = {f["path"] for f in point["files"] if f["suspected_encryption"]}
        assert suspected == sample.encrypted_files.get(point["point"], set()), point["point"]


def test_each_attack_is_explained_by_its_own_evidence(ransomware):
    sample, doc = ransomware
    files = {f["path"]: f for p in doc["points"] for f in p["files"]}
    locked = files["/docs/report.txt.locked"]
    assert locked["change"] == "created"
    assert any("took the place of deleted /docs/report.txt" in e for e in locked["evidence"])
    note = files["/README_RESTORE_FILES.txt"]
    assert "ransom_note_generic" in note["rules"] and not note["suspected_encryption"]
    first_kib = files["/docs/budget.csv"]
    assert any(re.match(r"1 of [45] 1024-byte segments random .*first at byte 0", e)
               for e in first_kib["evidence"])  # ext4: the changed block; FAT: all 4500 B
    photo = files["/photos/img001.jpg"]
    assert any("jpeg signature gone" in e for e in photo["evidence"])
    crypt = files["/docs/plan.docx.crypt"]
    if sample.fs == "ext4":  # the same inode under a new name; mtools rewrites the entry
        assert crypt["change"] == "renamed" and crypt["old_path"] == "/docs/plan.docx"
    assert any("extension .docx -> .crypt" in e for e in crypt["evidence"])
    upgrade = doc["points"][4]["metrics"]
    assert upgrade["created"] == upgrade["deleted"] == 10
    photos = doc["points"][2]
    assert photos["metrics"]["high_entropy_blocks"] > 100
    assert photos["metrics"]["unexplained_high_entropy"] == 0


def test_triage_picture_shows_every_points_verdict_in_its_legend_colour(case):
    import matplotlib
    from matplotlib.colors import to_hex

    matplotlib.use("Agg")
    from blockforensics.plot_forensics import VERDICT_COLORS, plot_triage

    result = triage.triage(Chain.open(case.chain_dir))
    ax = plot_triage(result)
    legend = ax.get_legend()
    colours = {text.get_text(): to_hex(handle.get_facecolor())
               for text, handle in zip(legend.get_texts(), legend.legend_handles)
               if text.get_text() in VERDICT_COLORS}
    assert colours == VERDICT_COLORS
    squares = ax.collections[0]  # one square per point, on the axis, even at a zero share
    assert [to_hex(c) for c in squares.get_facecolors()] == [VERDICT_COLORS[p.verdict]
                                                            for p in result.points]
    assert [round(x) for x, _ in squares.get_offsets()] == [p.point for p in result.points]

"""Triage of real chains (FAT32 and ext4 histories made with mtools and debugfs)."""

from __future__ import annotations

import json
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

"""verify finds damage anywhere; the command line keeps its contract (exit codes, --json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockforensics.cli import main
from blockforensics.image.format import HEADER_SIZE, INDEX_DTYPE, Footer
from blockforensics.image.imagefile import ImageFile
from blockforensics.image.verify import verify

BS = 4096


@pytest.fixture
def chain_dir(tmp_path):
    """A chain made with the CLI: full, then an incremental after editing 3 blocks."""
    rng = np.random.default_rng(7)
    source = tmp_path / "disk.raw"
    data = bytearray(rng.integers(0, 256, 40 * BS + 123, dtype=np.uint8).tobytes())
    source.write_bytes(data)
    assert main(["backup", str(source), str(tmp_path / "chain")]) == 0
    for block in (2, 17, 40):
        data[block * BS] ^= 0xFF
    source.write_bytes(data)
    assert main(["backup", str(source), str(tmp_path / "chain")]) == 0
    return tmp_path / "chain"


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(raw)


@given(where=st.floats(0, 1, exclude_max=True))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_verify_finds_one_flipped_byte_anywhere(chain_dir, where):
    for name in ("0000-full.bfi", "0001-incr.bfi"):
        path = chain_dir / name
        original = path.read_bytes()
        image = ImageFile(path)
        index = image.index.all()
        image.close()
        offset = int(where * len(original))
        _flip(path, offset)
        try:
            report = verify(chain_dir)
            assert not report.ok, f"flip at byte {offset} of {name} went unnoticed"
            assert any(p.image == name for p in report.problems)
            assert all(p.image == name or "parent" in p.message for p in report.problems)
            in_data = [r for r in index
                       if r["offset"] <= offset < r["offset"] + r["length"]]
            if in_data:
                assert [p.position for p in report.problems] == [int(in_data[0]["position"])]
        finally:
            path.write_bytes(original)
    assert verify(chain_dir).ok


def test_verify_regions_named(chain_dir):
    path = chain_dir / "0000-full.bfi"
    size = path.stat().st_size
    for offset, words in ((10, "header"), (size - Footer.SIZE - INDEX_DTYPE.itemsize, "index"),
                          (size - 3, "footer")):
        original = path.read_bytes()
        _flip(path, offset)
        report = verify(chain_dir)
        assert any(words in p.message for p in report.problems), report.problems
        path.write_bytes(original)
    _flip(path, HEADER_SIZE + 5 * BS + 1)
    assert [str(p) for p in verify(chain_dir).problems] == [
        "0000-full.bfi block 5: stored bytes do not match their digest"]


def test_backup_edit_backup_list_restore(chain_dir, tmp_path, capsys):
    capsys.readouterr()
    assert main(["list", str(chain_dir), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [p["kind"] for p in listing] == ["full", "incremental"]
    assert listing[1]["blocks"] == 3 and listing[1]["parent"] == 0
    assert listing[0]["parent"] is None and listing[0]["encrypted"] is False
    assert {"point", "file", "blocks", "stored_bytes", "disk_bytes", "created"} <= set(listing[0])
    source = (tmp_path / "disk.raw").read_bytes()
    assert main(["restore", str(chain_dir), str(tmp_path / "r1.raw")]) == 0
    assert (tmp_path / "r1.raw").read_bytes() == source
    assert main(["restore", str(chain_dir), str(tmp_path / "r0.raw"), "--point", "0"]) == 0
    r0 = (tmp_path / "r0.raw").read_bytes()
    assert len(r0) == len(source) and r0 != source
    assert main(["verify", str(chain_dir)]) == 0


def _run(*args):
    """The installed command in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def _assert_clean_error(code, err, words):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err, err


def test_truncated_image_is_exit_2(chain_dir, tmp_path):
    path = chain_dir / "0001-incr.bfi"
    path.write_bytes(path.read_bytes()[:-100])
    code, _, err = _run("restore", chain_dir, tmp_path / "out.raw")
    _assert_clean_error(code, err, "incomplete image")
    assert not (tmp_path / "out.raw").exists()
    code, out, _ = _run("verify", chain_dir)
    assert code == 1 and "0001-incr.bfi" in out


def test_verify_json_names_each_damaged_block(chain_dir):
    code, out, err = _run("verify", chain_dir, "--json")
    assert code == 0 and json.loads(out) == {
        "ok": True, "went_back": [], "filesystems": None,
        "chain": verify(chain_dir).to_json()}, out + err
    assert json.loads(out)["chain"]["images"] == 2 and json.loads(out)["chain"]["blocks"] > 40
    with ImageFile(chain_dir / "0001-incr.bfi") as image:
        record = image.index.all()[1]
    _flip(chain_dir / "0001-incr.bfi", int(record["offset"]) + 5)
    code, out, _ = _run("verify", chain_dir, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["chain"]["problems"] == [
        {"image": "0001-incr.bfi", "position": int(record["position"]),
         "message": "stored bytes do not match their digest"}]


def test_missing_parent_is_listed_as_damage_and_refused_on_read(chain_dir, tmp_path):
    (chain_dir / "0000-full.bfi").unlink()
    code, out, err = _run("list", chain_dir, "--json")
    assert code == 0, err
    assert [(p["damaged"], "missing" in p["error"]) for p in json.loads(out)] == [(True, True)] * 2
    _assert_clean_error(*_run("restore", chain_dir, tmp_path / "o.raw")[::2], "missing")


def test_directory_that_is_no_chain_is_exit_2(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "file").write_text("x")
    _assert_clean_error(*_run("list", tmp_path / "stuff")[::2], "not a blockforensics chain")
    source = tmp_path / "d.raw"
    source.write_bytes(os.urandom(8192))
    _assert_clean_error(*_run("backup", source, tmp_path / "stuff")[::2], "not empty")


def test_block_size_not_a_power_of_two_is_exit_2(tmp_path):
    source = tmp_path / "d.raw"
    source.write_bytes(os.urandom(8192))
    _assert_clean_error(*_run("backup", source, tmp_path / "c", "--block-size", "3000")[::2],
                        "power of two")
    _assert_clean_error(*_run("frobnicate")[::2], "invalid choice")
    _assert_clean_error(*_run("backup", source, tmp_path / "c", "--reader", "qcow9")[::2],
                        "unknown format 'qcow9'")
    _assert_clean_error(*_run("backup", tmp_path / "nope.raw", tmp_path / "c")[::2],
                        "no such file or directory")

"""File timelines (body file, L2T CSV, Timesketch JSONL, DFXML) read back by their readers,
and extract, on real FAT32 and ext4 histories."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest
from support import require_module, require_tools

from blockforensics import timeline_formats
from blockforensics.datasets.investigation import build_investigation
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.tsk import extract

TOOLS = {"fat32": ("mkfs.vfat", "mcopy", "mmd", "mdel"), "ext4": ("mkfs.ext4", "debugfs")}


@pytest.fixture(scope="module", params=["ext4", "fat32"])
def case(request, tmp_path_factory):
    require_module("pytsk3", "pytsk3")
    require_tools(*TOOLS[request.param])
    sample = build_investigation(tmp_path_factory.mktemp(request.param), request.param, seed=3)
    with Chain.open(sample.chain_dir) as chain:
        yield sample, chain, timeline_formats.file_versions(chain)


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_versions_follow_the_known_history(case):
    sample, _, versions = case
    truth = sample.truth
    later = versions[versions["point"] > 0]
    assert sorted(zip(later["point"], later["path"], later["change"])) == sorted(
        zip(*(truth.loc[truth["point"] > 0, c] for c in ("point", "path", "change"))))
    files = versions[versions["type"] == "file"]
    assert (files["sha256"].str.len() == 64).all() and (files["md5"].str.len() == 32).all()
    assert (files["mtime"] > 0).all()  # a FAT root directory has no times


def test_hashes_are_those_of_the_extracted_bytes(case, tmp_path):
    _, chain, versions = case
    for v in versions[(versions["type"] == "file")
                      & (versions["change"] != "deleted")].itertuples():
        out, size, deleted = extract(chain, v.point, v.path, tmp_path / "f", force=True)
        data = out.read_bytes()
        assert (size, deleted) == (v.size, False) and len(data) == v.size
        assert hashlib.sha256(data).hexdigest() == v.sha256
        assert hashlib.md5(data).hexdigest() == v.md5


def test_mactime_reads_the_body_file(case, tmp_path):
    require_tools("mactime")
    _, chain, versions = case
    body = tmp_path / "body"
    timeline_formats.write(chain, "bodyfile", body)
    done = subprocess.run(["mactime", "-b", str(body), "-d", "-y"], capture_output=True,
                          text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    timed = versions[versions[["atime", "mtime", "ctime", "crtime"]].any(axis=1)]
    assert {r["File Name"] for r in rows} == {  # mactime leaves out entries with no time
        f"{v.path} (point {v.point}, {v.change})" for v in timed.itertuples()}
    report = next(v for v in versions.itertuples() if v.path == "/docs/report.txt")
    line = next(x for x in body.read_text().splitlines() if x.split("|")[1].startswith(
        "/docs/report.txt (point 0"))
    assert line.split("|")[0] == report.md5 and line.split("|")[2] == str(report.inode)


def test_jsonl_carries_the_timesketch_fields(case):
    _, chain, versions = case
    lines = timeline_formats.render(chain, "jsonl").splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) >= len(versions)
    for event in events:
        assert event["message"] and event["timestamp_desc"]
        assert datetime.fromisoformat(event["datetime"]).timestamp() * 1e6 == event["timestamp"]
    timed = versions[versions[["atime", "mtime", "ctime", "crtime"]].any(axis=1)]
    assert {e["path"] for e in events} == set(timed["path"])  # one event per recorded time


def test_dfxml_parses_with_one_fileobject_per_version(case):
    _, chain, versions = case
    ns = {"d": timeline_formats.DFXML_NS, "bf": timeline_formats.BF_NS}
    root = ET.fromstring(timeline_formats.render(chain, "dfxml"))
    objects = root.findall("d:fileobject", ns)
    assert len(objects) == len(versions)
    for obj, v in zip(objects, versions.itertuples()):
        assert obj.findtext("d:filename", namespaces=ns) == v.path
        assert obj.findtext("bf:point", namespaces=ns) == str(v.point)
        if v.type == "file":
            assert obj.findtext("d:hashdigest[@type='sha256']", namespaces=ns) == v.sha256
            runs = obj.findall("d:byte_runs/d:byte_run", ns)
            assert sum(int(r.get("len")) for r in runs) == (v.size if v.runs else 0)


def test_l2tcsv_has_the_seventeen_columns(case):
    _, chain, _ = case
    rows = list(csv.reader(io.StringIO(timeline_formats.render(chain, "l2tcsv"))))
    assert rows[0] == timeline_formats.L2T_HEADER and len(rows) > 1
    assert all(len(r) == 17 for r in rows)
    assert {r[3] for r in rows[1:]} <= {"".join(c if c in m else "." for c in "MACB")
                                        for m in ("M", "A", "C", "B", "MA", "MC", "MB", "AC",
                                                  "AB", "CB", "MAC", "MAB", "MCB", "ACB",
                                                  "MACB")}


def test_cli_timeline_formats_and_extract(case, tmp_path):
    sample, _, _ = case
    out = tmp_path / "t.jsonl"
    done = _cli("timeline", sample.chain_dir, "--format", "jsonl", "-o", out)
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines()[0].startswith("{")
    table = _cli("timeline", sample.chain_dir)
    assert table.returncode == 0 and "files_created" in table.stdout
    missing = _cli("extract", sample.chain_dir, "1", "/docs/nothing.txt", tmp_path / "x")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert not (tmp_path / "x").exists()
    again = _cli("timeline", sample.chain_dir, "--format", "jsonl", "-o", out)
    assert again.returncode == 2 and "--force" in again.stderr
    inside = _cli("extract", sample.chain_dir, "1", "/docs/report.txt",
                  sample.chain_dir / "x")
    assert inside.returncode == 2 and "inside the chain" in inside.stderr


def test_extract_matches_icat_on_the_restored_image(case, tmp_path):
    require_tools("icat")
    _, chain, versions = case
    image = restore(chain, 1, tmp_path / "p1.img")
    v = versions[(versions["path"] == "/docs/budget.csv")
                 & (versions["point"] == 1)].iloc[0]
    icat = subprocess.run(["icat", str(image), str(v["inode"])], capture_output=True,
                          check=True).stdout
    out, _, _ = extract(chain, 1, "/docs/budget.csv", tmp_path / "b")
    assert out.read_bytes() == icat


def test_deleted_file_is_recovered_where_tsk_reaches_it(case, tmp_path):
    """letter.txt is deleted on day 3: FAT keeps its first cluster, debugfs rm keeps the
    freed inode's extents; nothing overwrote the blocks, so the bytes come back."""
    _, chain, _ = case
    before, _, _ = extract(chain, 1, "/docs/letter.txt", tmp_path / "before")
    after, size, deleted = extract(chain, 2, "/docs/letter.txt", tmp_path / "after")
    assert deleted and size == 3000 and after.read_bytes() == before.read_bytes()

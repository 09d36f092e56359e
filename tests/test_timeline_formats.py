"""File timelines (body file, L2T CSV, Timesketch JSONL, DFXML) read back by their readers,
and extract, on real FAT32 and ext4 histories."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest
from support import backup_image, require_module, require_tools

from blockforensics import forensics, timeline_formats
from blockforensics.datasets.investigation import build_investigation
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.tsk import extract, name_text, shown_name

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
    # each row's MACB letters are those of the times it names ("Deletion Time" has none:
    # a row of it alone is "....", as plaso writes an event outside MACB)
    letter = {desc: macb for macb, _, desc in timeline_formats.TIMES}
    for r in rows[1:]:
        named = {letter.get(desc, "") for desc in r[6].split("; ")}
        assert r[3] == "".join(c if c in named else "." for c in "MACB"), r


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


#: names no output may break or lose: the separators of body files (|) and CSV (, ")
#: with the escape characters (\ and %), white space that ends a line or a field, an
#: escape sequence, bytes that are no UTF-8 (ext names are any bytes), other scripts
ODD_NAMES = [b"a|b", b"new\nline", b"cr\rx", b"tab\tx", b"c,d", b'q"uo\'te', b"back\\slash",
             b"pct%7C", b"\xff\xfeinv", b"esc\x1b[31mred", "übersicht ядро 文件.txt".encode()]


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """A chain of two ext4 points (``mkfs.ext4 -d``) of files with :data:`ODD_NAMES` in a
    directory named ``d|ir``, each appended to at the second: the paths as listed."""
    require_module("pytsk3", "pytsk3")
    require_tools("mkfs.ext4")
    from sample_disks import make_ext4

    work = tmp_path_factory.mktemp("odd")
    folder = work / "tree" / "d|ir"
    folder.mkdir(parents=True)
    chain = Chain.create(work / "chain")
    for point in range(2):
        for i, name in enumerate(ODD_NAMES):
            with open(os.fsencode(folder) + b"/" + name, "ab") as fh:
                fh.write(b"%d " % i * (i + 1))
        backup_image(chain, make_ext4(work / f"{point}.img", 8 << 20, work / "tree"))
    chain.close()
    paths = {"/d|ir/" + name_text(name) for name in ODD_NAMES}
    with Chain.open(work / "chain") as chain:
        yield chain, paths


def _unescape_body(field: str) -> str:
    """A body file's name field as plaso's bodyfile parser decodes it (``\\xNN``, ``\\|``,
    ``\\\\``), in one pass."""
    return re.sub(r"\\x([0-9a-f]{2})|\\([\\|])",
                  lambda m: chr(int(m.group(1), 16)) if m.group(1) else m.group(2), field)


def _odd_versions(names: set[str], point: int) -> set[str]:
    return {f"{n} (point {point}, {'created' if point == 0 else 'modified'})" for n in names}


def test_odd_names_round_trip_through_every_format(odd):
    chain, paths = odd
    lines = timeline_formats.render(chain, "bodyfile").splitlines()
    assert len(lines) == len(timeline_formats.file_versions(chain))  # a line each
    # the name between the first field and the last nine (as plaso reads it), with no
    # "|" nor "\\" unescaped: one field
    names = [line.split("|", 1)[1].rsplit("|", 9)[0] for line in lines]
    assert all(re.fullmatch(r"(?:\\[\\|]|\\x[0-9a-f]{2}|[^|\\\x00-\x1f])*", n) for n in names)
    named = {_unescape_body(n) for n in names}
    assert _odd_versions(paths, 0) | _odd_versions(paths, 1) <= named

    rows = list(csv.reader(io.StringIO(timeline_formats.render(chain, "l2tcsv"), newline="")))
    assert all(len(r) == 17 for r in rows) and paths <= {r[12] for r in rows[1:]}
    assert _odd_versions(paths, 1) <= {r[9] for r in rows[1:]}

    events = [json.loads(line) for line in timeline_formats.render(chain, "jsonl").splitlines()]
    assert paths <= {e["path"] for e in events if e["point"] == 1}

    ns = {"d": timeline_formats.DFXML_NS, "bf": timeline_formats.BF_NS}
    root = ET.fromstring(timeline_formats.render(chain, "dfxml"))
    # what XML 1.0 cannot hold (CR, control characters) is written as \xNN
    control = re.compile(r"\\x(0[0-8bcdef]|1[0-9a-f])")
    written = {control.sub(lambda m: chr(int(m.group(1), 16)),
                           o.findtext("d:filename", namespaces=ns))
               for o in root.findall("d:fileobject", ns)}
    assert paths <= written


def test_odd_names_keep_a_table_row_each(odd):
    chain, paths = odd
    result = forensics.diff(chain, 0, 1, files=True)
    assert paths <= set(result.files["path"])
    table = str(result).split("\n\n", 1)[1].splitlines()
    assert len(table) == 1 + len(result.files)  # the header, then one line per file
    for path in paths:  # each named on its own line, control characters as \xNN
        assert sum(shown_name(path) in line for line in table) == 1
    assert not any(c in "".join(table) for c in "\x1b\r\t")
    data = json.loads(_cli("diff", chain.directory, "0", "1", "--files", "--json").stdout)
    assert paths <= {f["path"] for f in data["files"]}


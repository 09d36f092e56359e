"""Triage of real chains (FAT32 and ext4 histories made with mtools and debugfs)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from support import backup_image, require_module, require_tools

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
def _require_history_tools(fs: str) -> None:
    """What building a ransomware history on ``fs`` and triaging it needs (root, to
    mount NTFS, XFS and Btrfs)."""
    require_module("pytsk3", "pytsk3")
    require_module("yara", "yara-python")
    require_tools(*{"ext4": ("mkfs.ext4", "debugfs"),
                    "fat32": ("mkfs.vfat", "mcopy", "mren", "mrd"),
                    "ntfs": ("mkntfs", "ntfs-3g", "umount"),
                    "xfs": ("mkfs.xfs", "mount", "umount"),
                    "btrfs": ("mkfs.btrfs", "mount", "umount")}[fs])
    if fs in ("ntfs", "xfs", "btrfs") and os.geteuid() != 0:
        pytest.skip("mounting needs root")


@pytest.fixture(scope="module", params=["ext4", "fat32"])
def ransomware(request, tmp_path_factory):
    from blockforensics.datasets.ransomware import build_ransomware

    _require_history_tools(request.param)
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


# --------------------------------------------- red-team histories (real tools, known truth)
NOTES = {  # ransom notes in the wordings and languages of real ones, under unusual names
    "/docs/LEEME.hta": "<html><hta:application/><body><h1>¡Todos sus archivos han sido "
                       "cifrados!</h1>Para recuperarlos debe pagar 0.3 bitcoin. "
                       "Escríbanos: descifrar@tutanota.com</body></html>",
    "/photos/LIESMICH.txt": "Alle Ihre Dateien wurden verschlüsselt! Um sie wiederherzustellen, "
                            "zahlen Sie 0.3 Bitcoin. Kontakt: hilfe@onionmail.org",
    "/data/ПРОЧТИ.txt": "Все ваши файлы зашифрованы! Для расшифровки заплатите 0.3 биткоина. "
                       "Пишите: decrypt@tutanota.com",
    "/Restore-My-Files.html": "<p>~~~ the world's fastest ransomware ~~~</p><p>Your data are "
                              "stolen and encrypted. The data will be published on the TOR "
                              "website if you do not pay the ransom.</p>",
}
MEMOS = [f"/docs/memo{i:02d}.txt" for i in range(12)]


def _red_team_days(rng):
    """Seven days: two ordinary, two loud but benign, then encoded ciphertext, notes with
    copy-encrypt-delete under random names, and a wiper.  Returns (days, truth): truth
    per point is (verdict, flagged paths, suspected paths)."""
    import base64
    import gzip
    import zipfile

    from blockforensics.datasets.investigation import _text
    from blockforensics.datasets.ransomware import _docx, _elf, _jpeg, _sqlite

    report, budget, letter = _text(rng, 9000), _text(rng, 4500), _text(rng, 3000)
    docx, photo, ledger = _docx(rng, 8), _jpeg(rng, 60_000), _sqlite(rng, 24_000)
    records, app_log, inbox = _text(rng, 300_000), _text(rng, 40_000), _text(rng, 30_000)
    mail = b"\nFrom: c@example.org\nContent-Transfer-Encoding: base64\n\n" \
        + base64.encodebytes(_jpeg(rng, 40_000))
    memos = [_text(rng, 600 + 200 * i) for i in range(len(MEMOS))]
    key = np.frombuffer(rng.bytes(4) * (len(ledger) // 4), np.uint8)
    user_zip = io.BytesIO()  # the user's own encrypted archive: a zip by signature
    with zipfile.ZipFile(user_zip, "w") as zf:
        zf.writestr("budget.csv", rng.bytes(4500))  # stands for ZipCrypto output
    pack = b"PACK\x00\x00\x00\x02"
    random_names = {"/docs/" + rng.bytes(6).hex(): ("/docs/letter.txt", len(letter) + 16),
                    "/docs/" + rng.bytes(6).hex(): ("/docs/plan.docx", len(docx) + 16),
                    "/photos/" + rng.bytes(6).hex(): ("/photos/img001.jpg", len(photo) + 16),
                    "/data/" + rng.bytes(6).hex(): ("/data/records.csv", len(records) + 16)}
    days = [
        [*[("mkdir", d, None) for d in ("/docs", "/photos", "/data", "/logs", "/src",
                                        "/src/.git", "/vm", "/opt")],
         ("write", "/docs/report.txt", report), ("write", "/docs/budget.csv", budget),
         ("write", "/docs/letter.txt", letter), ("write", "/docs/plan.docx", docx),
         ("write", "/photos/img001.jpg", photo), ("write", "/data/ledger.db", ledger),
         ("write", "/data/records.csv", records), ("write", "/logs/app.log", app_log),
         ("write", "/data/Inbox", inbox),
         *[("write", path, data) for path, data in zip(MEMOS, memos)]],
        [("write", "/docs/report.txt", report + _text(rng, 1500)),
         ("write", "/docs/todo.txt", _text(rng, 800))],
        # loud, benign: a git pack, a VM image, a tool with random data files (firmware)
        [("write", "/src/.git/pack-1.pack", pack + rng.bytes(200_000)),
         ("write", "/src/.git/pack-1.idx", b"\xfftOc\x00\x00\x00\x02" + rng.bytes(9000)),
         ("write", "/vm/disk.qcow2", b"QFI\xfb\x00\x00\x00\x03" + rng.bytes(300_000)),
         ("mkdir", "/opt/tool", None), ("write", "/opt/tool/tool", _elf(rng, 48_000)),
         *[("write", f"/opt/tool/fw{i}.bin", rng.bytes(30_000)) for i in range(3)]],
        # loud, benign: git gc, the VM image and the tool's data rewritten, logs gzipped
        # with the originals deleted, the user's password-protected zip, a mailbox grown
        [("write", "/src/.git/pack-2.pack", pack + rng.bytes(260_000)),
         ("delete", "/src/.git/pack-1.pack", None),
         ("write", "/vm/disk.qcow2", b"QFI\xfb\x00\x00\x00\x03" + rng.bytes(300_000)),
         *[("write", f"/opt/tool/fw{i}.bin", rng.bytes(30_000)) for i in range(3)],
         ("write", "/logs/app.log.gz", gzip.compress(app_log, mtime=0)),
         ("delete", "/logs/app.log", None),
         ("write", "/docs/private.zip", user_zip.getvalue()),
         ("write", "/data/Inbox", inbox + mail)],  # a mail with a photo attached
        # attack 1: ciphertext written as base64 and hex; a database XORed with a short key
        [("write", "/docs/report.txt", base64.encodebytes(rng.bytes(7000))),
         ("write", "/docs/budget.csv", rng.bytes(4500).hex().encode()),
         ("overwrite", "/data/ledger.db",
          (np.frombuffer(ledger, np.uint8) ^ key).tobytes())],
        # attack 2: notes everywhere; copy-encrypt-delete under random names
        [*[("write", path, text.encode()) for path, text in NOTES.items()],
         *[op for new, (old, size) in random_names.items()
           for op in (("write", new, rng.bytes(size)), ("delete", old, None))]],
        # attack 3: a wiper truncates every memo
        [("write", path, b"") for path in MEMOS],
    ]
    truth = [("clean", set(), set())] * 4 + [
        ("encrypted", {"/docs/report.txt", "/docs/budget.csv", "/data/ledger.db"},
         {"/docs/report.txt", "/docs/budget.csv"}),
        ("encrypted", set(NOTES) | set(random_names), set(random_names)),
        ("suspicious", set(MEMOS), set())]
    return days, truth


def _triaged(fs: str, days: list, tmp_path_factory) -> dict:
    """The triage of a history of ``days`` played on a 48 MiB ``fs`` volume."""
    from blockforensics.datasets.ransomware import play

    _require_history_tools(fs)
    chain_dir, _ = play(tmp_path_factory.mktemp(fs), fs, days, 48 << 20)
    return triage.triage_chain(chain_dir)


@pytest.fixture(scope="module", params=["ext4", "fat32"])
def red_team(request, tmp_path_factory):
    days, truth = _red_team_days(np.random.default_rng(7))
    return _triaged(request.param, days, tmp_path_factory), truth


def _flagged(point: dict) -> set[str]:
    return {f["path"] for f in point["files"] if f["flagged"]}


@pytest.mark.slow
def test_red_team_verdicts_and_last_clean_point(red_team):
    doc, truth = red_team
    assert [p["verdict"] for p in doc["points"]] == [t[0] for t in truth]
    assert doc["last_clean_point"] == 3


@pytest.mark.slow
def test_git_packs_vm_images_random_data_rewritten_and_mail_appended_stay_clean(red_team):
    doc, _ = red_team
    for point in doc["points"][2:4]:
        assert point["verdict"] == "clean", point["reasons"]
        assert point["metrics"]["high_entropy_blocks"] > 100
        # FAT32: a 4 KiB block can keep a freed 512-byte cluster's old (random) bytes
        assert point["metrics"]["unexplained_high_entropy"] < 0.01
        assert not _flagged(point)
    files = {f["path"]: f for f in doc["points"][3]["files"]}
    assert "as random before: no new randomness" in files["/opt/tool/fw0.bin"]["evidence"]
    assert any(e.startswith("its old 30000 bytes kept whole at its start")
               for e in files["/data/Inbox"]["evidence"])


@pytest.mark.slow
def test_ciphertext_in_base64_or_hex_is_encryption(red_team):
    doc, truth = red_team
    point = doc["points"][4]
    assert {f["path"] for f in point["files"] if f["suspected_encryption"]} == truth[4][2]
    assert _flagged(point) == truth[4][1]
    files = {f["path"]: f for f in point["files"]}
    assert any("base64 text uniform over its alphabet" in e
               for e in files["/docs/report.txt"]["evidence"])
    assert any("hex text uniform" in e for e in files["/docs/budget.csv"]["evidence"])
    assert any(e.startswith("sqlite signature gone, content is")
               for e in files["/data/ledger.db"]["evidence"])


@pytest.mark.slow
def test_notes_in_other_languages_and_random_names_are_flagged(red_team):
    doc, truth = red_team
    point = doc["points"][5]
    assert _flagged(point) == truth[5][1]
    assert {f["path"] for f in point["files"] if f["suspected_encryption"]} == truth[5][2]
    replaced = {f["path"]: f for f in point["files"]}
    assert all(any(e.startswith("took the place of deleted") for e in replaced[p]["evidence"])
               for p in truth[5][2])


@pytest.mark.slow
def test_a_wiper_emptying_files_is_suspicious(red_team):
    doc, truth = red_team
    point = doc["points"][6]
    assert point["metrics"]["destroyed"] == len(MEMOS)
    assert _flagged(point) == truth[6][1]
    assert any(r.startswith("destroyed 12 above the baseline") for r in point["reasons"])
    memo = {f["path"]: f for f in point["files"]}[MEMOS[3]]
    assert memo["emptied"] and "emptied: 1200 -> 0 bytes" in memo["evidence"]


DOCS = [f"/home/u/doc{i:02d}.txt" for i in range(40)]
LOGS = [f"/var/log/svc{i:02d}.log" for i in range(14)]
DEBS = [f"/var/cache/apt/archives/pkg{i:02d}.deb" for i in range(40)]


def encrypted_zip(files: dict[str, bytes], password: str) -> bytes:
    """A zip of ``files`` (path -> bytes) whose members zip(1) encrypted with ``password``."""
    require_tools("zip")
    with tempfile.TemporaryDirectory() as tmp:
        for path, data in files.items():
            (Path(tmp) / Path(path).name).write_bytes(data)
        subprocess.run(["zip", "-q", "-P", password, "out.zip",
                        *(Path(p).name for p in files)], cwd=tmp, check=True)
        return (Path(tmp) / "out.zip").read_bytes()


def _destruction_days(rng):
    """Nine days: three ordinary; then a log rotation by copytruncate, the package cache
    emptied, a user's tidy-up (benign, loud); then documents archived into a zip and
    deleted, documents zeroed in place, and most files deleted (destructive).  Returns
    (days, verdicts)."""
    import gzip

    from blockforensics.datasets.investigation import _text

    logs = {path: _text(rng, 20_000) for path in LOGS}
    deb = b"!<arch>\ndebian-binary   "  # an ar archive, as a .deb is; its members packed
    debs = [deb + rng.bytes(20_000) for _ in DEBS]
    docs = {path: _text(rng, 3000) for path in DOCS}
    # the attacker's archive of 14 documents, password-protected by zip(1)
    archive = encrypted_zip({p: docs[p] for p in DOCS[14:28]}, "attacker")
    days = [
        [*[("mkdir", d, None) for d in ("/var", "/var/log", "/var/cache", "/var/cache/apt",
                                        "/var/cache/apt/archives", "/home", "/home/u")],
         *[("write", path, data) for path, data in logs.items()],
         *[("write", path, data) for path, data in zip(DEBS, debs)],
         *[("write", path, data) for path, data in docs.items()]],
        [("write", DOCS[0], _text(rng, 3100))],
        [("write", DOCS[1], _text(rng, 3200))],
        # benign: every log copied to a compressed rotated file, then truncated
        [op for path, data in logs.items()
         for op in (("write", f"{path}.1.gz", gzip.compress(data, mtime=0)),
                    ("write", path, b""))],
        [("delete", path, None) for path in DEBS],  # benign: apt-get clean
        [("delete", path, None) for path in DOCS[2:14]],  # benign: a user tidies up
        # destructive: 14 documents taken into an archive, then deleted
        [("write", "/home/u/backup.zip", archive),
         *[("delete", path, None) for path in DOCS[14:28]]],
        [("overwrite", path, bytes(3000)) for path in DOCS[28:40]],  # a wiper's zeros
        # destructive: nearly every file deleted (none overwritten)
        [("delete", path, None) for path in
         [*LOGS, *(f"{p}.1.gz" for p in LOGS), *DOCS[28:40]]],
    ]
    return days, ["clean"] * 6 + ["suspicious"] * 3


@pytest.fixture(scope="module", params=["ext4", pytest.param("fat32", marks=pytest.mark.slow)])
def destruction(request, tmp_path_factory):
    days, verdicts = _destruction_days(np.random.default_rng(11))
    return _triaged(request.param, days, tmp_path_factory), verdicts


def test_rotation_cache_cleaning_and_tidying_up_stay_clean(destruction):
    doc, verdicts = destruction
    assert [p["verdict"] for p in doc["points"]] == verdicts
    assert doc["last_clean_point"] == 5
    rotation, cleaning, tidying = doc["points"][3:6]
    assert rotation["metrics"]["destroyed"] == 0 and not _flagged(rotation)
    for point, deleted in ((cleaning, len(DEBS)), (tidying, 12)):
        assert point["metrics"]["deleted"] == deleted and point["metrics"]["destroyed"] == 0
        assert any(r.startswith(f"deleted {deleted} above the baseline") and
                   "a volume of change" in r for r in point["reasons"])


def test_archived_zeroed_or_mass_deleted_files_are_destroyed(destruction):
    doc, _ = destruction
    archived, zeroed, wiped = doc["points"][6:9]
    # all 14: an archive of encrypted members makes up for none of them
    assert archived["metrics"]["destroyed"] == 14
    assert zeroed["metrics"]["destroyed"] == 12
    assert {f["path"] for f in zeroed["files"] if f["emptied"]} == set(DOCS[28:40])
    assert wiped["metrics"]["destroyed"] == wiped["metrics"]["deleted"] == 40
    for point in (archived, zeroed, wiped):
        assert any(r.startswith("destroyed ") for r in point["reasons"])


VSS_STORE = ("/System Volume Information/{5a3b0c2e-7d41-4f2a-9b8e-1c6d2e4f8a90}"
             "{3808876b-c176-4e48-b7ae-04046e6cc752}")
SYSTEM_FILES = ["/pagefile.sys", "/hiberfil.sys", VSS_STORE, "/swap.img"]


def _system_file_days(rng, swap: bytes):
    """Five days: paging, hibernation, shadow-copy and swap files written, two ordinary
    days, all of them rewritten with random bytes (the system ran, hibernated, took a
    shadow copy), then the same and one document encrypted."""
    from blockforensics.datasets.investigation import _text

    def system_files(fill):
        return [("write", "/pagefile.sys", fill(256 << 10)),
                ("write", "/hiberfil.sys", b"HIBR" + fill((128 << 10) - 4)),
                ("write", VSS_STORE, fill(128 << 10)),
                ("write", "/swap.img", swap[:4096] + fill(len(swap) - 4096))]

    docs = {f"/docs/d{i}.txt": _text(rng, 8000) for i in range(4)}
    return [
        [("mkdir", "/System Volume Information", None), ("mkdir", "/docs", None),
         *system_files(bytes), *[("write", p, d) for p, d in docs.items()]],
        [("write", "/docs/d0.txt", docs["/docs/d0.txt"] + b"more\n")],
        [("write", "/docs/d1.txt", docs["/docs/d1.txt"] + b"more\n")],
        system_files(rng.bytes),
        [*system_files(rng.bytes), ("overwrite", "/docs/d2.txt", rng.bytes(8000))],
    ]


@pytest.mark.parametrize("fs", ["ext4", pytest.param("fat32", marks=pytest.mark.slow)])
def test_paging_hibernation_shadow_copy_and_swap_files_are_not_encryption(
        fs, tmp_path, tmp_path_factory):
    require_tools("mkswap")
    swap = tmp_path / "swap"
    swap.write_bytes(bytes(256 << 10))
    subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
    days = _system_file_days(np.random.default_rng(5), swap.read_bytes())
    doc = _triaged(fs, days, tmp_path_factory)
    assert [p["verdict"] for p in doc["points"]] == ["clean"] * 4 + ["encrypted"]
    for point in doc["points"][3:]:
        files = {f["path"]: f for f in point["files"]}
        assert set(SYSTEM_FILES) <= set(files)
        for path in SYSTEM_FILES:
            assert not files[path]["flagged"], (path, files[path]["evidence"])
    assert doc["points"][3]["metrics"]["high_entropy_blocks"] > 100
    assert doc["points"][3]["metrics"]["unexplained_high_entropy"] == 0
    assert _flagged(doc["points"][4]) == {"/docs/d2.txt"}


WORK = [f"/home/work/sheet{i:02d}.csv" for i in range(12)]
RECORDS = [f"/home/docs/rec{i}.csv" for i in range(4)]
CACHE = "/home/.cache/browser"


def _red_team_2_days(rng):
    """Eight days: three ordinary; a folder zipped (plain deflate) and deleted, a
    browser cache's random entries evicted for new ones (benign); every document renamed
    to one random extension, content intact; then those copied, encrypted, into another
    directory and deleted; four files each zipped with a password (zip -P) and deleted,
    as Qlocker did.  Returns (days, verdicts)."""
    import zipfile

    from blockforensics.datasets.investigation import _text

    docs = {f"/home/docs/note{i:02d}.txt": _text(rng, 2000 + 300 * i) for i in range(12)}
    work = {path: _text(rng, 6000) for path in WORK}
    folder = io.BytesIO()
    with zipfile.ZipFile(folder, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in work.items():
            zf.writestr(path.rsplit("/", 1)[1], data)
    locked = {path: f"{path}.x7k2q" for path in docs}
    records = {path: _text(rng, 5000) for path in RECORDS}
    return [
        [*[("mkdir", d, None) for d in ("/home", "/home/docs", "/home/work", "/home/.cache",
                                        CACHE, "/home/.x")],
         *[("write", p, d) for p, d in {**docs, **work, **records}.items()],
         *[("write", f"{CACHE}/f_{i:06x}", rng.bytes(12_000)) for i in range(8)]],
        [("write", "/home/docs/todo.txt", _text(rng, 900))],
        [("write", "/home/docs/todo.txt", _text(rng, 1200))],
        [("write", "/home/work.zip", folder.getvalue()),
         *[("delete", path, None) for path in WORK]],
        [*[("delete", f"{CACHE}/f_{i:06x}", None) for i in range(8)],
         *[("write", f"{CACHE}/f_{i:06x}", rng.bytes(12_000)) for i in range(8, 20)]],
        [("rename", old, new) for old, new in locked.items()],
        [op for i, (old, new) in enumerate(locked.items())
         for op in (("write", f"/home/.x/{i:05d}.bin", rng.bytes(len(docs[old]) + 32)),
                    ("delete", new, None))],
        [op for path, data in records.items()  # each file zipped with a password, deleted
         for op in (("write", f"{path}.zip", encrypted_zip({path: data}, "k3y")),
                    ("delete", path, None))],
    ], ["clean"] * 5 + ["suspicious"] * 2 + ["encrypted"]


@pytest.fixture(scope="module")
def red_team_2(tmp_path_factory):
    days, verdicts = _red_team_2_days(np.random.default_rng(3))
    return _triaged("ext4", days, tmp_path_factory), verdicts


@pytest.mark.slow
@pytest.mark.parametrize("fs", ["ntfs", "xfs", "btrfs", "fat32"])
def test_the_second_red_team_history_on_every_file_system(fs, tmp_path_factory):
    """The same eight days played through a kernel (XFS, Btrfs) or ntfs-3g mount, or
    mtools: the same verdicts, the same files flagged."""
    days, verdicts = _red_team_2_days(np.random.default_rng(3))
    doc = _triaged(fs, days, tmp_path_factory)
    assert [p["verdict"] for p in doc["points"]] == verdicts
    assert doc["points"][5]["metrics"]["extension_appended"] == 12
    assert doc["points"][6]["metrics"]["destroyed"] == 12
    assert {f["path"] for f in doc["points"][7]["files"] if f["suspected_encryption"]} \
        == {f"{path}.zip" for path in RECORDS}


def test_a_zipped_folder_deleted_and_a_cache_churned_stay_clean(red_team_2):
    doc, verdicts = red_team_2
    assert [p["verdict"] for p in doc["points"]] == verdicts
    zipped, churned = doc["points"][3:5]
    assert zipped["metrics"]["deleted"] == len(WORK) and zipped["metrics"]["destroyed"] == 0
    assert churned["metrics"]["high_entropy_blocks"] >= 12 * 2
    assert churned["metrics"]["unexplained_high_entropy"] == 0
    assert not _flagged(zipped) and not _flagged(churned)


def test_one_extension_appended_to_many_files_is_suspicious(red_team_2):
    doc, _ = red_team_2
    point = doc["points"][5]
    assert point["metrics"]["extension_appended"] == 12
    assert _flagged(point) == {f"/home/docs/note{i:02d}.txt.x7k2q" for i in range(12)}
    assert any(r.startswith("12 file(s) renamed to append the extension .x7k2q")
               for r in point["reasons"])
    assert doc["last_clean_point"] == 4


def test_ciphertext_written_elsewhere_for_deleted_files_destroys_them(red_team_2):
    point = red_team_2[0]["points"][6]
    assert point["metrics"]["deleted"] == point["metrics"]["created"] == 12
    assert point["metrics"]["destroyed"] == 12
    assert any(r.startswith("destroyed 12 above the baseline") for r in point["reasons"])


def test_files_zipped_with_a_password_in_their_place_are_encrypted(red_team_2):
    point = red_team_2[0]["points"][7]
    suspected = {f["path"]: f for f in point["files"] if f["suspected_encryption"]}
    assert set(suspected) == {f"{path}.zip" for path in RECORDS}
    assert all("an archive of encrypted members where the bytes compared were none: "
               "nothing in it reads without a key" in f["evidence"]
               for f in suspected.values())


def test_dos_and_syslinux_sys_files_are_not_held_to_pe(tmp_path: Path) -> None:
    """``.sys`` is a Windows driver (PE) but also DOS's CONFIG.SYS (text) and syslinux's
    ldlinux.sys (a raw loader): a FAT volume made bootable by ``syslinux --install`` with
    a CONFIG.SYS beside it triages clean (the project's own sample boot disk was
    suspicious: 'extension .sys promises pe')."""
    require_tools("mkfs.vfat", "mcopy", "syslinux")
    image = tmp_path / "boot.img"
    subprocess.run(["mkfs.vfat", "-C", image, "32768"], check=True, capture_output=True)
    config = tmp_path / "CONFIG.SYS"
    config.write_text("FILES=30\r\nBUFFERS=20\r\nDEVICE=C:\\DOS\\HIMEM.SYS\r\n")
    subprocess.run(["mcopy", "-i", image, config, "::CONFIG.SYS"], check=True)
    subprocess.run(["syslinux", "--install", image], check=True, capture_output=True)
    chain = Chain.create(tmp_path / "chain")
    backup_image(chain, image)
    [point] = triage.triage(chain).points
    assert point.verdict == "clean", point.reasons

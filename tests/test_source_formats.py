"""Sources in formats the raw catch-all used to misread: EnCase EWF (E01, split into
segments) made by the real ``ewfacquire``, VirtualBox VDI (fixed and dynamic) made by
``qemu-img``, and containers no reader opens (AFF, AFF4, DMG, Parallels, QED, compressed
files, archives), which are refused by name instead of backed up as a disk.

Each E01 and VDI is checked against the raw disk it was made from and against an
independent reader: The Sleuth Kit's and libewf's own tools for EWF, ``qemu-img
convert -O raw`` for VDI."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from sample_disks import MIB, file_tree, make_ext4, make_fat, place, run, sparse_file
from support import require_module, require_tools

from blockforensics.formats import open_disk, probe

#: the sample disk: an MBR, an ext4 and a FAT16 partition, each holding random files
DISK_SIZE = 40 * MIB
EXT4_START, EXT4_SIZE = 1 * MIB, 16 * MIB
FAT_START, FAT_SIZE = 17 * MIB, 16 * MIB


def cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def ok(*args: object) -> str:
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def raw_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A partitioned raw disk: ext4 and FAT16, files in both, the rest zeros."""
    require_tools("sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy")
    work = tmp_path_factory.mktemp("source_formats")
    disk = sparse_file(work / "disk.raw", DISK_SIZE)
    run("sfdisk", "-q", disk, input=f"label: dos\nstart={EXT4_START // 512}, "
        f"size={EXT4_SIZE // 512}, type=83\nstart={FAT_START // 512}, size={FAT_SIZE // 512}, "
        "type=6\n")
    ext4 = make_ext4(work / "ext4.img", EXT4_SIZE, file_tree(work / "ext4_tree", 1, 40,
                                                                 3 * MIB))
    fat = make_fat(work / "fat.img", FAT_SIZE, ["-F", "16"], file_tree(work / "fat_tree", 2,
                                                                        40, 3 * MIB))
    place(disk, ext4, EXT4_START)
    place(disk, fat, FAT_START)
    return disk


def acquire(raw: Path, target: Path, segment_size: int | None = None) -> Path:
    """``ewfacquire`` (unattended, EnCase 6, deflate) of ``raw`` into ``target``.E01 …;
    the first segment's path."""
    require_tools("ewfacquire")
    split = ["-S", str(segment_size)] if segment_size else []
    run("ewfacquire", "-u", "-q", "-t", target, "-f", "encase6", "-c", "deflate:fast",
        "-d", "sha1", *split, raw)
    return target.with_name(target.name + ".E01")


@pytest.fixture(scope="module")
def e01(raw_disk: Path) -> Path:
    require_module("pyewf", "libewf-python")
    return acquire(raw_disk, raw_disk.parent / "whole")


@pytest.fixture(scope="module")
def e01_split(raw_disk: Path) -> Path:
    require_module("pyewf", "libewf-python")
    first = acquire(raw_disk, raw_disk.parent / "split", segment_size=MIB)
    assert len(sorted(first.parent.glob("split.E*"))) >= 4  # several segments
    return first


# ------------------------------------------------------------------ EWF
@pytest.mark.parametrize("which", ["e01", "e01_split"])
def test_ewf_reads_the_raw_disk_with_its_stored_hashes(which: str, raw_disk: Path,
                                                      request: pytest.FixtureRequest) -> None:
    first: Path = request.getfixturevalue(which)
    data = raw_disk.read_bytes()
    assert probe(first).name == "ewf"
    with open_disk(first) as disk:
        assert disk.size == len(data)
        assert disk.read(0, disk.size) == data
        assert disk.read(EXT4_START + 4095, 3 * MIB + 7) == data[EXT4_START + 4095 :
                                                                  EXT4_START + 3 * MIB + 4102]
        assert disk.hashes["MD5"] == hashlib.md5(data).hexdigest()  # type: ignore[attr-defined]
        assert disk.hashes["SHA1"] == hashlib.sha1(data).hexdigest()  # type: ignore[attr-defined]
        assert hashlib.md5(data).hexdigest() in repr(disk)
        if which == "e01_split":
            assert len(disk.segments) >= 4  # type: ignore[attr-defined]


def test_a_later_segment_given_opens_them_all(e01_split: Path, raw_disk: Path) -> None:
    with open_disk(e01_split.with_suffix(".E02")) as disk:
        assert disk.read(0, disk.size) == raw_disk.read_bytes()


def test_ewf_agrees_with_the_sleuth_kit_and_libewf_tools(e01_split: Path, raw_disk: Path,
                                                         tmp_path: Path) -> None:
    """TSK's own EWF support (img_stat, mmls) and ewfverify/ewfexport read what we read."""
    require_tools("img_stat", "mmls", "ewfverify", "ewfexport")
    stat = run("img_stat", e01_split)
    assert "Image Type:\t\tewf" in stat
    assert f"Size of data in bytes:\t{DISK_SIZE}" in stat
    assert run("mmls", e01_split) == run("mmls", raw_disk)
    assert "SUCCESS" in run("ewfverify", "-q", e01_split)
    run("ewfexport", "-u", "-q", "-f", "raw", "-t", tmp_path / "exported", e01_split)
    exported = tmp_path / "exported.raw"
    with open_disk(e01_split) as disk:
        assert exported.read_bytes() == disk.read(0, disk.size)


def test_backup_of_an_e01_restores_the_raw_disk_and_finds_its_files(
        e01_split: Path, raw_disk: Path, tmp_path: Path) -> None:
    from_raw = json.loads(ok("backup", raw_disk, tmp_path / "raw_chain", "--json"))
    from_e01 = json.loads(ok("backup", e01_split, tmp_path / "e01_chain", "--json"))
    assert [p["filesystem"] for p in from_e01["partitions"]] == ["ext4", "fat16"]
    assert from_e01["partitions"] == from_raw["partitions"]
    assert from_e01["blocks"] == from_raw["blocks"]
    assert "source_hashes" not in from_raw
    assert from_e01.pop("source_hashes") == {
        "MD5": hashlib.md5(raw_disk.read_bytes()).hexdigest(),
        "SHA1": hashlib.sha1(raw_disk.read_bytes()).hexdigest()}
    ok("restore", tmp_path / "e01_chain", tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == raw_disk.read_bytes()
    said = ok("backup", e01_split, tmp_path / "said_chain")
    assert f"MD5 {hashlib.md5(raw_disk.read_bytes()).hexdigest()}" in said
    listing = {name: ok("timeline", tmp_path / name, "--format", "bodyfile")
               for name in ("raw_chain", "e01_chain")}
    assert listing["e01_chain"] == listing["raw_chain"]
    assert "F0001.BIN" in listing["e01_chain"]


def test_export_of_an_e01_to_vhd_is_what_qemu_reads_of_the_raw(
        e01: Path, raw_disk: Path, tmp_path: Path) -> None:
    require_tools("qemu-img")
    ok("export", e01, tmp_path / "e01.vhd")
    assert run("qemu-img", "compare", "-f", "vpc", "-F", "raw", tmp_path / "e01.vhd",
               raw_disk).startswith("Images are identical")
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", tmp_path / "e01.vhd",
        tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes()[: DISK_SIZE] == raw_disk.read_bytes()


def test_a_missing_segment_is_one_line_and_exit_2(e01_split: Path, tmp_path: Path) -> None:
    for segment in e01_split.parent.glob("split.E*"):
        if segment.suffix != ".E03":
            shutil.copy(segment, tmp_path / segment.name)
    done = cli("backup", tmp_path / "split.E01", tmp_path / "chain")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "the EWF segment file after split.E02 is missing" in done.stderr


#: EWF1 (EWF specification, Joachim Metz): the file header's bytes, a section
#: descriptor (type, next section's offset, size, padding, Adler-32 of what precedes);
#: the ``digest`` section's data (MD5, SHA-1, padding, Adler-32) and the ``hash``
#: section's (MD5, unknown, Adler-32)
EWF1_FILE_HEADER = 13
SECTION = struct.Struct("<16sQQ40sI")
DIGEST = struct.Struct("<16s20s40sI")
HASH = struct.Struct("<16s16sI")


def ewf1_sections(data: bytes) -> dict[bytes, int]:
    """Where each section's data begins, by type (the last of a type)."""
    found, at = {}, EWF1_FILE_HEADER
    while True:
        kind, following, _, _, _ = SECTION.unpack_from(data, at)
        kind = kind.rstrip(b"\0")
        found[kind] = at + SECTION.size
        if kind in (b"done", b"next") or following == at:
            return found
        at = following


def with_stored_md5(e01: Path, out: Path, md5: bytes) -> Path:
    """A copy of ``e01`` whose digest and hash sections store ``md5`` (their checksums
    made anew, so libewf takes it)."""
    data = bytearray(e01.read_bytes())
    sections = ewf1_sections(data)
    _, sha1, padding, _ = DIGEST.unpack_from(data, sections[b"digest"])
    DIGEST.pack_into(data, sections[b"digest"], md5, sha1, padding,
                     zlib.adler32(DIGEST.pack(md5, sha1, padding, 0)[:-4]))
    _, unknown, _ = HASH.unpack_from(data, sections[b"hash"])
    HASH.pack_into(data, sections[b"hash"], md5, unknown,
                   zlib.adler32(HASH.pack(md5, unknown, 0)[:-4]))
    out.write_bytes(data)
    return out


def test_a_backup_checks_the_stored_hashes_over_the_whole_medium(
        e01: Path, raw_disk: Path, tmp_path: Path) -> None:
    """Only the allocated blocks are stored, but the whole medium is read and hashed:
    it matches, and verify finds nothing to say."""
    data = raw_disk.read_bytes()
    said = json.loads(ok("backup", e01, tmp_path / "chain", "--json"))
    assert said["blocks"] < DISK_SIZE // 4096 // 2  # a survey's backup, not every block
    assert said["source_hashes_read"] == said["source_hashes"] == {
        "MD5": hashlib.md5(data).hexdigest(), "SHA1": hashlib.sha1(data).hexdigest()}
    assert said["source_hashes_match"] is True
    assert "verify: OK" in ok("verify", tmp_path / "chain")
    raw_chain = tmp_path / "raw_chain"
    ok("backup", raw_disk, raw_chain)
    assert [row["source_hashes_match"] for row in json.loads(ok("list", tmp_path / "chain",
                                                                "--json"))] == [True]
    assert [row["source_hashes_match"] for row in json.loads(ok("list", raw_chain,
                                                                "--json"))] == [None]


def test_a_wrong_stored_hash_is_said_loudly_and_by_verify(e01: Path, raw_disk: Path,
                                                         tmp_path: Path) -> None:
    """A stored MD5 that is not the medium's (checksums right: libewf takes it): the
    backup stores the point, says so on stderr and exits 1; verify says it too."""
    require_tools("ewfverify")
    wrong = with_stored_md5(e01, tmp_path / "wrong.E01", b"\x11" * 16)
    libewf = subprocess.run(["ewfverify", "-d", "sha1", wrong], capture_output=True, text=True,
                            timeout=120)
    assert "MD5 hash stored in file:\t\t" + "1" * 32 in libewf.stdout, libewf.stdout
    done = cli("backup", wrong, tmp_path / "chain")
    assert done.returncode == 1, done.stderr
    assert "ACQUISITION HASH MISMATCH" in done.stderr and "MD5 stored 1111" in done.stderr
    assert "SHA1" not in done.stderr  # the stored SHA-1 is right
    ok("restore", tmp_path / "chain", tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == raw_disk.read_bytes()
    checked = cli("verify", tmp_path / "chain")
    assert checked.returncode == 1 and "ACQUISITION HASH MISMATCH" in checked.stdout
    listed = json.loads(ok("list", tmp_path / "chain", "--json"))
    assert [row["source_hashes_match"] for row in listed] == [False]


def test_the_library_backup_checks_and_records_the_stored_hashes(
        e01: Path, raw_disk: Path, tmp_path: Path) -> None:
    """``backup()`` itself (a notebook's call, not only the command's) hashes the medium,
    records the outcome for ``verify`` and warns on a mismatch; a point whose source
    stores no hashes carries no check, even one left under its name."""
    from blockforensics.image.backup import backup
    from blockforensics.image.chain import Chain
    from blockforensics.image.sources import AcquisitionHashMismatch, SourceCheck, recorded
    from blockforensics.image.verify import verify

    wrong = with_stored_md5(e01, tmp_path / "wrong.E01", b"\x11" * 16)
    chain = Chain.create(tmp_path / "chain")
    with open_disk(str(e01)) as good:
        first = backup(chain, good)
    with open_disk(str(wrong)) as bad, pytest.warns(AcquisitionHashMismatch, match="MD5 stored"):
        second = backup(chain, bad)
    checks = recorded(chain.directory)
    assert checks[chain.images[first].name].ok
    assert not checks[chain.images[second].name].ok
    assert checks[chain.images[second].name].read["MD5"] == \
        hashlib.md5(raw_disk.read_bytes()).hexdigest()
    problems = verify(chain.directory).problems
    assert [problem.image for problem in problems] == [chain.images[second].name]
    assert "ACQUISITION HASH MISMATCH" in problems[0].message
    stale = chain.store.new_name("incr")  # the name the next point takes
    SourceCheck("old.E01", {"MD5": "1" * 32}, {"MD5": "2" * 32}).record(chain.directory, stale)
    with open_disk(str(raw_disk)) as plain:
        third = backup(chain, plain)
    assert chain.images[third].name == stale
    assert stale not in recorded(chain.directory)
    assert chain.images[first].name in recorded(chain.directory)


def test_a_damaged_chunk_is_a_hash_mismatch(e01: Path, tmp_path: Path) -> None:
    """Bytes of the first compressed chunk overwritten: libewf's own checksum fails
    (ewfverify names the sectors) and pyewf reads the chunk as zeros without a word;
    the whole-medium hashes catch it."""
    require_tools("ewfverify")
    data = bytearray(e01.read_bytes())
    first_chunk = ewf1_sections(data)[b"sectors"]
    data[first_chunk + 8 : first_chunk + 16] = b"\xff" * 8
    (tmp_path / "damaged.E01").write_bytes(data)
    libewf = subprocess.run(["ewfverify", "-q", tmp_path / "damaged.E01"], capture_output=True,
                            text=True, timeout=120)
    assert "FAILURE" in libewf.stdout and "at sector(s): 0 - " in libewf.stdout, libewf.stdout
    done = cli("backup", tmp_path / "damaged.E01", tmp_path / "chain", "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["source_hashes_match"] is False
    assert "MD5 stored" in done.stderr and "SHA1 stored" in done.stderr


def test_an_e01_of_a_source_of_no_whole_sectors_fails_its_check_as_ewfverify_does(
        tmp_path: Path) -> None:
    """``ewfacquire`` of 5000001 bytes stores 9765 whole sectors but the MD5 of every
    byte: the E01 does not hold what it says it hashed.  ``ewfverify`` fails it; so does
    the backup, which restores exactly the sectors stored."""
    require_module("pyewf", "libewf-python")
    require_tools("ewfacquire", "ewfverify")
    raw = tmp_path / "odd.raw"
    raw.write_bytes(np.random.default_rng(5).bytes(5_000_001))
    e01 = acquire(raw, tmp_path / "odd")
    libewf = subprocess.run(["ewfverify", "-q", e01], capture_output=True, text=True,
                            timeout=120)
    assert "FAILURE" in libewf.stdout, libewf.stdout
    done = cli("backup", e01, tmp_path / "chain", "--json")
    assert done.returncode == 1 and "ACQUISITION HASH MISMATCH" in done.stderr, done.stderr
    said = json.loads(done.stdout)
    assert said["source_hashes"]["MD5"] == hashlib.md5(raw.read_bytes()).hexdigest()
    assert said["source_hashes_read"]["MD5"] == hashlib.md5(raw.read_bytes()[:9765 * 512]
                                                            ).hexdigest()
    ok("restore", tmp_path / "chain", tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == raw.read_bytes()[: 9765 * 512]


@pytest.mark.parametrize("fmt", ["ewf", "smart", "ftk", "encase2", "encase5", "linen6", "ewfx"])
def test_every_ewf1_flavour_ewfacquire_writes_reads_the_raw_disk(fmt: str, raw_disk: Path,
                                                                 tmp_path: Path) -> None:
    require_module("pyewf", "libewf-python")
    require_tools("ewfacquire")
    run("ewfacquire", "-u", "-q", "-t", tmp_path / fmt, "-f", fmt, "-c", "deflate:fast",
        raw_disk)
    (first,) = tmp_path.glob(f"{fmt}.*01")  # .E01, .e01 (ewf, ewfx) or .s01 (SMART)
    assert probe(first).name == "ewf"
    with open_disk(first) as disk:
        assert disk.read(0, disk.size) == raw_disk.read_bytes()


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_a_truncated_ewf_is_one_line_and_exit_2(cut: float, e01: Path, tmp_path: Path) -> None:
    data = e01.read_bytes()
    (tmp_path / "cut.E01").write_bytes(data[: int(len(data) * cut)])
    done = cli("export", tmp_path / "cut.E01", tmp_path / "out.raw", "--format", "raw")
    assert done.returncode == 2, done.stderr
    assert "truncated or damaged EWF" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.raw").exists()


def test_an_l01_logical_evidence_file_is_refused_by_name(tmp_path: Path) -> None:
    l01 = tmp_path / "files.L01"
    l01.write_bytes(b"LVF\x09\x0d\x0a\xff\x00" + bytes(4096))
    done = cli("backup", l01, tmp_path / "chain")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "L01" in done.stderr
    assert not (tmp_path / "chain").exists()
    forced = cli("export", l01, tmp_path / "out.raw", "--format", "raw", "--reader", "ewf")
    assert forced.returncode == 2 and "L01" in forced.stderr
    assert len(forced.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ VDI
def qemu_vdi(raw: Path, out: Path, static: bool) -> Path:
    require_tools("qemu-img")
    run("qemu-img", "convert", "-f", "raw", "-O", "vdi",
        *(["-o", "static=on"] if static else []), raw, out)
    return out


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "fixed"])
def test_vdi_backup_restores_what_qemu_reads(static: bool, raw_disk: Path,
                                             tmp_path: Path) -> None:
    vdi = qemu_vdi(raw_disk, tmp_path / "disk.vdi", static)
    run("qemu-img", "convert", "-f", "vdi", "-O", "raw", vdi, tmp_path / "qemu.raw")
    assert probe(vdi).name == "vdi"
    with open_disk(vdi) as disk:
        assert disk.read(0, disk.size) == (tmp_path / "qemu.raw").read_bytes()
    ok("backup", vdi, tmp_path / "chain")
    ok("restore", tmp_path / "chain", tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == (tmp_path / "qemu.raw").read_bytes()
    ok("export", vdi, tmp_path / "copy.raw", "--format", "raw")
    assert (tmp_path / "copy.raw").read_bytes() == (tmp_path / "qemu.raw").read_bytes()


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "fixed"])
def test_a_vdi_of_no_whole_number_of_blocks_reads_its_last_sector(static: bool,
                                                                  tmp_path: Path) -> None:
    raw = tmp_path / "odd.raw"
    rng = np.random.default_rng(5)
    data = bytearray(8 * MIB + 3 * 512)
    data[:4096] = rng.bytes(4096)
    data[-1536:] = rng.bytes(1536)
    raw.write_bytes(bytes(data))
    vdi = qemu_vdi(raw, tmp_path / "odd.vdi", static)
    with open_disk(vdi) as disk:
        assert disk.size == len(data)
        assert disk.read(0, disk.size) == bytes(data)
        assert disk.present().to_bools()[-1]
    ok("export", vdi, tmp_path / "copy.raw", "--format", "raw")
    assert (tmp_path / "copy.raw").read_bytes() == bytes(data)


def test_only_allocated_vdi_blocks_are_read(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A 256 MiB dynamic VDI holding three writes: present() is the three VDI blocks qemu
    allocated (as ``qemu-img map`` says), and a backup reads nothing else."""
    require_tools("qemu-img", "qemu-io")
    from blockforensics.formats.vdi import VdiDisk
    from blockforensics.image.backup import backup
    from blockforensics.image.chain import Chain

    vdi = tmp_path / "sparse.vdi"
    run("qemu-img", "create", "-f", "vdi", vdi, "256M")
    for offset, pattern in ((0, 0x61), (100 * MIB + 4096, 0x62), (255 * MIB, 0x63)):
        run("qemu-io", "-f", "vdi", "-c", f"write -P {pattern} {offset} 8k", vdi)
    mapped = [e for e in json.loads(run("qemu-img", "map", "--output=json", vdi)) if e["data"]]
    expected = np.zeros(256 * MIB // 4096, dtype=bool)
    for entry in mapped:
        expected[entry["start"] // 4096 : (entry["start"] + entry["length"]) // 4096] = True
    read: list[tuple[int, int]] = []
    original = VdiDisk.read_blocks_into

    def counting(self: VdiDisk, start: int, out: np.ndarray) -> None:
        read.append((start, len(out)))
        original(self, start, out)

    monkeypatch.setattr(VdiDisk, "read_blocks_into", counting)
    with open_disk(vdi) as disk:
        present = disk.present()
        assert np.array_equal(present.to_bools(), expected)
        assert int(expected.sum()) == 3 * MIB // 4096  # three 1 MiB VDI blocks of 256
        backup(Chain.create(tmp_path / "chain"), disk)
    touched = np.zeros(expected.size, dtype=bool)
    for start, count in read:
        touched[start : start + count] = True
    assert touched.any() and not (touched & ~expected).any()
    ok("restore", tmp_path / "chain", tmp_path / "restored.raw")
    run("qemu-img", "convert", "-f", "vdi", "-O", "raw", vdi, tmp_path / "qemu.raw")
    assert (tmp_path / "restored.raw").read_bytes() == (tmp_path / "qemu.raw").read_bytes()


def test_a_truncated_vdi_is_one_line_and_exit_2(raw_disk: Path, tmp_path: Path) -> None:
    vdi = qemu_vdi(raw_disk, tmp_path / "disk.vdi", static=False)
    os.truncate(vdi, vdi.stat().st_size - MIB)
    done = cli("export", vdi, tmp_path / "out.raw", "--format", "raw")
    assert done.returncode == 2, done.stderr
    assert "truncated VDI" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ------------------------------------------------------- refused containers
def _aff4(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("information.turtle", "@prefix aff4: <http://aff4.org/Schema#> .\n")
        archive.writestr("data/00000000", bytes(4096))


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("disk.img", bytes(4096))


def _dmg(path: Path) -> None:
    trailer = b"koly" + (4).to_bytes(4, "big") + (512).to_bytes(4, "big") + bytes(500)
    path.write_bytes(bytes(8192) + trailer)


CONTAINERS = {
    "aff": ("AFF", lambda p: p.write_bytes(b"AFF10\r\n\0" + bytes(4096))),
    "aff4": ("AFF4", _aff4),
    "dmg": ("DMG", _dmg),
    "parallels": ("Parallels", lambda p: p.write_bytes(b"WithoutFreeSpace" + bytes(4096))),
    "parallels-ext": ("Parallels", lambda p: p.write_bytes(b"WithouFreSpacExt" + bytes(4096))),
    "qed": ("QED", lambda p: p.write_bytes(b"QED\0" + bytes(4096))),
    "gzip": ("gzip", lambda p: p.write_bytes(gzip.compress(bytes(1 << 16)))),
    "xz": ("xz", lambda p: p.write_bytes(lzma.compress(bytes(1 << 16)))),
    "bzip2": ("bzip2", lambda p: p.write_bytes(bz2.compress(bytes(1 << 16)))),
    "zstd": ("zstd", lambda p: p.write_bytes(
        __import__("zstandard").ZstdCompressor().compress(bytes(1 << 16)))),
    "7z": ("7z", lambda p: p.write_bytes(b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(4096))),
    "zip": ("zip", _zip),
}


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_a_container_no_reader_opens_is_refused_by_name(name: str, tmp_path: Path) -> None:
    kind, make = CONTAINERS[name]
    image = tmp_path / f"disk.{name}"
    make(image)
    for args in (("backup", image, tmp_path / "chain"), ("export", image, tmp_path / "out.vhd")):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and kind in lines[0] and "Traceback" not in done.stderr, lines
        assert "--reader raw" in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == [image.name]  # nothing written
    # who truly wants its bytes as the disk says so
    ok("export", image, tmp_path / "forced.raw", "--format", "raw", "--reader", "raw")
    assert (tmp_path / "forced.raw").read_bytes()[: image.stat().st_size] == image.read_bytes()


def test_a_raw_disk_is_not_taken_for_a_container(raw_disk: Path) -> None:
    from blockforensics.formats.signature import container

    assert container(raw_disk) is None
    assert probe(raw_disk).name == "raw"

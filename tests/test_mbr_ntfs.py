"""Files in every partition of a partitioned disk: NTFS, FAT and exFAT side by side on
an MBR disk (the FAT and exFAT ones logical partitions of the EBR chain) and on a GPT
disk, written without mounting (mkntfs + ntfscp, mkfs.fat + mtools, mkfs.exfat), backed
up, changed, backed up again: ``diff --files``, ``timeline`` and ``triage`` name the
changed files of each partition, and each point's listing equals The Sleuth Kit's own
``fls`` of that partition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_tools

from blockforensics import forensics
from blockforensics.allocation import filesystem_partitions
from blockforensics.formats.raw import RawDisk
from blockforensics.image.chain import Chain

MIB = 1 << 20
SECTOR = 512
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
#: the partition scripts: NTFS, FAT16 and exFAT; on MBR the last two are logical
TABLES = {
    "mbr": ("label: dos\nlabel-id: 0x0bf0bf00\nsize=20MiB, type=7\ntype=5\n"
            "size=12MiB, type=6\ntype=7\n", {"ntfs": 1, "fat": 5, "exfat": 6}),
    "gpt": ("label: gpt\nlabel-id: 0BF0BF00-0000-4000-8000-000000000001\n"
            f"size=20MiB, type={BASIC_DATA}\nsize=12MiB, type={BASIC_DATA}\n"
            f"size=12MiB, type={BASIC_DATA}\n", {"ntfs": 1, "fat": 2, "exfat": 3}),
}


def run(*args: object, **kwargs: object) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=120, **kwargs).stdout  # type: ignore[call-overload]


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _partitions(disk: Path) -> dict[int, tuple[int, int]]:
    """Partition number -> (start, size) in sectors, as sfdisk reads the table back."""
    table = json.loads(run("sfdisk", "--json", disk))["partitiontable"]
    return {int(p["node"].removeprefix(str(disk))): (p["start"], p["size"])
            for p in table["partitions"]}


class Disk:
    """A partitioned disk image whose volumes are made and edited as files of their own
    (no mounting), then written into it at their partitions' offsets."""

    def __init__(self, tmp: Path, table: str):
        self.path = tmp / "disk.img"
        self.path.write_bytes(bytes(48 * MIB))
        script, self.number = TABLES[table]
        run("sfdisk", "-q", self.path, input=script)
        self.parts = _partitions(self.path)
        self.volume = {}
        for kind, n in self.number.items():
            vol = self.volume[kind] = tmp / f"{kind}.vol"
            vol.write_bytes(bytes(self.parts[n][1] * SECTOR))
        ntfs_start = self.parts[self.number["ntfs"]][0]
        run("mkntfs", "-F", "-Q", "-q", "-p", ntfs_start, "-H", 255, "-S", 63,
            self.volume["ntfs"])
        run("mkfs.fat", "-F", 16, self.volume["fat"])
        run("mkfs.exfat", self.volume["exfat"])
        self.src = tmp / "src"
        self.src.mkdir()

    def file(self, name: str, data: bytes) -> Path:
        path = self.src / name.replace("/", "_")
        path.write_bytes(data)
        return path

    def ntfs_put(self, name: str, data: bytes) -> None:
        run("ntfscp", "-f", self.volume["ntfs"], self.file(name, data), name)

    def fat_put(self, name: str, data: bytes) -> None:
        run("mcopy", "-o", "-i", self.volume["fat"], self.file(name, data), f"::/{name}")

    def write(self) -> Path:
        """Every volume into the disk at its partition's offset; the disk's path."""
        with self.path.open("r+b") as fh:
            for kind, n in self.number.items():
                fh.seek(self.parts[n][0] * SECTOR)
                fh.write(self.volume[kind].read_bytes())
        return self.path

    def fls(self, kind: str) -> set[str]:
        """Allocated regular files of a partition as ``fls -r -p -u`` lists them (the file
        systems' own metadata files, ``$…``, left out)."""
        lines = run("fls", "-r", "-p", "-u", "-o", self.parts[self.number[kind]][0],
                    self.path).splitlines()
        paths = [line.partition("\t")[2] for line in lines if line.startswith("r/r")]
        return {"/" + p for p in paths if not any(s.startswith("$") for s in p.split("/"))}


@pytest.fixture(params=["mbr", pytest.param("gpt", marks=pytest.mark.slow)])
def history(request: pytest.FixtureRequest, tmp_path: Path):
    """A chain of two points of a three-partition disk, and the disk itself."""
    require_module("pytsk3", "pytsk3")
    require_tools("sfdisk", "mkntfs", "ntfscp", "mkfs.fat", "mcopy", "mmd", "mdel",
                  "mkfs.exfat", "fls")
    rng = np.random.default_rng(13)
    disk = Disk(tmp_path, request.param)
    disk.ntfs_put("a.txt", b"hello from NTFS\n")
    disk.ntfs_put("report.doc", rng.bytes(40_000))
    disk.ntfs_put("keep.bin", rng.bytes(100_000))
    run("mmd", "-i", disk.volume["fat"], "::/docs")
    disk.fat_put("docs/notes.txt", b"meeting notes\n" * 300)
    disk.fat_put("photo.jpg", rng.bytes(30_000))
    disk.fat_put("keep.txt", b"unchanged\n" * 100)
    chain = tmp_path / "chain"
    disk.write()
    listed = [{kind: disk.fls(kind) for kind in ("ntfs", "fat")}]
    assert cli("backup", disk.path, chain).returncode == 0

    contents = [{"ntfs": disk.src.joinpath("report.doc").read_bytes(),
                 "fat": disk.src.joinpath("photo.jpg").read_bytes()}]
    disk.ntfs_put("report.doc", rng.bytes(40_000))  # rewritten in place: same size
    disk.ntfs_put("new.txt", b"created on day two\n" * 50)
    disk.fat_put("photo.jpg", rng.bytes(30_000))
    contents.append({"ntfs": disk.src.joinpath("report.doc").read_bytes(),
                     "fat": disk.src.joinpath("photo.jpg").read_bytes()})
    run("mdel", "-i", disk.volume["fat"], "::/docs/notes.txt")
    disk.fat_put("added.txt", b"added on day two\n" * 100)  # not in the freed slot
    disk.write()
    listed.append({kind: disk.fls(kind) for kind in ("ntfs", "fat")})
    done = cli("backup", disk.path, chain)
    assert done.returncode == 0, done.stderr
    return chain, disk, listed, contents


def test_listings_equal_fls_in_every_partition(history) -> None:
    chain_dir, disk, listed, contents = history
    n = disk.number
    with RawDisk(disk.path) as raw:
        found = [(p.index, p.start_byte // SECTOR) for p in filesystem_partitions(raw)]
    assert found == sorted((i, disk.parts[i][0]) for i in n.values())
    with Chain.open(chain_dir) as chain:
        for point in (0, 1):
            files = forensics.list_files(chain.disk(point))
            files = files[files["type"] == "file"]
            for kind in ("ntfs", "fat"):
                prefix = f"p{n[kind]}:"
                mine = {p.removeprefix(prefix) for p in files["path"]
                        if p.startswith(prefix + "/") and "/$" not in p}
                assert mine == listed[point][kind], (point, kind)
                assert mine  # not both empty
            assert f"p{n['exfat']}:/" in set(forensics.list_files(chain.disk(point))["path"])
    for point in (0, 1):  # extract reads each partition's files as they were
        for kind, name in (("ntfs", "report.doc"), ("fat", "photo.jpg")):
            out = chain_dir.parent / f"{kind}-{point}.out"
            done = cli("extract", chain_dir, point, f"p{n[kind]}:/{name}", out)
            assert done.returncode == 0, done.stderr
            assert out.read_bytes() == contents[point][kind]
    print(f"listings equal fls: {sum(len(v) for d in listed for v in d.values())} files "
          f"over 2 points, partitions {sorted(n.values())}")


@pytest.mark.slow
def test_diff_timeline_and_triage_name_the_changed_files_of_each_partition(history) -> None:
    chain_dir, disk, *_ = history
    ntfs, fat = f"p{disk.number['ntfs']}:", f"p{disk.number['fat']}:"
    expected = {(f"{ntfs}/report.doc", "modified"), (f"{ntfs}/new.txt", "created"),
                (f"{fat}/photo.jpg", "modified"), (f"{fat}/docs/notes.txt", "deleted"),
                (f"{fat}/added.txt", "created")}
    done = cli("diff", chain_dir, 0, 1, "--files", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["files"]
    changes = {(r["path"], r["change"]) for r in rows if r["type"] == "file"}
    assert changes == expected, changes

    done = cli("timeline", chain_dir, "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    at_1 = {(e["path"], e["change"]) for e in events
            if e["point"] == 1 and e["file_type"] == "file"}
    names = {(f"{path} ($FILE_NAME)", change) for path, change in expected
             if path.startswith(ntfs)}  # an NTFS file's name's own times, as fls -m
    assert at_1 == expected | names
    at_0 = {e["path"] for e in events if e["point"] == 0 and e["file_type"] == "file"}
    assert {f"{ntfs}/keep.bin", f"{fat}/keep.txt", f"{fat}/docs/notes.txt"} <= at_0

    done = cli("triage", chain_dir, "--json")
    assert done.returncode == 0, done.stderr
    assert f"{ntfs}/report.doc" in done.stdout and f"{fat}/photo.jpg" in done.stdout


# ------------------------------------------------------------ a broken EBR chain
def _ebr_chain_disk(tmp_path: Path) -> tuple[Path, int, int]:
    """An MBR disk: FAT12/16 in primary 1 and in logical 5 and 6, a file in each; returns the
    disk, the byte offset of the second EBR (logical 6's) and logical 6's start."""
    require_module("pytsk3", "pytsk3")
    require_tools("sfdisk", "mkfs.fat", "mcopy")
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(40 * MIB))
    run("sfdisk", "-q", path, input="label: dos\nsize=8MiB, type=6\ntype=5\n"
        "size=12MiB, type=6\ntype=6\n")
    parts = _partitions(path)
    with path.open("r+b") as fh:
        for n in (1, 5, 6):
            vol = tmp_path / f"v{n}.img"
            vol.write_bytes(bytes(parts[n][1] * SECTOR))
            run("mkfs.fat", vol)
            (tmp_path / f"f{n}.txt").write_bytes(f"partition {n}\n".encode() * 100)
            run("mcopy", "-i", vol, tmp_path / f"f{n}.txt", f"::/f{n}.txt")
            fh.seek(parts[n][0] * SECTOR)
            fh.write(vol.read_bytes())
        fh.seek(0x1BE + 16 + 8)  # entry 2: the extended partition's first sector
        extended = int.from_bytes(fh.read(4), "little")
        fh.seek(extended * SECTOR + 0x1BE + 16 + 8)  # the first EBR's link
        second = (extended + int.from_bytes(fh.read(4), "little")) * SECTOR
    return path, second, parts[6][0] * SECTOR


def _files(path: Path) -> set[str]:
    with RawDisk(path) as raw:
        listed = forensics.list_files(raw)
    return set(listed.loc[listed["type"] == "file", "path"])


def test_a_broken_ebr_chain_keeps_what_comes_before_it(tmp_path: Path) -> None:
    from blockforensics.allocation import survey

    path, second_ebr, logical6 = _ebr_chain_disk(tmp_path)
    assert _files(path) == {"p1:/f1.txt", "p5:/f5.txt", "p6:/f6.txt"}
    with path.open("r+b") as fh:  # the second EBR loses its signature
        fh.seek(second_ebr + 510)
        fh.write(b"\0\0")
    assert _files(path) == {"p1:/f1.txt", "p5:/f5.txt"}
    found = survey(path)
    assert [r.index for r in found.regions] == [1, 5]
    assert any(f"no EBR at sector {second_ebr // SECTOR}" in note for note in found.notes)
    first = logical6 // found.map.block_size  # logical 6, unread, is copied whole
    assert found.map.to_bools()[first : first + 100].all()


def test_an_ebr_chain_that_loops_is_followed_once(tmp_path: Path) -> None:
    from blockforensics.allocation import partition_table

    path, second_ebr, _ = _ebr_chain_disk(tmp_path)
    with path.open("r+b") as fh:  # logical 6's EBR links back to the first EBR
        fh.seek(second_ebr + 0x1BE + 16)
        fh.write(bytes([0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]))
    table, found, notes = partition_table(path)
    assert table == "mbr"
    assert [p.index for p in found] == [1, 2, 5, 6]
    assert any("loops back" in note for note in notes)
    assert _files(path) == {"p1:/f1.txt", "p5:/f5.txt", "p6:/f6.txt"}

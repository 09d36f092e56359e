"""Structure checked once, bounded always; damage stays local (issue 18, items 3-6).

Hostile images are made with valid checksums (an attacker recomputes them), so
that only the structural checks stand between them and the readers.  Each case
runs the command line in a subprocess and measures its peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from blockforensics.formats.vhd import Footer as VhdFooter
from blockforensics.image.chain import Chain
from blockforensics.image.format import FLAG_ZLIB, HEADER_SIZE, Footer, Header
from blockforensics.image.imagefile import ImageFile

BS = 4096
PEAK_RSS_LIMIT_MIB = 200


def run(*args: object, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """The command line in a subprocess: its result and its peak RSS in MiB (measured by
    a parent of its own, so each figure is this command's alone)."""
    measure = ("import resource, subprocess, sys;"
               "done = subprocess.run(sys.argv[1:]);"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
               "sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m",
                           "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    *lines, peak = done.stderr.strip().splitlines()
    done.stderr = "\n".join(lines)
    return done, int(peak) / 1024


def make_chain(tmp_path: Path, n: int = 3) -> tuple[Path, list[bytes]]:
    """A chain of a full and ``n - 1`` incrementals (each against the previous) of a
    random 32-block volume; the volume at each point."""
    rng = np.random.default_rng(1)
    source = tmp_path / "disk.raw"
    data = bytearray(rng.integers(0, 256, 32 * BS, dtype=np.uint8).tobytes())
    chain = tmp_path / "chain"
    states = []
    for i in range(n):
        if i:  # every block rewritten: each incremental holds 32 records
            data[:] = rng.bytes(32 * BS)
        source.write_bytes(data)
        subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup", str(source),
                        str(chain), "--all-blocks"], check=True, capture_output=True)
        states.append(bytes(data))
    return chain, states


def image_path(chain: Path, point: int) -> Path:
    return chain / json.loads((chain / "chain.json").read_text())["images"][point]


def rewrite_header(path: Path, **changes: object) -> None:
    """Give the image a header with ``changes`` and a valid checksum."""
    raw = bytearray(path.read_bytes())
    values = dict(zip((n for n, _ in Header.LAYOUT), Header.STRUCT.unpack_from(raw)))
    values.update(changes)
    body = Header.STRUCT.pack(*(values[n] for n, _ in Header.LAYOUT))
    body += bytes(HEADER_SIZE - 32 - len(body))
    raw[:HEADER_SIZE] = body + hashlib.sha256(body).digest()
    path.write_bytes(raw)


def rewrite_index(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace the image's index by ``change(index)``, with a valid digest and footer."""
    with ImageFile(path) as image:
        index, at = change(image.index.all()), image.footer.index_offset
    raw = path.read_bytes()[:at] + index.tobytes()
    footer = Footer(at, len(index), hashlib.sha256(index.tobytes()).digest())
    path.write_bytes(raw + footer.pack())


def rewrite_footer(path: Path, **changes: int) -> None:
    raw = path.read_bytes()
    footer = Footer.unpack(raw[-Footer.SIZE:])
    values = {"index_offset": footer.index_offset, "index_count": footer.index_count,
              "index_digest": footer.index_digest, **changes}
    path.write_bytes(raw[: -Footer.SIZE] + Footer(**values).pack())  # type: ignore[arg-type]


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 1, \
        done.stderr
    for word in words:
        assert word in done.stderr + done.stdout, done.stdout + done.stderr


# --------------------------------------------------------------- parent links
def test_a_parent_cycle_is_refused_in_under_a_second_and_the_rest_still_reads(tmp_path):
    chain, states = make_chain(tmp_path, 4)  # 0 <- 1 <- 2 <- 3
    with Chain.open(chain) as opened:
        id_of = [img.header.image_id for img in opened.images]
    rewrite_header(image_path(chain, 1), parent_id=id_of[2])  # 1 <-> 2: a cycle
    started = time.monotonic()
    with Chain.open(chain) as opened:
        assert "cycle" in opened.damage[1] and "cycle" in opened.damage[2]
        assert opened.damage[3].startswith("depends on damaged point 2 (0002-incr.bfi): its")
        assert 0 not in opened.damage
    assert time.monotonic() - started < 1.0
    for point in (1, 2, 3):
        done, _ = run("restore", chain, tmp_path / "out.raw", "--point", point, timeout=30)
        assert_one_line(done, 2, "damaged")
        assert not (tmp_path / "out.raw").exists()
    done, _ = run("export", chain, tmp_path / "out.vhd", timeout=30)
    assert_one_line(done, 2, "cycle")
    done, _ = run("restore", chain, tmp_path / "zero.raw", "--point", 0)
    assert_one_line(done, 0)
    assert (tmp_path / "zero.raw").read_bytes() == states[0]
    done, _ = run("verify", chain, timeout=30)
    assert done.returncode == 1 and "cycle" in done.stdout, done.stdout
    done, _ = run("backup", tmp_path / "disk.raw", chain, timeout=30)  # onto the newest
    assert_one_line(done, 2, "--full", "--parent")
    done, _ = run("backup", tmp_path / "disk.raw", chain, "--parent", 0, timeout=30)
    assert_one_line(done, 0)
    done, _ = run("list", chain, "--json")
    rows = json.loads(done.stdout)
    assert [r["damaged"] for r in rows] == [False, True, True, True, False]
    assert rows[4]["parent"] == 0 and rows[1]["error"].startswith("its parent links form")


def test_an_image_of_another_chain_is_damage_verify_and_reads_agree(tmp_path):
    chain, _ = make_chain(tmp_path, 2)
    (tmp_path / "other").mkdir()
    other, _ = make_chain(tmp_path / "other", 2)
    image_path(chain, 1).write_bytes(image_path(other, 1).read_bytes())
    done, _ = run("verify", chain)
    assert done.returncode == 1 and "another chain" in done.stdout, done.stdout
    done, _ = run("restore", chain, tmp_path / "o.raw", "--point", 1)
    assert_one_line(done, 2, "another chain")
    done, _ = run("restore", chain, tmp_path / "o.raw", "--point", 0)
    assert_one_line(done, 0)


# ------------------------------------------------------------- hostile sizes
HOSTILE_HEADERS: dict[str, dict[str, object]] = {
    "volume size 2^62": {"volume_size": 1 << 62},
    "volume size 2^64-1": {"volume_size": (1 << 64) - 1},
    "block size 2^31": {"block_size": 1 << 31},
    "block size 0": {"block_size": 0},
    "kind 7": {"kind": 7},
    "full with a parent": {"parent_id": b"\x01" * 16},
}


def _index_case(change: Callable[[np.ndarray], None]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(index: np.ndarray) -> np.ndarray:
        change(index)
        return index
    return apply


def _set(field: str, row: int, value: int) -> Callable[[np.ndarray], np.ndarray]:
    return _index_case(lambda index: index[field].__setitem__(row, value))


HOSTILE_INDEXES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "offset wrapping near 2^64": _set("offset", 3, (1 << 64) - 100),
    "offset 2^63": _set("offset", 3, 1 << 63),
    "offset + length wraps": _set("offset", 0, (1 << 64) - BS + 1),
    "offset inside the header": _set("offset", 5, 100),
    "length 2^32-1": _set("length", 3, (1 << 32) - 1),
    "position 2^63": _set("position", 31, 1 << 63),
    "position repeated": _set("position", 4, 3),
    "zlib flag on a raw payload": _set("flags", 3, FLAG_ZLIB),
    "unknown flag": _set("flags", 3, 1 << 20),
    "encrypted flag in a plain image": _set("flags", 3, 4),
}

HOSTILE_FOOTERS: dict[str, dict[str, int]] = {
    "index count 2^60": {"index_count": 1 << 60},
    "index count 2^64-1": {"index_count": (1 << 64) - 1},
    "index offset 2^64-1": {"index_offset": (1 << 64) - 1},
    "index offset 0": {"index_offset": 0},
}


@pytest.mark.parametrize("case", [*HOSTILE_HEADERS, *HOSTILE_INDEXES, *HOSTILE_FOOTERS])
def test_hostile_structure_is_refused_before_allocation_and_stays_local(tmp_path, case):
    chain, states = make_chain(tmp_path, 2)
    target = image_path(chain, 0 if case in HOSTILE_HEADERS else 1)
    if case in HOSTILE_HEADERS:
        rewrite_header(target, **HOSTILE_HEADERS[case])
    elif case in HOSTILE_INDEXES:
        rewrite_index(target, HOSTILE_INDEXES[case])
    else:
        rewrite_footer(target, **HOSTILE_FOOTERS[case])
    damaged_point = 0 if target == image_path(chain, 0) else 1
    peaks = []
    for command in (["list", chain, "--json"], ["verify", chain],
                    ["restore", chain, tmp_path / "o.raw", "--point", damaged_point],
                    ["export", chain, tmp_path / "o.vhd", "--point", damaged_point],
                    ["restore", chain, tmp_path / "ok.raw", "--point", 1 - damaged_point]):
        done, peak = run(*command, timeout=60)
        peaks.append(peak)
        if command[0] == "list":
            rows = json.loads(done.stdout)
            assert rows[damaged_point]["damaged"] and rows[damaged_point]["error"]
        elif command[0] == "verify":
            assert done.returncode == 1 and target.name in done.stdout, done.stdout
        elif tmp_path / "ok.raw" in command:
            if damaged_point == 0:  # the incremental depends on it
                assert_one_line(done, 2, "damaged")
            else:
                assert_one_line(done, 0)
                assert (tmp_path / "ok.raw").read_bytes() == states[0]
        else:
            assert_one_line(done, 2, "damaged")
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(("o.", ".o."))]
    assert max(peaks) < PEAK_RSS_LIMIT_MIB, peaks


def test_a_legal_tebibyte_volume_size_is_read_in_bounded_memory(tmp_path):
    """A header may say 2^40 bytes (a grow to 1 TiB is legal): the point restores as a
    sparse 1 TiB file and exports, each in bounded memory, since nothing is held per
    block of the volume; the blocks the chain holds come back exactly."""
    chain, states = make_chain(tmp_path, 2)
    rewrite_header(image_path(chain, 1), volume_size=1 << 40)
    for command in (["verify", chain],
                    ["restore", chain, tmp_path / "o.raw"],
                    ["export", chain, tmp_path / "o.vhd", "--format", "vhd-dynamic"]):
        done, peak = run(*command, timeout=120)
        assert_one_line(done, 0)
        assert peak < PEAK_RSS_LIMIT_MIB, (command[0], peak)
    restored = tmp_path / "o.raw"
    assert restored.stat().st_size == 1 << 40
    with restored.open("rb") as fh:
        assert fh.read(len(states[1])) == states[1]
        fh.seek((1 << 40) - BS)
        assert fh.read() == bytes(BS)
    assert restored.stat().st_blocks * 512 < 16 << 20  # holes, not a written terabyte


# ------------------------------------------------------------------ VHD bounds
def _vhd(tmp_path: Path) -> Path:
    source = tmp_path / "d.raw"
    source.write_bytes(np.random.default_rng(2).bytes(3 << 20))
    out = tmp_path / "d.vhd"
    subprocess.run([sys.executable, "-m", "blockforensics.cli", "export", str(source),
                    str(out)], check=True, capture_output=True)
    return out


def _rewrite_vhd(path: Path, footer: dict[str, int] | None = None,
                 header: dict[str, int] | None = None) -> None:
    """Change the dynamic VHD's footer (both copies) or header, checksums made valid."""
    from dataclasses import replace

    from blockforensics.formats.vhd import DynamicHeader

    raw = bytearray(path.read_bytes())
    f = VhdFooter.unpack(bytes(raw[-512:]))
    if footer:
        packed = replace(f, **footer).sealed().pack()
        raw[-512:] = packed
        raw[:512] = packed
    if header:
        at = 512
        h = DynamicHeader.unpack(bytes(raw[at : at + 1024]))
        raw[at : at + 1024] = replace(h, **header).sealed().pack()
    path.write_bytes(raw)


HOSTILE_VHDS: dict[str, tuple[dict[str, int] | None, dict[str, int] | None]] = {
    "BAT of 0xFFFFFFFF entries": (None, {"max_table_entries": 0xFFFFFFFF}),
    "table offset 2^63": (None, {"table_offset": 1 << 63}),
    "table offset 0xFFFFFFFFFFFFFFFF": (None, {"table_offset": 0xFFFFFFFFFFFFFFFF}),
    "header offset 0xFFFFFFFFFFFFFFFF (no offset)": ({"data_offset": 0xFFFFFFFFFFFFFFFF}, None),
    "header offset 2^63": ({"data_offset": 1 << 63}, None),
    "disk size 2^63": ({"current_size": 1 << 63}, None),
    "block size 2^31": (None, {"block_size": 1 << 31}),
}


@pytest.mark.parametrize("case", HOSTILE_VHDS)
def test_hostile_vhd_is_refused_before_allocation(tmp_path, case):
    path = _vhd(tmp_path)
    _rewrite_vhd(path, *HOSTILE_VHDS[case])
    for command in (["export", path, tmp_path / "o.vhd"], ["backup", path, tmp_path / "c"]):
        done, peak = run(*command)
        assert_one_line(done, 2, path.name)
        assert peak < PEAK_RSS_LIMIT_MIB, peak
        assert not (tmp_path / "o.vhd").exists()


def test_case_counts():
    """How many hostile cases of each family this module tries (for the closing note)."""
    counts = {"image header": len(HOSTILE_HEADERS), "image index": len(HOSTILE_INDEXES),
              "image footer": len(HOSTILE_FOOTERS), "VHD": len(HOSTILE_VHDS),
              "parent links": 2}
    print(f"\nhostile cases per family: {counts}")
    assert sum(counts.values()) >= 25


# ------------------------------------------------------------------ damage local
@pytest.mark.parametrize("damage", ["truncated", "index bit flipped", "header bit flipped"])
def test_a_damaged_newest_image_takes_only_its_own_point(tmp_path, damage):
    chain, states = make_chain(tmp_path, 2)
    newest = image_path(chain, 1)
    raw = bytearray(newest.read_bytes())
    if damage == "truncated":
        del raw[-1000:]
    else:
        raw[len(raw) - Footer.SIZE - 100 if damage.startswith("index") else 200] ^= 0x04
    newest.write_bytes(raw)
    done, _ = run("list", chain, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["damaged"], bool(r["error"])) for r in rows] == [(False, False), (True, True)]
    done, _ = run("list", chain)
    assert done.returncode == 0 and "damaged" in done.stdout
    done, _ = run("restore", chain, tmp_path / "zero.raw", "--point", 0)
    assert_one_line(done, 0)
    assert (tmp_path / "zero.raw").read_bytes() == states[0]
    done, _ = run("consolidate", chain, "--point", 1)
    assert_one_line(done, 2, "damaged")
    done, _ = run("backup", tmp_path / "disk.raw", chain)  # onto the damaged newest: refused
    assert_one_line(done, 2, "--full")
    before = sorted(p.name for p in chain.iterdir())
    done, _ = run("repair", chain)  # says, does not drop
    assert done.returncode == 0 and "would drop 1 of 2 points" in done.stdout, done.stdout
    assert sorted(p.name for p in chain.iterdir()) == before
    done, _ = run("repair", chain, "--apply")
    assert done.returncode == 0 and "dropped 1 of 2" in done.stdout, done.stdout
    assert newest.exists()  # left for examination, unlisted
    done, _ = run("verify", chain)
    assert done.returncode == 0, done.stdout
    for options in (["--full"], ["--parent", "0"], []):
        done, _ = run("backup", tmp_path / "disk.raw", chain, *options)
        assert_one_line(done, 0)
    done, _ = run("restore", chain, tmp_path / "newest.raw")
    assert_one_line(done, 0)
    assert (tmp_path / "newest.raw").read_bytes() == states[1]

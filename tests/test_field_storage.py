"""Chains where investigators keep them: an exFAT stick (no hard links, no sparse files,
no POSIX modes), a write-blocked copy (read-only mount), a user without root.  Real
mounts (exfat-fuse on a loop device, a read-only bind mount), the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import loop_device, mounted_with, require_tools

MiB = 1 << 20


def bf(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


def ok(*args: object) -> str:
    done = bf(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("these tests mount file systems: CI runs as root")
        pytest.skip("mounts need root")


def volume(path: Path, seed: int, zero_every: int = 3) -> bytes:
    """A 4 MiB raw volume of random 4 KiB blocks, every ``zero_every``-th one zeros."""
    blocks = np.random.default_rng(seed).integers(0, 256, (1024, 4096), dtype=np.uint8)
    blocks[::zero_every] = 0
    path.write_bytes(blocks.tobytes())
    return blocks.tobytes()


@pytest.fixture
def exfat(tmp_path: Path) -> Iterator[Path]:
    """An exFAT volume on a loop device, mounted by exfat-fuse (the kernel here has no
    exfat or vfat driver); unmounted after."""
    need_root()
    require_tools("mkfs.exfat", "mount.exfat-fuse", "losetup")
    backing = tmp_path / "stick.img"
    with open(backing, "wb") as fh:
        fh.truncate(96 * MiB)
    subprocess.run(["mkfs.exfat", backing], check=True, capture_output=True)
    with loop_device(backing) as device, \
            mounted_with(["mount.exfat-fuse", device], tmp_path / "stick") as stick:
        yield stick


def test_a_chain_on_an_exfat_stick_works_end_to_end(exfat: Path, tmp_path: Path) -> None:
    """exFAT has no hard links (a new image is named by a rename that never replaces a
    file: it used to fail with 'Operation not permitted'), no holes and no modes."""
    source = tmp_path / "disk.raw"
    chain = exfat / "case chain"
    points = []
    for seed in (1, 2, 3):
        points.append(volume(source, seed, zero_every=2 + seed))
        ok("backup", source, chain)
    assert "rewritten" in ok("consolidate", chain, "--point", 1)  # not grown in place: no links
    assert sorted(os.listdir(chain)) == ["0001-full-c1.bfi", "0002-incr.bfi", "chain.json"]
    first, second = points[1:]
    ok("verify", chain)
    for point, expected in ((0, first), (1, second)):
        out = exfat / f"point {point}.img"
        ok("restore", chain, out, "--point", point)
        assert out.read_bytes() == expected
    ok("restore", chain, exfat / "point 1.img", "--point", 0, "--force")  # over a file
    assert (exfat / "point 1.img").read_bytes() == first
    ok("export", chain, exfat / "p1.vhd", "--format", "vhd-dynamic")
    compare = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "raw",
                              exfat / "p1.vhd", source], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert not [n for n in os.listdir(chain) if n.startswith(".")]


@pytest.fixture
def write_blocked(tmp_path: Path) -> Iterator[tuple[Path, bytes]]:
    """A two-point chain with a leftover temporary (a crashed writer on the original
    machine), seen through a read-only bind mount; the newest point's bytes."""
    need_root()
    source = tmp_path / "disk.raw"
    volume(source, 1)
    chain = tmp_path / "chain"
    ok("backup", source, chain)
    newest = volume(source, 2)
    ok("backup", source, chain)
    leftover = chain / ".pending-0123.bfi.tmp"
    leftover.write_bytes(b"half an image")
    os.utime(leftover, (0, 0))
    view = tmp_path / "evidence"
    view.mkdir()
    subprocess.run(["mount", "--bind", chain, view], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", view], check=True)
        yield view, newest
    finally:
        subprocess.run(["umount", view], check=True)


def test_a_write_blocked_chain_is_read_and_writers_say_why_not(write_blocked: tuple[Path, bytes],
                                                                tmp_path: Path) -> None:
    """Readers used to clean the leftover up first and died on EROFS ('…tmp: Read-only
    file system'); a writer named a temporary file instead of the reason."""
    view, newest = write_blocked
    ok("list", view)
    ok("verify", view)
    ok("diff", view, 0, 1)
    ok("restore", view, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == newest
    ok("export", view, tmp_path / "out.vhd")
    for args in (["backup", tmp_path / "disk.raw", view], ["consolidate", view]):
        done = bf(*args)
        assert done.returncode == 2
        assert done.stderr == (f"blockforensics: error: {view}: on a read-only file system; "
                               "this command writes into the chain: run it on a writable copy\n")
    assert ".pending-0123.bfi.tmp" in os.listdir(view)


def test_mount_without_the_right_to_mount_is_one_line(tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN (a user who is not root) FUSE cannot mount: a traceback
    (RuntimeError: 4) before; now one line saying so, exit 2."""
    need_root()
    require_tools("setpriv", "fusermount3")
    source = tmp_path / "disk.raw"
    volume(source, 1)
    ok("backup", source, tmp_path / "chain")
    (tmp_path / "mnt").mkdir()
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    for args in (["mount", tmp_path / "chain", tmp_path / "mnt"],
                 ["verify", tmp_path / "chain", "--fs"]):
        done = subprocess.run([*drop, sys.executable, "-m", "blockforensics.cli",
                               *map(str, args)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "RuntimeError" not in done.stderr
        assert done.stderr.splitlines()[-1].endswith(
            "FUSE mount failed (mounting failed: it needs root, or a fusermount3 this user "
            "may run)")


@pytest.fixture
def fat32(tmp_path: Path) -> Iterator[Path]:
    """A FAT32 volume mounted by fusefat (no vfat driver in this kernel); unmounted after."""
    need_root()
    require_tools("mkfs.vfat", "fusefat")
    backing = tmp_path / "fat32.img"
    subprocess.run(["mkfs.vfat", "-F", "32", "-C", backing, str(64 * 1024)], check=True,
                   capture_output=True)
    stick = tmp_path / "fat32"
    stick.mkdir()
    subprocess.run(["fusefat", "-o", "rw+", backing, stick], check=True, capture_output=True)
    try:
        yield stick
    finally:
        subprocess.run(["umount", stick], check=True)


def test_an_output_over_4_gib_is_refused_up_front_on_fat32(fat32: Path, tmp_path: Path) -> None:
    """A 5 GiB volume restored or exported raw/fixed onto FAT32 is refused before a byte
    is written, naming the limit (before: 'File too large' once 4 GiB had been written,
    or fusefat's 'Operation not permitted')."""
    source = tmp_path / "sparse.raw"
    with open(source, "wb") as fh:
        fh.truncate(5 << 30)
        fh.write(np.random.default_rng(5).bytes(MiB))
    chain = tmp_path / "chain"
    ok("backup", source, chain)
    for args in (["restore", chain, fat32 / "big.img"],
                 ["export", chain, fat32 / "big.vhd", "--format", "vhd-fixed"]):
        done = bf(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"blockforensics: error: {args[2]}: ")
        assert done.stderr.endswith(" bytes in one file, but fuse.fusefat holds at most 4 GiB - "
                                    "1 byte per file: use exFAT, NTFS, ext4 or XFS\n")
    assert os.listdir(fat32) == []


def test_the_size_a_consolidation_checks_on_fat_is_the_merged_image_s(tmp_path: Path) -> None:
    """On FAT a consolidation whose merged image would pass 4 GiB is refused before it
    writes; the size it checks is what the merge stores (payloads exactly, index records
    at most)."""
    from blockforensics import Chain
    from blockforensics.consolidate import _merged_bytes, consolidate

    source, directory = tmp_path / "disk.raw", tmp_path / "chain"
    for seed in (1, 2, 3):
        volume(source, seed, zero_every=2 + seed)
        ok("backup", source, directory)
    with Chain.open(directory) as chain:
        expected = _merged_bytes(chain.layout(1), 0)
    consolidate(directory, 1, rewrite=True)
    with Chain.open(directory) as chain:
        merged = chain.images[0].index
    index_bytes = expected - merged.payload_bytes  # payloads exactly: the rest is records
    assert index_bytes % 56 == 0 and len(merged) <= index_bytes // 56 <= 1024


@pytest.mark.slow
def test_restores_and_raw_or_fixed_exports_onto_fusefat_come_out_right(fat32: Path,
                                                                       tmp_path: Path) -> None:
    """fusefat misplaces a write that starts past the end of a file and refuses even an
    ftruncate to the size a file has: raw and fixed exports, which wrote their data
    first and sized the file after, came out wrong or failed ('Operation not
    permitted') in most runs; they now size the file first, as restores do."""
    source, chain = tmp_path / "disk.raw", tmp_path / "chain"
    data = volume(source, 7)
    ok("backup", source, chain)
    for attempt in range(3):
        for name, args in (("r.img", ["restore"]), ("e.img", ["export", "--format", "raw"]),
                           ("e.vhd", ["export", "--format", "vhd-fixed"])):
            out = fat32 / name
            out.unlink(missing_ok=True)
            ok(args[0], chain, out, *args[1:])
            assert out.read_bytes()[: len(data)] == data, (attempt, name)


_KILLED_MERGE = """
import os, signal, sys
from blockforensics.image.imagefile import ImageWriter
ImageWriter.commit = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from blockforensics.consolidate import consolidate
consolidate(sys.argv[1], 1)
"""


@pytest.mark.slow
def test_a_write_blocked_copy_of_a_half_merged_chain_reads_as_before(tmp_path: Path) -> None:
    """A chain seized after an in-place consolidation died (SIGKILL once every payload was
    appended to the grown image, the merge journal beside it), then write-blocked: no
    cleanup can run, yet every point lists, verifies and restores byte for byte as
    before the merge (the grown image is read as journaled)."""
    need_root()
    source, chain = tmp_path / "disk.raw", tmp_path / "chain"
    points = []
    for seed in (1, 2, 3):
        points.append(volume(source, seed, zero_every=2 + seed))
        ok("backup", source, chain)
    killed = subprocess.run([sys.executable, "-c", _KILLED_MERGE, chain], timeout=120)
    assert killed.returncode == -9
    assert ".chain-merge.tmp" in os.listdir(chain)
    view = tmp_path / "evidence"
    view.mkdir()
    subprocess.run(["mount", "--bind", chain, view], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", view], check=True)
        ok("verify", view)
        assert len(ok("list", view).splitlines()) == 4  # a header, three points
        for point, expected in enumerate(points):
            out = tmp_path / f"p{point}.img"
            ok("restore", view, out, "--point", point)
            assert out.read_bytes() == expected
    finally:
        subprocess.run(["umount", view], check=True)

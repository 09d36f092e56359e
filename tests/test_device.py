"""Restore onto a block device (issue 18, item 2): a real loop device, written in place."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import require_tools
from test_reads import flip_stored_block

from blockforensics.errors import IntegrityError
from blockforensics.image import device
from blockforensics.image.chain import Chain

BS = 4096
N_BLOCKS = 64


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    """A loop device over a 1 MiB file of random bytes (old data to overwrite)."""
    require_tools("losetup")
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "backing.img"
    backing.write_bytes(np.random.default_rng(9).bytes(1 << 20))
    done = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"losetup failed: {done.stderr}")
        pytest.skip(f"no loop device: {done.stderr.strip()}")
    device = Path(done.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["umount", str(device)], capture_output=True)
        subprocess.run(["losetup", "-d", str(device)], capture_output=True)


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, bytes]:
    """A chain whose newest point is a 64-block volume with holes (zero blocks)."""
    data = np.random.default_rng(4).integers(0, 256, (N_BLOCKS, BS), dtype=np.uint8)
    data[10:20] = 0
    source = tmp_path / "disk.raw"
    source.write_bytes(data.tobytes()[:-300])  # a partial last block
    assert run("backup", source, tmp_path / "c", "--all-blocks").returncode == 0
    return tmp_path / "c", source.read_bytes()


def device_bytes(device: Path, n: int) -> bytes:
    with open(device, "rb") as fh:
        return fh.read(n)


def test_restore_writes_into_the_device_in_place(loop, chain):
    directory, expected = chain
    before = os.stat(loop)
    done = run("restore", directory, loop)
    assert done.returncode == 2 and "--force" in done.stderr, done.stderr
    assert device_bytes(loop, 1 << 20) != expected  # untouched
    done = run("restore", directory, loop, "--force")
    assert done.returncode == 0, done.stderr
    assert f"{N_BLOCKS} of {N_BLOCKS} blocks written" in done.stdout, done.stdout
    after = os.stat(loop)
    assert stat.S_ISBLK(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino  # the node itself, not a new file
    assert device_bytes(loop, len(expected)) == expected  # holes came out as zeros


def test_only_changed_writes_just_the_blocks_that_differ(loop, chain):
    directory, expected = chain
    assert run("restore", directory, loop, "--force").returncode == 0
    with open(loop, "r+b") as fh:
        for block in (3, 15, N_BLOCKS - 1):  # a data block, a hole, the partial last block
            fh.seek(block * BS + 7)
            fh.write(b"changed")
        fh.seek(len(expected) + 10)  # past the volume: not the volume's business
        fh.write(b"beyond")
    done = run("restore", directory, loop, "--force", "--only-changed")
    assert done.returncode == 0, done.stderr
    assert f"3 of {N_BLOCKS} blocks written" in done.stdout, done.stdout
    assert device_bytes(loop, len(expected)) == expected
    done = run("restore", directory, loop, "--force", "--only-changed")
    assert f"0 of {N_BLOCKS} blocks written" in done.stdout, done.stdout


def test_a_device_too_small_or_mounted_is_refused(loop, chain, tmp_path):
    require_tools("mkfs.ext4")
    directory, _ = chain
    big = tmp_path / "big.raw"
    big.write_bytes(os.urandom(BS) * 300)  # 1.2 MiB: more than the device holds
    assert run("backup", big, tmp_path / "big", "--all-blocks").returncode == 0
    done = run("restore", tmp_path / "big", loop, "--force")
    assert done.returncode == 2 and "the device has 1048576 bytes" in done.stderr, done.stderr
    subprocess.run(["mkfs.ext4", "-q", "-F", str(loop)], check=True, capture_output=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", str(loop), str(mountpoint)], check=True, capture_output=True)
    try:
        done = run("restore", directory, loop, "--force")
        assert done.returncode == 2 and "mounted on" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_damaged_block_stops_the_restore_and_says_what_was_written(loop, chain,
                                                                      monkeypatch):
    """Each chunk is checked before it is written: a damaged block in the first chunk
    leaves the device untouched (exit 1 naming the block); one in a later chunk leaves
    the chunks before it written, and the error says which blocks."""
    directory, expected = chain
    old = device_bytes(loop, 1 << 20)
    flip_stored_block(directory, "0000-full.bfi", 40)
    done = run("restore", directory, loop, "--force")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "0000-full.bfi: block 40:" in done.stderr and "nothing written" in done.stderr
    assert device_bytes(loop, 1 << 20) == old
    monkeypatch.setattr(device, "CHUNK_BYTES", 16 * BS)
    with Chain.open(directory) as opened, \
            pytest.raises(IntegrityError, match=f"block 40: .*; {loop}: 32 blocks before "
                                                "block 32 written, the device from block 32 "
                                                "on as it was"):
        device.restore_to_device(opened, -1, loop, force=True)
    assert device_bytes(loop, 1 << 20) == expected[: 32 * BS] + old[32 * BS :]

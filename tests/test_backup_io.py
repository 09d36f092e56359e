"""The backup's I/O path: read buffers reused batch after batch, a plain image's blocks
written with direct I/O (never copied into the page cache), early writeback of
everything else, and the fallbacks when a file system refuses direct I/O.

Page-cache residency is read with ``fincore`` (util-linux), the real thing: direct I/O
leaves an image's payloads out of the page cache, buffered writes leave them in.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from blockforensics import fileio
from blockforensics.crypto import KeySource
from blockforensics.formats.raw import RawDisk
from blockforensics.image import backup as backup_module
from blockforensics.image import imagefile
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.image.verify import verify
from blockforensics.volume import Volume

BS = 4096
N_BLOCKS = 2048  # 8 MiB

needs_fincore = pytest.mark.skipif(shutil.which("fincore") is None,
                                   reason="fincore (util-linux) is not installed")


def _resident(path: Path) -> int:
    """Bytes of ``path`` in the page cache."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def _source(tmp_path: Path) -> Path:
    """An 8 MiB raw volume: random blocks, with runs of zero blocks between them."""
    rng = np.random.default_rng(9)
    blocks = rng.integers(0, 256, (N_BLOCKS, BS), dtype=np.uint8)
    blocks[100:140] = 0
    blocks[1500:1501] = 0
    path = tmp_path / "source.raw"
    path.write_bytes(blocks.tobytes())
    return path


@pytest.fixture(autouse=True)
def _durable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers as they run outside tests: fsync on, hence direct I/O."""
    monkeypatch.setattr(fileio, "SYNC", True)


def _backed_up(directory: Path, source: Path, key: KeySource | None = None) -> int:
    """Back ``source`` up (a full) into a new chain in ``directory``: the bytes of its
    image in the page cache right after the backup.  Checked: the point restores to the
    source, verify is clean."""
    with Chain.create(directory, key) as chain, RawDisk(source) as disk:
        backup(chain, disk)
        resident = _resident(chain.images[0].path)
        assert restore(chain, 0).tobytes() == source.read_bytes()
    assert verify(directory, key).ok
    return resident


@needs_fincore
def test_a_plain_full_writes_its_blocks_around_the_page_cache(tmp_path: Path) -> None:
    source = _source(tmp_path)
    payload = (N_BLOCKS - 41) * BS
    assert _backed_up(tmp_path / "plain", source) < payload // 8  # its header and index
    # an encrypted image's payloads (4124 bytes each) cannot be aligned: buffered writes
    key_path = tmp_path / "key"
    KeySource.generate_file(key_path)
    assert _backed_up(tmp_path / "sealed", source, KeySource.from_file(key_path)) > payload // 2


def _refuse_direct_io(monkeypatch: pytest.MonkeyPatch, where: str) -> list[str]:
    """Make direct I/O fail with EINVAL (a file system without it, or one asking a
    coarser alignment) either when ``O_DIRECT`` is set or at the write; the refusals."""
    refused: list[str] = []
    real_fcntl, real_writev = fcntl.fcntl, os.writev

    def fake_fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        if where == "open" and cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            refused.append("fcntl")
            raise OSError(errno.EINVAL, "no direct I/O here")
        return real_fcntl(fd, cmd, arg)

    def fake_writev(fd: int, buffers: list[memoryview]) -> int:
        if where == "write" and real_fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append("writev")
            raise OSError(errno.EINVAL, "misaligned")
        return real_writev(fd, buffers)

    monkeypatch.setattr(imagefile.fcntl, "fcntl", fake_fcntl)
    monkeypatch.setattr(imagefile.os, "writev", fake_writev)
    return refused


@needs_fincore
@pytest.mark.parametrize("where", ["open", "write"])
def test_without_direct_io_the_blocks_are_written_buffered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    refused = _refuse_direct_io(monkeypatch, where)
    source = _source(tmp_path)
    resident = _backed_up(tmp_path / "chain", source)
    assert refused == ["fcntl" if where == "open" else "writev"]  # given up after one try
    assert resident > (N_BLOCKS - 41) * BS // 2  # written through the page cache


@needs_fincore
def test_without_fsync_a_plain_full_stays_in_the_page_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``BLOCKFORENSICS_FSYNC=0`` asks page-cache speed: no direct I/O."""
    monkeypatch.setattr(fileio, "SYNC", False)
    assert _backed_up(tmp_path / "chain", _source(tmp_path)) > (N_BLOCKS - 41) * BS // 2


@needs_fincore
@pytest.mark.parametrize("native", [True, False])
def test_writeback_drops_what_lies_a_window_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """Ranges a window behind the last write are on disk and out of the page cache; the
    file reads back whole.  Without the C extension ``posix_fadvise`` drops them."""
    if not native:
        monkeypatch.setattr(fileio, "sync_file_range", None)
    path = tmp_path / "file"
    data = np.random.default_rng(1).integers(0, 256, 16 << 20, dtype=np.uint8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writeback = fileio.Writeback(fd, window=2 << 20)
        for offset in range(0, data.size, 1 << 20):
            os.pwrite(fd, data[offset : offset + (1 << 20)], offset)
            writeback(offset, 1 << 20)
        if not native:  # fadvise drops only what is written back: wait for it
            os.fsync(fd)
            time.sleep(0.1)
            for offset in range(0, data.size, 1 << 20):
                writeback(offset, 1 << 20)
    finally:
        os.close(fd)
    assert _resident(path) <= (4 << 20 if native else 0)
    assert path.read_bytes() == data.tobytes()


def test_writeback_sends_whole_pages_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """Writes that start and end inside pages (a dynamic VHD's data lies 512 bytes past
    a page) have only their whole pages sent, each once: a page the next write completes
    is not written back half-filled first and again after."""
    if fileio.sync_file_range is None:
        pytest.skip("the C extension is not built")
    started: list[tuple[int, int]] = []
    real = fileio.sync_file_range

    def record(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if flags == fileio.SYNC_FILE_RANGE_WRITE:
            started.append((offset, nbytes))
        real(fd, offset, nbytes, flags)

    monkeypatch.setattr(fileio, "sync_file_range", record)
    monkeypatch.setattr(fileio, "SYNC", True)
    fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writeback = fileio.Writeback(fd)
        for offset in range(512, 8 << 20, 1 << 20):
            os.pwrite(fd, bytes(1 << 20), offset)
            writeback(offset, 1 << 20)
        writeback(100, 200)  # inside one page: nothing whole to send
    finally:
        os.close(fd)
    page = fileio.PAGE
    assert all(offset % page == 0 and nbytes % page == 0 for offset, nbytes in started)
    assert [o for o, _ in started[1:]] == [o + n for o, n in started[:-1]]  # once, in order
    assert started[0][0] == 0 and sum(n for _, n in started) == (8 << 20) // page * page


def test_read_buffers_are_reused_only_once_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 4 blocks cycle through the three read buffers while a slow writer holds
    each batch a while; batches with nothing to store (unchanged, or all zero) come in
    between: every point still restores exactly (a buffer reused before its write, or a
    writer not waited for, would store another batch's blocks)."""
    monkeypatch.setattr(backup_module, "CHUNK_BYTES", 4 * BS)
    write = imagefile.ImageWriter._write

    def slow_write(self: imagefile.ImageWriter, *args: object) -> None:
        time.sleep(0.02)
        write(self, *args)

    monkeypatch.setattr(imagefile.ImageWriter, "_write", slow_write)
    rng = np.random.default_rng(4)
    first = rng.integers(0, 256, (64, BS), dtype=np.uint8)
    first[8:16] = 0  # two batches of zero blocks: nothing stored
    second = first.copy()
    second[0:4] = rng.integers(0, 256, (4, BS), dtype=np.uint8)  # batch 0 changed
    second[24:36] = rng.integers(0, 256, (12, BS), dtype=np.uint8)  # batches 6-8 changed
    second[60] = 7  # one block of the last batch
    with Chain.create(tmp_path / "c") as chain:
        for blocks in (first, second):
            backup(chain, Volume.from_bytes(blocks.tobytes(), BS))
        for point, blocks in enumerate((first, second)):
            assert restore(chain, point).tobytes() == blocks.tobytes(), point
        assert [row["blocks"] for row in chain.rows()] == [56, 17]
    assert verify(tmp_path / "c").ok

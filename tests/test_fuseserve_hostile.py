"""The C FUSE server (blockforensics._fuseserve) under hostile conditions over real mounts:
image files cut shorter while served, writes, reads at and past the end, many readers,
open/close cycles."""

from __future__ import annotations

import errno
import mmap
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from chains import build_chain
from support import mounted, serving
from test_fuseserve import MODES, mountpoint, pread_all  # noqa: F401 (a fixture)
from test_stored_checks import as_written_before

from blockforensics.expose import mfusepy

KiB = 1024
MiB = 1 << 20
N_BLOCKS = 1300  # 5.1 MiB of 4 KiB blocks
READERS = 8  # threads reading at once: the four workers kept busy
ROUNDS = 4


@MODES
def test_an_image_cut_shorter_while_served_fails_only_the_reads_of_its_lost_part(
        mountpoint, tmp_path, direct):  # noqa: F811 (the fixture)
    """Reads of the part of an image file cut off while it is mapped and served are EIO
    (page cache: short, or EIO where they start in it), the rest still the point's bytes;
    no SIGBUS ends the server, which unmounts cleanly."""
    directory = tmp_path / "chain"
    data = next(iter(build_chain(directory, [None], n_blocks=N_BLOCKS).values()))
    data += bytes(-len(data) % 512)  # disk.raw: whole sectors
    raw = mountpoint / "disk.raw"
    argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(directory),
            str(mountpoint), *([] if direct else ["--page-cache"])]
    # reads of 64 KiB and more (replied from the mappings) ending inside blocks, and small
    # ones (copied)
    reads = [(offset, size) for offset in range(0, len(data), 200 * KiB)
             for size in (64 * KiB + 1000, 300 * KiB + 2049, 4 * KiB, 1000)]
    with serving(argv, mountpoint) as server:
        assert raw.read_bytes() == data  # mapped, checked
        image = next(directory.glob("*.bfi"))
        os.truncate(image, image.stat().st_size // 2)
        failed = []
        for offset, size in reads:
            try:
                got = pread_all(raw, offset, size)
            except OSError as exc:
                assert exc.errno == errno.EIO, (offset, size)
                failed.append(offset)
                continue
            assert got == data[offset : offset + len(got)], (offset, size)
            assert len(got) == min(size, len(data) - offset) or not direct, (offset, size)
        assert server.proc.poll() is None, "the server ended"
        assert failed and failed[0] > len(data) // 4 and failed[-1] == reads[-1][0]
        assert pread_all(raw, 0, 256 * KiB) == data[: 256 * KiB]
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        server.proc.wait(timeout=10)
    assert server.proc.returncode == 1, server.err  # reads failed their check
    assert not mounted(mountpoint)
    assert "truncated payload" in server.err


@pytest.mark.slow
def test_an_image_cut_shorter_under_concurrent_readers_does_not_end_the_server(
        mountpoint, tmp_path):  # noqa: F811 (the fixture)
    """The image cut shorter while eight readers ask for blocks not checked yet: a worker
    between faulting a run in and checking it meets lost pages (SIGBUS there), falls back
    and answers; every read is the point's bytes or EIO, the server stays up.  Rounds: the
    image's lost part written back, read and cut again (a round hits a worker checking
    about every other time)."""
    directory = tmp_path / "chain"
    data = next(iter(build_chain(directory, [None], n_blocks=N_BLOCKS * 8).values()))
    data += bytes(-len(data) % 512)
    image = next(directory.glob("*.bfi"))
    as_written_before(image)  # SHA-256: longer checks
    stored = image.read_bytes()
    raw = mountpoint / "disk.raw"
    argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(directory),
            str(mountpoint)]
    part = len(data) // READERS // MiB * MiB
    with serving(argv, mountpoint) as server:
        for _ in range(ROUNDS):
            started = threading.Barrier(READERS + 1)
            results: list[tuple[int, bytes | int]] = []

            def read(first: int, started: threading.Barrier = started,
                     results: list[tuple[int, bytes | int]] = results) -> None:
                fd = os.open(raw, os.O_RDONLY)
                try:
                    for i, offset in enumerate(range(first, first + part, MiB)):
                        if i == 2:
                            started.wait()
                        try:
                            results.append((offset, os.pread(fd, MiB, offset)))
                        except OSError as exc:
                            results.append((offset, exc.errno))
                finally:
                    os.close(fd)

            threads = [threading.Thread(target=read, args=(k * part,))
                       for k in range(READERS)]
            for thread in threads:
                thread.start()
            started.wait()
            os.truncate(image, len(stored) // READERS)
            for thread in threads:
                thread.join()
            assert server.proc.poll() is None, server.proc.communicate()
            for offset, got in results:
                # a read of two requests (its buffer not page-aligned) whose second
                # fails is short
                assert got == errno.EIO or (got and got == data[offset : offset + len(got)]), offset
            assert any(got == errno.EIO for _, got in results)
            with image.open("r+b") as fh:  # the lost part back
                fh.seek(len(stored) // READERS)
                fh.write(stored[len(stored) // READERS :])
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        server.proc.wait(timeout=10)
    assert server.proc.returncode == 1, server.err  # reads failed their check


def server_state(pid: int) -> tuple[int, int]:
    """The server's open file descriptors and resident KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss


@MODES
def test_hostile_use_of_the_mount_fails_cleanly_and_leaks_nothing(
        mountpoint, tmp_path, direct):  # noqa: F811 (the fixture)
    """Writes of every kind are EROFS; reads at and past the end and of 0 bytes are empty;
    a mapping's partial last page and eight threads' random reads are the point's bytes;
    2000 open/read/close cycles leave the server's descriptors and memory as they were."""
    directory = tmp_path / "chain"
    data = next(iter(build_chain(directory, [None], n_blocks=N_BLOCKS,
                                 sizes=[N_BLOCKS * 4096 - 1000]).values()))
    data += bytes(-len(data) % 512)
    assert len(data) % mmap.PAGESIZE  # a partial last page
    raw = mountpoint / "disk.raw"
    argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(directory),
            str(mountpoint), *([] if direct else ["--page-cache"])]
    with serving(argv, mountpoint) as server:
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC,
                      os.O_WRONLY | os.O_CREAT):
            with pytest.raises(OSError) as refused:
                os.open(raw, flags)
            assert refused.value.errno == errno.EROFS
        for argv_ in (["touch", str(raw)], ["truncate", "-s", "0", str(raw)],
                      ["mkdir", str(mountpoint / "d")], ["rm", str(raw)]):
            done = subprocess.run(argv_, capture_output=True, text=True)
            assert done.returncode != 0 and "Read-only file system" in done.stderr, argv_
        assert os.statvfs(mountpoint).f_files == len(os.listdir(mountpoint))
        size = raw.stat().st_size
        assert size == len(data)
        fd = os.open(raw, os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, size) == os.pread(fd, 4096, size + 12345) == b""
            assert os.pread(fd, 0, 100) == b""
            assert os.pread(fd, MiB, size - 700) == data[-700:]
            with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ) as mapped:
                assert mapped[size - 700 :] == data[-700:]
        finally:
            os.close(fd)
        wrong: list[tuple[int, int]] = []

        def read(seed: int) -> None:
            rng = random.Random(seed)
            with raw.open("rb", buffering=0) as fh:
                for _ in range(100):
                    offset = rng.randrange(size + 100)
                    n = rng.choice([1, 511, 4096, 64 * KiB, 70000, MiB, 3 * MiB])
                    if os.pread(fh.fileno(), n, offset) != data[offset : offset + n]:
                        wrong.append((offset, n))

        threads = [threading.Thread(target=read, args=(seed,)) for seed in range(READERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []
        before = server_state(server.proc.pid)
        for i in range(2000):
            fd = os.open(raw, os.O_RDONLY)
            os.pread(fd, 100, i * 4099)
            os.close(fd)
        fds, rss = server_state(server.proc.pid)
        assert fds == before[0] and rss - before[1] < 1024, (before, fds, rss)
        assert server.proc.poll() is None


def test_two_mounts_in_one_process_end_each_by_its_own_unmount(tmp_path):
    """Two ``mount`` calls in threads of one process: unmounting one ends that one only;
    SIGTERM then ends the other; the signals' actions are the process's own again after
    (SIGTERM's default ends it)."""
    directory = tmp_path / "chain"
    data = next(iter(build_chain(directory, [None], n_blocks=100).values()))
    points = [tmp_path / "a", tmp_path / "b"]
    for point in points:
        point.mkdir()
    code = ("import os, signal, sys, threading, time; from blockforensics.expose import mount;"
            "from blockforensics.image.chain import Chain;"
            "ends = []; disk = Chain.open(sys.argv[1]).disk(0);"
            "threads = [threading.Thread(target=lambda p=p: ends.append((p, mount(disk, p,"
            " partitions=False)))) for p in sys.argv[2:]];"
            "[t.start() for t in threads]; [t.join() for t in threads];"
            "print(ends, flush=True); os.kill(os.getpid(), signal.SIGTERM); time.sleep(5);"
            "print('SIGTERM ignored')")
    with serving([sys.executable, "-c", code, str(directory), *map(str, points)],
                 points[1]) as server:
        deadline = time.monotonic() + 10
        while not mounted(points[0]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for point in points:
            assert (point / "disk.raw").read_bytes()[: len(data)] == data
        subprocess.run(["fusermount3", "-u", str(points[0])], check=True)
        time.sleep(0.5)
        assert not mounted(points[0]) and mounted(points[1])
        assert (points[1] / "disk.raw").read_bytes()[: len(data)] == data
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=10)
    assert server.proc.returncode == -signal.SIGTERM, server.err
    assert "SIGTERM ignored" not in server.out
    assert server.out.count(", 0)") == 2, server.out  # both returned, no read failed
    assert not any(mounted(point) for point in points)


def mapped_kib(pid: int, path: os.PathLike[str]) -> int:
    """KiB of ``path``'s mappings resident in process ``pid`` (its smaps' Rss)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
                inside = len(fields) >= 6 and fields[5] == os.fspath(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def settled_mapped_kib(pid: int, path: os.PathLike[str]) -> int:
    """:func:`mapped_kib`, once the server's requests in flight (the kernel's read-ahead)
    have had 10 s to end, or at once when none of ``path`` is mapped."""
    deadline = time.monotonic() + 10
    while (kib := mapped_kib(pid, path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return kib


@MODES
def test_reads_that_fall_back_from_the_mappings_leave_none_of_them_mapped(
        mountpoint, tmp_path, direct):  # noqa: F811 (the fixture)
    """Reads replied from an image's mapping, and reads whose mapping faults part-way
    (the image cut shorter: the pread path answers), leave none of the image mapped in
    the server (its RSS does not keep what it populated before falling back)."""
    directory = tmp_path / "chain"
    data = next(iter(build_chain(directory, [None], n_blocks=N_BLOCKS).values()))
    image = next(directory.glob("*.bfi"))
    raw = mountpoint / "disk.raw"
    argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(directory),
            str(mountpoint), *([] if direct else ["--page-cache"])]
    with serving(argv, mountpoint) as server:
        assert raw.read_bytes()[: len(data)] == data
        assert settled_mapped_kib(server.proc.pid, image) == 0
        os.truncate(image, image.stat().st_size // 2)
        for offset in range(0, len(data), 512 * KiB):  # across the cut: mapped, then faults
            try:
                pread_all(raw, offset, MiB)
            except OSError as exc:
                assert exc.errno == errno.EIO
        assert settled_mapped_kib(server.proc.pid, image) == 0


class HangingFiles(mfusepy.Operations):
    """The files of ``root``, read-only; a read of one of them hangs while ``switch``
    exists (a hung disk, a dead network file system) and is read once it is removed."""

    use_ns = True

    def __init__(self, root: Path, switch: Path):
        self.root, self.switch = root, switch

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        st = os.lstat(self.root / path.lstrip("/"))
        return {"st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_size": st.st_size,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self.root / path.lstrip("/"))]

    def open(self, path: str, flags: int) -> int:
        return os.open(self.root / path.lstrip("/"), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        while self.switch.exists():
            time.sleep(0.05)
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def serve_hanging(root: Path, switch: Path, where: Path) -> None:
    """Mount :class:`HangingFiles` at ``where`` until unmounted (a child process's)."""
    mfusepy.FUSE(HangingFiles(root, switch), str(where), foreground=True, ro=True)


def test_a_worker_stuck_in_a_hung_image_file_does_not_keep_sigterm_from_unmounting(
        mountpoint, tmp_path):  # noqa: F811 (the fixture)
    """SIGTERM while a read of the served point waits for an image file that hangs: the
    mount goes within seconds (the stuck worker left behind, a warning says so) and the
    server exits 0; the reader gets an error, not a hang."""
    directory = tmp_path / "chain"
    data = next(iter(build_chain(directory, [None], n_blocks=N_BLOCKS).values()))
    hung, switch = tmp_path / "hung", tmp_path / "hang"
    hung.mkdir()
    files = multiprocessing.get_context("fork").Process(
        target=serve_hanging, args=(directory, switch, hung), daemon=True)
    files.start()
    try:
        deadline = time.monotonic() + 10
        while not mounted(hung):
            assert files.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        argv = [sys.executable, "-m", "blockforensics.cli", "mount", str(hung),
                str(mountpoint)]
        with serving(argv, mountpoint) as server:
            raw = mountpoint / "disk.raw"
            assert pread_all(raw, 0, 64 * KiB) == data[: 64 * KiB]
            switch.touch()
            for image in hung.glob("*.bfi"):  # what the kernel cached of it is gone too
                fd = os.open(image, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            outcome: list[object] = []

            def read() -> None:
                try:
                    outcome.append(pread_all(raw, 3 * MiB, MiB))
                except OSError as exc:
                    outcome.append(exc.errno)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            time.sleep(0.5)  # the read is in the server, waiting for the hung file
            assert not outcome
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=30)
            reader.join(timeout=30)
        assert server.proc.returncode == 0, server.err
        assert not mounted(mountpoint)
        assert "still in a read" in server.err
        assert outcome and outcome[0] in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED)
    finally:
        switch.unlink(missing_ok=True)
        subprocess.run(["fusermount3", "-u", "-z", str(hung)], check=False)
        files.join(10)
        if files.is_alive():
            files.kill()

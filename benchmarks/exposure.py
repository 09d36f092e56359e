"""Steps shared by ``bench_vhd.py`` and ``bench_peers.py``: a VHD export against
``qemu-img convert`` like for like, and reads of a point exposed as a file (FUSE
``disk.vhd``) or over NBD (``blockforensics serve``, ``qemu-nbd``) against a file read.

Like for like: our writers fsync before they rename, ``qemu-img convert`` leaves its
output in the page cache.  So our export under ``BLOCKFORENSICS_FSYNC=0`` races the plain
convert, and our default export races the convert followed by ``sync FILE`` and
``qemu-img convert -t writeback`` (qemu-img's own flushing mode: it flushes the output
before it exits).

Reads: every read is done by the same small Python reader (:data:`READER`), 4 MiB at a
time into one buffer, from a file with ``readinto`` or from an NBD export with the
project's NBD client (one request at a time).  The reader times itself from opening
its source to the last byte, so its start-up (the interpreter, and numpy for the NBD
client) is in no figure: what is measured is the server.  Servers run for the whole
race and are stopped (and FUSE unmounted) however it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from common import Step, cli

READ_CHUNK = 4 << 20  # bytes per read
#: reads a file or an nbd URI in READ_CHUNK pieces into one buffer; prints the seconds
#: from opening it to its last byte, and the bytes read
READER = f"""import sys, time
target, chunk = sys.argv[1], {READ_CHUNK}
view = memoryview(bytearray(chunk))
done = 0
if target.startswith("nbd"):
    from blockforensics.nbd.client import NbdConnection
    start = time.perf_counter()
    with NbdConnection.open(target) as conn:
        for done in range(0, conn.size, chunk):
            conn.read_into(done, view[: min(chunk, conn.size - done)])
        done = conn.size
else:
    start = time.perf_counter()
    with open(target, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            done += n
print(time.perf_counter() - start, done)
"""

#: (suffix of our export's label, the qemu-img step it is matched with)
LIKE_FOR_LIKE = ((", no fsync", "qemu-img convert"), ("", "qemu-img convert + sync"),
                 ("", "qemu-img convert -t writeback"))


def drop_cache(*paths: Path) -> None:
    """Write back, then evict the files' pages from the page cache."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(*paths: Path) -> None:
    """Read the files into the page cache (this machine pages out what has not been read
    for a while, freshly written pages included)."""
    for path in paths:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def fresh(output: Path, *sources: Path) -> Callable[[], None]:
    """Before a run: remove the last output, read the sources into the page cache."""
    def run() -> None:
        output.unlink(missing_ok=True)
        warm(*sources)
    return run


def export_steps(label: str, argv: list[str], before: Callable[[], object],
                 env: dict[str, str] | None = None) -> list[Step]:
    """Our export ``argv`` as it runs (fsync) and under ``BLOCKFORENSICS_FSYNC=0``."""
    return [Step(label, argv, before, env),
            Step(f"{label}, no fsync", argv, before, {**(env or {}), "BLOCKFORENSICS_FSYNC": "0"})]


def convert_steps(raw: Path, out: Path, kind: str, before: Callable[[], object],
                  tag: str = "") -> list[Step]:
    """``qemu-img convert`` of ``raw`` to a ``kind`` (dynamic, fixed) VHD: plain, followed by
    ``sync`` of its output, and with ``-t writeback``; labels end in ``tag``."""
    convert = ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={kind}"]
    return [
        Step(f"qemu-img convert{tag}", [*convert, str(raw), str(out)], before),
        Step(f"qemu-img convert + sync{tag}",
             ["sh", "-c", '"$@" && sync "$0"', str(out), *convert, str(raw), str(out)], before),
        Step(f"qemu-img convert -t writeback{tag}",
             [*convert, "-t", "writeback", str(raw), str(out)], before),
    ]


def identical(raw: Path | str, other: Path | str, fmt: str = "vpc") -> bool:
    """``qemu-img compare`` of a raw volume with a ``fmt`` image (or an nbd URI, raw)."""
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt, str(raw),
                           str(other)], check=False).returncode == 0


def allocated(path: Path) -> int:
    """Bytes a file occupies on disk (allocated blocks: a fixed VHD's holes count nothing)."""
    return path.stat().st_blocks * 512


def read_step(label: str, target: Path | str, before: Callable[[], object] | None = None,
              env: dict[str, str] | None = None) -> Step:
    """A timed read of a file or an nbd URI by :data:`READER`."""
    return Step(label, [sys.executable, "-c", READER, str(target)], before, env, timed=True)


def peak_rss_mib(pid: int) -> float:
    """A running process's peak resident memory so far (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"process {pid}: no VmHWM")


@contextmanager
def running(argv: list[str], ready: Callable[[], bool], name: str,
            cleanup: Callable[[], object] | None = None, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server ``argv`` (with ``env`` added to the environment) until the ``with``
    block ends (however it ends): wait for ``ready()``, yield the process; then SIGTERM
    (SIGKILL after 30 s) and ``cleanup()``."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    err.seek(0)
                    raise SystemExit(f"{name} did not start: "
                                     f"{err.read().decode(errors='replace').strip()}")
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if cleanup is not None:
                cleanup()


def mounted_at(mountpoint: Path) -> bool:
    """True while a file system is mounted at ``mountpoint`` (per /proc/mounts)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == target for line in fh)


@contextmanager
def mounted(chain: Path, mountpoint: Path, *more: object, env: dict[str, str] | None = None
            ) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """``blockforensics mount CHAIN MOUNTPOINT [more...]`` (``env`` added to its
    environment) for a ``with`` block: yields ``disk.vhd`` and the mount's process;
    unmounted (lazily if busy) however it ends."""
    mountpoint.mkdir(exist_ok=True)
    disk_vhd = mountpoint / "disk.vhd"

    def unmount() -> None:
        if mounted_at(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)

    with running(cli("mount", chain, mountpoint, *more),
                 lambda: mounted_at(mountpoint) and disk_vhd.exists(),
                 f"mount {chain}", unmount, env=env) as proc:
        yield disk_vhd, proc


@contextmanager
def nbd_server(argv: list[str], socket_path: Path, name: str
               ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An NBD server ``argv`` listening on ``socket_path``, for a ``with`` block: yields its
    ``nbd+unix`` URI and process; stopped (and its socket removed) however it ends."""
    with running(argv, socket_path.is_socket, name,
                 lambda: socket_path.unlink(missing_ok=True)) as proc:
        yield f"nbd+unix:///?socket={socket_path}", proc


def serve(chain: Path, socket_path: Path, *more: object
          ) -> AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    """``blockforensics serve CHAIN --socket PATH [more...]``: see :func:`nbd_server`."""
    return nbd_server(cli("serve", chain, "--socket", socket_path, *more), socket_path,
                      f"serve {chain}")


def qemu_nbd(image: Path, fmt: str, socket_path: Path
             ) -> AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    """``qemu-nbd`` serving ``image`` (as ``fmt``) read-only to any number of clients in
    turn: see :func:`nbd_server`."""
    return nbd_server(["qemu-nbd", "--read-only", "--persistent", "--format", fmt,
                       "--socket", str(socket_path), str(image)], socket_path,
                      f"qemu-nbd {image}")

"""Block-layer operations on a running QEMU over QMP: dirty bitmaps, NBD exports and
image-fleecing snapshots.

- **Tracking**: ``block-dirty-bitmap-add`` (granularity 4096) records every write to
  the node from then on (persistent on a qcow2 node: it survives a clean QEMU
  restart, and is marked inconsistent after a crash).  A bitmap is read over NBD
  through an export that carries it (``qemu:dirty-bitmap:NAME``); an exported bitmap
  is busy (it cannot be cleared, disabled or removed), so each tracking period uses a
  new bitmap, and the exports made here to read one are removed right after.
- **Snapshot** (image fleecing): a qcow2 overlay whose backing is the live node and a
  ``blockdev-backup`` job with ``sync=none`` from the node into it: before the guest
  overwrites a block, the old contents are copied into the overlay, so the overlay
  reads as the disk at the moment of the transaction, while the guest writes on.
  QEMU fails the guest's write when that copy fails, so the overlay's file system
  must hold the whole disk before a snapshot is taken.
  Bitmap actions in the same transaction happen at exactly that moment.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from blockforensics.blockmap import BlockMap
from blockforensics.errors import BlockforensicsError, UsageError
from blockforensics.live.qmp import Qmp, QmpError, action
from blockforensics.nbd.client import NbdAddress, NbdConnection
from blockforensics.nbd.protocol import QEMU_DIRTY_BITMAP
from blockforensics.tools import require

GRANULARITY = 4096  # bytes per dirty-bitmap bit
#: where the per-disk lock files are (world-writable and sticky on Debian and others)
LOCK_DIR = Path("/run/lock") if os.access("/run/lock", os.W_OK) else Path("/tmp")
#: names :meth:`LiveDisk.fresh` gives: ``bf-<kind>-<pid>-<serial>``
FRESH_NAME = re.compile(r"bf-[a-z]+-(\d+)-\d+")
POLL = 0.02  # seconds between polls of query-* commands


class LiveDisk:
    """Block node ``node`` of the QEMU behind ``qmp``, whose NBD server listens on
    ``nbd_socket`` (a Unix socket)."""

    def __init__(self, qmp: Qmp, node: str, nbd_socket: str | os.PathLike[str]):
        self.qmp, self.node, self.nbd_socket = qmp, node, os.fspath(nbd_socket)
        self._serial = 0

    @classmethod
    def of_export(cls, qmp: Qmp, address: NbdAddress, *, filtered: bool = False) -> LiveDisk:
        """The node behind the NBD export at ``address`` (a Unix-socket URI).  While a
        snapshot job runs, QEMU puts its copy-before-write filter between the export and
        the disk: refused unless ``filtered`` (e.g. to find and end a stopped run's)."""
        if address.socket_path is None:
            raise UsageError(f"{address.uri()}: live operations need an nbd+unix:// export")
        for export in qmp.execute("query-block-exports"):
            if export["id"] == address.export or export.get("name") == address.export:
                live = cls(qmp, export["node-name"], address.socket_path)
                if not filtered and live.info()["drv"] == "copy-before-write":
                    raise UsageError(f"{address.uri()}: another snapshot job runs on this "
                                     "disk (its copy-before-write filter is in the way); "
                                     "try again when it is done")
                return live
        names = [e["id"] for e in qmp.execute("query-block-exports")]
        raise UsageError(f"QMP {qmp.path}: no export {address.export!r} (exports: {names})")

    def fresh(self, prefix: str) -> str:
        """A name not used before by this object (bitmaps, exports, nodes, jobs)."""
        self._serial += 1
        return f"{prefix}-{os.getpid()}-{self._serial}"

    def info(self, node: str | None = None) -> dict[str, Any]:
        """QEMU's description of ``node`` (default: this disk's) from
        ``query-named-block-nodes``."""
        node = node or self.node
        for dev in self.qmp.execute("query-named-block-nodes", flat=True):
            if dev["node-name"] == node:
                return dict(dev)
        raise UsageError(f"QMP {self.qmp.path}: no block node {node!r}")

    def remove_leftovers(self, *, mine: bool = False) -> list[str]:
        """Remove the exports, jobs, nodes (and overlay files) and bitmaps a process that
        died left (named by :meth:`fresh` with a process id no longer running; call with
        :meth:`locked` held) — with ``mine``, this process's too (a run unwinding after
        an interruption); their names."""
        def orphan(name: object) -> bool:
            found = FRESH_NAME.fullmatch(str(name))
            if found is None:
                return False
            pid = int(found.group(1))
            return (mine and pid == os.getpid()) or not running(pid)

        gone = []
        for export in self.qmp.execute("query-block-exports"):
            if orphan(export["id"]):
                self.unexport(export["id"])
                gone.append(export["id"])
        for job in self.qmp.execute("query-block-jobs"):
            if orphan(job["device"]):
                self.qmp.execute("block-job-cancel", device=job["device"], force=True)
                while any(j["device"] == job["device"]
                          for j in self.qmp.execute("query-block-jobs")):
                    time.sleep(POLL)
                gone.append(job["device"])
        nodes = {n["node-name"]: n.get("file") for n in
                 self.qmp.execute("query-named-block-nodes", flat=True) if orphan(n["node-name"])}
        while nodes:  # overlays on overlays: the top ones first
            removed = []
            for node, filename in nodes.items():
                try:
                    self.qmp.execute("blockdev-del", **{"node-name": node})
                except QmpError:
                    continue
                removed.append(node)
                if filename and os.path.isfile(filename):  # in a temporary directory
                    os.unlink(filename)
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.dirname(filename))
            if not removed:
                raise UsageError(f"QMP {self.qmp.path}: cannot remove the nodes {sorted(nodes)} "
                                 "a stopped backup left")
            gone += removed
            nodes = {n: f for n, f in nodes.items() if n not in removed}
        for node in self.qmp.execute("query-named-block-nodes", flat=True):
            for bitmap in node.get("dirty-bitmaps", []):  # e.g. method 3's tracking
                if orphan(bitmap.get("name")) and not bitmap["busy"]:
                    self.remove_bitmap(bitmap["name"], node["node-name"])
                    gone.append(bitmap["name"])
        return gone

    def identity(self) -> str:
        """The node and its image file: a chain's record of which bitmap tracks this disk
        holds for this disk only (the same node name on another VM is another disk)."""
        return f"{self.node} on {self.info().get('file')}"

    def size(self) -> int:
        """The node's size in bytes."""
        return int(self.info()["image"]["virtual-size"])

    @contextmanager
    def locked(self) -> Iterator[None]:
        """This disk to one backup at a time: an ``flock`` on a lock file named after the
        node's image file (two QMP sockets of one QEMU, or a filter over the node, share
        it), released when the process ends however it ends.  UsageError when another
        process holds it."""
        where = str(self.info().get("file"))
        name = f"blockforensics-live-{hashlib.sha256(where.encode()).hexdigest()[:16]}.lock"
        # one place whatever TMPDIR says (it may be moved for the snapshot's room)
        fd = os.open(LOCK_DIR / name, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise UsageError(f"{self.node} ({self.info().get('file')}): another backup "
                                 "of this disk is running; try again when it is done") from None
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ bitmaps
    def add_bitmap_action(self, name: str, node: str | None = None) -> dict[str, Any]:
        """Add bitmap ``name``: persistent where the node can store it (a writable qcow2
        of version 3; version 2 cannot), so that a clean QEMU restart keeps the
        tracking."""
        node = node or self.node
        info = self.info(node)
        qcow2 = info["image"].get("format-specific", {})
        persistent = (node == self.node and info["drv"] == "qcow2" and not info["ro"]
                      and qcow2.get("data", {}).get("compat") != "0.10")
        return action("block-dirty-bitmap-add", node=node, name=name,
                      granularity=GRANULARITY, persistent=persistent)

    def disable_bitmap_action(self, name: str) -> dict[str, Any]:
        return action("block-dirty-bitmap-disable", node=self.node, name=name)

    def merge_back_actions(self, target: str, sources: list[str]) -> list[dict[str, Any]]:
        """Actions folding bitmaps ``sources`` into ``target`` (enabled again) and removing
        them: ``target`` then marks every write any of them marked, and goes on."""
        return [action("block-dirty-bitmap-enable", node=self.node, name=target),
                *([action("block-dirty-bitmap-merge", node=self.node, target=target,
                          bitmaps=sources)] if sources else []),
                *(action("block-dirty-bitmap-remove", node=self.node, name=name)
                  for name in sources)]

    def add_bitmap(self, name: str, node: str | None = None) -> None:
        self.qmp.transaction(self.add_bitmap_action(name, node))

    def remove_bitmap(self, name: str, node: str | None = None) -> None:
        self.qmp.execute("block-dirty-bitmap-remove", node=node or self.node, name=name)

    def bitmap_states(self) -> dict[str, dict[str, Any]]:
        """The node's dirty bitmaps by name, as QEMU describes them (``recording``,
        ``busy``, ``persistent``, ``inconsistent``, ``granularity`` in bytes, ``count``
        in bytes)."""
        return {b["name"]: b for b in self.info().get("dirty-bitmaps", []) if "name" in b}

    def bitmaps(self) -> list[str]:
        """Names of the dirty bitmaps on the node."""
        return list(self.bitmap_states())

    def dirty_map(self, bitmap: str, block_size: int = GRANULARITY,
                  node: str | None = None) -> BlockMap:
        """The blocks ``bitmap`` marks, read through a temporary export of the node."""
        with self.exported(node or self.node, bitmaps=(bitmap,)) as address, \
                NbdConnection.open(address, contexts=(QEMU_DIRTY_BITMAP + bitmap,)) as conn:
            return conn.dirty_map(bitmap, block_size)

    # ------------------------------------------------------------------ exports
    @contextmanager
    def exported(self, node: str, *, bitmaps: tuple[str, ...] = (),
                 writable: bool = False) -> Iterator[NbdAddress]:
        """An NBD export of ``node`` for the duration of the block."""
        name = self.fresh("bf-export")
        self.export(name, node, bitmaps=bitmaps, writable=writable)
        try:
            yield NbdAddress(export=name, socket_path=self.nbd_socket)
        finally:
            self.unexport(name)

    def export(self, name: str, node: str | None = None, *, bitmaps: tuple[str, ...] = (),
               writable: bool = False) -> NbdAddress:
        self.qmp.execute("block-export-add", type="nbd", id=name, name=name,
                         **{"node-name": node or self.node}, writable=writable,
                         bitmaps=list(bitmaps))
        return NbdAddress(export=name, socket_path=self.nbd_socket)

    def unexport(self, name: str, timeout: float = 30.0) -> None:
        """Remove export ``name`` and wait until it is gone (its bitmaps are free then)."""
        self.qmp.execute("block-export-del", id=name, mode="hard")
        deadline = time.monotonic() + timeout
        while any(e["id"] == name for e in self.qmp.execute("query-block-exports")):
            if time.monotonic() > deadline:
                raise UsageError(f"QMP: export {name} still present after {timeout} s")
            time.sleep(POLL)

    def copy_node(self, node: str, path: str | os.PathLike[str]) -> Path:
        """The bytes of ``node`` into a raw file (``qemu-img convert`` over NBD)."""
        with self.exported(node) as address:
            done = subprocess.run([require("qemu-img"), "convert", "-f", "raw", "-O", "raw",
                                   address.uri(), os.fspath(path)],
                                  capture_output=True, text=True, check=False)
        if done.returncode:
            raise UsageError(f"qemu-img convert failed: {done.stderr.strip()}")
        return Path(path)

    # ------------------------------------------------------------------ snapshots
    def fleece(self, workdir: str | os.PathLike[str],
               *actions: dict[str, Any]) -> Fleece:
        """A point-in-time snapshot of the node, taken together with ``actions``."""
        return Fleece(self, Path(workdir), actions)


def running(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Fleece:
    """An image-fleecing snapshot: ``node`` reads as the disk at the moment it was
    taken (see the module docstring).  Writable: writes land in its overlay only,
    which is how quiescence writes are made into a snapshot.  ``release()`` (or the
    context's end) cancels the job and deletes the overlay."""

    def __init__(self, live: LiveDisk, workdir: Path, actions: tuple[dict[str, Any], ...]):
        self.live = live
        self.node = live.fresh("bf-fleece")
        self.job = live.fresh("bf-cbw")
        self.overlay = workdir / f"{self.node}.qcow2"
        size = live.size()
        free = shutil.disk_usage(workdir).free
        if free < size:  # QEMU fails the guest's write when its old block finds no room
            raise UsageError(
                f"{workdir}: {free} bytes free, but the snapshot of {live.node} may need up "
                f"to {size} (each block the guest writes during the backup is first copied "
                "there, and a full file system would fail the guest's write): make room, or "
                "set TMPDIR to a larger file system")
        done = subprocess.run([require("qemu-img"), "create", "-q", "-f", "qcow2",
                               str(self.overlay), str(size)], capture_output=True, text=True,
                              check=False)
        if done.returncode:
            raise UsageError(f"qemu-img create failed: {done.stderr.strip()}")
        live.qmp.execute("blockdev-add", driver="qcow2", **{"node-name": self.node},
                         file={"driver": "file", "filename": str(self.overlay)},
                         backing=live.node)
        try:
            live.qmp.transaction(
                action("blockdev-backup", device=live.node, target=self.node, sync="none",
                       **{"job-id": self.job}), *actions)
        except BaseException:  # a signal may come after QEMU took the snapshot
            with contextlib.suppress(BlockforensicsError, OSError):
                self.release()
            raise
        self.taken_ns = time.time_ns()

    def exported(self, *, bitmaps: tuple[str, ...] = (),
                 writable: bool = False) -> AbstractContextManager[NbdAddress]:
        return self.live.exported(self.node, bitmaps=bitmaps, writable=writable)

    def copy_to(self, path: str | os.PathLike[str]) -> Path:
        """The snapshot's bytes into a raw file."""
        return self.live.copy_node(self.node, path)

    def release(self) -> None:
        qmp = self.live.qmp
        if any(j["device"] == self.job for j in qmp.execute("query-block-jobs")):
            qmp.execute("block-job-cancel", device=self.job, force=True)
            while any(j["device"] == self.job for j in qmp.execute("query-block-jobs")):
                time.sleep(POLL)
        qmp.execute("blockdev-del", **{"node-name": self.node})
        self.overlay.unlink(missing_ok=True)

    def __enter__(self) -> Fleece:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

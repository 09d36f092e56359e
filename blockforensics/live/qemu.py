"""QEMU processes with a QMP monitor and an NBD server on Unix sockets.

:class:`StorageDaemon` serves a disk image without a guest (qemu-storage-daemon);
:class:`Guest` boots a kernel and initramfs (TCG) with the image as its NVMe disk
(the Debian cloud kernel has NVMe built in, no modules needed).  Either way the
disk is the block node :data:`NODE`, writes reach it through the guest or through
a writable NBD export, and :class:`~blockforensics.live.ops.LiveDisk` drives it.
Processes are killed when the context exits, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from blockforensics.errors import UsageError
from blockforensics.live.qmp import Qmp
from blockforensics.tools import require

#: the block node of the served disk
NODE = "disk0"
GUEST_MEMORY_MIB = 256


class QemuProcess:
    """A QEMU program started with a QMP socket; ``qmp`` is connected once it listens."""

    def __init__(self, image: str | os.PathLike[str], workdir: str | os.PathLike[str], *,
                 fmt: str = "raw"):
        self.image = Path(image).resolve()
        self.fmt = fmt  # the image's format driver: raw, qcow2 (its backing file opened too)
        self.workdir = Path(workdir)
        self.qmp_socket = self.workdir / "qmp.sock"
        #: a second monitor for other clients (a QMP socket serves one at a time),
        #: e.g. ``backup --head-start`` while this object holds :attr:`qmp`
        self.spare_qmp_socket = self.workdir / "qmp-spare.sock"
        self.nbd_socket = self.workdir / "nbd.sock"
        self.log = self.workdir / "qemu.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None

    def _blockdev(self, dash: str = "-") -> list[str]:
        return [f"{dash}blockdev", f"driver=file,node-name=file0,filename={self.image}",
                f"{dash}blockdev", f"driver={self.fmt},node-name={NODE},file=file0"]

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Qmp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while self.qmp is None:  # the socket file exists a moment before QEMU listens on it
            try:
                self.qmp = Qmp(str(self.qmp_socket))
            except UsageError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    lines = self.log.read_text(errors="replace").strip().splitlines()
                    raise UsageError(f"{self.command()[0]} did not start: "
                                     f"{lines[-1] if lines else '(no message)'}") from None
                time.sleep(0.05)
        self.qmp.execute("nbd-server-start",
                         addr={"type": "unix", "data": {"path": str(self.nbd_socket)}})
        return self.qmp

    def stop(self, timeout: float = 10.0) -> None:
        """Quit QEMU (killed if it does not exit within ``timeout``)."""
        if self.qmp is not None:
            with contextlib.suppress(OSError, UsageError):
                self.qmp.execute("quit")
            self.qmp.close()
            self.qmp = None
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def kill(self) -> None:
        """Pull the plug: no flush, no clean shutdown (a crash for the guest)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None

    def __enter__(self) -> QemuProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StorageDaemon(QemuProcess):
    """qemu-storage-daemon serving ``image`` (format ``fmt``) as node :data:`NODE`."""

    def command(self) -> list[str]:
        return [require("qemu-storage-daemon"), *self._blockdev("--"),
                *(arg for i, path in enumerate((self.qmp_socket, self.spare_qmp_socket))
                  for arg in ("--chardev", f"socket,id=qmp{i},path={path},server=on,wait=off",
                              "--monitor", f"chardev=qmp{i}"))]


class Guest(QemuProcess):
    """A TCG guest booting ``kernel`` and ``initrd`` with ``image`` as /dev/nvme0n1."""

    def __init__(self, image: str | os.PathLike[str], workdir: str | os.PathLike[str], *,
                 kernel: str | os.PathLike[str], initrd: str | os.PathLike[str],
                 append: str = "console=ttyS0 panic=-1 quiet", fmt: str = "raw"):
        super().__init__(image, workdir, fmt=fmt)
        self.kernel, self.initrd, self.append = Path(kernel), Path(initrd), append
        self.console = self.workdir / "console.log"

    def command(self) -> list[str]:
        return [require("qemu-system-x86_64"), "-nodefaults", "-display", "none",
                "-accel", "tcg", "-m", str(GUEST_MEMORY_MIB), "-no-reboot",
                "-serial", f"file:{self.console}", "-kernel", str(self.kernel),
                "-initrd", str(self.initrd), "-append", self.append, *self._blockdev(),
                "-device", f"nvme,drive={NODE},serial=bf0",
                "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
                "-qmp", f"unix:{self.spare_qmp_socket},server=on,wait=off"]

    def wait_console(self, text: str, timeout: float = 120.0) -> float:
        """Seconds until ``text`` appears on the serial console (UsageError on timeout)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.console.exists() and text.encode() in self.console.read_bytes():
                return time.monotonic() - start
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.console.read_text(errors="replace")[-300:] if self.console.exists() else ""
        raise UsageError(f"guest: no {text!r} on the console within {timeout} s: {tail!r}")

"""Boot a disk image in QEMU and capture its serial console (and, on request, a
screenshot of its display).

The disk is never written: QEMU runs on a temporary qcow2 overlay whose backing
file is the disk (raw, VHD, VHDX, VMDK or qcow2, recognised by its signature),
or an NBD export: :func:`boot_disk` serves any Disk — a chain point straight from
its images, a differencing VHD read with its parents (:func:`boot_file`) — over
NBD (:mod:`blockforensics.nbd.server`) and boots that, with no export and no
FUSE.  The overlay also lets read-only disks boot, which QEMU refuses for IDE
drives.  QEMU runs with TCG (KVM hangs on the machines this was developed on),
no display and the first serial port on a Unix socket, which is read until the
expected text appears, QEMU exits (the guest powered off) or the timeout passes.

Firmware: SeaBIOS (QEMU's default, "bios") or OVMF ("uefi": its code read-only
and a private writable copy of its variable store, both as pflash).  "auto"
reads the disk's first sectors through this project's MBR and GPT readers: an EFI
system partition (in a GPT, or of type 0xEF in an MBR) and no BIOS boot code in the
MBR (its first 440 bytes zero, as in a bare protective MBR) boots with OVMF,
anything else with SeaBIOS (:func:`choose_firmware`).

After the expected text, check commands can run in the guest through the same
serial console, as SureBackup and Datto run theirs: an Enter wakes the console,
then each command is typed as one line that a POSIX shell on the console runs
between two sentinels carrying a random nonce, the second with the exit status
(``echo bf-begin-N; sh -c CMD; echo "bf-end-N $?"``); the sentinels are typed
split by ``""``, so the console's echo of the typed line never matches them, and
what the guest printed between them is the command's output.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import select
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockforensics.errors import FormatError, UsageError
from blockforensics.live.qmp import Qmp
from blockforensics.tools import require, require_file

if TYPE_CHECKING:
    from blockforensics.formats.base import Disk

log = logging.getLogger(__name__)

DEFAULT_EXPECT = "BLOCKFORENSICS-BOOT-OK"  # printed by the sample disk's /init
VHD_COOKIE = b"conectix"  # VHD footer (last 512 bytes; also first 512 of dynamic VHDs)
VHD_FOOTER_SIZE = 512  # bytes
POLL_SECONDS = 0.05  # longest wait for console output between other checks
STOP_SECONDS = 5.0  # grace period for QEMU to exit after SIGTERM
LINE_SECONDS = 1.0  # longest wait for the rest of the expected text's line
MEMORY_MIB = 256  # guest RAM
#: NBD URL schemes QEMU opens as a backing file
NBD_SCHEMES = ("nbd://", "nbd+unix://")
#: leading bytes of the formats QEMU would otherwise have to be told
MAGICS = {b"QFI\xfb": "qcow2", b"vhdxfile": "vhdx", b"KDMV": "vmdk"}
#: Disk interfaces QEMU can attach the disk on: IDE every guest OS has a driver
#: for; virtio loads a kernel through the BIOS about 2 s faster under TCG.
INTERFACES = ("ide", "virtio")
#: firmware choices: SeaBIOS, OVMF, or decided from the disk's first sectors
FIRMWARES = ("bios", "uefi", "auto")
#: OVMF (Debian package ovmf): the code, mapped read-only, and the variable store
#: template, copied for each boot since the firmware writes its variables there
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: GPT partition type of an EFI system partition (UEFI 2.10, table 5.23)
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
#: MBR partition type byte of an EFI system partition (UEFI 2.10, §5.2.2)
ESP_MBR_TYPE = 0xEF


@dataclass(frozen=True)
class Firmware:
    """The firmware a boot uses ("bios" or "uefi") and why."""

    name: str
    reason: str


def choose_firmware(disk: Disk) -> Firmware:
    """The firmware ``disk`` boots with, from its first sectors: "uefi" for an EFI
    system partition (a GPT's partition of type ESP, or an MBR's of type 0xEF — UEFI
    2.10 §5.2.1 allows both) with no BIOS boot code in the MBR (its first 440 bytes all
    zero), else "bios"."""
    from blockforensics.fs.gpt import looks_like_gpt, read_gpt
    from blockforensics.fs.mbr import BOOT_CODE_SIZE, SECTOR, looks_like_mbr, read_partitions

    boot_code = disk.read(0, BOOT_CODE_SIZE)
    if looks_like_gpt(disk):
        table = "a GPT"
        try:
            partitions = read_gpt(disk).partitions
        except FormatError as exc:
            return Firmware("bios", f"a GPT that does not read ({exc})")
    elif looks_like_mbr(disk.read(0, SECTOR)):
        table = "an MBR partition table"
        partitions = read_partitions(disk)
    else:
        return Firmware("bios", "no partition table")
    esp = next((p for p in partitions if _is_esp(p.type)), None)
    if esp is None:
        return Firmware("bios", f"{table} without an EFI system partition")
    if any(boot_code):
        return Firmware("bios", f"BIOS boot code in the MBR beside {table} with an EFI "
                        f"system partition (partition {esp.index})")
    return Firmware("uefi", f"{table} with an EFI system partition (partition {esp.index}) "
                    "and no BIOS boot code in the MBR")


def _is_esp(partition_type: int | str) -> bool:
    """True for an EFI system partition's type: the GPT GUID or the MBR byte 0xEF."""
    if isinstance(partition_type, int):
        return partition_type == ESP_MBR_TYPE
    return str(partition_type).lower() == ESP_TYPE


def _resolve_firmware(firmware: str | Firmware, source: str) -> Firmware:
    """``firmware`` as a Firmware: "bios" and "uefi" as asked, "auto" decided from the
    disk at ``source`` (a file any reader plugin opens, or an NBD URL)."""
    if isinstance(firmware, Firmware):
        return firmware
    if firmware not in FIRMWARES:
        raise UsageError(f"firmware {firmware!r}: use one of {', '.join(FIRMWARES)}")
    if firmware != "auto":
        return Firmware(firmware, "asked for")
    from blockforensics.formats import open_disk

    try:
        with open_disk(source) as disk:
            return choose_firmware(disk)
    except (FormatError, UsageError, OSError) as exc:
        return Firmware("bios", f"the disk's first sectors do not read ({exc})")


@dataclass
class CommandRun:
    """One check command run in the guest through the serial console."""

    command: str
    output: str = ""  # what it printed (stdout and stderr), without the typed line's echo
    status: int | None = None  # its exit status; None when it did not finish (see error)
    seconds: float = 0.0  # from typing it to its end sentinel (or to giving up)
    error: str | None = None  # why there is no status: timed out, guest gone, not run

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass
class BootResult:
    """Outcome of one boot: whether the expected text appeared, and the console."""

    ok: bool  # expected text seen (or, with no expected text, the guest powered off)
    console: str = field(repr=False)  # the whole serial console log
    seconds_to_marker: float | None  # from QEMU's start to the expected text, or None
    seconds_total: float  # from QEMU's start until it was gone
    qemu_exit: int | None  # QEMU's status if it exited by itself; None if we stopped it
    command: list[str] = field(repr=False)  # the QEMU command line
    screenshot: Path | None = None  # PNG of the display when the wait for the marker ended
    runs: list[CommandRun] = field(default_factory=list)  # check commands, in order
    firmware: str = "bios"  # "bios" (SeaBIOS) or "uefi" (OVMF)
    firmware_reason: str = ""  # why: "asked for", or what the disk's first sectors showed

    def to_json(self) -> dict[str, Any]:
        """The result as data (``boot --json``)."""
        return {"ok": self.ok, "seconds_to_marker": self.seconds_to_marker,
                "seconds_total": self.seconds_total, "qemu_exit": self.qemu_exit,
                "console": self.console, "command": self.command,
                "screenshot": str(self.screenshot) if self.screenshot else None,
                "runs": [asdict(run) for run in self.runs], "firmware": self.firmware,
                "firmware_reason": self.firmware_reason}

    def tail(self, n: int = 20) -> str:
        """The last ``n`` lines of the console."""
        return "\n".join(self.console.splitlines()[-n:])

    def __repr__(self) -> str:
        marker = ("not seen" if self.seconds_to_marker is None
                  else f"after {self.seconds_to_marker:.1f} s")
        runs = (f", runs {sum(run.ok for run in self.runs)}/{len(self.runs)} ok"
                if self.runs else "")
        return (f"BootResult(ok={self.ok}, {self.firmware}, marker {marker}, "
                f"total {self.seconds_total:.1f} s, "
                f"qemu_exit={self.qemu_exit}, console {len(self.console.splitlines())} lines"
                f"{runs})")


def disk_format(path: str | os.PathLike[str]) -> str:
    """QEMU's format name for the disk at ``path``: "vpc" for a VHD, a format QEMU
    recognises by its magic (qcow2, VHDX, VMDK), else "raw"; "raw" for an NBD URL."""
    if str(path).startswith(NBD_SCHEMES):
        return "raw"
    with open(path, "rb") as f:
        magic = f.read(8)
        f.seek(0)
        head = f.read(len(VHD_COOKIE))
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - VHD_FOOTER_SIZE, 0))
        footer = f.read(len(VHD_COOKIE))
    for prefix, name in MAGICS.items():
        if magic.startswith(prefix):
            return name
    return "vpc" if VHD_COOKIE in (head, footer) else "raw"


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no message)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate QEMU, killing it if it does not exit within STOP_SECONDS."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _monitor(path: Path, process: subprocess.Popen[bytes]) -> Qmp:
    """QEMU's QMP monitor at ``path``, once QEMU has created it (a moment after it starts)."""
    deadline = time.monotonic() + STOP_SECONDS
    while True:
        try:
            return Qmp(str(path), timeout=STOP_SECONDS)
        except UsageError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise UsageError("QEMU's monitor did not come up") from None
            time.sleep(POLL_SECONDS)


class _Console:
    """The guest's serial console on QEMU's Unix socket: all it printed, and typing."""

    def __init__(self, path: Path, process: subprocess.Popen[bytes]):
        deadline = time.monotonic() + STOP_SECONDS
        self.data = bytearray()  # everything the guest wrote, from power-on
        self.closed = False  # QEMU closed the connection (it exited)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self._sock.connect(str(path))
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    self._sock.close()
                    raise UsageError("QEMU's serial console did not come up") from None
                time.sleep(POLL_SECONDS)

    def read(self, seconds: float = POLL_SECONDS) -> None:
        """Wait up to ``seconds`` for output and keep all that has arrived."""
        if self.closed:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([self._sock], [], [], seconds)
        while ready and not self.closed:
            chunk = self._sock.recv(1 << 16)
            self.closed = not chunk
            self.data += chunk
            ready, _, _ = select.select([self._sock], [], [], 0)

    def finish_line(self, at: int, seconds: float = LINE_SECONDS) -> None:
        """Keep reading until the line holding offset ``at`` has ended (at most ``seconds``
        seconds): the guest may still be writing the rest of the expected text's line."""
        deadline = time.monotonic() + seconds
        while (b"\n" not in self.data[at:] and not self.closed
               and time.monotonic() < deadline):
            self.read()

    def type(self, text: str) -> None:
        """Send ``text`` to the guest as if typed on the serial line."""
        self._sock.sendall(text.encode())

    def close(self) -> None:
        self._sock.close()


def _check_commands(commands: Sequence[str]) -> None:
    """Refuse check commands that could not be typed as one line (UsageError)."""
    for command in commands:
        if not command.strip() or not command.isprintable():
            raise UsageError(f"check command {command!r}: must be one line of printable "
                             "characters (no newline, tab or control character)")


def _run_in_guest(console: _Console, command: str, timeout: float,
                  process: subprocess.Popen[bytes]) -> CommandRun:
    """Type ``command`` on the guest's console between nonce sentinels; its output and
    exit status, or an error after ``timeout`` seconds or when QEMU is gone."""
    nonce = secrets.token_hex(8)
    begin, end = f"bf-begin-{nonce}", f"bf-end-{nonce}"
    console.type(f'echo "bf-begin""-{nonce}"; sh -c {shlex.quote(command)} </dev/null 2>&1; '
                 f'echo "bf-end""-{nonce} $?"\n')
    done = re.compile(rb"%s\r?\n(.*?)%s (\d+)\r?\n" % (begin.encode(), end.encode()), re.S)
    started = re.compile(rb"%s\r?\n(.*)" % begin.encode(), re.S)
    start = time.monotonic()
    while True:
        console.read()
        finished = done.search(console.data)
        if finished:
            return CommandRun(command, _text(finished[1]), int(finished[2]),
                              time.monotonic() - start)
        stopped = console.closed or process.poll() is not None
        if stopped or time.monotonic() - start > timeout:
            partial = started.search(console.data)
            return CommandRun(command, _text(partial[1]) if partial else "", None,
                              time.monotonic() - start,
                              "the guest stopped" if stopped else f"timed out after {timeout:g} s")


def _text(console: bytes | bytearray) -> str:
    """Console bytes as text with the terminal's CR LF line ends made LF."""
    return console.decode(errors="replace").replace("\r\n", "\n")


def boot(disk: str | os.PathLike[str], *, expect: str | None = DEFAULT_EXPECT,
         timeout: float = 120, interface: str = "ide",
         screenshot: str | os.PathLike[str] | None = None, run: Sequence[str] = (),
         run_timeout: float | None = None, firmware: str | Firmware = "auto") -> BootResult:
    """Boot ``disk`` (a raw, VHD, VHDX, VMDK or qcow2 file, or an NBD URL) in QEMU for at
    most ``timeout`` seconds; never writes it.

    QEMU is stopped as soon as ``expect`` appears on the serial console (after the
    ``run`` commands, if any). With ``expect=None`` the boot is ok when the guest
    powers off (QEMU exits with status 0) within the timeout. ``interface`` is one of
    INTERFACES. A QEMU that fails to start raises UsageError.

    ``run``: shell commands to run in the guest, in order, once ``expect`` has appeared,
    through the serial console (see the module's description); each may take
    ``run_timeout`` seconds (default ``timeout``). The boot is then ok only if every
    command exited with status 0; after a command that did not finish, the others are
    not run. Each needs one line of printable text (else UsageError).

    ``screenshot``: a PNG of the guest's display when the wait for ``expect`` ends
    (marker, power-off or timeout; before any ``run`` command), by QMP ``screendump``,
    for guests that show their state on screen rather than on the serial port.  The
    guest then gets a VGA card, and QEMU is kept alive after a power-off
    (``-no-shutdown``) so the last screen can be taken.

    ``firmware``: "bios" (SeaBIOS), "uefi" (OVMF) or "auto" (from the disk's first
    sectors, :func:`choose_firmware`); the result says which and why.
    """
    if interface not in INTERFACES:
        raise UsageError(f"disk interface {interface!r}: use one of {', '.join(INTERFACES)}")
    if run and expect is None:
        raise UsageError("check commands run once the expected text appears: give one")
    _check_commands(run)
    nbd = str(disk).startswith(NBD_SCHEMES)
    source = str(disk) if nbd else str(Path(disk).resolve())
    if not nbd and not Path(source).is_file():
        raise UsageError(f"{disk}: no such disk file")
    qemu_img, qemu = require("qemu-img"), require("qemu-system-x86_64")
    chosen = _resolve_firmware(firmware, source)
    wanted = expect.encode() if expect is not None else None
    shot = Path(screenshot).resolve() if screenshot is not None else None
    with tempfile.TemporaryDirectory(prefix="bf-boot-") as work:
        overlay, serial_path, stderr_log = (Path(work, n) for n in ("overlay.qcow2",
                                                                    "serial.sock", "qemu.err"))
        created = subprocess.run(
            [qemu_img, "create", "-q", "-f", "qcow2", "-b", source,
             "-F", disk_format(source), str(overlay)],
            capture_output=True, text=True, check=False)
        if created.returncode != 0:
            lines = created.stderr.strip().splitlines() or ["(no message)"]
            raise UsageError(f"qemu-img create failed: {lines[-1]}")
        command = [
            qemu, "-nodefaults", "-display", "none", "-accel", "tcg", "-m", str(MEMORY_MIB),
            "-no-reboot",
            "-chardev", f"socket,id=console,path={serial_path},server=on,wait=on",
            "-serial", "chardev:console",
            "-drive", f"file={overlay},format=qcow2,if={interface},index=0,media=disk"
                      + (",copy-on-read=on" if nbd else ""),
            "-boot", "c",
        ]
        if chosen.name == "uefi":
            command += _ovmf_drives(Path(work))
        monitor_path = Path(work, "qmp.sock")
        if shot is not None:
            command += ["-vga", "std", "-no-shutdown",
                        "-qmp", f"unix:{monitor_path},server=on,wait=off"]
        log.debug("booting %s: %s", source, " ".join(command))
        seconds_to_marker = None
        runs = [CommandRun(c, error="not run: the expected text did not appear") for c in run]
        start = time.monotonic()
        with open(stderr_log, "wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=stderr, stderr=stderr)
        console: _Console | None = None
        monitor, powered_off = None, False
        try:
            console = _Console(serial_path, process)  # QEMU waits for it (wait=on)
            if shot is not None:
                monitor = _monitor(monitor_path, process)
            while True:
                exited = process.poll() is not None  # before reading: no output is lost
                if monitor is not None and monitor.execute("query-status")["status"] in (
                        "shutdown", "guest-panicked"):
                    exited = powered_off = True  # -no-shutdown: QEMU outlives the guest
                console.read()
                if wanted is not None and wanted in console.data:
                    seconds_to_marker = time.monotonic() - start
                    console.finish_line(console.data.index(wanted))
                    break
                if exited or time.monotonic() - start > timeout:
                    break
            if monitor is not None and shot is not None:
                monitor.execute("screendump", filename=str(shot), format="png")
            if seconds_to_marker is not None and run:
                runs = _run_all(console, run, timeout if run_timeout is None else run_timeout,
                                process)
        finally:
            if monitor is not None:
                monitor.close()
            if console is not None:
                console.close()
            qemu_exit = 0 if powered_off else process.poll()
            _stop(process)
        seconds_total = time.monotonic() - start
        if qemu_exit not in (None, 0):
            raise UsageError(f"qemu-system-x86_64 exited with {qemu_exit}: "
                             f"{_last_line(stderr_log)}")
    ok = (seconds_to_marker is not None and all(r.ok for r in runs) if wanted is not None
          else qemu_exit == 0)
    log.debug("boot of %s: ok=%s in %.1f s", source, ok, seconds_total)
    return BootResult(ok=ok, console=_text(console.data), seconds_to_marker=seconds_to_marker,
                      seconds_total=seconds_total, qemu_exit=qemu_exit, command=command,
                      screenshot=shot, runs=runs, firmware=chosen.name,
                      firmware_reason=chosen.reason)


def _ovmf_drives(work: Path) -> list[str]:
    """QEMU options mapping OVMF's code read-only and a copy of its variable store
    (made in ``work``) writable, as the two pflash chips of the machine."""
    code = require_file(OVMF_CODE)
    variables = Path(work, "OVMF_VARS.fd")
    variables.write_bytes(Path(require_file(OVMF_VARS)).read_bytes())
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]


def _run_all(console: _Console, commands: Sequence[str], timeout: float,
             process: subprocess.Popen[bytes]) -> list[CommandRun]:
    """Wake the console with an Enter, then run ``commands`` in turn until one does not
    finish; those after it are reported as not run."""
    console.type("\n")
    runs: list[CommandRun] = []
    for command in commands:
        if runs and runs[-1].status is None:
            runs.append(CommandRun(command, error="not run: an earlier command did not finish"))
        else:
            runs.append(_run_in_guest(console, command, timeout, process))
    return runs


def boot_disk(disk: Disk, **options: Any) -> BootResult:
    """Boot any Disk (a chain point, an image a reader opened) served over NBD from a
    private socket for the boot's duration; ``options`` as for :func:`boot`."""
    from blockforensics.nbd.server import served

    firmware = options.pop("firmware", "auto")
    chosen = choose_firmware(disk) if firmware == "auto" else firmware
    with served(disk) as server:
        return boot(server.url, firmware=chosen, **options)


#: reader plugins whose files QEMU opens itself and reads as this project's readers do
QEMU_OPENS = frozenset({"raw", "vhd", "vhdx", "vmdk", "qcow2", "vdi"})
SECTOR = 512  # bytes: the smallest disk a firmware can read a boot sector from


def boot_file(path: str | os.PathLike[str], *, parent: str | os.PathLike[str] | None = None,
              reader: str | None = None, **options: Any) -> BootResult:
    """Boot a disk file, first opened by this project's readers (probed by signature,
    or ``reader``), so that what is not a disk is refused with the reason: an archive,
    a piece of a chain, a file of less than one sector.  QEMU then opens the formats it
    reads alike (:data:`QEMU_OPENS`) itself; the others are served over NBD from this
    project's reader: a differencing VHD (QEMU's vpc driver ignores its parents, found
    here by their locators or ``parent``), a differencing VHDX (a Hyper-V checkpoint,
    which QEMU does not open), an EnCase E01, a third party's format.
    ``options`` as for :func:`boot`."""
    from blockforensics.formats import open_source, probe
    from blockforensics.formats.foreign import StreamDisk
    from blockforensics.formats.vhd import VhdFormat, vhd_info

    name = reader if reader is not None else probe(path).name
    differencing = name == "vhd" and VhdFormat.probe(path) and vhd_info(path).kind == "differencing"
    if parent is not None and not differencing:
        raise UsageError(f"{path}: --parent is for a differencing VHD")
    with open_source(path, format=name, parent=parent) as disk:
        if disk.size < SECTOR:
            raise UsageError(f"{path}: {disk.size} bytes, less than one {SECTOR}-byte "
                             "sector: not a disk a firmware can boot")
        checkpoint = isinstance(disk, StreamDisk) and name == "vhdx" and disk.has_parent
        if name not in QEMU_OPENS or differencing or checkpoint:
            return boot_disk(disk, **options)
    return boot(path, **options)

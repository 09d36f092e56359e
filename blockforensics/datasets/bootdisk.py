"""A small bootable Linux disk built from installed Debian packages.

The disk is an MBR-partitioned raw image: syslinux's MBR boot code, one active
FAT16 partition holding syslinux, a Debian cloud kernel and a busybox initramfs
whose /init prints ``BLOCKFORENSICS-BOOT-OK <marker>`` on the serial console (and
the screen), loads the disk and FAT drivers, and offers a shell on the serial
console: "Please press Enter to activate this console."  An Enter within
:data:`SHELL_WAIT_SECONDS` starts a busybox shell (with ``fsck.fat`` copied from
the host beside it), so that checks can run inside the guest; the guest powers
off when that shell exits, or at once if no Enter came.  The marker travels on
the kernel command line written in ``syslinux.cfg`` on the FAT partition, so
whatever a backup stored there is what boots. Building needs no mounts, no root
and no network: the partition table is written by ``sfdisk`` on the image file
and the file system by mtools at a byte offset (``-i disk.img@@OFFSET``).

The UEFI sample disk (:func:`build_uefi_boot_disk`) boots the same kernel and
initramfs through OVMF: a GPT (``sgdisk``) with one EFI system partition, FAT32
(``mkfs.fat --offset``, filled by mtools), holding systemd-boot as
``EFI/BOOT/BOOTX64.EFI``, ``loader/loader.conf`` (no menu) and one entry
``loader/entries/bf.conf`` carrying the marker; its MBR is a bare protective one,
with no BIOS boot code, so SeaBIOS cannot boot it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.raw import RawDisk
from blockforensics.fs.gpt import looks_like_gpt, read_gpt
from blockforensics.fs.mbr import BOOT_CODE_SIZE, read_partitions
from blockforensics.tools import require, require_file

SECTOR = 512  # bytes
MIB = 1 << 20  # bytes
#: Default disk size in bytes: 48 MiB + 3 sectors, deliberately a multiple of
#: neither 2 MiB, 4 KiB nor a 255x63-sector CHS cylinder, so that size rounding
#: bugs (e.g. in VHD export) show up.
DEFAULT_SIZE = 48 * MIB + 3 * SECTOR
#: First sector of the FAT partition (1 MiB, as partitioning tools align).
PARTITION_START_SECTOR = 2048
FAT16_LBA = 0x0E  # MBR partition type of the FAT partition
DISK_ID = 0x42465244  # MBR disk signature ("DRFB"), fixed for reproducible tables
VOLUME_SERIAL = "42464f52"  # FAT volume serial (hex), fixed for the same reason
MARKER_PREFIX = "BLOCKFORENSICS-BOOT-OK"  # what /init prints before the marker
CONFIG_NAME = "syslinux.cfg"
KERNEL_GLOB = "vmlinuz-*-cloud-amd64"  # in /boot, from linux-image-cloud-amd64
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
#: Bumped whenever the disk layout changes, to invalidate cached disks.
BUILDER_VERSION = 3
#: seconds /init waits for an Enter on the serial console before powering off
SHELL_WAIT_SECONDS = 5
#: kernel modules the guest loads after the marker: IDE and virtio disks, FAT
GUEST_MODULES = ("ata_piix", "sd_mod", "virtio_pci", "virtio_blk", "vfat",
                 "nls_cp437", "nls_ascii", "nls_utf8")
#: host programs copied into the initramfs with their libraries, for checks in the guest
GUEST_PROGRAMS = ("fsck.fat",)
#: host files copied to the same path: glibc's code page 850, without which fsck.fat
#: warns "Cannot initialize conversion" on every run
GUEST_HOST_FILES = ("/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
                    "/usr/lib/x86_64-linux-gnu/gconv/IBM850.so")
GUEST_MODULE_DIR = "lib/modules/bf"  # in the initramfs; modules named NN-name.ko, load order
_MARKER = re.compile(r"[A-Za-z0-9._:+-]{1,64}")
#: Partition types that hold a FAT file system (MBR type bytes; GPT: EFI system
#: partition, Microsoft basic data).
_FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E,
                        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
                        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"})
#: UEFI sample disk: systemd-boot (Debian package systemd-boot-efi), the path UEFI
#: firmware boots from a removable disk, and the loader's files on the ESP
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
EFI_BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"
LOADER_CONF = "loader/loader.conf"
LOADER_ENTRY = "loader/entries/bf.conf"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # GPT type of an EFI system partition
#: fixed GUIDs (disk, ESP) for reproducible tables
UEFI_DISK_GUID = "42465244-0000-4000-8000-000000000001"
UEFI_ESP_GUID = "42465244-0000-4000-8000-000000000002"

def fat_partition(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(byte offset, byte length) of the first FAT partition of the disk at ``path``
    (MBR or GPT)."""
    with RawDisk(path) as disk:
        gpt = looks_like_gpt(disk)
        partitions = read_gpt(disk).partitions if gpt else read_partitions(disk)
        for partition in partitions:
            kind = partition.type.lower() if isinstance(partition.type, str) else partition.type
            if kind in _FAT_TYPES:
                return partition.start_byte, partition.length_bytes
    raise FormatError(f"{path}: no FAT partition in the {'GPT' if gpt else 'MBR'} "
                      "partition table")


def _run(command: Sequence[str], stdin: bytes | None = None) -> None:
    """Run a program; its last stderr line becomes a one-line UsageError on failure."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # mtools: accept any FAT geometry
    done = subprocess.run(list(command), input=stdin, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
        raise UsageError(f"{Path(command[0]).name} failed: {lines[-1]}")


def _image_spec(path: str | os.PathLike[str]) -> str:
    """mtools' ``-i`` argument addressing the FAT partition inside the disk."""
    offset, _ = fat_partition(path)
    return f"{os.fspath(path)}@@{offset}"


def write_fat_file(path: str | os.PathLike[str], name: str, data: bytes) -> None:
    """Create or overwrite file ``name`` in the FAT partition's root directory."""
    spec = _image_spec(path)
    with tempfile.TemporaryDirectory(prefix="bf-fat-") as work:
        source = Path(work, "data")
        source.write_bytes(data)
        _run([require("mcopy"), "-o", "-i", spec, str(source), f"::{name.lstrip('/')}"])


def read_fat_file(path: str | os.PathLike[str], name: str) -> bytes:
    """Contents of file ``name`` in the FAT partition (path from its root)."""
    spec = _image_spec(path)
    with tempfile.TemporaryDirectory(prefix="bf-fat-") as work:
        target = Path(work, "data")
        _run([require("mcopy"), "-n", "-i", spec, f"::{name.lstrip('/')}", str(target)])
        return target.read_bytes()


def _kernel_options(marker: str) -> str:
    """The kernel command line: console on the screen and the first serial port (the
    serial port last: /dev/console, where /init talks), and the marker.

    ``no_timer_check``: under TCG on a busy host the kernel's IO-APIC timer check can
    time out and panic ("IO-APIC + timer doesn't work"); a virtual machine needs no such check."""
    if not _MARKER.fullmatch(marker):
        raise UsageError(f"boot marker {marker!r}: use 1-64 of A-Z a-z 0-9 . _ : + -")
    return f"console=tty0 console=ttyS0 panic=-1 no_timer_check bf.marker={marker}"


def _syslinux_config(marker: str) -> bytes:
    """syslinux.cfg booting the kernel at once with :func:`_kernel_options`."""
    options = _kernel_options(marker)
    return (
        "SERIAL 0 115200\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "DEFAULT linux\n"
        "LABEL linux\n"
        "  KERNEL vmlinuz\n"
        "  INITRD initrd.gz\n"
        f"  APPEND {options}\n"
    ).encode()


def _loader_entry(marker: str) -> bytes:
    """systemd-boot's entry for the kernel and initramfs, with :func:`_kernel_options`."""
    return ("title blockforensics sample\n"
            "linux /vmlinuz\n"
            "initrd /initrd.gz\n"
            f"options {_kernel_options(marker)}\n").encode()


#: systemd-boot's loader.conf: boot the entry at once, no menu
_LOADER_CONF = b"timeout 0\ndefault bf.conf\nconsole-mode keep\neditor no\n"


def set_boot_marker(path: str | os.PathLike[str], text: str) -> None:
    """Rewrite the boot configuration on the disk (syslinux.cfg, or on a GPT disk
    systemd-boot's entry) so that the guest prints ``text`` when booted."""
    with RawDisk(path) as disk:
        gpt = looks_like_gpt(disk)
    if gpt:
        write_fat_file(path, LOADER_ENTRY, _loader_entry(text))
    else:
        write_fat_file(path, CONFIG_NAME, _syslinux_config(text))


#: /init of the sample disk: print the marker from the kernel command line (on the
#: screen first, so that a screenshot taken when the serial console shows it has it
#: too), load the drivers, wait for the disk's first partition, then
#: offer a shell on the serial console; power off when it exits or nobody asks for it.
_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read -r cmdline < /proc/cmdline
marker=
for word in $cmdline; do
  case "$word" in bf.marker=*) marker="${{word#bf.marker=}}" ;; esac
done
echo "{MARKER_PREFIX} $marker" 2>/dev/null > /dev/tty0
echo "{MARKER_PREFIX} $marker"
dmesg -n 1
for module in /{GUEST_MODULE_DIR}/*.ko; do insmod "$module"; done
for i in $(seq 100); do grep -q '[sv]da1$' /proc/partitions && break; sleep 0.1; done
echo "Please press Enter to activate this console."
if read -r -t {SHELL_WAIT_SECONDS} _; then
  setsid cttyhack sh
fi
poweroff -f
""".encode()

#: newc cpio member header: magic "070701", then these fields as 8 hex digits each.
_NEWC_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
                "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _newc_member(ino: int, name: str, mode: int, data: bytes = b"",
                 rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One member of a newc cpio archive (the format of Linux initramfs)."""
    encoded = name.encode() + b"\0"
    values = {
        "ino": ino, "mode": mode, "uid": 0, "gid": 0, "nlink": 2 if stat.S_ISDIR(mode) else 1,
        "mtime": 0, "filesize": len(data), "devmajor": 0, "devminor": 0,
        "rdevmajor": rdev[0], "rdevminor": rdev[1], "namesize": len(encoded), "check": 0,
    }
    header = b"070701" + b"".join(b"%08x" % values[field] for field in _NEWC_FIELDS)
    return _pad4(header + encoded) + _pad4(data)


def _static_busybox() -> Path:
    """The busybox binary, checked to be statically linked (no ELF PT_INTERP)."""
    path = Path(require("busybox")).resolve()
    elf = path.read_bytes()
    phoff, = struct.unpack_from("<Q", elf, 0x20)  # e_phoff: program headers' offset
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)  # e_phentsize, e_phnum
    pt_interp = 3
    if any(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == pt_interp
           for i in range(phnum)):
        raise UsageError(
            f"{path} is dynamically linked (install the Debian package busybox-static)")
    return path


def _initramfs(busybox: Path, init: bytes, files: dict[str, Path] | None = None) -> bytes:
    """gzip-compressed newc initramfs: static busybox, ``init`` as /init and ``files``
    (path in the initramfs -> host file), with their folders."""
    extra = files or {}
    folders = {"bin", "dev", "proc", "sys", "mnt", "tmp"}
    for name in extra:
        folders.update(str(parent) for parent in Path(name).parents if str(parent) != ".")
    members = [(name, stat.S_IFDIR | 0o755, b"", (0, 0)) for name in sorted(folders)]
    members += [
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), (0, 0)),
        ("init", stat.S_IFREG | 0o755, init, (0, 0)),
    ]
    members += [(name, stat.S_IFREG | 0o755, source.read_bytes(), (0, 0))
                for name, source in sorted(extra.items())]
    archive = b"".join(_newc_member(i, *member) for i, member in enumerate(members, start=1))
    archive += _newc_member(0, "TRAILER!!!", 0)
    return gzip.compress(archive, compresslevel=9, mtime=0)


def _modules_in_load_order(release: str, names: Sequence[str]) -> list[Path]:
    """The files of kernel modules ``names`` of kernel ``release`` and of every module
    they depend on (from modules.dep), each after its dependencies."""
    base = Path("/lib/modules", release)
    try:
        listing = (base / "modules.dep").read_text()
    except OSError:
        raise UsageError(f"no {base}/modules.dep (install the kernel's package)") from None
    depends: dict[str, list[str]] = {}
    for line in listing.splitlines():
        module, _, needs = line.partition(":")
        depends[module] = needs.split()
    by_name = {Path(m).name.removesuffix(".ko").replace("-", "_"): m for m in depends}
    ordered: list[str] = []

    def add(module: str) -> None:
        for dependency in depends[module]:
            if dependency not in ordered:
                add(dependency)
        if module not in ordered:
            ordered.append(module)

    for name in names:
        if name not in by_name:
            raise UsageError(f"kernel {release} has no module {name}")
        add(by_name[name])
    return [base / module for module in ordered]


def _program_with_libraries(name: str) -> dict[str, Path]:
    """Host program ``name`` as bin/NAME and the shared libraries ``ldd`` names for it,
    each at the path the dynamic linker looks for it (path in initramfs -> host file)."""
    program = Path(require(name)).resolve()
    listed = subprocess.run([require("ldd"), str(program)], capture_output=True, text=True,
                            check=False)
    if listed.returncode != 0:
        raise UsageError(f"ldd {program} failed: {listed.stderr.strip() or listed.stdout.strip()}")
    libraries = re.findall(r"(/\S+) \(0x[0-9a-f]+\)", listed.stdout)
    return {f"bin/{name}": program,
            **{library.lstrip("/"): Path(library).resolve() for library in libraries}}


def _sample_files() -> dict[str, Path]:
    """What the sample disk's initramfs carries beside busybox and /init: the modules of
    GUEST_MODULES in load order, GUEST_PROGRAMS with their libraries, GUEST_HOST_FILES."""
    release = _kernel().name.removeprefix("vmlinuz-")
    files = {f"{GUEST_MODULE_DIR}/{i:02d}-{module.name}": module for i, module in
             enumerate(_modules_in_load_order(release, GUEST_MODULES))}
    for program in GUEST_PROGRAMS:
        files.update(_program_with_libraries(program))
    files.update({name.lstrip("/"): Path(name) for name in GUEST_HOST_FILES})
    return files


def guest_boot_files(init: bytes) -> tuple[Path, bytes]:
    """The cloud kernel and a busybox initramfs running the shell script ``init``, for
    booting a guest directly (``qemu -kernel -initrd``) with disks of other contents."""
    return _kernel(), _initramfs(_static_busybox(), init)


def _install_boot_code(path: Path, code: bytes) -> None:
    """Put ``code`` (at most 440 bytes) in the MBR's boot code area, keeping the table."""
    if len(code) > BOOT_CODE_SIZE:
        raise UsageError(f"MBR boot code is {len(code)} bytes; at most {BOOT_CODE_SIZE} fit")
    with open(path, "r+b") as f:
        f.write(code)


def _kernel() -> Path:
    """Newest Debian cloud kernel image in /boot."""
    kernels = sorted(Path("/boot").glob(KERNEL_GLOB))
    if not kernels:
        raise UsageError(
            f"no /boot/{KERNEL_GLOB} (install the Debian package linux-image-cloud-amd64)")
    return kernels[-1]


def _build_atomically(path: str | os.PathLike[str], size_bytes: int,
                      fill: Callable[[Path], None]) -> Path:
    """Create a ``size_bytes`` sparse file under a temporary name beside ``path``, let
    ``fill`` write the disk into it, fsync and rename it: ``path`` is either absent or
    complete."""
    if size_bytes % SECTOR or size_bytes < 24 * MIB:
        raise UsageError(f"disk size {size_bytes}: must be a multiple of 512 and at least 24 MiB")
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would keep a shared cache private
        os.ftruncate(fd, size_bytes)
        os.close(fd)
        fd = -1
        fill(tmp)
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        tmp.replace(target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def build_boot_disk(path: str | os.PathLike[str], *, size_bytes: int = DEFAULT_SIZE,
                    marker: str = "sample") -> Path:
    """Build the bootable (BIOS) disk at ``path`` (``size_bytes`` bytes, a multiple of 512).

    The image is written under a temporary name, fsynced and renamed, so ``path``
    is either absent or complete. Takes about a second.
    """
    config = _syslinux_config(marker)
    kernel, initrd = _kernel(), _initramfs(_static_busybox(), _INIT, _sample_files())

    def fill(tmp: Path) -> None:
        table = (f"label: dos\nlabel-id: 0x{DISK_ID:08x}\n"
                 f"start={PARTITION_START_SECTOR}, type={FAT16_LBA:x}, bootable\n")
        _run([require("sfdisk"), "--quiet", str(tmp)], stdin=table.encode())
        _install_boot_code(tmp, SYSLINUX_MBR.read_bytes())
        offset, length = fat_partition(tmp)
        spec = f"{tmp}@@{offset}"
        _run([require("mformat"), "-i", spec, "-T", str(length // SECTOR), "-h", "64", "-s", "32",
              "-H", str(offset // SECTOR), "-N", VOLUME_SERIAL, "-v", "BFBOOT", "::"])
        _run([require("syslinux"), "--install", "--offset", str(offset), str(tmp)])
        with tempfile.TemporaryDirectory(prefix="bf-bootdisk-") as work:
            Path(work, "initrd.gz").write_bytes(initrd)
            Path(work, CONFIG_NAME).write_bytes(config)
            _run([require("mcopy"), "-i", spec, str(kernel), "::vmlinuz"])
            _run([require("mcopy"), "-i", spec, str(Path(work, "initrd.gz")),
                  str(Path(work, CONFIG_NAME)), "::"])

    return _build_atomically(path, size_bytes, fill)


def build_uefi_boot_disk(path: str | os.PathLike[str], *, size_bytes: int = DEFAULT_SIZE,
                         marker: str = "sample") -> Path:
    """Build the UEFI-only sample disk at ``path``: GPT, one FAT32 EFI system partition
    with systemd-boot, the same kernel and initramfs (and marker) as the BIOS disk, and
    no BIOS boot code. Written as :func:`build_boot_disk` writes."""
    entry = _loader_entry(marker)
    loader = Path(require_file(SYSTEMD_BOOT))
    kernel, initrd = _kernel(), _initramfs(_static_busybox(), _INIT, _sample_files())

    def fill(tmp: Path) -> None:
        _run([require("sgdisk"), "--clear", f"--disk-guid={UEFI_DISK_GUID}",
              f"--new=1:{PARTITION_START_SECTOR}:0", f"--typecode=1:{ESP_GUID}",
              f"--partition-guid=1:{UEFI_ESP_GUID}", "--change-name=1:EFI system partition",
              str(tmp)])
        offset, length = fat_partition(tmp)
        _run([require("mkfs.fat"), "-F", "32", "-s", "1", "-S", str(SECTOR),
              "--offset", str(offset // SECTOR), "-i", VOLUME_SERIAL, "-n", "BFEFI",
              str(tmp), str(length // 1024)])
        spec = f"{tmp}@@{offset}"
        _run([require("mmd"), "-i", spec, "::EFI", "::EFI/BOOT", "::loader",
              "::loader/entries"])
        with tempfile.TemporaryDirectory(prefix="bf-bootdisk-") as work:
            files = {"initrd.gz": initrd, "loader.conf": _LOADER_CONF, "bf.conf": entry}
            for name, data in files.items():
                Path(work, name).write_bytes(data)
            for source, target in [(loader, EFI_BOOT_PATH), (kernel, "vmlinuz"),
                                   (Path(work, "initrd.gz"), "initrd.gz"),
                                   (Path(work, "loader.conf"), LOADER_CONF),
                                   (Path(work, "bf.conf"), LOADER_ENTRY)]:
                _run([require("mcopy"), "-i", spec, str(source), f"::{target}"])

    return _build_atomically(path, size_bytes, fill)


def _cache_key(size_bytes: int, marker: str, uefi: bool = False) -> str:
    """Hash of everything the disk is built from: builder version, /init, options, and
    the bytes of every host file it copies."""
    h = hashlib.sha256(f"{BUILDER_VERSION}:{size_bytes}:{marker}:{uefi}".encode() + _INIT)
    loaders = ([Path(require_file(SYSTEMD_BOOT))] if uefi
               else [SYSLINUX_MBR, Path(require("syslinux"))])
    sources = [_kernel(), _static_busybox(), *loaders, *_sample_files().values()]
    for source in sources:
        h.update(source.name.encode() + b"\0")
        h.update(source.read_bytes())
    return h.hexdigest()[:16]


def cached_boot_disk(cache_dir: str | os.PathLike[str] | None = None, *,
                     size_bytes: int = DEFAULT_SIZE, marker: str = "sample",
                     uefi: bool = False) -> Path:
    """Path of the bootable disk (``uefi``: the UEFI-only one), built once per set of
    inputs into ``cache_dir``.

    ``cache_dir`` defaults to ``$BLOCKFORENSICS_CACHE`` or ``~/.cache/blockforensics``.
    The cached file is shared: copy it before modifying it.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("BLOCKFORENSICS_CACHE") or Path.home() / ".cache/blockforensics"
    directory = Path(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    release = _kernel().name.removeprefix("vmlinuz-")
    kind = "uefidisk" if uefi else "bootdisk"
    path = directory / f"{kind}-{release}-{_cache_key(size_bytes, marker, uefi)}.img"
    if not path.exists():
        build = build_uefi_boot_disk if uefi else build_boot_disk
        build(path, size_bytes=size_bytes, marker=marker)
    return path

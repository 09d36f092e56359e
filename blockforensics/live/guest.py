"""A live Linux guest whose NVMe disk holds an ext4 that a workload inside writes.

The disk is a bare ext4 (:func:`make_ext4`, the guest's ``/dev/nvme0n1``) or a
partitioned one as real VMs boot from (:func:`make_partitioned_disk`: an MBR or GPT
table, an EFI system partition (FAT32), the ext4 root, swap).  The guest boots the
Debian cloud kernel with a busybox initramfs (see
:func:`blockforensics.datasets.bootdisk.guest_boot_files`); its /init mounts the
root device (``/dev/nvme0n1`` or e.g. ``/dev/nvme0n1p2``) on /mnt, prints
:data:`MOUNTED` on the serial console and runs a workload: ``"writer"`` rewrites
files in a loop (changed-block tracking has something to track); ``"settle"``
writes files, then makes metadata changes that the journal commits but does not yet
checkpoint, prints :data:`SETTLED` and the round, three times — a snapshot then
holds an ext4 whose journal needs replay.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blockforensics.datasets.bootdisk import guest_boot_files
from blockforensics.errors import UsageError
from blockforensics.live.qemu import Guest
from blockforensics.tools import require

MOUNTED = "BF-LIVE-MOUNTED"
SETTLED = "BF-LIVE-SETTLED"
WROTE = "BF-LIVE-WROTE"

#: /init up to the workload; ``{root}``: the device holding the ext4
_PRELUDE = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /dev /mnt
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
mount -t ext4 {{root}} /mnt || poweroff -f
echo {MOUNTED}
"""

WORKLOADS = {
    # rewrite 16 files of 16 KiB, one every 50 ms, each flushed; "WROTE n" every 20
    "writer": f"""i=0
while true; do
  i=$((i + 1))
  dd if=/dev/urandom of=/mnt/w$((i % 16)) bs=4096 count=4 conv=fsync 2>/dev/null
  [ $((i % 20)) = 0 ] && echo "{WROTE} $i"
  sleep 0.05
done
""",
    # three rounds, about 8 s apart: data written and synced, then metadata changes
    # the journal commits (5 s commit interval) while their home blocks wait for
    # writeback (30 s expiry); "SETTLED n" after round n, then idle
    "settle": f"""for round in 1 2 3; do
  mkdir -p /mnt/r$round
  for i in 1 2 3 4 5 6; do
    dd if=/dev/urandom of=/mnt/r$round/f$i bs=4096 count=8 2>/dev/null
  done
  sync
  for i in 1 2 3 4 5 6 7 8; do echo $i > /mnt/r$round/n$i; done
  rm /mnt/r$round/f1
  sleep 7
  echo {SETTLED} $round
done
while true; do sleep 100; done
""",
}


def _tool(*argv: str, stdin: str | None = None) -> None:
    """Run a disk-building tool (UsageError with its message when it fails)."""
    done = subprocess.run([require(argv[0]), *argv[1:]], input=stdin, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise UsageError(f"{argv[0]} failed: {done.stderr.strip()}")


def _sparse(path: Path, size_bytes: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size_bytes)
    return path


def make_ext4(path: str | os.PathLike[str], size_bytes: int = 64 << 20) -> Path:
    """An empty ext4 (4 KiB blocks, with a journal) filling a new raw file."""
    path = _sparse(Path(path), size_bytes)
    _tool("mkfs.ext4", "-q", "-F", "-b", "4096", "-E",
          "lazy_itable_init=0,lazy_journal_init=0", str(path))
    return path


MIB = 1 << 20


@dataclass(frozen=True)
class GuestDisk:
    """A partitioned guest disk: its file, the guest's root device and, per partition
    name ("efi", "root", "swap"), its ``(start, length)`` in bytes."""

    path: Path
    table: str  # "mbr" or "gpt"
    root: str
    partitions: dict[str, tuple[int, int]]


#: the partitions of :func:`make_partitioned_disk`: name, sfdisk type alias, MiB
_LAYOUT = (("efi", "U", 34), ("root", "L", 48), ("swap", "S", 8))


def make_partitioned_disk(path: str | os.PathLike[str], table: str = "gpt") -> GuestDisk:
    """A disk as real VMs boot from (96 MiB): an MBR (``table="mbr"``) or GPT table
    written by sfdisk, p1 an EFI system partition (FAT32, 512-byte clusters), p2 an
    empty ext4 root (:func:`make_ext4`), p3 swap (mkswap), from 1 MiB on."""
    if table not in ("mbr", "gpt"):
        raise UsageError(f"table {table!r}: mbr or gpt")
    path = _sparse(Path(path), 96 * MIB)
    parts, start = {}, MIB
    lines = [f"label: {'dos' if table == 'mbr' else 'gpt'}"]
    for name, kind, mib in _LAYOUT:
        parts[name] = (start, mib * MIB)
        label = f', name="{name}"' if table == "gpt" else ""
        lines.append(f"start={start // 512}, size={mib * MIB // 512}, type={kind}{label}")
        start += mib * MIB
    _tool("sfdisk", "--quiet", str(path), stdin="\n".join(lines) + "\n")
    with tempfile.TemporaryDirectory(prefix="bf-guestdisk-") as tmp:
        volumes = {name: _sparse(Path(tmp) / name, length)
                   for name, (_, length) in parts.items()}
        _tool("mkfs.fat", "-F", "32", "-s", "1", "-n", "EFI", str(volumes["efi"]))
        make_ext4(volumes["root"], parts["root"][1])
        _tool("mkswap", str(volumes["swap"]))
        with open(path, "r+b") as disk:
            for name, volume in volumes.items():
                disk.seek(parts[name][0])
                disk.write(volume.read_bytes())
    return GuestDisk(path, table, "/dev/nvme0n1p2", parts)


def workload_guest(image: str | os.PathLike[str], workdir: str | os.PathLike[str],
                   workload: str, root: str = "/dev/nvme0n1", fmt: str = "raw") -> Guest:
    """A (not yet started) guest running ``workload`` on the ext4 on device ``root``
    of ``image`` (format ``fmt``; the whole disk, or a partition: :attr:`GuestDisk.root`)."""
    if workload not in WORKLOADS:
        raise UsageError(f"workload {workload!r}: one of {', '.join(WORKLOADS)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    init = _PRELUDE.format(root=root) + WORKLOADS[workload]
    kernel, initramfs = guest_boot_files(init.encode())
    initrd = workdir / "initrd.gz"
    initrd.write_bytes(initramfs)
    return Guest(image, workdir, kernel=kernel, initrd=initrd, fmt=fmt)

"""A live Linux guest whose NVMe disk holds an ext4 that a workload inside writes.

The guest boots the Debian cloud kernel with a busybox initramfs (see
:func:`blockforensics.datasets.bootdisk.guest_boot_files`); its /init mounts
``/dev/nvme0n1`` on /mnt, prints :data:`MOUNTED` on the serial console and runs a
workload: ``"writer"`` rewrites files in a loop (changed-block tracking has
something to track); ``"settle"`` writes files, then makes metadata changes that
the journal commits but does not yet checkpoint, prints :data:`SETTLED` and the
round, three times — a snapshot then holds an ext4 whose journal needs replay.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from blockforensics.datasets.bootdisk import guest_boot_files
from blockforensics.errors import UsageError
from blockforensics.live.qemu import Guest
from blockforensics.tools import require

MOUNTED = "BF-LIVE-MOUNTED"
SETTLED = "BF-LIVE-SETTLED"
WROTE = "BF-LIVE-WROTE"

_PRELUDE = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /dev /mnt
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
mount -t ext4 /dev/nvme0n1 /mnt || poweroff -f
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


def make_ext4(path: str | os.PathLike[str], size_bytes: int = 64 << 20) -> Path:
    """An empty ext4 (4 KiB blocks, with a journal) filling a new raw file."""
    path = Path(path)
    with open(path, "wb") as fh:
        fh.truncate(size_bytes)
    done = subprocess.run([require("mkfs.ext4"), "-q", "-F", "-b", "4096", "-E",
                           "lazy_itable_init=0,lazy_journal_init=0", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise UsageError(f"mkfs.ext4 failed: {done.stderr.strip()}")
    return path


def workload_guest(image: str | os.PathLike[str], workdir: str | os.PathLike[str],
                   workload: str) -> Guest:
    """A (not yet started) guest running ``workload`` on the ext4 in ``image``."""
    if workload not in WORKLOADS:
        raise UsageError(f"workload {workload!r}: one of {', '.join(WORKLOADS)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    kernel, initramfs = guest_boot_files((_PRELUDE + WORKLOADS[workload]).encode())
    initrd = workdir / "initrd.gz"
    initrd.write_bytes(initramfs)
    return Guest(image, workdir, kernel=kernel, initrd=initrd)

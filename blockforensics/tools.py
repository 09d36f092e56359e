"""External programs the toolkit drives (qemu, mtools, The Sleuth Kit …).

``require`` finds a program or raises a one-line UsageError naming the Debian
package that provides it, so a missing tool never surfaces as a traceback;
``require_file`` does the same for a data file (firmware, a boot loader).
"""

from __future__ import annotations

import os
import shutil

from blockforensics.errors import UsageError

#: program -> Debian package that provides it
PACKAGES = {
    "oggenc": "vorbis-tools",
    "xz": "xz-utils",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-storage-daemon": "qemu-system-common",
    "qemu-io": "qemu-utils",
    "fusermount3": "fuse3",
    "mcopy": "mtools",
    "pvcreate": "lvm2",
    "vgcreate": "lvm2",
    "lvcreate": "lvm2",
    "lvextend": "lvm2",
    "lvs": "lvm2",
    "pvs": "lvm2",
    "vgcfgbackup": "lvm2",
    "vgcfgrestore": "lvm2",
    "losetup": "mount",
    "mformat": "mtools",
    "mdir": "mtools",
    "syslinux": "syslinux",
    "sfdisk": "fdisk",
    "fls": "sleuthkit",
    "blkls": "sleuthkit",
    "icat": "sleuthkit",
    "mkfs.vfat": "dosfstools",
    "fsck.vfat": "dosfstools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "tsk_recover": "sleuthkit",
    "fsstat": "sleuthkit",
    "mkfs.fat": "dosfstools",
    "fsck.fat": "dosfstools",
    "sgdisk": "gdisk",
    "mkntfs": "ntfs-3g",
    "ntfs-3g": "ntfs-3g",
    "ntfscluster": "ntfs-3g",
    "ntfsfix": "ntfs-3g",
    "mkfs.exfat": "exfatprogs",
    "mount.exfat-fuse": "exfat-fuse",
    "fusefat": "fusefat",
    "cryptsetup": "cryptsetup-bin",
    "mkswap": "util-linux",
    "fsck.exfat": "exfatprogs",
    "ewfacquire": "ewf-tools",
    "ewfverify": "ewf-tools",
    "ewfexport": "ewf-tools",
    "img_stat": "sleuthkit",
    "mmls": "sleuthkit",
    "mkfs.xfs": "xfsprogs",
    "xfs_db": "xfsprogs",
    "xfs_repair": "xfsprogs",
    "xfs_logprint": "xfsprogs",
    "xfs_io": "xfsprogs",
    "mkfs.btrfs": "btrfs-progs",
    "btrfs": "btrfs-progs",
    "mount": "mount",
    "umount": "mount",
    "mmd": "mtools",
}
#: data file -> Debian package that installs it
FILE_PACKAGES = {
    "/usr/share/OVMF/OVMF_CODE_4M.fd": "ovmf",
    "/usr/share/OVMF/OVMF_VARS_4M.fd": "ovmf",
    "/usr/lib/systemd/boot/efi/systemd-bootx64.efi": "systemd-boot-efi",
}


def which(program: str) -> str | None:
    """Path of ``program`` on PATH (also /sbin and /usr/sbin), or None."""
    return shutil.which(program) or shutil.which(
        program, path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")


def require(program: str) -> str:
    """Path of ``program``; UsageError naming its package when it is missing."""
    path = which(program)
    if path is None:
        package = PACKAGES.get(program)
        hint = f" (install the Debian package {package})" if package else ""
        raise UsageError(f"{program} not found{hint}")
    return path


def require_file(path: str | os.PathLike[str]) -> str:
    """``path`` if that file exists; UsageError naming its package when it is missing."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        package = FILE_PACKAGES.get(name)
        hint = f" (install the Debian package {package})" if package else ""
        raise UsageError(f"{name} not found{hint}")
    return name

#!/usr/bin/env bash
# Install everything blockforensics, its tests and its demo need (run as root on Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  qemu-system-x86 qemu-utils        # boot and cross-check disks
  ovmf systemd-boot-efi             # boot UEFI disks (OVMF); the UEFI sample disk's loader
  fuse3                             # expose a backup as a virtual disk file
  mtools dosfstools syslinux syslinux-common fdisk cpio busybox-static linux-image-cloud-amd64
                                    # build the sample bootable disk, make FAT file systems
  e2fsprogs                         # make and check ext2/3/4 file systems
  xfsprogs                          # make and check XFS file systems (xfs_db cross-checks)
  btrfs-progs                       # make and check Btrfs volumes (dump-tree cross-checks)
  lvm2                              # make LVM2 physical volumes for the tests (no activation)
  sleuthkit                         # independent file-system reader for cross-checks (mactime too)
  ewf-tools                         # ewfacquire/ewfverify: make and check E01 images in the tests
  gdisk ntfs-3g exfatprogs          # make GPT disks, NTFS and exFAT volumes for the tests
  exfat-fuse                        # a chain on an exFAT stick (no hard links, no sparse files)
  fusefat                           # a FAT32 stick mounted (no vfat driver in some kernels)
  cryptsetup-bin                    # LUKS headers: a volume encrypted whole, for the triage tests
  zip                               # a password-protected zip: the archive-and-delete attack
  vorbis-tools flac xz-utils bzip2 zstd  # real Ogg, FLAC, xz, bzip2, zstd files: body checks
  lame mkvtoolnix 7zip              # real MP3, Matroska and 7z files: body checks
  libarchive-tools                  # bsdtar reads the RAR archives the body tests write
  chromium chromium-driver          # the ChainExplorer tested in a real browser (selenium + Voila)
  gcc libc6-dev libssl-dev zlib1g-dev  # build the C batch hasher/encrypter (blockforensics._native)
  libfuse3-dev pkg-config           # build the C FUSE server (blockforensics._fuseserve)
)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[dev,notebooks]"

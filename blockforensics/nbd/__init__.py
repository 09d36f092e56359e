"""The Network Block Device protocol: its wire layouts (:mod:`.protocol`), a client
(:mod:`.client`) that reads a disk and its block-status maps from any NBD server
(QEMU, qemu-storage-daemon, nbdkit, ``blockforensics serve``)."""

#: URI schemes of NBD sources: ``nbd://HOST[:PORT]/EXPORT``, ``nbd+unix:///EXPORT?socket=PATH``
SCHEMES = ("nbd", "nbd+unix")

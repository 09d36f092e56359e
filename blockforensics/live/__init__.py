"""Methods 1–3 on a running QEMU: real dirty-bitmap tracking, image-fleecing
snapshots, head start and quiescence writes, driven over QMP and read over NBD.

A notebook reaches these as ``bf.live.<name>`` (``import blockforensics as bf``);
the simulated methods of the same names stay ``bf.<name>``.
"""

from blockforensics.live.guest import (
    MOUNTED,
    SETTLED,
    WROTE,
    GuestDisk,
    make_ext4,
    make_partitioned_disk,
    workload_guest,
)
from blockforensics.live.headstart import (
    LivePoint,
    backup_live,
    live_full,
    live_incremental,
    live_reread,
    next_bitmap_name,
)
from blockforensics.live.methods import branching_chain, quiesced_full_image, snapshot_pair
from blockforensics.live.ops import Fleece, LiveDisk
from blockforensics.live.qemu import NODE, Guest, StorageDaemon

__all__ = [
    "MOUNTED",
    "NODE",
    "SETTLED",
    "WROTE",
    "Fleece",
    "Guest",
    "GuestDisk",
    "LiveDisk",
    "LivePoint",
    "StorageDaemon",
    "backup_live",
    "branching_chain",
    "live_full",
    "live_incremental",
    "live_reread",
    "make_ext4",
    "make_partitioned_disk",
    "next_bitmap_name",
    "quiesced_full_image",
    "snapshot_pair",
    "workload_guest",
]

"""qcow2 (QEMU copy-on-write, version 3) written from a Disk, optionally over a backing file.

The file is a sequence of 64 KiB clusters: the header (with its extensions and
the backing file's name) in cluster 0, then the refcount table, the refcount
blocks, the L1 table, the L2 tables and the data clusters.  A guest offset is
translated by L1 -> L2 -> data cluster; an L2 entry of 0 reads from the backing
file (zeros without one), one with bit 0 set reads as zeros whatever lies below.
Every cluster the file uses has refcount 1, so ``qemu-img check`` finds no leaks.

A qcow2 over a backing file (a chain export's child) holds only the clusters of
``covers``: each such cluster is written whole from the disk (the point the
child stands for), or marked as zeros when the point holds no data in it.

Spec: QEMU's docs/interop/qcow2.txt.  Units: bytes, unless a name says clusters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout, packed, round_up, touched, write_layout
from blockforensics.formats.placement import Placement
from blockforensics.formats.record import Record, f

MAGIC = b"QFI\xfb"
VERSION = 3
CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
#: refcounts are 2**REFCOUNT_ORDER bits wide (16, QEMU's default)
REFCOUNT_ORDER = 4
#: L1/L2 entry flag: the cluster's refcount is exactly 1 (may be written in place)
COPIED = 1 << 63
#: L2 entry flag (version 3): the cluster reads as zeros
ZERO = 1
#: header extension types
EXT_END, EXT_BACKING_FORMAT = 0, 0xE2792ACA
#: entries (8 bytes) per L2 table, refcounts per refcount block
L2_ENTRIES = CLUSTER // 8
REFCOUNTS_PER_BLOCK = CLUSTER * 8 >> REFCOUNT_ORDER


@dataclass(frozen=True)
class Header(Record):
    """The qcow2 header (version 3, 104 bytes, big-endian)."""

    magic: bytes = f("4s")
    version: int = f("I")
    backing_file_offset: int = f("Q")  # bytes; 0 without a backing file
    backing_file_size: int = f("I")  # bytes of the name (no terminating NUL)
    cluster_bits: int = f("I")
    size: int = f("Q")  # virtual disk size, bytes
    crypt_method: int = f("I")  # 0: none
    l1_size: int = f("I")  # entries
    l1_table_offset: int = f("Q")
    refcount_table_offset: int = f("Q")
    refcount_table_clusters: int = f("I")
    nb_snapshots: int = f("I")
    snapshots_offset: int = f("Q")
    incompatible_features: int = f("Q")
    compatible_features: int = f("Q")
    autoclear_features: int = f("Q")
    refcount_order: int = f("I")
    header_length: int = f("I")


@dataclass(frozen=True)
class Extension(Record):
    """A header extension's type and length; its data follows, padded to 8 bytes."""

    type: int = f("I")
    length: int = f("I")


def _extension(kind: int, data: bytes) -> bytes:
    return Extension(kind, len(data)).pack() + data.ljust(round_up(len(data), 8), b"\0")


def _copied(offsets: np.ndarray) -> np.ndarray:
    """L1/L2 entries of clusters at ``offsets`` whose refcount is 1."""
    return offsets.astype(np.uint64) | np.uint64(COPIED)


@dataclass(frozen=True)
class Backing:
    """A qcow2's backing file: its name as stored (relative to the qcow2) and format."""

    name: str
    format: str  # QEMU's format name: "qcow2", "raw", "vpc" …


class Qcow2Layout(FileLayout):
    """The byte layout of a qcow2 file of ``disk`` (over ``backing``, holding ``covers``).

    Without ``covers`` every cluster overlapping ``disk.present()`` is allocated;
    with it, the clusters overlapping ``covers``: allocated where the disk has
    data there, zero clusters elsewhere.
    """

    def __init__(self, disk: Disk, *, backing: Backing | None = None,
                 covers: BlockMap | None = None):
        super().__init__(disk)
        n_clusters = -(-self.size // CLUSTER)
        wanted = touched(self.present, CLUSTER, n_clusters)  # maps of clusters
        zero = BlockMap.empty(n_clusters)
        if covers is not None:
            cover = touched(covers, CLUSTER, n_clusters)
            zero = cover - wanted
            wanted &= cover
        self.clusters = wanted.positions()  # guest clusters with data, in file order
        l1_size = -(-n_clusters // L2_ENTRIES)
        tables = np.zeros(l1_size, dtype=bool)
        tables[(wanted | zero).positions() // L2_ENTRIES] = True
        l2_tables = np.flatnonzero(tables)  # L1 indexes that have an L2 table
        l1_clusters = -(-l1_size * 8 // CLUSTER)
        fixed = 1 + l1_clusters + l2_tables.size + self.clusters.size
        rt, rb = 1, 1  # refcount table clusters, refcount blocks: grow until they cover all
        while True:
            total = fixed + rt + rb
            need_rb = -(-total // REFCOUNTS_PER_BLOCK)
            need_rt = -(-need_rb * 8 // CLUSTER)
            if (need_rb, need_rt) == (rb, rt):
                break
            rb, rt = max(rb, need_rb), max(rt, need_rt)
        rt_at = CLUSTER
        rb_at = rt_at + rt * CLUSTER
        l1_at = rb_at + rb * CLUSTER
        l2_at = l1_at + l1_clusters * CLUSTER
        self.data_start = l2_at + l2_tables.size * CLUSTER
        self.file_size = self.data_start + self.clusters.size * CLUSTER
        # the tables, big-endian
        refcount_table = np.zeros(rt * CLUSTER // 8, dtype=">u8")
        refcount_table[:rb] = rb_at + np.arange(rb, dtype=np.int64) * CLUSTER
        refcounts = np.zeros(rb * REFCOUNTS_PER_BLOCK, dtype=">u2")
        refcounts[:total] = 1
        l1 = np.zeros(l1_clusters * CLUSTER // 8, dtype=">u8")
        l1[l2_tables] = _copied(l2_at + np.arange(l2_tables.size, dtype=np.uint64) * CLUSTER)
        l2 = np.zeros((l2_tables.size, L2_ENTRIES), dtype=">u8")  # only the tables there are

        def entries(clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.searchsorted(l2_tables, clusters // L2_ENTRIES), clusters % L2_ENTRIES

        l2[entries(zero.positions())] = ZERO
        l2[entries(self.clusters)] = _copied(
            self.data_start + np.arange(self.clusters.size, dtype=np.uint64) * CLUSTER)
        self._tables = [(rt_at, refcount_table.tobytes()), (rb_at, refcounts.tobytes()),
                        (l1_at, l1.tobytes()), (l2_at, l2.tobytes())]
        extensions = b""
        name = b""
        if backing is not None:
            extensions = _extension(EXT_BACKING_FORMAT, backing.format.encode())
            name = backing.name.encode()
        extensions += _extension(EXT_END, b"")
        name_at = Header.packed_size() + len(extensions)
        if name_at + len(name) > CLUSTER:
            raise ValueError(f"backing file name of {len(name)} bytes does not fit the header")
        self.header = Header(
            magic=MAGIC, version=VERSION, backing_file_offset=name_at if name else 0,
            backing_file_size=len(name), cluster_bits=CLUSTER_BITS, size=self.size,
            crypt_method=0, l1_size=l1_size, l1_table_offset=l1_at, refcount_table_offset=rt_at,
            refcount_table_clusters=rt, nb_snapshots=0, snapshots_offset=0,
            incompatible_features=0, compatible_features=0, autoclear_features=0,
            refcount_order=REFCOUNT_ORDER, header_length=Header.packed_size())
        self._head = self.header.pack() + extensions + name

    def __repr__(self) -> str:
        return (f"Qcow2Layout({self.size} B disk, {self.clusters.size} data clusters, "
                f"{self.file_size} B file)")

    def placement(self) -> Placement:
        return packed(CLUSTER, self.clusters, self.data_start)

    def metadata(self) -> Iterator[tuple[int, bytes]]:
        yield 0, self._head
        yield from self._tables


def write_qcow2(disk: Disk, path: str | os.PathLike[str], *, backing: Backing | None = None,
                covers: BlockMap | None = None, progress: bool = False) -> Path:
    """Export ``disk`` to a qcow2 file at ``path`` (atomically); see :class:`Qcow2Layout`."""
    return write_layout(Qcow2Layout(disk, backing=backing, covers=covers), path,
                        progress=progress)

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

:class:`Qcow2Disk` reads qcow2 files (versions 2 and 3: zlib or zstd compressed
clusters, extended L2 entries with subclusters, an external data file, a chain of
backing files of any size and format) as QEMU reads them, and reports as present
the blocks its L2 tables map to data (its own, or its backing file's where it maps
nothing).  It replaces dissect.hypervisor 3.21's reader, which misread version 2
headers with a backing file, read a backing file shorter than the image out of
place, needed a zstd module the project does not install, looped on subclusters
and left external data files unread.

Spec: QEMU's docs/interop/qcow2.txt.  Units: bytes, unless a name says clusters.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.errors import FormatError, UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout, packed, round_up, touched, write_layout
from blockforensics.formats.placement import Placement
from blockforensics.formats.record import Record, f
from blockforensics.fs.base import covered

MAGIC = b"QFI\xfb"
VERSION = 3
CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
#: refcounts are 2**REFCOUNT_ORDER bits wide (16, QEMU's default)
REFCOUNT_ORDER = 4
#: L1/L2 entry flag: the cluster's refcount is exactly 1 (may be written in place)
COPIED = 1 << 63
#: L2 entry flag: the cluster is compressed (the rest of the entry: where, how long)
COMPRESSED = 1 << 62
#: L2 entry flag (version 3, without extended L2 entries): the cluster reads as zeros
ZERO = 1
#: bits 9-55 of an L1 entry or a standard L2 entry: a host offset
OFFSET_MASK = 0x00FFFFFFFFFFFE00
#: header extension types
EXT_END, EXT_BACKING_FORMAT, EXT_DATA_FILE = 0, 0xE2792ACA, 0x44415441
#: incompatible feature bits: dirty, corrupt, external data file, compression type,
#: extended L2 entries
INCOMPAT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = 1 << 2, 1 << 3, 1 << 4
INCOMPAT_KNOWN = 0x1F
#: bytes of a version 2 header (the version 3 fields after it read as their defaults)
V2_HEADER = 72
#: the version 3 header's optional compression type byte (0 zlib, 1 zstd)
COMPRESSION_TYPE_AT = 104
ZLIB, ZSTD = 0, 1
#: subclusters per cluster with extended L2 entries (an entry and a 64-bit bitmap:
#: bit i allocated, bit 32+i reads as zeros)
SUBCLUSTERS = 32
#: backing files deep before a chain is taken as a loop
MAX_BACKING_DEPTH = 64
#: bytes of a backing file's name, at most (QEMU's limit)
MAX_NAME = 1023
#: QEMU's format names -> this project's reader names
BACKING_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vpc": "vhd", "vhdx": "vhdx", "vmdk": "vmdk"}
#: what a unit (cluster, or subcluster) of a qcow2 reads: the backing file (zeros
#: without one), zeros, its data at a host offset, a compressed cluster
BELOW, ZEROS, DATA, PACKED = 0, 1, 2, 3
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


# ------------------------------------------------------------------------- reader
class Qcow2Disk(Disk):
    """A qcow2 file read as a Disk of its virtual size, over its backing file.

    Each *unit* (a cluster; a subcluster with extended L2 entries) reads as its L2
    entry says: its data (at a host offset in the image or its external data file),
    a compressed cluster, zeros (the zero flag, never the backing file's data), or,
    unallocated, the backing file at the same offset (zeros past its end, or without
    one).  The backing file is found as QEMU finds it: the name in the header,
    relative to this file's directory unless absolute, read in the format the header
    names (else probed); the data file likewise.
    """

    def __init__(self, path: str | os.PathLike[str], block_size: int = 4096, *,
                 depth: int = 0):
        self.path = Path(path)
        self.block_size = block_size
        self.backing: Disk | None = None
        self._fd = self._data_fd = -1
        self._data_path = self.path
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._unpacked: tuple[int, bytes] = (-1, b"")
        try:
            self._fd = self._open(self.path)
            self._file_size = os.fstat(self._fd).st_size
            self._data_fd = self._fd
            self._parse(depth)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open(path: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"{path}: cannot open ({exc.strerror})") from exc

    def _pread(self, offset: int, length: int, what: str) -> bytes:
        """``length`` bytes of the image file at ``offset``; FormatError if short."""
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise FormatError(f"{self.path.name}: {what} at byte {offset} runs past the end of "
                              "the file (truncated?)")
        return data

    def _parse(self, depth: int) -> None:
        name = self.path.name
        head = os.pread(self._fd, COMPRESSION_TYPE_AT + 1, 0)
        if head[:4] != MAGIC or len(head) < V2_HEADER:
            raise FormatError(f"{name}: no qcow2 header")
        version = int.from_bytes(head[4:8], "big")
        if version == 2:
            header = Header.unpack(head[:V2_HEADER].ljust(Header.packed_size(), b"\0")).replace(
                refcount_order=REFCOUNT_ORDER, header_length=V2_HEADER)
        elif version == 3 and len(head) >= Header.packed_size():
            header = Header.unpack(head)
        elif version == 1:
            raise FormatError(f"{name}: a qcow (version 1) image, which is not read: convert "
                              "it with qemu-img convert -O raw (or -O qcow2)")
        else:
            raise FormatError(f"{name}: qcow2 version {version} is not read (2 and 3 are)")
        if not 9 <= header.cluster_bits <= 21:
            raise FormatError(f"{name}: bad qcow2 cluster size 2**{header.cluster_bits}")
        if header.crypt_method:
            raise FormatError(f"{name}: encrypted qcow2 images (AES or LUKS) are not read: "
                              "decrypt one with qemu-img convert --object secret,... "
                              "--image-opts ... -O raw, and back that up")
        if not Header.packed_size() <= header.header_length <= 1 << header.cluster_bits \
                and version == 3:
            raise FormatError(f"{name}: bad qcow2 header length {header.header_length} (from "
                              f"{Header.packed_size()} to a cluster's bytes)")
        unknown = header.incompatible_features & ~INCOMPAT_KNOWN
        if unknown:
            raise FormatError(f"{name}: unknown qcow2 incompatible features {unknown:#x}")
        self.header = header
        self.size = header.size
        if header.nb_snapshots:
            self.notes = (f"{name} holds {header.nb_snapshots} internal snapshots; its active "
                          "state is read (qemu-img snapshot -l lists them; qemu-img convert -l "
                          "snapshot.name=NAME -O raw extracts one)",)
        self.cluster_size = 1 << header.cluster_bits
        extended = bool(header.incompatible_features & INCOMPAT_EXTL2)
        self._per_cluster = SUBCLUSTERS if extended else 1
        #: bytes of a unit (cluster or subcluster), L2 entries per table, bytes a table maps
        self.unit = self.cluster_size // self._per_cluster
        self._l2_entries = self.cluster_size // (16 if extended else 8)
        self._table_bytes = self._l2_entries * self.cluster_size
        self._compression = ZLIB
        if header.incompatible_features & INCOMPAT_COMPRESSION:
            self._compression = head[COMPRESSION_TYPE_AT] if len(head) > COMPRESSION_TYPE_AT \
                else -1
            if self._compression not in (ZLIB, ZSTD):
                raise FormatError(f"{name}: unknown qcow2 compression type {self._compression}")
        n_tables = -(-self.size // self._table_bytes)
        if header.l1_size < n_tables:
            raise FormatError(f"{name}: L1 table of {header.l1_size} entries cannot map "
                              f"{self.size} bytes")
        self._l1 = np.frombuffer(self._pread(header.l1_table_offset, n_tables * 8, "the L1 table"),
                                 ">u8").astype(np.uint64) & np.uint64(OFFSET_MASK)
        extensions = self._extensions()
        if header.incompatible_features & INCOMPAT_DATA_FILE:
            if EXT_DATA_FILE not in extensions:
                raise FormatError(f"{name}: needs an external data file but names none")
            self._data_path = self._beside(extensions[EXT_DATA_FILE].decode(errors="replace"),
                                           "data file")
            self._data_fd = self._open(self._data_path)
        if header.backing_file_offset and header.backing_file_size:
            if header.backing_file_size > min(MAX_NAME, self.cluster_size -
                                              header.backing_file_offset):
                raise FormatError(f"{name}: the backing file's name is too long or lies past "
                                  "the header cluster")
            if depth >= MAX_BACKING_DEPTH:
                raise FormatError(f"{name}: more than {MAX_BACKING_DEPTH} backing files (a loop?)")
            below = self._beside(self._pread(header.backing_file_offset, header.backing_file_size,
                                             "the backing file's name").decode(errors="replace"),
                                 "backing file")
            fmt = BACKING_FORMATS.get(extensions.get(EXT_BACKING_FORMAT, b"").decode(
                errors="replace"))
            self.backing = self._open_backing(below, fmt, depth)

    def _extensions(self) -> dict[int, bytes]:
        """The header extensions' data by type (they end at EXT_END or the first cluster)."""
        found: dict[int, bytes] = {}
        at = self.header.header_length
        end = self.header.backing_file_offset or self.cluster_size
        while at + Extension.packed_size() <= end:
            ext = Extension.unpack(os.pread(self._fd, Extension.packed_size(), at).ljust(
                Extension.packed_size(), b"\0"))
            at += Extension.packed_size()
            if ext.type == EXT_END or at + ext.length > end:
                break
            found[ext.type] = os.pread(self._fd, ext.length, at)
            at += round_up(ext.length, 8)
        return found

    def _beside(self, name: str, what: str) -> Path:
        """The file ``name`` (relative to this image's directory unless absolute)."""
        from blockforensics.formats import check_local_source

        path = Path(name) if Path(name).is_absolute() else self.path.parent / name
        if not name or "\0" in name or not path.exists() or path.is_dir():
            raise FormatError(f"{self.path}: {what} {path} not found")
        try:  # a FIFO would block its opening, a character device its reads
            check_local_source(path)
        except UsageError as exc:
            raise FormatError(f"{self.path}: {what} {exc}") from None
        return path

    def _open_backing(self, path: Path, fmt: str | None, depth: int) -> Disk:
        from blockforensics.formats import open_disk, signature

        if fmt == "qcow2" or (fmt is None and signature.is_qcow2(path)):
            return Qcow2Disk(path, self.block_size, depth=depth + 1)
        return open_disk(path, format=fmt)

    # -------------------------------------------------------------- L2 tables
    def _table(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """What each unit mapped by L2 table ``index`` reads (BELOW, ZEROS, DATA, PACKED)
        and where: the unit's host offset (DATA) or the cluster's L2 entry (PACKED)."""
        per = self._per_cluster
        at = int(self._l1[index])
        if not at:
            n = self._l2_entries * per
            return np.full(n, BELOW, dtype=np.int8), np.zeros(n, dtype=np.uint64)
        words = np.frombuffer(self._pread(at, self.cluster_size, "an L2 table"), ">u8").astype(
            np.uint64)
        entry = words[::2] if per > 1 else words
        packed = (entry & np.uint64(COMPRESSED)) != 0
        host = entry & np.uint64(OFFSET_MASK)
        external = self._data_fd != self._fd  # there, host offset 0 is a cluster too
        allocated = ~packed & ((host != 0) | (external & ((entry & np.uint64(COPIED)) != 0)))
        misplaced = allocated & ((host & np.uint64(self.cluster_size - 1)) != 0)
        if misplaced.any():
            raise FormatError(f"{self.path.name}: L2 table {index} maps a data cluster at byte "
                              f"{int(host[misplaced][0])}, which is no cluster boundary: a "
                              "corrupt qcow2 image (qemu-img check tells more)")
        if not external:
            self._check_within_file(host[allocated], index)
        if per == 1:
            zero = ~packed & ((entry & np.uint64(ZERO)) != 0)
            kind = np.select([packed, zero, allocated], [PACKED, ZEROS, DATA], BELOW)
            return kind.astype(np.int8), np.where(packed, entry, host)
        bitmap = words[1::2, None]
        sub = np.arange(per, dtype=np.uint64)
        zero = ((bitmap >> (sub + np.uint64(32))) & np.uint64(1)) != 0
        mine = (((bitmap >> sub) & np.uint64(1)) != 0) & allocated[:, None]
        kind = np.select([packed[:, None], zero, mine], [PACKED, ZEROS, DATA], BELOW)
        where = np.where(packed[:, None], entry[:, None],
                         host[:, None] + sub * np.uint64(self.unit))
        return kind.astype(np.int8).reshape(-1), where.reshape(-1)

    def _check_within_file(self, hosts: np.ndarray, index: int) -> None:
        """FormatError when a data cluster of L2 table ``index`` (host offsets, bytes)
        starts at or past the end of the image file: the file was cut short (or the table
        is damaged), and its data is lost.  QEMU reads such clusters as zeros and
        ``qemu-img check`` reports them; a backup must not store zeros in their place.
        The last cluster may end past the end of the file (QEMU leaves its tail
        unwritten): that tail reads as zeros."""
        beyond = hosts[hosts >= np.uint64(self._file_size)]
        if beyond.size:
            first = index * self._table_bytes
            raise FormatError(f"{self.path.name}: {beyond.size} data clusters mapped from guest "
                              f"byte {first} on lie past the end of the file ({self._file_size} "
                              f"bytes; the first at byte {int(beyond.min())}): a truncated "
                              "qcow2 image (qemu-img check tells more; qemu-img convert "
                              "reads them as zeros)")

    def _cached_table(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._tables:
            if len(self._tables) >= 64:
                self._tables.pop(next(iter(self._tables)))
            self._tables[index] = self._table(index)
        return self._tables[index]

    def _cluster(self, entry: int) -> bytes:
        """The cluster a compressed L2 entry describes, decompressed."""
        if self._unpacked[0] == entry:
            return self._unpacked[1]
        shift = 62 - (self.header.cluster_bits - 8)
        host = entry & ((1 << shift) - 1)
        sectors = ((entry >> shift) & ((1 << (self.header.cluster_bits - 8)) - 1)) + 1
        raw = os.pread(self._fd, sectors * 512 - (host & 511), host)
        try:  # at most a cluster's bytes come out, whatever the stream claims
            if self._compression == ZSTD:
                import zstandard

                try:
                    with zstandard.ZstdDecompressor().stream_reader(raw) as stream:
                        data = stream.read(self.cluster_size)
                except zstandard.ZstdError as exc:
                    raise ValueError(str(exc)) from None
            else:
                data = zlib.decompressobj(-12).decompress(raw, self.cluster_size)
        except (zlib.error, ValueError) as exc:
            data, why = b"", f" ({exc})"
        else:
            why = ""
        if len(data) < self.cluster_size:
            raise FormatError(f"{self.path.name}: the compressed cluster at byte {host} does not "
                              f"decompress to {self.cluster_size} bytes{why}")
        self._unpacked = (entry, data[: self.cluster_size])
        return self._unpacked[1]

    # -------------------------------------------------------------- the Disk
    def read_blocks(self, start: int, count: int) -> np.ndarray:
        out = np.zeros(count * self.block_size, dtype=np.uint8)
        offset = start * self.block_size
        n = max(0, min(out.size, self.size - offset))
        unit, pos = self.unit, 0
        while pos < n:
            index, within = divmod(offset + pos, self._table_bytes)
            length = min(n - pos, self._table_bytes - within)
            first, stop = within // unit, -(-(within + length) // unit)
            kind, where = self._cached_table(index)
            kind, where = kind[first:stop], where[first:stop]
            # runs of one kind (DATA: contiguous on the host; PACKED: one cluster's units)
            breaks = (kind[1:] != kind[:-1]) | (
                (kind[1:] == DATA) & (where[1:] != where[:-1] + np.uint64(unit))) | (
                (kind[1:] == PACKED) & (where[1:] != where[:-1]))
            edges = np.concatenate([[0], np.flatnonzero(breaks) + 1, [kind.size]])
            base = index * self._table_bytes
            for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
                lo = max(within, (first + a) * unit)
                hi = min(within + length, (first + b) * unit)
                dst = out[pos + lo - within : pos + hi - within]
                self._read_run(int(kind[a]), int(where[a]), base + lo, lo - (first + a) * unit,
                               dst)
            pos += length
        return out.reshape(count, self.block_size)

    def _read_run(self, kind: int, where: int, offset: int, skip: int, dst: np.ndarray) -> None:
        """Fill ``dst`` with the disk's bytes from ``offset``: a run of units of ``kind``
        whose first begins ``skip`` bytes before ``offset`` (``where``: see _table)."""
        if kind == DATA:
            got = os.preadv(self._data_fd, [dst.data], where + skip)
            dst[got:] = 0  # past the end of the file: zeros, as QEMU reads them
        elif kind == PACKED:
            within = offset % self.cluster_size
            dst[:] = np.frombuffer(self._cluster(where), np.uint8)[within : within + dst.size]
        elif kind == BELOW and self.backing is not None:
            below = self.backing.read(offset, dst.size)
            dst[: len(below)] = np.frombuffer(below, np.uint8)

    def present(self) -> BlockMap:
        """Blocks touching units with data (compressed, or mapped to bytes of the host
        file that are not a hole: ``preallocation=metadata`` maps clusters that read as
        zeros), and, where no L2 entry maps anything, the backing file's present blocks.
        Only the units of the L2 tables there are are listed: memory follows what the
        image maps, not its virtual size (a 1 PiB image of 64 KiB clusters has 2**34)."""
        bs, n = self.block_size, self.n_blocks
        n_units = -(-self.size // self.unit)
        per_table = self._table_bytes // self.unit
        packed: list[np.ndarray] = []  # unit numbers: compressed; DATA, and their hosts;
        data: list[np.ndarray] = []  # BELOW within the tables there are
        hosts: list[np.ndarray] = []
        below: list[np.ndarray] = []
        for index in np.flatnonzero(self._l1).tolist():
            first = index * per_table
            kind, where = self._table(index)
            kind = kind[: n_units - first]
            units = np.flatnonzero(kind == DATA)
            data.append(first + units)
            hosts.append(where[units].astype(np.int64))
            packed.append(first + np.flatnonzero(kind == PACKED))
            if self.backing is not None:
                below.append(first + np.flatnonzero(kind == BELOW))
        none = np.zeros(0, dtype=np.int64)
        mapped = np.concatenate([none, *data])
        own = np.concatenate([none, *packed,
                              mapped[self._holding(np.concatenate([none, *hosts]))]])

        def blocks(starts: np.ndarray, length: int) -> np.ndarray:
            """Flags of the blocks touching ``length`` bytes from each of ``starts``."""
            return covered(starts // bs, -(-np.minimum(starts + length, self.size) // bs), n)

        flags = blocks(own * self.unit, self.unit)
        if self.backing is not None:
            theirs = self.backing.present()
            first, count = theirs.run_arrays()
            unit = theirs.block_size
            present_below = covered(first * unit // bs, -(-np.minimum(
                (first + count) * unit, self.backing.size) // bs), n)
            unmapped = np.flatnonzero(self._l1 == 0).astype(np.int64)
            flags |= (blocks(unmapped * self._table_bytes, self._table_bytes)
                      | blocks(np.concatenate([none, *below]) * self.unit, self.unit)
                      ) & present_below
        return BlockMap.from_bools(flags, bs)

    def _holding(self, hosts: np.ndarray) -> np.ndarray:
        """Whether a unit at each host offset (bytes) overlaps the data extents of the
        file holding the data (a hole, or past its end, reads as zeros)."""
        from blockforensics.formats.raw import RawDisk

        if not hosts.size:
            return np.zeros(0, dtype=bool)
        with RawDisk(self._data_path) as host:
            bs, flags = host.block_size, np.zeros(host.n_blocks, dtype=bool)
            flags[host.present().positions()] = True
        counts = np.concatenate([[0], np.cumsum(flags)])
        first = np.minimum(hosts // bs, flags.size)
        last = np.minimum(-(-(hosts + self.unit) // bs), flags.size)
        return counts[last] > counts[first]

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        for fd in {self._fd, self._data_fd} - {-1}:
            os.close(fd)
        self._fd = self._data_fd = -1

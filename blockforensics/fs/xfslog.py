"""XFS log recovery for reading: what the kernel's ``xlog_recover`` writes, as bytes.

A dirty log (a volume copied while mounted, or crashed) holds transactions whose
metadata may not be in place yet: a file created, appended, renamed or deleted and
fsync'd since the log was last written back.  The kernel replays them at mount;
file listings read the volume as it would after that, through an overlay of the
replayed bytes (:class:`~blockforensics.snapshot.OverlayDisk`), never writing the
source.

The log's operations (:meth:`XfsFileSystem.log_ops`, tail to head) are grouped by
transaction (``oh_tid``): a START operation opens one, its first region is the
transaction header (``TRNS``), then come items — the first region of each names how
many regions it has (``*_size``, the second 16-bit field) — and a COMMIT operation
closes it; transactions not committed before the head are not replayed.  Items are
in the byte order of the host that logged them (the item type tells which); the
buffer contents and extents they carry are the on-disk (big-endian) bytes.  As the
kernel does:

- pass 1 counts buffer cancel records (``xfs_buf_log_format`` with
  ``XFS_BLF_CANCEL``: a metadata block freed); pass 2 replays transactions in commit
  order, each one's buffers before its other items, and skips a buffer (or an inode
  whose cluster buffer) has a cancel record at or after it;
- a buffer item: its dirty 128-byte chunks (``blf_data_map``, runs of set bits, a
  region per run, trimmed to the region's length) copied over the buffer
  (``blf_blkno``, ``blf_len`` basic blocks); an inode buffer (``XFS_BLF_INODE_BUF``)
  gets only the ``di_next_unlinked`` fields its logged chunks hold;
- an inode item (``xfs_inode_log_format``): unless the inode on disk carries a newer
  LSN, the logged ``xfs_log_dinode`` (host order) is converted field by field to the
  on-disk ``xfs_dinode`` (timestamps as bigtime or two 32-bit halves), stamped with
  the transaction's LSN, and the logged data and attribute forks copied after it
  (local data and extent lists as they are; a B+tree root from the in-core
  ``bmbt`` block layout to the on-disk ``bmdr`` one);
- v5 CRCs of the inodes and of the metadata blocks replayed are computed again.

Not replayed: intent items recovery finishes afterwards (extent frees, reverse
mapping, refcount and bmap updates, logged extended attributes, file-range
exchanges), ``icreate`` items (inode chunks initialised: the inodes of new files
are written whole by their inode items), and dquots.  Their count is said.

Units: basic blocks (512 bytes) for ``blkno``/``len``; bytes elsewhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockforensics.checksum import crc32c
from blockforensics.errors import UNPARSABLE, FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.structure import Structure
from blockforensics.fs.xfs import (
    BASIC_BLOCK,
    LOG_COMMIT_TRANS,
    LOG_DIRTY,
    LOG_RECORD,
    LOG_START_TRANS,
    LogOp,
    XfsFileSystem,
)
from blockforensics.snapshot import OverlayDisk

#: log item types (``XFS_LI_*``), the first 16 bits of an item's first region
LI_INODE, LI_BUF, LI_ICREATE = 0x123B, 0x123C, 0x123F
LI_NAMES = {0x1236: "extent-free intent", 0x1237: "extent-free done", 0x1238: "iunlink",
            LI_INODE: "inode", LI_BUF: "buffer", 0x123D: "dquot", 0x123E: "quota-off",
            LI_ICREATE: "inode-chunk create", 0x1240: "rmap intent", 0x1241: "rmap done",
            0x1242: "refcount intent", 0x1243: "refcount done", 0x1244: "bmap intent",
            0x1245: "bmap done", 0x1246: "xattr intent", 0x1247: "xattr done",
            0x1248: "exchange intent", 0x1249: "exchange done"}
#: "TRNS", the transaction header's magic
TRANS_MAGIC = 0x5452414E
#: most regions one item may have (a 64 KiB buffer with every other chunk dirty, and more)
MAX_REGIONS = 1024

BUF_FORMAT = {order: Structure("XfsBufLogFormat", 20, [
    (0x0, "H", "blf_type"),
    (0x2, "H", "blf_size"),
    (0x4, "H", "blf_flags"),
    (0x6, "H", "blf_len"),
    (0x8, "q", "blf_blkno"),
    (0x10, "I", "blf_map_size"),  # 32-bit words of blf_data_map (from byte 0x14)
], byteorder=order) for order in "<>"}
BUF_MAP_OFFSET = 0x14
BLF_INODE_BUF = 0x1
BLF_CANCEL = 0x4
BLF_CHUNK = 128  # bytes per bit of the dirty map
#: xfs_inode_log_format (64-bit layout, 56 bytes) and xfs_inode_log_format_32 (packed, 52)
INODE_FORMAT = {(order, size): Structure("XfsInodeLogFormat", size, [
    (0x0, "H", "ilf_type"),
    (0x2, "H", "ilf_size"),
    (0x4, "I", "ilf_fields"),
    (0x8, "H", "ilf_asize"),
    (0xA, "H", "ilf_dsize"),
    (ino, "Q", "ilf_ino"),
    (ino + 8, "I", "ilf_rdev"),
    (ino + 24, "q", "ilf_blkno"),
    (ino + 32, "i", "ilf_len"),
    (ino + 36, "i", "ilf_boffset"),
], byteorder=order) for order in "<>" for size, ino in ((56, 0x10), (52, 0xC))}
ILOG_DDATA, ILOG_DEXT, ILOG_DBROOT, ILOG_DEV = 0x2, 0x4, 0x8, 0x10
ILOG_ADATA, ILOG_AEXT, ILOG_ABROOT = 0x40, 0x80, 0x100
ILOG_DFORK = ILOG_DDATA | ILOG_DEXT | ILOG_DBROOT
ILOG_AFORK = ILOG_ADATA | ILOG_AEXT | ILOG_ABROOT

#: xfs_dinode / xfs_log_dinode (same offsets): ``(offset, bytes)`` of each integer field
#: converted from the logging host's order to big-endian, v1-3 (the core's first 96)
DINODE_FIELDS = ((0, 2), (2, 2), (6, 2), (8, 4), (12, 4), (16, 4), (20, 2), (22, 2),
                 (56, 8), (64, 8), (72, 4), (76, 4), (80, 2), (84, 4), (88, 2), (90, 2),
                 (92, 4))
#: and the fields v3 adds (di_changecount, di_flags2, di_cowextsize, di_ino)
DINODE_V3_FIELDS = ((104, 8), (120, 8), (128, 4), (152, 8))
DINODE_TIMES = (32, 40, 48)  # di_atime, di_mtime, di_ctime; v3 adds di_crtime
DINODE_CRTIME = 144
DINODE_UUID = (160, 176)
DINODE_V2_FLUSHITER = 30
DINODE_NEXT_UNLINKED = 96
DINODE_CRC = 100
DINODE_LSN = 112
DINODE_FLAGS2 = 120
DIFLAG2_BIGTIME = 1 << 3
DINODE_MAGIC = 0x494E  # "IN"
DINODE_SIZE = {3: 176}  # bytes of the core before the data fork (v1 and v2: 100)
DINODE_V2_SIZE = 100
#: a long-format B+tree block's header (the in-core root's), v5 and v4; an on-disk root's
BMBT_HEADER = {True: 72, False: 24}
BMDR_HEADER = 4

#: v5 metadata blocks whose CRC-32C (stored little-endian, over the whole buffer) is
#: computed again after replay: ``(offset of the magic, magic, offset of the CRC)``
CRC_PLACES = tuple(
    [(0, b"XFSB", 0xE0), (0, b"XAGF", 0xD8), (0, b"XAGI", 0x138), (0, b"XAFL", 0x20)]
    + [(0, m, 0x34) for m in (b"AB3B", b"AB3C", b"IAB3", b"FIB3", b"RMB3", b"R3FC")]
    + [(0, b"BMA3", 0x40)]
    + [(0, m, 0x4) for m in (b"XDB3", b"XDD3", b"XDF3")]
    + [(8, m.to_bytes(2, "big"), 0xC) for m in (0x3DF1, 0x3DFF, 0x3EBE, 0x3BEE)])


@dataclass
class _Item:
    """One log item: its regions (the first its format), ``total`` expected."""

    total: int
    regions: list[bytes] = field(default_factory=list)

    @property
    def kind(self) -> int:
        head = self.regions[0][:2]
        little = int.from_bytes(head, "little")
        return little if little in LI_NAMES else int.from_bytes(head, "big")

    @property
    def order(self) -> str:
        return "<" if int.from_bytes(self.regions[0][:2], "little") in LI_NAMES else ">"


@dataclass
class _Transaction:
    lsn: int  # the h_lsn of the record it starts in
    header: bytes = b""
    items: list[_Item] = field(default_factory=list)

    def add(self, region: bytes) -> None:
        """A region, as ``xlog_recover_add_to_trans`` takes it."""
        if not self.header:
            if TRANS_MAGIC not in (int.from_bytes(region[:4], "little"),
                                   int.from_bytes(region[:4], "big")):
                raise FormatError("a logged transaction does not start with its header")
            self.header = region
            return
        if not self.items or len(self.items[-1].regions) == self.items[-1].total:
            if len(region) < 4:
                raise FormatError("a log item's format region is shorter than 4 bytes")
            item = _Item(0, [region])
            size = int.from_bytes(region[2:4], "little" if item.order == "<" else "big")
            if item.kind not in LI_NAMES or not 0 < size <= MAX_REGIONS:
                raise FormatError(f"a log item of unknown type {item.kind:#x} or "
                                  f"{size} regions")
            item.total = size
            self.items.append(item)
            return
        self.items[-1].regions.append(region)


@dataclass
class XfsRecovery:
    """What replaying the log writes: bytes by basic block (``blocks``), and a count
    of the committed transactions, of the items replayed and of those left out by
    kind."""

    head: int
    tail: int
    transactions: int = 0
    replayed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    blocks: dict[int, bytearray] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: transactions, where, what was replayed and what not."""
        done = ", ".join(f"{n} {kind}" for kind, n in sorted(self.replayed.items()))
        left = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
        return (f"XFS log needs recovery ({self.transactions} transactions, tail block "
                f"{self.tail}, head block {self.head}; replayed: {done or 'nothing'}"
                + (f"; not replayed: {left}" if left else "") + ")")


class _Replay:
    """The kernel's two passes over the committed transactions of ``fs``'s log."""

    def __init__(self, fs: XfsFileSystem, recovery: XfsRecovery):
        self.fs, self.out = fs, recovery
        self.inode_size = fs.sb.sb_inodesize
        self.cancels: Counter[tuple[int, int]] = Counter()
        self.written: set[tuple[int, int]] = set()  # buffers replayed, for their CRCs

    # -------------------------------------------------------------- bytes
    def read(self, blkno: int, blocks: int) -> bytearray:
        """``blocks`` basic blocks from ``blkno``: as replayed so far, else on disk."""
        if blkno < 0 or (blkno + blocks) * BASIC_BLOCK > self.fs.size or blocks <= 0:
            raise FormatError(f"a logged buffer at basic block {blkno} (+{blocks}) lies "
                              f"outside the volume")
        out = bytearray()
        for b in range(blkno, blkno + blocks):
            kept = self.out.blocks.get(b)
            out += kept if kept is not None else self.fs.read(b * BASIC_BLOCK, BASIC_BLOCK)
        return out

    def write(self, blkno: int, data: bytes | bytearray) -> None:
        for i in range(len(data) // BASIC_BLOCK):
            self.out.blocks[blkno + i] = bytearray(data[i * BASIC_BLOCK : (i + 1) * BASIC_BLOCK])

    # -------------------------------------------------------------- passes
    def run(self, transactions: list[_Transaction]) -> None:
        for trans in transactions:  # pass 1: cancel records
            for item in trans.items:
                if item.kind == LI_BUF:
                    f = BUF_FORMAT[item.order].parse(item.regions[0])
                    if f.blf_flags & BLF_CANCEL:
                        self.cancels[(f.blf_blkno, f.blf_len)] += 1
        for trans in transactions:  # pass 2, each transaction's items in the kernel's order
            for item in sorted(trans.items, key=_replay_order):
                kind = LI_NAMES[item.kind]
                if item.kind == LI_BUF:
                    self.buffer(item)
                elif item.kind == LI_INODE:
                    self.inode(item, trans.lsn)
                else:
                    self.out.skipped[kind] += 1
        for blkno, blocks in self.written:
            data = self.read(blkno, blocks)
            if _set_crc(data):
                self.write(blkno, data)

    def _cancelled(self, key: tuple[int, int]) -> bool:
        return self.cancels[key] > 0

    def buffer(self, item: _Item) -> None:
        f = BUF_FORMAT[item.order].parse(item.regions[0])
        key = (f.blf_blkno, f.blf_len)
        if f.blf_flags & BLF_CANCEL:
            self.cancels[key] -= 1
            self.out.replayed["buffer cancel"] += 1
            return
        if self._cancelled(key):
            self.out.skipped["buffer freed later"] += 1
            return
        data = self.read(f.blf_blkno, f.blf_len)
        chunks = _logged_chunks(item, f, len(data))
        if f.blf_flags & BLF_INODE_BUF:  # only the unlinked-list pointers of its inodes
            for at in range(DINODE_NEXT_UNLINKED, len(data), self.inode_size):
                for start, region in chunks:
                    if start <= at and at + 4 <= start + len(region):
                        data[at : at + 4] = region[at - start : at - start + 4]
                        if self.fs.crc:
                            _set_inode_crc(data, at - DINODE_NEXT_UNLINKED, self.inode_size)
            self.out.replayed["inode buffer"] += 1
        else:
            for start, region in chunks:
                data[start : start + len(region)] = region
            self.written.add(key)
            self.out.replayed["buffer"] += 1
        self.write(f.blf_blkno, data)

    def inode(self, item: _Item, lsn: int) -> None:
        first = item.regions[0]
        size = 52 if len(first) == 52 else 56
        f = INODE_FORMAT[(item.order, size)].parse(first)
        if self._cancelled((f.ilf_blkno, f.ilf_len)):
            self.out.skipped["inode freed later"] += 1
            return
        if len(item.regions) < 2:
            raise FormatError(f"inode {f.ilf_ino}: logged without its core")
        buffer = self.read(f.ilf_blkno, f.ilf_len)
        at, isize = f.ilf_boffset, self.inode_size
        if not 0 <= at <= len(buffer) - isize:
            raise FormatError(f"inode {f.ilf_ino}: logged at byte {at} of its cluster buffer")
        disk = buffer[at : at + isize]
        if disk[4] >= 3:
            on_disk = int.from_bytes(disk[DINODE_LSN : DINODE_LSN + 8], "big")
            if on_disk not in (0, (1 << 64) - 1) and _lsn_after(on_disk, lsn):
                self.out.skipped["inode newer on disk"] += 1
                return
        core = _disk_core(item.regions[1], item.order, lsn, disk)
        disk[: len(core)] = core
        literal = len(core)
        forkoff = disk[82] * 8
        data_size = forkoff or isize - literal
        index = 2
        if f.ilf_fields & ILOG_DFORK and index < len(item.regions):
            _put_fork(disk, literal, data_size, item.regions[index][: f.ilf_dsize],
                      bool(f.ilf_fields & ILOG_DBROOT), self.fs.crc)
            index += 1
        elif f.ilf_fields & ILOG_DEV:
            disk[literal : literal + 4] = f.ilf_rdev.to_bytes(4, "big")
        if f.ilf_fields & ILOG_AFORK and index < len(item.regions) and forkoff:
            _put_fork(disk, literal + forkoff, isize - literal - forkoff,
                      item.regions[index][: f.ilf_asize], bool(f.ilf_fields & ILOG_ABROOT),
                      self.fs.crc)
        if disk[4] >= 3:
            _set_inode_crc(disk, 0, isize)
        buffer[at : at + isize] = disk
        self.write(f.ilf_blkno, buffer)
        self.out.replayed["inode"] += 1


def _replay_order(item: _Item) -> int:
    """Where ``xlog_recover_reorder_trans`` puts an item in its transaction: buffers
    (and inode-chunk creates) first, other items, inode buffers, then cancel records."""
    if item.kind != LI_BUF:
        return 0 if item.kind == LI_ICREATE else 1
    flags = BUF_FORMAT[item.order].parse(item.regions[0]).blf_flags
    return 3 if flags & BLF_CANCEL else 2 if flags & BLF_INODE_BUF else 0


def _lsn_after(a: int, b: int) -> bool:
    """Whether LSN ``a`` is later than ``b`` (cycle, then block)."""
    return (a >> 32, a & 0xFFFFFFFF) > (b >> 32, b & 0xFFFFFFFF)


def _logged_chunks(item: _Item, f: Any, length: int) -> list[tuple[int, bytes]]:
    """``(byte in the buffer, bytes)`` of each logged region of a buffer item: the runs
    of set bits of its dirty map, a region each, trimmed to the region's length."""
    if BUF_MAP_OFFSET + 4 * f.blf_map_size > len(item.regions[0]):
        raise FormatError(f"a logged buffer at basic block {f.blf_blkno}: its dirty map "
                          f"runs past its format region")
    words = np.frombuffer(item.regions[0], dtype=f"{item.order}u4", count=f.blf_map_size,
                          offset=BUF_MAP_OFFSET)
    bits = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little").astype(bool)
    edges = np.flatnonzero(np.diff(np.r_[0, bits.astype(np.int8), 0]))
    out, index = [], 1
    for start, stop in zip(edges[::2].tolist(), edges[1::2].tolist()):
        while start < stop:  # a run split over regions (a page boundary in the buffer)
            if index >= len(item.regions):
                raise FormatError(f"a logged buffer at basic block {f.blf_blkno} has fewer "
                                  f"regions than its dirty map")
            region = item.regions[index]
            n = min(stop - start, len(region) // BLF_CHUNK)
            if n <= 0 or (start + n) * BLF_CHUNK > length:
                raise FormatError(f"a logged buffer at basic block {f.blf_blkno}: a region "
                                  f"does not fit its map")
            out.append((start * BLF_CHUNK, region[: n * BLF_CHUNK]))
            start, index = start + n, index + 1
    return out


def _disk_core(log: bytes, order: str, lsn: int, disk: bytearray) -> bytes:
    """The on-disk ``xfs_dinode`` core of a logged ``xfs_log_dinode`` (in ``order``):
    each field big-endian, times as bigtime or two 32-bit halves, v3 stamped with
    ``lsn``; ``di_next_unlinked`` and (v3) ``di_crc`` kept from ``disk``."""
    version = log[4]
    size = DINODE_SIZE.get(version, DINODE_V2_SIZE)
    if len(log) < size or int.from_bytes(log[:2], "little" if order == "<" else "big") \
            != DINODE_MAGIC:
        raise FormatError("a logged inode core is short or has no inode magic")
    little = order == "<"
    out = bytearray(log[:size])

    def swap(at: int, n: int) -> None:
        if little:
            out[at : at + n] = out[at : at + n][::-1]

    fields = DINODE_FIELDS + (DINODE_V3_FIELDS if version >= 3 else ())
    for at, n in fields:
        swap(at, n)
    bigtime = version >= 3 and int.from_bytes(out[DINODE_FLAGS2 : DINODE_FLAGS2 + 8],
                                              "big") & DIFLAG2_BIGTIME
    for at in DINODE_TIMES + ((DINODE_CRTIME,) if version >= 3 else ()):
        if bigtime:
            swap(at, 8)
        else:
            swap(at, 4)
            swap(at + 4, 4)
    out[DINODE_NEXT_UNLINKED : DINODE_NEXT_UNLINKED + 4] = \
        disk[DINODE_NEXT_UNLINKED : DINODE_NEXT_UNLINKED + 4]
    if version >= 3:
        out[24:32] = bytes(8)  # di_v3_pad
        out[DINODE_LSN : DINODE_LSN + 8] = lsn.to_bytes(8, "big")
        out[132:144] = bytes(12)  # di_pad2
    else:
        out[24:30] = bytes(6)
        swap(DINODE_V2_FLUSHITER, 2)
    return bytes(out)


def _put_fork(disk: bytearray, at: int, room: int, logged: bytes, broot: bool,
              crc: bool) -> None:
    """A logged fork into the inode's literal area at byte ``at`` (``room`` bytes): as
    it is, or a B+tree root from the in-core block layout (keys, then pointers, each
    array sized for the logged length) to the on-disk one (sized for ``room``)."""
    if not broot:
        if len(logged) > room:
            raise FormatError("a logged fork is larger than its room in the inode")
        disk[at : at + len(logged)] = logged
        return
    header = BMBT_HEADER[crc]
    numrecs = int.from_bytes(logged[6:8], "big")
    logged_max = (len(logged) - header) // 16
    disk_max = (room - BMDR_HEADER) // 16
    if numrecs > min(logged_max, disk_max):
        raise FormatError("a logged B+tree root holds more records than fit")
    root = bytearray(room)
    root[0:4] = logged[4:8]  # bb_level, bb_numrecs
    keys = logged[header : header + 8 * numrecs]
    ptrs = logged[header + 8 * logged_max : header + 8 * (logged_max + numrecs)]
    root[BMDR_HEADER : BMDR_HEADER + len(keys)] = keys
    root[BMDR_HEADER + 8 * disk_max : BMDR_HEADER + 8 * disk_max + len(ptrs)] = ptrs
    disk[at : at + room] = root


def _set_inode_crc(data: bytearray, at: int, size: int) -> None:
    """The v3 inode at byte ``at`` of ``data`` gets its CRC computed again."""
    inode = data[at : at + size]
    inode[DINODE_CRC : DINODE_CRC + 4] = bytes(4)
    data[at + DINODE_CRC : at + DINODE_CRC + 4] = crc32c(inode).to_bytes(4, "little")


def _set_crc(data: bytearray) -> bool:
    """The CRC of a v5 metadata block of a known kind (by its magic) computed again
    (True), or nothing known (False)."""
    for magic_at, magic, crc_at in CRC_PLACES:
        if data[magic_at : magic_at + len(magic)] == magic:
            data[crc_at : crc_at + 4] = bytes(4)
            data[crc_at : crc_at + 4] = crc32c(data).to_bytes(4, "little")
            return True
    return False


def transactions(ops: list[LogOp]) -> list[_Transaction]:
    """The committed transactions of a log's operations, in commit order."""
    open_: dict[int, _Transaction] = {}
    done = []
    for op in ops:
        if op.flags & LOG_START_TRANS:
            open_[op.tid] = _Transaction(op.lsn)
            continue
        trans = open_.get(op.tid)
        if trans is None:
            continue  # begun before the tail (written back), or an unmount record
        if op.flags & LOG_COMMIT_TRANS:
            done.append(open_.pop(op.tid))
        elif op.region:
            trans.add(op.region)
    for trans in done:
        for item in trans.items:
            if len(item.regions) != item.total:
                raise FormatError(f"a committed {LI_NAMES[item.kind]} item has "
                                  f"{len(item.regions)} of its {item.total} regions")
    return done


def recover(fs: XfsFileSystem) -> XfsRecovery:
    """What the kernel's recovery of ``fs``'s dirty log writes; FormatError when the log
    cannot be read or replayed so (torn, damaged, an item that does not parse)."""
    state = fs._log
    ops = list(fs.log_ops())
    last = LOG_RECORD.parse(fs._log_blocks(state.last, 1))
    recovery = XfsRecovery(head=state.head, tail=last.h_tail_lsn & 0xFFFFFFFF)
    done = transactions(ops)
    recovery.transactions = len(done)
    _Replay(fs, recovery).run(done)
    return recovery


def replayed(fs: XfsFileSystem) -> tuple[Disk, str]:
    """The disk ``fs`` lies on as the kernel's log recovery leaves it (an overlay of the
    replayed blocks) and a note saying so; the disk itself and why not, when its log
    cannot be replayed (torn, damaged, external)."""
    if fs.log_problem != LOG_DIRTY:
        return fs.disk, f"XFS: {fs.log_problem}: listings show the pre-recovery state"
    try:
        recovery = recover(fs)
    except UNPARSABLE as exc:
        why = str(exc).removeprefix(f"{fs.name}: ")
        return fs.disk, (f"XFS log needs recovery but cannot be replayed ({why}): "
                         f"listings show the pre-recovery state")
    overlay = OverlayDisk(fs.disk)
    blocks = np.array(sorted(recovery.blocks), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    for run in np.split(blocks, breaks) if blocks.size else []:
        data = b"".join(recovery.blocks[int(b)] for b in run)
        overlay.write(fs.offset + int(run[0]) * BASIC_BLOCK, data)
    return overlay, f"{recovery.summary()}: listings show the recovered state"

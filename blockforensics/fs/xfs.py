"""XFS (the XFS Algorithms & Data Structures book): allocation from the free-space B+trees.

The data device is an array of ``sb_dblocks`` blocks of ``sb_blocksize`` bytes,
cut into ``sb_agcount`` allocation groups (AGs) of ``sb_agblocks`` blocks (the
last one may be shorter).  Each AG opens with four sectors: a superblock copy,
the AGF (free space), the AGI (inodes) and the AGFL (the free list).  The AGF
roots the free-space B+tree by block number (the *bnobt*): short-form btree
blocks (magic ``ABTB``, ``AB3B`` with CRCs on v5) whose leaves hold the AG's
free extents as ``(startblock, blockcount)`` in AG blocks.  Everything of an AG
that is not a free extent is in use: the AG headers, inode chunks, the internal
log, every metadata btree (and the AGFL's reserve), file data — so the
allocated units are the AG's blocks minus its bnobt records.

Checks: v5 superblock, AGF and btree blocks carry a CRC-32C (stored
little-endian, computed with the field zeroed); every btree block is checked
(magic, level, record count, owner AG and, on v5, its own address and CRC),
records must be sorted, inside the AG and not overlap, and their total must
equal ``agf_freeblks``.  Anything that does not hold is a FormatError: the volume
is then copied whole.

The log: a file system not cleanly unmounted (mounted when snapshotted, or
crashed) may hold allocations only in its log, which recovery replays.  The
internal log's head is found as the kernel finds it (bisection on the cycle
number each 512-byte log block starts with); the blocks around it (the whole log
when small) must be those of a log at rest.  Clean: the last record before the
head is an unmount record ending at the head.  Dirty: its records from the tail
(the last record's ``h_tail_lsn``) to the head are read (the first word of each
block restored from the headers' cycle data, regions split over records put
together) and every AG a logged buffer (``xfs_buf_log_format``) lies in is kept
whole; the others are read from their bnobt.  Why that keeps every block in use
after recovery: every change to an AG's free space logs that AG's AGF and btree
blocks in the same transaction, and a transaction not yet written back in place
lies between the tail and the head; so an AG with no logged buffer has on disk
the free space recovery leaves it (unfinished intents recovery carries out only
free blocks, or write new blocks).  A log in flight or torn, a record that does
not parse, or a log on an external device (not in the image) is a FormatError
(copied whole).

Units: ``unit`` is the file-system block (``sb_blocksize`` bytes); "AG blocks"
count from the start of an AG; log positions are 512-byte basic blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.checksum import crc32c
from blockforensics.errors import FormatError
from blockforensics.formats.base import Disk
from blockforensics.fs.base import FileSystem, units_map
from blockforensics.fs.structure import Structure

SUPERBLOCK = Structure("XfsSuperblock", 0x108, [
    (0x00, "I", "sb_magicnum"),
    (0x04, "I", "sb_blocksize"),
    (0x08, "Q", "sb_dblocks"),
    (0x10, "Q", "sb_rblocks"),
    (0x30, "Q", "sb_logstart"),
    (0x38, "Q", "sb_rootino"),
    (0x54, "I", "sb_agblocks"),
    (0x58, "I", "sb_agcount"),
    (0x60, "I", "sb_logblocks"),
    (0x64, "H", "sb_versionnum"),
    (0x66, "H", "sb_sectsize"),
    (0x68, "H", "sb_inodesize"),
    (0x78, "B", "sb_blocklog"),
    (0x79, "B", "sb_sectlog"),
    (0x7C, "B", "sb_agblklog"),
    (0x7E, "B", "sb_inprogress"),
    (0xC0, "B", "sb_dirblklog"),
    (0xC8, "I", "sb_features2"),
    (0xD0, "I", "sb_features_compat"),
    (0xD4, "I", "sb_features_ro_compat"),
    (0xD8, "I", "sb_features_incompat"),
    (0xDC, "I", "sb_features_log_incompat"),
], byteorder=">")
SB_MAGIC = 0x58465342  # "XFSB"
SB_CRC_OFFSET = 0xE0
AGF = Structure("XfsAgf", 0xE0, [
    (0x00, "I", "agf_magicnum"),
    (0x04, "I", "agf_versionnum"),
    (0x08, "I", "agf_seqno"),
    (0x0C, "I", "agf_length"),
    (0x10, "I", "agf_bno_root"),  # agf_roots[0]
    (0x1C, "I", "agf_bno_level"),  # agf_levels[0]
    (0x34, "I", "agf_freeblks"),
], byteorder=">")
AGF_MAGIC = 0x58414746  # "XAGF"
AGF_CRC_OFFSET = 0xD8
#: short-form btree block header (AG-relative pointers); v5 adds blkno, lsn, uuid,
#: owner and crc
SBLOCK = Structure("XfsBtreeSblock", 16, [
    (0x00, "I", "bb_magic"),
    (0x04, "H", "bb_level"),
    (0x06, "H", "bb_numrecs"),
], byteorder=">")
SBLOCK_CRC = Structure("XfsBtreeSblockCrc", 56, [
    (0x00, "I", "bb_magic"),
    (0x04, "H", "bb_level"),
    (0x06, "H", "bb_numrecs"),
    (0x10, "Q", "bb_blkno"),  # this block's address in 512-byte sectors
    (0x30, "I", "bb_owner"),  # the AG number
], byteorder=">")
SBLOCK_CRC_OFFSET = 0x34
ALLOC_REC = Structure("XfsAllocRec", 8, [  # a leaf record, and a node's key
    (0x0, "I", "ar_startblock"),
    (0x4, "I", "ar_blockcount"),
], byteorder=">")
ABTB_MAGIC = 0x41425442  # "ABTB" (v4)
AB3B_MAGIC = 0x41423342  # "AB3B" (v5)
MAX_BTREE_LEVELS = 9
VERSION_NUMBITS = 0x000F
VERSION_5 = 5
INCOMPAT_FTYPE = 0x1  # sb_features_incompat (v5)
VERSION2_FTYPE = 0x200  # sb_features2 (v4)
BASIC_BLOCK = 512  # the unit of daddrs and of log positions
#: log record header (xlog_rec_header): big-endian, at a basic block's start
LOG_RECORD = Structure("XlogRecHeader", 0x144, [
    (0x00, "I", "h_magicno"),
    (0x04, "I", "h_cycle"),
    (0x08, "I", "h_version"),
    (0x0C, "I", "h_len"),  # bytes of data after the header blocks
    (0x10, "Q", "h_lsn"),  # cycle << 32 | block: this record's own place
    (0x18, "Q", "h_tail_lsn"),  # cycle << 32 | block of the oldest record still needed
    (0x20, "I", "h_crc"),  # v5: CRC-32C of header, extended headers and data (little-endian)
    (0x28, "I", "h_num_logops"),
    (0x140, "I", "h_size"),  # the in-core log buffer size (v2 logs)
], byteorder=">")
#: where h_cycle_data[] starts in a record header and in each extended header
#: (xlog_rec_ext_header) after it: the first word of each of the record's data blocks,
#: which the cycle number replaced on disk, 64 blocks per header
LOG_CYCLE_DATA = 0x2C
LOG_EXT_CYCLE_DATA = 0x4
LOG_CYCLE_WORDS = 64
#: bytes of a record header and of an extended header (``sizeof``) its CRC covers, and
#: where the CRC is
LOG_RECORD_HEADER_BYTES = 0x148
LOG_EXT_HEADER_BYTES = 4 + 4 * LOG_CYCLE_WORDS
LOG_CRC_OFFSET = 0x20
#: xlog_op_header, before each region of a record's data
LOG_OP = Structure("XlogOpHeader", 12, [
    (0x0, "I", "oh_tid"),
    (0x4, "I", "oh_len"),
    (0x9, "B", "oh_flags"),
], byteorder=">")
LOG_START_TRANS = 0x1  # a transaction's first operation (no region)
LOG_COMMIT_TRANS = 0x2  # its last: the transaction is whole in the log
LOG_CONTINUE_TRANS = 0x4  # the region goes on in the next record
LOG_WAS_CONT_TRANS = 0x8  # the region began in the previous record
#: xfs_buf_log_format, the first region of a logged buffer, in the byte order of the
#: host that wrote it: its type (XFS_LI_BUF) and the buffer's address (512-byte daddr)
BUF_LOG_FORMATS = [Structure("XfsBufLogFormat", 16, [
    (0x0, "H", "blf_type"),
    (0x8, "q", "blf_blkno"),
], byteorder=order) for order in ("<", ">")]
LI_BUF = 0x123C
LOG_MAGIC = 0xFEEDBABE
LOG_VERSION_2 = 0x2
LOG_HEADER_CYCLE_SIZE = 32 * 1024
LOG_OP_FLAGS = 9  # byte of xlog_op_header.oh_flags
LOG_UNMOUNT_TRANS = 0x20
#: the log is read this many bytes at a time
LOG_CHUNK = 16 << 20
#: log blocks checked on each side of the head (4 MiB: more than the 8 log buffers of
#: 256 KiB a kernel may have in flight); a log of twice this or less is read whole
LOG_WINDOW = 8192


LOG_DIRTY = "its log is dirty (not cleanly unmounted: recovery would replay it)"
LOG_IN_FLIGHT = "its log is not at rest (log writes in flight or torn)"


@dataclass(frozen=True)
class LogOp:
    """One operation of a log record: its transaction (``tid``), ``oh_flags`` and region
    (whole), with the ``h_lsn`` of the record it ends in."""

    lsn: int
    tid: int
    flags: int
    region: bytes


@dataclass(frozen=True)
class LogState:
    """The internal log: why it is not known to be clean ("" when it is) and, when it is
    dirty but at rest, its place (bytes), length and head (basic blocks) and the basic
    block of its last record."""

    problem: str
    start: int = 0
    blocks: int = 0
    head: int = 0
    last: int = -1


def has_xfs_magic(superblock: bytes) -> bool:
    """True when the first bytes of a volume carry the XFS superblock magic."""
    return len(superblock) >= 4 and int.from_bytes(superblock[:4], "big") == SB_MAGIC


def _crc_ok(data: bytes, offset: int) -> bool:
    """Whether the CRC-32C stored little-endian at ``offset`` of ``data`` is the one
    of ``data`` with that field zeroed (XFS's rule for self-describing metadata)."""
    stored = int.from_bytes(data[offset : offset + 4], "little")
    return crc32c(data[:offset] + bytes(4) + data[offset + 4 :]) == stored


class XfsFileSystem(FileSystem):
    """An XFS data device; allocation unit: the file-system block."""

    kinds: ClassVar[tuple[str, ...]] = ("xfs",)

    def __init__(self, disk: Disk, offset: int = 0):
        super().__init__(disk, offset)
        self.kind = "xfs"
        head = self.read(0, SUPERBLOCK.size)
        sb = SUPERBLOCK.parse(head)
        if sb.sb_magicnum != SB_MAGIC:
            raise FormatError(f"no XFS file system at byte {offset} (bad superblock magic)")
        self.sb = sb
        self.version = sb.sb_versionnum & VERSION_NUMBITS
        if not (9 <= sb.sb_blocklog <= 16 and sb.sb_blocksize == 1 << sb.sb_blocklog
                and 9 <= sb.sb_sectlog <= 15 and sb.sb_sectsize == 1 << sb.sb_sectlog
                and sb.sb_sectsize <= sb.sb_blocksize
                and sb.sb_agcount > 0 and sb.sb_agblocks > 0
                and (sb.sb_agblocks - 1).bit_length() <= sb.sb_agblklog <= 31
                and (sb.sb_agcount - 1) * sb.sb_agblocks < sb.sb_dblocks
                <= sb.sb_agcount * sb.sb_agblocks):
            raise FormatError(f"{self.name}: inconsistent superblock geometry")
        if sb.sb_inprogress:
            raise FormatError(f"{self.name}: mkfs.xfs did not finish (sb_inprogress)")
        self.crc = self.version == VERSION_5
        if self.crc and not _crc_ok(self.read(0, sb.sb_sectsize), SB_CRC_OFFSET):
            raise FormatError(f"{self.name}: superblock CRC mismatch")
        self.block_size = self.unit = sb.sb_blocksize
        self.size = sb.sb_dblocks * sb.sb_blocksize
        #: log2 of file-system blocks per directory block
        self.sb_dirblklog = sb.sb_dirblklog
        #: 1 when directory entries carry a file type byte (v5 always; v4 with ftype)
        self.ftype = int((self.crc and bool(sb.sb_features_incompat & INCOMPAT_FTYPE))
                         or bool(sb.sb_features2 & VERSION2_FTYPE))

    # ---------------------------------------------------------------- geometry
    def ag_length(self, ag: int) -> int:
        """Blocks in AG ``ag`` (the last one may be shorter)."""
        sb = self.sb
        return min(sb.sb_agblocks, sb.sb_dblocks - ag * sb.sb_agblocks)

    def linear(self, fsblock: int) -> int:
        """An XFS file-system block number (AG number << agblklog | AG block) as the
        block's position from the volume's start."""
        sb = self.sb
        return (fsblock >> sb.sb_agblklog) * sb.sb_agblocks + (
            fsblock & ((1 << sb.sb_agblklog) - 1))

    def _ag_block(self, ag: int, block: int) -> bytes:
        return self.read((ag * self.sb.sb_agblocks + block) * self.block_size, self.block_size)

    # -------------------------------------------------------------- free space
    def agf(self, ag: int) -> Any:
        """AG ``ag``'s AGF, checked (magic, sequence number, length, CRC)."""
        sector = self.sb.sb_sectsize
        raw = self.read(ag * self.sb.sb_agblocks * self.block_size + sector, sector)
        agf = AGF.parse(raw)
        if agf.agf_magicnum != AGF_MAGIC or agf.agf_seqno != ag:
            raise FormatError(f"{self.name}: AG {ag}: bad AGF (magic or sequence number)")
        if agf.agf_length != self.ag_length(ag):
            raise FormatError(f"{self.name}: AG {ag}: AGF length {agf.agf_length} blocks, "
                              f"the superblock says {self.ag_length(ag)}")
        if self.crc and not _crc_ok(raw, AGF_CRC_OFFSET):
            raise FormatError(f"{self.name}: AG {ag}: AGF CRC mismatch")
        return agf

    def free_extents(self, ag: int) -> np.ndarray:
        """AG ``ag``'s free extents from its bnobt: a (k, 2) int64 array of
        ``(startblock, blockcount)`` in AG blocks, sorted; FormatError when the tree
        or its records do not hold together."""
        agf = self.agf(ag)
        length = agf.agf_length
        if not 0 < agf.agf_bno_level <= MAX_BTREE_LEVELS:
            raise FormatError(f"{self.name}: AG {ag}: bad bnobt height {agf.agf_bno_level}")
        leaves: list[np.ndarray] = []
        self._walk(ag, agf.agf_bno_root, agf.agf_bno_level - 1, leaves, set())
        recs = np.concatenate(leaves) if leaves else np.empty((0, 2), np.int64)
        starts, counts = recs[:, 0], recs[:, 1]
        if recs.size and (
                (counts == 0).any() or (starts + counts > length).any()
                or (starts[1:] < starts[:-1] + counts[:-1]).any()):
            raise FormatError(f"{self.name}: AG {ag}: free extents not sorted, outside the "
                              f"AG or overlapping")
        if int(counts.sum()) != agf.agf_freeblks:
            raise FormatError(f"{self.name}: AG {ag}: bnobt holds {int(counts.sum())} free "
                              f"blocks, the AGF says {agf.agf_freeblks}")
        return recs

    def _walk(self, ag: int, block: int, level: int, leaves: list[np.ndarray],
              seen: set[int]) -> None:
        """Add the records of the bnobt subtree at AG block ``block`` (expected at
        ``level``) to ``leaves``, left to right."""
        if not 0 < block < self.ag_length(ag) or block in seen:
            raise FormatError(f"{self.name}: AG {ag}: bnobt pointer {block} outside the "
                              f"AG or seen twice")
        seen.add(block)
        data = self._ag_block(ag, block)
        header = SBLOCK_CRC if self.crc else SBLOCK
        node = header.parse(data)
        if node.bb_magic != (AB3B_MAGIC if self.crc else ABTB_MAGIC) or node.bb_level != level:
            raise FormatError(f"{self.name}: AG {ag}: block {block} is not a bnobt block "
                              f"of level {level}")
        if self.crc:
            daddr = (ag * self.sb.sb_agblocks + block) * (self.block_size // BASIC_BLOCK)
            if node.bb_blkno != daddr or node.bb_owner != ag:
                raise FormatError(f"{self.name}: AG {ag}: bnobt block {block} says it is "
                                  f"elsewhere (blkno {node.bb_blkno}, owner {node.bb_owner})")
            if not _crc_ok(data, SBLOCK_CRC_OFFSET):
                raise FormatError(f"{self.name}: AG {ag}: bnobt block {block} CRC mismatch")
        space = self.block_size - header.size
        if level == 0:
            if node.bb_numrecs > space // ALLOC_REC.size:
                raise FormatError(f"{self.name}: AG {ag}: bnobt leaf {block} has "
                                  f"{node.bb_numrecs} records, more than fit")
            recs = ALLOC_REC.parse_array(data[header.size :], node.bb_numrecs)
            leaves.append(np.stack([recs["ar_startblock"].astype(np.int64),
                                    recs["ar_blockcount"].astype(np.int64)], axis=1))
            return
        maxrecs = space // (ALLOC_REC.size + 4)  # a key and a 32-bit pointer per child
        if not 0 < node.bb_numrecs <= maxrecs:
            raise FormatError(f"{self.name}: AG {ag}: bnobt node {block} has "
                              f"{node.bb_numrecs} children")
        at = header.size + maxrecs * ALLOC_REC.size
        pointers = np.frombuffer(data, ">u4", node.bb_numrecs, at)
        for child in pointers.tolist():  # one call per child block, not per free extent
            self._walk(ag, int(child), level - 1, leaves, seen)

    # --------------------------------------------------------------------- log
    @property
    def log_problem(self) -> str:
        """Why the log is not known to be clean ("" when it is)."""
        return self._log.problem

    @cached_property
    def _log(self) -> LogState:
        """Where the internal log is, its head and, when at rest, its last record; why it
        is not known to be clean."""
        sb = self.sb
        if sb.sb_logstart == 0:
            return LogState("its log is on an external device, not in this image: cannot "
                            "tell whether it is clean")
        start = self.linear(sb.sb_logstart) * self.block_size
        length = sb.sb_logblocks * self.block_size
        if not (length > 0 and start + length <= self.size):
            return LogState("its internal log lies outside the volume")
        n = length // BASIC_BLOCK
        head, cycle = self._log_head(start, n)
        if head < 0:
            return LogState(LOG_IN_FLIGHT)
        # the blocks around the head, as a log at rest has them: the current cycle up to
        # the head, the previous one after it (and before block 0, wrapped)
        before = min(LOG_WINDOW, n)
        after = min(LOG_WINDOW, n - before)
        positions = np.arange(head - before, head + after)
        words = self._log_words(start, positions % n)
        is_header = words[:, 0] == LOG_MAGIC
        cycles = np.where(is_header, words[:, 1], words[:, 0]).astype(np.int64)
        expected = np.where((positions < 0) | ((positions >= head) & (positions < n)),
                            cycle - 1, cycle)
        if not np.array_equal(cycles, expected):
            return LogState(LOG_IN_FLIGHT)
        headers = positions[is_header & (positions < head)]
        if not headers.size:
            return LogState("its log has no record before its head")
        at = int(headers[-1]) % n
        record = LOG_RECORD.parse(self.read(start + at * BASIC_BLOCK, BASIC_BLOCK))
        hblks = self._header_blocks(record)
        end = at + hblks + -(-record.h_len // BASIC_BLOCK)
        state = LogState(LOG_DIRTY, start, n, head % n, at)
        if end % n != head % n or record.h_num_logops != 1:
            return state
        op = self.read(start + ((at + hblks) % n) * BASIC_BLOCK, BASIC_BLOCK)
        if not op[LOG_OP_FLAGS] & LOG_UNMOUNT_TRANS:
            return state
        return LogState("")

    @staticmethod
    def _header_blocks(record: Any) -> int:
        """Basic blocks of a log record's header (v2 logs with large in-core buffers add
        extended headers)."""
        if record.h_version & LOG_VERSION_2 and record.h_size > LOG_HEADER_CYCLE_SIZE:
            return -(-record.h_size // LOG_HEADER_CYCLE_SIZE)
        return 1

    def logged_ags(self) -> set[int]:
        """The AGs a buffer logged in the active part of a dirty log (its records from
        the tail, which the last record names, to the head) lies in: what recovery would
        write there.  Every change to an AG's free space — an allocation, a free —
        logs that AG's AGF and free-space btree blocks, so an AG not named here has on
        disk the free space recovery leaves it.  FormatError when a record or its
        operations do not hold together."""
        ag_bytes = self.sb.sb_agblocks * self.block_size
        ags: set[int] = set()
        for op in self.log_ops():
            for layout in BUF_LOG_FORMATS:
                if len(op.region) >= layout.size:
                    item = layout.parse(op.region)
                    if item.blf_type == LI_BUF and 0 <= item.blf_blkno * BASIC_BLOCK < self.size:
                        ags.add(item.blf_blkno * BASIC_BLOCK // ag_bytes)
        return ags

    def log_ops(self) -> Iterator[LogOp]:
        """The operations of a dirty log's records from the tail (which the last record
        names) to the head, in log order, each region whole (one split over records
        put together, given where it ends; the rest of one begun before the tail is
        left out).  FormatError when a record does not name its own place, fails its
        CRC (v5) or holds operations past its end."""
        state = self._log
        n = state.blocks
        last = LOG_RECORD.parse(self._log_blocks(state.last, 1))
        position = last.h_tail_lsn & 0xFFFFFFFF
        if position >= n:
            raise FormatError(f"{self.name}: log tail at block {position} of {n}")
        pending: dict[int, bytes] = {}  # tid -> the start of a region split over records
        walked = 0
        while position != state.head:
            head_block = self._log_blocks(position, 1)
            record = LOG_RECORD.parse(head_block)
            hblks = self._header_blocks(record)
            blocks = -(-record.h_len // BASIC_BLOCK)
            walked += hblks + blocks
            if record.h_magicno != LOG_MAGIC or record.h_lsn & 0xFFFFFFFF != position \
                    or walked > n \
                    or hblks > LOG_CYCLE_WORDS or blocks > hblks * LOG_CYCLE_WORDS:
                raise FormatError(f"{self.name}: its dirty log has no record it can read at "
                                  f"block {position}")
            headers = self._log_blocks(position, hblks)
            data = bytearray(self._log_blocks((position + hblks) % n, blocks))
            if self.crc and not self._record_crc_ok(headers, hblks, data[: record.h_len]):
                raise FormatError(f"{self.name}: its dirty log's record at block {position} "
                                  f"fails its CRC (torn or damaged)")
            for i in range(blocks):  # the first word of each block, from the headers
                j, k = divmod(i, LOG_CYCLE_WORDS)
                at = j * BASIC_BLOCK + (LOG_EXT_CYCLE_DATA if j else LOG_CYCLE_DATA) + 4 * k
                data[i * BASIC_BLOCK : i * BASIC_BLOCK + 4] = headers[at : at + 4]
            yield from self._record_ops(bytes(data[: record.h_len]), record, pending, position)
            position = (position + hblks + blocks) % n

    @staticmethod
    def _record_crc_ok(headers: bytes, hblks: int, data: bytes | bytearray) -> bool:
        """Whether a v5 log record's ``h_crc`` (CRC-32C, stored little-endian) is that of
        its header (the field zeroed), its extended headers and its data as on disk."""
        parts = [headers[:LOG_CRC_OFFSET], bytes(4),
                 headers[LOG_CRC_OFFSET + 4 : LOG_RECORD_HEADER_BYTES]]
        parts += [headers[j * BASIC_BLOCK : j * BASIC_BLOCK + LOG_EXT_HEADER_BYTES]
                  for j in range(1, hblks)]
        stored = int.from_bytes(headers[LOG_CRC_OFFSET : LOG_CRC_OFFSET + 4], "little")
        return crc32c(b"".join(parts) + bytes(data)) == stored

    def _record_ops(self, data: bytes, record: Any, pending: dict[int, bytes],
                    position: int) -> Iterator[LogOp]:
        """The ``h_num_logops`` operations of one record's data (regions split over
        records put together through ``pending``)."""
        at = 0
        for _ in range(record.h_num_logops):
            op = LOG_OP.parse(data, at) if at + LOG_OP.size <= len(data) else None
            if op is None or at + LOG_OP.size + op.oh_len > len(data):
                raise FormatError(f"{self.name}: its dirty log's record at block {position} "
                                  f"holds operations past its end")
            region = data[at + LOG_OP.size : at + LOG_OP.size + op.oh_len]
            at += LOG_OP.size + op.oh_len
            if op.oh_flags & LOG_WAS_CONT_TRANS:
                if op.oh_tid not in pending:
                    continue  # the rest of a region begun before the tail: written back
                region = pending.pop(op.oh_tid) + region
            if op.oh_flags & LOG_CONTINUE_TRANS:
                pending[op.oh_tid] = region
                continue
            yield LogOp(record.h_lsn, op.oh_tid, op.oh_flags, region)

    def _log_blocks(self, first: int, count: int) -> bytes:
        """``count`` basic blocks of the log from block ``first`` on (wrapping past its
        end to its start)."""
        state = self._log
        out = b""
        while count:
            take = min(count, state.blocks - first)
            out += self.read(state.start + first * BASIC_BLOCK, take * BASIC_BLOCK)
            first, count = 0, count - take
        return out

    def _log_words(self, start: int, blocks: np.ndarray) -> np.ndarray:
        """The first two big-endian words of each log block in ``blocks`` (basic blocks
        from the log's start at byte ``start``), as a (len, 2) array; read run by run."""
        out = np.empty((blocks.size, 2), dtype=np.uint32)
        breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
        for run in np.split(np.arange(blocks.size), breaks):
            for lo in range(0, run.size, LOG_CHUNK // BASIC_BLOCK):
                part = run[lo : lo + LOG_CHUNK // BASIC_BLOCK]
                data = self.read(start + int(blocks[part[0]]) * BASIC_BLOCK,
                                 part.size * BASIC_BLOCK)
                out[part] = np.frombuffer(data, ">u4").reshape(part.size, -1)[:, :2]
        return out

    def _log_head(self, start: int, n: int) -> tuple[int, int]:
        """``(head, cycle)``: the first log block (of ``n``) not written in the current
        cycle (``n``: all are), found as the kernel does, by bisection on the cycle
        number every block starts with (a record header keeps it in ``h_cycle``)."""
        def cycle_of(block: int) -> int:
            first, second = self._log_words(start, np.array([block]))[0].tolist()
            return second if first == LOG_MAGIC else first

        cycle, last = cycle_of(0), cycle_of(n - 1)
        if cycle == last:
            return n, cycle
        if last != cycle - 1:
            return -1, cycle
        low, high = 0, n - 1  # cycle_of(low) == cycle != cycle_of(high)
        while high - low > 1:
            middle = (low + high) // 2
            if cycle_of(middle) == cycle:
                low = middle
            else:
                high = middle
        return high, cycle

    def recovery_note(self) -> str:
        """A dirty log: how many transactions its recovery replays for the listings
        (:mod:`blockforensics.fs.xfslog`), or why they show the state before it."""
        if not self.log_problem:
            return ""
        from blockforensics.fs.xfslog import replayed  # it reads logs with this module

        return replayed(self)[1]

    # -------------------------------------------------------------- allocation
    def allocation(self) -> BlockMap:
        """Allocated blocks of the data device: every AG's blocks but its bnobt's free
        extents, all of an AG a dirty log writes to (:meth:`logged_ags`); FormatError
        when the log cannot be read so or a structure fails its checks."""
        whole = set()  # AGs a dirty log's recovery would write to: every block kept
        if self.log_problem == LOG_DIRTY:
            whole = self.logged_ags()
        elif self.log_problem:
            raise FormatError(f"{self.name}: {self.log_problem}")
        free_starts, free_stops = [], []
        for ag in range(self.sb.sb_agcount):
            recs = self.free_extents(ag) if ag not in whole else np.empty((0, 2), np.int64)
            first = ag * self.sb.sb_agblocks
            free_starts.append(recs[:, 0] + first)
            free_stops.append(recs[:, 0] + recs[:, 1] + first)
        free = units_map(np.concatenate(free_starts), np.concatenate(free_stops),
                         self.n_units, self.unit)
        return ~free

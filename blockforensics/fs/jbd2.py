"""The ext3/4 journal (jbd2; e2fsprogs' ``kernel-jbd.h``): the blocks recovery writes.

A volume flagged ``needs_recovery`` (every mounted ext3/4, a crash-consistent
snapshot of one, a crashed machine) may hold committed transactions whose
metadata — block bitmaps, group descriptors — is only in the journal: the
volume's own blocks show it once recovery (the kernel at mount, e2fsck) has
copied it in place.  :func:`logged_blocks` scans the journal as recovery does:
from ``s_start``, blocks of the expected sequence number, a transaction counted
once its commit block is found.  Checksums are not checked; revoke records are
applied only for replaying (the listings' view of a live copy): a reader that ORs
the copies into the volume's bitmaps only ever copies more.  The journal is
big-endian, its blocks addressed from 0 within the journal (the caller maps them to
the volume's blocks).

A journal with fast commits (``INCOMPAT_FAST_COMMIT``) ends its log
``s_num_fc_blks`` blocks (256 when 0) before ``s_maxlen``: the log wraps there,
and the fast-commit area is the blocks after it (Linux ``journal_load_superblock``:
``j_last = s_maxlen - num_fc``, fast commits from ``j_last + 1``), unless that
would leave the log fewer than ``MIN_LOG_BLOCKS``.  What the fast commits hold is
ext4's (``fs/ext4fc.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blockforensics.errors import FormatError
from blockforensics.fs.structure import Structure

#: every journal block but data blocks starts with this header
HEADER = Structure("JournalHeader", 12, [
    (0x0, "I", "h_magic"),
    (0x4, "I", "h_blocktype"),
    (0x8, "I", "h_sequence"),
], byteorder=">")
SUPERBLOCK = Structure("JournalSuperblock", 0x58, [
    (0x0C, "I", "s_blocksize"),
    (0x10, "I", "s_maxlen"),
    (0x14, "I", "s_first"),
    (0x18, "I", "s_sequence"),
    (0x1C, "I", "s_start"),
    (0x28, "I", "s_feature_incompat"),
    (0x54, "I", "s_num_fc_blks"),
], byteorder=">")
#: a descriptor block's tag: journal_block_tag3_t with CSUM_V3, else journal_block_tag_t;
#: both continue with ``t_blocknr_high`` at 0x8 on 64-bit journals
TAG3 = Structure("JournalBlockTag3", 8, [
    (0x0, "I", "t_blocknr"),
    (0x4, "I", "t_flags"),
], byteorder=">")
TAG = Structure("JournalBlockTag", 8, [
    (0x0, "I", "t_blocknr"),
    (0x6, "H", "t_flags"),
], byteorder=">")
REVOKE = Structure("JournalRevokeHeader", 16, [(0xC, "I", "r_count")], byteorder=">")
TAG_HIGH = Structure("JournalBlockTagHigh", 4, [(0x0, "I", "t_blocknr_high")], byteorder=">")
MAGIC = 0xC03B3998
DESCRIPTOR_BLOCK, COMMIT_BLOCK, SUPERBLOCK_V1, SUPERBLOCK_V2, REVOKE_BLOCK = 1, 2, 3, 4, 5
INCOMPAT_64BIT = 0x2
INCOMPAT_CSUM_V2 = 0x8
INCOMPAT_CSUM_V3 = 0x10
INCOMPAT_FAST_COMMIT = 0x20
DEFAULT_FAST_COMMIT_BLOCKS = 256  # when s_num_fc_blks is 0
MIN_LOG_BLOCKS = 1024  # JBD2_MIN_JOURNAL_BLOCKS: no fast-commit area below this
FLAG_ESCAPE = 0x1  # the block's first 4 bytes were the magic, written as zeros
FLAG_SAME_UUID = 0x2  # else a 16-byte UUID follows the tag
FLAG_LAST_TAG = 0x8
TAIL_SIZE = 4  # jbd2_journal_block_tail, at the end of a descriptor block with checksums


def _superblock(read: Callable[[int], bytes]) -> tuple[Any, int]:
    """The journal superblock and its incompatible features (0 for a v1 superblock);
    FormatError when block 0 is not one."""
    sb_block = read(0)
    header = HEADER.parse(sb_block)
    if header.h_magic != MAGIC or header.h_blocktype not in (SUPERBLOCK_V1, SUPERBLOCK_V2):
        raise FormatError("no journal superblock")
    sb = SUPERBLOCK.parse(sb_block)
    return sb, sb.s_feature_incompat if header.h_blocktype == SUPERBLOCK_V2 else 0


def journal_features(read: Callable[[int], bytes]) -> int:
    """The journal's incompatible features (``INCOMPAT_*``; 0 for a v1 superblock)."""
    return _superblock(read)[1]


def log_end(sb: Any, incompat: int) -> int:
    """The journal block after the log's last one (where it wraps to ``s_first``)."""
    if not incompat & INCOMPAT_FAST_COMMIT:
        return int(sb.s_maxlen)
    fast = sb.s_num_fc_blks or DEFAULT_FAST_COMMIT_BLOCKS
    return int(sb.s_maxlen) - fast if sb.s_maxlen - fast >= MIN_LOG_BLOCKS else int(sb.s_maxlen)


def fast_commit_blocks(read: Callable[[int], bytes]) -> range:
    """Journal blocks of the fast-commit area (empty without fast commits)."""
    sb, incompat = _superblock(read)
    return range(log_end(sb, incompat) + 1, sb.s_maxlen)


def logged_blocks(read: Callable[[int], bytes], revoke: bool = False) -> dict[int, bytes]:
    """The newest committed copy of each volume block the journal logs, by volume block
    number; ``read(i)`` returns the journal's block *i*.  With ``revoke``, what recovery
    writes: a copy is left out when a committed revoke record of its transaction or a
    later one names its block (a metadata block freed, maybe data since).  Empty when
    the journal is (``s_start == 0``); FormatError when its superblock is not one."""
    sb, incompat = _superblock(read)
    if sb.s_start == 0:
        return {}
    end = log_end(sb, incompat)
    if not 0 < sb.s_first <= sb.s_start < end:
        raise FormatError(f"journal start {sb.s_start} outside blocks {sb.s_first}..{end - 1}")
    csum3 = bool(incompat & INCOMPAT_CSUM_V3)
    tag = TAG3 if csum3 else TAG
    tag_bytes = 16 if csum3 else (8 + 2 * bool(incompat & INCOMPAT_CSUM_V2)
                                  + 4 * bool(incompat & INCOMPAT_64BIT))
    tail = TAIL_SIZE if incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) else 0
    high = bool(incompat & INCOMPAT_64BIT)

    def after(block: int) -> int:  # the log wraps from its last block to s_first
        return sb.s_first if block + 1 >= end else block + 1

    logged: dict[int, tuple[int, bytes]] = {}  # block -> (transaction, copy)
    pending: dict[int, tuple[int, bytes]] = {}
    revoked: dict[int, int] = {}  # block -> the newest transaction revoking it
    pending_revokes: list[int] = []
    block, sequence = sb.s_start, sb.s_sequence
    for _ in range(end):  # each journal block is read once at most
        data = read(block)
        found = HEADER.parse(data)
        if found.h_magic != MAGIC or found.h_sequence != sequence:
            break
        if found.h_blocktype == DESCRIPTOR_BLOCK:
            offset = HEADER.size
            while offset + tag_bytes <= len(data) - tail:
                entry = tag.parse(data, offset)
                target = entry.t_blocknr | (
                    TAG_HIGH.parse(data, offset + 8).t_blocknr_high << 32 if high else 0)
                offset += tag_bytes + (0 if entry.t_flags & FLAG_SAME_UUID else 16)
                block = after(block)
                copy = read(block)
                if entry.t_flags & FLAG_ESCAPE:
                    copy = MAGIC.to_bytes(4, "big") + copy[4:]
                pending[target] = (sequence, copy)
                if entry.t_flags & FLAG_LAST_TAG:
                    break
        elif found.h_blocktype == COMMIT_BLOCK:
            logged.update(pending)
            revoked.update(dict.fromkeys(pending_revokes, sequence))
            pending, pending_revokes = {}, []
            sequence = (sequence + 1) & 0xFFFFFFFF
        elif found.h_blocktype == REVOKE_BLOCK:
            pending_revokes += _revoked(data, 8 if high else 4, tail)
        else:
            break
        block = after(block)
    return {target: copy for target, (tid, copy) in logged.items()
            if not (revoke and revoked.get(target, -1) >= tid)}


def _revoked(data: bytes, width: int, tail: int) -> list[int]:
    """The block numbers a revoke block names (``r_count``: bytes used, header
    included)."""
    used = min(REVOKE.parse(data).r_count, len(data) - tail)
    return [int.from_bytes(data[at : at + width], "big")
            for at in range(REVOKE.size, used - width + 1, width)]

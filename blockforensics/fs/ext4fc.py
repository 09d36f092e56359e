"""ext4 fast commits (Linux ``fs/ext4/fast_commit.h``): what their replay allocates.

A volume with the ``fast_commit`` feature logs an fsync'd file's new extents
and inode as tag-length-value records in the journal's fast-commit area
(``fs/jbd2.py``), not as block-bitmap copies: until recovery replays them — it
marks every block of each inode they name, and of its extent tree, in use — the
file's data blocks are free in every bitmap, on the volume and in the journal.

Each block of the area is a run of tags (``ext4_fc_tl``: 16-bit tag, 16-bit
length, little-endian, then the value); a tag never crosses a block (the rest of
a block is a PAD tag).  ``ADD_RANGE`` carries an inode number and an
``ext4_extent``; ``INODE`` an inode number and the raw on-disk inode.  Every
block of the area is read, stale ones from earlier commits included: a reader
that marks their blocks in use only ever copies more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from blockforensics.fs.structure import Structure

TAG_LENGTH = Structure("Ext4FcTl", 4, [
    (0x0, "H", "fc_tag"),
    (0x2, "H", "fc_len"),
])
ADD_RANGE, DEL_RANGE, CREAT, LINK, UNLINK, INODE, PAD, TAIL, HEAD = range(1, 10)
INODE_NUMBER_SIZE = 4  # ext4_fc_add_range and ext4_fc_inode start with __le32 fc_ino
EXTENT_SIZE = 12  # ext4_fc_add_range.fc_ex: an ext4_extent


@dataclass
class FastCommits:
    """What the fast-commit area names: ``extents`` (12-byte ``ext4_extent`` entries,
    end to end) and ``inodes`` (raw on-disk inodes)."""

    extents: bytearray = field(default_factory=bytearray)
    inodes: list[bytes] = field(default_factory=list)


def fast_commits(read: Callable[[int], bytes], blocks: Iterable[int]) -> FastCommits:
    """The extents and inodes of the tags in the journal's ``blocks`` (read with
    ``read``); a block whose tags stop making sense is read up to there."""
    found = FastCommits()
    for block in blocks:
        data = read(block)
        at = 0
        while at + TAG_LENGTH.size <= len(data):
            tl = TAG_LENGTH.parse(data, at)
            value = data[at + TAG_LENGTH.size : at + TAG_LENGTH.size + tl.fc_len]
            if not ADD_RANGE <= tl.fc_tag <= HEAD or len(value) != tl.fc_len:
                break  # unused space, or not a fast-commit block
            if tl.fc_tag == ADD_RANGE and tl.fc_len >= INODE_NUMBER_SIZE + EXTENT_SIZE:
                found.extents += value[INODE_NUMBER_SIZE : INODE_NUMBER_SIZE + EXTENT_SIZE]
            elif tl.fc_tag == INODE and tl.fc_len > INODE_NUMBER_SIZE:
                found.inodes.append(value[INODE_NUMBER_SIZE:])
            at += TAG_LENGTH.size + tl.fc_len
    return found

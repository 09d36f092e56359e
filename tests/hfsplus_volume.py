"""A small HFS+ (or HFSX) volume written by the tests, after Apple TN1150.

Debian bookworm carries no HFS+ formatter (``hfsprogs``' ``mkfs.hfsplus`` left
it) and its kernels no ``hfsplus`` driver, so the tests lay the volume out
themselves: volume header and its alternate, allocation file (one bit per
block, most significant bit first), an empty extents overflow B-tree, a
catalog B-tree of one leaf (the root folder, its files and their threads), and
each file's data fork in one extent.  The Sleuth Kit (``fls``/``icat``/
``blkls``) and libhfsp (``hpfsck``, ``hpls``) then read it as independent
checks.  Free blocks may be filled with stale bytes (deleted files' leftovers).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NODE = 4096  # bytes per B-tree node (catalog and extents overflow)
DATE = 0xE0000000  # seconds since 1904-01-01 UTC (2023)
FIRST_USER_ID = 16  # kHFSFirstUserCatalogNodeID
ROOT_ID, ROOT_PARENT_ID = 2, 1


@dataclass
class HfsPlusLayout:
    """Where the writer put things, in allocation blocks."""

    block_size: int
    total_blocks: int
    allocation_extent: tuple[int, int]  # (start, count): the first
    used: np.ndarray  # one flag per block, as the allocation file says
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, count)
    allocation_pieces: list[tuple[int, int]] = field(default_factory=list)  # all extents


def _unistr(name: str) -> bytes:
    """HFSUniStr255: length in UTF-16 units, then UTF-16 big-endian."""
    encoded = name.encode("utf-16-be")
    return struct.pack(">H", len(encoded) // 2) + encoded


def _key(parent: int, name: str) -> bytes:
    """HFSPlusCatalogKey: keyLength (excluding itself), parentID, nodeName."""
    body = struct.pack(">I", parent) + _unistr(name)
    return struct.pack(">H", len(body)) + body


def _extents(extents: list[tuple[int, int]]) -> bytes:
    """HFSPlusExtentRecord: 8 descriptors (start block, block count), unused ones zero."""
    pairs = [*extents, *[(0, 0)] * (8 - len(extents))]
    return b"".join(struct.pack(">II", s, c) for s, c in pairs)


def _fork(logical: int, extents: list[tuple[int, int]], clump: int = 0,
          blocks: int | None = None) -> bytes:
    """HFSPlusForkData (80 bytes): size in bytes, clump, blocks (default: those of the
    extents given), the first 8 extent descriptors."""
    blocks = sum(count for _, count in extents) if blocks is None else blocks
    return struct.pack(">QII", logical, clump, blocks) + _extents(extents[:8])


def _bsd(mode: int) -> bytes:
    """HFSPlusBSDInfo: owner 0, group 0, flags, mode, special."""
    return struct.pack(">IIBBHI", 0, 0, 0, 0, mode, 0)


def _folder(folder_id: int, valence: int) -> bytes:
    """HFSPlusCatalogFolder (88 bytes)."""
    return (struct.pack(">hHII", 1, 0, valence, folder_id) + struct.pack(">5I", *[DATE] * 5)
            + _bsd(0o40755) + bytes(32) + struct.pack(">II", 0, 0))


def _file(file_id: int, data_fork: bytes, date: int = DATE) -> bytes:
    """HFSPlusCatalogFile (248 bytes), its five dates ``date``, an empty resource fork."""
    return (struct.pack(">hHII", 2, 0, 0, file_id) + struct.pack(">5I", *[date] * 5)
            + _bsd(0o100644) + bytes(32) + struct.pack(">II", 0, 0) + data_fork
            + _fork(0, []))


def _thread(kind: int, parent: int, name: str) -> bytes:
    """HFSPlusCatalogThread: 3 for a folder, 4 for a file."""
    return struct.pack(">hhI", kind, 0, parent) + _unistr(name)


def _node(kind: int, height: int, records: list[bytes]) -> bytes:
    """A B-tree node: descriptor, records, offsets from the node's end (last: free space)."""
    body = bytearray(struct.pack(">IIbBHH", 0, 0, kind, height, len(records), 0))
    offsets = []
    for record in records:
        offsets.append(len(body))
        body += record
    offsets.append(len(body))
    tail = b"".join(struct.pack(">H", o) for o in reversed(offsets))
    assert len(body) + len(tail) <= NODE, "records do not fit one node"
    return bytes(body) + bytes(NODE - len(body) - len(tail)) + tail


def _header_node(depth: int, root: int, leaf_records: int, leaf: int, max_key: int,
                 total_nodes: int, used_nodes: int, attributes: int, compare: int) -> bytes:
    """Header node: BTHeaderRec (106 bytes), user data (128), map record."""
    header = struct.pack(">HIIIIHHIIHIBBI", depth, root, leaf_records, leaf, leaf, NODE,
                         max_key, total_nodes, total_nodes - used_nodes, 0,
                         total_nodes * NODE, 0, compare, attributes) + bytes(64)
    bits = np.zeros((NODE - 256) * 8, dtype=bool)
    bits[:used_nodes] = True
    return _node(1, 0, [header, bytes(128),
                        np.packbits(bits, bitorder="big").tobytes()])


def make_hfsplus(path: Path, size: int, files: dict[str, bytes], block_size: int = 4096,
                 hfsx: bool = False, stale: bytes = b"", pieces: int = 1,
                 dates: dict[str, int] | None = None) -> HfsPlusLayout:
    """Write an HFS+ (HFSX: case-sensitive) volume of ``size`` bytes to ``path``: the
    root folder holding ``files`` (name -> bytes, names in catalog order are sorted
    here, ASCII lower case), their dates ``dates`` (name -> seconds since 1904; default
    :data:`DATE`); free blocks filled with ``stale`` repeated; the allocation file in
    ``pieces`` extents, a free block between each two (past 8: in the extents
    overflow file)."""
    assert size % block_size == 0 and block_size >= 512
    total = size // block_size
    used = np.zeros(total, dtype=bool)
    next_block = -(-1536 // block_size)  # boot blocks + volume header
    used[:next_block] = True

    def take(n_bytes: int) -> tuple[int, int]:
        nonlocal next_block
        count = -(-n_bytes // block_size)
        start = next_block
        next_block += count
        used[start:next_block] = True
        return start, count

    bitmap_bytes = -(-total // 8)
    bitmap_blocks = -(-bitmap_bytes // block_size)
    per_piece = -(-bitmap_blocks // pieces)
    pieces_at = []
    for first in range(0, bitmap_blocks, per_piece):
        pieces_at.append(take(min(per_piece, bitmap_blocks - first) * block_size))
        next_block += 1  # a free block between the pieces
    assert len(pieces_at) <= 16
    allocation = pieces_at[0]
    overflow = len(pieces_at) > 8
    extents_nodes = 2 if overflow else 1
    extents_file = take(extents_nodes * NODE)
    catalog_nodes = 4
    catalog = take(catalog_nodes * NODE)
    layout = HfsPlusLayout(block_size, total, allocation, used)
    layout.allocation_pieces = pieces_at
    names = sorted(files)
    for name in names:
        layout.files[name] = take(len(files[name])) if files[name] else (0, 0)
    tail = (size - 1024) // block_size  # first block of the alternate header + reserved
    used[tail:] = True
    assert next_block < total, "volume too small"

    image = bytearray((stale * (-(-size // len(stale))))[:size] if stale else bytes(size))
    for start, count in [(0, 1), allocation, extents_file, catalog, (tail, total - tail)]:
        image[start * block_size : (start + count) * block_size] = bytes(count * block_size)

    def put(start: int, data: bytes) -> None:
        image[start * block_size : start * block_size + len(data)] = data

    bitmap = np.packbits(used, bitorder="big").tobytes()
    done = 0
    for start, count in pieces_at:
        put(start, bitmap[done : done + count * block_size])
        done += count * block_size
    if overflow:  # one leaf: HFSPlusExtentKey (data fork of file 6 from block n) + record
        covered = sum(count for _, count in pieces_at[:8])
        key = struct.pack(">HBBII", 10, 0, 0, 6, covered)
        put(extents_file[0], _header_node(1, 1, 1, 1, 10, 2, 2, 2, 0) + _node(
            -1, 1, [key + _extents(pieces_at[8:])]))
    else:
        put(extents_file[0], _header_node(0, 0, 0, 0, 10, 1, 1, 2, 0))
    records = [_key(ROOT_PARENT_ID, "vol") + _folder(ROOT_ID, len(names)),
               _key(ROOT_ID, "") + _thread(3, ROOT_PARENT_ID, "vol")]
    threads = []
    for i, name in enumerate(names):
        file_id = FIRST_USER_ID + i
        start, count = layout.files[name]
        fork = _fork(len(files[name]), [(start, count)] if count else [])
        records.append(_key(ROOT_ID, name) + _file(file_id, fork, (dates or {}).get(name, DATE)))
        threads.append(_key(file_id, "") + _thread(4, ROOT_ID, name))
        put(start, files[name])
    leaf = _node(-1, 1, records + threads)
    put(catalog[0], _header_node(1, 1, len(records) + len(threads), 1, 516, catalog_nodes, 2,
                                 6, 0xBC if hfsx else 0))
    image[catalog[0] * block_size + NODE : catalog[0] * block_size + 2 * NODE] = leaf

    header = (b"HX" if hfsx else b"H+") + struct.pack(
        ">HIII4I", 5 if hfsx else 4, 1 << 8, 0x31302E30, 0, DATE, DATE, 0, DATE)
    header += struct.pack(">IIIIIIIIIIQ", len(names), 0, block_size, total,
                          int(total - used.sum()), next_block, 65536, 65536,
                          FIRST_USER_ID + len(names), 1, 1)
    header += bytes(32)  # finderInfo
    header += _fork(bitmap_bytes, pieces_at, bitmap_blocks * block_size, bitmap_blocks)
    header += _fork(extents_nodes * NODE, [extents_file], NODE)
    header += _fork(catalog_nodes * NODE, [catalog], catalog_nodes * NODE)
    header += _fork(0, []) + _fork(0, [])  # attributes, startup
    assert len(header) == 512
    image[1024:1536] = header
    image[size - 1024 : size - 512] = header
    path.write_bytes(bytes(image))
    return layout

"""HFS+ catalog dates (Apple TN1150): each file's and folder's times from its record.

HFS+ dates are unsigned 32-bit seconds since 1904-01-01 00:00 UTC; 0 means "not set".
The Sleuth Kit gives 0 for every date before 1970, so dates from 1904 to 1969 are read
here, from the leaf records of the catalog B-tree (the catalog file's bytes), as Unix
seconds: negative before 1970.

Units: node sizes and offsets are bytes; dates are seconds.
"""

from __future__ import annotations

import numpy as np

from blockforensics.errors import FormatError
from blockforensics.fs.structure import Structure

#: seconds from 1904-01-01 (the HFS+ epoch) to 1970-01-01 (the Unix one)
HFS_EPOCH = 2_082_844_800
#: every B-tree node begins with it; ``kind`` 0xFF (-1) is a leaf node
NODE_DESCRIPTOR = Structure("BTNodeDescriptor", 14, [
    (0, "I", "fLink"), (4, "I", "bLink"), (8, "B", "kind"), (9, "B", "height"),
    (10, "H", "numRecords"), (12, "H", "reserved"),
], ">")
#: the header node's first record (after its descriptor)
HEADER_RECORD = Structure("BTHeaderRec", 106, [
    (0, "H", "treeDepth"), (2, "I", "rootNode"), (6, "I", "leafRecords"),
    (10, "I", "firstLeafNode"), (14, "I", "lastLeafNode"), (18, "H", "nodeSize"),
    (20, "H", "maxKeyLength"), (22, "I", "totalNodes"), (26, "I", "freeNodes"),
], ">")
#: the first fields of HFSPlusCatalogFolder and HFSPlusCatalogFile alike (after the
#: record's key): record type, flags, valence (folder) or reserved (file), the catalog
#: node ID, then the dates
CATALOG_DATES = Structure("HFSPlusCatalogDates", 28, [
    (0, "H", "recordType"), (2, "H", "flags"), (8, "I", "id"), (12, "I", "createDate"),
    (16, "I", "contentModDate"), (20, "I", "attributeModDate"), (24, "I", "accessDate"),
], ">")
LEAF_NODE = 0xFF
FOLDER_RECORD, FILE_RECORD = 1, 2
#: TSK's names of the times, and the dates they are (TSK's hfs_dinode_copy)
TIMES = {"crtime": "createDate", "mtime": "contentModDate", "ctime": "attributeModDate",
         "atime": "accessDate"}


def unix_time(date: int) -> int:
    """An HFS+ date as seconds since 1970 (negative before it); 0 ("not set") stays 0."""
    return date - HFS_EPOCH if date else 0


def catalog_dates(catalog: bytes) -> dict[int, dict[str, int]]:
    """Per catalog node ID, its times as Unix seconds (names as :data:`TIMES`), from
    the folder and file records of the leaf nodes of the catalog B-tree ``catalog``
    (the catalog file's bytes), the leaf chain followed from the header's first leaf.
    FormatError when the header node does not read."""
    header = HEADER_RECORD.parse(catalog, NODE_DESCRIPTOR.size)
    size = header.nodeSize
    if size < 512 or size & (size - 1):
        raise FormatError(f"HFS+ catalog node size {size}")
    n_nodes = len(catalog) // size
    found: dict[int, dict[str, int]] = {}
    node, seen = header.firstLeafNode, set()
    while 0 < node < n_nodes and node not in seen:  # node 0 is the header: the end
        seen.add(node)
        raw = catalog[node * size : (node + 1) * size]
        descriptor = NODE_DESCRIPTOR.parse(raw)
        if descriptor.kind != LEAF_NODE or 2 * (descriptor.numRecords + 1) > size:
            break
        offsets = np.frombuffer(raw, ">u2", descriptor.numRecords, size - 2 * descriptor.numRecords)
        for at in offsets[::-1].tolist():  # stored from the node's end, the first last
            start = at + 2 + int.from_bytes(raw[at : at + 2], "big")  # after the key
            if start + CATALOG_DATES.size > size:
                continue
            record = CATALOG_DATES.parse(raw, start)
            if record.recordType in (FOLDER_RECORD, FILE_RECORD):
                found[record.id] = {name: unix_time(getattr(record, date))
                                    for name, date in TIMES.items()}
        node = descriptor.fLink
    return found

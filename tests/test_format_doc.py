"""docs/FORMAT.md agrees with the declared layouts field by field (issue 11, item 8: the
page said 64-byte index records; they are 56)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from blockforensics.image.format import INDEX_DTYPE, Header

DOC = (Path(__file__).parents[1] / "docs" / "FORMAT.md").read_text()


def _table(title: str) -> list[tuple[int, int, str]]:
    """``(offset, size, field)`` rows of the table under the heading starting ``title``."""
    section = DOC[DOC.index(f"### {title}"):]
    section = section[: section.index("\n#", 4)]
    return [(int(o), int(s), f) for o, s, f in
            re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \|", section, re.MULTILINE)]


def test_index_record_table_matches_the_dtype() -> None:
    rows = _table("Block index")
    assert [(INDEX_DTYPE.fields[f][1], INDEX_DTYPE[f].itemsize, f) for f in INDEX_DTYPE.names] \
        == rows
    assert f"({INDEX_DTYPE.itemsize} bytes per record" in DOC
    assert f"{INDEX_DTYPE.itemsize} bytes per stored block" in DOC


def test_header_table_matches_the_struct() -> None:
    rows = {f: (o, s) for o, s, f in _table("Header")}
    offset = 0
    for name, code in Header.LAYOUT:
        size = struct.calcsize("<" + code)
        assert rows[name] == (offset, size), name
        offset += size
    assert rows["reserved"] == (offset, 4096 - 32 - offset)

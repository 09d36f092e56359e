"""Hexdumps for people: one buffer, or two versions of a buffer aligned line by line.

:func:`aligned` puts the bytes of a file before and after a change side by side at
the same file offsets, starting at the first line that differs, and marks every
byte that changed (``^^`` under it in text, ``<mark>`` in HTML).
"""

from __future__ import annotations

import html

LINE = 16  # bytes per line


def _text(row: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in row)


def hexdump(data: bytes, offset: int = 0) -> str:
    """Classic 16-bytes-a-line hexdump; ``offset`` (bytes) numbers the first line."""
    lines = []
    for i in range(0, len(data), LINE):
        row = data[i : i + LINE]
        lines.append(f"{offset + i:010x}  {row.hex(' '):<47}  |{_text(row)}|")
    return "\n".join(lines)


def first_difference(before: bytes, after: bytes) -> int | None:
    """Offset of the first byte that differs (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(before, after)):
        if x != y:
            return i
    return None if len(before) == len(after) else min(len(before), len(after))


def _rows(before: bytes, after: bytes, start: int, lines: int
          ) -> list[tuple[int, bytes, bytes]]:
    start -= start % LINE
    return [(o, before[o : o + LINE], after[o : o + LINE])
            for o in range(start, start + lines * LINE, LINE)
            if o < max(len(before), len(after))]


def _marks(a: bytes, b: bytes) -> list[bool]:
    return [i >= len(a) or i >= len(b) or a[i] != b[i] for i in range(max(len(a), len(b)))]


def aligned(before: bytes, after: bytes, start: int | None = None, lines: int = 8,
            base: int = 0) -> str:
    """Before and after side by side from the line holding ``start`` (default: the first
    difference), ``lines`` lines; offsets printed as ``base + offset``.  A line of
    ``^^`` marks, under the *after* column, the bytes that changed."""
    start = first_difference(before, after) if start is None else start
    if start is None:
        return "(no difference)"
    out = [f"{'offset':10}  {'before':<47}  {'':18}  after"]
    for offset, a, b in _rows(before, after, start, lines):
        out.append(f"{base + offset:010x}  {a.hex(' '):<47}  |{_text(a):<16}|  "
                   f"{b.hex(' '):<47}  |{_text(b):<16}|")
        marks = _marks(a, b)
        if any(marks):
            carets = " ".join("^^" if m else "  " for m in marks[:len(b)])
            out.append(" " * (10 + 2 + 47 + 2 + 18 + 2) + carets.rstrip())
    return "\n".join(out)


def aligned_html(before: bytes, after: bytes, start: int | None = None, lines: int = 8,
                 base: int = 0) -> str:
    """:func:`aligned` as an HTML ``<pre>``, changed bytes in ``<mark>``."""
    start = first_difference(before, after) if start is None else start
    if start is None:
        return "<pre>(no difference)</pre>"

    def cells(row: bytes, marks: list[bool]) -> str:
        return " ".join(f"<mark>{x:02x}</mark>" if m else f"{x:02x}"
                        for x, m in zip(row, marks)) + "   " * (LINE - len(row))

    out = [f"{'offset':10}  {'before':<47}   after"]
    for offset, a, b in _rows(before, after, start, lines):
        marks = _marks(a, b)
        out.append(f"{base + offset:010x}  {cells(a, marks)}   {cells(b, marks)}  "
                   f"|{html.escape(_text(b))}|")
    return "<pre>" + "\n".join(out) + "</pre>"

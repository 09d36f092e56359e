"""The command's own streams: whatever names a volume holds, printing them never fails
and never drives the terminal.

File names come from evidence: bytes that are no text in the output's encoding (a
``LANG=C`` or Latin-1 terminal, ``PYTHONIOENCODING=ascii``) are written as escapes
instead of raising, and on a terminal a name's control characters (an ESC sequence that
would recolour, retitle or clear the screen) are shown as ``\\xNN``, not obeyed.  Piped
or redirected output keeps every character as it is (CSV, body files, JSON consumers).
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import TextIO

#: C0 controls but tab and newline, DEL and C1 controls
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


class EscapingWriter(io.TextIOBase):
    """A text stream that writes to ``stream`` with control characters escaped."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(_CONTROL.sub(_escaped, text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()


def harden_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` escape what they cannot encode, and
    ``sys.stdout`` on a terminal escape control characters (see the module doc)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.isatty():
        sys.stdout = EscapingWriter(sys.stdout)


def show_progress() -> bool:
    """True when progress bars may be drawn: stderr is a terminal that moves its cursor
    (not a log file, a pipe, or ``TERM=dumb``, where each redraw would be a new line)."""
    return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"

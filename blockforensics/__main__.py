"""``python -m blockforensics``: the command line, as the ``blockforensics`` script runs it."""

from __future__ import annotations

from blockforensics.cli import run

run()

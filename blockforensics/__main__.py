"""``python -m blockforensics``: the command line, as the ``blockforensics`` script runs it."""

from __future__ import annotations

import sys

from blockforensics.cli import main

sys.exit(main())

"""blockforensics: block-level image backups as numpy block arrays and bitmaps.

The names most notebooks start from are importable from here; everything else
lives in one module per idea (see the README's architecture section).
"""

from __future__ import annotations

from blockforensics.blockmap import BlockMap
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.image.verify import verify
from blockforensics.volume import Volume

__all__ = ["BlockMap", "Chain", "Volume", "backup", "restore", "verify"]
__version__ = "0.1.0"

"""blockforensics: block-level image backups as numpy block arrays and bitmaps."""

from __future__ import annotations

from blockforensics.blockmap import BlockMap

__all__ = ["BlockMap"]
__version__ = "0.1.0"

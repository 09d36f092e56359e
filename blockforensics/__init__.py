"""blockforensics: block-level image backups as numpy block arrays and bitmaps.

The names most notebooks start from are importable from here; everything else
lives in one module per idea (see the README's architecture section).  They are
imported on first use, so that a command pays only for the modules it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockforensics.blockmap import BlockMap
    from blockforensics.fleet import Fleet, run_fleet
    from blockforensics.image.backup import backup, restore
    from blockforensics.image.chain import Chain
    from blockforensics.image.verify import verify
    from blockforensics.volume import Volume

#: public name -> the module defining it
_HOMES = {
    "BlockMap": "blockforensics.blockmap",
    "Chain": "blockforensics.image.chain",
    "Fleet": "blockforensics.fleet",
    "Volume": "blockforensics.volume",
    "backup": "blockforensics.image.backup",
    "restore": "blockforensics.image.backup",
    "run_fleet": "blockforensics.fleet",
    "verify": "blockforensics.image.verify",
}

__all__ = ["BlockMap", "Chain", "Fleet", "Volume", "backup", "restore", "run_fleet", "verify"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'blockforensics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

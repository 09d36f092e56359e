"""The image backup system: image files, chains of them in a directory, backup and restore.

A chain directory is one holding the manifest :data:`MANIFEST` (written and read by
:class:`~blockforensics.image.store.ChainStore` alone).  :func:`is_chain` and
:func:`chain_containing` tell one without importing the store (5-10 ms), so that a
command reading or writing other files pays only a ``stat`` for them.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the manifest's file name inside a chain directory
MANIFEST = "chain.json"


def is_chain(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` holds a chain manifest."""
    return os.path.isfile(os.path.join(directory, MANIFEST))


def chain_containing(path: str | os.PathLike[str]) -> Path | None:
    """The chain directory that ``path`` (resolved) is inside of, or None."""
    for directory in Path(os.path.realpath(path)).parents:
        if (directory / MANIFEST).exists():
            return directory
    return None

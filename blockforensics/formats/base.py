"""The reader-plugin interface: a disk image of any format, read by block.

A *format* plugin recognises files of one format (``probe``) and opens them as
a :class:`~blockforensics.disk.Disk` — the core's interface, which lives in
:mod:`blockforensics.disk` and is re-exported here for plugins.

Third parties add formats through the entry-point group
``blockforensics.formats`` (see :mod:`blockforensics.formats`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from blockforensics.disk import Disk, DiskFile, InPlaceDisk

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource


class Format(ABC):
    """A reader plugin for one image format."""

    #: short name used on the command line and in listings
    name: ClassVar[str]
    #: plugins are probed in increasing order; catch-alls (raw) go last
    priority: ClassVar[int] = 50
    #: URI schemes whose sources (not files) this plugin opens, e.g. ``nbd+unix``
    schemes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` looks like an image of this format (reads only a signature)."""

    @classmethod
    @abstractmethod
    def open(
        cls, path: str | os.PathLike[str], *, point: str | int | None = None,
        key: KeySource | None = None,
    ) -> Disk:
        """Open ``path`` as a Disk (``point`` and ``key`` for formats with history/encryption)."""


__all__ = ["Disk", "DiskFile", "Format", "InPlaceDisk"]  # the Disk classes: blockforensics.disk

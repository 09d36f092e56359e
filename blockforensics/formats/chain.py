"""Reader plugin for this project's own backups: a chain directory, read at one point."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar

from blockforensics.formats.base import Disk, Format
from blockforensics.formats.signature import holds_manifest

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource


class ChainFormat(Format):
    """A blockforensics chain directory (``chain.json`` plus ``*.bfi`` images)."""

    name: ClassVar[str] = "blockforensics"
    priority: ClassVar[int] = 10

    @classmethod
    def probe(cls, path: str | os.PathLike[str]) -> bool:
        return holds_manifest(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, point: str | int | None = None,
             key: KeySource | None = None) -> Disk:
        from blockforensics.image.chain import Chain

        return Chain.open(path, key).disk(-1 if point is None else point)

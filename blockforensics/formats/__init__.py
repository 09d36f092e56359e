"""Reader plugins per image format, chosen by probing a file's signature.

Built-in plugins and third-party ones are both found through the entry-point
group ``blockforensics.formats`` (each entry names a :class:`Format` subclass);
the built-ins are also listed here so that a source checkout works without
installation metadata.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk, DiskFile, Format

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource

ENTRY_POINT_GROUP = "blockforensics.formats"

_BUILTINS = {
    "blockforensics": "blockforensics.formats.chain:ChainFormat",
    "vhd": "blockforensics.formats.vhd:VhdFormat",
    "raw": "blockforensics.formats.raw:RawFormat",
}

__all__ = ["Disk", "DiskFile", "Format", "formats", "open_disk", "probe"]


def _load(target: str) -> type[Format]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def formats() -> dict[str, type[Format]]:
    """Every known plugin by name, in probing order (built-ins overridable by name)."""
    found: dict[str, type[Format]] = {}
    for name, target in _BUILTINS.items():
        found[name] = _load(target)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found or ep.value != _BUILTINS.get(ep.name):
            found[ep.name] = ep.load()
    return dict(sorted(found.items(), key=lambda item: item[1].priority))


def probe(path: str | os.PathLike[str]) -> type[Format]:
    """The first plugin whose probe accepts ``path``; UsageError if none does."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    for plugin in formats().values():
        if plugin.probe(path):
            return plugin
    raise UsageError(f"{path}: no reader plugin recognises this format")


def open_disk(
    path: str | os.PathLike[str], *, point: str | int | None = None, key: KeySource | None = None,
    format: str | None = None,
) -> Disk:
    """Open any supported image (a chain directory, a VHD, a raw file …) as a Disk."""
    if format is not None:
        known = formats()
        if format not in known:
            raise UsageError(f"unknown format {format!r}; known: {', '.join(known)}")
        plugin = known[format]
    else:
        plugin = probe(path)
    return plugin.open(path, point=point, key=key)

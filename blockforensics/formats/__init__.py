"""Reader plugins per image format, chosen by probing a file's signature.

Third-party plugins are found through the entry-point group
``blockforensics.formats`` (each entry names a :class:`Format` subclass); the
built-ins are listed here, and their names are reserved.  A file is offered
first to the built-ins that look for a signature (chain, VHD); only when none
claims it are the entry points read (importing ``importlib.metadata`` and
scanning the installed packages costs about 25 ms) and every plugin probed in
priority order, the raw catch-all last.
"""

from __future__ import annotations

import importlib
import inspect
import os
from functools import cache
from typing import TYPE_CHECKING

from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk, DiskFile, Format

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource

ENTRY_POINT_GROUP = "blockforensics.formats"

_BUILTINS = {
    "blockforensics": "blockforensics.formats.chain:ChainFormat",
    "vhd": "blockforensics.formats.vhd:VhdFormat",
    "nbd": "blockforensics.formats.nbd:NbdFormat",
    "raw": "blockforensics.formats.raw:RawFormat",
}
#: the built-in that accepts any file, so it is probed after every other plugin
_CATCH_ALL = "raw"

__all__ = ["Disk", "DiskFile", "Format", "formats", "open_disk", "probe"]


def _load(target: str) -> type[Format]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def _builtins() -> dict[str, type[Format]]:
    return {name: _load(target) for name, target in _BUILTINS.items()}


def formats() -> dict[str, type[Format]]:
    """Every known plugin by name, in probing order."""
    from importlib.metadata import entry_points

    found = dict(_builtins())
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return dict(sorted(found.items(), key=lambda item: item[1].priority))


def probe(path: str | os.PathLike[str]) -> type[Format]:
    """The plugin that claims ``path``: a built-in whose signature it bears, else the
    first plugin in probing order whose probe accepts it; UsageError if none does.
    A URI (``SCHEME://...``) goes to the plugin that lists its scheme."""
    scheme, sep, _ = os.fspath(path).partition("://")
    if sep:
        for plugin in (*_builtins().values(), *formats().values()):
            if scheme in plugin.schemes:
                return plugin
        raise UsageError(f"{path}: no reader plugin opens {scheme}:// sources")
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    signed = [plugin for name, plugin in _builtins().items() if name != _CATCH_ALL]
    for plugin in sorted(signed, key=lambda plugin: plugin.priority):
        if plugin.probe(path):
            return plugin
    for plugin in formats().values():
        if plugin not in signed and plugin.probe(path):
            return plugin
    raise UsageError(f"{path}: no reader plugin recognises this format")


def open_disk(
    path: str | os.PathLike[str], *, point: str | int | None = None, key: KeySource | None = None,
    format: str | None = None, parent: str | os.PathLike[str] | None = None,
) -> Disk:
    """Open any supported image (a chain directory, a VHD, a raw file …) as a Disk;
    ``parent`` names the parent of a differencing image, for plugins that take one."""
    if format is not None:
        known = _builtins() if format in _BUILTINS else formats()
        if format not in known:
            raise UsageError(f"unknown format {format!r}; known: {', '.join(known)}")
        plugin = known[format]
    else:
        plugin = probe(path)
    if parent is None:
        return plugin.open(path, point=point, key=key)
    if "parent" not in inspect.signature(plugin.open).parameters:
        raise UsageError(f"{path}: the {plugin.name} reader takes no parent file")
    return plugin.open(path, point=point, key=key, parent=parent)  # type: ignore[call-arg]

"""Reader plugins per image format, chosen by probing a file's signature.

Third-party plugins are found through the entry-point group
``blockforensics.formats`` (each entry names a :class:`Format` subclass); the
built-ins are listed here, and their names are reserved.  A file is offered
first to the built-ins that look for a signature (chain, NBD, VHD, VHDX, VMDK,
qcow2, EWF, VDI), in priority order, each tested by :mod:`.signature` before its module is
imported: only the reader of the format found is imported (importing them all cost
20-30 ms of every command's start).  Only when none claims the file are the entry
points read and the other plugins probed in priority order, the raw catch-all last.
The catch-all refuses a file bearing the signature of a container that no reader
opens (AFF, AFF4, DMG, Parallels, QED, a compressed file, an archive: see
:func:`.signature.container`): its bytes are not a disk, and backing them up would
"succeed" with nothing found in them.  ``--reader raw`` still reads it byte for byte.
Reading them with ``importlib.metadata`` costs 30-60 ms (its import and a scan of
every installed package), so the packages' ``entry_points.txt`` files are first
looked through for a plugin that is not a built-in: with none, as on most machines,
a raw file is opened without that scan.

A third-party plugin that fails — it does not import, is not a Format, or its
probe raises — is set aside and named (one warning line on stderr, and in the
error when no plugin claims a file); the others keep working.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from blockforensics.errors import UsageError
from blockforensics.formats import signature
from blockforensics.formats.base import Disk, DiskFile, Format
from blockforensics.image import chain_containing

if TYPE_CHECKING:
    from blockforensics.crypto import KeySource

ENTRY_POINT_GROUP = "blockforensics.formats"

#: the built-ins in priority order (a test holds them to their classes' ``priority``):
#: name -> (``module:class``, the test of its signature, which imports no reader)
_BUILTINS: dict[str, tuple[str, Callable[[str | os.PathLike[str]], bool] | None]] = {
    "blockforensics": ("blockforensics.formats.chain:ChainFormat", signature.holds_manifest),
    "nbd": ("blockforensics.formats.nbd:NbdFormat", signature.is_nbd_uri),
    "vhd": ("blockforensics.formats.vhd:VhdFormat", signature.is_vhd),
    "vhdx": ("blockforensics.formats.foreign:VhdxFormat", signature.is_vhdx),
    "vmdk": ("blockforensics.formats.foreign:VmdkFormat", signature.is_vmdk),
    "qcow2": ("blockforensics.formats.foreign:Qcow2Format", signature.is_qcow2),
    "ewf": ("blockforensics.formats.ewf:EwfFormat", signature.is_ewf),
    "vdi": ("blockforensics.formats.vdi:VdiFormat", signature.is_vdi),
    "raw": ("blockforensics.formats.raw:RawFormat", None),
}
#: the built-in that accepts any file (no signature), so it is probed after every other plugin
_CATCH_ALL = "raw"

__all__ = ["Disk", "DiskFile", "Format", "formats", "open_disk", "open_source", "probe"]


def _builtin(name: str) -> type[Format]:
    """The built-in plugin ``name``, its module imported on first use."""
    module, _, attr = _BUILTINS[name][0].partition(":")
    return getattr(importlib.import_module(module), attr)


#: third-party plugins set aside: name -> why (one line)
BROKEN: dict[str, str] = {}


def _set_aside(name: str, target: str, exc: BaseException) -> None:
    if name not in BROKEN:
        BROKEN[name] = f"{name} ({target}): {type(exc).__name__}: {exc}".splitlines()[0]
        print(f"blockforensics: warning: reader plugin {BROKEN[name]}; skipped",
              file=sys.stderr)


def _entry_point_names(text: str) -> list[str]:
    """The names the ``[blockforensics.formats]`` section of an ``entry_points.txt``
    (an INI file: ``name = module:attr`` lines) declares."""
    names: list[str] = []
    inside = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            inside = line == f"[{ENTRY_POINT_GROUP}]"
        elif inside and "=" in line and not line.startswith(("#", ";")):
            names.append(line.partition("=")[0].strip())
    return names


def _third_party_declared() -> bool:
    """Whether an installed package may declare a plugin that is not a built-in; True
    whenever that cannot be told from plain directories on ``sys.path`` (a zip file on
    it, a finder of distributions other than the standard one)."""
    from importlib.machinery import PathFinder

    if any(hasattr(finder, "find_distributions") and finder is not PathFinder
           for finder in sys.meta_path):
        return True
    for entry in sys.path:
        root = entry or "."
        if os.path.isfile(root):
            return True  # a zip file: importlib.metadata reads its metadata
        try:
            children = os.scandir(root)
        except OSError:
            continue  # missing, or a path hook's token: importlib.metadata finds nothing
        with children:
            for child in children:
                name = child.name.lower()
                if not (name.endswith((".dist-info", ".egg-info")) or name == "egg-info"):
                    continue
                try:
                    with open(os.path.join(child.path, "entry_points.txt"), "rb") as fh:
                        text = fh.read().decode(errors="replace")
                except OSError:
                    continue  # none (or an .egg-info file): no entry points
                if set(_entry_point_names(text)) - set(_BUILTINS):
                    return True
    return False


def _third_party() -> dict[str, type[Format]]:
    """The working third-party plugins by name (broken ones: BROKEN); without a scan of
    the installed packages' metadata when none of them may declare one."""
    found: dict[str, type[Format]] = {}
    if not _third_party_declared():
        return found
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTINS or ep.name in found or ep.name in BROKEN:
            continue
        try:
            plugin = ep.load()
            if not (isinstance(plugin, type) and issubclass(plugin, Format)):
                raise TypeError("not a blockforensics.formats.Format subclass")
            int(plugin.priority)
        except Exception as exc:  # a third party's failure must not stop the others
            _set_aside(ep.name, ep.value, exc)
            continue
        found[ep.name] = plugin
    return found


def _by_priority(plugins: dict[str, type[Format]]) -> dict[str, type[Format]]:
    return dict(sorted(plugins.items(), key=lambda item: item[1].priority))


def formats() -> dict[str, type[Format]]:
    """Every known working plugin by name, in probing order (broken ones: BROKEN)."""
    return _by_priority({**{name: _builtin(name) for name in _BUILTINS}, **_third_party()})


def _claims(name: str, plugin: type[Format], path: str | os.PathLike[str]) -> bool:
    """Whether ``plugin`` claims ``path``; a third-party probe that raises is set aside."""
    if name in _BUILTINS:
        return plugin.probe(path)
    try:
        return bool(plugin.probe(path))
    except Exception as exc:
        _set_aside(name, f"{plugin.__module__}.{plugin.__qualname__}", exc)
        return False


#: what ``stat`` calls the kinds of file that are no disk image
_NOT_A_DISK = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"))


def check_local_source(path: str | os.PathLike[str]) -> None:
    """UsageError unless ``path`` exists and can hold a disk: a regular file, a block
    device or a directory (a chain).  A FIFO or a character device would block the
    first read or have no size, a socket cannot be read at all; a file inside a chain
    directory (an image, the manifest) is a piece of a chain, not a disk — read as raw,
    its container bytes would pass for one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot open ({exc.strerror})") from exc
    for test, kind in _NOT_A_DISK:
        if test(mode):
            raise UsageError(f"{path}: {kind}, not a disk image (a regular file, a block "
                             f"device or a chain directory)")
    chain = None if stat.S_ISDIR(mode) else chain_containing(path)
    if chain is not None:
        raise UsageError(f"{path}: a file of the chain {chain}, not a disk; to read a "
                         f"point, give the chain directory (and its --point)")


def _refuse_container(path: str | os.PathLike[str]) -> None:
    """UsageError (one line: the format and what to do) if ``path`` is a container no
    reader opens, which the raw catch-all would misread as a disk."""
    found = signature.container(path)
    if found is not None:
        kind, todo = found
        raise UsageError(f"{path}: {kind}, not a disk image: {todo} "
                         f"(--reader raw reads its bytes as the disk)")


def probe(path: str | os.PathLike[str]) -> type[Format]:
    """The plugin that claims ``path``: a built-in whose signature it bears, else the
    first plugin in probing order whose probe accepts it; UsageError if none does.
    A URI (``SCHEME://...``) goes to the plugin that lists its scheme."""
    scheme, sep, _ = os.fspath(path).partition("://")
    if not sep:
        check_local_source(path)
    for name, (_, signed) in _BUILTINS.items():
        if signed is not None and signed(path):
            return _builtin(name)
    if sep:
        for plugin in _third_party().values():
            if scheme in plugin.schemes:
                return plugin
        raise UsageError(f"{path}: no reader plugin opens {scheme}:// sources")
    unsigned = _by_priority({_CATCH_ALL: _builtin(_CATCH_ALL), **_third_party()})
    for name, plugin in unsigned.items():
        if name not in BROKEN and _claims(name, plugin, path):
            if name == _CATCH_ALL:
                _refuse_container(path)
            return plugin
    skipped = f" (broken plugins skipped: {'; '.join(BROKEN.values())})" if BROKEN else ""
    what = ("a directory that is no chain (it has no chain.json) and that no reader plugin "
            "opens" if os.path.isdir(path) else "no reader plugin recognises this format")
    raise UsageError(f"{path}: {what}{skipped}")


def open_disk(
    path: str | os.PathLike[str], *, point: str | int | None = None, key: KeySource | None = None,
    format: str | None = None, parent: str | os.PathLike[str] | None = None,
) -> Disk:
    """Open any supported image (a chain directory, a VHD, a raw file …) as a Disk;
    ``parent`` names the parent of a differencing image, for plugins that take one."""
    if format is not None and "://" not in os.fspath(path):
        check_local_source(path)  # probe checks it too
    if format is None:
        plugin = probe(path)
    elif format in _BUILTINS:
        plugin = _builtin(format)
    else:
        known = formats()
        if format in BROKEN:
            raise UsageError(f"reader plugin {BROKEN[format]}")
        if format not in known:
            raise UsageError(f"unknown format {format!r}; known: {', '.join(known)}")
        plugin = known[format]
    if parent is None:
        return plugin.open(path, point=point, key=key)
    import inspect  # only with a parent file: 2-7 ms of start-up

    if "parent" not in inspect.signature(plugin.open).parameters:
        raise UsageError(f"{path}: the {plugin.name} reader takes no parent file")
    return plugin.open(path, point=point, key=key, parent=parent)  # type: ignore[call-arg]


def open_source(
    path: str | os.PathLike[str], *, point: str | int | None = None, key: KeySource | None = None,
    format: str | None = None, parent: str | os.PathLike[str] | None = None,
) -> Disk:
    """:func:`open_disk` for a disk a command reads as its source (to back up, export,
    serve, mount, boot): UsageError when it holds 0 bytes (a file left empty by a failed
    copy), rather than a chain, an export or a served disk of nothing."""
    disk = open_disk(path, point=point, key=key, format=format, parent=parent)
    if not disk.size:
        disk.close()
        raise UsageError(f"{path}: the source is empty (0 bytes): no disk to read")
    return disk

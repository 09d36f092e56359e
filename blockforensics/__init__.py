"""blockforensics: block-level image backups as numpy block arrays and bitmaps.

``import blockforensics as bf`` gives every name a notebook needs::

    vol = bf.Volume.zeros(300 * 512, block_size=512)
    chain = bf.Chain.create("chain")
    bf.backup(chain, vol)
    bf.plot_chain(chain);

Each name lives in one module per idea (see the README's architecture section)
and is imported on first use (PEP 562), so that a command pays only for the
modules it needs.  The methods are explained in docs/METHODS.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockforensics import live
    from blockforensics.allocation import allocation_map, partitions
    from blockforensics.blockmap import BlockMap
    from blockforensics.boot import boot as boot_disk
    from blockforensics.consolidate import apply_retention
    from blockforensics.consolidate import consolidate as consolidate_point
    from blockforensics.crypto import KeySource
    from blockforensics.datasets.bootdisk import (
        MARKER_PREFIX,
        cached_boot_disk,
        read_fat_file,
        set_boot_marker,
        write_fat_file,
    )
    from blockforensics.datasets.investigation import build_investigation
    from blockforensics.datasets.ransomware import build_ransomware
    from blockforensics.errors import BlockforensicsError, UsageError
    from blockforensics.expose import exposed
    from blockforensics.fleet import Fleet, run_fleet
    from blockforensics.forensics import block_entropy, changes, diff, list_files, timeline
    from blockforensics.formats.raw import RawDisk
    from blockforensics.formats.vhd import UNUSED, VHD_BLOCK, vhd_info, write_vhd
    from blockforensics.image.backup import backup, restore
    from blockforensics.image.chain import Chain
    from blockforensics.image.verify import verify
    from blockforensics.methods import (
        BranchingChain,
        HeadStartIncremental,
        MethodRecord,
        NaiveLinearChain,
        QuiescedFullImage,
        branching_chain,
        differing_blocks,
        head_start_incremental,
        naive_linear_chain,
        quiesced_full_image,
    )
    from blockforensics.plot import (
        MEANING,
        PALETTE,
        kind_of,
        plot_blockmap,
        plot_blockmaps,
        plot_bytes,
        plot_chain,
        plot_layout,
        plot_to_copy,
    )
    from blockforensics.plot_forensics import (
        plot_diff_files,
        plot_entropy,
        plot_fleet,
        plot_triage,
    )
    from blockforensics.snapshot import Snapshot
    from blockforensics.timeline_formats import file_versions
    from blockforensics.timeline_formats import render as render_timeline
    from blockforensics.tracking import POLICIES, ChangeTracker, HeadStart
    from blockforensics.triage import explain as explain_file
    from blockforensics.triage import triage as triage_points
    from blockforensics.triage import triage_chain
    from blockforensics.volume import Volume
    from blockforensics.widgets import ChainExplorer
    from blockforensics.workload import Workload

#: module -> the public names it defines, for ``bf.<name>``
_MODULES: dict[str, tuple[str, ...]] = {
    "blockforensics.volume": ("Volume",),
    "blockforensics.blockmap": ("BlockMap",),
    "blockforensics.image.chain": ("Chain",),
    "blockforensics.image.backup": ("backup", "restore"),
    "blockforensics.image.verify": ("verify",),
    "blockforensics.tracking": ("ChangeTracker", "HeadStart", "POLICIES"),
    "blockforensics.snapshot": ("Snapshot",),
    "blockforensics.workload": ("Workload",),
    "blockforensics.methods": ("HeadStartIncremental", "QuiescedFullImage", "BranchingChain",
                               "NaiveLinearChain", "MethodRecord", "head_start_incremental",
                               "quiesced_full_image", "branching_chain", "naive_linear_chain",
                               "differing_blocks"),
    "blockforensics.consolidate": ("consolidate_point=consolidate", "apply_retention"),
    "blockforensics.crypto": ("KeySource",),
    "blockforensics.forensics": ("diff", "changes", "timeline", "list_files", "block_entropy"),
    "blockforensics.allocation": ("allocation_map", "partitions"),
    "blockforensics.formats.raw": ("RawDisk",),
    "blockforensics.formats.vhd": ("write_vhd", "vhd_info", "VHD_BLOCK", "UNUSED"),
    "blockforensics.expose": ("exposed",),
    "blockforensics.fleet": ("Fleet", "run_fleet"),
    "blockforensics.boot": ("boot_disk=boot",),
    "blockforensics.datasets.bootdisk": ("cached_boot_disk", "set_boot_marker",
                                         "write_fat_file", "read_fat_file", "MARKER_PREFIX"),
    "blockforensics.datasets.investigation": ("build_investigation",),
    "blockforensics.datasets.ransomware": ("build_ransomware",),
    "blockforensics.triage": ("triage_points=triage", "triage_chain", "explain_file=explain"),
    "blockforensics.timeline_formats": ("file_versions", "render_timeline=render"),
    "blockforensics.widgets": ("ChainExplorer",),
    "blockforensics.plot": ("plot_blockmap", "plot_blockmaps", "plot_chain", "plot_layout",
                            "plot_bytes", "plot_to_copy", "PALETTE", "MEANING", "kind_of"),
    "blockforensics.plot_forensics": ("plot_diff_files", "plot_entropy", "plot_fleet",
                                      "plot_triage"),
    "blockforensics.errors": ("BlockforensicsError", "UsageError"),
}
#: public name -> (the module defining it, its name there); "alias=name" where a
#: function is named like its module (``bf.consolidate`` stays the module)
_HOMES = {entry.partition("=")[0]: (module, entry.rpartition("=")[2])
          for module, entries in _MODULES.items() for entry in entries}

#: subpackages reached as ``bf.<name>`` (their names would clash with the core's)
_SUBPACKAGES = ("live",)

__all__ = [
    "MARKER_PREFIX",
    "MEANING",
    "PALETTE",
    "POLICIES",
    "UNUSED",
    "VHD_BLOCK",
    "BlockMap",
    "BlockforensicsError",
    "BranchingChain",
    "Chain",
    "ChainExplorer",
    "ChangeTracker",
    "Fleet",
    "HeadStart",
    "HeadStartIncremental",
    "KeySource",
    "MethodRecord",
    "NaiveLinearChain",
    "QuiescedFullImage",
    "RawDisk",
    "Snapshot",
    "UsageError",
    "Volume",
    "Workload",
    "allocation_map",
    "apply_retention",
    "backup",
    "block_entropy",
    "boot_disk",
    "branching_chain",
    "build_investigation",
    "build_ransomware",
    "cached_boot_disk",
    "changes",
    "consolidate_point",
    "diff",
    "differing_blocks",
    "explain_file",
    "exposed",
    "file_versions",
    "head_start_incremental",
    "kind_of",
    "list_files",
    "live",
    "naive_linear_chain",
    "partitions",
    "plot_blockmap",
    "plot_blockmaps",
    "plot_bytes",
    "plot_chain",
    "plot_diff_files",
    "plot_entropy",
    "plot_fleet",
    "plot_layout",
    "plot_to_copy",
    "plot_triage",
    "quiesced_full_image",
    "read_fat_file",
    "render_timeline",
    "restore",
    "run_fleet",
    "set_boot_marker",
    "timeline",
    "triage_chain",
    "triage_points",
    "verify",
    "vhd_info",
    "write_fat_file",
    "write_vhd",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOMES:
        module, attribute = _HOMES[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # the next lookup does not come here
        return value
    raise AttributeError(f"module 'blockforensics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

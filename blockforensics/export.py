"""Export a disk to the formats hypervisors open, flattened or as the chain's own structure.

*Flattened* formats (``vhd-fixed``, ``vhd-dynamic``, ``vhdx``, ``vmdk``, ``qcow2``,
``raw``, and ``vmdk-stream``: a streamOptimized VMDK, compressed, for import into
VMware and VirtualBox) hold one point's whole disk in one file.  *Chain* formats
(``vhd-chain``, ``qcow2-chain``) keep the backup chain's structure: the full at
the root of the point's path becomes a base disk, and each image after it a
child (a differencing VHD with parent locators, or a qcow2 with a backing
file) holding only that image's blocks, so the blocks of every point are
written once.  ``OUT`` is the file for the requested point; its parents are
written beside it as ``<stem>.point<N><suffix>`` and referenced by relative
names, so the directory can be moved as a whole.

Every format's file is a :class:`~blockforensics.formats.layout.FileLayout`:
:func:`layout` is also what the FUSE mount serves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from blockforensics.errors import UsageError
from blockforensics.formats.base import Disk
from blockforensics.formats.layout import FileLayout, Layer, widen, write_layout
from blockforensics.formats.placement import Placement

if TYPE_CHECKING:
    from blockforensics.blockmap import BlockMap
    from blockforensics.image.chain import Chain

#: flattened formats and the layout class each writes
FLAT = ("vhd-dynamic", "vhd-fixed", "vhdx", "vmdk", "qcow2", "raw")
#: flattened formats written as a stream (their layout depends on compressed sizes)
STREAMED = ("vmdk-stream",)
CHAIN = ("vhd-chain", "qcow2-chain")
#: alias accepted on the command line (the issue's first name for vhd-chain)
ALIASES = {"vhd-differencing": "vhd-chain"}
#: QEMU's name of each flattened format (``qemu-img -f``)
QEMU_FORMAT = {"vhd-dynamic": "vpc", "vhd-fixed": "vpc", "vhdx": "vhdx", "vmdk": "vmdk",
               "qcow2": "qcow2", "raw": "raw", "vhd-chain": "vpc", "qcow2-chain": "qcow2",
               "vmdk-stream": "vmdk"}


class RawLayout(FileLayout):
    """The disk's bytes as they are (sector-rounded): a raw image."""

    def __init__(self, disk: Disk):
        super().__init__(disk)
        self.file_size = self.size

    def placement(self) -> Placement:
        return Placement.identity()

    def metadata(self) -> Iterator[tuple[int, bytes]]:
        return iter(())


def layout(disk: Disk, format: str, name: str = "disk") -> FileLayout:
    """The file layout of ``disk`` in the flattened ``format`` (``name``: the file's name,
    which a VMDK's descriptor records); only that format's module is imported."""
    if format in ("vhd-dynamic", "vhd-fixed"):
        from blockforensics.formats.vhd import VhdLayout

        return VhdLayout(disk, "dynamic" if format == "vhd-dynamic" else "fixed")
    if format == "vhdx":
        from blockforensics.formats.vhdx import VhdxLayout

        return VhdxLayout(disk)
    if format == "vmdk":
        from blockforensics.formats.vmdk import VmdkLayout

        return VmdkLayout(disk, name)
    if format == "qcow2":
        from blockforensics.formats.qcow2 import Qcow2Layout

        return Qcow2Layout(disk)
    if format == "raw":
        return RawLayout(disk)
    raise UsageError(f"unknown export format {format!r}; known: "
                     f"{', '.join(FLAT + STREAMED + CHAIN)}")


def export(disk: Disk, out: str | os.PathLike[str], format: str, *,
           progress: bool = False) -> Path:
    """Write ``disk`` to ``out`` in the flattened ``format`` (atomically)."""
    if format == "vmdk-stream":
        from blockforensics.formats.vmdk import write_vmdk_stream

        return write_vmdk_stream(disk, out, progress=progress)
    return write_layout(layout(disk, format, Path(out).name), out, progress=progress)


def image_blocks(chain: Chain, point: int) -> BlockMap:
    """Blocks the point's own image defines at that point (its stored blocks, zeros
    included), and every block not wholly inside its parent (which the parent cannot
    answer)."""
    own = chain.layout(point)
    blocks = own.supplied(len(own.images) - 1)
    parent = chain.parent(point)
    if parent is not None:
        blocks.add_range(chain.layout(parent).size // own.block_size, own.n_blocks)
    return blocks


def chain_files(out: Path, points: list[int]) -> list[Path]:
    """The file of each point on the path: ``out`` for the last, siblings for its parents."""
    return [out.with_name(f"{out.stem}.point{p}{out.suffix}") for p in points[:-1]] + [out]


def export_chain(chain: Chain, point: int | str, out: str | os.PathLike[str], format: str, *,
                 progress: bool = False) -> list[Path]:
    """Write the point's path as a chain of ``format`` (``vhd-chain`` or ``qcow2-chain``)
    files, root first; returns their paths (the last is ``out``).  If one fails (a
    damaged block), those already written are removed: nothing is left under the
    output's names."""
    from blockforensics.formats.qcow2 import CLUSTER, Backing, Qcow2Layout
    from blockforensics.formats.vhd import VhdLayout, VhdParent

    format = ALIASES.get(format, format)
    if format not in CHAIN:
        raise UsageError(f"{format!r} is not a chain format ({', '.join(CHAIN)})")
    points = chain.path(point)
    files = chain_files(Path(out), points)
    written: list[Path] = []
    try:
        for i, (p, path) in enumerate(zip(points, files)):
            disk = chain.disk(p)
            if i == 0:
                made: FileLayout = (VhdLayout(disk, "dynamic") if format == "vhd-chain"
                                    else Qcow2Layout(disk))
            elif format == "vhd-chain":
                covers = image_blocks(chain, p)
                made = VhdLayout(Layer(disk, covers), "differencing", covers=covers,
                                 parent=VhdParent.of(files[i - 1]), directory=path.parent)
            else:
                # whole clusters replace the parent's
                covers = widen(image_blocks(chain, p), CLUSTER)
                made = Qcow2Layout(Layer(disk, covers), covers=covers,
                                   backing=Backing(files[i - 1].name, "qcow2"))
            write_layout(made, path, progress=progress)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return files


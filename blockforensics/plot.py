"""Matplotlib pictures of block maps and chains; every function takes and returns an Axes.

Block maps are drawn from their runs (``broken_barh``), so a map of millions
of blocks draws as fast as one of a hundred.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from blockforensics.blockmap import BlockMap
    from blockforensics.image.chain import Chain, Layout


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_blockmap(bmap: BlockMap, ax: Axes | None = None, *, layout: str = "strip",
                  title: str | None = None, color: str = "C0", columns: int | None = None
                  ) -> Axes:
    """Draw one map: a horizontal strip of runs, or a grid (``layout="grid"``, row-major)."""
    if layout == "grid":
        ax = _axes(ax, (6, 4))
        columns = columns or max(1, int(np.ceil(np.sqrt(max(1, bmap.n_blocks)))))
        rows = -(-max(1, bmap.n_blocks) // columns)
        grid = np.full(rows * columns, np.nan)
        grid[: bmap.n_blocks] = bmap.to_bools()
        cmap = plt.matplotlib.colors.ListedColormap(["#eeeeee", color])
        ax.imshow(grid.reshape(rows, columns), cmap=cmap, vmin=0, vmax=1, aspect="auto",
                  interpolation="nearest")
        ax.set_xlabel("block % columns")
        ax.set_ylabel("block // columns")
    elif layout == "strip":
        ax = _axes(ax, (10, 1.2))
        _strip(ax, bmap, 0, color)
        ax.set_xlim(0, max(1, bmap.n_blocks))
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_xlabel("block position")
    else:
        raise ValueError(f"layout must be 'strip' or 'grid', not {layout!r}")
    ax.set_title(title if title is not None else repr(bmap), fontsize=9)
    return ax


def _strip(ax: Axes, bmap: BlockMap, y: float, color: str, height: float = 1.0) -> None:
    ax.broken_barh([(0, max(1, bmap.n_blocks))], (y, height), facecolors="#eeeeee")
    starts, lengths = bmap.run_arrays()
    if len(starts):
        ax.broken_barh(list(zip(starts.tolist(), lengths.tolist())), (y, height),
                       facecolors=color)


def plot_blockmaps(maps: Mapping[str, BlockMap], ax: Axes | None = None, *,
                   title: str | None = None) -> Axes:
    """Several maps of one volume as labelled strips, one above the other (first on top)."""
    ax = _axes(ax, (10, 0.5 + 0.45 * len(maps)))
    names = list(maps)
    n_blocks = max((m.n_blocks for m in maps.values()), default=1)
    for row, name in enumerate(names):
        y = len(names) - 1 - row
        _strip(ax, maps[name], y + 0.1, f"C{row % 10}", 0.8)
    ax.set_yticks([len(names) - 1 - r + 0.5 for r in range(len(names))])
    ax.set_yticklabels([f"{n} ({maps[n].count()})" for n in names])
    ax.set_xlim(0, max(1, n_blocks))
    ax.set_ylim(0, max(1, len(names)))
    ax.set_xlabel("block position")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_layout(layout: Layout, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Which image of the path each block of a point comes from (grey: zeros)."""
    from blockforensics.blockmap import BlockMap

    maps = {img.name: BlockMap.from_bools(layout.owner == depth, layout.block_size)
            for depth, img in enumerate(layout.images)}
    return plot_blockmaps(maps, ax, title=title or "where each block comes from")


def plot_chain(chain: Chain, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """The chain as a tree: one node per point in creation order, an edge to its parent.

    Each branch gets its own lane; fulls are squares, incrementals circles, and the
    label says the point, kind and number of blocks stored.
    """
    ax = _axes(ax, (max(4, 1.6 * len(chain)), 2.2))
    table = chain.table()
    lane: dict[int, int] = {}
    used: set[int] = set()
    for point, parent in zip(table["point"], table["parent"]):
        if parent is None or parent is np.nan or str(parent) == "<NA>":
            lane[point] = 0 if 0 not in used else max(used) + 1
        else:
            siblings_before = [p for p in chain.children(int(parent)) if p < point]
            lane[point] = lane[int(parent)] if not siblings_before else max(used) + 1
        used.add(lane[point])
    for point, parent in zip(table["point"], table["parent"]):
        if str(parent) != "<NA>":
            ax.annotate("", xy=(int(parent), -lane[int(parent)]), xytext=(point, -lane[point]),
                        arrowprops={"arrowstyle": "-|>", "color": "grey", "shrinkA": 9,
                                    "shrinkB": 9, "mutation_scale": 14})
    for row in table.itertuples():
        full = row.kind == "full"
        ax.plot(row.point, -lane[row.point], "s" if full else "o", markersize=14,
                color="C3" if full else "C0", zorder=3)
        ax.annotate(f"{row.point}: {row.kind}\n{row.blocks} blocks"
                    + (f"\n{row.label}" if row.label else ""),
                    (row.point, -lane[row.point]), textcoords="offset points", xytext=(0, -30),
                    ha="center", va="top", fontsize=8)
    ax.set_xlim(-0.7, max(1, len(chain)) - 0.3)
    ax.set_ylim(-max(used, default=0) - 1.2, 0.6)
    ax.axis("off")
    ax.set_title(title or f"chain {chain.directory.name}: arrows point to the parent",
                 fontsize=9)
    return ax

"""The one picture language of blockforensics: block maps, chains and layouts.

Every set of block positions has a fixed colour, declared once in
:data:`PALETTE` (and explained in :data:`MEANING`); every picture carries a
legend naming the sets it shows.  Other plotting modules import the palette
from here.  Every function takes an optional Axes and returns the Axes it drew
on; end a notebook cell with ``;`` (or assign the result) so that no
``<Axes …>`` line is printed above the picture.

Block maps are drawn as a **grid of blocks** (rows of up to 128 blocks, one
panel per map, one above the other), so that a handful of blocks stays
visible; by default the grid is **zoomed** to the rows that hold any set block,
and the zoom is stated under the picture.  Maps too large for a grid are drawn
as strips of runs.

Chains are drawn as trees: the crash-consistent trunk on one line, each
application-consistent point (the one holding quiescence writes) as a leaf
below it, drawn hollow and dashed, and named so on the picture.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from blockforensics.blockmap import BlockMap
    from blockforensics.image.chain import Chain
    from blockforensics.image.layout import Layout

#: the colour of each kind of block set, the same in every picture
PALETTE: dict[str, str] = {
    "allocated": "#4c72b0",    # blue: the file system's allocation map (A)
    "changed": "#dd8452",      # orange: written / tracked by CBT (T, W)
    "quiesced": "#c44e52",     # red: quiescence writes into a snapshot (Q)
    "copied": "#55a868",       # green: copied ahead of the snapshot (head start)
    "stale": "#8172b3",        # purple: copied early, then written again
    "preserved": "#ccb974",    # sand: originals kept by a copy-on-write snapshot
    "stored": "#64b5cd",       # light blue: blocks an image stores
    "encrypted": "#937860",    # brown: ciphertext blocks
    "metadata": "#8c8c8c",     # grey: file-system metadata
    "damage": "#222222",       # black: blocks that are wrong
    "other": "#5d6d7e",        # slate: any other set
}
#: the legend text of each kind
MEANING: dict[str, str] = {
    "allocated": "allocated (file system)",
    "changed": "changed / tracked",
    "quiesced": "quiescence writes",
    "copied": "head-start copies",
    "stale": "stale copies (written again)",
    "preserved": "kept by the snapshot (COW)",
    "stored": "stored in an image",
    "encrypted": "encrypted blocks",
    "metadata": "metadata",
    "damage": "wrong blocks",
    "other": "in the set",
}
#: blocks not in the set
EMPTY = "#ebebeb"
#: crash-consistent points of a chain (the trunk)
TRUNK = "#3a3a3a"
#: application-consistent points of a chain (leaves holding quiescence writes)
LEAF = PALETTE["quiesced"]
#: one colour per image of a point's path (full first), for layouts
IMAGE_COLORS = ["#4c72b0", "#55a868", "#dd8452", "#8172b3", "#c44e52", "#937860",
                "#da8bc3", "#64b5cd", "#ccb974", "#8c8c8c"]

#: words in a map's name -> its kind, tried in this order (see :func:`kind_of`)
_NAME_KINDS: list[tuple[tuple[str, ...], str]] = [
    (("wrong", "damage"), "damage"),
    (("stale", "recopied", "again", "twice"), "stale"),
    (("quiesc", "leak", "q1", "q2", "q3"), "quiesced"),
    (("remaining", "still tracked"), "changed"),
    (("copy", "copied", "head start", "head-start"), "copied"),
    (("preserved", "snapshot store"), "preserved"),
    (("encrypt", "cipher"), "encrypted"),
    (("meta",), "metadata"),
    (("allocated", "a1", "a2", "a3"), "allocated"),
    (("changed", "tracked", "written", "remaining", "t (", "t =", "cbt"), "changed"),
    (("full", "image", "stored", "plain", "incremental"), "stored"),
]


def kind_of(name: str) -> str:
    """The kind of set a map's name means: ``"Q1"`` → quiesced, ``"A2"`` → allocated,
    ``"T"`` or ``"written …"`` → changed, ``"copy 1"`` → copied, ``"I2"`` → stored, ...;
    else "other"."""
    low = name.strip().lower()
    head = low.split()[0] if low.split() else ""
    if head in {"t", "w"} or (head[:1] == "w" and head[1:].isdigit()):
        return "changed"
    if head[:1] == "i" and head[1:].isdigit():
        return "stored"
    for words, kind in _NAME_KINDS:
        if any(low == w or low.startswith(w + " ") or (len(w) > 2 and w in low)
               for w in words):
            return kind
    return "other"


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def _legend(ax: Axes, entries: Iterable[tuple[str, str]]) -> None:
    """A legend of coloured squares (label, colour), right of the Axes."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, edgecolor="#999999", label=label)
               for label, colour in dict(entries).items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=8,
              frameon=False)


def _columns(n_blocks: int) -> int:
    """Blocks per grid row: few rows for small volumes, at most 128 per row."""
    return int(max(1, min(n_blocks, 128, max(48, -(-n_blocks // 4)))))


def _zoom_window(maps: Iterable[BlockMap], n_blocks: int, columns: int,
                 zoom: str | tuple[int, int] | None) -> tuple[int, int]:
    """The block range [lo, hi) to draw, in whole grid rows."""
    if zoom is None:
        return 0, n_blocks
    if not isinstance(zoom, str):
        lo, hi = zoom
        return max(0, int(lo)), min(n_blocks, int(hi))
    firsts, lasts = [], []
    for m in maps:
        starts, lengths = m.run_arrays()
        if starts.size:
            firsts.append(int(starts[0]))
            lasts.append(int(starts[-1] + lengths[-1]))
    if not firsts:
        return 0, n_blocks
    lo = min(firsts) // columns * columns
    hi = min(n_blocks, -(-max(lasts) // columns) * columns)
    return lo, hi


def plot_blockmaps(maps: Mapping[str, BlockMap], ax: Axes | None = None, *,
                   kinds: Mapping[str, str] | None = None, title: str | None = None,
                   columns: int | None = None, zoom: str | tuple[int, int] | None = "auto",
                   layout: str = "auto") -> Axes:
    """Several maps of one volume, one panel per map (first on top), each in the colour
    of its kind (``kinds[name]``, else :func:`kind_of` of the name), with a legend.

    ``layout``: "grid" (rows of ``columns`` blocks), "strip" (runs along one line) or
    "auto" (a grid unless it would need more than 40 rows per map).  ``zoom``: "auto"
    (the rows holding any set block; when most rows between them are empty, only the
    rows holding set blocks, each labelled with its first block), None (everything)
    or a block range (lo, hi).  The xlabel states the zoom.
    """
    if not maps:
        raise ValueError("no block maps to plot")
    n_blocks = max(m.n_blocks for m in maps.values())
    kind = {name: (kinds or {}).get(name) or kind_of(name) for name in maps}
    unknown = set(kind.values()) - set(PALETTE)
    if unknown:
        raise ValueError(f"unknown kind(s) {sorted(unknown)}; choose from {', '.join(PALETTE)}")
    columns = columns or _columns(n_blocks)
    lo, hi = _zoom_window(maps.values(), n_blocks, columns, zoom)
    rows = max(1, -(-(hi - lo) // columns))
    occupied = np.zeros(rows * columns, dtype=bool)
    for m in maps.values():
        occupied[: hi - lo] |= m.to_bools()[lo:hi]
    shown = np.arange(rows)
    busy = occupied.reshape(rows, columns).any(axis=1)
    if zoom == "auto" and rows > 8 and busy.sum() <= rows / 2:
        shown = np.flatnonzero(busy)
    if layout == "auto":
        layout = "grid" if shown.size <= 40 else "strip"
    span = f"blocks {lo:,}–{hi - 1:,} of {n_blocks:,}"
    if layout == "grid":
        ax = _grid(maps, kind, ax, lo, hi, columns, shown)
        where = (f"only the {shown.size} of {rows} rows holding set blocks, {span}"
                 if shown.size < rows else
                 f"zoomed to {span}" if (lo, hi) != (0, n_blocks) else f"all {n_blocks:,} blocks")
        where = f"rows of {columns} blocks; {where}"
    elif layout == "strip":
        ax = _strips(maps, kind, ax, lo, hi)
        where = (f"zoomed to {span}" if (lo, hi) != (0, n_blocks) else f"all {n_blocks:,} blocks")
        where += "; runs drawn at least 1/400 of the width"
    else:
        raise ValueError(f"layout must be 'grid', 'strip' or 'auto', not {layout!r}")
    ax.set_xlabel(f"block position ({where})", fontsize=8)
    _legend(ax, [*((MEANING[k], PALETTE[k]) for k in dict.fromkeys(kind.values())),
                 ("not in the set", EMPTY)])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _grid(maps: Mapping[str, BlockMap], kind: Mapping[str, str], ax: Axes | None,
          lo: int, hi: int, columns: int, shown: np.ndarray) -> Axes:
    """One panel per map: the grid rows ``shown`` (indexes of rows of ``columns`` blocks
    from ``lo``), a blank row between panels; each row's first block at the right."""
    from matplotlib.colors import ListedColormap

    names = list(maps)
    rows = max(1, -(-(hi - lo) // columns))
    per = shown.size
    gap = 1 if per > 1 else 0
    kinds = list(PALETTE)
    image = np.full(((per + gap) * len(names) - gap, columns), np.nan)
    for i, name in enumerate(names):
        flags = np.full(rows * columns, np.nan)
        cells = maps[name].to_bools()[lo:hi]
        flags[: cells.size] = np.where(cells, kinds.index(kind[name]) + 1, 0)
        image[i * (per + gap): i * (per + gap) + per] = flags.reshape(rows, columns)[shown]
    width = 10.0
    height = min(14.0, 0.9 + width * image.shape[0] / columns)
    ax = _axes(ax, (width + 2.4, height))
    cmap = ListedColormap([EMPTY, *PALETTE.values()]).with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=0, vmax=len(kinds),
              interpolation="nearest", aspect="equal")
    ax.set_xticks(np.arange(-0.5, columns, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, image.shape[0], 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.4 if columns <= 64 else 0.2)
    ax.tick_params(which="minor", length=0)
    step = max(1, columns // 4)
    ticks = np.arange(0, columns, step)
    if columns - 1 - ticks[-1] >= step // 2:
        ticks = np.r_[ticks, columns - 1]
    ax.set_xticks(ticks, [f"+{t}" for t in ticks], fontsize=7)
    ax.set_yticks([i * (per + gap) + (per - 1) / 2 for i in range(len(names))],
                  [f"{n} ({maps[n].count()})" for n in names], fontsize=8)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    if per <= 8:  # label every row with its first block
        for i in range(len(names)):
            for j, row in enumerate(shown):
                ax.text(columns - 0.2, i * (per + gap) + j, f"{lo + row * columns:,}",
                        fontsize=6.5, color="#555555", va="center")
    else:
        ax.text(-0.6, -0.7, f"row starts: {lo}, {lo + columns}, …", fontsize=7,
                color="#555555", va="bottom")
    return ax


def _strips(maps: Mapping[str, BlockMap], kind: Mapping[str, str], ax: Axes | None,
            lo: int, hi: int) -> Axes:
    names = list(maps)
    ax = _axes(ax, (12.4, 0.9 + 0.45 * len(names)))
    least = max(1.0, (hi - lo) / 400)  # a lone block stays visible: at least 1/400 wide
    for row, name in enumerate(names):
        y = len(names) - 1 - row
        ax.broken_barh([(lo, hi - lo)], (y + 0.1, 0.8), facecolors=EMPTY)
        starts, lengths = maps[name].run_arrays()
        if starts.size:
            ax.broken_barh([(s, max(n, least)) for s, n in zip(starts.tolist(),
                                                               lengths.tolist())],
                           (y + 0.1, 0.8), facecolors=PALETTE[kind[name]])
    ax.set_yticks([len(names) - 1 - r + 0.5 for r in range(len(names))],
                  [f"{n} ({maps[n].count()})" for n in names], fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, len(names))
    return ax


def plot_blockmap(bmap: BlockMap, ax: Axes | None = None, *, layout: str = "strip",
                  title: str | None = None, color: str | None = None,
                  kind: str | None = None, columns: int | None = None,
                  zoom: str | tuple[int, int] | None = None) -> Axes:
    """One map.  ``layout="strip"`` (the default, which others draw over: x = block
    position, y in [0, 1]) in ``color`` or the colour of ``kind``; ``"grid"`` or
    ``"auto"`` as in :func:`plot_blockmaps`."""
    if layout == "strip" and zoom is None:
        ax = _axes(ax, (10, 1.2))
        fill = color or PALETTE[kind or "other"]
        ax.broken_barh([(0, max(1, bmap.n_blocks))], (0, 1), facecolors=EMPTY)
        starts, lengths = bmap.run_arrays()
        if starts.size:
            ax.broken_barh(list(zip(starts.tolist(), lengths.tolist())), (0, 1),
                           facecolors=fill)
        ax.set_xlim(0, max(1, bmap.n_blocks))
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_xlabel("block position")
        _legend(ax, [(MEANING.get(kind or "", f"in the set ({bmap.count()})"), fill),
                     ("not in the set", EMPTY)])
        ax.set_title(title if title is not None else repr(bmap), fontsize=9)
        return ax
    name = title or "set"
    return plot_blockmaps({name: bmap}, ax, kinds={name: kind or kind_of(name)},
                          columns=columns, zoom=zoom, layout=layout,
                          title=repr(bmap) if title is None else None)


def plot_layout(layout: Layout, ax: Axes | None = None, *, title: str | None = None,
                columns: int | None = None) -> Axes:
    """Which image of the path supplies each block of a point: one colour per image
    (full first), light grey where no image holds the block (it reads as zeros)."""
    from matplotlib.colors import ListedColormap

    holder = layout.owners(0, layout.n_blocks).holder  # a picture: the whole point at once
    n = holder.size
    columns = columns or _columns(n)
    rows = max(1, -(-n // columns))
    cells = np.full(rows * columns, np.nan)
    cells[:n] = holder
    colours = [EMPTY, *(IMAGE_COLORS[d % len(IMAGE_COLORS)] for d in range(len(layout.images)))]
    ax = _axes(ax, (12.4, min(14.0, 0.9 + 10 * rows / columns)))
    cmap = ListedColormap(colours).with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(cells.reshape(rows, columns)), cmap=cmap, vmin=0,
              vmax=len(colours) - 1, interpolation="nearest", aspect="equal")
    ax.set_yticks([])
    ax.set_xlabel(f"block position (rows of {columns} blocks; all {n:,} blocks)", fontsize=8)
    counts = np.bincount(holder, minlength=len(colours))
    _legend(ax, [*((f"{img.name} ({counts[d + 1]})", colours[d + 1])
                   for d, img in enumerate(layout.images)),
                 (f"no image: zeros ({counts[0]})", EMPTY)])
    ax.set_title(title or "where each block of the point comes from", fontsize=9)
    return ax


def _lanes(parents: list[int | None], leaves: set[int]) -> dict[int, int]:
    """A lane per point: a child of the same consistency continues its parent's lane; an
    application-consistent child of a crash-consistent point goes one lane below it;
    anything else (a second child, another root) opens a new lane."""
    lane: dict[int, int] = {}
    continued: set[int] = set()
    for point, parent in enumerate(parents):
        same = parent is not None and (point in leaves) == (parent in leaves)
        if parent is not None and same and parent not in continued:
            lane[point] = lane[parent]
            continued.add(parent)
        elif parent is not None and point in leaves and parent not in leaves:
            lane[point] = lane[parent] + 1
        else:
            lane[point] = max(lane.values(), default=-1) + 1
    return lane


def plot_chain(chain: Chain, ax: Axes | None = None, *, leaves: Iterable[int] = (),
               title: str | None = None) -> Axes:
    """The chain as a tree: one node per point in creation order, an arrow to its parent.

    Fulls are squares, incrementals circles; the points in ``leaves`` are
    application-consistent (they hold quiescence writes) and are drawn hollow and
    dashed in the quiescence colour, below the crash-consistent trunk.
    """
    rows = chain.rows()
    parents: list[int | None] = [row["parent"] for row in rows]  # type: ignore[misc]
    leaf = {chain.point(p) for p in leaves}
    lane = _lanes(parents, leaf)
    ax = _axes(ax, (max(6.0, 2.3 * len(rows)) + 2.6, 1.4 + 1.1 * (max(lane.values(),
                                                                       default=0) + 1)))
    for point, parent in enumerate(parents):
        if parent is not None:
            ax.annotate("", xy=(parent, -lane[parent]), xytext=(point, -lane[point]),
                        arrowprops={"arrowstyle": "-|>", "mutation_scale": 14,
                                    "color": LEAF if point in leaf else "grey",
                                    "linestyle": "--" if point in leaf else "-",
                                    "shrinkA": 10, "shrinkB": 10})
    for point, row in enumerate(rows):
        full, is_leaf = row["kind"] == "full", point in leaf
        ax.plot(point, -lane[point], "s" if full else "o", markersize=15, zorder=3,
                markerfacecolor="white" if is_leaf else TRUNK,
                markeredgecolor=LEAF if is_leaf else TRUNK, markeredgewidth=2)
        ax.annotate(f"{point}: {row['kind']}, {row['blocks']} blocks"
                    + (f"\n{row['label']}" if row["label"] else ""),
                    (point, -lane[point]), textcoords="offset points", xytext=(0, -17),
                    ha="center", va="top", fontsize=7.5)
    if leaf:
        for ln in sorted(set(lane.values())):
            on_lane = {p for p in lane if lane[p] == ln}
            if not on_lane & leaf or on_lane <= leaf:
                ax.text(-0.75, -ln, "crash-consistent\ntrunk" if not on_lane & leaf
                        else "application-\nconsistent", ha="right", va="center", fontsize=8,
                        color=LEAF if on_lane & leaf else TRUNK)
        _legend(ax, [*([("crash-consistent (trunk)", TRUNK)] if len(leaf) < len(rows) else []),
                     ("application-consistent\n(holds quiescence writes)", LEAF)])
    else:  # squares and circles say full and incremental
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], marker=m, color=TRUNK, linestyle="", markersize=9,
                                  label=label)
                           for m, label in (("s", "full image"), ("o", "incremental"))],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(-0.8 - (1.0 if leaf else 0), max(1, len(rows)) - 0.2)
    ax.set_ylim(-max(lane.values(), default=0) - 1.0, 0.6)
    ax.axis("off")
    ax.set_title(title or f"{len(rows)} points; arrows point to the parent", fontsize=9)
    return ax


def plot_to_copy(frame: object, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Blocks left to copy after each step between t1 and t2, with and without the head
    start (a frame like ``HeadStartIncremental.to_copy()``: step, with head start, without);
    the last step is the snapshot, where what is left is copied while the snapshot lives."""
    import pandas as pd

    table = pd.DataFrame(frame)
    ax = _axes(ax, (10, 3))
    x = np.arange(len(table))
    for column, kind, label in (("without", "changed", "without head start (plain CBT)"),
                                ("with head start", "copied", "with head start")):
        ax.step(x, table[column], where="mid", color=PALETTE[kind], linewidth=2.2, label=label)
        ax.plot(x, table[column], "o", color=PALETTE[kind], markersize=4)
    last = table.iloc[-1]
    ax.annotate(f"at the snapshot: {last['with head start']} vs {last['without']} blocks left",
                (x[-1], last["with head start"]), textcoords="offset points", xytext=(-10, 18),
                ha="right", fontsize=8, arrowprops={"arrowstyle": "->", "color": "#555555"})
    ax.set_xticks(x, table["step"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("blocks left to copy")
    ax.set_ylim(0, max(1, int(table["without"].max())) * 1.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or "blocks left to copy, step by step from t1 to the snapshot at t2",
                 fontsize=9)
    return ax


def plot_bytes(data: bytes | np.ndarray, ax: Axes | None = None, *, width: int = 64,
               title: str | None = None) -> Axes:
    """Bytes as a grey image, ``width`` bytes a row (0 black, 255 white): text and
    structure show as patterns, ciphertext as uniform noise."""
    values = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) \
        else data.astype(np.uint8, copy=False).ravel()
    rows = max(1, -(-values.size // width))
    cells = np.full(rows * width, np.nan)
    cells[: values.size] = values
    ax = _axes(ax, (5, 0.8 + 5 * rows / width))
    shown = ax.imshow(cells.reshape(rows, width), cmap="gray", vmin=0, vmax=255,
                      interpolation="nearest", aspect="equal")
    ax.figure.colorbar(shown, ax=ax, fraction=0.04, pad=0.02, label="byte value")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{values.size} bytes, {width} a row", fontsize=8)
    ax.set_title(title or "bytes", fontsize=9)
    return ax


def png(draw: Callable[[Axes], object], figsize: tuple[float, float] | None = None) -> bytes:
    """Render ``draw(ax)`` on a new figure (not shown by pyplot) as PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize or (8, 3))
    draw(fig.subplots())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def blockmap_png(bmap: BlockMap) -> bytes:
    """A BlockMap's picture for Jupyter (``BlockMap._repr_png_``)."""
    return png(lambda ax: plot_blockmap(bmap, ax, layout="auto", zoom=None))


def chain_png(chain: Chain) -> bytes:
    """A Chain's picture for Jupyter (``Chain._repr_png_``)."""
    return png(lambda ax: plot_chain(chain, ax))

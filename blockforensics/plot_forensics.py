"""Pictures of forensic results (blockforensics.forensics); each takes and returns an Axes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from blockforensics.plot import plot_blockmap

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from blockforensics.fleet import FleetResult
    from blockforensics.forensics import DiffResult
    from blockforensics.triage import TriageResult

UNOWNED = "#999999"  # changed blocks no changed file owns: file-system metadata


def plot_diff_files(result: DiffResult, ax: Axes | None = None, *, max_files: int = 10,
                    title: str | None = None) -> Axes:
    """The changed blocks of a diff, each coloured by the changed file owning it.

    Grey: changed blocks no changed file owns (FAT/inode tables, bitmaps,
    superblocks).  Blocks a file occupies at point b are used, at point a for
    deleted files; the ``max_files`` files with the most changed blocks get a
    colour (and a legend entry), suspected encryptions are hatched.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 1.6))
    origin = "empty" if result.a is None else result.a
    plot_blockmap(result.changed_map(), ax, color=UNOWNED,
                  title=title or f"blocks changed {origin} → {result.b}, by owning file")
    deleted = set(result.files.loc[result.files["change"] == "deleted", "path"])
    suspected = set(result.suspected()["path"])
    owners = result.owners
    owners = owners[(owners["side"] == "b") | owners["path"].isin(deleted)]
    ranked = owners.groupby("path")["length"].sum().sort_values(ascending=False)
    for i, path in enumerate(ranked.index[:max_files]):
        runs = owners[owners["path"] == path]
        ax.broken_barh(list(zip(runs["start"].tolist(), runs["length"].tolist())), (0, 1),
                       facecolors=f"C{i % 10}", hatch="xx" if path in suspected else None,
                       edgecolor="black", linewidth=0.3,
                       label=path + (" (suspected encryption)" if path in suspected else ""))
    if len(result.runs):  # zoom on the changed region, with a margin, and say so
        first = int(result.runs["start"].iloc[0])
        last = int((result.runs["start"] + result.runs["length"]).iloc[-1])
        margin = max(2, (last - first) // 20)
        lo, hi = max(0, first - margin), min(result.n_blocks, last + margin)
        ax.set_xlim(lo, hi)
        if (lo, hi) != (0, result.n_blocks):
            ax.set_title(f"{ax.get_title()} — zoomed to blocks {lo}–{hi} of "
                         f"{result.n_blocks}", fontsize=9)
    if len(result.runs):
        handles = ax.get_legend_handles_labels()[0]
        handles.append(Patch(color=UNOWNED, label="no changed file owns it (metadata)"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7,
                  frameon=False)
    return ax


def plot_entropy(changes: pd.DataFrame, timeline: pd.DataFrame | None = None,
                 ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Entropy (bits per byte) of each file's changed bytes over the points.

    ``changes``: :func:`blockforensics.forensics.changes`; one line per file
    through the points where it was created or modified (its ``entropy_after``),
    suspected encryptions marked with a red cross.  With ``timeline``
    (:func:`blockforensics.forensics.timeline`), the mean entropy of each point's
    changed blocks is drawn as a dashed black line.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    files = changes[(changes["type"] == "file") & (changes["change"] != "deleted")]
    for path, rows in files.groupby("path", sort=True):
        ax.plot(rows["point"], rows["entropy_after"], marker="o", label=path)
    flagged = files[files["suspected_encryption"]]
    ax.scatter(flagged["point"], flagged["entropy_after"], marker="x", s=120, color="red",
               zorder=3, label="suspected encryption")
    if timeline is not None:
        ax.plot(timeline["point"], timeline["changed_entropy"], "k--",
                label="changed blocks (mean)")
    ax.set_ylim(0, 8.2)
    ax.set_xlabel("point")
    ax.set_ylabel("entropy (bits per byte)")
    ax.set_xticks(sorted(set(changes["point"])))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    ax.set_title(title or "entropy of what each point changed", fontsize=9)
    return ax


VERDICT_COLORS = {"clean": "#2ca02c", "suspicious": "#ff7f0e", "encrypted": "#d62728"}


def plot_triage(result: TriageResult, ax: Axes | None = None, *, title: str | None = None
                ) -> Axes:
    """The triage of a chain: per point, the share of changed blocks with unexplained
    high entropy (bars coloured by verdict, and a square of that colour on the axis, so
    a point with nothing unexplained shows its verdict too), the baseline threshold it
    was held to (black steps), the count of files suspected of encryption (above the
    bars), and the last clean point (dashed line)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.8))
    points = [p.point for p in result.points]
    shares = [p.metrics["unexplained_high_entropy"] for p in result.points]
    colors = [VERDICT_COLORS[p.verdict] for p in result.points]
    ax.bar(points, shares, color=colors)
    ax.scatter(points, [0.0] * len(points), marker="s", s=36, c=colors, zorder=3,
               clip_on=False)
    thresholds = [p.baseline["unexplained_high_entropy"]["threshold"] for p in result.points]
    ax.step(points, thresholds, where="mid", color="black", linewidth=1,
            label="baseline threshold")
    for p, share in zip(result.points, shares):
        if p.metrics["suspected_files"]:
            ax.annotate(f"{p.metrics['suspected_files']} enc.", (p.point, share),
                        ha="center", va="bottom", fontsize=7)
    if result.last_clean_point is not None:
        ax.axvline(result.last_clean_point + 0.5, color="gray", linestyle="--",
                   label=f"after last clean point ({result.last_clean_point})")
    ax.set_xticks(points)
    ax.set_xlabel("point")
    ax.set_ylabel("unexplained high-entropy share")
    ax.set_ylim(0, 1.05)
    handles = ax.get_legend_handles_labels()[0]
    handles += [Patch(color=color, label=verdict) for verdict, color in VERDICT_COLORS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7,
              frameon=False)
    ax.set_title(title or "triage: verdict per point", fontsize=9)
    return ax


#: the colour of each finding a fleet's cells can show (FleetResult.cells): the verdicts'
#: own, and the same green / red for a sound / damaged chain and for a point of a timeline
#: without / with files suspected of encryption
FINDING_COLORS = {**VERDICT_COLORS, "sound": VERDICT_COLORS["clean"],
                  "damaged": VERDICT_COLORS["encrypted"],
                  "no suspected file": VERDICT_COLORS["clean"],
                  "suspected encryption": VERDICT_COLORS["encrypted"], "failed": "#bbbbbb"}


def plot_fleet(result: FleetResult, ax: Axes | None = None, *, title: str | None = None
               ) -> Axes:
    """A fleet at a glance: one row per chain (named by its path below the folder they
    share), one square per point coloured by its finding (triage: its verdict; timeline:
    whether files are suspected of encryption), or one square for the chain (verify:
    sound or damaged); a chain the command could not read is a grey square with its
    error beside it."""
    from matplotlib.patches import Rectangle

    cells = result.cells()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.9 + 0.24 * len(cells)))
    widest = max(len(findings) for _, findings, _ in cells)
    for y, (_, findings, error) in enumerate(cells):
        for x, finding in enumerate(findings):
            ax.add_patch(Rectangle((x - 0.4, y - 0.4), 0.8, 0.8,
                                   facecolor=FINDING_COLORS[finding], edgecolor="white"))
        if error:
            ax.text(0.6, y, error if len(error) <= 70 else error[:69] + "…",
                    va="center", fontsize=7, color="#555555")
    ax.set_ylim(len(cells) - 0.5, -0.5)  # the first chain on top
    box = ax.get_window_extent()  # in display units: squares as wide as they are high
    ax.set_xlim(-0.6, -0.5 + max(widest + 0.1, len(cells) * box.width / max(box.height, 1)))
    ax.set_yticks(range(len(cells)), [name for name, _, _ in cells], fontsize=7)
    if result.command == "verify":
        ax.set_xticks([])
        ax.set_xlabel("chain")
    else:
        ax.set_xticks(range(widest))
        ax.set_xlabel("point")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    shown = dict.fromkeys(f for _, findings, _ in cells for f in findings)
    ax.legend(handles=[Patch(color=FINDING_COLORS[f], label=f) for f in shown],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    counts = ", ".join(f"{n} {name}" for name, n in result.findings().items() if n)
    ax.set_title(title or f"fleet {result.command}: {len(cells)} chains: {counts}", fontsize=9)
    return ax

"""ipywidgets explorers built on :mod:`blockforensics.plot`.

:class:`ChainExplorer` compares any two points of a chain (a point and its parent
by default, or any base: another point, across branches, or an empty volume).  It
opens on the most suspicious change the triage found, with that file selected.  It
shows the changed blocks coloured by owning file (saying so when the picture is
zoomed on the changed region), the changed files most suspicious first, each
file's evidence with before/after bytes aligned at its first changed byte, and
each changed run's first block before and after, changed bytes marked.  A status
line says what it is working on while it works.

The callbacks are plain methods (``compare``, ``select_point``, ``select_file``,
``select_run``) that keep what they rendered in attributes, so the explorer runs
headlessly as well as in a browser.
"""

from __future__ import annotations

import contextlib
import html
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from blockforensics import forensics
from blockforensics.errors import UsageError
from blockforensics.hexview import aligned, aligned_html, first_difference, hexdump
from blockforensics.plot import plot_blockmap
from blockforensics.plot_forensics import plot_diff_files

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from blockforensics.image.chain import Chain
    from blockforensics.triage import TriageResult
    from blockforensics.tsk import Listing

HEXDUMP_BYTES = 512  # bytes of a run's first block shown
PARENT, EMPTY = "parent", "empty"  # base picker values besides point numbers


class ChainExplorer:
    """Compare two points: block map, changed files, evidence and aligned bytes.

    State after the callbacks: ``base`` and ``point`` (the compared points; base None
    for an empty volume), ``diff`` (a :class:`forensics.DiffResult`), ``figure``,
    ``file`` (the selected row of ``diff.files`` as a dict) and ``file_hex`` (its
    before/after bytes, aligned), ``run`` (the selected row of ``diff.runs``),
    ``hexdump`` (text of the run's first block at the point), ``run_hex`` (that block
    before/after, aligned), ``owners`` (paths), ``zoomed`` (the figure's block window,
    or None) and ``status_log`` (every status line shown, busy ones included).

    ``open_suspicious=True`` (default) runs the triage (or takes ``triage``) and opens
    on its most suspicious point with its top file selected.
    """

    def __init__(self, chain: Chain, *, triage: TriageResult | None = None,
                 open_suspicious: bool = True):
        if len(chain) == 0:
            raise UsageError(f"{chain.directory}: the chain has no points to explore")
        self.chain = chain
        self.base: int | None = None
        self.point: int | None = None
        self.diff: forensics.DiffResult | None = None
        self.figure: Figure | None = None
        self.file: dict | None = None
        self.file_hex = ""
        self.run: dict | None = None
        self.hexdump = ""
        self.run_hex = ""
        self.owners: list[str] = []
        self.zoomed: tuple[int, int] | None = None
        self.status_log: list[str] = []
        self.triage = triage
        self._diffs: dict[tuple[int | None, int], forensics.DiffResult] = {}
        self._listings: dict[int | None, Listing] = {}
        self._quiet = False
        table = chain.table()
        points = [(f"{r.point}: {r.kind} {r.label or r.file}", r.point)
                  for r in table.itertuples()]
        self.point_picker = widgets.Dropdown(description="point", options=points, value=None)
        self.base_picker = widgets.Dropdown(
            description="against", value=PARENT,
            options=[("its parent", PARENT), ("an empty volume", EMPTY), *points])
        self.status = widgets.HTML()
        self.map_output = widgets.Output()
        self.files_html = widgets.HTML()
        self.file_picker = widgets.Dropdown(description="changed file", options=[])
        self.file_html = widgets.HTML()
        self.run_picker = widgets.Dropdown(description="changed run", options=[])
        self.run_html = widgets.HTML()
        self.point_picker.observe(self._on_points_picked, names="value")
        self.base_picker.observe(self._on_points_picked, names="value")
        self.file_picker.observe(self._on_file_picked, names="value")
        self.run_picker.observe(self._on_run_picked, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.point_picker, self.base_picker]), self.status,
            self.map_output, self.files_html, self.file_picker, self.file_html,
            self.run_picker, self.run_html])
        if open_suspicious:
            self.open_most_suspicious()

    def _repr_mimebundle_(self, **kwargs: object) -> dict | None:
        return self.widget._repr_mimebundle_(**kwargs)

    # ----------------------------------------------------------------- status
    @contextlib.contextmanager
    def _busy(self, what: str) -> Iterator[None]:
        """Show ``what`` as running (an hourglass) until done, then how long it took."""
        self._say(f"⏳ {what}…")
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self._say(f"✗ {what}: {html.escape(str(exc))}")
            raise
        self._say(f"✓ {what} ({time.perf_counter() - started:.1f} s)")

    def _say(self, text: str) -> None:
        self.status_log.append(text)
        self.status.value = f"<span>{text}</span>"

    # ------------------------------------------------------------ navigation
    def open_most_suspicious(self) -> None:
        """Compare the point the triage found most suspicious (the first encrypted one,
        else the first suspicious one, else the newest) with its parent, and select its
        top file."""
        if self.triage is None:
            from blockforensics.triage import triage

            with self._busy("triaging the chain"):
                self.triage = triage(self.chain)
        ranked = sorted(self.triage.points, key=lambda t: (
            ("clean", "suspicious", "encrypted").index(t.verdict), -t.point), reverse=True)
        best = ranked[0] if ranked[0].verdict != "clean" else self.triage.points[-1]
        self.compare(None if best.parent is None else PARENT, best.point)
        flagged = [f["path"] for f in best.files if f["flagged"]]
        if flagged:
            self.file_picker.value = flagged[0]

    def select_point(self, point: int | str) -> None:
        """Compare ``point`` with its parent (a full with an empty volume)."""
        self.compare(PARENT, point)

    def _on_points_picked(self, change: dict[str, Any]) -> None:
        if not self._quiet and self.point_picker.value is not None:
            self.compare(self.base_picker.value, self.point_picker.value)

    def compare(self, base: int | str | None, point: int | str) -> None:
        """Show what changed from ``base`` to ``point``: ``base`` a point, "parent"
        (the point's parent), or None / "empty" (an empty volume)."""
        b = self.chain.point(point)
        if base == PARENT:
            a = self.chain.parent(b)
        elif base is None or base == EMPTY:
            a = None
        else:
            a = self.chain.point(base)
        origin = "an empty volume" if a is None else f"point {a}"
        with self._busy(f"comparing {origin} with point {b}"):
            if (a, b) not in self._diffs:
                self._diffs[a, b] = forensics.diff(self.chain, a, b, files=True,
                                                       listings=self._listings)
            self.base, self.point, self.diff = a, b, self._diffs[a, b]
            self._quiet = True
            try:
                self.point_picker.value = b
                if base not in (PARENT, EMPTY, None):
                    self.base_picker.value = a
            finally:
                self._quiet = False
            self._draw()
        self._show_files()

    def _draw(self) -> None:
        assert self.diff is not None and self.point is not None
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 2.6))
        plot_blockmap(self.chain.disk(self.point).present(), top,
                      title=f"point {self.point}: blocks holding data (whole volume)")
        plot_diff_files(self.diff, bottom)
        lo, hi = (int(x) for x in bottom.get_xlim())
        self.zoomed = None if (lo, hi) == (0, self.diff.n_blocks) else (lo, hi)
        fig.tight_layout()
        plt.close(fig)
        self.figure = fig
        self.map_output.clear_output(wait=True)
        with self.map_output:
            display(fig)

    def _show_files(self) -> None:
        assert self.diff is not None
        files = self.diff.files
        shown = files[forensics.SHOWN_COLUMNS]
        self.files_html.value = (shown.to_html(index=False, float_format="{:.2f}".format)
                                 if len(files) else "<i>no file changed</i>")
        ranked = files.sort_values(["suspected_encryption", "random_segments", "path"],
                                   ascending=[False, False, True])
        self.file_picker.options = [
            (f"{'⚠ ' if r.suspected_encryption else ''}{r.change} {r.path}", r.path)
            for r in ranked.itertuples()]
        self.file_picker.value = None
        self.file, self.file_hex = None, ""
        self.file_html.value = ""
        self.run_picker.options = [
            (f"{row.start}+{row.length}: {', '.join(row.files) or 'file-system metadata'}", i)
            for i, row in enumerate(self.diff.runs.itertuples())]
        if len(self.diff.runs):
            self.run_picker.value = None
            self.run_picker.value = 0  # observers call select_run(0)
        else:
            self.run, self.hexdump, self.run_hex, self.owners = None, "", "", []
            self.run_html.value = "<i>nothing changed</i>"

    # ------------------------------------------------------------------ files
    def _on_file_picked(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.select_file(change["new"])

    def select_file(self, path: str) -> None:
        """Show a changed file's evidence and its bytes before/after, aligned at the
        first changed byte."""
        from blockforensics.triage import before_after

        if self.diff is None or self.point is None:
            raise UsageError("compare two points first")
        rows = self.diff.files[self.diff.files["path"] == path]
        if rows.empty:
            raise UsageError(f"{path}: not changed between these points")
        row = next(rows.itertuples())
        with self._busy(f"reading {path} at both points"):
            before, after, source = before_after(self.chain, self.base, self.point, row,
                                                 self._listings)
        self.file = rows.iloc[0].to_dict()
        start = first_difference(before, after)
        self.file_hex = aligned(before, after, start) if start is not None else ""
        evidence = "".join(f"<li>{html.escape(e)}</li>" for e in row.evidence)
        where = (f"first changed byte at file offset {start}; before: "
                 f"{html.escape(source or '(none)')}" if start is not None else "no byte changed")
        self.file_picker.value = path
        self.file_html.value = (
            f"<b>{html.escape(row.change)} {html.escape(path)}</b>"
            + (" — <b style='color:#c00'>suspected encryption</b>"
               if row.suspected_encryption else "")
            + f"<ul>{evidence}</ul>{where}"
            + (aligned_html(before, after, start) if start is not None else ""))

    # ------------------------------------------------------------------- runs
    def _on_run_picked(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.select_run(change["new"])

    def select_run(self, index: int) -> None:
        """Show changed run ``index``: its first block before and after (aligned, changed
        bytes marked) and the files owning it."""
        if self.diff is None or self.point is None:
            raise UsageError("compare two points first")
        row = self.diff.runs.iloc[index]
        self.run = row.to_dict()
        start, length = int(row["start"]), int(row["length"])
        disk = self.chain.disk(self.point)
        offset = start * disk.block_size
        after = disk.read(offset, disk.block_size) if start < disk.n_blocks else b""
        before = b""
        if self.base is not None:
            old = self.chain.disk(self.base)
            before = old.read(offset, old.block_size) if start < old.n_blocks else b""
        before = before or bytes(len(after))  # an empty volume (or past its end): zeros
        self.hexdump = hexdump(after[:HEXDUMP_BYTES], offset)
        self.run_hex = aligned(before, after, base=offset)
        self.owners = sorted(set(row["files"]))
        entropy = forensics.block_entropy(disk, np.arange(start, min(start + length,
                                                                      disk.n_blocks)))
        self.run_html.value = (
            f"<b>blocks {start}–{start + length - 1}</b> (bytes {offset}+"
            f"{length * disk.block_size}); owners: "
            f"{html.escape(', '.join(self.owners)) or 'file-system metadata'}; "
            f"entropy {entropy.mean() if entropy.size else 0:.2f} bits/byte; first block, "
            f"before → after:" + aligned_html(before, after, base=offset))

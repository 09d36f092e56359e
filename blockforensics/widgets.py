"""ipywidgets explorers built on :mod:`blockforensics.plot`.

:class:`ChainExplorer` lets an investigator pick a point of a chain, see its
block map and what it changed against its parent (coloured by owning file),
then pick a changed run and see a hexdump of its first block and the files
owning it.  The callbacks are plain methods (``select_point``, ``select_run``)
that keep what they rendered in attributes, so the explorer runs headlessly.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from blockforensics import forensics
from blockforensics.errors import UsageError
from blockforensics.hexview import hexdump
from blockforensics.plot import plot_blockmap
from blockforensics.plot_forensics import plot_diff_files

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from blockforensics.image.chain import Chain

HEXDUMP_BYTES = 512  # bytes of a run's first block shown


class ChainExplorer:
    """Pick a point, see what it changed; pick a changed run, see its bytes and owners.

    State after the callbacks: ``point``, ``diff`` (a :class:`forensics.DiffResult`
    against the parent; a full against an empty volume), ``figure``, ``run`` (the
    selected row of ``diff.runs``), ``hexdump`` (text) and ``owners`` (paths).
    """

    def __init__(self, chain: Chain):
        if len(chain) == 0:
            raise UsageError(f"{chain.directory}: the chain has no points to explore")
        self.chain = chain
        self.point: int | None = None
        self.diff: forensics.DiffResult | None = None
        self.figure: Figure | None = None
        self.run: dict | None = None
        self.hexdump = ""
        self.owners: list[str] = []
        self._diffs: dict[int, forensics.DiffResult] = {}
        table = chain.table()
        self.point_picker = widgets.Dropdown(
            description="point", options=[(f"{r.point}: {r.kind} {r.label or r.file}", r.point)
                                          for r in table.itertuples()], value=None)
        self.run_picker = widgets.Dropdown(description="changed run", options=[])
        self.map_output = widgets.Output()
        self.files_html = widgets.HTML()
        self.run_html = widgets.HTML()
        self.point_picker.observe(lambda change: self.select_point(change["new"]), names="value")
        self.run_picker.observe(self._on_run_picked, names="value")
        self.widget = widgets.VBox([self.point_picker, self.map_output, self.files_html,
                                    self.run_picker, self.run_html])

    def _repr_mimebundle_(self, **kwargs: object) -> dict | None:
        return self.widget._repr_mimebundle_(**kwargs)

    def select_point(self, point: int | str) -> None:
        """Show ``point``: its block map, its diff against its parent, the changed files."""
        p = self.chain.point(point)
        if p not in self._diffs:
            self._diffs[p] = forensics.diff(self.chain, self.chain.parent(p), p, files=True)
        self.point, self.diff = p, self._diffs[p]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 2.6), sharex=True)
        plot_blockmap(self.chain.disk(p).present(), top,
                      title=f"point {p}: blocks holding data")
        plot_diff_files(self.diff, bottom)
        fig.tight_layout()
        plt.close(fig)
        self.figure = fig
        self.map_output.clear_output(wait=True)
        with self.map_output:
            display(fig)
        files = self.diff.files
        self.files_html.value = (files.to_html(index=False, float_format="{:.2f}".format)
                                 if len(files) else "<i>no file changed</i>")
        self.run_picker.options = [
            (f"{row.start}+{row.length}: {', '.join(row.files) or 'file-system metadata'}", i)
            for i, row in enumerate(self.diff.runs.itertuples())]
        if len(self.diff.runs):
            self.run_picker.value = None
            self.run_picker.value = 0  # observers call select_run(0)
        else:
            self.run, self.hexdump, self.owners = None, "", []
            self.run_html.value = "<i>nothing changed</i>"

    def _on_run_picked(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.select_run(change["new"])

    def select_run(self, index: int) -> None:
        """Show changed run ``index`` of the current diff: first bytes and owning files."""
        if self.diff is None or self.point is None:
            raise UsageError("select a point first")
        row = self.diff.runs.iloc[index]
        self.run = row.to_dict()
        start, length = int(row["start"]), int(row["length"])
        disk = self.chain.disk(self.point)
        data = disk.read(start * disk.block_size, HEXDUMP_BYTES)
        self.hexdump = hexdump(data, start * disk.block_size)
        self.owners = sorted(set(row["files"]))
        entropy = forensics.block_entropy(disk, np.arange(start, min(start + length,
                                                                      disk.n_blocks)))
        self.run_html.value = (
            f"<b>blocks {start}–{start + length - 1}</b> (bytes {start * disk.block_size}+"
            f"{length * disk.block_size}); owners: "
            f"{html.escape(', '.join(self.owners)) or 'file-system metadata'}; "
            f"entropy {entropy.mean() if entropy.size else 0:.2f} bits/byte"
            f"<pre>{html.escape(self.hexdump)}</pre>")

"""Progress of long operations, counted in bytes: a tqdm bar (text on a terminal,
a widget in Jupyter), or nothing at all.

A disabled bar is a do-nothing stand-in, so commands that show none (output not
a terminal, notebooks that pass ``progress=False``) do not even import tqdm.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What the operations use of a bar: count bytes done, and close it."""

    def update(self, n: int) -> object: ...

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> object: ...


class _Silent:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "B") -> Progress:
    """A bar for ``total`` bytes labelled ``desc`` (binary units), or a silent stand-in;
    ``unit`` other than ``"B"`` counts whole steps of that name (points, files)."""
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    if unit != "B":
        return tqdm(total=total, desc=desc, unit=f" {unit}", leave=False)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False)

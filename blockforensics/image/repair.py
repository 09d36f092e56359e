"""Repair a chain with damaged images: drop the points that cannot be read, on request.

A damaged image (missing, truncated, altered, foreign, on a parent cycle) makes
its point and every point depending on it unreadable (see
:mod:`blockforensics.image.links`); the others read as usual.  :func:`repair`
says which points it would drop and why, and drops them from the manifest only
with ``apply=True`` — one switch through the chain's store.  The dropped image
files stay in the directory, unlisted, for whoever wants to examine them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from blockforensics.image.chain import Chain


@dataclass
class RepairPlan:
    """The points a repair drops (``(point, file, why)``), the files it keeps, and
    whether the manifest was switched."""

    directory: Path
    drop: list[tuple[int, str, str]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    applied: bool = False

    def __str__(self) -> str:
        if not self.drop:
            return f"{self.directory}: no damaged point; nothing to drop"
        verb = "dropped" if self.applied else "would drop"
        lines = [f"point {p} ({name}): {why}" for p, name, why in self.drop]
        lines.append(f"{verb} {len(self.drop)} of {len(self.drop) + len(self.keep)} points"
                     + ("; their files are left in the directory, unlisted" if self.applied
                        else "; run again with --apply to drop them"))
        return "\n".join(lines)


def repair(directory: str | os.PathLike[str], *, apply: bool = False) -> RepairPlan:
    """The damaged points of the chain in ``directory``, dropped from its manifest when
    ``apply`` (the surviving points keep their data; their numbers close up)."""
    with Chain.open(directory) as chain:
        plan = RepairPlan(chain.directory)
        for point, image in enumerate(chain.images):
            why = chain.damage.get(point)
            if why is None:
                plan.keep.append(image.name)
            else:
                plan.drop.append((point, image.name, why))
        if apply and plan.drop:  # the record kept outside the chain learns of the drop
            ids = [img.header.image_id for img in chain.images if img.name in plan.keep]
            chain.store.switch(plan.keep, expect=chain.manifest, ids=ids)
            plan.applied = True
    return plan

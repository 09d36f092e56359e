"""Repair a chain with damaged images: drop the points that cannot be read, on request;
seal an encrypted chain's manifest anew, with its key.

A damaged image (missing, truncated, altered, foreign, on a parent cycle) makes
its point and every point depending on it unreadable (see
:mod:`blockforensics.image.links`); the others read as usual.  :func:`repair`
says which points it would drop and why, and drops them from the manifest only
with ``apply=True`` — one switch through the chain's store.  The dropped image
files stay in the directory, unlisted, for whoever wants to examine them.

An encrypted chain's manifest carries a keyed seal over its points (see
docs/ENCRYPTION.md); keyed reads refuse a manifest without one (a chain made
before the seal existed) or whose seal names a point no longer listed (the
newest point dropped without the key).  With the key, ``reseal=True`` (or
``apply=True``) checks every kept point against its keyed point digest and
writes a new seal over them, in the same switch as the drop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from blockforensics.crypto import KeySource
from blockforensics.image.chain import Chain


@dataclass
class RepairPlan:
    """The points a repair drops (``(point, file, why)``), the files it keeps, whether
    the manifest was switched and sealed anew, and notes on an encrypted chain's seal."""

    directory: Path
    drop: list[tuple[int, str, str]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    applied: bool = False
    resealed: bool = False
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"point {p} ({name}): {why}" for p, name, why in self.drop]
        if not self.drop:
            lines.append(f"{self.directory}: no damaged point; nothing to drop")
        else:
            verb = "dropped" if self.applied else "would drop"
            lines.append(f"{verb} {len(self.drop)} of {len(self.drop) + len(self.keep)} points"
                         + ("; their files are left in the directory, unlisted" if self.applied
                            else "; run again with --apply to drop them"))
        if self.resealed:
            lines.append(f"sealed the manifest anew over {len(self.keep)} points, each "
                         "checked against its keyed point digest")
        return "\n".join([*lines, *self.notes])


def _seal_notes(chain: Chain, keep: list[int]) -> list[str]:
    """What keyed reads will say of the seal once only ``keep`` is listed (no key needed)."""
    seal = chain.manifest.seal
    if not chain.encrypted or not keep:
        return []
    if seal is None:
        return ["the manifest carries no seal (a chain made before it existed): keyed reads "
                "refuse it; run 'repair --reseal --key-file K' to seal it"]
    points = [str(p).split(":")[0] for p in seal.get("points", [])]
    newest = chain.images[keep[-1]].header.image_id.hex()
    if not points or points[-1] != newest:
        return ["the seal names a newest point that is not listed: keyed reads refuse the "
                "chain; run 'repair --reseal --key-file K' to seal it anew"]
    return []


def repair(directory: str | os.PathLike[str], *, apply: bool = False,
           key: KeySource | None = None, reseal: bool = False) -> RepairPlan:
    """The damaged points of the chain in ``directory``, dropped from its manifest when
    ``apply`` (the surviving points keep their data; their numbers close up).  With the
    key of an encrypted chain, ``reseal`` (or ``apply``) also checks every kept point's
    keyed digest and seals the manifest anew in the same switch; ``reseal`` without the
    key is a CryptoKeyError (exit 2)."""
    with Chain.open(directory, key=key) as chain:
        plan = RepairPlan(chain.directory)
        kept = []
        for point, image in enumerate(chain.images):
            why = chain.damage.get(point)
            if why is None:
                plan.keep.append(image.name)
                kept.append(point)
            else:
                plan.drop.append((point, image.name, why))
        if reseal or (apply and key is not None and chain.encrypted):
            chain.reseal(kept)
            plan.applied = plan.resealed = True
        elif apply and plan.drop:  # the record kept outside the chain learns of the drop
            ids = [chain.images[p].header.image_id for p in kept]
            chain.store.switch(plan.keep, expect=chain.manifest, ids=ids)
            plan.applied = True
        if not plan.resealed:
            plan.notes = _seal_notes(chain, kept)
    return plan

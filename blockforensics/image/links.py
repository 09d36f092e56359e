"""The parent links of a chain's images: a tree, checked once, damage kept local.

Given the listed images in creation order, :func:`link` finds each one's parent
point and which points cannot be read, and why.  An image is *damaged* when it
could not be opened (:class:`~blockforensics.image.imagefile.DamagedImage`), when
it belongs to another chain (volume id, block size or cipher differ from the
chain's), when it repeats another image's id, when its parent is not listed,
or when its parent links run in a cycle.  A point whose path to the root
passes a damaged image is damaged too; every other point stays readable.
The work is linear in the number of images: a cycle is found, never followed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from blockforensics.image.format import Header

NO_PARENT = bytes(16)


class Linkable(Protocol):
    """What linking needs of an image (an ImageFile, or ``list``'s ImageSummary): its
    name and header; a damaged one also says why (``damage``) and whether its header
    was readable (``header_known``)."""

    @property
    def name(self) -> str: ...

    @property
    def header(self) -> Header: ...


@dataclass
class Links:
    """``parents[i]``: the point image ``i`` extends (None: a full, or not known);
    ``damage[i]``: why point ``i`` cannot be read (absent when it can)."""

    parents: list[int | None]
    damage: dict[int, str] = field(default_factory=dict)
    #: the points damaged in themselves (the others in ``damage`` inherit it)
    own: set[int] = field(default_factory=set)
    #: the first image with the chain's identity (its header speaks for the chain)
    reference: int | None = None


def _identity(image: Linkable) -> tuple[bytes, int, int]:
    h = image.header
    return h.volume_id, h.block_size, h.cipher


def link(images: Sequence[Linkable]) -> Links:
    """Parent links and damage of ``images`` (see the module's description)."""
    n = len(images)
    links = Links([None] * n)
    readable = [i for i, img in enumerate(images) if getattr(img, "header_known", True)]

    def damaged(i: int, why: str) -> None:
        links.damage.setdefault(i, why)
        links.own.add(i)

    for i, img in enumerate(images):
        if getattr(img, "damage", None) is not None:
            damaged(i, img.damage)  # type: ignore[attr-defined]
    if readable:  # the chain's identity: that of most images (of the earliest on a tie)
        votes = Counter(_identity(images[i]) for i in readable)
        most = max(votes.values())
        chain_identity = next(_identity(images[i]) for i in readable
                              if votes[_identity(images[i])] == most)
        links.reference = next(i for i in readable if _identity(images[i]) == chain_identity)
        for i in readable:
            if _identity(images[i]) != chain_identity:
                damaged(i, "belongs to another chain (volume id, block size or cipher differs)")
    by_id: dict[bytes, int] = {}
    for i in readable:
        image_id = images[i].header.image_id
        if image_id in by_id:
            damaged(i, f"repeats the image id of {images[by_id[image_id]].name}")
        else:
            by_id[image_id] = i
    for i in readable:
        parent_id = images[i].header.parent_id
        if parent_id == NO_PARENT:
            continue
        parent = by_id.get(parent_id)
        if parent is None or parent == i:
            damaged(i, f"its parent image {parent_id.hex()[:12]} is missing or unreadable")
        else:
            links.parents[i] = parent
    _break_cycles(images, links)
    _inherit(images, links)
    return links


def _break_cycles(images: Sequence[Linkable], links: Links) -> None:
    """Mark every image on a cycle of parent links damaged and cut its link (each image
    is visited once: a walk stops at the first image it has seen)."""
    state = [0] * len(images)  # 0 unseen, 1 on the current walk, 2 done
    for start in range(len(images)):
        walk: list[int] = []
        current: int | None = start
        while current is not None and state[current] == 0:
            state[current] = 1
            walk.append(current)
            current = links.parents[current]
        if current is not None and state[current] == 1:  # came back into this walk
            cycle = walk[walk.index(current):]
            names = " -> ".join(images[i].name for i in [*cycle, current])
            for i in cycle:
                links.damage[i] = f"its parent links form a cycle ({names})"
                links.own.add(i)
                links.parents[i] = None
        for i in walk:
            state[i] = 2


def _inherit(images: Sequence[Linkable], links: Links) -> None:
    """A point whose path to the root passes a damaged image is damaged too (parents may
    follow their children in the list: each point's path is resolved once, memoised)."""
    culprit: dict[int, str | None] = {}  # point -> its nearest damaged ancestor (or itself)
    for start in range(len(images)):
        walk: list[int] = []
        current: int | None = start
        while current is not None and current not in culprit:
            walk.append(current)
            current = links.parents[current]
        found = culprit[current] if current is not None else None
        for i in reversed(walk):  # root-most first
            if i in links.own:
                found = f"point {i} ({images[i].name}): {links.damage[i]}"
            elif found is not None:
                links.damage[i] = f"depends on damaged {found}"
            culprit[i] = found

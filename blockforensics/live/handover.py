"""Which dirty bitmap tracks a live disk since a chain's newest point, recorded in the
chain directory (``live.json``), so that no run trusts a bitmap that did not start at
that point's snapshot.

A head-start run hands the tracking over from bitmap ``B`` to ``NEXT`` at its
snapshot.  The hand-over is committed in this order, each step durable before the
next: (1) the record lists the bitmaps the run is about to create as *pending*;
(2) the run creates them and writes its point; (3) the point is committed to the
chain; (4) the record names ``NEXT`` as tracking since the new point and lists ``B``
and the head start's bitmap as *retired*; (5) those are removed.  A run that stops
anywhere (an error, SIGTERM, SIGKILL, the QEMU connection lost) leaves a record that
says what to do, which the next run does first (:func:`recover`):

- stopped before (3): the point is not in the chain and the record still trusts
  ``B``; the pending bitmaps are merged back into ``B`` (enabled again), so ``B``
  marks every write since the newest point, those made during the failed run too;
- stopped between (3) and (4): the newest point is not the one the record names, so
  no bitmap is trusted: the pending ones are removed and the next point reads its
  whole snapshot, storing what differs from the newest point (a note says so);
- stopped after (4): the retired bitmaps still present are removed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from blockforensics.fileio import atomic_writer, directory_lock
from blockforensics.image.chain import Chain
from blockforensics.live.ops import LiveDisk

RECORD = "live.json"
MAX_RECORD_BYTES = 1 << 16


@dataclass(frozen=True)
class Handover:
    """The tracking of ``disk`` (:meth:`LiveDisk.identity`: node and image file) for a
    chain: ``bitmap`` marks every write since the snapshot of the point whose image id
    is ``since`` (hex); ``pending``: bitmaps a run created and had not handed over;
    ``retired``: bitmaps handed over, to remove."""

    disk: str
    bitmap: str | None = None
    since: str | None = None
    pending: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)

    def trusted(self, chain: Chain, disk: str) -> str | None:
        """The bitmap that holds every write to ``disk`` since ``chain``'s newest point,
        if this record vouches for one."""
        if self.disk != disk or self.bitmap is None or not len(chain):
            return None
        return self.bitmap if newest_id(chain) == self.since else None


def newest_id(chain: Chain) -> str:
    """The image id (hex) of ``chain``'s newest point, the parent of its next one."""
    return chain.images[chain.point(-1)].header.image_id.hex()


def load(directory: str | os.PathLike[str]) -> Handover | None:
    """The chain's record; None where there is none (or it is not readable as one)."""
    try:
        with open(Path(directory) / RECORD, "rb") as fh:
            doc = json.loads(fh.read(MAX_RECORD_BYTES))
        return Handover(str(doc["disk"]), doc["bitmap"], doc["since"],
                        [str(n) for n in doc["pending"]], [str(n) for n in doc["retired"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(directory: str | os.PathLike[str], record: Handover) -> Handover:
    """Write ``record`` durably (temporary file, fsync, rename); returns it."""
    with directory_lock(directory), atomic_writer(Path(directory) / RECORD) as fh:
        fh.write(json.dumps(asdict(record), indent=1).encode())
    return record


def recover(chain: Chain, live: LiveDisk, record: Handover | None) -> tuple[Handover | None,
                                                                         list[str]]:
    """Finish what a stopped run left (see the module docstring): the record to go on
    with and notes on what was done."""
    if record is None or record.disk != live.identity():
        return record, []
    present = live.bitmap_states()
    pending = [n for n in record.pending if n in present]
    retired = [n for n in record.retired if n in present and not present[n]["busy"]]
    trusted = record.trusted(chain, live.identity())
    notes = []
    if pending and trusted is not None and trusted in present:
        live.qmp.transaction(*live.merge_back_actions(trusted, pending))
        notes.append(f"an interrupted backup left bitmaps {', '.join(pending)}: merged back "
                     f"into {trusted}, which marks every write since point {chain.point(-1)}")
    elif pending:
        retired += pending
        notes.append(f"an interrupted backup left bitmaps {', '.join(pending)}; they are "
                     "not known to start at the newest point: removed")
    for name in retired:
        live.remove_bitmap(name)
    if not (record.pending or record.retired):
        return record, notes
    return save(chain.directory, replace(record, pending=[], retired=[])), notes

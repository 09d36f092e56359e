"""What a point's source said of itself, checked by the backup that read it.

An acquisition image (EnCase EWF) stores hashes of the medium it holds.  A backup of
one reads the whole medium in order (what it does not store too), hashes it, and
compares: a wrong stored hash, or a chunk libewf finds damaged (it reads as zeros),
shows as a mismatch.  The outcome is recorded in the chain directory's
``sources.json`` (image file name -> record), so that ``verify`` reports it with the
chain's own problems: a point whose source did not match holds what was read, not
what was acquired.  A consolidation that replaces the image leaves its record under
the old name (the record is of that backup's reading).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockforensics.fileio import atomic_writer, directory_lock

if TYPE_CHECKING:
    from blockforensics.disk import Disk
    from blockforensics.formats.ewf import EwfDisk

#: the records' file in a chain directory
SOURCES = "sources.json"
#: larger than any record file the backups write: anything longer is not one
MAX_SOURCES_BYTES = 1 << 20


class AcquisitionHashMismatch(UserWarning):
    """Warned by ``backup()`` when its source's stored hashes do not match the medium as
    read: the point holds what was read, not what was acquired."""


@dataclass(frozen=True)
class SourceCheck:
    """A source's stored hashes (by libewf's names: MD5, SHA1, SHA256; lower-case hex)
    against the hashes of its whole medium as read."""

    source: str
    stored: dict[str, str]
    read: dict[str, str]

    @property
    def ok(self) -> bool:
        return all(self.read.get(name) == value for name, value in self.stored.items())

    def report(self) -> str:
        """One line: what matched, or which hash did not."""
        if self.ok:
            return ("the hashes stored at acquisition match the whole medium as read: "
                    + ", ".join(f"{name} {value}" for name, value in self.stored.items()))
        wrong = "; ".join(f"{name} stored {value}, read {self.read.get(name)}"
                          for name, value in self.stored.items()
                          if self.read.get(name) != value)
        return (f"ACQUISITION HASH MISMATCH in {self.source}: {wrong}: the image does not hold "
                "what was acquired (a chunk libewf finds damaged reads as zeros; ewfverify "
                "names its sectors)")

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "source_hashes": self.stored,
                "source_hashes_read": self.read, "source_hashes_match": self.ok}

    def record(self, directory: str | os.PathLike[str], image: str) -> None:
        """Record this check as ``image``'s in the chain ``directory`` (atomically)."""
        _rewrite(directory, image, self)


def acquisition(source: Disk) -> EwfDisk | None:
    """``source`` if it is an acquisition image that stores hashes of its medium."""
    from blockforensics.formats.ewf import EwfDisk

    return source if isinstance(source, EwfDisk) and source.hashes else None


def forget(directory: str | os.PathLike[str], image: str) -> None:
    """Drop the record of ``image`` in the chain ``directory``, if there is one: an image
    name can come back after a consolidation removed the newest point, and the new image
    must not carry the old one's check."""
    if image in recorded(directory):
        _rewrite(directory, image, None)


def _rewrite(directory: str | os.PathLike[str], image: str, check: SourceCheck | None
             ) -> None:
    """Set (or, with None, drop) ``image``'s record in ``directory``'s file, atomically."""
    with directory_lock(directory):
        records = recorded(directory)
        records.pop(image, None)
        if check is not None:
            records[image] = check
        with atomic_writer(Path(directory) / SOURCES) as fh:
            fh.write(json.dumps({name: item.to_json() for name, item in records.items()},
                                indent=1).encode())


def recorded(directory: str | os.PathLike[str]) -> dict[str, SourceCheck]:
    """The checks recorded in the chain ``directory`` by image name; those not readable
    as records (a damaged or foreign file) are left out."""
    try:
        with open(Path(directory) / SOURCES, "rb") as fh:
            doc = json.loads(fh.read(MAX_SOURCES_BYTES))
    except (OSError, ValueError):
        return {}
    found: dict[str, SourceCheck] = {}
    for name, item in (doc.items() if isinstance(doc, dict) else ()):
        try:
            check = SourceCheck(str(item["source"]), dict(item["source_hashes"]),
                                dict(item["source_hashes_read"]))
        except (KeyError, TypeError, ValueError):
            continue
        found[str(name)] = check
    return found

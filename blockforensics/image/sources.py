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
from typing import Any

from blockforensics.fileio import atomic_writer, directory_lock

#: the records' file in a chain directory
SOURCES = "sources.json"
#: larger than any record file the backups write: anything longer is not one
MAX_SOURCES_BYTES = 1 << 20


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
        with directory_lock(directory):
            records = recorded(directory)
            records[image] = self
            with atomic_writer(Path(directory) / SOURCES) as fh:
                fh.write(json.dumps({name: check.to_json() for name, check in records.items()},
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

"""Verify a chain: structure, parent links, stored-bytes digests and (with the key) every block.

Without the key, verify checks what anyone holding the files can check: each
image's header, footer and index checksums, the parent links, and the SHA-256
digest of every stored payload.  With the key it also authenticates and
decrypts every block and compares it with its content digest.  Every problem
names the image and, where it is in block data, the block position.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from blockforensics.crypto import KeySource
from blockforensics.errors import BlockforensicsError, FormatError
from blockforensics.image.chain import NO_PARENT, Chain, open_codec, read_manifest
from blockforensics.image.codec import BlockCodec
from blockforensics.image.format import DIGEST_SIZE, FLAG_ENCRYPTED, FLAG_ZERO, digest_rows
from blockforensics.image.imagefile import ImageFile

if TYPE_CHECKING:
    import pandas as pd

_READ_BYTES = 16 << 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong: in which image, at which block position (None: not in block data)."""

    image: str
    position: int | None
    message: str

    def __str__(self) -> str:
        where = f" block {self.position}" if self.position is not None else ""
        return f"{self.image}{where}: {self.message}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`; ``ok`` when no problem was found."""

    images: int = 0
    blocks: int = 0
    authenticated: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def frame(self) -> pd.DataFrame:
        """The problems as a DataFrame: image, position, message."""
        import pandas as pd
        return pd.DataFrame([vars(p) for p in self.problems],
                            columns=["image", "position", "message"])

    def __repr__(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problems"
        how = "authenticated with the key" if self.authenticated else "structure and digests"
        return f"VerifyReport({state}: {self.images} images, {self.blocks} blocks, {how})"


def verify(directory: str | os.PathLike[str], key: KeySource | None = None, *,
           progress: bool = False) -> VerifyReport:
    """Check every image of the chain in ``directory``; never raises for damaged images."""
    directory = Path(directory)
    report = VerifyReport(authenticated=key is not None)
    images: list[ImageFile] = []
    for name in read_manifest(directory):
        try:
            images.append(ImageFile(directory / name))
        except BlockforensicsError as exc:
            report.problems.append(Problem(name, None, str(exc).removeprefix(f"{name}: ")))
    report.images = len(images)
    ids = {img.header.image_id for img in images}
    for img in images:
        if img.header.parent_id != NO_PARENT and img.header.parent_id not in ids:
            report.problems.append(Problem(img.name, None, "parent image missing or damaged"))
    codec = open_codec(images[0].header, key, str(directory)) if key and images else None
    total = sum(int(img.index["length"].sum()) for img in images)
    with tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=not progress,
              leave=False) as bar:
        for img in images:
            report.blocks += img.blocks
            report.problems += _check_blocks(img, codec, bar)
            img.close()
    if codec is not None and codec.encrypted and report.ok:
        with Chain.open(directory, key) as chain:
            for point, img in enumerate(chain.images):
                try:
                    chain.check_point(point)
                except FormatError as exc:
                    report.problems.append(Problem(img.name, None, str(exc).split(": ", 1)[-1]))
    return report


def _check_blocks(image: ImageFile, codec: BlockCodec | None, bar: tqdm) -> list[Problem]:
    """Stored digests (and, given a codec, authenticity and content) of every block."""
    problems = []
    records = image.index[np.argsort(image.index["offset"], kind="stable")]
    stored = digest_rows(records["stored_digest"])
    content = digest_rows(records["content_digest"])
    ends = (records["offset"] + records["length"]).astype(np.int64)
    i = 0
    while i < len(records):
        first = int(records["offset"][i])
        j = int(np.searchsorted(ends, first + _READ_BYTES, side="right"))
        j = max(j, i + 1)
        buf = memoryview(image.read_range(first, int(ends[j - 1]) - first))
        for k in range(i, j):
            rec = records[k]
            start = int(rec["offset"]) - first
            payload = buf[start : start + int(rec["length"])]
            position = int(rec["position"])
            if image.header.encrypted and not rec["flags"] & FLAG_ENCRYPTED:
                problems.append(Problem(image.name, position,
                                        "stored unencrypted in an encrypted chain"))
                continue
            if hashlib.sha256(payload).digest()[:DIGEST_SIZE] != stored[k].tobytes():
                problems.append(Problem(image.name, position,
                                        "stored bytes do not match their digest"))
                continue
            if codec is None or rec["flags"] & FLAG_ZERO:
                continue
            try:
                block = codec.decode(rec, bytes(payload))
            except BlockforensicsError as exc:
                problems.append(Problem(image.name, position, str(exc).split(": ", 1)[-1]))
                continue
            if codec.content_digests(np.frombuffer(block, np.uint8)[None])[0].tobytes() \
                    != content[k].tobytes():
                problems.append(Problem(image.name, position,
                                        "decoded block does not match its content digest"))
        bar.update(int(ends[j - 1]) - first)
        i = j
    return problems

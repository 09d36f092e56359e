"""Verify a chain: structure, parent links, stored-bytes digests and (with the key) every block.

Without the key, verify checks what anyone holding the files can check: each
image's header, footer and index checksums, the parent links, and the SHA-256
digest of every stored payload.  With the key it also authenticates and
decrypts every block and compares it with its content digest.  Every problem
names the image and, where it is in block data, the block position.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from blockforensics.crypto import KeySource
from blockforensics.errors import BlockforensicsError, FormatError
from blockforensics.image.chain import Chain
from blockforensics.image.codec import UNAUTHENTIC, BlockCodec
from blockforensics.image.format import (
    ENCODING_FLAGS,
    FLAG_CRC32,
    FLAG_ENCRYPTED,
    FLAG_ZERO,
    FLAG_ZLIB,
    FLAG_ZSTD,
    digest_rows,
)
from blockforensics.image.imagefile import STORED_MISMATCH, ImageFile, stored_mismatches
from blockforensics.image.layout import contiguous_runs
from blockforensics.image.sources import recorded
from blockforensics.progress import Progress, progress_bar
from blockforensics.spanhash import sha256_128_spans

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

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (``verify --json``, ``fleet verify``)."""
        return {"ok": self.ok, "images": self.images, "blocks": self.blocks,
                "authenticated": self.authenticated,
                "problems": [vars(problem) for problem in self.problems]}

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
    """Check every image of the chain in ``directory``; never raises for damaged images.

    The structure is checked exactly as every read checks it (:meth:`Chain.open`: each
    image's header, footer and index against the file and the format's limits, the
    chain's identity, parent links forming a tree), then every stored block: its
    digest, the decoding of compressed blocks, and with the key every block's tag and
    content digest and every point's keyed digest."""
    report = VerifyReport(authenticated=key is not None)
    with Chain.open(directory, key) as chain:
        problems = chain.problems()
        report.problems += [Problem(name, None, why) for name, why in problems]
        broken = {name for name, _ in problems}
        images = [img for img in chain.images if img.name not in broken]
        report.images = len(images)
        codec = chain.codec if images and (key is not None or not chain.encrypted) else None
        total = sum(img.index.payload_bytes for img in images)
        with progress_bar(total, "verify", progress) as bar:
            for img in images:
                report.blocks += img.blocks
                report.problems += _check_blocks(img, codec, bar)
        if codec is not None and codec.encrypted and report.ok:
            for point, img in enumerate(chain.images):
                try:
                    chain.check_point(point)
                except FormatError as exc:
                    report.problems.append(Problem(img.name, None, str(exc).split(": ", 1)[-1]))
        listed = {img.name for img in chain.images}
        report.problems += [Problem(name, None, f"its source: {check.report()}")
                            for name, check in recorded(directory).items()
                            if name in listed and not check.ok]
    return report


def _check_blocks(image: ImageFile, codec: BlockCodec | None, bar: Progress) -> list[Problem]:
    """Stored digests of every block; given a codec, the decoding of every block that
    needs one (all of them when encrypted, compressed ones when plain) and its content.
    The index is read a piece at a time (memory does not grow with the image)."""
    problems = []
    for _, piece in image.index.chunks():
        problems += _check_piece(image, codec, piece, bar)
    return sorted(problems, key=lambda p: p.position or 0)


def _check_piece(image: ImageFile, codec: BlockCodec | None, records: np.ndarray,
                 bar: Progress) -> list[Problem]:
    """:func:`_check_blocks` of one piece of the index, its payloads read in file order
    up to ``_READ_BYTES`` at a time."""
    problems = []
    records = records[np.argsort(records["offset"], kind="stable")]
    content = digest_rows(records["content_digest"])
    ends = (records["offset"] + records["length"]).astype(np.int64)
    i = 0
    while i < len(records):
        first = int(records["offset"][i])
        j = int(np.searchsorted(ends, first + _READ_BYTES, side="right"))
        j = max(j, i + 1)
        window = records[i:j]
        buf = memoryview(image.read_range(first, int(ends[j - 1]) - first))
        starts = window["offset"].astype(np.int64) - first
        intact = np.ones(len(window), dtype=bool)
        intact[stored_mismatches(buf, starts, window)] = False
        flags = window["flags"]
        unsealed = image.header.encrypted & (flags & FLAG_ENCRYPTED == 0)
        problems += [Problem(image.name, int(window["position"][k]),
                             "stored unencrypted in an encrypted chain" if unsealed[k]
                             else STORED_MISMATCH)
                     for k in np.flatnonzero(~intact | unsealed).tolist()]
        if codec is not None:
            packed = (flags & (FLAG_ZLIB | FLAG_ZSTD)) != 0
            sound = intact & ~unsealed & (flags & FLAG_ZERO == 0)
            problems += _check_content(image.name, codec, window, buf, starts, content[i:j],
                                       sound & (packed | codec.encrypted))
            verbatim = sound & ((flags & ENCODING_FLAGS) == 0)  # the payload is the block
            digests = digest_rows(window["stored_digest"]).copy()  # SHA-256/128 of it …
            checked = np.flatnonzero(verbatim & ((flags & FLAG_CRC32) != 0))  # … or made so
            digests[checked] = sha256_128_spans(buf, starts[checked], window["length"][checked])
            differ = verbatim & (content[i:j] != digests).any(1)
            problems += [Problem(image.name, int(window["position"][k]),
                                 "content digest differs from the stored bytes' digest")
                         for k in np.flatnonzero(differ).tolist()]
        bar.update(int(ends[j - 1]) - first)
        i = j
    return problems


def _check_content(name: str, codec: BlockCodec, records: np.ndarray, buf: memoryview,
                   starts: np.ndarray, content: np.ndarray, wanted: np.ndarray) -> list[Problem]:
    """Decode the ``wanted`` blocks of one read window (batchable ones at once) and
    compare them with their content digests."""
    problems = []
    rows = np.flatnonzero(wanted)
    blocks = np.zeros((len(rows), codec.block_size), dtype=np.uint8)
    decoded = np.zeros(len(rows), dtype=bool)
    batch = codec.batchable(records[rows])
    if batch.any():
        picked = rows[batch]
        length = int(records["length"][picked[0]])
        window = np.frombuffer(buf, dtype=np.uint8)
        payloads = np.empty((len(picked), length), dtype=np.uint8)
        for row, start, count in zip(*contiguous_runs(np.arange(len(picked)), starts[picked],
                                                      length)):
            payloads[row : row + count] = window[start : start + count * length].reshape(-1, length)
        blocks[batch], decoded[batch] = codec.decode_rows(records[picked], payloads)
        problems += [Problem(name, int(records["position"][k]),
                             UNAUTHENTIC) for k in picked[~decoded[batch]]]
    for j in np.flatnonzero(~batch).tolist():
        rec = records[rows[j]]
        payload = buf[int(starts[rows[j]]) : int(starts[rows[j]]) + int(rec["length"])]
        try:
            blocks[j] = np.frombuffer(codec.decode(rec, bytes(payload)), np.uint8)
            decoded[j] = True
        except BlockforensicsError as exc:
            problems.append(Problem(name, int(rec["position"]), str(exc).split(": ", 1)[-1]))
    differ = decoded & (codec.content_digests(blocks) != content[rows]).any(axis=1)
    problems += [Problem(name, int(records["position"][k]),
                         "decoded block does not match its content digest")
                 for k in rows[differ].tolist()]
    return sorted(problems, key=lambda p: p.position or 0)

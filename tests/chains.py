"""Chain histories shared by the consolidation and crypto tests.

``build_chain`` backs up an evolving random volume with any parent structure and
returns the oracle (image id -> the volume's bytes at that point);
``assert_restores`` checks a chain directory against it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from blockforensics.crypto import KeySource
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import MANIFEST, Chain
from blockforensics.volume import Volume

BS = 4096
REWRITTEN = 5  # a block position every incremental rewrites


def build_chain(directory: Path, parents: list[int | None], *, key: KeySource | None = None,
                n_blocks: int = 40, seed: int = 0, created: list[int] | None = None,
                sizes: list[int] | None = None) -> dict[bytes, bytes]:
    """Back up an evolving random volume, point ``i`` against ``parents[i]`` (None: a full).

    Each incremental rewrites a few random blocks and block ``REWRITTEN`` and
    zeroes one block; the volume is ``sizes[i]`` bytes (default: a partial
    last block).  Returns image id -> the volume's bytes at that point.
    """
    rng = np.random.default_rng(seed)
    states: list[np.ndarray] = []
    sources: dict[bytes, bytes] = {}
    with Chain.create(directory, key) as chain:
        for i, parent in enumerate(parents):
            if parent is None:
                data = rng.integers(0, 256, (n_blocks, BS), dtype=np.uint8)
                data[:3] = 0
            else:
                data = states[parent].copy()
                changed = np.r_[rng.choice(n_blocks, 6, replace=False), REWRITTEN]
                data[changed] = rng.integers(0, 256, (len(changed), BS), dtype=np.uint8)
                data[(3 * i) % n_blocks] = 0
            size = sizes[i] if sizes else n_blocks * BS - 100
            data.reshape(-1)[size:] = 0
            states.append(data)
            index = backup(chain, Volume.from_bytes(data.reshape(-1)[:size], BS),
                           parent=parent, full=parent is None,
                           created_ns=None if created is None else created[i])
            sources[chain.images[index].header.image_id] = data.reshape(-1)[:size].tobytes()
    return sources


def assert_restores(directory: Path, sources: dict[bytes, bytes],
                    key: KeySource | None = None) -> None:
    """Every listed point restores to the source of its image id; nothing unlisted is left."""
    with Chain.open(directory, key) as chain:
        for i, img in enumerate(chain.images):
            assert restore(chain, i).tobytes() == sources[img.header.image_id], img.name
        listed = {img.name for img in chain.images}
    assert set(os.listdir(directory)) == listed | {MANIFEST}

"""The on-disk block index (image/index.py) and the writer's spilled records, checked
against numpy on the whole index with tiny fences, chunks and spills."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockforensics.image import imagefile as imagefile_module
from blockforensics.image import index as index_module
from blockforensics.image.codec import PlainCodec
from blockforensics.image.format import KIND_FULL, Header, new_id
from blockforensics.image.imagefile import ImageFile, ImageWriter

BS = 512


def _header(n_blocks: int) -> Header:
    return Header(kind=KIND_FULL, block_size=BS, volume_size=n_blocks * BS, created_ns=1,
                  written_ns=1, image_id=new_id(), parent_id=bytes(16), volume_id=new_id())


def _write(path: Path, n_blocks: int, batches: list[np.ndarray], seed: int) -> np.ndarray:
    """An image of ``batches`` of positions, each block filled with a distinct byte
    pattern; the expected index positions and the value each position holds last."""
    rng = np.random.default_rng(seed)
    last: dict[int, int] = {}
    with ImageWriter(path, _header(n_blocks), PlainCodec(BS)) as writer:
        for positions in batches:
            values = rng.integers(1, 256, len(positions))
            blocks = np.repeat(values.astype(np.uint8)[:, None], BS, axis=1)
            writer.add(positions, blocks)
            last.update(zip(positions.tolist(), values.tolist()))
        writer.commit()
    return np.array(sorted(last.items()), dtype=np.int64).reshape(-1, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 199), max_size=12), max_size=8), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_index_lookups_and_spilled_writes_agree_with_numpy(tmp_path_factory: pytest.TempPathFactory,
                                                           batches: list[list[int]],
                                                           ordered: bool, seed: int) -> None:
    """Writes in order (spilled) or in any order (sorted, last write wins); then every
    lookup of the reopened index equals numpy's answer on the whole index."""
    patch = pytest.MonkeyPatch()
    patch.setattr(index_module, "FENCE", 3)
    patch.setattr(index_module, "CHUNK", 4)
    patch.setattr(imagefile_module, "SPILL_RECORDS", 2)
    try:
        if ordered:  # strictly increasing across batches: the spill path
            flat = sorted(set(p for b in batches for p in b))
            cuts = np.cumsum([len(set(b)) for b in batches])[:-1] if batches else []
            arrays = [np.array(a, dtype=np.int64) for a in np.split(np.array(flat, int), cuts)]
        else:
            arrays = [np.array(b, dtype=np.int64) for b in batches]
        path = tmp_path_factory.mktemp("index") / "image.bfi"
        expected = _write(path, 200, [a for a in arrays if len(a)], seed)
        with ImageFile(path) as image:
            records = image.index.all()
            assert records["position"].tolist() == expected[:, 0].tolist()
            for position, value in expected.tolist():  # the last write of each position
                row = int(np.searchsorted(records["position"], position))
                assert image.read_payload(records[row])[:1] == bytes([value])
            positions = records["position"]
            lo, hi = image.index.rows_between(40, 40)
            assert lo == hi  # an empty range holds no rows
            for start, end in [(0, 200), (5, 6), (7, 150), (199, 200), (1, 3)]:
                lo, hi = image.index.rows_between(start, end)
                assert (lo, hi) == (int(np.searchsorted(positions, start)),
                                    int(np.searchsorted(positions, end)))
            query = np.arange(0, 205, 2)
            held, found = image.index.find(query)
            assert held.tolist() == np.isin(query, positions).tolist()
            assert np.array_equal(found, records[np.isin(positions, query)])
            assert image.index.payload_bytes == int(records["length"].sum())
            assert image.index.blockmap(200, BS).positions().tolist() == positions.tolist()
    finally:
        patch.undo()

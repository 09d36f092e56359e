"""Volume: exact sizes, partial last blocks, hooks, memmap over files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from blockforensics.volume import Volume


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_exact_size_survives_writes(size):
    vol = Volume.zeros(size)
    expected = bytearray(size)
    if size:
        payload = os.urandom(min(size, 5000))
        offset = size - len(payload)
        vol.write(offset, payload)
        expected[offset:] = payload
        vol.write_blocks(0, np.full((1, 4096), 7, np.uint8)) if size >= 4096 else None
        if size >= 4096:
            expected[:4096] = bytes([7]) * 4096
    assert vol.tobytes() == bytes(expected)
    assert len(vol.tobytes()) == size
    last = vol.n_blocks - 1
    if size % 4096:
        block = vol.read_block(last)
        assert not block[size - last * 4096 :].any(), "bytes past the end read as zeros"


def test_full_block_write_into_partial_last_block_keeps_size():
    vol = Volume.zeros(5000)
    vol.write_blocks(1, np.full(4096, 9, np.uint8))
    assert vol.size == 5000 and vol.tobytes()[4096:] == bytes([9]) * 904


def test_hooks_see_positions_before_the_data_changes():
    vol = Volume.from_bytes(bytes(range(256)) * 64, block_size=4096)
    seen = []
    vol.add_hook(lambda v, pos: seen.append((pos.tolist(), v.read_block(int(pos[0]))[0])))
    vol.write(4096 * 2 + 5, b"x")
    assert seen == [([2], 0)]


def test_memmap_volume_reads_and_writes_the_file(tmp_path):
    path = tmp_path / "disk.raw"
    data = os.urandom(3 * 4096 + 100)
    path.write_bytes(data)
    vol = Volume.open(path, writable=True)
    assert vol.size == len(data) and vol.n_blocks == 4
    assert vol.read_blocks(0, 4).reshape(-1)[: len(data)].tobytes() == data
    vol.write(len(data) - 3, b"end")
    vol.flush()
    assert path.read_bytes() == data[:-3] + b"end"


def test_save_is_exact(tmp_path):
    vol = Volume.from_bytes(os.urandom(10_001))
    assert vol.save(tmp_path / "v.raw").read_bytes() == vol.tobytes()

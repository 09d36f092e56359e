"""Stored digests: new images carry each payload's CRC-32 (flag 16), older ones SHA-256/128.

Oracles: zlib's own CRC-32 of each payload and hashlib's SHA-256 (not the code
under test), the source volume at every point, and the block whose byte was
flipped.  Images written before the CRC-32 form are made here from new ones by
putting back what such an image holds (SHA-256/128, no flag 16) and re-sealing
the index; they must read, verify and consolidate as before, mixed with new ones.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np
import pytest
from chains import REWRITTEN, assert_restores, build_chain
from support import flip_stored_bit

from blockforensics.consolidate import consolidate
from blockforensics.errors import IntegrityError
from blockforensics.image.backup import restore
from blockforensics.image.chain import Chain
from blockforensics.image.format import DIGEST_SIZE, FLAG_CRC32, FLAG_ZERO, Footer
from blockforensics.image.imagefile import ImageFile
from blockforensics.image.verify import verify


def _records_and_area(path: Path) -> tuple[np.ndarray, bytes]:
    with ImageFile(path) as image:
        return image.index.all(), path.read_bytes()[: image.footer.index_offset]


def _write(path: Path, records: np.ndarray, area: bytes) -> None:
    raw = records.tobytes()
    path.write_bytes(area + raw + Footer(len(area), len(records),
                                         hashlib.sha256(raw).digest()).pack())


def as_written_before(path: Path) -> None:
    """Turn an image into what the format wrote before flag 16: SHA-256/128 stored digests."""
    records, area = _records_and_area(path)
    for record in records:
        payload = area[int(record["offset"]) : int(record["offset"]) + int(record["length"])]
        record["stored_digest"] = hashlib.sha256(payload).digest()[:DIGEST_SIZE]
        record["flags"] &= ~np.uint32(FLAG_CRC32)
    _write(path, records, area)


@pytest.mark.parametrize("compress", [False, True])
def test_new_images_carry_each_payloads_crc32(tmp_path: Path, compress: bool) -> None:
    from blockforensics.image.backup import backup
    from blockforensics.volume import Volume

    rng = np.random.default_rng(2)
    text = np.frombuffer(b"every block of a volume, checked on every read " * 2000, np.uint8)
    volume = np.concatenate([rng.integers(0, 256, 20 * 4096, dtype=np.uint8),
                             text[: 20 * 4096], np.zeros(4 * 4096, np.uint8)])
    with Chain.create(tmp_path / "c") as chain:
        backup(chain, Volume.from_bytes(volume.tobytes()), compress=compress)
    records, area = _records_and_area(tmp_path / "c" / "0000-full.bfi")
    stored = records[records["length"] > 0]
    assert len(stored) == 40 and np.all(stored["flags"] & FLAG_CRC32)
    assert not np.any(records["flags"][records["length"] == 0] & ~np.uint32(FLAG_ZERO))
    for record in stored:
        payload = area[int(record["offset"]) : int(record["offset"]) + int(record["length"])]
        assert record["stored_digest"].tobytes() == \
            zlib.crc32(payload).to_bytes(4, "little") + bytes(12)
    assert verify(tmp_path / "c").ok


def test_images_written_before_read_verify_and_consolidate_with_new_ones(tmp_path: Path) -> None:
    sources = build_chain(tmp_path, [None, 0, 1], n_blocks=64)
    as_written_before(tmp_path / "0000-full.bfi")  # an old full, newer incrementals
    records, _ = _records_and_area(tmp_path / "0000-full.bfi")
    assert not np.any(records["flags"] & FLAG_CRC32)
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)
    # bit rot in an old image is found at its block, as in a new one
    with ImageFile(tmp_path / "0000-full.bfi") as image:
        kept = int(image.index.all()["position"][3])
    flip_stored_bit(tmp_path / "0000-full.bfi", kept)
    report = verify(tmp_path)
    assert [(p.image, p.position) for p in report.problems] == [("0000-full.bfi", kept)]
    with Chain.open(tmp_path) as chain, pytest.raises(IntegrityError, match=f"block {kept}:"):
        restore(chain, 0)
    flip_stored_bit(tmp_path / "0000-full.bfi", kept)  # mended
    # consolidation mixes both forms in one image, each record as it was
    result = consolidate(tmp_path, 2, rewrite=True)
    merged, _ = _records_and_area(tmp_path / result.image)
    crc = (merged["flags"] & FLAG_CRC32) != 0
    assert crc.any() and not crc.all()
    assert REWRITTEN in merged["position"][crc]
    assert verify(tmp_path).ok
    assert_restores(tmp_path, sources)


def test_a_crc_record_whose_payload_changed_is_caught_by_verify_and_reads(tmp_path: Path) -> None:
    build_chain(tmp_path, [None, 0], n_blocks=40)
    path = tmp_path / "0001-incr.bfi"
    flip_stored_bit(path, REWRITTEN)
    assert [(p.image, p.position) for p in verify(tmp_path).problems] == [(path.name, REWRITTEN)]
    with Chain.open(tmp_path) as chain, \
            pytest.raises(IntegrityError, match=f"block {REWRITTEN}: stored bytes"):
        restore(chain, 1)

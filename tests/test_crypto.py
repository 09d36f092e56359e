"""Encrypted chains: restore, consolidation without the key, secrecy, and tamper detection.

Oracles: the source volume at every point (by image id, see test_consolidate);
the stored bytes of every block before consolidation; the raw bytes of every
file in the chain directory (searched for keys and plaintext).  An attacker is
modelled by :func:`rewrite_image`, which edits an image and recomputes every
unkeyed checksum (stored digests, index digest, footer) as anyone can.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from chains import BS, REWRITTEN, assert_restores, build_chain

import blockforensics.consolidate
from blockforensics.crypto import KEY_SIZE, ChainKeys, KeySource
from blockforensics.errors import CryptoKeyError, FormatError
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.image.format import DIGEST_SIZE, FLAG_CRC32, FLAG_ENCRYPTED, FLAG_ZERO, Footer
from blockforensics.image.imagefile import ImageFile, stored_digests
from blockforensics.image.verify import verify
from blockforensics.volume import Volume

PASSPHRASE = b"correct horse battery staple"
PARENTS = [None, 0, 1, 2, 3, 1]  # a branch off point 1, and point 4 after point 3


@pytest.fixture(params=["passphrase", "raw-key"])
def key_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A key file in its own directory (the test may remove it)."""
    path = tmp_path / "keys" / "chain.key"
    path.parent.mkdir()
    if request.param == "passphrase":
        path.write_bytes(PASSPHRASE + b"\n")
    else:
        KeySource.generate_file(path)
    return path


@pytest.fixture
def raw_chain(tmp_path: Path) -> tuple[Path, KeySource, dict[bytes, bytes]]:
    """A small encrypted chain (raw key): directory, key, sources by image id."""
    key = KeySource(raw_key=os.urandom(KEY_SIZE))
    sources = build_chain(tmp_path / "chain", [None, 0, 1], key=key, n_blocks=16)
    return tmp_path / "chain", key, sources


def stored_blocks(directory: Path) -> dict[bytes, dict[int, tuple]]:
    """For every point (by image id): position -> (record fields, stored bytes), no key used."""
    out = {}
    with Chain.open(directory) as chain:
        for i, img in enumerate(chain.images):
            layout = chain.layout(i)
            blocks = {}
            for depth, rows, records in layout.window(0, layout.n_blocks):
                image = layout.images[depth]
                for position, rec in zip(rows, records):
                    blocks[int(position)] = (int(rec["flags"]), bytes(rec["stored_digest"]),
                                             bytes(rec["content_digest"]),
                                             image.read_payload(rec))
            out[img.header.image_id] = blocks
    return out


def chain_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


def secrets_of(directory: Path, key: KeySource) -> list[bytes]:
    """The key material of a chain: what the key file holds, the master key, the subkeys."""
    with Chain.open(directory) as chain:
        h = chain.images[0].header
    master = key.raw_key if key.raw_key is not None else hashlib.scrypt(
        key.passphrase, salt=h.salt, n=h.kdf_n, r=h.kdf_r, p=h.kdf_p, dklen=KEY_SIZE,
        maxmem=256 * h.kdf_n * h.kdf_r + (1 << 20))
    subkeys = [ChainKeys._subkey(master, h.volume_id, label)
               for label in (b"enc", b"mac", b"check")]
    return [s for s in (key.raw_key, key.passphrase, master, *subkeys) if s]


def assert_nothing_leaks(directory: Path, key: KeySource, sources: dict[bytes, bytes]) -> None:
    """No key material and no aligned 64-byte window of 4 random non-zero blocks per point."""
    blob = chain_bytes(directory)
    for secret in secrets_of(directory, key):
        assert secret not in blob
    rng = np.random.default_rng(0)
    for data in sources.values():
        blocks = np.frombuffer(data[: len(data) // BS * BS], np.uint8).reshape(-1, BS)
        candidates = np.flatnonzero(blocks.any(axis=1))
        for block in blocks[rng.choice(candidates, 4, replace=False)]:
            for window in block.reshape(-1, 64):
                assert window.tobytes() not in blob


_NO_KEY_CONSOLIDATE = """
import hashlib, sys
import blockforensics.crypto as crypto

def refuse(*args, **kwargs):
    raise SystemExit("a key operation was attempted during consolidation")

crypto.AESGCM = crypto.ChainKeys.__init__ = crypto.ChainKeys.decrypt = refuse
crypto.KeySource.from_file = staticmethod(refuse)
hashlib.scrypt = refuse
from blockforensics.consolidate import consolidate
print(consolidate(sys.argv[1], sys.argv[2]))
"""


def test_consolidate_module_never_names_keys() -> None:
    source = inspect.getsource(blockforensics.consolidate).lower()
    for word in ("decrypt", "chainkeys", "keysource", "aesgcm", "open_codec",
                 "encryptedcodec", "blockforensics.crypto", "chain.codec", "key_file"):
        assert word not in source
    assert "key" not in inspect.signature(blockforensics.consolidate.consolidate).parameters


def test_encrypted_chain_consolidates_without_the_key(tmp_path: Path, key_file: Path) -> None:
    key = KeySource.from_file(key_file)
    directory = tmp_path / "chain"
    sources = build_chain(directory, PARENTS, key=key, n_blocks=32)
    assert_restores(directory, sources, key)
    assert_nothing_leaks(directory, key, sources)
    before = stored_blocks(directory)
    shutil.rmtree(key_file.parent)  # nothing can read the key file any more

    env = {"PATH": os.environ["PATH"]}
    argv = [sys.executable, "-c", _NO_KEY_CONSOLIDATE, str(directory), "3"]
    for secret in secrets_of(directory, key):
        assert not any(secret in arg.encode() for arg in [*argv, *env.values()])
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "kept for branches: 0000-full.bfi, 0001-incr.bfi" in run.stdout

    after = stored_blocks(directory)
    assert len(after) == len(PARENTS) - 1 and after.keys() <= before.keys()
    for image_id, blocks in after.items():  # ciphertexts, flags and digests verbatim
        assert blocks == before[image_id]
    assert all(flags == FLAG_ENCRYPTED | FLAG_CRC32 for blocks in after.values()
               for flags, *_ in blocks.values())
    assert_restores(directory, sources, key)
    assert verify(directory, key).ok
    assert_nothing_leaks(directory, key, sources)


def test_equal_plaintext_blocks_share_a_content_digest(tmp_path: Path) -> None:
    """What the documented leak looks like: equal blocks, equal keyed digests, other bytes."""
    data = np.random.default_rng(1).integers(0, 256, (4, BS), dtype=np.uint8)
    data[3] = data[1]
    key = KeySource(raw_key=os.urandom(KEY_SIZE))
    with Chain.create(tmp_path, key) as chain:
        backup(chain, Volume.from_bytes(data.reshape(-1), BS))
        index = chain.images[0].index.all()
        payloads = [chain.images[0].read_payload(rec) for rec in index]
    assert index["content_digest"][1] == index["content_digest"][3]
    assert index["content_digest"][0] != index["content_digest"][1]
    assert payloads[1] != payloads[3] and len({len(p) for p in payloads}) == 1


# ---------------------------------------------------------------------- tampering
def rewrite_image(path: Path, edit: Callable[[np.ndarray, bytearray], np.ndarray]) -> None:
    """Let ``edit(records, payload_area)`` change an image, then recompute every unkeyed check.

    ``payload_area`` is the file up to its index (header included; offsets are
    file offsets); ``edit`` returns the new records, sorted by position.
    """
    image = ImageFile(path)
    data = bytearray(path.read_bytes()[: image.footer.index_offset])
    records = edit(image.index.all(), data)
    image.close()
    area = np.frombuffer(bytes(data), np.uint8)
    digests = stored_digests(area, records["offset"].astype(np.int64), records)
    records["stored_digest"] = digests.view(f"V{DIGEST_SIZE}").ravel()
    raw = records.tobytes()
    path.write_bytes(bytes(data) + raw
                     + Footer(len(data), len(records), hashlib.sha256(raw).digest()).pack())


def image_path(directory: Path, point: int) -> Path:
    with Chain.open(directory) as chain:
        return chain.images[point].path


def row(records: np.ndarray, position: int) -> int:
    return int(np.flatnonzero(records["position"] == position)[0])


def problems(directory: Path, key: KeySource | None) -> list[tuple[str, int | None]]:
    report = verify(directory, key)
    return sorted((p.image, p.position) for p in report.problems)


def test_flipped_ciphertext_bit_fails_authentication(raw_chain: tuple) -> None:
    directory, key, _ = raw_chain
    path = image_path(directory, 1)

    def flip(records: np.ndarray, data: bytearray) -> np.ndarray:
        data[int(records["offset"][row(records, REWRITTEN)]) + 100] ^= 0x01
        return records

    rewrite_image(path, flip)
    assert problems(directory, None) == []  # the unkeyed checks were all rewritten
    report = verify(directory, key)
    assert [(p.image, p.position) for p in report.problems] == [(path.name, REWRITTEN)]
    assert "fails authentication" in report.problems[0].message
    with Chain.open(directory, key) as chain, \
            pytest.raises(FormatError, match=f"block {REWRITTEN}: fails authentication"):
        restore(chain, 1)


def test_swapped_blocks_fail_authentication(raw_chain: tuple) -> None:
    directory, key, _ = raw_chain
    path = image_path(directory, 0)

    def swap(records: np.ndarray, data: bytearray) -> np.ndarray:
        a, b = row(records, 7), row(records, 9)
        for name in ("offset", "length", "content_digest"):
            records[name][[a, b]] = records[name][[b, a]]
        return records

    rewrite_image(path, swap)
    assert problems(directory, None) == []
    assert problems(directory, key) == [(path.name, 7), (path.name, 9)]


def test_block_from_another_chain_with_the_same_key_fails(raw_chain: tuple,
                                                          tmp_path: Path) -> None:
    directory, key, _ = raw_chain
    build_chain(tmp_path / "other", [None], key=key, n_blocks=16, seed=1)
    other = ImageFile(image_path(tmp_path / "other", 0))
    records = other.index.all()
    foreign = records[row(records, 8)]
    payload = other.read_payload(foreign)
    other.close()
    path = image_path(directory, 0)

    def transplant(records: np.ndarray, data: bytearray) -> np.ndarray:
        r = row(records, 8)
        offset = int(records["offset"][r])
        assert records["length"][r] == len(payload)
        data[offset : offset + len(payload)] = payload
        records["content_digest"][r] = foreign["content_digest"]
        return records

    rewrite_image(path, transplant)
    assert problems(directory, None) == []
    assert problems(directory, key) == [(path.name, 8)]


def test_wrong_or_missing_key_is_refused(tmp_path: Path, key_file: Path) -> None:
    key = KeySource.from_file(key_file)
    build_chain(tmp_path / "chain", [None, 0], key=key, n_blocks=8)
    wrong = KeySource(raw_key=os.urandom(KEY_SIZE)) if key.raw_key \
        else KeySource(passphrase=PASSPHRASE + b"!")
    with pytest.raises(CryptoKeyError, match="wrong key"):
        verify(tmp_path / "chain", wrong)
    with Chain.open(tmp_path / "chain", wrong) as chain, \
            pytest.raises(CryptoKeyError, match="wrong key"):
        restore(chain, 1)
    with Chain.open(tmp_path / "chain") as chain, pytest.raises(CryptoKeyError, match="give"):
        restore(chain, 1)


def _rollback(directory: Path, edit_drop: bool) -> tuple[Path, np.void]:
    """Make point 2 show point 1's (older) block ``REWRITTEN``: copy it, or drop point 2's."""
    older = ImageFile(image_path(directory, 1))
    records = older.index.all()
    old_record = records[row(records, REWRITTEN)]
    old_payload = older.read_payload(old_record)
    older.close()

    def roll_back(records: np.ndarray, data: bytearray) -> np.ndarray:
        r = row(records, REWRITTEN)
        if edit_drop:
            return np.delete(records, r)
        records[r] = old_record
        records["offset"][r] = len(data)
        data += old_payload
        return records

    path = image_path(directory, 2)
    rewrite_image(path, roll_back)
    return path, old_record


@pytest.mark.parametrize("drop", [False, True], ids=["older-ciphertext-copied", "record-dropped"])
def test_rollback_to_an_older_version_is_caught_by_the_point_digest(raw_chain: tuple,
                                                                    drop: bool) -> None:
    """A block replaced by an older version of itself at the same position still
    authenticates (AAD binds chain, position and flags, not image or time), but the
    keyed point digest in the header no longer matches: verify and restore refuse."""
    directory, key, _ = raw_chain
    path, _ = _rollback(directory, drop)
    report = verify(directory, key)
    assert [(p.image, p.position) for p in report.problems] == [(path.name, None)]
    assert "rolled back" in report.problems[0].message
    assert verify(directory).ok  # without the key only the unkeyed checksums are checked
    with Chain.open(directory, key) as chain, pytest.raises(FormatError, match="rolled back"):
        restore(chain, 2)


def _downgrade(directory: Path, flags: int) -> Path:
    """Replace block 8 of the full by a record with ``flags`` and no ciphertext."""
    def downgrade(records: np.ndarray, data: bytearray) -> np.ndarray:
        r = row(records, 8)
        records["flags"][r] = flags
        records["offset"][r] = len(data)
        records["length"][r] = 0 if flags & FLAG_ZERO else BS
        if not flags & FLAG_ZERO:
            data += b"attacker's plaintext".ljust(BS, b".")
        return records

    path = image_path(directory, 0)
    rewrite_image(path, downgrade)
    return path


def test_plaintext_record_in_encrypted_chain_fails_verify(raw_chain: tuple) -> None:
    directory, key, _ = raw_chain
    path = _downgrade(directory, 0)
    assert problems(directory, key) == [(path.name, 8)]


def test_plaintext_record_in_encrypted_chain_is_refused_by_restore(raw_chain: tuple) -> None:
    directory, key, _ = raw_chain
    _downgrade(directory, 0)
    with Chain.open(directory, key) as chain, pytest.raises(FormatError, match="block 8"):
        restore(chain, 0)


def test_zero_record_in_encrypted_chain_fails_verify(raw_chain: tuple) -> None:
    directory, key, _ = raw_chain
    path = _downgrade(directory, FLAG_ZERO)
    assert problems(directory, key) == [(path.name, 8)]


def test_a_new_chains_first_backup_stretches_the_passphrase_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt (N = 2^15, r = 8: ~0.15 s) runs once per chain and process, not once for
    the header's key check and again for the writer's keys; the chain still opens with
    the passphrase in a fresh process."""
    calls = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["n"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    source = Volume.from_bytes(os.urandom(BS * 8))
    key = KeySource(passphrase=PASSPHRASE)
    backup(Chain.create(tmp_path / "c", key=key), source)
    assert calls == [1 << 15]
    restored = restore(Chain.open(tmp_path / "c", key=KeySource(passphrase=PASSPHRASE)), 0)
    assert restored.tobytes() == source.tobytes()
    assert len(calls) == 2  # a new KeySource (another process) derives it anew

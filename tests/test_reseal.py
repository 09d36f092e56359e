"""``repair --reseal --key-file K``: an encrypted chain made before the manifest seal
existed (or whose newest point a keyless repair dropped) is sealed anew by its owner,
after every point's keyed point digest is checked (docs/ENCRYPTION.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chains import build_chain
from test_crypto import _rollback

from blockforensics.crypto import KEY_SIZE, KeySource
from blockforensics.image.chain import MANIFEST, Chain


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _strip_seal(directory: Path) -> None:
    """The manifest as a chain written before the seal existed has it: no ``seal``."""
    doc = json.loads((directory / MANIFEST).read_text())
    del doc["seal"]
    (directory / MANIFEST).write_text(json.dumps(doc))


@pytest.fixture
def unsealed(tmp_path: Path) -> tuple[Path, Path, dict[bytes, bytes]]:
    """An encrypted chain (full, two branches, one more) without its seal, its key file
    and the volume's bytes by image id."""
    raw = os.urandom(KEY_SIZE)
    (tmp_path / "key").write_bytes(raw)
    sources = build_chain(tmp_path / "c", [None, 0, 0, 2], key=KeySource(raw_key=raw),
                          n_blocks=12)
    _strip_seal(tmp_path / "c")
    return tmp_path / "c", tmp_path / "key", sources


def _restores(directory: Path, key: Path, sources: dict[bytes, bytes], out: Path) -> None:
    with Chain.open(directory) as chain:
        ids = [img.header.image_id for img in chain.images]
    for point, image_id in enumerate(ids):
        done = cli("restore", directory, out, "--point", point, "--key-file", key, "--force")
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == sources[image_id]


def test_an_unsealed_chain_is_refused_then_resealed_with_the_key(unsealed, tmp_path: Path):
    directory, key, sources = unsealed
    refused = cli("restore", directory, tmp_path / "out", "--key-file", key)
    assert refused.returncode == 2 and "must carry a valid seal" in refused.stderr
    assert cli("verify", directory, "--key-file", key).returncode == 1
    plan = cli("repair", directory)
    assert plan.returncode == 0 and "repair --reseal --key-file K" in plan.stdout

    keyless = cli("repair", directory, "--reseal")
    assert keyless.returncode == 2 and "--key-file" in keyless.stderr
    assert len(keyless.stderr.strip().splitlines()) == 1
    (tmp_path / "wrong").write_bytes(os.urandom(KEY_SIZE))
    wrong = cli("repair", directory, "--reseal", "--key-file", tmp_path / "wrong")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "seal" not in json.loads((directory / MANIFEST).read_text())

    done = cli("repair", directory, "--reseal", "--key-file", key)
    assert done.returncode == 0, done.stderr
    assert "sealed the manifest anew over 4 points" in done.stdout
    assert cli("verify", directory, "--key-file", key).returncode == 0
    _restores(directory, key, sources, tmp_path / "out")
    # the new seal is a real one: dropping the newest point is caught again
    doc = json.loads((directory / MANIFEST).read_text())
    doc["images"].pop()
    (directory / MANIFEST).write_text(json.dumps(doc))
    dropped = cli("restore", directory, tmp_path / "out", "--key-file", key, "--force")
    assert dropped.returncode == 2 and "is not listed" in dropped.stderr


def test_a_point_failing_its_keyed_digest_is_not_sealed(unsealed, tmp_path: Path) -> None:
    directory, key, _ = unsealed
    path, _ = _rollback(directory, False)  # point 2 shows point 1's older block
    done = cli("repair", directory, "--reseal", "--key-file", key)
    assert done.returncode == 2 and path.name in done.stderr and "keyed digest" in done.stderr
    assert "seal" not in json.loads((directory / MANIFEST).read_text())


def test_apply_with_the_key_drops_the_damaged_newest_point_and_reseals(tmp_path: Path):
    raw = os.urandom(KEY_SIZE)
    (tmp_path / "key").write_bytes(raw)
    sources = build_chain(tmp_path / "c", [None, 0, 1], key=KeySource(raw_key=raw), n_blocks=12)
    directory, key = tmp_path / "c", tmp_path / "key"
    with Chain.open(directory) as chain:
        newest = chain.images[-1].path
    with newest.open("r+b") as fh:  # a truncated newest image: damaged
        fh.truncate(newest.stat().st_size // 2)
    dry = cli("repair", directory)
    assert dry.returncode == 0 and "would drop 1 of 3" in dry.stdout
    assert "repair --reseal --key-file K" in dry.stdout  # the seal names the dropped point
    done = cli("repair", directory, "--apply", "--key-file", key)
    assert done.returncode == 0, done.stderr
    assert "dropped 1 of 3" in done.stdout and "sealed the manifest anew over 2" in done.stdout
    assert cli("verify", directory, "--key-file", key).returncode == 0
    _restores(directory, key, sources, tmp_path / "out")


def test_reseal_of_a_plaintext_chain_is_bad_input(tmp_path: Path) -> None:
    build_chain(tmp_path / "c", [None], n_blocks=4)
    done = cli("repair", tmp_path / "c", "--reseal")
    assert done.returncode == 2 and "plaintext chain has no seal" in done.stderr

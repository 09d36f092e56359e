"""Whole points rolled back or swapped are seen (issue 11, item 5; docs/ENCRYPTION.md).

Encrypted chains: the manifest's keyed seal over the ordered point digests makes
``verify --key-file`` fail (exit 1) and every keyed read refuse (exit 2).  Every
chain: ``verify`` compares with the record kept outside the chain
(``$BLOCKFORENSICS_STATE_DIR``) and names what went back in time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chains import build_chain

from blockforensics.crypto import KeySource
from blockforensics.image.chain import MANIFEST

#: a full, two branches off it (1 and 2), and 3 after 2
PARENTS = [None, 0, 0, 2]


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def edit_manifest(directory: Path, change) -> None:
    doc = json.loads((directory / MANIFEST).read_text())
    change(doc)
    (directory / MANIFEST).write_text(json.dumps(doc))


@pytest.fixture
def chain(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, list[str]]:
    key_args: list[str] = []
    key = None
    if request.param == "encrypted":
        KeySource.generate_file(tmp_path / "key")
        key = KeySource.from_file(tmp_path / "key")
        key_args = ["--key-file", str(tmp_path / "key")]
    build_chain(tmp_path / "c", PARENTS, key=key, n_blocks=8)
    assert cli("verify", tmp_path / "c", *key_args).returncode == 0
    return tmp_path / "c", key_args


def _attack(directory: Path, case: str) -> None:
    if case == "newest dropped":
        edit_manifest(directory, lambda d: d["images"].pop())
    elif case == "branches reordered":
        edit_manifest(directory, lambda d: d["images"].insert(1, d["images"].pop(2)))
    elif case == "branch files swapped":
        a, b = directory / "0001-incr.bfi", directory / "0002-incr.bfi"
        os.rename(a, directory / "x")
        os.rename(b, a)
        os.rename(directory / "x", b)
    elif case == "seal removed":
        edit_manifest(directory, lambda d: d.pop("seal", None))
    elif case == "seal altered":
        edit_manifest(directory, lambda d: d["seal"].update(generation=d["seal"]["generation"]
                                                            + 5))
    else:
        raise AssertionError(case)


ENCRYPTED_ATTACKS = ["newest dropped", "branches reordered", "branch files swapped",
                     "seal removed", "seal altered"]


@pytest.mark.parametrize("chain", ["encrypted"], indirect=True)
@pytest.mark.parametrize("case", ENCRYPTED_ATTACKS)
def test_the_seal_catches_rolled_back_or_swapped_points(chain, case: str, tmp_path: Path):
    directory, key_args = chain
    _attack(directory, case)
    done = cli("verify", directory, *key_args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    restored = cli("restore", directory, tmp_path / "out", "--point", "0", *key_args)
    assert restored.returncode == 2 and "seal" in restored.stderr, restored.stderr
    assert len(restored.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    print(f"rollback/swap case {case!r}: verify exit 1, restore refused: "
          f"{restored.stderr.strip()}")


@pytest.mark.parametrize("chain", ["plain", "encrypted"], indirect=True)
@pytest.mark.parametrize("case", ["whole directory rolled back", "newest dropped",
                                  "branch files swapped", "middle point dropped"])
def test_the_record_outside_the_chain_names_what_went_back(chain, case: str, tmp_path: Path):
    directory, key_args = chain
    if case == "whole directory rolled back":
        shutil.copytree(directory, tmp_path / "old")
        source = tmp_path / "vol.raw"
        source.write_bytes(os.urandom(8 * 4096))
        assert cli("backup", source, directory, *key_args).returncode == 0
        shutil.rmtree(directory)
        shutil.copytree(tmp_path / "old", directory)  # a valid, older, sealed state
        words = "went back in time"
    elif case == "middle point dropped":  # what retention may do: the seal cannot tell
        edit_manifest(directory, lambda d: d["images"].remove("0001-incr.bfi"))
        words = "0001-incr.bfi: point recorded"
    else:
        _attack(directory, case)
        words = {"newest dropped": "0003-incr.bfi: point recorded",
                 "branch files swapped": "another order"}[case]
    done = cli("verify", directory, *key_args)
    assert done.returncode == 1 and words in done.stdout, (done.stdout, done.stderr)
    print(f"rollback/swap case {case!r} ({'encrypted' if key_args else 'plain'}): "
          "verify names it from the record")


@pytest.mark.parametrize("chain", ["encrypted"], indirect=True)
def test_legitimate_changes_keep_seal_and_record_valid(chain, tmp_path: Path) -> None:
    directory, key_args = chain
    source = tmp_path / "vol.raw"
    source.write_bytes(os.urandom(8 * 4096))
    for args in (["consolidate", directory, "--point", "3"], ["backup", source, directory],
                 ["consolidate", directory, "--keep", "1"], ["backup", source, directory]):
        done = cli(*args, *key_args) if args[0] == "backup" else cli(*args)
        assert done.returncode == 0, (args, done.stderr)
        verified = cli("verify", directory, *key_args)
        assert verified.returncode == 0, (args, verified.stdout, verified.stderr)
    assert cli("restore", directory, tmp_path / "out", *key_args).returncode == 0
    assert (tmp_path / "out").read_bytes() == source.read_bytes()

"""A command imports only what it needs: start-up is most of a small export's time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockforensics import Chain, Volume, backup
from blockforensics.crypto import KeySource

#: modules that a plaintext restore or export must not load (each costs 10-300 ms)
HEAVY = ("cryptography", "importlib.metadata", "pandas", "matplotlib", "tqdm",
         "concurrent.futures")


def imported(*args: object) -> set[str]:
    """Top-level-and-below module names a ``blockforensics`` command imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "blockforensics.cli",
                           *map(str, args)], capture_output=True, text=True, check=True,
                          env={**os.environ, "BLOCKFORENSICS_FSYNC": "0"})
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:")}


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("startup")
    volume = Volume.from_bytes(os.urandom(64 * 4096))
    backup(Chain.create(root / "plain"), volume)
    (root / "key").write_bytes(os.urandom(32))
    backup(Chain.create(root / "enc", KeySource.from_file(root / "key")), volume)
    return root / "plain", root / "enc", root / "key"


@pytest.mark.parametrize("command", ["export", "restore"])
def test_plaintext_commands_skip_the_heavy_modules(chains, command, tmp_path):
    plain, _, _ = chains
    assert heavy(imported(command, plain, tmp_path / "out")) == set()


def test_the_check_sees_an_encrypted_chain_load_cryptography(chains, tmp_path):
    _, enc, key = chains
    assert "cryptography" in heavy(imported("export", enc, tmp_path / "out.vhd",
                                            "--key-file", key))


@pytest.mark.parametrize("command", ["list", "verify", "triage", "timeline"])
def test_only_the_fleet_command_loads_dask(chains, command):
    plain, _, _ = chains
    modules = imported(command, plain)
    assert not {m for m in modules
                if m.split(".")[0] in ("dask", "distributed") or m == "blockforensics.fleet"}


def test_fleet_loads_dask_only_after_checking_its_input(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "blockforensics.cli",
                           "fleet", "verify", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no chain" in proc.stderr
    assert "distributed" not in {line.rsplit("|", 1)[-1].strip()
                                 for line in proc.stderr.splitlines()}

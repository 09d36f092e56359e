"""A write that fails (here: the file-size limit, as a full disk would) is a one-line
error with exit 2, leaves no temporary file, and never touches the existing output."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from blockforensics import Chain, Volume, backup

MiB = 1 << 20


def limited(limit: int):
    """A preexec_fn capping the size of any file the child writes (EFBIG past it;
    Python ignores SIGXFSZ, so the write fails instead of killing the process)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("full") / "chain"
    backup(Chain.create(directory), Volume.from_bytes(os.urandom(8 * MiB)))
    return directory


@pytest.mark.parametrize("command", [["export"], ["export", "--format", "vhd-fixed"],
                                     ["restore"]], ids=" ".join)
def test_a_failed_write_keeps_the_old_output(chain: Path, command: list[str], tmp_path: Path):
    out = tmp_path / "out.img"
    out.write_bytes(b"the previous output")
    proc = subprocess.run([sys.executable, "-m", "blockforensics.cli", command[0], chain, out,
                           *command[1:], "--force"], capture_output=True, text=True,
                          preexec_fn=limited(2 * MiB), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"blockforensics: error: {out}: File too large\n"
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.img"]


@pytest.mark.parametrize("command", ["backup", "consolidate"])
def test_a_failed_chain_write_names_the_chain_and_changes_nothing(chain: Path, command: str,
                                                                  tmp_path: Path) -> None:
    import shutil

    directory = tmp_path / "chain"
    shutil.copytree(chain, directory)
    source = tmp_path / "vol.raw"
    source.write_bytes(os.urandom(8 * MiB))
    if command == "consolidate":  # a second point to merge
        done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup", source,
                               directory], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    args = ["backup", source, directory] if command == "backup" else ["consolidate", directory]
    proc = subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, preexec_fn=limited(2 * MiB),
                          check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"blockforensics: error: {directory}/")
    assert proc.stderr.endswith(": File too large\n") and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before

"""Outputs never destroy data (issue 11, item 2): restore and export refuse any path inside
a chain directory (symlinks resolved), an input itself, a directory, and an existing file
unless ``--force``, which keeps the replaced file's mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from chains import build_chain


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def chain_dir(tmp_path: Path) -> Path:
    build_chain(tmp_path / "c", [None, 0], n_blocks=8)
    return tmp_path / "c"


def _case(c: Path, case: str) -> tuple[list[object], str]:
    """``(command line, words of the error)`` of a refused output."""
    root = c.parent
    if case == "restore onto an image":
        return ["restore", c, c / "0000-full.bfi", "--point", "1"], "inside the chain"
    if case == "restore onto an image, forced":
        return ["restore", c, c / "0000-full.bfi", "--force"], "inside the chain"
    if case == "export onto an image":
        return ["export", c, c / "0001-incr.bfi"], "inside the chain"
    if case == "restore onto the manifest":
        return ["restore", c, c / "chain.json", "--force"], "inside the chain"
    if case == "restore to a new name in the chain":
        return ["restore", c, c / "0002-incr.bfi"], "inside the chain"
    if case == "through a symlink to an image":
        os.symlink(c / "0000-full.bfi", root / "link.raw")
        return ["restore", c, root / "link.raw", "--force"], "inside the chain"
    if case == "through a symlinked directory":
        os.symlink(c, root / "alias")
        return ["export", c, root / "alias" / "new.vhd"], "inside the chain"
    if case == "into another chain":
        build_chain(root / "other", [None], n_blocks=4)
        return ["restore", c, root / "other" / "x.raw"], "inside the chain"
    if case == "existing file":
        (root / "evidence.raw").write_bytes(b"evidence")
        return ["restore", c, root / "evidence.raw"], "give --force"
    if case == "existing file, export":
        (root / "evidence.vhd").write_bytes(b"evidence")
        return ["export", c, root / "evidence.vhd"], "give --force"
    if case == "a directory":
        (root / "d").mkdir()
        return ["restore", c, root / "d", "--force"], "is a directory"
    if case == "export a file onto itself":
        (root / "vol.raw").write_bytes(os.urandom(64 << 10))
        return ["export", root / "vol.raw", root / "vol.raw", "--force"], "is the input"
    if case == "export a file onto a hard link of itself":
        (root / "vol.raw").write_bytes(os.urandom(64 << 10))
        os.link(root / "vol.raw", root / "same.raw")
        return ["export", root / "vol.raw", root / "same.raw", "--force"], "is the input"
    if case == "a FIFO":
        os.mkfifo(root / "pipe")
        return ["restore", c, root / "pipe", "--force"], "not a regular file"
    raise AssertionError(case)


CASES = ["restore onto an image", "restore onto an image, forced", "export onto an image",
         "restore onto the manifest", "restore to a new name in the chain",
         "through a symlink to an image", "through a symlinked directory", "into another chain",
         "existing file", "existing file, export", "a directory", "export a file onto itself",
         "export a file onto a hard link of itself", "a FIFO"]


@pytest.mark.parametrize("case", CASES)
def test_refused_output_changes_nothing(chain_dir: Path, case: str) -> None:
    args, words = _case(chain_dir, case)
    before = snapshot(chain_dir)
    others = {p.name: p.read_bytes() for p in chain_dir.parent.iterdir() if p.is_file()}
    done = cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert snapshot(chain_dir) == before
    assert {p.name: p.read_bytes() for p in chain_dir.parent.iterdir() if p.is_file()} == others
    assert cli("verify", chain_dir).returncode == 0


@pytest.mark.parametrize("command", ["restore", "export"])
def test_force_replaces_and_keeps_the_mode(chain_dir: Path, command: str) -> None:
    out = chain_dir.parent / "out.img"
    out.write_bytes(b"old")
    os.chmod(out, 0o644)
    done = cli(command, chain_dir, out, "--force")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() != b"old"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    if command == "restore":
        assert cli("restore", chain_dir, chain_dir.parent / "again.raw").returncode == 0
        assert out.read_bytes() == (chain_dir.parent / "again.raw").read_bytes()

"""The command line talks to people: help with examples, --version, one-line errors that
say what is wrong with the path given, and no Python reprs or <NA> in its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockforensics import __version__


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "BLOCKFORENSICS_FSYNC": "0"})


def test_help_describes_and_gives_examples_and_version_prints() -> None:
    done = run("--help")
    assert done.returncode == 0
    assert "Block-level image backups" in done.stdout and "examples:" in done.stdout
    assert "blockforensics backup disk.img chain/" in done.stdout
    assert run("--version").stdout.strip() == f"blockforensics {__version__}"
    assert "print an array in creation order" in run("list", "--help").stdout


@pytest.mark.parametrize(("args", "message"), [
    (["frobnicate"], "blockforensics: error: argument COMMAND: invalid choice: 'frobnicate'"),
    (["restore"], "blockforensics: error: restore: the following arguments are required: "
                  "chain, out; see blockforensics restore --help"),
    ([], "blockforensics: error: the following arguments are required: COMMAND"),
])
def test_usage_errors_are_one_line_without_a_doubled_prefix(args: list[str], message: str
                                                             ) -> None:
    done = run(*args)
    assert done.returncode == 2 and done.stderr.startswith(message)
    assert done.stderr.count("blockforensics:") == 1 and len(done.stderr.splitlines()) == 1


def test_path_messages_say_what_is_wrong_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    for args, message in [(["list", tmp_path / "file"], "is a file, not a chain directory"),
                          (["consolidate", tmp_path / "file"], "is a file, not a chain directory"),
                          (["verify", tmp_path / "missing"], "does not exist"),
                          (["list", tmp_path / "empty"], "not a blockforensics chain")]:
        done = run(*args)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_outputs_carry_no_python_reprs(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(os.urandom(16 * 4096))
    assert run("backup", disk, tmp_path / "c").returncode == 0
    with disk.open("r+b") as fh:
        fh.write(b"x" * 5000)
    assert run("backup", disk, tmp_path / "c").returncode == 0
    outputs = [run("list", tmp_path / "c").stdout, run("verify", tmp_path / "c").stdout,
               run("export", tmp_path / "c", tmp_path / "x.vhd").stdout,
               run("consolidate", tmp_path / "c").stdout]
    text = "\n".join(outputs)
    assert outputs[1].startswith("verify: OK") and outputs[3].startswith("consolidate: ")
    for repr_like in ("<NA>", "Report(", "Result(", "Disk(", "Volume(", ".tmp"):
        assert repr_like not in text, text

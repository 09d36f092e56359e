"""The chain directory's one owner: manifest entries, cleanup, the lock (issue 11, items 1, 4, 6).

Every hostile manifest goes through the command line: exit 2, one line, no
traceback, no hang, and the directory left exactly as it was (nothing "fixed"
by rewriting, nothing deleted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from chains import build_chain

from blockforensics.consolidate import apply_retention
from blockforensics.image.chain import MANIFEST, Chain
from blockforensics.image.store import ChainStore


def cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_exit_2(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def set_images(directory: Path, images: object) -> None:
    doc = json.loads((directory / MANIFEST).read_text())
    doc["images"] = images
    (directory / MANIFEST).write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template") / "c"
    build_chain(directory, [None, 0], n_blocks=8)
    return directory


@pytest.fixture
def chain_dir(template: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(template, tmp_path / "c")
    return tmp_path / "c"


def _hostile(directory: Path, case: str) -> None:
    """Make the manifest of ``directory`` hostile in the way ``case`` names."""
    full, incr = "0000-full.bfi", "0001-incr.bfi"
    manifest = directory / MANIFEST
    if case == "null":
        manifest.write_text("null")
    elif case == "list":
        manifest.write_text("[]")
    elif case == "garbage":
        manifest.write_bytes(b"\x00\xff{not json")
    elif case == "images null":
        set_images(directory, None)
    elif case == "dot slash":
        set_images(directory, [f"./{full}", incr])
    elif case == "absolute":
        set_images(directory, [str(directory / full), incr])
    elif case == "parent dir":
        other = directory.parent / "other"
        other.mkdir()
        os.rename(directory / incr, other / incr)
        set_images(directory, [full, f"../other/{incr}"])
    elif case == "NUL":
        set_images(directory, [full, incr + "\0x"])
    elif case == "empty":
        set_images(directory, [full, ""])
    elif case == "number":
        set_images(directory, [full, 1])
    elif case == "hidden":
        set_images(directory, [full, ".0001-incr.bfi"])
    elif case == "the manifest":
        set_images(directory, [full, MANIFEST])
    elif case == "duplicates":
        set_images(directory, [full] * 100_000)
    elif case == "too many":
        set_images(directory, [f"{i:06d}-incr.bfi" for i in range(40_000)])
    elif case == "fifo":
        (directory / incr).unlink()
        os.mkfifo(directory / incr)
    elif case == "device":
        (directory / incr).unlink()
        os.symlink("/dev/zero", directory / incr)
    elif case == "symlink out":
        os.rename(directory / incr, directory.parent / incr)
        os.symlink(directory.parent / incr, directory / incr)
    elif case == "manifest fifo":
        manifest.unlink()
        os.mkfifo(manifest)
    elif case == "deep json":
        manifest.write_text("[" * 100_000 + "]" * 100_000)
    else:
        raise AssertionError(case)


HOSTILE = ["null", "list", "garbage", "images null", "dot slash", "absolute", "parent dir",
           "NUL", "empty", "number", "hidden", "the manifest", "duplicates", "too many",
           "fifo", "device", "symlink out", "manifest fifo", "deep json"]


#: runs several commands in one interpreter (each under an alarm: a hang fails the case);
#: prints one JSON line: [exit code, stderr] per command
_RUNNER = """
import contextlib, io, json, signal, sys
from blockforensics.cli import main

def hang(*_):
    raise TimeoutError("hang")

signal.signal(signal.SIGALRM, hang)
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    signal.alarm(10)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
    except BaseException as exc:
        code, err = -1, io.StringIO(repr(exc))
    signal.alarm(0)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_manifest_is_one_line_exit_2_and_changes_nothing(chain_dir: Path,
                                                                 case: str) -> None:
    _hostile(chain_dir, case)
    before = {p.name: os.lstat(p) for p in chain_dir.iterdir()}
    contents = snapshot(chain_dir) if case not in ("fifo", "manifest fifo") else {}
    out = chain_dir.parent / "out.raw"
    commands = [["verify", chain_dir], ["list", chain_dir], ["restore", chain_dir, out],
                ["backup", Path(__file__), chain_dir], ["consolidate", chain_dir],
                ["consolidate", chain_dir, "--keep", "1"], ["export", chain_dir, out]]
    done = subprocess.run([sys.executable, "-c", _RUNNER,
                           json.dumps([list(map(str, c)) for c in commands])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command, (code, stderr) in zip(commands, json.loads(done.stdout)):
        assert code == 2 and len(stderr.strip().splitlines()) == 1, (command, code, stderr)
        assert "Traceback" not in stderr
    after = {p.name: os.lstat(p) for p in chain_dir.iterdir()}
    assert after.keys() == before.keys()  # nothing deleted, nothing left behind
    assert all(after[n].st_ino == before[n].st_ino for n in after)  # nothing rewritten
    if contents:
        assert snapshot(chain_dir) == contents
    assert not out.exists()
    print(f"manifest case {case!r}: {len(commands)} commands, each exit 2")


def test_cleanup_never_deletes_a_file_the_manifest_does_not_list(chain_dir: Path) -> None:
    """Item 1: an unlisted image-like file, a copy of a listed image and a stray file all
    survive cleanup and every writing command."""
    strays = {"0007-incr.bfi": b"someone else's", "0000-full-c1.bfi":
              (chain_dir / "0000-full.bfi").read_bytes(), "notes.txt": b"case notes"}
    for name, data in strays.items():
        (chain_dir / name).write_bytes(data)
    source = chain_dir.parent / "vol.raw"
    source.write_bytes(os.urandom(8 * 4096))
    for args in (["backup", source, chain_dir], ["consolidate", chain_dir, "--point", "1"],
                 ["consolidate", chain_dir, "--keep", "1"], ["verify", chain_dir],
                 ["restore", chain_dir, chain_dir.parent / "r.raw"]):
        done = cli(*args)
        assert done.returncode == 0, (args, done.stderr)
    for name, data in strays.items():
        assert (chain_dir / name).read_bytes() == data
    assert (chain_dir.parent / "r.raw").read_bytes() == source.read_bytes()
    with Chain.open(chain_dir) as chain:
        assert "0008-full.bfi" not in [img.name for img in chain.images]  # new names skip strays
        assert chain.cleanup() == []


def test_new_image_names_never_replace_a_file(chain_dir: Path) -> None:
    store = ChainStore(chain_dir)
    (chain_dir / "0002-incr.bfi").write_bytes(b"keep me")
    assert store.new_name("incr") == "0003-incr.bfi"
    assert store.new_name("full", like="0001-incr.bfi") == "0001-full-c1.bfi"


def test_retention_waits_for_the_lock(chain_dir: Path) -> None:
    """Item 4: a writer holding the chain lock (a backup in progress) delays retention."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from blockforensics.fileio import directory_lock\n"
         f"with directory_lock({str(chain_dir)!r}):\n"
         "    print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        thread = threading.Thread(target=apply_retention, args=(chain_dir,),
                                  kwargs={"keep_last": 1})
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # blocked on the lock
        assert len(ChainStore(chain_dir).read().images) == 2
        holder.stdin.write("\n")
        holder.stdin.flush()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        holder.kill()
        holder.wait()
    assert len(ChainStore(chain_dir).read().images) == 1


def test_every_switch_counts_a_generation(chain_dir: Path) -> None:
    store = ChainStore(chain_dir)
    before = store.read().generation
    assert before == 2  # two backups
    assert cli("consolidate", chain_dir).returncode == 0
    assert store.read().generation == before + 1

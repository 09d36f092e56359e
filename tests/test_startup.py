"""A command imports only what it needs: start-up is most of a small export's time."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_structure import (
    BS,
    HOSTILE_INDEXES,
    _index_case,
    _set,
    image_path,
    make_chain,
    rewrite_header,
    rewrite_index,
)

from blockforensics import Chain, Volume, backup, cli
from blockforensics.cli import build_parser
from blockforensics.crypto import KeySource
from blockforensics.errors import ChainError
from blockforensics.formats import ENTRY_POINT_GROUP
from blockforensics.formats.vhd import VhdDisk
from blockforensics.image import summary
from blockforensics.image.format import (
    FLAG_ENCRYPTED,
    FLAG_ZERO,
    FLAG_ZLIB,
    FLAG_ZSTD,
    HEADER_SIZE,
    INDEX_DTYPE,
    Footer,
    Header,
)
from blockforensics.image.imagefile import index_problem
from blockforensics.image.summary import IndexCheck, chain_rows

#: modules that a plaintext restore or export must not load (each costs 10-300 ms)
HEAVY = ("cryptography", "importlib.metadata", "pandas", "matplotlib", "tqdm",
         "concurrent.futures")


#: runs ``python -m blockforensics ARGS`` and writes the names in sys.modules at exit to the
#: file named by $BF_MODULES (``-X importtime`` misses modules loaded by importlib.import_module)
RUN_AND_LIST_MODULES = (
    "import atexit, os, runpy, sys\n"
    "atexit.register(lambda: open(os.environ['BF_MODULES'], 'w').write('\\n'.join(sys.modules)))\n"
    "sys.argv[0] = 'blockforensics'\n"
    "runpy.run_module('blockforensics', run_name='__main__', alter_sys=True)\n"
)


def imported(*args: object, check: bool = True) -> set[str]:
    """Names of every module a ``blockforensics`` command has loaded when it exits."""
    with tempfile.NamedTemporaryFile("r") as listing:
        proc = subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES, *map(str, args)],
                              capture_output=True, text=True,
                              env={**os.environ, "BLOCKFORENSICS_FSYNC": "0",
                                   "BF_MODULES": listing.name})
        assert proc.returncode == 0 or not check, proc.stderr
        return set(listing.read().split())


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
    modules = imported(command, plain, tmp_path / "out")
    assert heavy(modules) == set()
    assert not modules & {"blockforensics.image.summary", "blockforensics.formats.foreign",
                          "blockforensics.formats.nbd"}  # rows: list's and backup's


#: the modules of the built-in readers (formats.vhd also writes VHDs) and what they import
READERS = {"blockforensics.formats.chain", "blockforensics.formats.foreign",
           "blockforensics.formats.nbd", "blockforensics.formats.vhd",
           "blockforensics.nbd.client", "blockforensics.fs"}


@pytest.mark.parametrize("format", ["vhd-dynamic", "vhd-fixed"])
def test_a_raw_file_exports_without_the_chain_reader_or_other_formats(tmp_path, format):
    """Exporting a raw file loads neither the chain's reader, store and crypto (a chain
    is recognised by its manifest alone), nor the other readers (probed by signature
    before their modules are imported), nor the layouts of the other formats, nor numpy
    (60-80 ms of start-up): its data runs, zero blocks, holes and the VHD's tables are
    found without it.  The VHD holds the file's bytes."""
    source = tmp_path / "disk.raw"
    with source.open("wb") as fh:  # data, a hole of 3 MiB, zero blocks, data in a partial sector
        fh.write(os.urandom(1 << 20))
        fh.seek(4 << 20)
        fh.write(bytes(3 << 20) + os.urandom(5000))
    modules = imported("export", source, tmp_path / "out.vhd", "--format", format)
    assert {"blockforensics.formats.vhd", "blockforensics.formats.raw"} <= modules
    assert not {m for m in modules if m.split(".")[0] == "numpy"}
    with VhdDisk(tmp_path / "out.vhd") as vhd:
        assert vhd.info.kind == format.removeprefix("vhd-")
        data = source.read_bytes()
        assert vhd.read(0, vhd.size) == data + bytes(vhd.size - len(data))
    assert heavy(modules) == set()  # no third-party plugin is installed: no metadata scan
    assert not modules & {"blockforensics.image.chain", "blockforensics.image.imagefile",
                          "blockforensics.image.store", "blockforensics.crypto",
                          "blockforensics.formats.vhdx", "blockforensics.formats.vmdk",
                          "blockforensics.formats.qcow2", *READERS - {"blockforensics.formats.vhd"},
                          "json"}  # no manifest read, no JSON printed


def test_a_raw_file_backs_up_without_the_other_readers(tmp_path):
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(1 << 20))
    modules = imported("backup", source, tmp_path / "chain")
    assert "blockforensics.formats.raw" in modules
    assert not modules & (READERS - {"blockforensics.fs"})  # fs: the allocation survey's


@pytest.mark.parametrize(("signature", "reader"), [
    (b"vhdxfile", "blockforensics.formats.foreign"),
    (b"KDMV", "blockforensics.formats.foreign"),
    (b"QFI\xfb", "blockforensics.formats.foreign"),
])
def test_a_signature_imports_only_its_reader(tmp_path, signature, reader):
    """A file bearing a foreign signature (here nothing more, so that opening it fails)
    imports its reader and no other; a VHD and a chain likewise (in the export to raw)."""
    source = tmp_path / "disk.img"
    source.write_bytes(signature + bytes(4096))
    modules = imported("export", source, tmp_path / "out.raw", "--format", "raw", check=False)
    assert reader in modules
    assert not modules & (READERS - {reader, "blockforensics.fs"})


def test_a_vhd_and_a_chain_import_only_their_readers(chains, tmp_path):
    plain, _, _ = chains
    modules = imported("export", plain, tmp_path / "a.vhd", "--format", "vhd-fixed")
    assert "blockforensics.formats.chain" in modules
    assert not modules & (READERS - {"blockforensics.formats.chain", "blockforensics.formats.vhd",
                                     "blockforensics.fs"})
    modules = imported("export", tmp_path / "a.vhd", tmp_path / "b.raw", "--format", "raw")
    assert not modules & (READERS - {"blockforensics.formats.vhd", "blockforensics.fs"})


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
    assert "distributed" not in imported("fleet", "verify", tmp_path, check=False)
    proc = subprocess.run([sys.executable, "-m", "blockforensics", "fleet", "verify",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no chain" in proc.stderr


# ------------------------------------------------------------------ list without numpy
def test_list_imports_neither_numpy_nor_the_readers(chains):
    """``list`` reads headers, footers and indexes with struct, hashlib and lists:
    numpy alone is most of a command's start-up."""
    plain, enc, _ = chains
    for chain in (plain, enc):
        modules = imported("list", chain)
        assert not {m for m in modules if m.split(".")[0] in ("numpy", "pandas", "matplotlib")
                    or m in ("blockforensics.image.imagefile", "blockforensics.image.chain",
                             "blockforensics.crypto", "importlib.metadata",
                             "uuid", "platform")}  # ids are made by writers only


def test_python_m_blockforensics_runs_the_command(chains):
    plain, _, _ = chains
    done = subprocess.run([sys.executable, "-m", "blockforensics", "list", str(plain), "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)[0]["kind"] == "full"


#: runs a command as the ``blockforensics`` script does, with an ``atexit`` handler and an
#: object whose finaliser only the interpreter's teardown would call, each writing a file
EXIT_PROBE = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: open(os.environ['BF_EXITED'] + '.atexit', 'w').close())\n"
    "class Late:\n"
    "    def __del__(self, open=open, path=os.environ['BF_EXITED'] + '.teardown'):\n"
    "        open(path, 'w').close()\n"
    "late = Late()\n"
    "sys.argv[0] = 'blockforensics'\n"
    "from blockforensics.cli import run\n"
    "run()\n"
)


@pytest.mark.parametrize("missing", [False, True], ids=["listed", "error"])
def test_the_script_exits_as_python_would_but_without_the_teardown(chains, tmp_path, missing):
    """``cli.run`` ends the process with the command's exit code, all of its output (through
    a pipe) and the atexit handlers run, as Python's exit would; the teardown of every
    object (40-50 ms after a backup) is left out."""
    plain, _, _ = chains
    target = tmp_path / "nothing" if missing else plain
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE, "list", str(target), "--json"],
                          capture_output=True, text=True,
                          env={**os.environ, "BF_EXITED": str(tmp_path / "exited")})
    assert done.returncode == (2 if missing else 0)
    if missing:
        assert done.stderr.startswith("blockforensics: error:") and done.stdout == ""
    else:
        assert [row["kind"] for row in json.loads(done.stdout)] == ["full"]
    assert (tmp_path / "exited.atexit").exists()
    assert not (tmp_path / "exited.teardown").exists()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chain of a full and two incrementals of 32 blocks (make_chain), to copy."""
    return make_chain(tmp_path_factory.mktemp("three"), 3)[0]


def _copy(three: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(three, tmp_path / "chain"))


def _agree(chain: Path) -> list[dict[str, object]]:
    """``list``'s rows of ``chain``, asserted equal to those of the chain opened for
    reading, with its indexes checked by lists and (past LIST_RECORDS) by the reader."""
    with Chain.open(chain) as opened:
        expected = opened.rows()
    assert chain_rows(chain) == expected
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summary, "LIST_RECORDS", 40)  # the full's 32 records, then the reader
        assert chain_rows(chain) == expected
    return expected


EXTRA_INDEXES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "zero flag with a length": _set("flags", 2, FLAG_ZERO),
    "zero flag with zlib": _set("flags", 2, FLAG_ZERO | FLAG_ZLIB),
    "position past the volume": _set("position", 31, 32),
    "length one short": _set("length", 7, BS - 1),
    "offset past the index": _set("offset", 9, 1 << 40),
    "last payload runs into the index": _set("length", 31, BS + 1),
    "records reversed": lambda index: index[::-1].copy(),
    "no records": lambda index: index[:0].copy(),
    "zstd payload of one byte": _index_case(lambda index: (
        index["flags"].__setitem__(4, FLAG_ZSTD), index["length"].__setitem__(4, 1))),
}


@pytest.mark.parametrize("case", [*HOSTILE_INDEXES, *EXTRA_INDEXES])
def test_list_calls_damaged_exactly_what_a_read_refuses(three, tmp_path, case):
    """Hostile indexes with valid digests: list's numpy-free check says what the reader's
    says, in the same words; the damage reaches the dependent points alike."""
    chain = _copy(three, tmp_path)
    rewrite_index(image_path(chain, 1), {**HOSTILE_INDEXES, **EXTRA_INDEXES}[case])
    rows = _agree(chain)
    assert rows[0]["damaged"] is False
    if case in ("zstd payload of one byte", "no records"):
        assert not rows[1]["damaged"]  # allowed: it reads (as other bytes)
    else:
        assert rows[1]["damaged"] and rows[2]["damaged"], rows


@pytest.mark.parametrize("damage", ["missing", "truncated", "header bit", "index bit",
                                    "footer bit", "directory", "another chain", "cycle"])
def test_list_agrees_with_reading_on_damaged_images(three, tmp_path, damage):
    chain = _copy(three, tmp_path)
    target = image_path(chain, 1)
    raw = bytearray(target.read_bytes())
    if damage == "missing":
        target.unlink()
    elif damage == "directory":
        target.unlink()
        target.mkdir()
    elif damage == "truncated":
        target.write_bytes(raw[:-1000])
    elif damage == "another chain":
        rewrite_header(target, volume_id=b"\x07" * 16)
    elif damage == "cycle":
        with Chain.open(chain) as opened:
            rewrite_header(image_path(chain, 0), kind=1,
                           parent_id=opened.images[2].header.image_id)
    else:
        at = {"header bit": 200, "index bit": len(raw) - Footer.SIZE - 100,
              "footer bit": len(raw) - 20}[damage]
        raw[at] ^= 0x04
        target.write_bytes(raw)
    if damage == "directory":  # the manifest names a directory: nothing opens
        with pytest.raises(ChainError):
            chain_rows(chain)
        return
    rows = _agree(chain)
    assert rows[1]["damaged"] and rows[2]["damaged"]


def test_list_agrees_on_an_encrypted_and_compressed_chain(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    volume = Volume.from_bytes(os.urandom(16 * 4096) + bytes(16 * 4096) + b"a" * 8 * 4096)
    chain = Chain.create(tmp_path / "c", KeySource.from_file(key))
    backup(chain, volume, compress=True)
    volume.write(0, b"changed")
    backup(chain, volume, compress=True)
    chain.close()
    rows = _agree(tmp_path / "c")
    assert [r["damaged"] for r in rows] == [False, False] and rows[0]["encrypted"]


RECORD = st.tuples(
    st.integers(0, 40),  # position (the volume has 32 blocks)
    st.sampled_from([0, 100, HEADER_SIZE, 20_000, 1 << 20, (1 << 64) - 1]),  # offset
    st.sampled_from([0, 1, BS - 1, BS, BS + 28, BS + 29, (1 << 32) - 1]),  # length
    st.sampled_from([0, FLAG_ZERO, FLAG_ZLIB, FLAG_ZSTD, FLAG_ENCRYPTED,
                     FLAG_ENCRYPTED | FLAG_ZSTD, FLAG_ZERO | FLAG_ZSTD, 1 << 9]),  # flags
)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(RECORD, max_size=12), encrypted=st.booleans(),
       chunk=st.integers(1, 5))
def test_the_numpy_free_index_check_says_what_index_problem_says(records, encrypted, chunk):
    """Any records, read in any chunks: the same verdict, in the same words."""
    header = Header(kind=0, block_size=BS, volume_size=32 * BS, created_ns=0, written_ns=0,
                    image_id=b"\x01" * 16, parent_id=bytes(16), volume_id=b"\x02" * 16,
                    cipher=1 if encrypted else 0)
    index = np.zeros(len(records), dtype=INDEX_DTYPE)
    for i, (position, offset, length, flags) in enumerate(records):
        index[i]["position"], index[i]["offset"] = position, offset
        index[i]["length"], index[i]["flags"] = length, flags
    check = IndexCheck()
    raw = index.tobytes()
    step = chunk * INDEX_DTYPE.itemsize
    for at in range(0, len(raw), step):
        check.add(raw[at : at + step])
    payload_end = 1 << 20
    assert check.problem(header, payload_end) == index_problem(index, header, payload_end)


def test_the_metadata_scan_runs_when_a_package_declares_another_plugin(tmp_path):
    """Plugins named like a built-in are ignored, so they alone do not call for the scan;
    any other name does (and the raw file is still offered to that plugin first)."""
    site = tmp_path / "site"
    info = site / "bf_other-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bf-other\nVersion: 1.0\n")
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(1 << 16))
    env = {"PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    for section, scanned in (("raw = nowhere:Nothing\n", False),
                             ("# a comment\nother = nowhere:Nothing\n", True)):
        (info / "entry_points.txt").write_text(f"[console_scripts]\nx = y:z\n"
                                               f"[{ENTRY_POINT_GROUP}]\n{section}")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            modules = imported("export", source, tmp_path / f"{scanned}.vhd")
        assert ("importlib.metadata" in modules) is scanned


# ------------------------------------------------------------------ the parser
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(action.choices for action in parser._actions
                if isinstance(action, argparse._SubParsersAction))


def test_a_command_builds_its_own_parser_alone_with_the_same_help():
    """Parsing a command builds its subparser only (building all costs milliseconds of
    every start); its help is the one the full parser (``--help``) has."""
    full = _subparsers(build_parser())
    assert list(full) == list(cli._COMMANDS) and len(full) > 10
    for name in cli._COMMANDS:
        alone = _subparsers(build_parser(name))
        assert list(alone) == [name] and alone[name].format_help() == full[name].format_help()


def test_main_builds_the_parser_of_the_command_it_runs(chains, monkeypatch, capsys):
    plain, _, _ = chains
    built: list[str] = []
    for name, add in cli._COMMANDS.items():
        monkeypatch.setitem(cli._COMMANDS, name,
                            lambda sub, name=name, add=add: (built.append(name), add(sub))[1])
    assert cli.main(["list", str(plain)]) == 0 and built == ["list"]
    assert cli.main(["nosuch"]) == 2 and "invalid choice" in capsys.readouterr().err
    assert built == ["list", *cli._COMMANDS]  # an unknown command: every name, to list them

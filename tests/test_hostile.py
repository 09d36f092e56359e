"""Hostile input costs no more than a clear error (issue 11, item 6).

Key files, scrypt parameters and reader plugins through the command line, then
hypothesis fuzzing of the manifest and of image headers and indexes (checksums
recomputed, so the mutations reach the checks behind them): every run ends in
exit 0/1 (valid) or 2 with one line — never a traceback, never a hang.  Case
counts are printed (run with ``-s``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from chains import build_chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import require_module, require_tools

from blockforensics.cli import main
from blockforensics.crypto import MAX_KEY_FILE, KeySource
from blockforensics.errors import UsageError
from blockforensics.formats import ENTRY_POINT_GROUP
from blockforensics.image.chain import MANIFEST
from blockforensics.image.format import HEADER_SIZE, INDEX_DTYPE, Footer, Header

PASSPHRASE = b"correct horse battery staple"


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def assert_exit_2(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if "warning" not in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


# ----------------------------------------------------------------------- keys
@pytest.fixture(scope="module")
def raw_key_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    root = tmp_path_factory.mktemp("raw")
    key = root / "key"
    KeySource.generate_file(key)
    sources = build_chain(root / "c", [None, 0], key=KeySource.from_file(key), n_blocks=6)
    return root / "c", key, list(sources.values())[-1]


@pytest.fixture(scope="module")
def passphrase_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pass")
    key = root / "key"
    key.write_bytes(PASSPHRASE + b"\n")
    build_chain(root / "c", [None], key=KeySource.from_file(key), n_blocks=4)
    return root / "c", key


def test_a_passphrase_on_a_raw_key_chain_is_a_clear_error(raw_key_chain, tmp_path) -> None:
    chain, _, _ = raw_key_chain
    (tmp_path / "pass").write_bytes(PASSPHRASE + b"\n")
    assert_exit_2(cli("verify", chain, "--key-file", tmp_path / "pass"),
                  "raw 32-byte key", "28-byte passphrase")


def test_a_raw_key_plus_newline_opens_a_raw_key_chain(raw_key_chain, tmp_path) -> None:
    chain, key, newest = raw_key_chain
    (tmp_path / "key.txt").write_bytes(key.read_bytes() + b"\n")
    done = cli("restore", chain, tmp_path / "out", "--key-file", tmp_path / "key.txt")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == newest


@pytest.mark.parametrize("case", ["/dev/zero", "huge", "empty", "directory", "missing"])
def test_unusable_key_files_are_refused_quickly(raw_key_chain, tmp_path, case) -> None:
    chain, _, _ = raw_key_chain
    path = {"/dev/zero": Path("/dev/zero"), "huge": tmp_path / "huge",
            "empty": tmp_path / "empty", "directory": tmp_path, "missing": tmp_path / "no"}[case]
    if case == "huge":
        path.write_bytes(os.urandom(MAX_KEY_FILE + 1))
    if case == "empty":
        path.write_bytes(b"\n")
    words = {"/dev/zero": "larger than 4096", "huge": "larger than 4096", "empty": "empty",
             "directory": "cannot read key file", "missing": "cannot read key file"}[case]
    assert_exit_2(cli("verify", chain, "--key-file", path), words)


# -------------------------------------------------------------- sources
@contextlib.contextmanager
def _not_a_disk(kind: str, directory: Path) -> Iterator[Path]:
    """A FIFO (no writer: opening it for reading would wait for ever), a listening Unix
    socket, or a character device."""
    if kind == "character device":
        yield Path("/dev/zero")
        return
    path = directory / kind.replace(" ", "-")
    if kind == "FIFO":
        os.mkfifo(path)
        yield path
        return
    import socket

    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen()
        yield path


@pytest.mark.parametrize("kind", ["FIFO", "socket", "character device"])
@pytest.mark.parametrize("command", [("backup", "{src}", "{out}/chain"),
                                     ("export", "{src}", "{out}/disk.vhd"),
                                     ("export", "{src}", "{out}/disk.vhd", "--reader", "raw"),
                                     ("triage", "{src}")])
def test_a_source_that_is_no_disk_is_refused_at_once(tmp_path, kind, command) -> None:
    with _not_a_disk(kind, tmp_path) as source:
        done = cli(*(arg.format(src=source, out=tmp_path) for arg in command))
    assert_exit_2(done, str(source))
    assert not (tmp_path / "chain").exists() and not (tmp_path / "disk.vhd").exists()


@pytest.mark.parametrize("piece", ["0000-full.bfi", "0001-incr.bfi", "chain.json"])
@pytest.mark.parametrize("command", [("backup", "{src}", "{chain}"),
                                     ("backup", "{src}", "{out}/other"),
                                     ("export", "{src}", "{out}/disk.vhd"),
                                     ("export", "{src}", "{out}/disk.vhd", "--reader", "raw")])
def test_a_file_of_a_chain_is_no_disk(tmp_path, piece, command) -> None:
    """An image file (or the manifest) read as a raw disk would pass its container bytes
    off as one: backed up into its own chain, a point of nonsense."""
    chain = tmp_path / "chain"
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(64 << 10))
    for _ in range(2):
        assert cli("backup", image, chain).returncode == 0
    before = {p.name: p.read_bytes() for p in chain.iterdir()}
    done = cli(*(arg.format(src=chain / piece, chain=chain, out=tmp_path) for arg in command))
    assert_exit_2(done, "a file of the chain")
    assert {p.name: p.read_bytes() for p in chain.iterdir()} == before
    assert not (tmp_path / "other").exists() and not (tmp_path / "disk.vhd").exists()


def test_a_source_that_is_recognised_but_does_not_open_leaves_no_chain(tmp_path) -> None:
    require_tools("qemu-img")
    vhd = tmp_path / "damaged.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", str(vhd), "16M"], check=True)
    with vhd.open("r+b") as fh:  # the dynamic disk header's cookie
        fh.seek(512)
        fh.write(b"XXXXXXXX")
    assert_exit_2(cli("backup", vhd, tmp_path / "chain"), "cxsparse")
    assert not (tmp_path / "chain").exists()


@pytest.mark.parametrize("name", ["empty.raw", "empty.vhdx"])
def test_an_empty_source_is_refused_and_leaves_no_chain(tmp_path, name) -> None:
    """0 bytes (whatever the file's name): no disk, not a chain of one empty point."""
    (tmp_path / name).write_bytes(b"")
    assert_exit_2(cli("backup", tmp_path / name, tmp_path / "chain"), "empty (0 bytes)")
    assert not (tmp_path / "chain").exists()


@pytest.mark.parametrize("command", [
    ("export", "{src}", "{out}/disk.vhd"), ("export", "{src}", "{out}/disk.raw"),
    ("serve", "{src}", "--socket", "{out}/nbd.sock"), ("mount", "{src}", "{out}"),
    ("boot", "{src}", "--timeout", "5")])
def test_every_command_reading_a_source_refuses_an_empty_one(tmp_path, command) -> None:
    """``export`` wrote an empty disk.vhd with exit 0 where ``backup`` refused the same
    source: each command that reads a source disk refuses it, with backup's words."""
    source = tmp_path / "empty.raw"
    source.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    done = cli(*(arg.format(src=source, out=out) for arg in command))
    assert_exit_2(done, f"{source}: the source is empty (0 bytes)")
    assert not any(out.iterdir())


@pytest.mark.parametrize("reader", ["vhd", "vhdx", "vmdk", "qcow2", "vdi", "ewf"])
def test_a_reader_forced_on_a_file_not_of_its_format_refuses_it(tmp_path, reader) -> None:
    """``--reader vmdk`` on random bytes was backed up as a flat VMDK extent (dissect's
    fallback); every reader now refuses what does not bear its format's signature."""
    require_module("dissect.hypervisor", "dissect.hypervisor")
    (tmp_path / "noise.img").write_bytes(np.random.default_rng(7).bytes(1 << 20))
    assert_exit_2(cli("backup", tmp_path / "noise.img", tmp_path / "chain", "--reader", reader),
                  "noise.img")
    assert not (tmp_path / "chain").exists()


@pytest.mark.parametrize("uri", ["nbd://[::1/x", "nbd://host:99999/x", "nbd://host:abc/x"])
def test_a_malformed_nbd_uri_is_one_line(tmp_path, uri) -> None:
    """urllib's ValueError (a bracket left open, a port out of range or not a number)
    was a traceback."""
    assert_exit_2(cli("backup", uri, tmp_path / "chain"), "not a valid NBD URI")
    assert not (tmp_path / "chain").exists()


def test_a_loop_of_vhd_parents_is_one_line(tmp_path) -> None:
    """A chain exported as differencing VHDs (base <- mid <- top), the top copied over
    the base's name with the base's unique id: mid's parent is top, whose parent is mid.
    Following them ended in a RecursionError traceback."""
    from blockforensics.formats.vhd import Footer

    source = tmp_path / "disk.raw"
    source.write_bytes(np.random.default_rng(3).bytes(1 << 20))
    for _ in range(3):
        assert cli("backup", source, tmp_path / "chain").returncode == 0
    assert cli("export", tmp_path / "chain", tmp_path / "p.vhd", "--format",
               "vhd-chain").returncode == 0
    base, top = tmp_path / "p.point0.vhd", bytearray((tmp_path / "p.vhd").read_bytes())
    base_id = Footer.unpack(base.read_bytes()[-Footer.SIZE:]).unique_id
    for at in (0, len(top) - Footer.SIZE):  # the footer and its copy
        footer = Footer.unpack(bytes(top[at : at + Footer.SIZE]))
        top[at : at + Footer.SIZE] = footer.replace(unique_id=base_id).sealed().pack()
    base.write_bytes(top)
    assert_exit_2(cli("backup", tmp_path / "p.point1.vhd", tmp_path / "other"), "loop")
    assert not (tmp_path / "other").exists()


def test_a_directory_that_is_no_chain_is_named_so(tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    assert_exit_2(cli("backup", tmp_path / "photos", tmp_path / "chain"), "no chain.json")
    assert not (tmp_path / "chain").exists()


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
def test_a_manifest_that_is_no_file_is_named_so(raw_key_chain, tmp_path, kind) -> None:
    """chain.json replaced by a directory (it was "error: 3: Is a directory", the
    file descriptor for a name) or a FIFO: one line naming the manifest, for each
    command that opens a chain (those that probe a source said "no chain.json")."""
    chain = tmp_path / "c"
    shutil.copytree(raw_key_chain[0], chain)
    (chain / MANIFEST).unlink()
    (chain / MANIFEST).mkdir() if kind == "directory" else os.mkfifo(chain / MANIFEST)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "src.raw").write_bytes(bytes(1 << 16))
    for command in (["verify", chain], ["list", chain], ["triage", chain],
                    ["restore", chain, tmp_path / "out.raw"],
                    ["serve", chain, "--socket", tmp_path / "nbd.sock"],
                    ["export", chain, tmp_path / "out.vhd"], ["mount", chain, tmp_path / "mnt"],
                    ["export", chain, tmp_path / "out.vhd", "--format", "vhd-chain"],
                    ["boot", chain], ["backup", tmp_path / "src.raw", chain]):
        assert_exit_2(cli(*command), f"{chain / MANIFEST}: the chain manifest is not a "
                                     "regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "mnt", "src.raw"]


def test_a_disk_whose_block_maps_outgrow_memory_is_refused_with_a_block_size(tmp_path) -> None:
    """A sparse file of three times as many 512-byte blocks as 4 bytes each of this machine's
    memory: refused at once (no chain), naming a --block-size whose maps fit."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    source = tmp_path / "huge.raw"
    with source.open("wb") as fh:
        fh.truncate(memory // 4 * 512 * 3)
    done = cli("backup", source, tmp_path / "chain", "--block-size", "512")
    assert_exit_2(done, "--block-size 2048 or larger")
    assert not (tmp_path / "chain").exists()


def test_an_image_file_out_of_its_chain_is_no_disk(tmp_path) -> None:
    from blockforensics.formats.signature import container
    from blockforensics.image.format import HEADER_MAGIC

    chain, image = tmp_path / "chain", tmp_path / "disk.img"
    image.write_bytes(os.urandom(64 << 10))
    assert cli("backup", image, chain).returncode == 0
    stray = tmp_path / "copied.bfi"
    stray.write_bytes((chain / "0000-full.bfi").read_bytes())
    assert stray.read_bytes().startswith(HEADER_MAGIC)  # the signature the probe knows
    assert container(stray)[0] == "an image file of a blockforensics chain"
    assert_exit_2(cli("backup", stray, tmp_path / "other"), "image file of a blockforensics")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1", "http"])
def test_a_port_outside_tcp_is_a_usage_error(raw_key_chain, port) -> None:
    chain, _, _ = raw_key_chain
    assert_exit_2(cli("serve", chain, "--port", port), "--port")


def test_a_key_fifo_nobody_writes_is_refused_after_a_wait(monkeypatch, tmp_path) -> None:
    from blockforensics import crypto

    monkeypatch.setattr(crypto, "KEY_PIPE_WAIT", 0.3)
    os.mkfifo(tmp_path / "fifo")
    raised: list[BaseException] = []

    def read() -> None:
        try:
            KeySource.from_file(tmp_path / "fifo")
        except BaseException as exc:
            raised.append(exc)

    reader = threading.Thread(target=read, daemon=True)  # a hang fails, not blocks, the test
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO nobody writes to hangs"
    assert isinstance(raised[0], UsageError), raised
    assert "a FIFO nothing wrote to within 0.3 s" in str(raised[0])


def test_a_key_through_a_pipe_is_read_to_its_end(raw_key_chain, tmp_path) -> None:
    """``--key-file <(...)``: the writer may be slow, and may write in pieces."""
    chain, key, newest = raw_key_chain
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", 'exec > "$1"; sleep 0.5; head -c 5 "$0"; '
                               'sleep 0.3; tail -c +6 "$0"', str(key), str(fifo)])
    done = cli("restore", chain, tmp_path / "out", "--key-file", fifo)
    assert writer.wait(10) == 0
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == newest


def test_a_changed_map_that_is_a_fifo_is_refused(raw_key_chain, tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "disk").write_bytes(bytes(8192))
    assert_exit_2(cli("backup", tmp_path / "disk", tmp_path / "c", "--changed",
                      tmp_path / "fifo"), "not a regular file")
    assert not (tmp_path / "c").exists()


def _rewrite_header(image: Path, **changes: object) -> None:
    with open(image, "r+b") as fh:
        header = Header.unpack(fh.read(HEADER_SIZE))
        fh.seek(0)
        fh.write(header.replace(**changes).pack())


@pytest.mark.parametrize("changes", [
    {"kdf_n": 1 << 30}, {"kdf_n": 3}, {"kdf_n": 0}, {"kdf_r": 0}, {"kdf_r": 1 << 20},
    {"kdf_p": 1 << 30}, {"kdf_n": 1 << 20, "kdf_r": 8}, {"kdf": 7},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_hostile_scrypt_parameters_are_refused(passphrase_chain, tmp_path, changes) -> None:
    chain, key = passphrase_chain
    shutil.copytree(chain, tmp_path / "c")
    for image in (tmp_path / "c").glob("*.bfi"):
        _rewrite_header(image, **changes)
    for command in (["verify", tmp_path / "c"], ["restore", tmp_path / "c", tmp_path / "o"]):
        assert_exit_2(cli(*command, "--key-file", key),
                      "out of bounds" if "kdf" not in changes else "key derivation")


# -------------------------------------------------------------------- plugins
BROKEN = {
    "missing_module": "bf_nowhere:Fmt",
    "raises_on_import": "bf_boom:Fmt",
    "not_a_format": "bf_toy_bad:NOT_A_FORMAT",
    "probe_raises": "bf_toy_bad:ProbeRaises",
}


@pytest.fixture
def broken_plugins(tmp_path: Path) -> Path:
    """Four broken plugins installed the way pip would (module plus dist-info)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "bf_boom.py").write_text("raise RuntimeError('plugin exploded on import')\n")
    (site / "bf_toy_bad.py").write_text(textwrap.dedent("""
        from blockforensics.formats.base import Format
        NOT_A_FORMAT = 42
        class ProbeRaises(Format):
            name = "probe_raises"
            priority = 20
            @classmethod
            def probe(cls, path):
                raise ValueError("probe failed")
            @classmethod
            def open(cls, path, **kw):
                raise AssertionError
    """))
    info = site / "bf_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bf-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{n} = {t}\n" for n, t in BROKEN.items()))
    return site


def test_broken_plugins_are_named_and_the_others_still_work(broken_plugins, tmp_path) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(broken_plugins), *sys.path])}
    source = tmp_path / "vol.raw"
    source.write_bytes(os.urandom(5 * 4096))
    done = cli("backup", source, tmp_path / "c", "--all-blocks", env=env)
    assert done.returncode == 0, done.stderr
    for name in BROKEN:
        assert f"reader plugin {name}" in done.stderr  # named, once each
    assert "Traceback" not in done.stderr
    done = cli("restore", tmp_path / "c", tmp_path / "out", env=env)
    assert done.returncode == 0 and (tmp_path / "out").read_bytes() == source.read_bytes()
    for name in BROKEN:
        if name != "probe_raises":  # loads fine; only its probe fails
            assert_exit_2(cli("export", source, tmp_path / "x.vhd", "--reader", name, env=env),
                          f"reader plugin {name}")


# ----------------------------------------------------------------------- fuzz
@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def hang(*_: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run(*args: object) -> tuple[int, str]:
    """The command line in-process: ``(exit code, stderr)``; an uncaught exception (a
    traceback) or a hang fails the test."""
    err = io.StringIO()
    with _deadline(20), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    assert code in (0, 1, 2), code
    if code == 2:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    return code, err.getvalue()


@pytest.fixture(scope="module")
def fuzz_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz") / "c"
    build_chain(directory, [None, 0, 1, 0], n_blocks=12)
    return directory


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=20)
names = st.one_of(
    st.sampled_from(["0000-full.bfi", "0001-incr.bfi", "0002-incr.bfi", "0003-incr.bfi",
                     "./0000-full.bfi", "../c/0001-incr.bfi", "/etc/passwd", "", ".", "..",
                     "chain.json", "0000-full.bfi\x00", "missing.bfi", "é.bfi", "\ud800.bfi"]),
    st.text(max_size=20), st.integers(), st.none())
manifests = st.one_of(
    json_values,
    st.fixed_dictionaries({"format": st.just("blockforensics-chain"), "version": st.just(1),
                           "images": st.lists(names, max_size=8)},
                          optional={"generation": json_values, "seal": json_values}),
    st.fixed_dictionaries({"format": st.just("blockforensics-chain"),
                           "version": json_values, "images": json_values}))


def test_fuzz_manifest(fuzz_template: Path) -> None:
    outcomes = {0: 0, 1: 0, 2: 0}
    with tempfile.TemporaryDirectory() as tmp:
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(manifests)
        def case(doc: object) -> None:
            directory = Path(tmp) / "c"
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(fuzz_template, directory)
            (directory / MANIFEST).write_text(json.dumps(doc))
            files = sorted(os.listdir(directory))
            for command in (["verify", directory], ["list", directory],
                            ["restore", directory, Path(tmp) / "out.raw", "--force"]):
                outcomes[run(*command)[0]] += 1
            assert sorted(os.listdir(directory)) == files  # nothing deleted or left

        case()
    print(f"manifest fuzz: {sum(outcomes.values())} command runs, exit codes {outcomes}")
    assert outcomes[2] > 0


HEADER_FIELDS = {name: strategy for name, strategy in {
    "kind": st.integers(0, 255), "cipher": st.integers(0, 255), "kdf": st.integers(0, 255),
    "block_size": st.sampled_from([0, 1, 511, 512, 4096, 4097, 1 << 24, 2**32 - 1]),
    "volume_size": st.sampled_from([0, 1, 4095, 4096, 12 * 4096, 12 * 4096 - 100, 2**40,
                                    2**64 - 1]),
    "parent_id": st.binary(min_size=16, max_size=16), "image_id":
        st.binary(min_size=16, max_size=16),
    "volume_id": st.binary(min_size=16, max_size=16),
    "hidden_tail": st.sampled_from([0, 1, 5, 2**64 - 1]),
}.items()}
RECORD_FIELDS = {
    "position": st.sampled_from([0, 1, 11, 12, 2**40, 2**64 - 1]),
    "offset": st.sampled_from([0, 100, HEADER_SIZE, HEADER_SIZE + 1, 2**40, 2**64 - 1]),
    "length": st.sampled_from([0, 1, 4096, 4097, 2**32 - 1]),
    "flags": st.integers(0, 255),
}


def _mutate_index(image: Path, row: int, field: str, value: int) -> None:
    """Set one field of one index record and re-seal the index and footer digests."""
    raw = bytearray(image.read_bytes())
    footer = Footer.unpack(bytes(raw[-Footer.SIZE:]))
    end = footer.index_offset + footer.index_count * INDEX_DTYPE.itemsize
    index = np.frombuffer(bytes(raw[footer.index_offset : end]), INDEX_DTYPE).copy()
    if not len(index):
        return
    index[field][row % len(index)] = value
    import hashlib

    body = index.tobytes()
    raw[footer.index_offset : end] = body
    raw[-Footer.SIZE:] = Footer(footer.index_offset, footer.index_count,
                                hashlib.sha256(body).digest()).pack()
    image.write_bytes(bytes(raw))


mutations = st.one_of(
    st.tuples(st.just("header"), st.integers(0, 3), st.sampled_from(sorted(HEADER_FIELDS)))
    .flatmap(lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.just(t[2]),
                                 HEADER_FIELDS[t[2]])),
    st.tuples(st.just("index"), st.integers(0, 3), st.sampled_from(sorted(RECORD_FIELDS)))
    .flatmap(lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.just(t[2]),
                                 st.tuples(st.integers(0, 50), RECORD_FIELDS[t[2]]))),
    st.tuples(st.just("bytes"), st.integers(0, 3), st.integers(0, 2**20),
              st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 3), st.integers(0, 2**20), st.just(b"")),
)


# Found by this fuzz before the image structure checks (issue 18) landed: a header
# volume_size of 2**64-1 allocating petabytes in Chain.layout, and one image of a
# plaintext chain claiming cipher=1 (AttributeError in Chain.check_point).
def test_fuzz_image_header_and_index(fuzz_template: Path) -> None:
    outcomes = {0: 0, 1: 0, 2: 0}
    with tempfile.TemporaryDirectory() as tmp:
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(mutations, min_size=1, max_size=3))
        def case(changes: list[tuple]) -> None:
            directory = Path(tmp) / "c"
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(fuzz_template, directory)
            images = sorted(directory.glob("*.bfi"))
            for kind, which, what, value in changes:
                image = images[which % len(images)]
                if kind == "header":
                    with contextlib.suppress(Exception):  # an earlier change broke it
                        _rewrite_header(image, **{what: value})
                elif kind == "index":
                    with contextlib.suppress(Exception):
                        _mutate_index(image, value[0], what, value[1])
                elif image.stat().st_size:
                    data = bytearray(image.read_bytes())
                    at = what % len(data)
                    data = data[:at] if kind == "truncate" else \
                        data[:at] + value + data[at + len(value):]
                    image.write_bytes(bytes(data))
            for command in (["verify", directory], ["list", directory],
                            ["restore", directory, Path(tmp) / "out.raw", "--force"],
                            ["consolidate", directory]):
                outcomes[run(*command)[0]] += 1

        case()
    print(f"image header/index fuzz: {sum(outcomes.values())} command runs, "
          f"exit codes {outcomes}")
    assert outcomes[2] > 0

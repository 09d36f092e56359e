"""Reads never hand out wrong bytes: every read path checks each block it reads
(issue 18, item 1), through the command line where it is a CLI case."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import flip_stored_bit, require_tools, serving

from blockforensics.errors import IntegrityError
from blockforensics.export import CHAIN, FLAT, STREAMED
from blockforensics.image.chain import Chain
from blockforensics.image.format import HEADER_SIZE
from blockforensics.nbd.client import NbdConnection, NbdError
from blockforensics.nbd.protocol import NBD_EIO

BS = 4096
FLIPPED = 9  # the block whose stored bytes are damaged


def run(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def make_chain(tmp_path: Path, *options: str) -> tuple[Path, bytes]:
    """A chain of a full and an incremental of a random 48-block volume; the full's
    bytes."""
    rng = np.random.default_rng(3)
    source = tmp_path / "disk.raw"
    data = bytearray(rng.integers(0, 256, 48 * BS, dtype=np.uint8).tobytes())
    source.write_bytes(data)
    chain = tmp_path / "chain"
    assert run("backup", source, chain, "--all-blocks", *options).returncode == 0
    full = bytes(data)
    data[30 * BS : 31 * BS] = rng.bytes(BS)
    source.write_bytes(data)
    assert run("backup", source, chain, "--all-blocks", *options).returncode == 0
    return chain, full


def flip_stored_block(chain: Path, name: str, position: int) -> None:
    """Flip one bit in the middle of the stored payload of block ``position`` of image
    ``name``."""
    flip_stored_bit(chain / name, position)


def assert_refused(done: subprocess.CompletedProcess[str], out: Path,
                   where: str = f"0000-full.bfi: block {FLIPPED}:") -> None:
    """Exit 1, one line naming the image and the block (``where``), nothing under ``out``
    or beside it (no temporary file, no sibling of a chain format)."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert where in done.stderr, done.stderr
    assert not [p.name for p in out.parent.iterdir()
                if p.name.startswith(out.stem) or p.name.endswith(".tmp")]


@pytest.mark.parametrize("options", [(), ("--compress",)], ids=["plain", "compressed"])
def test_bit_rot_fails_restore_and_export_naming_the_block(tmp_path, options):
    chain, full = make_chain(tmp_path, *options)
    out = tmp_path / "out"
    out.mkdir()
    done = run("restore", chain, out / "r.raw", "--point", "0")
    assert done.returncode == 0 and (out / "r.raw").read_bytes() == full
    (out / "r.raw").unlink()
    flip_stored_block(chain, "0000-full.bfi", FLIPPED)
    for point in ("0", "1"):  # the incremental reads the damaged block through its parent
        assert_refused(run("restore", chain, out / "r.raw", "--point", point), out / "r.raw")
        assert_refused(run("export", chain, out / "e.vhd", "--point", point), out / "e.vhd")
        assert_refused(run("export", chain, out / "f.vhd", "--point", point,
                           "--format", "vhd-fixed"), out / "f.vhd")
    with Chain.open(chain) as opened:
        disk = opened.disk(0)
        assert disk.read_blocks(0, FLIPPED).tobytes() == full[: FLIPPED * BS]  # before: fine
        with pytest.raises(IntegrityError, match=f"block {FLIPPED}:"):
            disk.read_blocks(FLIPPED - 1, 2)


@pytest.mark.parametrize("damaged, block", [("0000-full.bfi", FLIPPED), ("0001-incr.bfi", 30)],
                         ids=["full", "incremental"])
def test_bit_rot_fails_every_export_format_leaving_nothing(tmp_path, damaged, block):
    """Point 1 reads both images.  Flat formats are written through the checking writer
    (or, for vmdk-stream, block reads): nothing under OUT's name.  The chain formats write
    the full's file first: with a damaged incremental it was complete before the failure,
    and is removed."""
    chain, _ = make_chain(tmp_path)
    flip_stored_block(chain, damaged, block)
    out = tmp_path / "out"
    out.mkdir()
    for fmt in (*FLAT, *STREAMED, *CHAIN):
        assert_refused(run("export", chain, out / f"e.{fmt}", "--point", "1", "--format", fmt),
                       out / f"e.{fmt}", f"{damaged}: block {block}:")


def test_bit_rot_in_an_encrypted_chain_exits_1(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    chain, _ = make_chain(tmp_path, "--key-file", str(key))
    flip_stored_block(chain, "0000-full.bfi", FLIPPED)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run("restore", chain, out / "r.raw", "--point", "0", "--key-file", key),
                   out / "r.raw")


def test_consolidate_copies_no_damaged_block(tmp_path):
    # a rewrite copies the full's blocks: refused; in place the full's blocks stay where
    # they are, unread, and the damage stays where it was, named by verify
    chain, _ = make_chain(tmp_path)
    flip_stored_block(chain, "0000-full.bfi", FLIPPED)
    before = {name: (chain / name).read_bytes() for name in os.listdir(chain)}
    done = run("consolidate", chain, "--point", "1", "--rewrite")
    assert done.returncode == 1 and f"0000-full.bfi: block {FLIPPED}:" in done.stderr
    assert {name: (chain / name).read_bytes() for name in os.listdir(chain)} == before
    done = run("consolidate", chain, "--point", "1")
    assert done.returncode == 0 and "grown in place" in done.stdout, done.stderr
    checked = run("verify", chain)
    assert checked.returncode == 1
    assert f"0001-full-c1.bfi block {FLIPPED}: stored bytes do not match" in checked.stdout


def test_bit_rot_fails_a_read_of_the_mounted_disk_file(tmp_path):
    chain, full = make_chain(tmp_path)
    flip_stored_block(chain, "0000-full.bfi", FLIPPED)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with serving([sys.executable, "-m", "blockforensics.cli", "mount", str(chain),
                  str(mountpoint), "--point", "0"], mountpoint) as mount:
        with (mountpoint / "disk.vhd").open("rb", buffering=0) as fh:
            # a dynamic VHD of 48 blocks: footer copy, header, BAT, then one 2 MiB block
            fh.seek(512 + 1024 + 512 + 512)  # + the block's sector bitmap
            got = b""
            with pytest.raises(OSError) as failed:  # the kernel may cut reads short first
                while len(got) < len(full):
                    got += fh.read(BS)
            assert failed.value.errno == errno.EIO
        assert got == full[: len(got)] and len(got) <= (FLIPPED + 1) * BS  # nothing wrong
    assert f"0000-full.bfi: block {FLIPPED}:" in mount.err, mount.err
    assert "Traceback" not in mount.err, mount.err


def test_bit_rot_fails_nbd_serve_reads_with_eio_and_exit_1(tmp_path):
    """``serve`` answers a read of the damaged block with EIO (never its bytes), names it
    on stderr, keeps serving the intact ones, and exits 1 when stopped."""
    require_tools("qemu-img")
    chain, full = make_chain(tmp_path)
    (tmp_path / "full.raw").write_bytes(full)
    flip_stored_block(chain, "0000-full.bfi", FLIPPED)
    sock = tmp_path / "nbd.sock"
    url = f"nbd+unix:///?socket={sock}"
    proc = subprocess.Popen([sys.executable, "-m", "blockforensics.cli", "serve", str(chain),
                             "--point", "0", "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        converted = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url,
                                    str(tmp_path / "out.raw")], capture_output=True, text=True)
        assert converted.returncode == 1 and "Input/output error" in converted.stderr
        compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                                   str(tmp_path / "full.raw"), url], capture_output=True)
        assert compared.returncode == 4  # a read error, not "the images differ"
        with NbdConnection.open(url) as nbd:
            assert nbd.read(0, FLIPPED * BS) == full[: FLIPPED * BS]
            with pytest.raises(NbdError, match=f"error {NBD_EIO}"):
                nbd.read((FLIPPED - 1) * BS, 2 * BS)
            assert nbd.read((FLIPPED + 1) * BS, BS) == full[(FLIPPED + 1) * BS :][:BS]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and err.strip()
    assert all(f"0000-full.bfi: block {FLIPPED}:" in line for line in err.strip().splitlines())


def test_bit_rot_fails_diff_files_but_not_the_index_only_diff(tmp_path):
    """``diff`` without ``--files`` compares the content digests of the indexes and reads
    no payload: the damaged point diffs as before.  ``diff --files`` reads the file
    systems' metadata through the checked reader: exit 1 naming the block (here the
    FAT boot sector, block 0, which The Sleuth Kit reads first)."""
    assert run("sample", "investigation", tmp_path / "case").returncode == 0
    chain = tmp_path / "case" / "chain"
    before = run("diff", chain, "0", "1", "--json")
    flip_stored_block(chain, "0000-full.bfi", 0)
    after = run("diff", chain, "0", "1", "--json")
    assert after.returncode == 0 and after.stdout == before.stdout
    done = run("diff", chain, "0", "1", "--files")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "0000-full.bfi: block 0:" in done.stderr, done.stderr


def test_stored_digests_are_checked_without_losing_the_file_to_file_path(tmp_path):
    """A checked restore reads each verbatim run once: the image's page-aligned payloads
    come back byte-identical through the reused buffers, across many buffers."""
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (700, BS), dtype=np.uint8)
    data[::7] = 0
    from blockforensics.image.backup import backup, restore
    from blockforensics.volume import Volume

    with Chain.create(tmp_path / "c") as chain:
        backup(chain, Volume.from_bytes(data.tobytes(), BS))
        data[100:500:3] = rng.integers(0, 256, (134, BS), dtype=np.uint8)
        backup(chain, Volume.from_bytes(data.tobytes(), BS))
        out = restore(chain, 1, tmp_path / "out.raw")
    assert Path(out).read_bytes() == data.tobytes()
    assert HEADER_SIZE % BS == 0


def test_a_point_lands_at_its_places_across_windows_and_buffers(tmp_path, monkeypatch):
    """ChainDisk.write_to finds the runs and places of a whole window's buffers at once:
    with windows and buffers much smaller than the point, runs crossing buffer ends, two
    images, and a placement whose pieces cut blocks and lie backwards, every byte lands
    at its place; a damaged block in a late buffer of a late window is named."""
    from blockforensics.formats.placement import PlacedWriter, Placement
    from blockforensics.image import reader
    from blockforensics.image.backup import backup
    from blockforensics.volume import Volume

    monkeypatch.setattr(reader, "WRITE_WINDOW", 600)
    rng = np.random.default_rng(12)
    data = rng.integers(0, 256, (1500, BS), dtype=np.uint8)
    data[::11] = 0
    data[700:720] = 0
    grain = 3 * BS + 1024  # bytes: pieces end inside blocks
    pieces = -(-data.size // grain)
    placement = Placement(grain, np.arange(pieces, dtype=np.int64),
                          (pieces - 1 - np.arange(pieces, dtype=np.int64)) * grain)
    with Chain.create(tmp_path / "c") as chain:
        backup(chain, Volume.from_bytes(data.tobytes(), BS))
        data[100:1400:5] = rng.integers(0, 256, (260, BS), dtype=np.uint8)
        backup(chain, Volume.from_bytes(data.tobytes(), BS))

        def write(name: str) -> bytes:
            with open(tmp_path / name, "wb+") as fh:
                os.ftruncate(fh.fileno(), pieces * grain)
                with PlacedWriter(fh.fileno(), data.size, placement) as out:
                    chain.disk(1).write_to(out)
                return (tmp_path / name).read_bytes()

        written = write("out.bin")
        flat = data.tobytes().ljust(pieces * grain, b"\0")
        assert written == b"".join(flat[i * grain : (i + 1) * grain]
                                   for i in reversed(range(pieces)))
        flip_stored_block(tmp_path / "c", "0000-full.bfi", 1301)
        with pytest.raises(IntegrityError, match=r"0000-full\.bfi: block 1301:"):
            write("bad.bin")


# ------------------------------------------------------ options and paths (item 7, 8)
@pytest.mark.parametrize("kind", ["missing", "garbage", "directory"])
def test_a_bad_changed_map_is_exit_2_before_any_work(tmp_path, kind):
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(8 * BS))
    changed = tmp_path / "map.npz"
    if kind == "garbage":
        changed.write_bytes(b"not a map")
    elif kind == "directory":
        changed.mkdir()
    done = run("backup", source, tmp_path / "c", "--changed", changed)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert str(changed) in done.stderr
    assert not (tmp_path / "c").exists()  # nothing created


def test_mount_on_a_non_empty_directory_is_exit_2_before_printing(tmp_path):
    chain, _ = make_chain(tmp_path)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "evidence.txt").write_text("keep me visible")
    done = run("mount", chain, mountpoint, timeout=30)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert "not empty" in done.stderr and "Traceback" not in done.stderr


def test_a_killed_export_leaves_a_temporary_that_the_next_export_removes(tmp_path):
    chain, _ = make_chain(tmp_path)
    out = tmp_path / "out" / "disk.vhd"
    out.parent.mkdir()
    stale = out.parent / ".disk.vhd.killed.tmp"  # what a SIGKILLed writer leaves
    stale.write_bytes(b"half an export")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    done = run("export", chain, out)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["disk.vhd"]


def test_a_missing_output_folder_is_named_as_given(tmp_path):
    chain, _ = make_chain(tmp_path)
    for command in ("restore", "export"):
        done = run(command, chain, "no-such-dir/out.img")
        assert done.returncode == 2 and "no-such-dir/out.img" in done.stderr, done.stderr
        assert ".tmp" not in done.stderr


def test_an_error_after_the_commit_reports_the_point_as_committed(tmp_path):
    """An I/O error raised after the manifest's rename (while the switch tidies up): the
    backup says the point was committed, and a retry adds no duplicate."""
    chain, _ = make_chain(tmp_path)
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(48 * BS))
    failing = ("import errno, sys\n"
               "from blockforensics.image.store import ChainStore\n"
               "real = ChainStore._finish\n"
               "def finish(self, journal, *, switched):\n"
               "    real(self, journal, switched=switched)\n"
               "    if switched:\n"
               "        raise OSError(errno.EIO, 'Input/output error')\n"
               "ChainStore._finish = finish\n"
               "from blockforensics.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", failing, "backup", str(source), str(chain),
                           "--all-blocks"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "point committed as 0002-" in done.stderr, done.stderr
    with Chain.open(chain) as opened:
        assert len(opened) == 3

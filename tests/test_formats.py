"""Reader plugins: chosen by signature; a third party adds one through the entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from blockforensics.errors import UsageError
from blockforensics.formats import ENTRY_POINT_GROUP, formats, open_disk, probe
from blockforensics.formats.chain import ChainFormat
from blockforensics.formats.raw import RawFormat
from blockforensics.image.backup import backup
from blockforensics.image.chain import Chain
from blockforensics.volume import Volume

PLUGIN = '''
"""A toy third-party format: b"TOYDISK1" then the disk's bytes."""
import os
from blockforensics.formats.base import Format
from blockforensics.formats.raw import RawDisk


class ToyDisk(RawDisk):
    def read_blocks(self, start, count):
        import numpy as np
        data = self.read(start * self.block_size, count * self.block_size)
        out = np.zeros((count, self.block_size), dtype=np.uint8)
        out.reshape(-1)[: len(data)] = np.frombuffer(data, np.uint8)
        return out

    def read(self, offset, length):
        end = min(offset + length, self.size)
        return os.pread(self._fd, max(0, end - offset), 8 + offset) if offset < end else b""


class ToyFormat(Format):
    name = "toy"
    priority = 15

    @classmethod
    def probe(cls, path):
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            return fh.read(8) == b"TOYDISK1"

    @classmethod
    def open(cls, path, *, point=None, key=None):
        disk = ToyDisk(path)
        disk.size -= 8
        return disk
'''


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """Install the toy plugin the way a pip package would: a module plus dist-info."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "bf_toy.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "bf_toy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bf-toy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoy = bf_toy:ToyFormat\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_builtins_are_probed_in_order(tmp_path):
    assert list(formats())[:1] == ["blockforensics"] and list(formats())[-1] == "raw"
    chain = Chain.create(tmp_path / "c")
    backup(chain, Volume.from_bytes(os.urandom(10_000)))
    assert probe(tmp_path / "c") is ChainFormat
    (tmp_path / "d.raw").write_bytes(b"x" * 1000)
    assert probe(tmp_path / "d.raw") is RawFormat
    with pytest.raises(UsageError, match="no such file"):
        probe(tmp_path / "missing")
    with pytest.raises(UsageError, match="unknown format"):
        open_disk(tmp_path / "d.raw", format="nope")


def test_the_builtins_table_is_in_priority_order_with_each_probe_its_signature(tmp_path):
    """The table probed before any reader is imported lists the built-ins in their
    classes' priority order, and each class's probe says what its table entry says."""
    from blockforensics.formats import _BUILTINS, _CATCH_ALL

    plugins = formats()
    assert list(_BUILTINS) == [name for name in plugins if name in _BUILTINS]
    assert [name for name, (_, signed) in _BUILTINS.items() if signed is None] == [_CATCH_ALL]
    chain = Chain.create(tmp_path / "chain")
    backup(chain, Volume.from_bytes(os.urandom(4096)))
    samples = [tmp_path / "chain", "nbd+unix:///x?socket=/s", "nbd://host/x"]
    for name, head in [("vhd", b"conectix"), ("vhdx", b"vhdxfile"), ("vmdk", b"KDMV"),
                       ("vmdk-descriptor", b"# Disk DescriptorFile\n"), ("qcow2", b"QFI\xfb"),
                       ("ewf", b"EVF\x09\x0d\x0a\xff\x00"), ("ex01", b"EVF2\x0d\x0a\x81\x00"),
                       ("vdi", b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0")
                        + b"\x7f\x10\xda\xbe"),
                       ("raw", b"\0" * 8)]:
        (tmp_path / name).write_bytes(head + bytes(1000))
        samples.append(tmp_path / name)
    (tmp_path / "tail.vhd").write_bytes(bytes(4096) + b"conectix" + bytes(503))  # 511 bytes
    samples.append(tmp_path / "tail.vhd")
    for name, (_, signed) in _BUILTINS.items():
        if signed is not None:
            claimed = [sample for sample in samples if signed(sample)]
            assert claimed and claimed == [s for s in samples if plugins[name].probe(s)], name
    assert [probe(sample).name for sample in samples] == [
        "blockforensics", "nbd", "nbd", "vhd", "vhdx", "vmdk", "vmdk", "qcow2", "ewf", "ewf",
        "vdi", "raw", "vhd"]


def test_a_third_party_plugin_is_found_through_its_entry_point(toy_plugin, tmp_path):
    data = os.urandom(3 * 4096 + 100)
    (tmp_path / "disk.toy").write_bytes(b"TOYDISK1" + data)
    assert "toy" in formats()
    with open_disk(tmp_path / "disk.toy") as disk:
        assert type(disk).__name__ == "ToyDisk" and disk.size == len(data)
        assert disk.read(0, disk.size) == data
    # and the command line backs it up like any other source
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy_plugin), *sys.path])}
    subprocess.run([sys.executable, "-m", "blockforensics.cli", "backup", tmp_path / "disk.toy",
                    tmp_path / "chain"], check=True, env=env, capture_output=True)
    restored = tmp_path / "restored.raw"
    subprocess.run([sys.executable, "-m", "blockforensics.cli", "restore", tmp_path / "chain",
                    restored], check=True, env=env, capture_output=True)
    assert restored.read_bytes() == data


def test_export_and_backup_take_any_source_format(tmp_path):
    """raw -> chain -> VHD -> chain again -> raw: the bytes survive every reader and writer."""
    data = os.urandom(5 * 4096 + 512)
    (tmp_path / "disk.raw").write_bytes(data)

    def cli(*args):
        subprocess.run([sys.executable, "-m", "blockforensics.cli", *map(str, args)],
                       check=True, capture_output=True)

    cli("backup", tmp_path / "disk.raw", tmp_path / "c1")
    cli("export", tmp_path / "c1", tmp_path / "a.vhd")
    cli("export", tmp_path / "a.vhd", tmp_path / "b.vhd", "--format", "vhd-fixed")
    cli("backup", tmp_path / "b.vhd", tmp_path / "c2")
    cli("restore", tmp_path / "c2", tmp_path / "out.raw")
    assert (tmp_path / "out.raw").read_bytes() == data


@pytest.mark.parametrize("reader", ["raw", "chain"])
def test_reading_in_place_overwrites_every_byte_of_the_buffer(tmp_path, reader):
    """``read_blocks_into`` fills a dirty buffer exactly: data where the disk has data,
    zeros for absent and zero blocks and past the end of an odd-sized disk."""
    import numpy as np

    size = 37 * 4096 + 1000
    data = bytearray(np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes())
    data[5 * 4096 : 9 * 4096] = bytes(4 * 4096)  # zero blocks
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(data))
    if reader == "raw":
        disk = RawFormat.open(raw)
    else:
        chain = Chain.create(tmp_path / "chain")
        backup(chain, Volume.open(raw, 4096))
        disk = chain.disk(0)
    expected = np.frombuffer(bytes(data) + bytes(38 * 4096 - size), np.uint8).reshape(38, 4096)
    out = np.full((38, 4096), 0xAA, dtype=np.uint8)
    disk.read_blocks_into(0, out)
    assert np.array_equal(out, expected)
    out[:] = 0xAA
    disk.read_blocks_into(30, out[:8])
    assert np.array_equal(out[:8], expected[30:])
    assert np.array_equal(disk.read_blocks(4, 6), expected[4:10])

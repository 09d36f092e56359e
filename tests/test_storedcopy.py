"""A chain point's verbatim blocks copied, checked, into every export (issue 19's C path).

Oracles: the source volume's bytes at each point (kept by the test), qemu-img's own reading
of each exported file (``qemu-img compare`` against the point's restore), and the block
whose stored bit was flipped.  Each property runs with the C extension and with it
switched off (the pure-Python copy), with units and batches far smaller than the point
so that a point spans many batches, many units and both threads.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support import flip_stored_bit, require_tools
from test_stored_checks import as_written_before

from blockforensics import batch
from blockforensics.errors import FormatError, IntegrityError
from blockforensics.export import FLAT, QEMU_FORMAT, export
from blockforensics.formats.placement import PlacedWriter
from blockforensics.image import storedcopy
from blockforensics.image.backup import backup, restore
from blockforensics.image.chain import Chain
from blockforensics.image.imagefile import ImageFile
from blockforensics.volume import Volume

PATHS = pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
SUFFIX = {"vhd-dynamic": ".vhd", "vhd-fixed": ".vhd", "vhdx": ".vhdx", "vmdk": ".vmdk",
          "qcow2": ".qcow2", "raw": ".raw"}


def use(native: bool, patch: pytest.MonkeyPatch, block: int) -> None:
    """The C path or the Python one, with units of 8 blocks and batches of 3 units."""
    if native and batch.native is None:
        pytest.skip("the C extension is not built")
    if not native:
        patch.setattr(batch, "native", None)
    patch.setattr(storedcopy, "COPY_BUFFER", 8 * block)
    patch.setattr(storedcopy, "BATCH_BYTES", 3 * 8 * block)


def deep_chain(directory: Path, block: int, n_blocks: int = 300, images: int = 4
               ) -> list[bytes]:
    """A full and ``images - 1`` incrementals, each rewriting every third block from its own
    offset and a few random ones (so that the last point reads runs of blocks from every
    depth, interleaved), some zeroed; the volume ends in a partial block.  The volume's
    bytes at each point."""
    rng = np.random.default_rng(block)
    size = n_blocks * block - block // 2 - 3  # bytes: the last block is partial
    data = rng.integers(0, 256, (n_blocks, block), dtype=np.uint8)
    data[10:14] = 0
    points = []
    with Chain.create(directory) as chain:
        for i in range(images):
            if i:
                changed = np.r_[np.arange(i - 1, n_blocks, 3)[i::2],
                                rng.choice(n_blocks, 5, replace=False)]
                data[changed] = rng.integers(0, 256, (len(changed), block), dtype=np.uint8)
                data[(7 * i) % n_blocks] = 0
            data.reshape(-1)[size:] = 0
            backup(chain, Volume.from_bytes(data.reshape(-1)[:size].tobytes(), block),
                   full=i == 0)
            points.append(data.reshape(-1)[:size].tobytes())
    return points


def qemu_compare(raw: Path, out: Path, fmt: str) -> None:
    done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", QEMU_FORMAT[fmt],
                           str(raw), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@PATHS
@pytest.mark.parametrize("block", [1024, 4096, 65536])
def test_every_export_of_a_deep_point_equals_its_restore(tmp_path, monkeypatch, native,
                                                        block):
    require_tools("qemu-img")
    use(native, monkeypatch, block)
    points = deep_chain(tmp_path / "c", block)
    with Chain.open(tmp_path / "c") as chain:
        last = len(chain.images) - 1
        assert len(chain.layout(last).images) == 4  # the point reads all four images
        restored = restore(chain, last, tmp_path / "restored.raw")
        assert Path(restored).read_bytes() == points[-1]
        for fmt in FLAT:
            out = export(chain.disk(last), tmp_path / f"out{SUFFIX[fmt]}", fmt)
            qemu_compare(restored, out, fmt)
            out.unlink()
        assert Path(restore(chain, 1, tmp_path / "one.raw")).read_bytes() == points[1]


@PATHS
@pytest.mark.parametrize("form", ["crc32", "sha256"])
def test_a_flipped_bit_is_named_and_leaves_no_output(tmp_path, monkeypatch, native, form):
    """A bit flipped in a stored payload of the second image, late in the point: the export
    fails naming that image and block, and no file is left under the output's name."""
    use(native, monkeypatch, 4096)
    deep_chain(tmp_path / "c", 4096)
    damaged = tmp_path / "c" / "0001-incr.bfi"
    if form == "sha256":
        as_written_before(damaged)
    with ImageFile(damaged) as image:
        position = int(image.index.all()["position"][-3])
    flip_stored_bit(damaged, position)
    (tmp_path / "out").mkdir()
    with Chain.open(tmp_path / "c") as chain:
        for fmt in ("vhd-fixed", "vhd-dynamic", "raw"):
            with pytest.raises(IntegrityError, match=f"0001-incr.bfi: block {position}: "):
                export(chain.disk(3), tmp_path / "out" / f"e{SUFFIX[fmt]}", fmt)
            assert not os.listdir(tmp_path / "out")


@PATHS
def test_nothing_of_a_unit_is_written_before_its_check(tmp_path, monkeypatch, native):
    """Into a plain file (no temporary to remove): no block of the damaged block's unit
    is written, the batches before its batch are, and every block written is right."""
    use(native, monkeypatch, 4096)
    points = deep_chain(tmp_path / "c", 4096, images=1)
    image = tmp_path / "c" / "0000-full.bfi"
    flip_stored_bit(image, 200)
    with ImageFile(image) as opened:
        stored = opened.index.all()["position"]
    k = int(np.searchsorted(stored, 200))  # unit k // 8, batch k // 24 of the stored blocks
    with Chain.open(tmp_path / "c") as chain, open(tmp_path / "out.raw", "wb+") as fh:
        disk = chain.disk(0)
        os.ftruncate(fh.fileno(), disk.size)
        with pytest.raises(IntegrityError, match=r"0000-full\.bfi: block 200: "), \
                PlacedWriter(fh.fileno(), disk.size) as out:
            disk.write_to(out)
    blocks = np.frombuffer((tmp_path / "out.raw").read_bytes().ljust(300 * 4096, b"\0"),
                           np.uint8).reshape(-1, 4096)
    source = np.frombuffer(points[0].ljust(300 * 4096, b"\0"), np.uint8).reshape(-1, 4096)
    written = (blocks != 0).any(axis=1)
    assert not written[stored[k // 8 * 8 : k // 8 * 8 + 8]].any()
    assert written[stored[: k // 24 * 24]].all()
    assert (blocks[written] == source[written]).all()


@PATHS
def test_a_payload_cut_short_is_an_error_not_zeros(tmp_path, monkeypatch, native):
    """The image shrinks under an export already planned: the read that meets its end is
    a FormatError naming the image, not a block of zeros."""
    use(native, monkeypatch, 4096)
    deep_chain(tmp_path / "c", 4096, images=1)
    jobs: list[storedcopy.StoredCopy] = []

    class Planned(PlacedWriter):
        def run(self, job):  # type: ignore[override]
            jobs.append(job)

    image = tmp_path / "c" / "0000-full.bfi"
    with Chain.open(tmp_path / "c") as chain, open(tmp_path / "out.raw", "wb+") as fh:
        disk = chain.disk(0)
        with Planned(fh.fileno(), disk.size) as out:
            disk.write_to(out)
        assert len(jobs) > 4
        cut = int(jobs[3].reads[0, 1]) + 100  # inside the first payload of the 4th batch
        os.truncate(image, cut)
        for job in jobs[:3]:
            job(fh.fileno())()
        finish = jobs[3](fh.fileno())
        with pytest.raises(FormatError, match=r"0000-full\.bfi: truncated payload at byte"):
            finish()


def test_the_c_copy_refuses_bounds_outside_its_buffers():
    native = getattr(batch.native, "copy_checked", None)
    if native is None:
        pytest.skip("the C extension is not built")
    unit, none = bytearray(8192), np.zeros(0, np.int64)
    reads = np.array([[4096, 0, 8192]], np.int64)  # past the unit's end
    bounds, taken, stop = np.array([0, 1], np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="read 0 lies outside its unit"):
        native(0, 1, 4096, unit, reads, bounds, b"", bytes(2), none, np.zeros(2, np.int64),
               taken, stop)
    with pytest.raises(ValueError, match="crc a byte for each block"):
        native(0, 1, 4096, unit, none, np.zeros(2, np.int64), b"", bytes(3), none,
               np.zeros(2, np.int64), taken, stop)
    with pytest.raises(ValueError, match="next and stop an int64"):
        native(0, 1, 4096, unit, none, np.zeros(1, np.int64), b"", b"", none,
               np.zeros(1, np.int64), taken, bytearray(1))


def unit_plan(units: int, per: int, block: int, base: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(reads, read_bounds, writes, write_bounds)`` of ``copy_checked`` for ``units`` units
    of ``per`` blocks stored back to back from byte ``base`` of a file: each unit read in two
    parts and written in three, the output holding the blocks in order from byte 0."""
    unit = per * block
    reads, writes = [], []
    for k in range(units):
        half = per // 2 * block
        reads += [[0, base + k * unit, half], [half, base + k * unit + half, unit - half]]
        third = per // 3 * block + 5  # crossing the reads' border
        writes += [[k * unit, 0, third], [k * unit + third, third, half + 7 - third],
                   [k * unit + half + 7, half + 7, unit - half - 7]]
    bounds = np.arange(units + 1, dtype=np.int64)
    return (np.array(reads, np.int64), 2 * bounds, np.array(writes, np.int64), 3 * bounds)


def copy_file(source: Path, out: Path, per: int, block: int, units: int, base: int,
              digests: bytes) -> tuple[int, int]:
    """``copy_checked`` of ``units`` units of stored blocks of ``source`` into ``out``."""
    reads, read_bounds, writes, write_bounds = unit_plan(units, per, block, base)
    with open(source, "rb") as src, open(out, "wb") as dst:
        bad, short = batch.native.copy_checked(
            src.fileno(), dst.fileno(), block, bytearray(per * block), reads, read_bounds,
            digests, bytes(units * per), writes, write_bounds, np.zeros(1, np.int64),
            np.zeros(1, np.int64))
    return bad, short


def sha_digests(data: bytes, block: int) -> bytes:
    """The SHA-256/128 stored digest of each block of ``data``."""
    return b"".join(hashlib.sha256(data[i : i + block]).digest()[:16]
                    for i in range(0, len(data), block))


def test_the_c_copy_writes_the_bytes_it_checked_and_stops_at_a_flipped_bit(tmp_path):
    """Units read from the image in two parts each, checked, and written in parts that
    cross those reads: the output is the stored blocks; a bit flipped in a block is found
    at that block, and nothing of its unit or after it is written."""
    if getattr(batch.native, "copy_checked", None) is None:
        pytest.skip("the C extension is not built")
    block, per, units, base = 4096, 8, 5, 12288 + 100  # payloads not page-aligned
    data = np.random.default_rng(5).integers(0, 256, units * per * block, np.uint8).tobytes()
    source = tmp_path / "image"
    source.write_bytes(b"h" * base + data + b"t" * 50)
    digests = sha_digests(data, block)
    assert copy_file(source, tmp_path / "out", per, block, units, base, digests) == (-1, -1)
    assert (tmp_path / "out").read_bytes() == data
    damaged = bytearray(source.read_bytes())
    damaged[base + 19 * block + 77] ^= 0x10  # block 19: unit 2
    source.write_bytes(damaged)
    assert copy_file(source, tmp_path / "out", per, block, units, base, digests) == (19, -1)
    assert (tmp_path / "out").read_bytes() == data[: 2 * per * block]


def test_an_image_cut_during_the_c_copy_is_an_error_not_a_crash(tmp_path):
    """The image cut in the middle of a unit while the copy reads and checks it (once the
    unit before it is written): the copy reports the read that met the end, at that
    unit's first or second read or a later unit's (the cut came late), every unit written
    is whole and right, and none after it is.  Big units checked with SHA-256 keep the
    copy busy with each one a while."""
    if getattr(batch.native, "copy_checked", None) is None:
        pytest.skip("the C extension is not built")
    block, per, units, base = 4096, 1024, 8, 4096
    unit = per * block
    data = np.random.default_rng(6).integers(0, 256, units * unit, np.uint8).tobytes()
    digests = sha_digests(data, block)
    source, out = tmp_path / "image", tmp_path / "out"

    def cut_after(k: int) -> None:
        """Cut the image in the middle of unit k + 1 once unit k is written."""
        while not out.exists() or out.stat().st_size < (k + 1) * unit:
            time.sleep(0.0001)
        os.truncate(source, base + (k + 1) * unit + unit // 2)

    for k in range(units - 2):
        source.write_bytes(b"h" * base + data)
        out.unlink(missing_ok=True)
        cutter = threading.Thread(target=cut_after, args=(k,))
        cutter.start()
        bad, short = copy_file(source, out, per, block, units, base, digests)
        cutter.join()
        written = out.read_bytes()
        assert bad == -1
        assert len(written) % unit == 0
        if short >= 0:  # the unit after the last one written met the end
            assert short - base in (len(written), len(written) + unit // 2)
        else:  # the cut came after the copy
            assert len(written) == len(data)
        assert written == data[: len(written)]


@PATHS
def test_all_zero_blocks_stay_holes_in_a_fixed_vhd(tmp_path, monkeypatch, native):
    """The stored blocks are written, the all-zero ones are not: the fixed VHD holds the
    point's bytes and takes the room of its data blocks, not of its size."""
    require_tools("qemu-img")
    use(native, monkeypatch, 4096)
    data = np.random.default_rng(8).integers(0, 256, (1024, 4096), dtype=np.uint8)
    data[100:900] = 0  # 3.1 MiB of zeros between the data
    with Chain.create(tmp_path / "c") as chain:
        backup(chain, Volume.from_bytes(data.tobytes(), 4096), full=True)
    with Chain.open(tmp_path / "c") as chain:
        restored = restore(chain, 0, tmp_path / "point.raw")
        out = export(chain.disk(0), tmp_path / "out.vhd", "vhd-fixed")
    qemu_compare(restored, out, "vhd-fixed")
    assert out.stat().st_size == 1024 * 4096 + 512  # the disk, then the footer
    assert out.stat().st_blocks * 512 <= 224 * 4096 + 64 * 1024  # data blocks, footer page

"""System tests of VHD export, the FUSE-exposed disk.vhd and booting, through the real CLI.

Two bootable disks of deliberately odd sizes are each backed up twice with
``blockforensics backup`` (a full with boot marker "full", then an incremental
after changing files on the FAT partition and setting marker "incr"), into a
plaintext and an encrypted chain.  Every point is exported to both VHD kinds
and checked with qemu-img, libvhdi and dissect against the point restored by
``blockforensics restore``, then booted in QEMU, where the marker must appear.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from support import assert_independent_readers_read, mounted, require_tools, serving

from blockforensics.datasets.bootdisk import (
    DEFAULT_SIZE,
    MARKER_PREFIX,
    cached_boot_disk,
    set_boot_marker,
    write_fat_file,
)
from blockforensics.formats.vhd import VHD_BLOCK, chs_geometry, vhd_info

MiB = 1 << 20
SIZES = {"sample": DEFAULT_SIZE, "odd": 40 * MiB + 7 * 512}  # bytes; see test_sizes_are_odd
POINTS = {"full": 0, "incr": 1}  # boot marker -> point index in the chain
KINDS = ("dynamic", "fixed")
PASSPHRASE = b"correct horse battery staple\n"
BOOT_TIMEOUT = 90  # seconds; a boot takes about 7 s under TCG, two at once a little more
TOOLS = ("sfdisk", "mformat", "mcopy", "syslinux", "busybox", "qemu-img", "qemu-system-x86_64")


@dataclass(frozen=True)
class Case:
    """One chain point: which disk, plaintext or encrypted, which marker (= point)."""

    disk: str
    encrypted: bool
    marker: str

    @property
    def id(self) -> str:
        return f"{self.disk}-{'enc' if self.encrypted else 'plain'}-{self.marker}"

    @property
    def point(self) -> int:
        return POINTS[self.marker]


CASES = [Case(d, e, m) for d, e, m in product(SIZES, (False, True), POINTS)]


def bf_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "blockforensics.cli", *map(str, args)]


def bf(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the blockforensics command; its exit code, stdout and stderr."""
    return subprocess.run(bf_argv(*args), capture_output=True, text=True, timeout=timeout)


def bf_parallel(*argvs: list[object], timeout: float = 120
                ) -> list[subprocess.CompletedProcess[str]]:
    """Run several blockforensics commands at once (this machine has 2 cores); their results."""
    procs = [subprocess.Popen(bf_argv(*a), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for a in argvs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{done.args[3:]}: {done.stdout}{done.stderr}"
    return done


def qemu_img(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error message, checked to be one line, exit code 2, and no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blockforensics: error: "), done.stderr
    return lines[0]


@dataclass
class Chains:
    """The chains and restored points built once for this module."""

    work: Path
    key_file: Path

    def chain(self, case: Case) -> Path:
        return self.work / f"chain-{case.disk}-{'enc' if case.encrypted else 'plain'}"

    def key_args(self, case: Case) -> list[object]:
        return ["--key-file", self.key_file] if case.encrypted else []

    def restored(self, case: Case) -> Path:
        return self.work / f"restored-{case.id}.raw"


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Chains:
    """Both disks backed up (full, then incremental) into plain and encrypted chains; restored."""
    require_tools(*TOOLS)
    work = tmp_path_factory.mktemp("chains")
    built = Chains(work, work / "passphrase")
    built.key_file.write_bytes(PASSPHRASE)
    rng = np.random.default_rng(6)
    disks = {name: Path(shutil.copyfile(cached_boot_disk(size_bytes=size), work / f"{name}.img"))
             for name, size in SIZES.items()}
    for marker in POINTS:
        for disk in disks.values():
            if marker == "full":
                write_fat_file(disk, "DATA.BIN", rng.bytes(512 * 1024))
            else:  # change a file, add one, and the marker in syslinux.cfg
                write_fat_file(disk, "DATA.BIN", rng.bytes(1024 * 1024))
                write_fat_file(disk, "NOTES.TXT", b"changed after the full backup\n")
            set_boot_marker(disk, marker)
        cases = [c for c in CASES if c.marker == marker]
        for done in bf_parallel(*(["backup", disks[c.disk], built.chain(c), *built.key_args(c)]
                                  for c in cases)):
            ok(done)
    for done in bf_parallel(*(["restore", built.chain(c), built.restored(c), "--point", c.point,
                               *built.key_args(c)] for c in CASES)):
        ok(done)
    return built


@pytest.fixture(scope="module")
def export(chains: Chains, tmp_path_factory: pytest.TempPathFactory):
    """``export(case, kind)``: the point exported with ``blockforensics export`` (made once)."""
    out_dir = tmp_path_factory.mktemp("exports")
    made: dict[tuple[Case, str], Path] = {}

    def exported(case: Case, kind: str) -> Path:
        if (case, kind) not in made:
            path = out_dir / f"{case.id}-{kind}.vhd"
            ok(bf("export", chains.chain(case), path, "--point", case.point,
                  "--format", f"vhd-{kind}", *chains.key_args(case)))
            made[case, kind] = path
        return made[case, kind]

    return exported


def boot_args(disk: Path, marker: str) -> list[object]:
    return ["boot", disk, "--expect", f"{MARKER_PREFIX} {marker}", "--timeout", BOOT_TIMEOUT]


def assert_booted(done: subprocess.CompletedProcess[str], marker: str) -> None:
    assert done.returncode == 0, f"{done.args[3:]}: {done.stdout}{done.stderr}"
    assert f"{MARKER_PREFIX} {marker}" in done.stdout


# ------------------------------------------------------------------ the chains
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_sizes_are_odd(size: int) -> None:
    assert size % 512 == 0
    assert size % (2 * MiB) and size % (255 * 63 * 512) and size % 4096
    cylinders, heads, spt = chs_geometry(size // 512)
    assert cylinders * heads * spt * 512 != size  # a reader sizing by CHS would be wrong


@pytest.mark.parametrize("disk", SIZES)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "enc"])
def test_chain_is_full_then_incremental(chains: Chains, disk: str, encrypted: bool) -> None:
    case = Case(disk, encrypted, "full")
    listed = json.loads(ok(bf("list", chains.chain(case), "--json")).stdout)
    assert [p["kind"] for p in listed] == ["full", "incremental"]
    assert [p["encrypted"] for p in listed] == [encrypted] * 2
    assert listed[1]["blocks"] < listed[0]["blocks"] // 4  # only the changed blocks
    for marker in POINTS:
        restored = chains.restored(Case(disk, encrypted, marker))
        assert restored.stat().st_size == SIZES[disk]
        plain = chains.restored(Case(disk, False, marker))
        assert restored.read_bytes() == plain.read_bytes()  # encryption is transparent


# --------------------------------------------------------------------- exports
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_is_exact_for_qemu(chains: Chains, export, case: Case, kind: str) -> None:
    out = export(case, kind)
    restored = chains.restored(case)
    info = json.loads(ok(qemu_img("info", "-f", "vpc", "--output", "json", out)).stdout)
    assert info["virtual-size"] == SIZES[case.disk]
    compared = qemu_img("compare", "-f", "raw", "-F", "vpc", restored, out)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    checked = qemu_img("check", "-f", "vpc", out)
    no_checks = checked.returncode == 63 and "does not support checks" in checked.stderr
    assert checked.returncode == 0 or no_checks, checked.stdout + checked.stderr
    parsed = vhd_info(out)
    assert (parsed.kind, parsed.size) == (kind, SIZES[case.disk])
    if kind == "dynamic":  # far smaller than the disk: only blocks the backup holds
        assert parsed.allocated.size < parsed.bat.size
        assert out.stat().st_size < parsed.allocated.size * (VHD_BLOCK + 512) + 2 * MiB


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_reads_the_same_in_independent_readers(chains: Chains, export, case: Case,
                                                      kind: str) -> None:
    out = export(case, kind)
    data = chains.restored(case).read_bytes()
    assert_independent_readers_read(out, data)


@pytest.mark.parametrize("marker", POINTS)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "enc"])
def test_dynamic_export_boots(export, encrypted: bool, marker: str) -> None:
    """Both disks' exports of the point boot (two QEMUs at once) and show its marker."""
    cases = [Case(disk, encrypted, marker) for disk in SIZES]
    for done in bf_parallel(*(boot_args(export(c, "dynamic"), marker) for c in cases),
                            timeout=BOOT_TIMEOUT + 30):
        assert_booted(done, marker)


def test_fixed_export_boots(export) -> None:
    case = Case("odd", True, "incr")
    assert_booted(bf(*boot_args(export(case, "fixed"), case.marker), timeout=BOOT_TIMEOUT + 30),
                  case.marker)


# ------------------------------------------------------------- the FUSE mount
@pytest.mark.parametrize("case", [Case("sample", False, "full"), Case("odd", True, "incr")],
                         ids=lambda c: c.id)
def test_mounted_disk_vhd_is_the_point_and_boots(chains: Chains, case: Case,
                                                 tmp_path: Path) -> None:
    require_tools("fusermount3")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    disk_vhd = mountpoint / "disk.vhd"
    with serving(bf_argv("mount", chains.chain(case), mountpoint, "--point", case.point,
                         *chains.key_args(case)), mountpoint) as mount:
        compared = qemu_img("compare", "-f", "raw", "-F", "vpc", chains.restored(case), disk_vhd)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        assert_booted(bf(*boot_args(disk_vhd, case.marker), timeout=BOOT_TIMEOUT + 30),
                      case.marker)
    assert mount.proc.returncode == 0, mount.err
    assert "disk.vhd" in mount.out and "Traceback" not in mount.err
    assert not mounted(mountpoint)


# ----------------------------------------------------------------- error paths
def test_export_of_encrypted_chain_without_key(chains: Chains, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = bf("export", chains.chain(Case("odd", True, "incr")), out_dir / "x.vhd")
    assert "--key-file" in one_line_error(done)
    assert os.listdir(out_dir) == []  # no output, no temporary file


def test_export_with_wrong_key(chains: Chains, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the passphrase\n")
    done = bf("export", chains.chain(Case("odd", True, "incr")), out_dir / "x.vhd",
              "--key-file", wrong)
    assert "wrong key" in one_line_error(done)
    assert os.listdir(out_dir) == []


def test_boot_of_a_disk_that_does_not_boot(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-system-x86_64")
    zeros = tmp_path / "zeros.raw"
    with zeros.open("wb") as fh:
        fh.truncate(8 * MiB)
    started = time.monotonic()
    done = bf("boot", zeros, "--timeout", 15)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "not seen" in done.stdout and "console tail:" in done.stdout
    assert 15 <= time.monotonic() - started < 45


def test_mount_onto_a_file_is_refused(chains: Chains, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    done = bf("mount", chains.chain(Case("sample", False, "full")), not_a_dir)
    assert "not a directory" in one_line_error(done)
    assert not mounted(not_a_dir)


# ------------------------------------------- other formats, chains, NBD (issue 14)
def chain_digest(chain: Path) -> dict[str, str]:
    """SHA-256 of every file of a chain directory: the chain must not change."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(chain.iterdir())}


@pytest.mark.slow
def test_vhdx_vmdk_and_qcow2_chain_exports_boot(chains: Chains, tmp_path: Path) -> None:
    """The full as VHDX, the incremental as VMDK and as a qcow2 chain of two files (the
    middle of a chain: a base and a child holding only its image's clusters) boot."""
    plain = [Case("odd", False, "full"), Case("odd", False, "incr"), Case("odd", False, "incr")]
    outs = [tmp_path / "full.vhdx", tmp_path / "incr.vmdk", tmp_path / "incr.qcow2"]
    formats = ["vhdx", "vmdk", "qcow2-chain"]
    for case, out, fmt in zip(plain, outs, formats):
        ok(bf("export", chains.chain(case), out, "--point", case.point, "--format", fmt))
        compared = qemu_img("compare", "-f", "raw", chains.restored(case), out)
        assert compared.returncode == 0, compared.stdout + compared.stderr
    assert (tmp_path / "incr.point0.qcow2").is_file()
    for done, case in zip(bf_parallel(*(boot_args(out, c.marker) for c, out in
                                        zip(plain[1:], outs[1:])), timeout=BOOT_TIMEOUT + 30),
                          plain[1:]):
        assert_booted(done, case.marker)
    assert_booted(bf(*boot_args(outs[0], "full"), timeout=BOOT_TIMEOUT + 30), "full")


@pytest.mark.slow
@pytest.mark.parametrize("case", [Case("sample", False, "incr"), Case("odd", True, "full")],
                         ids=lambda c: c.id)
def test_boot_chain_point_over_nbd_leaves_the_chain_unchanged(chains: Chains, case: Case,
                                                             tmp_path: Path) -> None:
    """Booted straight from the chain over NBD, with a screenshot of the guest's display."""
    chain = chains.chain(case)
    before = chain_digest(chain)
    shot = tmp_path / "screen.png"
    done = bf("boot", chain, "--point", case.point, "--expect", f"{MARKER_PREFIX} {case.marker}",
              "--timeout", BOOT_TIMEOUT, "--json", "--screenshot", shot, *chains.key_args(case),
              timeout=BOOT_TIMEOUT + 30)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True and 0 < result["seconds_to_marker"] < BOOT_TIMEOUT
    assert f"{MARKER_PREFIX} {case.marker}" in result["console"]
    assert any(arg.startswith("file=") for arg in result["command"])
    assert result["screenshot"] == str(shot)
    from PIL import Image

    with Image.open(shot) as image:  # the BIOS and boot loader's text on a black screen
        assert image.format == "PNG" and image.size[0] >= 640
        assert np.asarray(image.convert("L")).max() > 128
    assert chain_digest(chain) == before


@pytest.mark.slow
def test_boot_json_says_when_the_marker_is_missing(chains: Chains) -> None:
    """A wrong marker: exit 1 and ok false (the guest powers off, so this is quick)."""
    case = Case("sample", False, "full")
    done = bf("boot", chains.chain(case), "--point", "0", "--expect", "NOT-THE-MARKER",
              "--timeout", BOOT_TIMEOUT, "--json", timeout=BOOT_TIMEOUT + 30)
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is False and result["seconds_to_marker"] is None
    assert f"{MARKER_PREFIX} full" in result["console"]


def test_serve_cli_is_the_point_until_sigterm(chains: Chains, tmp_path: Path) -> None:
    case = Case("odd", True, "incr")
    chain = chains.chain(case)
    before = chain_digest(chain)
    sock = tmp_path / "nbd.sock"
    proc = subprocess.Popen(bf_argv("serve", chain, "--point", case.point, "--socket", sock,
                                    *chains.key_args(case)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        url = f"nbd+unix:///?socket={sock}"
        compared = qemu_img("compare", "-f", "raw", "-F", "raw", chains.restored(case), url)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        info = json.loads(ok(qemu_img("info", "--output", "json", url)).stdout)
        assert info["virtual-size"] == SIZES[case.disk]
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert not sock.exists()
    assert chain_digest(chain) == before


def test_serve_bad_input(chains: Chains, tmp_path: Path) -> None:
    chain = chains.chain(Case("sample", False, "full"))
    assert "one of the arguments" in one_line_error(bf("serve", chain))
    taken = tmp_path / "taken.sock"
    taken.write_bytes(b"")
    assert "already exists" in one_line_error(bf("serve", chain, "--socket", taken))
    assert "no point 7" in one_line_error(bf("serve", chain, "--point", "7", "--socket",
                                             tmp_path / "s"))


@pytest.mark.slow
def test_differencing_vhd_chain_boots_through_our_reader(chains: Chains, tmp_path: Path) -> None:
    """QEMU's vpc driver ignores a differencing VHD's parent, so ``boot`` reads the chain
    of VHDs itself (parents by their locators) and serves it over NBD."""
    case = Case("sample", True, "incr")
    out = tmp_path / "incr.vhd"
    ok(bf("export", chains.chain(case), out, "--point", case.point, "--format", "vhd-chain",
          *chains.key_args(case)))
    assert vhd_info(out).kind == "differencing"
    assert vhd_info(tmp_path / "incr.point0.vhd").kind == "dynamic"
    assert_booted(bf(*boot_args(out, case.marker), timeout=BOOT_TIMEOUT + 30), case.marker)

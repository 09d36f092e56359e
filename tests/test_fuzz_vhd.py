"""Hostile VHDs cost no more than a clear error (issues 11 and 18).

Hypothesis mutates the footer, the dynamic header and the BAT of a small dynamic VHD
(checksums re-sealed, so the mutations reach the structure checks behind them), or
its raw bytes; reading it as a source (``export`` to raw, ``backup``) must end in
exit 0 (a valid disk), 1 or 2 with one line — never a traceback, a hang, or a read
past what the file holds.  Case counts are printed (run with ``-s``).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import run

from blockforensics.formats.raw import RawDisk
from blockforensics.formats.vhd import DynamicHeader, Footer, write_vhd

SIZES = [0, 1, 511, 512, 2 << 20, (2 << 20) + 512, 2**40, 2**63, 2**64 - 1]
FOOTER_FIELDS = {
    "current_size": st.sampled_from(SIZES), "original_size": st.sampled_from(SIZES),
    "data_offset": st.sampled_from([0, 512, 1536, 2**63, 2**64 - 1]),
    "disk_type": st.integers(0, 6), "cookie": st.sampled_from([b"conectix", b"xxxxxxxx"]),
    "cylinders": st.integers(0, 0xFFFF),
}
HEADER_FIELDS = {
    "table_offset": st.sampled_from([0, 512, 1536, 2**40, 2**63, 2**64 - 1]),
    "max_table_entries": st.sampled_from([0, 1, 3, 4, 5, 2**16, 2**32 - 1]),
    "block_size": st.sampled_from([0, 512, 4096, 2 << 20, 2**31, 2**32 - 1]),
    "cookie": st.sampled_from([b"cxsparse", b"yyyyyyyy"]),
}
mutations = st.one_of(
    st.sampled_from(sorted(FOOTER_FIELDS)).flatmap(
        lambda name: st.tuples(st.just("footer"), st.just(name), FOOTER_FIELDS[name])),
    st.sampled_from(sorted(HEADER_FIELDS)).flatmap(
        lambda name: st.tuples(st.just("header"), st.just(name), HEADER_FIELDS[name])),
    st.tuples(st.just("bat"), st.integers(0, 7),
              st.sampled_from([0, 1, 3, 2**20, 0xFFFFFFFE, 0xFFFFFFFF])),
    st.tuples(st.just("bytes"), st.integers(0, 2**24), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 2**24), st.just(b"")),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dynamic VHD of 7 MiB + 512 B with data in 3 of its 4 VHD blocks."""
    work = tmp_path_factory.mktemp("vhd")
    raw = work / "disk.raw"
    data = np.zeros((7 << 20) + 512, dtype=np.uint8)
    rng = np.random.default_rng(3)
    for start in (0, 2 << 20, 6 << 20):
        data[start : start + 70_000] = rng.integers(1, 256, 70_000, dtype=np.uint8)
    raw.write_bytes(data.tobytes())
    out = work / "disk.vhd"
    with RawDisk(raw) as disk:
        write_vhd(disk, out, kind="dynamic")
    return out


def _mutate(path: Path, kind: str, what: object, value: object) -> None:
    data = bytearray(path.read_bytes())
    if kind in ("bytes", "truncate"):
        at = int(what) % max(1, len(data))  # type: ignore[call-overload]
        data = data[:at] if kind == "truncate" else \
            data[:at] + bytes(value) + data[at + len(bytes(value)):]  # type: ignore[arg-type]
        path.write_bytes(bytes(data))
        return
    footer = Footer.unpack(bytes(data[-Footer.SIZE:]))
    at = footer.data_offset
    if kind == "footer":
        footer = footer.replace(**{str(what): value}).sealed()
        packed = footer.pack()
        data[-Footer.SIZE:] = packed
        data[: Footer.SIZE] = packed  # the copy at the start of a dynamic disk
    else:
        header = DynamicHeader.unpack(bytes(data[at : at + DynamicHeader.SIZE]))
        if kind == "header":
            data[at : at + DynamicHeader.SIZE] = \
                header.replace(**{str(what): value}).sealed().pack()
        else:  # one BAT entry (big-endian sector number)
            entry = header.table_offset + 4 * (int(what) % header.max_table_entries)  # type: ignore[call-overload]
            data[entry : entry + 4] = int(value).to_bytes(4, "big")  # type: ignore[call-overload]
    path.write_bytes(bytes(data))


def test_fuzz_vhd_footer_header_and_bat(template: Path) -> None:
    outcomes = {0: 0, 1: 0, 2: 0}
    with tempfile.TemporaryDirectory() as tmp:
        @settings(max_examples=120, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(mutations, min_size=1, max_size=3))
        def case(changes: list[tuple[str, object, object]]) -> None:
            source = Path(tmp) / "disk.vhd"
            shutil.copyfile(template, source)
            for kind, what, value in changes:
                with contextlib.suppress(Exception):  # an earlier change broke the layout
                    _mutate(source, kind, what, value)
            shutil.rmtree(Path(tmp) / "chain", ignore_errors=True)
            for command in (["export", source, Path(tmp) / "out.raw", "--format", "raw",
                             "--force"],
                            ["backup", source, Path(tmp) / "chain", "--all-blocks"]):
                outcomes[run(*command)[0]] += 1

        case()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"VHD footer/header/BAT fuzz: {sum(outcomes.values())} command runs, exit codes "
          f"{outcomes}, peak RSS {peak_mib:.0f} MiB")
    assert outcomes[2] > 0 and outcomes[0] > 0
    assert peak_mib < 1024  # no mutation made a read or an allocation of the claimed size

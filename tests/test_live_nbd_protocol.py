"""The NBD wire layouts against the spec's sizes and Linux's own header."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from blockforensics.nbd import protocol as p

LINUX_NBD_H = Path("/usr/include/linux/nbd.h")   # from linux-libc-dev (gcc's libc6-dev)


def test_layout_sizes_are_the_specs():
    assert p.HANDSHAKE.size == 18
    assert p.OPTION_HEADER.size == 16
    assert p.OPTION_REPLY_HEADER.size == 20
    assert p.REQUEST.size == 28
    assert p.SIMPLE_REPLY.size == 16
    assert p.STRUCTURED_REPLY.size == 20
    assert p.INFO_EXPORT.size == 12
    assert p.INFO_BLOCK_SIZE.size == 14
    assert p.BLOCK_DESCRIPTOR.size == p.BLOCK_DESCRIPTOR_DTYPE.itemsize == 8


def test_magics_spell_their_names():
    greeting = p.HANDSHAKE.pack(p.NBDMAGIC, p.IHAVEOPT, p.NBD_FLAG_FIXED_NEWSTYLE)
    assert greeting[:16] == b"NBDMAGICIHAVEOPT"
    assert p.pack_option(p.NBD_OPT_GO)[:8] == b"IHAVEOPT"


def test_magics_and_flags_match_linux_header():
    if not LINUX_NBD_H.exists():
        pytest.skip(f"{LINUX_NBD_H} missing (Debian: linux-libc-dev)")
    text = LINUX_NBD_H.read_text()
    defines = {name: int(hexa, 16) if hexa else 1 << int(shift) for name, hexa, shift
               in re.findall(r"#define\s+(NBD_\w+)\s+(?:0x([0-9a-fA-F]+)|\(1 << (\d+)\))", text)}
    for name in ("NBD_REQUEST_MAGIC", "NBD_FLAG_HAS_FLAGS", "NBD_FLAG_READ_ONLY",
                 "NBD_FLAG_SEND_FLUSH", "NBD_FLAG_SEND_TRIM", "NBD_FLAG_CAN_MULTI_CONN"):
        assert getattr(p, name) == defines[name], name
    assert defines["NBD_REPLY_MAGIC"] == p.NBD_SIMPLE_REPLY_MAGIC


def test_strings_and_queries_round_trip():
    data = p.pack_meta_queries("disk", [p.BASE_ALLOCATION, p.QEMU_DIRTY_BITMAP + "b0"])
    export, at = p.unpack_string(data)
    assert export == "disk"
    (count,) = p.META_QUERIES.unpack_from(data, at)
    first, at = p.unpack_string(data, at + 4)
    second, at = p.unpack_string(data, at)
    assert (count, first, second, at) == (2, "base:allocation", "qemu:dirty-bitmap:b0", len(data))


def test_block_status_descriptors_parse_vectorised():
    payload = (p.BLOCK_STATUS.pack(7) + p.BLOCK_DESCRIPTOR.pack(4096, 1)
               + p.BLOCK_DESCRIPTOR.pack(8192, 0))
    context, desc = p.unpack_descriptors(payload)
    assert context == 7
    assert desc["length"].tolist() == [4096, 8192]
    assert np.array_equal(desc["flags"], [1, 0])
    with pytest.raises(ValueError):
        p.unpack_descriptors(payload[:-1])

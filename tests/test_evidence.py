"""Judging one file's change (``evidence.judge``) on the formats an operating system
rewrites as it runs: a mailbox store that receives attachments, update packages,
compressed Prefetch files, memory files — never suspected; the same files encrypted
— suspected.  Contents are made here, shaped as the formats' first bytes say."""

from __future__ import annotations

import numpy as np
import pytest

from blockforensics.evidence import ByteStats, content_type, judge

RNG = np.random.default_rng(3)
TEXT = b"".join(b"line %05d of an ordinary mailbox or log record\n" % i for i in range(2000))


def _stats(data: bytes) -> ByteStats:
    stats = ByteStats()
    stats.update(data)
    return stats.finish()


def _judge(path: str, before: bytes | None, after: bytes, old_path: str | None = None):
    return judge(path, old_path if before is not None else None,
                 None if before is None else _stats(before), _stats(after),
                 None if before is None else content_type(before), content_type(after))


def _with_attachments(store: bytes) -> bytes:
    """``store`` with random (compressed) attachments written into its middle."""
    return store[:30_000] + RNG.bytes(40_000) + store[30_000:]


SIGNED = {  # path -> (the format's first bytes, its body before: text-like)
    "/Users/u/AppData/Local/Microsoft/Outlook/u.ost": b"!BDN" + TEXT,
    "/Users/u/Documents/archive.pst": b"!BDN" + TEXT,
    "/Windows/SoftwareDistribution/Download/kb5031354.cab": b"MSCF\0\0\0\0" + TEXT,
    "/sources/install.esd": b"MSWIM\0\0\0" + TEXT,
    "/home/u/Videos/talk.mkv": b"\x1a\x45\xdf\xa3" + TEXT,
}


@pytest.mark.parametrize("path", SIGNED)
def test_packed_formats_receiving_random_bytes_are_not_suspected(path: str) -> None:
    before = SIGNED[path]
    judged = _judge(path, before, _with_attachments(before), path)
    assert not judged.suspected, judged.evidence
    assert judged.explained


@pytest.mark.parametrize("path", SIGNED)
def test_the_same_files_encrypted_are_suspected(path: str) -> None:
    before = SIGNED[path]
    judged = _judge(path, before, RNG.bytes(len(before)), path)
    assert judged.suspected, judged.evidence


@pytest.mark.parametrize("path", ["/pagefile.sys", "p3:/hiberfil.sys", "p2:/swapfile.sys",
                                  "/Windows/MEMORY.DMP", "/swap.img",
                                  "/System Volume Information/{0b9f4a4e-53c0-4b9e-8a2c-6f2d3e1a"
                                  "4b5c}{3808876b-c176-4e48-b7ae-04046e6cc752}"])
def test_memory_and_shadow_copy_files_are_never_judged(path: str) -> None:
    judged = _judge(path, bytes(200_000), RNG.bytes(200_000), path)
    assert not judged.suspected and judged.explained
    assert judged.evidence[0].startswith("an operating system's paging")


def test_a_sys_file_elsewhere_is_still_judged() -> None:
    judged = _judge("/Users/u/Documents/pagefile.sys", TEXT, RNG.bytes(len(TEXT)),
                    "/Users/u/Documents/pagefile.sys")
    assert judged.suspected


def test_a_windows_10_prefetch_file_rewritten_is_not_suspected() -> None:
    path = "/Windows/Prefetch/NOTEPAD.EXE-D8414F97.pf"
    judged = _judge(path, b"MAM\x04" + RNG.bytes(20_000), b"MAM\x04" + RNG.bytes(24_000), path)
    assert not judged.suspected, judged.evidence

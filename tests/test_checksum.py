"""CRC-32C as the specifications define it: RFC 3720's test vectors (iSCSI, appendix
B.4), the check value of the Castagnoli polynomial, and the bitwise definition on
random data of every length up to a few blocks."""

from __future__ import annotations

import numpy as np
import pytest

from blockforensics.checksum import crc32c


def bitwise_crc32c(data: bytes) -> int:
    """The definition: reflected polynomial 0x82F63B78, initial and final XOR 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(("data", "value"), [
    (b"123456789", 0xE3069283), (bytes(32), 0x8A9136AA), (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E), (bytes(range(31, -1, -1)), 0x113FDB5C), (b"", 0)])
def test_known_values(data: bytes, value: int) -> None:
    assert crc32c(data) == value == bitwise_crc32c(data)


def test_random_data_of_many_lengths() -> None:
    rng = np.random.default_rng(32)
    for length in (*range(0, 70), 511, 4096, 16384 + 3):
        data = rng.bytes(length)
        assert crc32c(data) == bitwise_crc32c(data), length
        assert crc32c(memoryview(data)) == crc32c(bytearray(data))

"""Per-block authenticated encryption with one key per chain.

A chain's *master key* is 32 bytes: read from a key file that holds exactly 32
bytes, or derived with scrypt from a passphrase (any other key-file content;
salt and cost parameters live in every image header).  Key files are read up to
``MAX_KEY_FILE`` bytes (``/dev/zero`` is refused, not read until memory runs
out; a pipe such as ``<(pass show backup)`` is read, a FIFO nothing writes to is
refused after ``KEY_PIPE_WAIT`` seconds); scrypt parameters read from a header are
bounded (``check_scrypt``).  HKDF-SHA-256 turns it into four independent subkeys:

- ``enc``: AES-256-GCM, a fresh random 96-bit nonce per block; the associated
  data binds a ciphertext to its chain (volume id), its block position and its
  storage flags, so a block moved to another position or chain fails to
  authenticate;
- ``mac``: the *content digest* of each plaintext block used for change
  detection, AES-256(mac, SHA-256/128(block)) — a keyed pseudo-random function
  of the block, so the index leaks no plaintext digest; one AES call digests a
  whole batch, so it costs little more than the SHA-256 itself;
- ``check``: the header's key check value, so a wrong key is refused up front;
- ``point``: the keyed digest of a whole point (``point_mac``), so a block rolled
  back to an older version of itself, or a record removed, is refused.

Keys and passphrases live only in memory; nothing here writes or prints them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import select
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blockforensics import batch
from blockforensics.errors import CryptoKeyError, FormatError, UsageError
from blockforensics.image.format import NONCE_SIZE, TAG_SIZE

KEY_SIZE = 32
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1  # about 32 MiB and 0.1 s per derivation
MAX_KEY_FILE = 4096  # bytes read from a key file at most
#: seconds a key file that is a pipe or FIFO (``--key-file <(pass show backup)``) may take
#: to deliver its first bytes; a FIFO nobody writes to would block for ever
KEY_PIPE_WAIT = 10.0
#: bounds on scrypt parameters from a header: 16 times the default work, 256 MiB
SCRYPT_MAX_WORK = 16 * SCRYPT_N * SCRYPT_R * SCRYPT_P  # N * r * p
SCRYPT_MAX_MEMORY = 256 << 20  # 128 * N * r bytes
_AAD = struct.Struct("<16sQI")  # volume id, block position, storage flags
_POINT = struct.Struct("<16s16sqQI")  # volume id, image id, created_ns, volume size, block size


def _read_key_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """Up to ``limit`` bytes of ``path``.  A pipe or FIFO is read until its writer closes
    it; TimeoutError if ``KEY_PIPE_WAIT`` seconds pass without a byte or its end (Linux
    reports neither for a FIFO no writer has opened)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, writer or not
    try:
        pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
        os.set_blocking(fd, not pipe)
        waiting = select.poll()
        waiting.register(fd, select.POLLIN)
        deadline = time.monotonic() + KEY_PIPE_WAIT
        chunks: list[bytes] = []
        got = 0
        while got < limit:
            if pipe and not waiting.poll(max(0.0, deadline - time.monotonic()) * 1000):
                raise TimeoutError(path)
            chunk = os.read(fd, limit - got)
            if not chunk:  # the end of the file, or the writer closed the pipe
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class KeySource:
    """What a key file holds: a raw 32-byte key, or a passphrase to stretch."""

    raw_key: bytes | None = field(default=None, repr=False)
    passphrase: bytes | None = field(default=None, repr=False)
    #: master keys stretched from the passphrase, by KDF parameters: scrypt runs once per
    #: chain and process (a new chain's first backup needs the key twice), ~0.15 s each
    _stretched: dict[KdfParams, bytes] = field(default_factory=dict, repr=False,
                                               compare=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeySource:
        """Read a key file: exactly 32 bytes is a raw key, anything else a passphrase
        (trailing newlines dropped); at most ``MAX_KEY_FILE`` bytes."""
        try:
            data = _read_key_file(path, MAX_KEY_FILE + 1)
        except TimeoutError:
            raise UsageError(f"{path}: cannot read key file (a FIFO nothing wrote to within "
                             f"{KEY_PIPE_WAIT:g} s)") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read key file ({exc.strerror or exc})") from exc
        if len(data) > MAX_KEY_FILE:
            raise UsageError(f"{path}: key file larger than {MAX_KEY_FILE} bytes (a key file "
                             f"holds {KEY_SIZE} raw bytes or a passphrase)")
        if len(data) == KEY_SIZE:
            return cls(raw_key=data)
        passphrase = data.rstrip(b"\r\n")
        if not passphrase:
            raise UsageError(f"{path}: key file is empty")
        return cls(passphrase=passphrase)

    def master_for(self, params: KdfParams) -> bytes:
        """The 32-byte master key for a chain whose header says ``params``.

        A raw-key chain takes the key file's 32 bytes — also from a file holding them
        plus a newline; any other passphrase is refused there.  A passphrase chain
        stretches the file's content with the header's (bounded) scrypt parameters."""
        from blockforensics.image.format import KDF_RAW_KEY, KDF_SCRYPT

        if params.kdf == KDF_RAW_KEY:
            if self.raw_key is not None:
                return self.raw_key
            assert self.passphrase is not None
            if len(self.passphrase) == KEY_SIZE:  # 32 raw bytes and a newline
                return self.passphrase
            raise CryptoKeyError(f"the chain is encrypted with a raw {KEY_SIZE}-byte key; "
                                 f"this key file holds a {len(self.passphrase)}-byte "
                                 "passphrase")
        if params.kdf != KDF_SCRYPT:
            raise FormatError(f"unknown key derivation {params.kdf} in the image header")
        check_scrypt(params)
        if params not in self._stretched:
            secret = self.passphrase if self.passphrase is not None else self.raw_key
            assert secret is not None
            self._stretched[params] = hashlib.scrypt(
                secret, salt=params.salt, n=params.n, r=params.r, p=params.p, dklen=KEY_SIZE,
                maxmem=256 * params.n * params.r + (1 << 20))
        return self._stretched[params]

    @classmethod
    def generate_file(cls, path: str | os.PathLike[str]) -> Path:
        """Write a new random 32-byte key file readable only by its owner."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(KEY_SIZE))
        return path

    def __repr__(self) -> str:
        return "KeySource(raw key)" if self.raw_key is not None else "KeySource(passphrase)"


@dataclass(frozen=True)
class KdfParams:
    """How the master key is obtained; stored in every image header."""

    kdf: int  # format.KDF_RAW_KEY or format.KDF_SCRYPT
    salt: bytes = bytes(16)
    n: int = 0
    r: int = 0
    p: int = 0

    @classmethod
    def for_source(cls, source: KeySource) -> KdfParams:
        from blockforensics.image.format import KDF_RAW_KEY, KDF_SCRYPT

        if source.raw_key is not None:
            return cls(KDF_RAW_KEY)
        return cls(KDF_SCRYPT, os.urandom(16), SCRYPT_N, SCRYPT_R, SCRYPT_P)


def check_scrypt(params: KdfParams) -> None:
    """FormatError unless a header's scrypt parameters are sane and bounded: N a power
    of two >= 2, r and p >= 1, N*r*p at most 16 times the default work, 128*N*r bytes
    at most 256 MiB (a hostile header must not buy minutes of CPU or gigabytes)."""
    n, r, p = params.n, params.r, params.p
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or n * r * p > SCRYPT_MAX_WORK \
            or 128 * n * r > SCRYPT_MAX_MEMORY:
        raise FormatError(f"scrypt parameters N={n} r={r} p={p} in the image header are "
                          "out of bounds (damaged or hostile header)")


class ChainKeys:
    """The subkeys of one chain (one volume id) and the per-block operations.

    ``cryptography`` is imported here, on first use, so that commands on plaintext
    chains do not pay for loading it.
    """

    def __init__(self, master: bytes, volume_id: bytes):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(master) != KEY_SIZE:
            raise ValueError("master key must be 32 bytes")
        self.volume_id = volume_id
        enc, mac, check, point = (self._subkey(master, volume_id, label)
                                  for label in (b"enc", b"mac", b"check", b"point"))
        self._point = point
        self._enc_key = enc  # for the C extension's batch encryption
        self._aead = AESGCM(enc)
        self._digest_cipher = Cipher(algorithms.AES(mac), modes.ECB())  # 16-byte PRP
        self.key_check = hmac.new(check, b"blockforensics key check" + volume_id,
                                  hashlib.sha256).digest()

    @staticmethod
    def _subkey(master: bytes, volume_id: bytes, label: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(hashes.SHA256(), KEY_SIZE, salt=volume_id,
                    info=b"blockforensics " + label).derive(master)

    @classmethod
    def derive(cls, source: KeySource, params: KdfParams, volume_id: bytes) -> ChainKeys:
        """Master key from the key source and the header's KDF parameters."""
        return cls(source.master_for(params), volume_id)

    def check(self, expected: bytes, where: str) -> None:
        """CryptoKeyError unless these keys produce the header's key check value."""
        if not hmac.compare_digest(self.key_check, expected):
            raise CryptoKeyError(f"{where}: wrong key")

    def content_digests(self, plain_digests: np.ndarray) -> np.ndarray:
        """Keyed content digests from the ``(k, 16)`` SHA-256/128 digests of plaintext
        blocks: each one enciphered under the mac key (AES-256 on one 16-byte block)."""
        encryptor = self._digest_cipher.encryptor()
        raw = encryptor.update(np.ascontiguousarray(plain_digests, np.uint8).tobytes())
        return np.frombuffer(raw + encryptor.finalize(), np.uint8).reshape(-1, 16)

    def point_mac(self, image_id: bytes, created_ns: int, volume_size: int, block_size: int,
                  digests: Iterable[np.ndarray]) -> bytes:
        """Keyed digest of a whole point: its identity and the content digest of every
        block in order (absent blocks: the zero block's), given as consecutive
        ``(k, 16)`` pieces so that no volume-sized array is needed.  Consolidation copies
        it with the image header, so it survives without the key; a block rolled back to
        an older version, or a record removed, changes it."""
        state = hmac.new(self._point, _POINT.pack(self.volume_id, image_id, created_ns,
                                                  volume_size, block_size), hashlib.sha256)
        for piece in digests:
            state.update(np.ascontiguousarray(piece, dtype=np.uint8).data)
        return state.digest()

    def seal(self, generation: int, points: list[tuple[bytes, bytes]]) -> bytes:
        """Keyed digest of a chain's manifest: the switch ``generation`` it was made at and
        the ordered ``(image id, point_mac)`` of every point sealed so far, so dropping,
        reordering or swapping points — or lowering the generation — is seen."""
        state = hmac.new(self._point, b"blockforensics manifest seal" + self.volume_id
                         + struct.pack("<QI", generation, len(points)), hashlib.sha256)
        for image_id, point_mac in points:
            state.update(image_id + point_mac)
        return state.digest()

    def encrypt(self, position: int, flags: int, plaintext: bytes | memoryview, nonce: bytes
                ) -> bytes:
        """``nonce || ciphertext || tag`` bound to (chain, position, flags)."""
        aad = _AAD.pack(self.volume_id, position, flags)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def encrypt_rows(self, positions: np.ndarray, flags: int, blocks: np.ndarray) -> np.ndarray:
        """Encrypt equal-sized blocks at once: a ``(k, NONCE_SIZE + block + TAG_SIZE)``
        array of ``nonce || ciphertext || tag`` rows, as :meth:`encrypt` makes them."""
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        k, size = blocks.shape
        starts = np.arange(k, dtype=np.int64) * size
        sealed, _ = self.encrypt_spans(positions, flags, blocks.reshape(-1), starts,
                                       np.full(k, size, np.int64))
        return sealed.reshape(k, NONCE_SIZE + size + TAG_SIZE)

    def encrypt_spans(self, positions: np.ndarray, flags: np.ndarray | int, data: np.ndarray,
                      starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encrypt the plaintexts ``data[starts[i] : starts[i] + lengths[i]]`` (bytes) at
        once, each as :meth:`encrypt` would: ``(sealed, sealed_starts)``, the
        ``nonce || ciphertext || tag`` payloads back to back in order.

        With the C extension the batch is sealed by libcrypto on a thread per core;
        without it, one ``cryptography`` call per span, written in place (no joins)."""
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        k = len(starts)
        sealed_lengths = lengths + NONCE_SIZE + TAG_SIZE
        to = np.zeros(k, np.int64)
        np.cumsum(sealed_lengths[:-1], out=to[1:])
        out = np.empty(int(sealed_lengths.sum()), dtype=np.uint8)
        nonces = np.frombuffer(os.urandom(NONCE_SIZE * k), np.uint8).reshape(k, NONCE_SIZE)
        aads = self._aad_rows(positions, flags)
        if batch.native is not None:
            batch.run(lambda part: batch.native.aes256gcm_seal_spans(
                self._enc_key, nonces[part], aads[part], data, starts[part], lengths[part],
                out, to[part]), batch.parts(lengths))
            return out, to
        encrypt_into = self._aead.encrypt_into
        for i in range(k):
            at, n = int(to[i]), int(lengths[i])
            out[at : at + NONCE_SIZE] = nonces[i]
            encrypt_into(nonces[i].tobytes(), data[int(starts[i]) : int(starts[i]) + n],
                         aads[i].tobytes(), out[at + NONCE_SIZE : at + NONCE_SIZE + n + TAG_SIZE])
        return out, to

    def decrypt_rows(self, positions: np.ndarray, flags: np.ndarray | int, sealed: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Open equal-sized ``nonce || ciphertext || tag`` rows at once: the ``(k, block)``
        plaintexts and a bool per row, False where it fails authentication (altered,
        moved or foreign; its plaintext row is zeros)."""
        sealed = np.ascontiguousarray(sealed, dtype=np.uint8)
        k, length = sealed.shape
        out, _, ok = self.decrypt_spans(positions, flags, sealed.reshape(-1),
                                        np.arange(k, dtype=np.int64) * length,
                                        np.full(k, length, np.int64))
        return out.reshape(k, length - NONCE_SIZE - TAG_SIZE), ok

    def decrypt_spans(self, positions: np.ndarray, flags: np.ndarray | int, sealed: np.ndarray,
                      starts: np.ndarray, lengths: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open the payloads ``sealed[starts[i] : starts[i] + lengths[i]]`` (each
        ``nonce || ciphertext || tag``, at least 28 bytes) at once: ``(plain,
        plain_starts, ok)``, the plaintexts back to back in order and a bool per span,
        False where it fails authentication (altered, moved or foreign: zeros)."""
        sealed = np.ascontiguousarray(sealed, dtype=np.uint8).reshape(-1)
        starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        k = len(starts)
        plain_lengths = lengths - NONCE_SIZE - TAG_SIZE
        to = np.zeros(k, np.int64)
        np.cumsum(plain_lengths[:-1], out=to[1:])
        out = np.zeros(int(plain_lengths.sum()), dtype=np.uint8)
        ok = np.zeros(k, dtype=bool)
        aads = self._aad_rows(positions, flags)
        if batch.native is not None:
            batch.run(lambda part: batch.native.aes256gcm_open_spans(
                self._enc_key, aads[part], sealed, starts[part], lengths[part], out, to[part],
                ok.view(np.uint8)[part]), batch.parts(lengths))
            return out, to, ok
        for i in range(k):
            at, begin = int(to[i]), int(starts[i])
            plain = self._open(sealed[begin : begin + int(lengths[i])].tobytes(),
                               aads[i].tobytes())
            if plain is not None:
                out[at : at + len(plain)], ok[i] = np.frombuffer(plain, np.uint8), True
        return out, to, ok

    def _aad_rows(self, positions: np.ndarray, flags: np.ndarray | int) -> np.ndarray:
        """The associated data of every block, ``_AAD``-packed, as a ``(k, 28)`` array."""
        aad = np.zeros(len(positions),
                       dtype=[("volume", "S16"), ("position", "<u8"), ("flags", "<u4")])
        aad["volume"], aad["position"], aad["flags"] = self.volume_id, positions, flags
        return aad.view(np.uint8).reshape(len(positions), _AAD.size)

    def decrypt(self, position: int, flags: int, payload: bytes) -> bytes | None:
        """The plaintext, or None when the payload was altered, moved or foreign."""
        return self._open(payload, _AAD.pack(self.volume_id, position, flags))

    def _open(self, payload: bytes, aad: bytes) -> bytes | None:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(payload[:NONCE_SIZE], payload[NONCE_SIZE:], aad)
        except InvalidTag:
            return None

"""Types of the C extension ``_native`` (blockforensics/_native.c): batch SHA-256, CRC-32 and
AES-256-GCM over contiguous buffers, the data runs of a copy buffer (all-zero blocks left
out), LZNT1 decompression, Linux's sync_file_range, and the checked copy of a batch of
stored blocks from one file to another (read, digests checked, written), run without the GIL.
Every buffer argument is bytes, memoryview or a C-contiguous numpy array; ``out`` and
``ok`` are written."""

from typing import TypeAlias

import numpy as np
from typing_extensions import Buffer

_Bytes: TypeAlias = Buffer | np.ndarray

def sha256_spans(data: _Bytes, offsets: _Bytes, lengths: _Bytes, out: _Bytes, /) -> None: ...
def crc32_spans(data: _Bytes, offsets: _Bytes, lengths: _Bytes, out: _Bytes, /) -> None: ...
def aes256gcm_seal_spans(key: _Bytes, nonces: _Bytes, aads: _Bytes, data: _Bytes,
                         offsets: _Bytes, lengths: _Bytes, out: _Bytes,
                         out_offsets: _Bytes, /) -> None: ...
def aes256gcm_open_spans(key: _Bytes, aads: _Bytes, sealed: _Bytes, offsets: _Bytes,
                         lengths: _Bytes, out: _Bytes, out_offsets: _Bytes,
                         ok: _Bytes, /) -> None: ...

SYNC_FILE_RANGE_WAIT_BEFORE: int
SYNC_FILE_RANGE_WRITE: int
SYNC_FILE_RANGE_WAIT_AFTER: int

def sync_file_range(fd: int, offset: int, nbytes: int, flags: int, /) -> None: ...

def nonzero_runs(data: _Bytes, block: int, out: _Bytes, /) -> int: ...

def lznt1_decompress(data: _Bytes, out: _Bytes, /) -> int: ...

def copy_checked(src_fd: int, dst_fd: int, block: int, unit: _Bytes, reads: _Bytes,
                 read_bounds: _Bytes, digests: _Bytes, crc: _Bytes, writes: _Bytes,
                 write_bounds: _Bytes, next: _Bytes, stop: _Bytes,
                 /) -> tuple[int, int]: ...

"""NBD wire protocol: constants and fixed layouts, declared once with the spec's names.

Source: the NBD protocol specification (``doc/proto.md`` of the NetworkBlockDevice
project), fixed newstyle negotiation, structured replies and block-status chunks,
and QEMU's ``docs/interop/nbd.txt`` for the ``qemu:dirty-bitmap:NAME`` context.
All integers on the wire are big-endian.  Both the client (:mod:`.client`) and
servers written in this project import these names; nothing here does I/O.

Negotiation (fixed newstyle)::

    S: NBDMAGIC IHAVEOPT handshake-flags(16)          -> HANDSHAKE
    C: client-flags(32)                               -> CLIENT_FLAGS
    C: IHAVEOPT option(32) length(32) data            -> OPTION_HEADER
    S: REPLY_MAGIC option(32) reply-type(32) length(32) data  -> OPTION_REPLY_HEADER

Transmission::

    C: REQUEST_MAGIC flags(16) type(16) cookie(64) offset(64) length(32)  -> REQUEST
    S: SIMPLE_REPLY_MAGIC error(32) cookie(64) [data]                     -> SIMPLE_REPLY
    S: STRUCTURED_REPLY_MAGIC flags(16) type(16) cookie(64) length(32) payload
                                                                          -> STRUCTURED_REPLY
"""

from __future__ import annotations

import struct

import numpy as np

# --- magics -----------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943                 # b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054                 # b"IHAVEOPT" (also the option magic)
CLISERV_MAGIC = 0x00420281861253              # oldstyle negotiation (not served here)
NBD_REP_MAGIC = 0x0003E889045565A9            # option replies
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF

# --- handshake flags (server, 16 bits) and client flags (32 bits) --------------------
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

# --- transmission flags (16 bits, per export) ---------------------------------------
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_RESIZE = 1 << 9
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11

# --- options ------------------------------------------------------------------------
NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10

# --- option reply types (errors have bit 31 set) -------------------------------------
NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4
NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7
NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8
NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9

# --- NBD_REP_INFO types -----------------------------------------------------------------
NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# --- commands and command flags ------------------------------------------------------
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7

NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4

# --- structured reply chunks -----------------------------------------------------------
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) | 1
NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2

# --- error values (the spec's own numbering, equal to Linux errno) -------------------
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

# --- metadata contexts and their status bits -----------------------------------------
BASE_ALLOCATION = "base:allocation"
NBD_STATE_HOLE = 1 << 0          # base:allocation: not allocated
NBD_STATE_ZERO = 1 << 1          # base:allocation: reads as zeros
QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:"   # + bitmap name
NBD_STATE_DIRTY = 1 << 0         # qemu:dirty-bitmap:NAME: the extent is dirty

# --- fixed layouts ------------------------------------------------------------------
#: server greeting: NBDMAGIC, IHAVEOPT, handshake flags
HANDSHAKE = struct.Struct(">QQH")
#: the client's answer to the greeting
CLIENT_FLAGS = struct.Struct(">I")
#: an option request header: IHAVEOPT, option, length of the data that follows
OPTION_HEADER = struct.Struct(">QII")
#: an option reply header: NBD_REP_MAGIC, option, reply type, length of the data
OPTION_REPLY_HEADER = struct.Struct(">QIII")
#: the server's answer to NBD_OPT_EXPORT_NAME: size, transmission flags (then 124
#: zero bytes unless both sides set NO_ZEROES)
EXPORT_NAME_REPLY = struct.Struct(">QH")
EXPORT_NAME_ZEROES = 124
#: a length-prefixed string (export name, context query): its 32-bit length
STRING_LENGTH = struct.Struct(">I")
#: NBD_OPT_GO / NBD_OPT_INFO: number of information requests, then 16-bit each
INFO_REQUESTS = struct.Struct(">H")
INFO_REQUEST = struct.Struct(">H")
#: NBD_REP_INFO payloads
INFO_EXPORT = struct.Struct(">HQH")           # NBD_INFO_EXPORT, size, transmission flags
INFO_BLOCK_SIZE = struct.Struct(">HIII")      # NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum
INFO_TYPE = struct.Struct(">H")               # the type that starts every NBD_REP_INFO
#: NBD_OPT_(SET|LIST)_META_CONTEXT: export name (STRING_LENGTH + bytes), number of
#: queries, then each query as STRING_LENGTH + bytes
META_QUERIES = struct.Struct(">I")
#: NBD_REP_META_CONTEXT payload: context id, then the context name (rest of the data)
META_CONTEXT_ID = struct.Struct(">I")
#: a transmission request
REQUEST = struct.Struct(">IHHQQI")            # magic, flags, type, cookie, offset, length
#: a simple reply (the data of a read follows)
SIMPLE_REPLY = struct.Struct(">IIQ")          # magic, error, cookie
#: a structured reply chunk header (payload of ``length`` bytes follows)
STRUCTURED_REPLY = struct.Struct(">IHHQI")    # magic, flags, type, cookie, length
#: NBD_REPLY_TYPE_OFFSET_DATA: offset, then the data
OFFSET_DATA = struct.Struct(">Q")
#: NBD_REPLY_TYPE_OFFSET_HOLE: offset, hole size
OFFSET_HOLE = struct.Struct(">QI")
#: NBD_REPLY_TYPE_BLOCK_STATUS: context id, then BLOCK_DESCRIPTOR entries
BLOCK_STATUS = struct.Struct(">I")
BLOCK_DESCRIPTOR = struct.Struct(">II")       # extent length, status flags
#: the descriptors of a block-status chunk as one numpy array (vectorised parsing)
BLOCK_DESCRIPTOR_DTYPE = np.dtype([("length", ">u4"), ("flags", ">u4")])
#: NBD_REPLY_TYPE_ERROR: error, message length, message; ERROR_OFFSET adds an offset
ERROR_CHUNK = struct.Struct(">IH")
ERROR_OFFSET = struct.Struct(">Q")

#: the largest request payload servers must accept (32 MiB); QEMU's limit as well
NBD_MAX_BUFFER_SIZE = 32 * 1024 * 1024


def pack_string(text: str | bytes) -> bytes:
    """A 32-bit length then the UTF-8 bytes, as export names and queries travel."""
    raw = text.encode() if isinstance(text, str) else text
    return STRING_LENGTH.pack(len(raw)) + raw


def unpack_string(data: bytes | memoryview, offset: int = 0) -> tuple[str, int]:
    """The length-prefixed string at ``offset`` and the offset just past it."""
    (length,) = STRING_LENGTH.unpack_from(data, offset)
    start = offset + STRING_LENGTH.size
    return bytes(data[start : start + length]).decode(), start + length


def pack_option(option: int, data: bytes = b"") -> bytes:
    """An option request: header then data."""
    return OPTION_HEADER.pack(IHAVEOPT, option, len(data)) + data


def pack_option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    """An option reply: header then data."""
    return OPTION_REPLY_HEADER.pack(NBD_REP_MAGIC, option, reply_type, len(data)) + data


def pack_meta_queries(export: str, queries: list[str]) -> bytes:
    """The data of NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT."""
    return (pack_string(export) + META_QUERIES.pack(len(queries))
            + b"".join(pack_string(q) for q in queries))


def pack_go(export: str, infos: list[int]) -> bytes:
    """The data of NBD_OPT_GO / NBD_OPT_INFO."""
    return (pack_string(export) + INFO_REQUESTS.pack(len(infos))
            + b"".join(INFO_REQUEST.pack(i) for i in infos))


def unpack_descriptors(payload: bytes | memoryview) -> tuple[int, np.ndarray]:
    """A block-status chunk's context id and its descriptors (``length``, ``flags``)."""
    (context,) = BLOCK_STATUS.unpack_from(payload, 0)
    body = memoryview(payload)[BLOCK_STATUS.size :]
    if len(body) % BLOCK_DESCRIPTOR.size:
        raise ValueError("block-status chunk: descriptors not a multiple of 8 bytes")
    return context, np.frombuffer(body, dtype=BLOCK_DESCRIPTOR_DTYPE)

"""Exceptions the command line turns into one-line messages and exit codes.

``BlockforensicsError`` and its subclasses mean *bad input* (exit 2), except
:class:`IntegrityError`: stored data that fails its check while being read (exit 1,
like a failed verify).  A failed check of a whole run (verify, boot, compare) is
reported by return value, not raised.
"""

from __future__ import annotations

import struct


class BlockforensicsError(Exception):
    """Base class: a problem with the user's input, reported in one line (exit 2)."""

    exit_code: int = 2


class UsageError(BlockforensicsError):
    """Bad arguments or an unusable input path."""


class FormatError(BlockforensicsError):
    """A file is not a valid image (truncated, garbage, unknown version)."""


class ChainError(BlockforensicsError):
    """A chain directory is inconsistent (missing parent, unknown point, no chain)."""


class CryptoKeyError(BlockforensicsError):
    """A missing or wrong key for an encrypted chain."""


class IntegrityError(FormatError):
    """Stored bytes that do not match their digest or authentication tag, or a point that
    depends on a damaged image: the read stops, naming the image and block (exit 1)."""

    exit_code = 1


#: what reading hostile on-disk structures (a log to replay) may raise besides a
#: FormatError: a field read past its record, an index or a key that is not there
UNPARSABLE: tuple[type[Exception], ...] = (FormatError, ValueError, IndexError, KeyError,
                                           struct.error)

"""Exceptions the command line turns into one-line messages and exit codes.

``BlockforensicsError`` and its subclasses mean *bad input* (exit 2);
a failed check (verify, boot, compare) is reported by return value, not raised.
"""

from __future__ import annotations


class BlockforensicsError(Exception):
    """Base class: a problem with the user's input, reported in one line (exit 2)."""


class UsageError(BlockforensicsError):
    """Bad arguments or an unusable input path."""


class FormatError(BlockforensicsError):
    """A file is not a valid image (truncated, garbage, unknown version)."""


class ChainError(BlockforensicsError):
    """A chain directory is inconsistent (missing parent, unknown point, no chain)."""


class CryptoKeyError(BlockforensicsError):
    """A missing or wrong key for an encrypted chain."""

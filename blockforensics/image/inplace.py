"""Growing an image file into its successor in place, safely: the merge journal.

A consolidation that merges a segment of a chain can leave the payloads of its
biggest image where they are: the new image is that file, grown.  New payloads,
the new index and footer are appended after its end, and the new header is
written over the old one last.  Until the manifest switches, though, the file is
still a point of the old chain, so first a journal ``.chain-merge.tmp`` records
what the file was: its name, identity (device, inode), size and header bytes,
and the manifest's generation.  Only appended bytes and the header change, so
with the journal the old file can always be seen and restored:

- a reader opening the file by its old name while the journal names it reads
  it *as journaled* (that header, that size): the old image, byte for byte;
- cleanup (:meth:`~blockforensics.image.store.ChainStore.recover`) rolls a
  merge that did not switch back: the old header written back, the file cut to
  its old size; a merge that switched only leaves its journal to delete.

Readers hold a shared ``flock`` on each image file while it is open; the merge
takes it exclusively, without waiting (busy: the segment is copied into a new
file instead), and holds it until its dead payloads are punched out, so no open
reader ever sees a hole where its index says a payload lies.

This module reads no numpy: ``list`` opens images through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from blockforensics.errors import FormatError
from blockforensics.fileio import atomic_writer, fsync, fsync_directory
from blockforensics.image.format import HEADER_SIZE, Footer, Header

MERGE_JOURNAL = ".chain-merge.tmp"
_MAX_JOURNAL_BYTES = 64 << 10


@dataclass(frozen=True)
class MergeJournal:
    """What an image file grown in place was before the merge."""

    image: str  # file name of the image grown in place
    device: int  # st_dev of the file
    inode: int  # st_ino of the file
    size: int  # bytes of the file before
    header: str  # hex of its first HEADER_SIZE bytes before
    generation: int  # the manifest's generation before: the merge switched when it differs

    @classmethod
    def of(cls, fd: int, name: str, generation: int) -> MergeJournal:
        """The journal of the open image file ``fd`` called ``name``, as it is now."""
        st = os.fstat(fd)
        return cls(name, st.st_dev, st.st_ino, st.st_size,
                   os.pread(fd, HEADER_SIZE, 0).hex(), generation)

    def write(self, directory: Path) -> None:
        """Make the journal durable (before the file is touched)."""
        with atomic_writer(directory / MERGE_JOURNAL) as fh:
            fh.write(json.dumps(asdict(self)).encode())

    @classmethod
    def read(cls, directory: Path) -> MergeJournal | None:
        """The journal in ``directory``; None when there is none, or it is not whole or
        not what :meth:`of` writes (damaged: as good as none)."""
        try:
            with open(directory / MERGE_JOURNAL, "rb") as fh:
                doc = json.loads(fh.read(_MAX_JOURNAL_BYTES))
            journal = cls(**doc)
            Header.unpack(bytes.fromhex(journal.header))  # the header before: intact
        except (OSError, ValueError, TypeError, FormatError):
            return None
        numbers = (journal.device, journal.inode, journal.size, journal.generation)
        if not isinstance(journal.image, str) or os.path.basename(journal.image) != \
                journal.image or any(type(n) is not int for n in numbers) \
                or not HEADER_SIZE <= journal.size < 2**63:
            return None
        return journal

    def names(self, fd: int, name: str) -> bool:
        """True when the open file ``fd``, opened as ``name``, is the journaled file and
        still ends, at the journaled size, in the footer it had (a merge appends after
        it): a damaged size would make undoing the merge cut the file."""
        st = os.fstat(fd)
        if (name, st.st_dev, st.st_ino) != (self.image, self.device, self.inode):
            return False
        try:
            Footer.unpack(os.pread(fd, Footer.SIZE, self.size - Footer.SIZE))
        except FormatError:
            return False
        return True

    def settle(self, directory: Path, generation: int) -> bool:
        """Undo the merge unless the manifest (now at ``generation``) switched; delete
        the journal.  True when the file was restored."""
        restored = False
        if generation == self.generation:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(directory / self.image, os.O_RDWR | os.O_NOFOLLOW)
                try:
                    if self.names(fd, self.image):
                        os.pwrite(fd, bytes.fromhex(self.header), 0)
                        os.ftruncate(fd, self.size)
                        fsync(fd)
                        restored = True
                finally:
                    os.close(fd)
        (directory / MERGE_JOURNAL).unlink(missing_ok=True)
        fsync_directory(directory)
        return restored


@dataclass(frozen=True)
class OpenedImage:
    """An image file open for reading: its descriptor (shared ``flock`` held), its size
    in bytes and its header bytes, as journaled while a merge grows it."""

    fd: int
    size: int  # bytes
    header: bytes  # the first HEADER_SIZE bytes


def open_image(path: Path) -> OpenedImage:
    """Open the image file ``path`` for reading (FormatError if it cannot be): wait while
    a merge grows it, then read it as the journal says it was if one still does
    (a merge that died: the old image, until cleanup restores it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise FormatError(f"{path.name}: cannot open ({exc.strerror})") from exc
    try:
        with contextlib.suppress(OSError):  # a file system without locks: no merge in place
            fcntl.flock(fd, fcntl.LOCK_SH)
        journal = MergeJournal.read(path.parent)
        if journal is not None and journal.names(fd, path.name):
            return OpenedImage(fd, journal.size, bytes.fromhex(journal.header))
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:  # a merge renamed it while this waited: the chain has switched
            raise FormatError(f"{path.name}: replaced by a consolidation while opening; "
                              "run the command again")
        return OpenedImage(fd, os.fstat(fd).st_size, os.pread(fd, HEADER_SIZE, 0))
    except BaseException:
        os.close(fd)
        raise


def take_exclusively(fd: int) -> bool:
    """Turn this process's shared lock on image file ``fd`` into an exclusive one, without
    waiting; False (the shared lock taken again) while any other reader has it open."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a failed conversion drops the lock held
        return False
    except OSError:  # no locks on this file system: never grow a file readers may hold
        return False
    return True

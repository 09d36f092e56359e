"""ChainStore: the one owner of a chain directory.

It alone reads and writes the manifest ``chain.json``, names image files, takes
the directory's writer lock and cleans up.  Every change of the chain — a
backup appended, a consolidation, a retention run — is one call of
:meth:`ChainStore.switch`, made under the lock:

1. the new image was written, fsynced and committed under a *pending* name
   (``.pending-<random>.bfi.tmp``: the store's temporary naming);
2. a journal ``.chain-switch.tmp`` records the manifest to come, the image
   names being created and the files to remove afterwards;
3. each pending image gets its final name with ``link`` (never replacing a file);
4. the manifest is replaced atomically — the moment the chain switches;
5. the files the switch removes are deleted, then the journal.

A process killed at any step leaves the old manifest or the new one, each with
all its images.  :meth:`ChainStore.recover` finishes or undoes an interrupted
switch from its journal and deletes the store's temporary files (names that
start with ``.`` and end with ``.tmp``).  Nothing else is ever deleted: a file is
never removed because the manifest does not list it.

Manifest entries must be plain image file names inside the directory
(``NAME.bfi``, no ``/``, NUL, ``..``, leading ``.``, duplicates), naming regular
files (not symlinks, FIFOs or devices); anything else is refused with a
ChainError (exit 2) and never "fixed" by rewriting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from blockforensics.errors import ChainError, UsageError
from blockforensics.fileio import (
    atomic_writer,
    directory_lock,
    fsync_directory,
    name_noreplace,
)
from blockforensics.image import MANIFEST, is_chain
from blockforensics.image.format import new_id
from blockforensics.image.inplace import MERGE_JOURNAL, MergeJournal

MANIFEST_FORMAT = "blockforensics-chain"
MANIFEST_VERSION = 1
IMAGE_SUFFIX = ".bfi"
#: names this store gives images: ``NNNN-full.bfi``, ``NNNN-incr.bfi``, ``NNNN-full-c2.bfi``
IMAGE_NAME = re.compile(r"^(\d{1,12})-[a-z]+(?:-c\d+)?\.bfi$")
JOURNAL = ".chain-switch.tmp"
#: points a chain may have (a point's path depth is kept in an int16)
MAX_IMAGES = 32_000
MAX_MANIFEST_BYTES = 8 << 20
MAX_NAME_BYTES = 255
#: the highest manifest generation: the next switch's, one more, is sealed as a u64
MAX_GENERATION = 2**64 - 2


def is_temporary(name: str) -> bool:
    """True for the store's own temporary naming (pending images, half-written files,
    the journal): the only names :meth:`ChainStore.recover` deletes on sight."""
    return name.startswith(".") and name.endswith(".tmp")


def check_name(name: object, where: str) -> str:
    """``name`` if it is a plain image file name inside the directory; ChainError if not."""
    if not isinstance(name, str):
        raise ChainError(f"{where}: image entry {name!r} is not a file name")
    problem = None
    if not name.endswith(IMAGE_SUFFIX) or name == IMAGE_SUFFIX:
        problem = f"is not an image file name (NAME{IMAGE_SUFFIX})"
    elif "/" in name or "\0" in name or "\\" in name:
        problem = "is not a plain file name inside the chain directory"
    elif name.startswith("."):
        problem = "starts with '.' (hidden or temporary names are never images)"
    else:
        try:
            if len(name.encode()) > MAX_NAME_BYTES:
                problem = "is too long"
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
    if problem:
        shown = name.encode("unicode_escape").decode()[:80]
        raise ChainError(f"{where}: image entry '{shown}' {problem}")
    return name


@dataclass(frozen=True)
class Manifest:
    """The parsed ``chain.json``: image names in creation order, the switch counter
    (``generation``, +1 at every switch) and, for encrypted chains, the keyed seal
    (checked by :class:`~blockforensics.image.chain.Chain`; opaque here)."""

    images: tuple[str, ...] = ()
    generation: int = 0
    seal: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                               "generation": self.generation, "images": list(self.images)}
        if self.seal is not None:
            doc["seal"] = dict(self.seal)
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Manifest:
        """A manifest from the bytes of ``chain.json``; ChainError on anything else."""
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ChainError(f"{where}: damaged chain manifest (not JSON)") from exc
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ChainError(f"{where}: damaged chain manifest (not a {MANIFEST_FORMAT} "
                             "object)")
        if doc.get("version") != MANIFEST_VERSION:
            raise ChainError(f"{where}: unsupported chain manifest version "
                             f"{ascii(doc.get('version'))[:20]}")
        images, generation, seal = doc.get("images"), doc.get("generation", 0), doc.get("seal")
        if not isinstance(images, list):
            raise ChainError(f"{where}: damaged chain manifest (images is not a list)")
        if len(images) > MAX_IMAGES:
            raise ChainError(f"{where}: {len(images)} images listed; at most {MAX_IMAGES}")
        if type(generation) is not int or not 0 <= generation <= MAX_GENERATION:
            raise ChainError(f"{where}: damaged chain manifest (bad generation)")
        if seal is not None and not isinstance(seal, dict):
            raise ChainError(f"{where}: damaged chain manifest (bad seal)")
        names = tuple(check_name(name, where) for name in images)
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ChainError(f"{where}: image {twice} listed more than once")
        return cls(names, generation, seal)


def not_a_directory(path: Path) -> ChainError:
    """The error for a chain path that is not a directory: missing, or a file."""
    what = "is a file, not a chain directory" if path.exists() else "does not exist"
    return ChainError(f"{path}: {what}")


class ChainStore:
    """The chain directory: manifest, image names, lock, cleanup (see the module doc)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"ChainStore({self.directory})"

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        """True when the directory holds a manifest."""
        return is_chain(self.directory)

    # ----------------------------------------------------------------- reading
    def read(self) -> Manifest:
        """The manifest as it is now, every entry checked (names and file types)."""
        path = self.manifest_path
        if not self.directory.is_dir():
            raise not_a_directory(self.directory)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ChainError(f"{self.directory}: not a blockforensics chain "
                             f"(no {MANIFEST})") from None
        except OSError as exc:
            raise ChainError(f"{path}: cannot open the chain manifest "
                             f"({exc.strerror or exc})") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen: a directory fails it
            os.close(fd)
            raise ChainError(f"{path}: the chain manifest is not a regular file")
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ChainError(f"{path}: chain manifest larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = Manifest.parse(raw, str(path))
        for name in manifest.images:
            self.check_file(name)
        return manifest

    def check_file(self, name: str) -> Path:
        """The path of listed image ``name``; ChainError when something other than a
        regular file sits there (a symlink, FIFO, device, directory).  A missing file is
        left to the caller (``Chain.open`` refuses it, ``verify`` reports it)."""
        path = self.directory / check_name(name, str(self.manifest_path))
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return path
        if stat.S_ISLNK(mode):
            raise ChainError(f"{path}: listed image is a symbolic link (refused)")
        if not stat.S_ISREG(mode):
            raise ChainError(f"{path}: listed image is not a regular file")
        return path

    # ----------------------------------------------------------------- writing
    @classmethod
    def create(cls, directory: str | os.PathLike[str]) -> ChainStore:
        """A new, empty chain in a new or empty directory."""
        store = cls(directory)
        directory = store.directory
        if directory.exists() and not directory.is_dir():
            raise UsageError(f"{directory}: exists and is not a directory")
        if directory.is_dir() and any(directory.iterdir()):
            raise UsageError(f"{directory}: not empty and not a blockforensics chain")
        directory.mkdir(parents=True, exist_ok=True)
        with store.lock():
            store._write_manifest(Manifest())
        return store

    def lock(self, *, blocking: bool = True,
             exclusive_here: bool = False) -> contextlib.AbstractContextManager[bool]:
        """The chain's writer lock (see :func:`~blockforensics.fileio.directory_lock`);
        ``blocking``: for a writer, so UsageError first when the directory cannot be
        written (a write-blocked copy of evidence: read-only, immutable, not ours)."""
        if blocking and not self.writable():
            raise UsageError(f"{self.directory}: {self._why_not_writable()}; this command "
                             "writes into the chain: run it on a writable copy")
        return directory_lock(self.directory, blocking=blocking, exclusive_here=exclusive_here)

    def writable(self) -> bool:
        """True when files can be created and removed in the directory."""
        return os.access(self.directory, os.W_OK | os.X_OK)

    def _why_not_writable(self) -> str:
        try:
            if os.statvfs(self.directory).f_flag & os.ST_RDONLY:
                return "on a read-only file system"
        except OSError:
            pass
        return "not writable (no permission, or immutable)"

    def pending_path(self) -> Path:
        """Where a new image is written and committed before :meth:`switch` names it
        (a temporary name: recovered space if the writer dies)."""
        return self.directory / f".pending-{new_id().hex()}{IMAGE_SUFFIX}.tmp"

    def discard(self, pending: Path) -> None:
        """Delete ``pending``, a :meth:`pending_path` whose switch was refused or failed
        (nothing when it was named meanwhile, or is not one of the store's temporary
        files)."""
        if pending.parent == self.directory and is_temporary(pending.name):
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()

    def new_name(self, kind: str, like: str | None = None, taken: Sequence[str] = ()) -> str:
        """An unused image file name: ``NNNN-KIND.bfi`` with the next number, or — for
        the image replacing ``like`` (consolidation) — ``like``'s number with ``-cN``."""
        names = set(os.listdir(self.directory)) | set(self.read().images) | set(taken)
        match = IMAGE_NAME.match(like) if like else None
        if match is None:
            numbers = [int(m.group(1)) for name in names if (m := IMAGE_NAME.match(name))]
            return f"{max(numbers, default=-1) + 1:04d}-{kind}{IMAGE_SUFFIX}"
        generation = 1
        while f"{match.group(1)}-{kind}-c{generation}{IMAGE_SUFFIX}" in names:
            generation += 1
        return f"{match.group(1)}-{kind}-c{generation}{IMAGE_SUFFIX}"

    def switch(self, images: Sequence[str], *, add: Mapping[str, Path] | None = None,
               remove: Sequence[str] = (), seal: Mapping[str, Any] | bool | None = True,
               expect: Manifest | None = None, ids: Sequence[bytes] = ()) -> Manifest:
        """Switch the chain to ``images`` in one atomic manifest replacement.

        ``add`` maps new image names to their committed pending files; ``remove``
        lists image files deleted once the switch is made; ``seal`` is the new seal
        (True: keep the current one).  ``expect``: ChainError unless the manifest is
        still this one (another writer switched meanwhile).  ``ids``: the image ids of
        ``images`` (the first one's volume id leads), for the record kept outside the
        chain (:class:`History`).  Takes the lock."""
        add = dict(add or {})
        with self.lock():
            current = self.read()
            if expect is not None and current.images != expect.images:
                raise ChainError(f"{self.directory}: the chain changed while this command "
                                 "ran; run it again")
            for name in [*images, *add, *remove]:
                check_name(name, str(self.directory))
            new = replace(current, images=tuple(images), generation=current.generation + 1,
                          seal=current.seal if seal is True else seal or None)
            Manifest.parse(new.to_json(), str(self.manifest_path))  # refuse what we'd refuse
            for name in add:
                if os.path.lexists(self.directory / name):
                    raise ChainError(f"{self.directory / name}: exists; not replaced")
            journal = {"images": list(new.images), "created": list(add),
                       "remove": [n for n in remove if n not in new.images]}
            with atomic_writer(self.directory / JOURNAL) as fh:
                fh.write(json.dumps(journal).encode())
            for name, pending in add.items():
                if self._listed(pending, current):  # a listed image grown in place keeps
                    os.link(pending, self.directory / name)  # its name until removed
                else:
                    name_noreplace(pending, self.directory / name)
            self._write_manifest(new)
            self._finish(journal, switched=True)
            if ids:
                History(self.directory).record(new, ids)
            return new

    def _listed(self, path: Path, manifest: Manifest) -> bool:
        """True when ``path`` is an image listed by ``manifest``."""
        return path.parent == self.directory and path.name in manifest.images

    def _write_manifest(self, manifest: Manifest) -> None:
        with atomic_writer(self.manifest_path) as fh:
            fh.write(manifest.to_json())

    def _finish(self, journal: Mapping[str, Any], *, switched: bool) -> list[str]:
        """Delete what an interrupted (or just made) switch leaves: the removed images
        once switched, else the images it created; then the journal."""
        listed = set(self.read().images)
        doomed = journal.get("remove" if switched else "created", [])
        if not isinstance(doomed, list):  # a damaged journal: nothing of it to delete
            doomed = []
        removed = []
        for name in doomed:
            if isinstance(name, str) and name not in listed:
                path = self.directory / check_name(name, JOURNAL)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(name)
        (self.directory / JOURNAL).unlink(missing_ok=True)
        fsync_directory(self.directory)
        return removed

    # ----------------------------------------------------------------- cleanup
    def recover(self, *, blocking: bool = False) -> list[str]:
        """Finish or undo an interrupted switch and delete the store's temporary files;
        the names removed.  Without ``blocking`` it does nothing while a writer (in this
        process or another) holds the lock, nor in a directory it cannot write."""
        if not blocking and not self.writable():  # evidence write-blocked: nothing to
            return []  # do; readers read a merge in place as journaled, the manifest as is
        with self.lock(blocking=blocking, exclusive_here=not blocking) as held:
            if not held:
                return []
            removed = []
            if os.path.lexists(self.directory / MERGE_JOURNAL):  # a merge in place died
                merge = MergeJournal.read(self.directory)
                if merge is None:  # not written whole: the file was never touched
                    (self.directory / MERGE_JOURNAL).unlink()
                else:
                    merge.settle(self.directory, self.read().generation)
                removed.append(MERGE_JOURNAL)
            journal_path = self.directory / JOURNAL
            if journal_path.is_file() and not journal_path.is_symlink():
                try:
                    journal = json.loads(journal_path.read_bytes()[: MAX_MANIFEST_BYTES])
                    switched = list(self.read().images) == journal["images"]
                except (ValueError, KeyError, TypeError):
                    journal, switched = {}, False  # a journal not written whole: nothing to do
                removed += self._finish(journal, switched=switched)
            for entry in self._temporary():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry)
                    removed.append(entry.name)
            if removed:
                fsync_directory(self.directory)
            return removed

    def discard_if_empty(self, *, remove_directory: bool) -> bool:
        """Remove a chain that holds no image (one a failed first backup created): its
        temporary files and manifest, and the directory itself when ``remove_directory``
        (it was made for it).  False, touching nothing, when it holds an image."""
        with self.lock():
            if self.read().images:
                return False
            for entry in self._temporary():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / MANIFEST)
            fsync_directory(self.directory)
        if remove_directory:
            with contextlib.suppress(OSError):  # not empty: something else is in it
                self.directory.rmdir()
        return True

    def _temporary(self) -> Iterator[Path]:
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)


def state_directory() -> Path:
    """Where records of chains are kept outside them: ``$BLOCKFORENSICS_STATE_DIR``, else
    ``$XDG_CACHE_HOME/blockforensics/chains`` (``~/.cache/...``)."""
    explicit = os.environ.get("BLOCKFORENSICS_STATE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "blockforensics" / "chains"


class History:
    """A small record of a chain kept outside it (like borg's security directory), one
    file per chain directory: the generation and the points of the last switch this
    machine made or saw.  ``verify`` compares the chain with it and names what went
    back in time.  Writing it is best effort: a chain never fails because of it."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(os.path.realpath(directory))
        key = hashlib.sha256(str(self.directory).encode(errors="surrogateescape")).hexdigest()
        self.path = state_directory() / f"{key[:32]}.json"

    def load(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as fh:
                doc = json.loads(fh.read(MAX_MANIFEST_BYTES))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def record(self, manifest: Manifest, ids: Sequence[bytes]) -> None:
        doc = {"directory": str(self.directory), "generation": manifest.generation,
               "points": [{"file": name, "image_id": image_id.hex()}
                          for name, image_id in zip(manifest.images, ids)],
               "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(self.path) as fh:
                fh.write(json.dumps(doc, indent=1).encode())

    def compare(self, manifest: Manifest, ids: Sequence[bytes]) -> list[str]:
        """What went back in time since the record (empty: nothing, or no record); a
        newer chain updates the record."""
        doc = self.load()
        if doc is None:
            self.record(manifest, ids)
            return []
        try:
            generation = int(doc["generation"])
            recorded = [(str(p["file"]), bytes.fromhex(p["image_id"])) for p in doc["points"]]
            when = str(doc.get("recorded", "?"))
        except (KeyError, TypeError, ValueError):
            return [f"{self.path}: the record of this chain is damaged; not compared"]
        problems = []
        where = self.directory / MANIFEST
        if manifest.generation < generation:
            problems.append(f"{where}: generation {manifest.generation}, but generation "
                            f"{generation} was recorded on {when}: the chain went back in time")
        now = list(ids)
        for name, image_id in recorded:
            if image_id not in now:
                problems.append(f"{name}: point recorded on {when} (image {image_id.hex()[:12]})"
                                " is missing: rolled back or dropped")
        common = [image_id for _, image_id in recorded if image_id in now]
        if common != [image_id for image_id in now if image_id in common]:
            problems.append(f"{where}: points are in another order than recorded on {when} "
                            "(reordered or swapped)")
        if manifest.generation == generation and not problems and \
                [i for _, i in recorded] != now:
            problems.append(f"{where}: the same generation as recorded on {when} lists other "
                            "points (replaced)")
        if not problems and manifest.generation > generation:
            self.record(manifest, ids)
        return problems

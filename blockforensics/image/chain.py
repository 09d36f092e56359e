"""Chain: a read-only view of a chain directory, whose images' parent links form a tree.

The directory itself (manifest, image names, lock, cleanup) belongs to
:class:`~blockforensics.image.store.ChainStore`; every change of the chain is one
locked, atomic switch of its manifest made there.  The manifest lists the live
images in creation order; a point is an image, named by its index in that list
(0 = the first full) or by its file name.  Which image a block of a point is read
from is the reading rule of docs/FORMAT.md, implemented once in :mod:`.layout`; a
point is read as a checked Disk by :class:`~blockforensics.image.reader.ChainDisk`.
Branches are allowed: several images may name the same parent.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blockforensics.blockmap import BlockMap
from blockforensics.crypto import ChainKeys, KdfParams, KeySource
from blockforensics.errors import (
    BlockforensicsError,
    ChainError,
    CryptoKeyError,
    FormatError,
    UsageError,
)
from blockforensics.image import is_chain
from blockforensics.image.codec import BlockCodec, EncryptedCodec, PlainCodec
from blockforensics.image.format import (
    CIPHER_AES256GCM,
    CIPHER_NONE,
    DIGEST_SIZE,
    INDEX_DTYPE,
    KIND_FULL,
    KIND_INCREMENTAL,
    Header,
    digest_rows,
    new_id,
)
from blockforensics.image.imagefile import (
    DamagedImage,
    ImageFile,
    ImageWriter,
    RecordPieces,
    open_listed,
)
from blockforensics.image.layout import Layout, spans
from blockforensics.image.links import NO_PARENT, link
from blockforensics.image.reader import ChainDisk
from blockforensics.image.store import IMAGE_NAME, IMAGE_SUFFIX, MANIFEST, ChainStore, Manifest

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["IMAGE_NAME", "IMAGE_SUFFIX", "MANIFEST", "Chain", "ChainStore", "is_chain",
           "read_manifest", "remove_leftovers"]

PointRef = int | str
#: times :meth:`Chain.open` reads the manifest again when it switched during the opening
_OPEN_TRIES = 5


def remove_leftovers(directory: str | os.PathLike[str]) -> list[str]:
    """Finish or undo an interrupted switch and delete the store's temporary files (see
    :meth:`ChainStore.recover`); their names.  Does nothing while a writer holds the lock."""
    return ChainStore(directory).recover()


def read_manifest(directory: Path) -> list[str]:
    """Image file names listed by the manifest, in creation order (every entry checked)."""
    return list(ChainStore(directory).read().images)


def open_codec(header: Header | None, key: KeySource | None, where: str) -> BlockCodec:
    """The codec for images like ``header``; checks the key of an encrypted chain."""
    if header is None or not header.encrypted:
        if header is not None and key is not None:
            raise UsageError(f"{where}: the chain is not encrypted; drop --key-file")
        return PlainCodec(header.block_size if header else 4096)
    if key is None:
        raise CryptoKeyError(f"{where}: the chain is encrypted; give its key (--key-file)")
    params = KdfParams(header.kdf, header.salt, header.kdf_n, header.kdf_r, header.kdf_p)
    try:
        keys = ChainKeys.derive(key, params, header.volume_id)
    except (CryptoKeyError, FormatError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    keys.check(header.key_check, where)
    return EncryptedCodec(keys, header.block_size)


class Chain:
    """A chain directory: its images, their tree, and block resolution for every point."""

    def __init__(self, directory: Path, images: list[ImageFile], key: KeySource | None = None,
                 manifest: Manifest | None = None):
        self.directory = directory
        self.store = ChainStore(directory)
        self.images = images
        self.manifest = manifest or Manifest(tuple(img.name for img in images))
        self.key = key
        self._codec: BlockCodec | None = None
        #: set when the last append committed but an error followed (see ``append``)
        self.commit_warning: str | None = None
        self._sealed = False  # the manifest's seal checked (encrypted chains)
        self._relink()

    def _relink(self) -> None:
        """Link the images into a tree, once: parents, and which points are damaged."""
        links = link(self.images)
        self._parents, self.damage = links.parents, links.damage
        self._own_damage, self._reference = links.own, links.reference

    def damaged(self, point: PointRef) -> str | None:
        """Why ``point`` cannot be read (its image, or one on its path, is damaged), or None."""
        return self.damage.get(self.point(point))

    def problems(self) -> list[tuple[str, str]]:
        """``(image name, what is wrong)`` for each image damaged in itself."""
        return [(self.images[i].name, self.damage[i]) for i in sorted(self._own_damage)]

    def _reference_header(self) -> Header | None:
        """The header that speaks for the chain (block size, cipher, key check)."""
        return None if self._reference is None else self.images[self._reference].header

    # ------------------------------------------------------------ open/create
    @classmethod
    def open(cls, directory: str | os.PathLike[str], key: KeySource | None = None) -> Chain:
        """Open an existing chain (ChainError if the manifest is unusable).  Damaged or
        missing images do not stop it: their points, and those depending on them, are
        listed in :attr:`damage` and refused when read; the others read as usual."""
        directory = Path(directory)
        store = ChainStore(directory)
        manifest = store.read()
        for _ in range(_OPEN_TRIES):  # a consolidation may switch the chain meanwhile
            images: list[ImageFile] = []
            try:
                images += _open_images(store, manifest.images)
                now = store.read()
                if now == manifest:
                    return cls(directory, images, key, manifest)
            except BaseException:
                for img in images:
                    img.close()
                raise
            for img in images:
                img.close()
            manifest = now
        raise ChainError(f"{directory}: the chain kept changing while it was opened; "
                         "run the command again")

    @classmethod
    def create(cls, directory: str | os.PathLike[str], key: KeySource | None = None) -> Chain:
        """Make an empty chain in a new or empty directory."""
        store = ChainStore.create(directory)
        return cls(store.directory, [], key, Manifest())

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike[str],
                       key: KeySource | None = None) -> Chain:
        """The chain in ``directory``, or a new one there; a manifest that is there but no
        regular file is refused by :meth:`open` in its own words."""
        there = os.path.lexists(os.path.join(directory, MANIFEST))
        return cls.open(directory, key) if there else cls.create(directory, key)

    def close(self) -> None:
        for img in self.images:
            img.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the chain's writer lock: backups and consolidations take it, so a
        concurrent command never mistakes their files in progress for leftovers.  The
        view then follows the manifest as it is (another writer may have switched it
        while this one waited)."""
        with self.store.lock() as held:
            self._refresh()
            yield held

    def cleanup(self) -> list[str]:
        """Finish or undo an interrupted switch, delete the store's temporary files."""
        return self.store.recover()

    # ------------------------------------------------------------------- tree
    def __len__(self) -> int:
        return len(self.images)

    @property
    def block_size(self) -> int:
        header = self._reference_header()
        if header is None:
            raise ChainError(f"{self.directory}: the chain has no "
                             f"{'readable ' if self.images else ''}images yet")
        return header.block_size

    @property
    def encrypted(self) -> bool:
        header = self._reference_header()
        return header is not None and header.encrypted

    def point(self, ref: PointRef) -> int:
        """The index of a point given as an index (negative counts from the newest) or a name."""
        if isinstance(ref, str) and not re.fullmatch(r"-?\d+", ref):
            for i, img in enumerate(self.images):
                if img.name == ref or img.path.stem == ref:
                    return i
            raise UsageError(f"{self.directory}: no point named {ref!r}")
        index = int(ref)
        if not -len(self.images) <= index < len(self.images):
            raise UsageError(f"{self.directory}: no point {index} "
                             f"(the chain has {len(self.images)} points)")
        return index % len(self.images)

    def parent(self, point: PointRef) -> int | None:
        return self._parents[self.point(point)]

    def children(self, point: PointRef) -> list[int]:
        p = self.point(point)
        return [i for i, parent in enumerate(self._parents) if parent == p]

    def path(self, point: PointRef) -> list[int]:
        """Points from the root to ``point`` (inclusive); ChainError if it is damaged."""
        current: int | None = self.point(point)
        assert current is not None
        if current in self.damage:
            raise ChainError(f"point {current} ({self.images[current].name}) is damaged: "
                             f"{self.damage[current]} (see 'blockforensics repair')")
        chain: list[int] = []
        while current is not None:
            chain.append(current)
            current = self._parents[current]
        return chain[::-1]

    def rows(self) -> list[dict[str, object]]:
        """One dict per point: what ``list`` prints (and ``list --json`` serialises)."""
        from blockforensics.image.summary import point_row  # here: restores print no rows

        return [point_row(i, img, self._parents[i], self.damage.get(i))
                for i, img in enumerate(self.images)]

    def table(self) -> pd.DataFrame:
        """:meth:`rows` as a DataFrame, one row per point."""
        import pandas as pd  # lazily: the command line starts faster without it

        columns = ["point", "file", "kind", "parent", "blocks", "stored_bytes", "disk_bytes",
                   "encrypted",
                   "created", "volume_size", "block_size", "label", "damaged", "error"]
        frame = pd.DataFrame(self.rows(), columns=columns)
        frame["parent"] = frame["parent"].astype("Int64")
        return frame

    def __repr__(self) -> str:
        return f"Chain({self.directory}, {len(self.images)} points)"

    def _repr_png_(self) -> bytes:
        """Jupyter shows a chain as its tree (blockforensics.plot.plot_chain)."""
        from blockforensics.plot import chain_png

        return chain_png(self)

    # ------------------------------------------------------------------- keys
    @property
    def codec(self) -> BlockCodec:
        """The chain's codec; for an encrypted chain the key is checked here (wrong key: exit 2)."""
        if self._codec is None:
            self._codec = open_codec(self._reference_header(), self.key, str(self.directory))
        return self._codec

    # ------------------------------------------------------------------- seal
    def check_seal(self, images: list[ImageFile] | None = None) -> list[tuple[bytes, bytes]]:
        """FormatError unless the manifest of an encrypted chain carries a valid seal that
        every listed point agrees with: each one sealed, with its sealed point digest, in
        sealed order, and the newest sealed point listed.  The sealed points."""
        images = self.images if images is None else images
        if not images or not self.encrypted:
            return []
        # a damaged image whose header is unreadable cannot be placed: its points are
        # refused anyway (see links), the others are checked as usual
        unplaced = any(isinstance(img, DamagedImage) and not img.header_known
                       for img in images)
        images = [img for img in images
                  if not isinstance(img, DamagedImage) or img.header_known]
        where = f"{self.directory / MANIFEST}"
        doc = self.manifest.seal
        try:
            assert doc is not None
            generation = doc["generation"]
            points = [(bytes.fromhex(i), bytes.fromhex(m))
                      for i, m in (str(p).split(":") for p in doc["points"])]
            mac = bytes.fromhex(doc["mac"])
            assert type(generation) is int and 0 <= generation < 2**63 and points
        except (AssertionError, KeyError, TypeError, ValueError):
            raise FormatError(f"{where}: an encrypted chain's manifest must carry a valid seal "
                              "(missing or damaged: the manifest was replaced)") from None
        keys = self.codec.keys  # type: ignore[attr-defined]
        if not hmac.compare_digest(keys.seal(generation, points), mac):
            raise FormatError(f"{where}: the manifest's seal does not match (altered)")
        order = {image_id: (i, point_mac) for i, (image_id, point_mac) in enumerate(points)}
        last = -1
        for img in images:
            sealed = order.get(img.header.image_id)
            if sealed is None or sealed[1] != img.header.point_mac:
                raise FormatError(f"{img.name}: not the point the manifest's seal names "
                                  "(swapped in or replaced)")
            if sealed[0] < last:
                raise FormatError(f"{img.name}: listed out of its sealed order (points "
                                  "reordered or swapped)")
            last = sealed[0]
        if last != len(points) - 1 and not unplaced:
            raise FormatError(f"{where}: the newest sealed point ({len(points)} sealed, image "
                              f"{points[-1][0].hex()[:12]}) is not listed: the chain was "
                              "rolled back or its newest point dropped")
        return points

    def _seal_with(self, image: ImageFile) -> dict[str, object] | bool:
        """The manifest seal after appending ``image`` (True: keep it, a plaintext chain)."""
        if not image.header.encrypted:
            return True
        points = self.check_seal(self.images[:-1])
        points.append((image.header.image_id, image.header.point_mac))
        return self._seal_doc(points)

    def _seal_doc(self, points: list[tuple[bytes, bytes]]) -> dict[str, object]:
        """The manifest seal over ``(image id, point_mac)`` of ``points``, for the next
        switch's generation."""
        generation = self.manifest.generation + 1
        keys = self.codec.keys  # type: ignore[attr-defined]
        return {"generation": generation,
                "points": [f"{i.hex()}:{m.hex()}" for i, m in points],
                "mac": keys.seal(generation, points).hex()}

    def reseal(self, keep: list[int]) -> Manifest:
        """List only points ``keep`` (in order) and seal the manifest anew over them, in
        one switch, after checking each one's keyed point digest: for an encrypted chain
        made before the seal existed, or whose listing a keyless repair changed.  Needs
        the key (CryptoKeyError when missing or wrong); FormatError naming the first
        point that fails its digest."""
        if not self.encrypted:
            raise UsageError(f"{self.directory}: a plaintext chain has no seal to make")
        if self.key is None:
            raise CryptoKeyError(f"{self.directory}: resealing an encrypted chain needs "
                                 "its key (--key-file K)")
        with self.locked():
            for p in keep:
                self._check_point_mac(p)
            seal = self._seal_doc([(self.images[p].header.image_id,
                                    self.images[p].header.point_mac) for p in keep])
            self.manifest = self.store.switch(
                [self.images[p].name for p in keep], seal=seal, expect=self.manifest,
                ids=[self.images[p].header.image_id for p in keep])
            self._refresh()
        return self.manifest

    # ---------------------------------------------------------------- reading
    def layout(self, point: PointRef) -> Layout:
        """Where each block of ``point`` comes from (resolved window by window)."""
        path = [self.images[i] for i in self.path(point)]
        return Layout(path, path[-1].header.volume_size, self.block_size)

    def changed(self, a: PointRef, b: PointRef) -> BlockMap:
        """Blocks whose content differs between points ``a`` and ``b`` (any two, across branches).

        Compared by content digests from the indexes, a window at a time and only where
        either point holds a record, so nothing is decrypted or read and the cost follows
        the stored blocks, not the volume; the map covers the larger of the two volumes
        (blocks past a smaller one count as zero).
        """
        layouts = self.layout(a), self.layout(b)
        n_blocks = max(layout.n_blocks for layout in layouts)
        keyless = self.encrypted and self.key is None  # absent blocks: a digest no block has
        zero = np.zeros(DIGEST_SIZE, np.uint8) if keyless else self.codec.zero_digest()
        out = BlockMap.empty(n_blocks, self.block_size)
        for start, count in spans(n_blocks):
            wa, wb = (layout.owners(start, count) for layout in layouts)
            rows = np.union1d(wa.held(), wb.held())  # elsewhere both read as zeros
            if len(rows):
                differ = (wa.digests_of(rows, zero) != wb.digests_of(rows, zero)).any(axis=1)
                out.add(start + rows[differ])
        return out

    def disk(self, point: PointRef = -1, *, check: bool = True) -> ChainDisk:
        """A point as a read-only Disk (restore, export, expose, forensics read this);
        every block it reads is checked (``check=False``: digests skipped, to measure)."""
        return ChainDisk(self, self.point(point), check=check)

    # ---------------------------------------------------------------- writing
    def new_header(self, *, parent: int | None, volume_size: int, block_size: int | None = None,
                   created_ns: int | None = None, label: str = "") -> Header:
        """A header for a new image in this chain (identity and crypto fields filled in)."""
        now = time.time_ns()
        if parent is not None and parent in self.damage:
            raise ChainError(f"point {parent} ({self.images[parent].name}) is damaged: "
                             f"{self.damage[parent]}; back up with --full or --parent P "
                             "naming an intact point, or see 'blockforensics repair'")
        first = self._reference_header()
        if first is not None:
            if block_size is not None and block_size != first.block_size:
                raise UsageError(f"{self.directory}: the chain's block size is "
                                 f"{first.block_size}, not {block_size}")
            base = first.replace(label=label)
        else:
            if block_size is None:
                raise UsageError("the first image of a chain needs a block size")
            volume_id = new_id()
            cipher, params, check = CIPHER_NONE, KdfParams(0), bytes(32)
            if self.key is not None:
                cipher, params = CIPHER_AES256GCM, KdfParams.for_source(self.key)
                check = ChainKeys.derive(self.key, params, volume_id).key_check
            base = Header(kind=KIND_FULL, block_size=block_size, volume_size=0, created_ns=0,
                          written_ns=0, image_id=b"", parent_id=NO_PARENT, volume_id=volume_id,
                          cipher=cipher, kdf=params.kdf, kdf_n=params.n, kdf_r=params.r,
                          kdf_p=params.p, salt=params.salt, key_check=check, label=label)
        return base.replace(
            kind=KIND_FULL if parent is None else KIND_INCREMENTAL,
            parent_id=NO_PARENT if parent is None else self.images[parent].header.image_id,
            image_id=new_id(), volume_size=volume_size, hidden_tail=0,
            created_ns=now if created_ns is None else created_ns, written_ns=now)

    def writer(self, header: Header, *, compress: bool = False) -> ImageWriter:
        """An ImageWriter for a new image of this chain (commit, then :meth:`append`);
        ``compress``: store blocks zstd-compressed where that makes them smaller."""
        if self._codec is None:
            self._codec = open_codec(header, self.key, str(self.directory))
        return ImageWriter(self.store.pending_path(), header, self.codec.compressing(compress),
                           seal=self._seal if self.codec.encrypted else None)

    def _seal(self, header: Header, pieces: RecordPieces) -> Header:
        """``header`` with the keyed digest of the point it completes (encrypted chains):
        the parent point's digests, window by window, with the new image's records
        (``pieces()``, in position order) laid over them."""
        codec = self.codec
        assert isinstance(codec, EncryptedCodec)
        zero = codec.zero_digest()
        parent = self.point_of(header.parent_id)
        layout = self.layout(parent) if parent is not None else None

        def digests() -> Iterator[np.ndarray]:
            own, pending = pieces(), np.zeros(0, INDEX_DTYPE)
            for start, count in spans(header.n_blocks):
                end = start + count
                while not len(pending) or int(pending["position"][-1]) < end:
                    piece = next(own, None)
                    if piece is None:
                        break
                    pending = np.concatenate([pending, piece])
                cut = int(np.searchsorted(pending["position"], end))
                here, pending = pending[:cut], pending[cut:]
                out = layout.digests(start, count, zero) if layout is not None \
                    else np.tile(zero, (count, 1))
                out[here["position"].astype(np.int64) - start] = \
                    digest_rows(here["content_digest"])
                yield out

        return header.replace(point_mac=self._point_mac(header, digests()))

    def _point_mac(self, header: Header, digests: Iterator[np.ndarray]) -> bytes:
        keys = self.codec.keys  # type: ignore[attr-defined]
        return keys.point_mac(header.image_id, header.created_ns, header.volume_size,
                              header.block_size, digests)

    def point_of(self, image_id: bytes) -> int | None:
        """The point whose image has ``image_id`` (None for no parent)."""
        if image_id == NO_PARENT:
            return None
        return next(i for i, img in enumerate(self.images) if img.header.image_id == image_id)

    def check_point(self, point: PointRef) -> None:
        """FormatError unless an encrypted point matches its keyed point digest: catches
        blocks rolled back to older versions and records removed, which per-block
        authentication alone cannot see."""
        p = self.point(point)
        header = self.images[p].header
        if not header.encrypted:
            return
        if not self._sealed:  # whole points dropped, reordered or swapped
            self.check_seal()
            self._sealed = True
        self._check_point_mac(p)

    def _check_point_mac(self, p: int) -> None:
        """FormatError unless encrypted point ``p``'s blocks match its keyed point digest."""
        header = self.images[p].header
        digests = self.layout(p).digest_windows(self.codec.zero_digest())
        if not hmac.compare_digest(self._point_mac(header, digests), header.point_mac):
            raise FormatError(f"{self.images[p].name}: the point's blocks do not match its "
                              "keyed digest (a block rolled back or removed)")

    def append(self, path: Path) -> int:
        """Make a committed (pending) image file a point of the chain: it is named and the
        manifest switched in one locked step (:meth:`ChainStore.switch`); its index."""
        with self.locked():
            self._refresh()
            image = ImageFile(path)
            try:
                self.images.append(image)
                self._relink()
                if len(self.images) - 1 in self.damage:
                    raise ChainError(f"{image.name}: {self.damage[len(self.images) - 1]}")
                name = self.store.new_name("full" if image.header.is_full else "incr")
                try:
                    self.manifest = self.store.switch(
                        [*self.manifest.images, name], add={name: Path(path)},
                        seal=self._seal_with(image), expect=self.manifest,
                        ids=[img.header.image_id for img in self.images])
                except OSError as exc:  # before or after the manifest's rename?
                    self.manifest = self._committed_despite(name, exc)
            except BaseException:
                self.images.pop()
                image.close()
                self._relink()
                self.store.discard(Path(path))
                raise
            image.path, image.name = self.directory / name, name
        return len(self.images) - 1

    def _committed_despite(self, name: str, error: OSError) -> Manifest:
        """The manifest when image ``name`` made it in although the switch then failed
        (``commit_warning`` says so: the point exists, a retry would duplicate it);
        otherwise ``error`` is raised: nothing was committed."""
        try:
            manifest = self.store.read()
        except BlockforensicsError:
            raise error from None
        if name not in manifest.images:
            raise error
        what = error.strerror or str(error)
        self.commit_warning = (f"point committed as {name}; an error followed the commit "
                               f"({what}{': ' + str(error.filename) if error.filename else ''})")
        return manifest

    def _refresh(self) -> None:
        """Follow the manifest as it is now: another process may have switched it."""
        manifest = self.store.read()
        names = [img.name for img in self.images]
        if list(manifest.images) != names:
            mine = {img.name: img for img in self.images}
            fresh = [mine.pop(name, None) for name in manifest.images]
            try:
                opened = iter(_open_images(self.store, [n for n, img in zip(manifest.images,
                                                                            fresh) if not img]))
            except BaseException:
                for img in fresh:
                    if img is not None:
                        mine[img.name] = img
                raise
            self.images = [img or next(opened) for img in fresh]
            for stale in mine.values():
                stale.close()
            self._relink()
        if manifest != self.manifest:
            self._sealed = False
        self.manifest = manifest


def _open_images(store: ChainStore, names: Iterator[str] | tuple[str, ...] | list[str]
                 ) -> list[ImageFile]:
    """The listed images opened; one that is missing, damaged or not a regular file is
    a :class:`DamagedImage` saying why (its points are refused, the others read)."""
    images: list[ImageFile] = []
    try:
        for name in names:
            try:
                path = store.check_file(name)
            except ChainError as exc:  # a symlink, FIFO, device, directory: never opened
                images.append(DamagedImage(store.directory / name, str(exc), None))
                continue
            images.append(open_listed(path))
    except BaseException:
        for img in images:
            img.close()
        raise
    return images

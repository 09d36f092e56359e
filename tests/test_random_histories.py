"""Random file-system histories checked against the mounted tree (model-based).

For each file system a real driver writes here (ext4, XFS and Btrfs on a loop mount,
NTFS through ntfs-3g, exFAT through exfat-fuse), a seeded random history: rounds of
random operations (create with sizes from 0 to multi-extent and sparse, append,
overwrite in place, truncate, delete, rename, move, rename over a file, case-only
renames, mkdir/rmdir, directory moves, hard and symbolic links where the file system has
them), each round unmounted, walked through a fresh mount (the truth: path -> kind,
size, SHA-256), unmounted again and backed up into one chain.  For every pair of
consecutive points, whatever the pairing heuristics decide: each path only in the later
walk is reported, each path only in the earlier one too, each file whose content
changed under its path is reported changed, no file whose path, size and content are
the same is reported with a content change; each point's listing equals its walk
(paths, kinds, sizes) and ``extract`` gives the walked bytes of a few files.

One seed per file system by default; ``BF_HISTORY_SEEDS=50`` runs seeds 1..50.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    backup_image,
    formatted,
    loop_device,
    loop_mounted,
    mounted_with,
    require_module,
    require_tools,
)
from test_xfs import mkfs as make_xfs

from blockforensics import forensics, tsk
from blockforensics.image.chain import Chain

MIB = 1 << 20
ROUNDS = 5  # points per history
OPERATIONS = 40  # random operations per round


@dataclass(frozen=True)
class FileSystem:
    """How to make, mount and write one file system."""

    make: Callable[[Path], Path]  # the image path -> the formatted image
    mount: Callable[[Path, Path], contextlib.AbstractContextManager[Path]]
    tools: tuple[str, ...]
    links: bool  # hard and symbolic links


@contextlib.contextmanager
def _exfat_fuse(image: Path, mountpoint: Path) -> Iterator[Path]:
    with loop_device(image) as device, \
            mounted_with(["mount.exfat-fuse", device], mountpoint) as m:
        yield m


FILESYSTEMS = {
    "ext4": FileSystem(lambda i: formatted(i, 32 * MIB, "mkfs.ext4", "-q", "-F"),
                       loop_mounted, ("mkfs.ext4", "mount", "umount"), True),
    "xfs": FileSystem(lambda i: make_xfs(i, 48 * MIB), loop_mounted,
                      ("mkfs.xfs", "mount", "umount"), True),
    "btrfs": FileSystem(lambda i: formatted(i, 128 * MIB, "mkfs.btrfs", "-q", "-f"),
                        loop_mounted, ("mkfs.btrfs", "mount", "umount"), True),
    "ntfs": FileSystem(lambda i: formatted(i, 32 * MIB, "mkntfs", "-q", "-F", "-Q"),
                       lambda i, m: mounted_with(["ntfs-3g", str(i)], m),
                       ("mkntfs", "ntfs-3g", "umount"), True),
    "exfat": FileSystem(lambda i: formatted(i, 32 * MIB, "mkfs.exfat"), _exfat_fuse,
                        ("mkfs.exfat", "mount.exfat-fuse", "losetup", "umount"), False),
}

#: (file system, seed) a discrepancy was found with, kept as regression cases
PINNED = [
    # "x y z25" and "X Y Z25" in one directory (ntfs-3g writes POSIX names): extract of
    # the first gave the second's bytes (TSK's lookup ignores case)
    ("ntfs", 10),
    # exFAT entry sets over the end of a directory's cluster, its next cluster elsewhere:
    # read on as if contiguous, they failed their SetChecksum (files of crowded
    # directories missing from the listing, 98 paths); and once that directory was
    # deleted and its cluster given to a file, the stale entries past that file's bytes
    # were taken for the set unmarked (damage), not a deletion
    ("exfat", 1),
    ("exfat", 2),
]


#: (file system, seed): why it fails still
KNOWN = {
    ("exfat", 15): "an exFAT entry set over a cluster's end whose next cluster lies "
                   "elsewhere: The Sleuth Kit reads its Stream Extension on disk as if "
                   "contiguous (size 0, no clusters), and lists and extracts that",
}


def _seeds() -> list:
    """Seeds 1..BF_HISTORY_SEEDS (1) on every file system, then :data:`PINNED` and
    :data:`KNOWN` (an expected failure, strict), these marked slow (10-40 s each)."""
    count = int(os.environ.get("BF_HISTORY_SEEDS", "1"))
    cases = [(fs, seed) for fs in FILESYSTEMS for seed in range(1, count + 1)]
    return cases + [
        pytest.param(*case, marks=[pytest.mark.slow] + (
            [pytest.mark.xfail(strict=True, reason=KNOWN[case])] if case in KNOWN else []))
        for case in [*PINNED, *KNOWN] if case not in cases]


# ------------------------------------------------------------------ the truth
@dataclass(frozen=True)
class Node:
    """One walked path: kind ("file", "dir", "symlink"), size (bytes; a symlink's: its
    target's length), SHA-256 of the content (a symlink's: of its target)."""

    kind: str
    size: int
    sha256: str

    @property
    def type(self) -> str:
        """As listings name it: a symlink is a file whose content is its target."""
        return "dir" if self.kind == "dir" else "file"


def _walk(root: Path) -> dict[str, Node]:
    """``root`` ("/") and every path below it (as "/a/b"), read through the mount."""
    tree = {"/": Node("dir", 0, "")}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            key = "/" + path.relative_to(root).as_posix()
            if path.is_symlink():
                target = os.fsencode(os.readlink(path))
                tree[key] = Node("symlink", len(target), hashlib.sha256(target).hexdigest())
            elif path.is_dir():
                tree[key] = Node("dir", 0, "")
            else:
                data = path.read_bytes()
                tree[key] = Node("file", len(data), hashlib.sha256(data).hexdigest())
    return tree


# ------------------------------------------------------------- the history
NAMES = ("a", "B", "report", "notes 2", "ünïcødé", "Ωmega", "日本語", "x y z", "data.bin",
         "Mixed.Case", "é")


class History:
    """Random operations on a mounted tree (failures the file system refuses are no
    operation: the walk, not this model, is the truth)."""

    def __init__(self, rng: random.Random, links: bool):
        self.rng = rng
        self.links = links

    def name(self) -> str:
        """A name from :data:`NAMES` and a number; one in 20 long (up to 240 bytes)."""
        if self.rng.random() < 0.05:
            return "L" * self.rng.randrange(100, 240) + str(self.rng.randrange(40))
        return f"{self.rng.choice(NAMES)}{self.rng.randrange(40)}"

    def data(self) -> bytes:
        """Random bytes of a random size: empty, tiny (resident, inline), a few blocks,
        or many blocks (several extents once free space is fragmented)."""
        size = self.rng.choice((0, self.rng.randrange(1, 300), self.rng.randrange(300, 9000),
                                self.rng.randrange(9000, 400_000)))
        return self.rng.randbytes(size)

    def round(self, root: Path) -> None:
        ops = [self.create, self.create, self.create, self.append, self.overwrite, self.truncate,
               self.delete, self.rename, self.move, self.rename_over, self.mkdir,
               self.rmdir, self.move_dir, self.sparse, self.retype, self.crowd]
        if self.links:
            ops += [self.hardlink, self.symlink]
        for _ in range(OPERATIONS):
            with contextlib.suppress(OSError):
                self.rng.choice(ops)(root)

    def _entries(self, root: Path) -> tuple[list[Path], list[Path]]:
        """(regular files, directories including the root and links to directories), in
        name order, a directory's entries before those below it (deterministic)."""
        files, dirs = [], [root]

        def visit(top: Path) -> None:
            with os.scandir(top) as listed:
                found = sorted(listed, key=lambda e: e.name)
            below = [Path(e.path) for e in found if e.is_dir() and e.name != "lost+found"]
            dirs.extend(below)
            files.extend(Path(e.path) for e in found if not e.is_dir() and not e.is_symlink())
            for path in below:
                if not path.is_symlink():
                    visit(path)

        visit(root)
        return files, dirs

    def _file(self, root: Path) -> Path:
        files = self._entries(root)[0]
        if not files:
            raise FileNotFoundError
        return self.rng.choice(files)

    def _dir(self, root: Path) -> Path:
        return self.rng.choice(self._entries(root)[1])

    def create(self, root: Path) -> None:
        path = self._dir(root) / self.name()
        if not path.exists():
            path.write_bytes(self.data())

    def sparse(self, root: Path) -> None:
        path = self._dir(root) / self.name()
        if not path.exists():
            with path.open("wb") as fh:
                fh.seek(self.rng.randrange(1, 300_000))
                fh.write(self.rng.randbytes(self.rng.randrange(1, 5000)))

    def append(self, root: Path) -> None:
        with self._file(root).open("ab") as fh:
            fh.write(self.data())

    def overwrite(self, root: Path) -> None:
        path = self._file(root)
        size = path.stat().st_size
        if size:
            at = self.rng.randrange(size)
            with path.open("r+b") as fh:
                fh.seek(at)
                fh.write(self.rng.randbytes(min(size - at, self.rng.randrange(1, 9000))))

    def truncate(self, root: Path) -> None:
        path = self._file(root)
        os.truncate(path, self.rng.randrange(path.stat().st_size * 2 + 9000))

    def delete(self, root: Path) -> None:
        self._file(root).unlink()

    def rename(self, root: Path) -> None:
        path = self._file(root)
        new = path.name.swapcase() if self.rng.random() < 0.3 else self.name()
        if not path.with_name(new).exists():
            path.rename(path.with_name(new))

    def move(self, root: Path) -> None:
        path = self._file(root)
        to = self._dir(root) / (path.name if self.rng.random() < 0.5 else self.name())
        if not to.exists():
            path.rename(to)

    def rename_over(self, root: Path) -> None:
        files = self._entries(root)[0]
        if len(files) >= 2:
            source, target = self.rng.sample(files, 2)
            os.replace(source, target)

    def mkdir(self, root: Path) -> None:
        (self._dir(root) / self.name()).mkdir()

    def rmdir(self, root: Path) -> None:
        path = self._dir(root)
        if path != root:
            shutil.rmtree(path)

    def retype(self, root: Path) -> None:
        """A file replaced by a directory of its name (holding a file), or a directory
        by a file."""
        files, dirs = self._entries(root)
        if len(files) + len(dirs) < 2:
            raise FileNotFoundError
        path = self.rng.choice(files + dirs[1:])
        if path.is_dir():
            shutil.rmtree(path)
            path.write_bytes(self.data())
        else:
            path.unlink()
            path.mkdir()
            (path / self.name()).write_bytes(self.data())

    def crowd(self, root: Path) -> None:
        """A directory of many small files (past one block: hashed, B+tree, index
        allocation directories)."""
        path = self._dir(root) / self.name()
        path.mkdir()
        for i in range(self.rng.randrange(50, 400)):
            (path / f"{self.name()}-{i}").write_bytes(self.rng.randbytes(self.rng.randrange(40)))

    def move_dir(self, root: Path) -> None:
        dirs = self._entries(root)[1]
        path, to = self.rng.choice(dirs), self.rng.choice(dirs) / self.name()
        if path != root and not to.is_relative_to(path) and not to.exists():
            path.rename(to)

    def hardlink(self, root: Path) -> None:
        os.link(self._file(root), self._dir(root) / self.name())

    def symlink(self, root: Path) -> None:
        target = self.rng.choice(("../" * self.rng.randrange(3) + self.name(),
                                  "t" * self.rng.randrange(1, 300)))
        os.symlink(target, self._dir(root) / self.name())


# ------------------------------------------------------------------ the checks
def _reported(rows: list[dict]) -> tuple[set[str], set[str], set[str]]:
    """Paths the diff names at the later point, at the earlier one, and those it names
    with a content change (at the later point)."""
    later, earlier, content = set(), set(), set()
    for row in rows:
        names = {row["path"], *row["other_paths"]}
        if row["change"] == "deleted":
            earlier |= names
            continue
        later |= names
        if row["change"] == "renamed":
            earlier.add(row["old_path"])
        if {"content", "target"} & set(row["what_changed"].split(",")) \
                or row["change"] == "created":
            content |= names
    return later, earlier, content


def _check_pair(chain: Chain, a: int, b: int, before: dict[str, Node],
                after: dict[str, Node]) -> list[str]:
    """What the diff of points ``a`` and ``b`` gets wrong against the walks."""
    result = forensics.diff(chain, a, b, files=True)
    rows = result.files.to_dict("records")
    later, earlier, content = _reported(rows)
    changed_type = {p for p in before.keys() & after.keys()
                    if before[p].type != after[p].type}
    wrong = [f"{a}->{b}: not reported: {p} ({after[p].kind}, new)"
             for p in sorted(after.keys() - before.keys() | changed_type) if p not in later]
    wrong += [f"{a}->{b}: not reported: {p} ({before[p].kind}, gone)"
              for p in sorted(before.keys() - after.keys() | changed_type)
              if p not in earlier]
    same = {p for p in before.keys() & after.keys() if before[p].type == after[p].type}
    wrong += [f"{a}->{b}: content change not reported: {p} ({before[p]} -> {after[p]})"
              for p in sorted(same) if before[p].kind != "dir"
              and before[p] != after[p] and p not in later]
    wrong += [f"{a}->{b}: a content change reported for unchanged {p} ({after[p]})"
              for p in sorted(same) if before[p].kind != "dir" and before[p] == after[p]
              and before[p].size and p in content]
    return wrong


def _check_point(chain: Chain, point: int, walked: dict[str, Node], rng: random.Random,
                 scratch: Path) -> list[str]:
    """What the listing of ``point`` and ``extract`` of a few files (and of each whose
    path differs from another's in case only) get wrong."""
    listed = {r.path: (r.type, r.size)
              for r in forensics.list_files(chain.disk(point)).itertuples()}
    truth = {p: (n.type, n.size) for p, n in walked.items()}
    wrong = [f"point {point}: listed {p} {listed.get(p)}, walked {truth.get(p)}"
             for p in sorted(listed.keys() | truth.keys())
             if listed.get(p) != truth.get(p)
             and not (p in listed and p in truth and truth[p][0] == "dir"
                      and listed[p][0] == "dir")]
    files = sorted(p for p, n in walked.items() if n.kind == "file")
    folded = Counter(p.casefold() for p in walked)
    twins = [p for p in files if folded[p.casefold()] > 1]  # names differing in case only
    for path in twins + rng.sample(files, min(3, len(files))):
        out = scratch / f"extract-{point}"
        try:
            tsk.extract(chain, point, path, out, force=True)
            got = hashlib.sha256(out.read_bytes()).hexdigest()
        except Exception as exc:  # named in the report, with what the walk has
            got = f"{type(exc).__name__}: {exc}"
        if got != walked[path].sha256:
            wrong.append(f"point {point}: extract {path}: {got} != walked "
                         f"{walked[path]}")
    return wrong


def run_history(fs: str, seed: int, tmp: Path) -> list[str]:
    """Make the history of ``seed`` on ``fs``; every discrepancy found."""
    spec = FILESYSTEMS[fs]
    rng = random.Random(f"{fs}-{seed}")
    history = History(rng, spec.links)
    image = spec.make(tmp / "v.img")
    chain = Chain.create(tmp / "chain")
    walks = []
    for _ in range(ROUNDS):
        with spec.mount(image, tmp / "m") as m:
            history.round(m)
        # walked through a fresh mount: a FUSE driver's page cache may serve one name of
        # a hard-linked file the bytes written before through another (ntfs-3g does,
        # until unmounted), which is no content of the volume
        with spec.mount(image, tmp / "m") as m:
            walks.append(_walk(m))
        backup_image(chain, image)
    wrong = []
    for point, walked in enumerate(walks):
        wrong += _check_point(chain, point, walked, rng, tmp)
        if point:
            wrong += _check_pair(chain, point - 1, point, walks[point - 1], walked)
    return wrong


@pytest.mark.parametrize(("fs", "seed"), _seeds())
def test_random_history_matches_the_walked_tree(fs: str, seed: int, tmp_path: Path) -> None:
    require_module("pytsk3", "pytsk3")
    require_tools(*FILESYSTEMS[fs].tools)
    if os.geteuid() != 0:
        reason = "loop and FUSE mounts need root"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    wrong = run_history(fs, seed, tmp_path)
    assert not wrong, "\n".join(wrong)

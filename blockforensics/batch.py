"""Batch operations on a thread per core: the C parts in ``_native`` release the GIL,
so a batch cut into contiguous parts of about equal bytes runs on every core.

``native`` is that C extension, or None when it was not built (no compiler or
libcrypto headers at install time); its callers then use pure-Python equivalents.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import queue

    import numpy as np

try:
    from blockforensics import _native as native
except ImportError:  # built without a C compiler or libcrypto headers
    native = None  # type: ignore[assignment]  # callers check for None
if native is not None and not hasattr(native, "copy_checked"):  # its newest function
    import sys

    print("blockforensics: warning: the C extension was built from an older _native.c "
          "(rebuild it: python3 setup.py build_ext --inplace); running without it",
          file=sys.stderr)
    native = None  # type: ignore[assignment]

T = TypeVar("T")

#: below this many bytes per part a thread hand-off costs more than it saves
MIN_PART_BYTES = 1 << 20


def parts(nbytes: np.ndarray) -> list[slice]:
    """Contiguous slices of items (``nbytes[i]`` bytes each) of about equal byte counts,
    one per core, none under ``MIN_PART_BYTES`` (so small batches are one part)."""
    import numpy as np

    total = int(nbytes.sum()) if len(nbytes) else 0
    n = min(threads(), total // MIN_PART_BYTES)
    if n <= 1:
        return [slice(0, len(nbytes))]
    cuts = np.searchsorted(np.cumsum(nbytes), total * np.arange(1, n) / n)
    edges = [0, *cuts.tolist(), len(nbytes)]
    return [slice(a, b) for a, b in itertools.pairwise(edges) if b > a]


#: the reply of a task: ``(index, error or None, result)``
Reply = tuple[int, "BaseException | None", Any]
#: a task of the worker threads: ``(work, piece, index, replies)``; its reply goes to
#: ``replies``
Task = tuple[Callable[[slice], Any], slice, int, "queue.SimpleQueue[Reply]"]


def run(work: Callable[[slice], object], pieces: list[slice]) -> None:
    """``work(piece)`` for every piece: one right here, several on the worker threads."""
    if len(pieces) == 1:
        work(pieces[0])
        return
    start(work, pieces)()


def start(work: Callable[[slice], T], pieces: list[slice]) -> Callable[[], list[T]]:
    """``work(piece)`` for every piece, started now on the worker threads; the function
    returned waits for all of them and gives their results in order (or raises the error
    of the first piece that failed, once none is running)."""
    import queue

    replies: queue.SimpleQueue[Reply] = queue.SimpleQueue()
    tasks = _pool()
    for index, piece in enumerate(pieces):
        tasks.put((work, piece, index, replies))

    def results() -> list[T]:
        got: list[Any] = [None] * len(pieces)
        errors: dict[int, BaseException] = {}
        for _ in pieces:
            index, error, got[index] = replies.get()
            if error is not None:
                errors[index] = error
        if errors:
            raise errors[min(errors)]
        return got

    return results


@cache
def threads() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1


@cache
def _pool() -> queue.SimpleQueue[Task]:
    """The worker threads' tasks: a thread per core, started on first use (plain threads:
    concurrent.futures would add ~6 ms to every start-up, with the logging it imports)."""
    import queue
    import threading

    tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
    for i in range(threads()):
        threading.Thread(target=_serve, args=(tasks,), name=f"blockforensics-batch-{i}",
                         daemon=True).start()
    return tasks


def _serve(tasks: queue.SimpleQueue[Task]) -> None:
    """A worker thread: run tasks, forever."""
    while True:
        work, piece, index, replies = tasks.get()
        try:
            replies.put((index, None, work(piece)))
        except BaseException as exc:  # handed to the waiting caller
            replies.put((index, exc, None))


if hasattr(os, "register_at_fork"):  # a forked child (e.g. a FUSE daemon) gets no threads
    os.register_at_fork(after_in_child=_pool.cache_clear)

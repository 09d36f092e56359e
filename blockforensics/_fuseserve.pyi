"""Types of the C extension ``_fuseserve`` (blockforensics/_fuseserve.c): a read-only FUSE
server of byte plans (blockforensics/formats/byteplan.py) on libfuse 3's multi-threaded
low-level loop, run without the GIL."""

from collections.abc import Callable, Sequence
from typing import Any

def serve(mountpoint: str, files: list[tuple[Any, ...]], sources: list[tuple[Any, ...]], /,
          *, mapped: Sequence[Any] = (), foreground: bool = True,
          on_open: Callable[[], object] | None = None, direct: bool = True
          ) -> tuple[int, int]: ...

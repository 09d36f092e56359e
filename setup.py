"""Build the C extensions (everything else lives in pyproject.toml).

``blockforensics._native`` hashes and encrypts a whole batch of blocks per call
with libcrypto (CRC-32 by carry-less folding where the CPU has PCLMULQDQ, else zlib),
without the GIL.  ``blockforensics._fuseserve`` serves byte plans over FUSE (libfuse 3's
low-level API) for ``blockforensics.expose``.  Both are optional: without a C compiler,
the libcrypto or libfuse 3 headers the build goes on, and ``blockforensics.spanhash`` and
``blockforensics.crypto`` use hashlib and ``cryptography`` instead, ``expose`` its Python
server (slower, same bytes).
"""

import shutil
import subprocess

from setuptools import Extension, setup


def fuse3_flags(option: str, default: list[str]) -> list[str]:
    """What pkg-config says libfuse 3 needs (``--cflags-only-I``, ``--libs-only-l``)."""
    if shutil.which("pkg-config") is None:
        return default
    done = subprocess.run(["pkg-config", option, "fuse3"], capture_output=True, text=True)
    return [flag[2:] for flag in done.stdout.split()] if done.returncode == 0 else default


setup(ext_modules=[
    Extension("blockforensics._native", ["blockforensics/_native.c"],
              libraries=["crypto", "z"], depends=["blockforensics/_crc32.h"], optional=True),
    Extension("blockforensics._fuseserve", ["blockforensics/_fuseserve.c"],
              include_dirs=fuse3_flags("--cflags-only-I", ["/usr/include/fuse3"]),
              libraries=[*fuse3_flags("--libs-only-l", ["fuse3"]), "crypto", "z"],
              depends=["blockforensics/_crc32.h"], optional=True),
])

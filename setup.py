"""Build the one C extension (everything else lives in pyproject.toml).

``blockforensics._native`` hashes and encrypts a whole batch of blocks per call
with libcrypto (CRC-32 by carry-less folding where the CPU has PCLMULQDQ, else zlib),
without the GIL.  It is optional: without a C compiler or the
libcrypto headers the build goes on, and ``blockforensics.spanhash`` and
``blockforensics.crypto`` use hashlib and ``cryptography`` instead (slower, same bytes).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("blockforensics._native", ["blockforensics/_native.c"],
                             libraries=["crypto", "z"], depends=["blockforensics/_crc32.h"],
                             optional=True)])

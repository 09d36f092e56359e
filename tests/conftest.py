"""Test-wide settings."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import matplotlib

# fsync costs 20-100 ms per image here and protects only against power loss, which no
# test can cause; every other step of the crash-safe write path still runs.
os.environ.setdefault("BLOCKFORENSICS_FSYNC", "0")
# records of chains kept outside them (verify's rollback check) go to a scratch directory,
# removed when the run ends
if "BLOCKFORENSICS_STATE_DIR" not in os.environ:
    os.environ["BLOCKFORENSICS_STATE_DIR"] = tempfile.mkdtemp(prefix="bf-state-")
    atexit.register(shutil.rmtree, os.environ["BLOCKFORENSICS_STATE_DIR"], True)
matplotlib.use("Agg")

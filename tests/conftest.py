"""Test-wide settings."""

from __future__ import annotations

import os
import tempfile

import matplotlib

# fsync costs 20-100 ms per image here and protects only against power loss, which no
# test can cause; every other step of the crash-safe write path still runs.
os.environ.setdefault("BLOCKFORENSICS_FSYNC", "0")
# records of chains kept outside them (verify's rollback check) go to a scratch directory
os.environ.setdefault("BLOCKFORENSICS_STATE_DIR", tempfile.mkdtemp(prefix="bf-state-"))
matplotlib.use("Agg")

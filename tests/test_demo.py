"""The README's first command: ``blockforensics demo`` on the built-in sample runs its
whole story (backups, restores, verify, consolidation without the key, export, boots)
and every one of its checks passes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from support import require_tools


@pytest.mark.slow
def test_demo_runs_the_whole_story_and_every_check_passes(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64", "qemu-img", "fusermount3", "mcopy")
    out = tmp_path / "demo-out"
    done = subprocess.run([sys.executable, "-m", "blockforensics", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with (out / "checks.csv").open() as fh:
        checks = {row["check"]: row["ok"] for row in csv.DictReader(fh)}
    assert len(checks) >= 10 and set(checks.values()) == {"True"}, checks
    for name in ("summary.csv", "blockmaps.png", "console.log"):
        assert (out / name).stat().st_size > 0, name
    assert "Traceback" not in done.stderr

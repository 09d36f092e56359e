"""Progress bars: tqdm counts bytes when shown; nothing is imported when not."""

from __future__ import annotations

import subprocess
import sys

from blockforensics.progress import progress_bar


def test_a_shown_bar_counts_bytes():
    with progress_bar(1000, "copy", True) as bar:
        bar.update(600)
        bar.update(400)
        assert (bar.n, bar.total, bar.desc) == (1000, 1000, "copy")


def test_a_command_without_a_terminal_does_not_import_tqdm(tmp_path):
    """Backup and restore with output to a pipe show no bar and skip tqdm's import."""
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(range(256)) * 64)
    script = ("import sys\nfrom blockforensics.cli import main\n"
              f"assert main(['backup', {str(source)!r}, {str(tmp_path / 'c')!r},"
              " '--all-blocks']) == 0\n"
              f"assert main(['restore', {str(tmp_path / 'c')!r}, {str(tmp_path / 'r.raw')!r}])"
              " == 0\n"
              "assert 'tqdm' not in sys.modules, 'tqdm was imported'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.raw").read_bytes() == source.read_bytes()

"""Progress bars: tqdm counts bytes when shown; nothing is imported when not."""

from __future__ import annotations

import contextlib
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


def test_step_bars_count_points_not_bytes():
    with progress_bar(3, "points", True, unit="point") as bar:
        bar.update(1)
        assert (bar.n, bar.total, bar.unit) == (1, 3, " point")


def test_timeline_and_diff_files_show_a_bar_of_points_on_a_terminal(tmp_path):
    """On a terminal, timeline and diff --files draw a bar of points on stderr (tqdm's
    'N/M' counter); the rows themselves are unchanged."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    from chains import build_chain

    build_chain(tmp_path / "c", [None, 0, 1], n_blocks=12)
    for args in (["timeline", str(tmp_path / "c")],
                 ["diff", str(tmp_path / "c"), "0", "2", "--files"]):
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        done = subprocess.run([sys.executable, "-m", "blockforensics.cli", *args],
                              stdout=subprocess.PIPE, stderr=follower, text=True)
        os.close(follower)
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(leader, 65536):
                shown += chunk
        os.close(leader)
        assert done.returncode == 0, shown
        assert b"/3" in shown or b"/2" in shown, shown  # tqdm's "done/total" of points

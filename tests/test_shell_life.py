"""The command in a shell's life: Ctrl-C and SIGTERM in the middle of a write, two
writers at once, names that are no text in the locale, a terminal that must not obey a
file name, TERM=dumb.  Real processes, real signals, a real pseudo-terminal."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import require_tools

MiB = 1 << 20
CLI = [sys.executable, "-m", "blockforensics.cli"]


def ok(*args: object, **kwargs: object) -> str:
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr
    return done.stdout


def random_volume(path: Path, seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        for _ in range(size // (16 * MiB)):
            fh.write(rng.bytes(16 * MiB))


def contents(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A chain of two 192 MiB points of random data, and a third version of the source."""
    work = tmp_path_factory.mktemp("big")
    source, chain = work / "disk.raw", work / "chain"
    for seed in (1, 2):
        random_volume(source, seed, 192 * MiB)
        ok("backup", source, chain)
    random_volume(source, 3, 192 * MiB)
    return source, chain


COMMANDS = {
    "backup": lambda s, c, out: ["backup", s, c],
    "consolidate": lambda s, c, out: ["consolidate", c],
    "restore": lambda s, c, out: ["restore", c, out, "--force"],
    "export": lambda s, c, out: ["export", c, out, "--format", "vhd-dynamic", "--force"],
}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_signal_mid_write_keeps_the_old_chain_and_output(big: tuple[Path, Path], command: str,
                                                           signum: int, tmp_path: Path) -> None:
    """Sent once the command's temporary file (or merge journal) exists and grows: exit
    130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP: the terminal or ssh session gone; both
    used to kill the process where it stood, leaving its temporary behind), one line, no
    temporary left, the chain and the old output as they were."""
    source, chain = big
    out = tmp_path / "out.img"
    out.write_bytes(b"the previous output")
    before = contents(chain)
    proc = subprocess.Popen([*CLI, *map(str, COMMANDS[command](source, chain, out))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        temporaries = [p for d in (chain, tmp_path) for p in d.iterdir()
                       if p.name.startswith(".") and p.name.endswith(".tmp")]
        if any(p.stat().st_size > MiB for p in temporaries if p.exists()) or \
                (command == "consolidate" and temporaries):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signum)
    stderr = proc.communicate(timeout=60)[1]
    expected = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated"),
                signal.SIGHUP: (129, "hung up")}
    assert (proc.returncode, stderr) == (expected[signum][0],
                                         f"blockforensics: {expected[signum][1]}\n")
    assert contents(chain) == before
    assert out.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.img"]


def test_two_backups_at_once_make_a_line_not_a_branch(tmp_path: Path) -> None:
    """The second waits for the first and takes its point as parent (it used to pick the
    parent before waiting: both branched off point 0, the second storing every change
    again)."""
    source, chain = tmp_path / "disk.raw", tmp_path / "chain"
    random_volume(source, 1, 32 * MiB)
    ok("backup", source, chain)
    random_volume(source, 2, 32 * MiB)
    procs = [subprocess.Popen([*CLI, "backup", str(source), str(chain), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    import json

    points = json.loads(ok("list", chain, "--json"))
    assert [p["parent"] for p in points] == [None, 0, 1]
    assert points[2]["blocks"] == 0  # nothing changed since point 1
    ok("verify", chain)


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chain of an ext4 volume (mkfs.ext4 -d) before and after files whose names hold a
    byte that is no UTF-8, an ESC sequence and a leading '-'."""
    require_tools("mkfs.ext4")
    work = tmp_path_factory.mktemp("names")
    tree = work / "tree"
    tree.mkdir()
    (tree / "plain.txt").write_text("plain\n")
    image, chain = work / "vol.ext4", work / "chain"
    for step in (0, 1):
        if step:
            (tree / "-dash").mkdir()
            Path(os.fsdecode(bytes(tree / "bad") + b"\xff.txt")).write_text("latin\n")
            (tree / "-dash" / "red\x1b[31mtext").write_text("escape\n")
        image.unlink(missing_ok=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", tree, image,
                        "8M"], check=True, capture_output=True)
        ok("backup", image, chain)
    return chain


def test_names_print_in_any_locale_and_extract_by_their_bytes(odd_names: Path,
                                                              tmp_path: Path) -> None:
    """An ASCII-only output (LANG=C without Python's UTF-8 mode, PYTHONIOENCODING=ascii)
    used to end in a UnicodeEncodeError traceback; a name given as its raw bytes (a
    surrogate in Python) raised one in extract."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    shown = ok("diff", odd_names, 0, 1, "--files", env=env)
    assert "/bad\\xff.txt" in shown
    out = tmp_path / "latin.txt"
    raw = os.fsdecode(b"/bad\xff.txt")
    ok("extract", odd_names, 1, raw, out, env={**os.environ, "LC_ALL": "C"})
    assert out.read_text() == "latin\n"


def _on_a_terminal(args: list[object], env: dict[str, str]) -> tuple[bytes, bytes]:
    """stdout and stderr of the command, each a pseudo-terminal of its own (read while
    it runs: a terminal's buffer is small)."""
    import fcntl
    import pty
    import struct
    import termios
    from concurrent.futures import ThreadPoolExecutor

    def drain(leader: int) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        return b"".join(chunks)

    streams = [pty.openpty() for _ in range(2)]
    for _, follower in streams:  # 24 x 100: tqdm draws nothing on a terminal 0 wide
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with ThreadPoolExecutor(2) as pool:
        read = [pool.submit(drain, leader) for leader, _ in streams]
        proc = subprocess.Popen([*CLI, *map(str, args)], stdout=streams[0][1],
                                stderr=streams[1][1], env=env)
        for _, follower in streams:
            os.close(follower)
        assert proc.wait(timeout=60) == 0
        return read[0].result(timeout=60), read[1].result(timeout=60)


def test_a_terminal_shows_control_characters_of_names_but_never_obeys_them(
        odd_names: Path) -> None:
    """An ESC in a file name is printed as \\x1b in the table, on a terminal (it used to
    reach the terminal and recolour it) and piped (a saved report would, once shown);
    ``--json`` keeps the name exactly."""
    stdout, _ = _on_a_terminal(["diff", odd_names, 0, 1, "--files"], dict(os.environ))
    assert b"\x1b" not in stdout and b"red\\x1b[31mtext" in stdout
    piped = ok("diff", odd_names, 0, 1, "--files")
    assert "\x1b" not in piped and "red\\x1b[31mtext" in piped
    files = json.loads(ok("diff", odd_names, 0, 1, "--files", "--json"))["files"]
    assert "/-dash/red\x1b[31mtext" in {f["path"] for f in files}


def test_no_progress_bar_on_a_dumb_terminal(tmp_path: Path) -> None:
    """TERM=dumb (an editor's shell, a serial console) cannot redraw a line: each redraw
    would be a line of its own, so no bar is drawn; a capable terminal gets one."""
    source = tmp_path / "disk.raw"
    random_volume(source, 1, 64 * MiB)
    for term, drawn in (("dumb", False), ("xterm", True)):
        chain = tmp_path / f"chain-{term}"
        _, stderr = _on_a_terminal(["backup", source, chain],
                                   {**os.environ, "TERM": term})
        assert (b"backup:" in stderr) == drawn, stderr  # tqdm's "backup: 40%|…"


def test_an_export_keeps_to_the_umask(tmp_path: Path) -> None:
    """Exported disk images are readable by all (a hypervisor running as another user)
    unless the umask says otherwise: under umask 077 one used to come out 0644."""
    source, chain = tmp_path / "disk.raw", tmp_path / "chain"
    random_volume(source, 1, 16 * MiB)
    ok("backup", source, chain)
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        out = tmp_path / f"umask{mask:03o}.vhd"
        ok("export", chain, out, preexec_fn=lambda mask=mask: os.umask(mask))
        assert out.stat().st_mode & 0o777 == mode


def test_started_with_stdout_closed(tmp_path: Path) -> None:
    """``blockforensics list CHAIN >&-`` (a daemon, a cron job closing its output): the
    command runs; it used to end in an AttributeError traceback flushing no stdout."""
    source, chain = tmp_path / "disk.raw", tmp_path / "chain"
    random_volume(source, 1, 16 * MiB)
    ok("backup", source, chain)
    done = subprocess.run([*CLI, "list", str(chain)], stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: os.close(1), timeout=60)
    assert (done.returncode, done.stderr) == (0, "")


def test_a_chain_is_not_backed_up_into_itself(tmp_path: Path) -> None:
    """``backup CHAIN CHAIN`` (or through a symlink) used to add a point read from the
    chain's own newest one while writing it; now one line, exit 2, nothing added."""
    source, chain = tmp_path / "disk.raw", tmp_path / "chain"
    random_volume(source, 1, 16 * MiB)
    ok("backup", source, chain)
    (tmp_path / "link").symlink_to(chain)
    before = contents(chain)
    for target in (chain, tmp_path / "link"):
        done = subprocess.run([*CLI, "backup", str(chain), str(target)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr == (f"blockforensics: error: {target}: is the source {chain} "
                               "itself; back a point up into another chain\n")
    assert contents(chain) == before


def test_nohup_keeps_a_backup_running_through_a_hangup(tmp_path: Path) -> None:
    """Under ``nohup`` (SIGHUP ignored) a hang-up changes nothing: the backup finishes."""
    source, chain = tmp_path / "disk.raw", tmp_path / "chain"
    random_volume(source, 1, 128 * MiB)
    proc = subprocess.Popen([*CLI, "backup", str(source), str(chain)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    while proc.poll() is None and not any(p.name.endswith(".tmp") for p in chain.glob(".*")):
        time.sleep(0.002)
    assert proc.poll() is None, "finished before the hang-up"
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    ok("verify", chain)

"""Fleets on Dask: one task per chain on worker processes, a broken chain reported with
its error while the others finish, results combined into one DataFrame and report."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from blockforensics import Chain, Volume, backup
from blockforensics.errors import UsageError
from blockforensics.fleet import Fleet, find_chains

N_CHAINS = 21
ATTACKED = {"host-03", "host-11"}
BROKEN = "host-07"
TEXT = (b"quarterly report: revenue up, costs down, nothing to see here. " * 20000)[: 256 * 4096]


def make_fleet(root: Path) -> list[Path]:
    """``N_CHAINS`` small chains (a full and an incremental each) in two site folders;
    two incrementals overwrite 100 blocks with random bytes; one chain's manifest is
    garbage."""
    rng = np.random.default_rng(8)
    paths = []
    for i in range(N_CHAINS):
        name = f"host-{i:02d}"
        path = root / ("site-a" if i % 2 else "site-b") / name
        chain = Chain.create(path)
        backup(chain, Volume.from_bytes(TEXT))
        day2 = bytearray(TEXT)
        day2[4096 * (5 + i) : 4096 * (7 + i)] = (b"minutes of the meeting\n" * 357)[:8192]
        if name in ATTACKED:
            day2[4096 * 50 : 4096 * 150] = rng.integers(0, 256, 4096 * 100, np.uint8).tobytes()
        backup(chain, Volume.from_bytes(bytes(day2)))
        chain.close()
        paths.append(path)
    (root / "site-a" / BROKEN / "chain.json").write_text("{not json")
    return paths


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet")
    make_fleet(root)
    return root


def test_chains_are_found_by_their_manifests(fleet_dir: Path, tmp_path: Path) -> None:
    found = find_chains([fleet_dir / "site-a", fleet_dir])
    assert len(found) == N_CHAINS  # a chain named twice is listed once
    assert find_chains([fleet_dir / "site-a" / "host-01"]) == [fleet_dir / "site-a" / "host-01"]
    with pytest.raises(UsageError):
        find_chains([tmp_path])  # no chain
    with pytest.raises(UsageError):
        find_chains([tmp_path / "missing"])


def check_triage(records: list[dict], fleet_dir: Path) -> None:
    by_name = {Path(r["path"]).name: r for r in records}
    assert len(by_name) == N_CHAINS
    assert by_name[BROKEN]["status"] == "error" and by_name[BROKEN]["error"]
    for name, record in by_name.items():
        if name == BROKEN:
            continue
        assert record["status"] == "ok", record
        verdicts = [p["verdict"] for p in record["result"]["points"]]
        expected = "clean" if name not in ATTACKED else "suspicious"
        assert verdicts[0] == "clean"
        assert (verdicts[1] != "clean") == (name in ATTACKED), (name, record["result"])
        assert record["result"]["last_clean_point"] == (1 if expected == "clean" else 0)


def test_local_cluster_of_two_processes_triages_verifies_and_times_a_fleet(
        fleet_dir: Path) -> None:
    with Fleet(workers=2) as fleet:
        assert len(fleet.client.scheduler_info()["workers"]) == 2
        pids = set(fleet.client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids  # worker processes
        triaged = fleet.run("triage", [fleet_dir])
        verified = fleet.run("verify", [fleet_dir / "site-a", fleet_dir / "site-b"])
        timeline = fleet.run("timeline", [fleet_dir])
    check_triage(triaged.records, fleet_dir)

    frame = triaged.frame()
    assert len(frame) == N_CHAINS
    ok = frame[frame["status"] == "ok"]
    assert set(ok[ok["verdict"] != "clean"]["path"].map(lambda p: Path(p).name)) == ATTACKED
    assert frame.set_index(frame["path"].map(lambda p: Path(p).name)).loc[BROKEN, "status"] \
        == "error"
    report = triaged.report()
    assert f"{N_CHAINS} chains: {N_CHAINS - 3} clean, 2 suspicious, 0 encrypted, 1 failed" in report
    assert f"{BROKEN}: ERROR" in report

    assert [r["status"] for r in verified.records].count("error") == 1
    assert all(r["result"]["ok"] and r["result"]["images"] == 2
               for r in verified.records if r["status"] == "ok")
    by_name = {Path(r["path"]).name: r for r in timeline.records}
    attacked_rows = by_name["host-03"]["result"]
    assert [row["point"] for row in attacked_rows] == [0, 1]
    assert attacked_rows[1]["blocks_changed"] == 102  # 100 random + 2 edited
    assert by_name["host-04"]["result"][1]["blocks_changed"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_fleet_cli_on_a_separate_scheduler_and_workers(fleet_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host",
                               "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        procs += [subprocess.Popen([*dask, "worker", address,
                                    "--nthreads", "1", "--no-dashboard"],
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
                  for _ in range(2)]
        done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "fleet", "triage",
                               str(fleet_dir), "--scheduler", address, "--json"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 1, done.stderr  # one chain failed
        records = json.loads(done.stdout)
        check_triage(records, fleet_dir)
        assert all(set(r) == {"path", "status", "result"} for r in records
                   if r["status"] == "ok")
        no_scheduler = subprocess.run(
            [sys.executable, "-m", "blockforensics.cli", "fleet", "verify", str(fleet_dir),
             "--scheduler", f"tcp://127.0.0.1:{free_port()}"],
            capture_output=True, text=True, env=env, timeout=120)
        assert no_scheduler.returncode == 2
        assert len(no_scheduler.stderr.strip().splitlines()) == 1
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.parametrize("address", ["nonsense:xx", "tcp://:", "foo://bar", ""])
def test_a_scheduler_address_that_is_no_address_is_a_usage_error(address: str,
                                                                  fleet_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "fleet", "verify",
                           str(fleet_dir), "--scheduler", address],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "not a scheduler address" in done.stderr and "Traceback" not in done.stderr


def _keyed_fleet(root: Path) -> tuple[Path, Path]:
    """Three chains — plain, and two encrypted with keys of their own — and a directory
    holding the two keys as NAME.key."""
    from blockforensics.crypto import KeySource

    keys = root / "keys"
    keys.mkdir()
    for name in ("plain", "finance", "hr"):
        key = None
        if name != "plain":
            (keys / f"{name}.key").write_bytes(os.urandom(32))
            key = KeySource.from_file(keys / f"{name}.key")
        chain = Chain.create(root / "chains" / name, key)
        backup(chain, Volume.from_bytes(TEXT[: 64 * 4096]))
        chain.close()
    return root / "chains", keys


def test_encrypted_chains_are_read_with_their_own_keys(tmp_path: Path) -> None:
    chains, keys = _keyed_fleet(tmp_path)
    with Fleet(workers=1, dashboard=False) as fleet:
        each = fleet.run("verify", [chains], key_dir=keys)
        (keys / "hr.key").rename(tmp_path / "hr.key")
        one_missing = fleet.run("triage", [chains], key_dir=keys)
        one_for_all = fleet.run("timeline", [chains], key_file=keys / "finance.key")
    assert each.ok and each.findings() == {"sound": 3, "damaged": 0, "failed": 0}
    assert all(r["result"]["authenticated"] for r in each.records
               if Path(r["path"]).name != "plain")
    assert each.report().startswith("fleet verify: 3 chains: 3 sound, 0 damaged, 0 failed")
    errors = {Path(r["path"]).name: r["error"] for r in one_missing.errors()}
    assert list(errors) == ["hr"] and "give its key" in errors["hr"]
    assert one_missing.findings() == {"clean": 2, "suspicious": 0, "encrypted": 0, "failed": 1}
    assert [Path(r["path"]).name for r in one_for_all.errors()] == ["hr"]  # not its key


@pytest.mark.parametrize("option", [["--key-dir", "missing"], ["--key-file", "missing"],
                                    ["--key-file", "keys/hr.key", "--key-dir", "keys"]])
def test_a_missing_key_file_or_directory_is_a_usage_error(option: list[str],
                                                          tmp_path: Path) -> None:
    chains, _ = _keyed_fleet(tmp_path)
    done = subprocess.run([sys.executable, "-m", "blockforensics.cli", "fleet", "verify",
                           str(chains), *(o if o.startswith("--") else str(tmp_path / o)
                                          for o in option)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_the_fleet_picture_shows_each_points_verdict_and_each_failure(fleet_dir: Path) -> None:
    """One row per chain, named below the fleet's folder; each point's square in its
    verdict's colour; the broken chain a grey square with its error beside it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex
    from matplotlib.patches import Rectangle

    from blockforensics.fleet import FleetResult, run_chain
    from blockforensics.plot_forensics import FINDING_COLORS, plot_fleet

    chains = find_chains([fleet_dir])
    result = FleetResult("triage", [run_chain("triage", str(path)) for path in chains])
    ax = plot_fleet(result)
    names = [label.get_text() for label in ax.get_yticklabels()]
    assert names == [str(path.relative_to(fleet_dir)) for path in chains]
    squares: dict[tuple[int, int], str] = {
        (round(p.get_y() + 0.4), round(p.get_x() + 0.4)): to_hex(p.get_facecolor())
        for p in ax.patches if isinstance(p, Rectangle)}
    expected: dict[tuple[int, int], str] = {}
    for row, record in enumerate(result.records):
        if record["status"] == "error":
            expected[(row, 0)] = FINDING_COLORS["failed"]
            (text,) = [t.get_text() for t in ax.texts]  # the error, the chain's path left out
            assert text.startswith("ChainError: chain.json") and record["path"] not in text
            continue
        for point in record["result"]["points"]:
            expected[(row, point["point"])] = FINDING_COLORS[point["verdict"]]
    assert squares == expected
    attacked_rows = {names.index(n) for n in names if Path(n).name in ATTACKED}
    assert {row for (row, col), colour in squares.items()
            if col == 1 and colour == FINDING_COLORS["suspicious"]} == attacked_rows
    assert "2 suspicious" in ax.get_title() and "1 failed" in ax.get_title()


def test_chains_of_one_name_take_the_key_at_their_own_path(tmp_path: Path) -> None:
    """One folder per host, every chain in it named ``chain``: ``--key-dir`` takes
    ``DIR/HOST/chain.key`` (a lookup by the chain's name alone gave every host one key),
    and falls back to ``DIR/NAME.key``."""
    from blockforensics.crypto import KeySource
    from blockforensics.fleet import key_files, run_chain

    keys = tmp_path / "keys"
    chains = [tmp_path / "hosts" / "h1" / "chain", tmp_path / "hosts" / "h2" / "chain",
              tmp_path / "hosts" / "solo"]
    key_paths = [keys / "h1" / "chain.key", keys / "h2" / "chain.key", keys / "solo.key"]
    for chain_dir, key_path in zip(chains, key_paths):
        key_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.write_bytes(os.urandom(32))
        chain = Chain.create(chain_dir, KeySource.from_file(key_path))
        backup(chain, Volume.from_bytes(TEXT[: 16 * 4096]))
        chain.close()
    found = find_chains([tmp_path / "hosts"])
    assert key_files(found, key_dir=keys) == [str(k) for k in key_paths]
    for chain_dir, key in zip(found, key_files(found, key_dir=keys)):
        record = run_chain("verify", str(chain_dir), key_file=key)
        assert record["status"] == "ok" and record["result"]["authenticated"], record

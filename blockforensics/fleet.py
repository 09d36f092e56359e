"""Fleets: one command over many chains, one task per chain, on Dask (``dask.distributed``).

An incident has hundreds of machines' backups.  :func:`run_fleet` (and
``blockforensics fleet triage|verify|timeline DIR...``) finds the chains under the
given directories by their manifests and runs the command on each as a separate
task: on a ``LocalCluster`` of worker processes on this machine when no scheduler
is given, or on a running Dask scheduler and its workers elsewhere (the chains must
be on storage every worker sees, at the same path).  Encrypted chains are read with a
key file (one for all, ``--key-file``) or with their own (``--key-dir DIR``:
``DIR/NAME.key`` for the chain in a directory ``NAME``); a plain chain ignores it, and
key files travel as paths, never as keys.  A chain that fails is reported with its
error and never stops the others.  The results come back as one
:class:`FleetResult`: one record per chain (the command's own JSON), a pandas
DataFrame of one row per chain, and a text report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockforensics.errors import UsageError
from blockforensics.image.store import MANIFEST

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client, LocalCluster

    from blockforensics.crypto import KeySource

COMMANDS = ("triage", "verify", "timeline")


# ------------------------------------------------------------------ one chain (on a worker)
def _triage(path: str, rules: str | None, key: KeySource | None) -> Any:
    from blockforensics.triage import triage_chain

    return triage_chain(path, rules=rules, key=key)


def _verify(path: str, rules: str | None, key: KeySource | None) -> Any:
    from blockforensics.image.verify import verify

    return verify(path, key).to_json()


def _timeline(path: str, rules: str | None, key: KeySource | None) -> Any:
    import json

    from blockforensics.forensics import timeline
    from blockforensics.image.chain import Chain

    with Chain.open(path, key) as chain:
        return json.loads(timeline(chain).to_json(orient="records"))


_RUN: dict[str, Callable[[str, str | None, KeySource | None], Any]] = {
    "triage": _triage, "verify": _verify, "timeline": _timeline}


def run_chain(command: str, path: str, rules: str | None = None,
              key_file: str | None = None) -> dict[str, Any]:
    """Run ``command`` on the chain at ``path`` (with the key in ``key_file`` if the chain
    is encrypted): ``{"path", "status": "ok", "result"}``, or ``{"path", "status":
    "error", "error"}`` whatever went wrong (a task never raises)."""
    try:
        return {"path": path, "status": "ok",
                "result": _RUN[command](path, rules, _key(path, key_file))}
    except Exception as exc:  # a broken chain is a finding, not the end of the fleet
        return {"path": path, "status": "error", "error": _message(exc)}


def _key(path: str, key_file: str | None) -> KeySource | None:
    """The key for the chain at ``path``: read from ``key_file`` when the chain is
    encrypted, else None (a plain chain refuses a key)."""
    if key_file is None:
        return None
    from blockforensics.crypto import KeySource
    from blockforensics.image.chain import Chain

    with Chain.open(path) as chain:
        encrypted = chain.encrypted
    return KeySource.from_file(key_file) if encrypted else None


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------ finding chains
def find_chains(directories: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Each directory that is a chain, or the chains below it (found by their manifests),
    sorted and without repeats; UsageError for a directory that does not exist, or when
    there is no chain at all."""
    found: dict[Path, None] = {}
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise UsageError(f"{directory}: not a directory")
        if (directory / MANIFEST).is_file():
            found[directory] = None
            continue
        for manifest in sorted(directory.rglob(MANIFEST)):
            found[manifest.parent] = None
    if not found:
        raise UsageError("fleet: no chain (no chain.json) in the directories given")
    return list(found)


def relative_names(chains: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Each chain's path below the folder all of them share (one chain: its name)."""
    paths = [os.path.abspath(c) for c in chains]
    if len(paths) < 2:
        return [os.path.basename(p) for p in paths]
    common = os.path.commonpath(paths)
    return [os.path.relpath(p, common) for p in paths]


def key_files(chains: Sequence[Path], key_file: str | os.PathLike[str] | None = None,
              key_dir: str | os.PathLike[str] | None = None) -> list[str | None]:
    """The key file of each chain: ``key_file`` for all, or from ``key_dir``: the one at
    the chain's path below the folder the chains share (``key_dir/site/host/chain.key``),
    else ``key_dir/NAME.key`` for the chain in a directory NAME (None where there is
    neither: an encrypted chain then fails on its own, asking for its key); UsageError
    when the file or directory is missing or both are given."""
    if key_file is not None and key_dir is not None:
        raise UsageError("fleet: give --key-file (one key for all) or --key-dir, not both")
    if key_file is not None:
        if not Path(key_file).is_file():
            raise UsageError(f"{key_file}: no such key file")
        return [os.fspath(key_file) for _ in chains]
    if key_dir is None:
        return [None for _ in chains]
    if not Path(key_dir).is_dir():
        raise UsageError(f"{key_dir}: not a directory of key files")
    found = []
    for chain, name in zip(chains, relative_names(chains)):
        keys = [Path(key_dir) / f"{name}.key", Path(key_dir) / f"{chain.name}.key"]
        found.append(next((os.fspath(k) for k in keys if k.is_file()), None))
    return found


# ------------------------------------------------------------------ results
@dataclass
class FleetResult:
    """The records of one fleet run, one per chain, in the order the chains were found."""

    command: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.records)

    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "error"]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per chain: path, status, error, and the command's summary fields."""
        return [{"path": r["path"], "status": r["status"], "error": r.get("error", ""),
                 **(_SUMMARY[self.command](r["result"]) if r["status"] == "ok" else {})}
                for r in self.records]

    def frame(self) -> pd.DataFrame:
        """:meth:`rows` as a DataFrame, one row per chain."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def findings(self) -> dict[str, int]:
        """How many chains came to each finding — triage: their worst verdict
        ("clean", "suspicious", "encrypted"); verify: "sound" or "damaged"; timeline:
        "read" — and "failed" (the command could not run on them)."""
        found = [_FINDING[self.command](r["result"]) if r["status"] == "ok" else "failed"
                 for r in self.records]
        return {name: found.count(name) for name in (*_FINDINGS[self.command], "failed")}

    def cells(self) -> list[tuple[str, list[str], str]]:
        """Per chain, in order: its path relative to the folder all the chains share, the
        finding of each of its points (triage: the verdicts; timeline: "suspected
        encryption" or "no suspected file") or of the chain as a whole (verify: "sound"
        or "damaged"), or ``["failed"]``; and its error ("" if none; files in the chain
        named from it).  What :func:`blockforensics.plot_forensics.plot_fleet` draws."""
        names = relative_names([r["path"] for r in self.records])
        return [(name, _CELLS[self.command](r["result"]) if r["status"] == "ok" else ["failed"],
                 r.get("error", "").replace(os.path.join(r["path"], ""), ""))
                for name, r in zip(names, self.records)]

    def report(self) -> str:
        """A text report: how many chains came to each finding, then one line per chain
        (its summary or its error)."""
        rows = self.rows()
        lines = [f"fleet {self.command}: {len(rows)} chains: "
                 + ", ".join(f"{n} {name}" for name, n in self.findings().items())]
        for row in rows:
            summary = ", ".join(f"{k}={v}" for k, v in row.items()
                                if k not in ("path", "status", "error"))
            lines.append(f"  {row['path']}: "
                         + (f"ERROR {row['error']}" if row["status"] == "error" else summary))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.report()


def _worst_verdict(result: dict[str, Any]) -> str:
    verdicts = [p["verdict"] for p in result["points"]]
    return next((v for v in ("encrypted", "suspicious") if v in verdicts), "clean")


def _triage_summary(result: dict[str, Any]) -> dict[str, Any]:
    verdicts = [p["verdict"] for p in result["points"]]
    return {"points": len(verdicts), "verdict": _worst_verdict(result),
            "flagged_points": sum(v != "clean" for v in verdicts),
            "last_clean_point": result.get("last_clean_point")}


def _verify_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"ok": result["ok"], "images": result["images"], "blocks": result["blocks"],
            "problems": len(result["problems"])}


def _timeline_summary(result: list[dict[str, Any]]) -> dict[str, Any]:
    return {"points": len(result),
            "blocks_changed": sum(int(r["blocks_changed"]) for r in result),
            "suspected_encryption": sum(int(r["suspected_encryption"]) for r in result)}


_SUMMARY: dict[str, Callable[[Any], dict[str, Any]]] = {
    "triage": _triage_summary, "verify": _verify_summary, "timeline": _timeline_summary}
#: what each command finds of a chain it ran on, and the findings it can come to
_FINDING: dict[str, Callable[[Any], str]] = {
    "triage": _worst_verdict, "verify": lambda r: "sound" if r["ok"] else "damaged",
    "timeline": lambda r: "read"}
_FINDINGS = {"triage": ("clean", "suspicious", "encrypted"), "verify": ("sound", "damaged"),
             "timeline": ("read",)}
#: the finding of each point (or of the whole chain) a command came to, as FleetResult.cells
_CELLS: dict[str, Callable[[Any], list[str]]] = {
    "triage": lambda r: [p["verdict"] for p in r["points"]],
    "verify": lambda r: ["sound" if r["ok"] else "damaged"],
    "timeline": lambda r: ["suspected encryption" if int(p["suspected_encryption"])
                           else "no suspected file" for p in r]}


# ------------------------------------------------------------------ the cluster
class Fleet:
    """A Dask client: on the scheduler at ``scheduler`` (``tcp://host:port``), or on a
    ``LocalCluster`` of ``workers`` processes (default: one per core) on this machine.
    Use it as a context manager; :meth:`run` runs a command over chains."""

    def __init__(self, scheduler: str | None = None, *, workers: int | None = None,
                 dashboard: bool = True):
        from distributed import Client, LocalCluster

        self.cluster: LocalCluster | None = None
        if scheduler is None:
            self.cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                processes=True, dashboard_address=":0" if dashboard else None,
                silence_logs=40)  # logging.ERROR: worker chatter is not the report
            self.client: Client = Client(self.cluster)
        else:
            try:
                self.client = Client(scheduler, timeout="10s")
            except OSError as exc:
                raise UsageError(f"{scheduler}: no Dask scheduler answers ({exc})") from exc
            except (ValueError, TypeError) as exc:  # distributed parses the address itself
                raise UsageError(f"{scheduler}: not a scheduler address, e.g. "
                                 f"tcp://host:8786 ({exc})") from exc

    @property
    def dashboard_link(self) -> str:
        return str(self.client.dashboard_link)

    def run(self, command: str, directories: Iterable[str | os.PathLike[str]], *,
            rules: str | os.PathLike[str] | None = None,
            key_file: str | os.PathLike[str] | None = None,
            key_dir: str | os.PathLike[str] | None = None, progress: bool = False
            ) -> FleetResult:
        """``command`` (triage, verify or timeline) on every chain found in
        ``directories``, one task each (keys: see :func:`key_files`)."""
        if command not in COMMANDS:
            raise UsageError(f"fleet: the command must be one of {', '.join(COMMANDS)}")
        found = find_chains(directories)
        keys = key_files(found, key_file, key_dir)
        chains = [str(path) for path in found]
        rule_dir = None if rules is None else os.fspath(rules)
        futures = [self.client.submit(run_chain, command, path, rule_dir, key, pure=False)
                   for path, key in zip(chains, keys)]
        order = {future.key: i for i, future in enumerate(futures)}
        records: list[dict[str, Any]] = [{} for _ in chains]
        for i, record in self._gather(futures, order, chains, progress):
            records[i] = record
        return FleetResult(command, records)

    def _gather(self, futures: list[Any], order: dict[Any, int], chains: list[str],
                progress: bool) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(index, record)`` of each task as it finishes, with a bar counting chains."""
        from distributed import as_completed

        bar = _chain_bar(len(futures), progress)
        try:
            for future in as_completed(futures):
                i = order[future.key]
                try:
                    record = future.result()
                except Exception as exc:  # the worker itself died or the task was lost
                    record = {"path": chains[i], "status": "error", "error": _message(exc)}
                if bar is not None:
                    bar.set_postfix_str(f"{Path(chains[i]).name}: {record['status']}")
                    bar.update(1)
                yield i, record
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chain_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="chains", unit="chain", leave=False)


def run_fleet(command: str, directories: Iterable[str | os.PathLike[str]], *,
              scheduler: str | None = None, workers: int | None = None,
              rules: str | os.PathLike[str] | None = None,
              key_file: str | os.PathLike[str] | None = None,
              key_dir: str | os.PathLike[str] | None = None, progress: bool = False
              ) -> FleetResult:
    """Run ``command`` over the chains in ``directories`` on a fresh :class:`Fleet`."""
    chains = find_chains(directories)  # bad input fails before a cluster starts
    key_files(chains, key_file, key_dir)
    with Fleet(scheduler, workers=workers, dashboard=False) as fleet:
        return fleet.run(command, chains, rules=rules, key_file=key_file, key_dir=key_dir,
                         progress=progress)

"""The ``blockforensics`` command.

Exit codes: 0 ok; 1 a check failed (verify, boot, compare); 2 bad input or
usage, with a one-line message on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from blockforensics.errors import BlockforensicsError, UsageError
from blockforensics.terminal import harden_streams, show_progress

if TYPE_CHECKING:
    import pandas as pd

    from blockforensics.crypto import KeySource
    from blockforensics.formats.base import Disk
    from blockforensics.image.chain import Chain

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2

# numpy's OpenBLAS starts a thread per core that spins for ~0.1 s of CPU after import,
# taking a core from hashing on a small machine; no command does linear algebra
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and exit 2) instead of usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.partition(" ")[2]  # "" for the top level, else e.g. "restore"
        hint = f"; see blockforensics {command + ' ' if command else ''}--help"
        raise UsageError(f"{command + ': ' if command else ''}{message}{hint}")


DESCRIPTION = """\
Block-level image backups you can inspect: back a disk image up into a chain
of full and incremental images (optionally encrypted per block), restore,
verify and consolidate it (without the key), see what changed between points
and in which files, export a point to VHD/VHDX/VMDK/qcow2 or serve it as a
read-only disk.vhd, and boot it in QEMU.
"""

EXAMPLES = """\
examples:
  blockforensics backup disk.img chain/          first a full, later incrementals
  blockforensics list chain/                     the points (0 = first full, -1 = newest)
  blockforensics restore chain/ out.img --point 1
  blockforensics verify chain/ --key-file KEY    every block, authenticated
  blockforensics consolidate chain/ --point 2    merge 0..2, never reads a key
  blockforensics diff chain/ 0 2 --files         changed runs and the files behind them
  blockforensics export chain/ disk.vhd          then: blockforensics boot disk.vhd
  blockforensics demo --out demo-out             the whole story on a sample disk

exit codes: 0 ok, 1 a check failed (verify, boot), 2 bad input (one line on stderr).
blockforensics COMMAND --help: the command's options (--json says what it prints).
"""


def _key(args: argparse.Namespace) -> KeySource | None:
    if not getattr(args, "key_file", None):
        return None
    from blockforensics.crypto import KeySource  # only with a key: it loads numpy

    return KeySource.from_file(args.key_file)


def _open_chain(args: argparse.Namespace, *, clean: bool = True) -> Chain:
    """Open the chain named by ``args.chain`` (after removing leftovers of crashed commands)."""
    from blockforensics.image.chain import Chain

    chain = Chain.open(args.chain, _key(args))
    if clean:
        chain.cleanup()
    return chain


def _open_source(path: str, *, point: str | None = None, key: KeySource | None = None,
                 reader: str | None = None, parent: str | None = None) -> Disk:
    """Any disk image a reader plugin recognises (a chain directory, a VHD, a raw file …)
    as a Disk, probed by signature unless ``reader`` names the plugin; ``parent``: the
    parent file of a differencing image; an empty one is refused."""
    from blockforensics.formats import open_source
    from blockforensics.image import is_chain

    if is_chain(path):  # leftovers of a crashed command go first, as for every chain command
        from blockforensics.image.store import ChainStore  # only for a chain: 5-10 ms

        ChainStore(path).recover()
    return open_source(path, point=point, key=key, format=reader, parent=parent)


def _print_table(frame: pd.DataFrame) -> None:
    shown = frame.astype(object).where(frame.notna(), "-")  # no <NA> for people
    print(shown.to_string(index=False) if len(frame) else "(empty)")


def _dumps(value: object, indent: int | None = None) -> str:
    """``value`` as JSON text; json is imported by the commands that print it (1-2 ms of
    start-up that a raw export, which reads no manifest, does not pay)."""
    import json

    return json.dumps(value, indent=indent)


def _text(result: object) -> str:
    """A result for people: its repr without the ``ClassName(...)`` wrapper."""
    text = str(result)
    name, paren, rest = text.partition("(")
    return rest[:-1] if paren and name.isidentifier() and text.endswith(")") else text


@contextlib.contextmanager
def _new_chain_discarded_on_failure(directory: str) -> Iterator[None]:
    """Remove the chain a first backup into ``directory`` created when it fails (a source
    unreadable half-way, an interruption): no chain without a point is left behind, nor
    the directory when it did not exist before."""
    from blockforensics.image import is_chain

    fresh, made = not is_chain(directory), not os.path.lexists(directory)
    try:
        yield
    except BaseException:
        if fresh and is_chain(directory):
            from blockforensics.image.store import ChainStore

            ChainStore(directory).discard_if_empty(remove_directory=made)
        raise


# ------------------------------------------------------------------ commands
def cmd_backup(args: argparse.Namespace) -> int:
    from blockforensics.allocation import survey
    from blockforensics.blockmap import BlockMap
    from blockforensics.image.backup import backup
    from blockforensics.image.chain import Chain
    from blockforensics.image.sources import AcquisitionHashMismatch, acquisition, recorded
    from blockforensics.volume import check_disk_size

    if "://" not in args.source:
        from blockforensics.formats import check_local_source

        check_local_source(args.source)
        with contextlib.suppress(OSError):  # a chain read while points are added to it
            if os.path.samefile(args.source, args.chain):
                raise UsageError(f"{args.chain}: is the source {args.source} itself; back "
                                 "a point up into another chain")
    if args.head_start and not args.bitmap:
        raise UsageError("--head-start needs --bitmap NAME (tracking since the last point)")
    clash = [f"--{name}" for name in ("parent", "full", "changed")  # the live run decides
             if args.head_start and getattr(args, name)]
    if clash:
        raise UsageError(f"{clash[0]} does not go with --head-start (a live point's parent "
                         "is the newest point, its blocks come from the bitmaps)")
    try:  # options are checked before anything is created
        changed = BlockMap.load(args.changed) if args.changed else None
    except ValueError as exc:
        raise UsageError(f"--changed {exc}") from None

    def open_chain() -> Chain:
        chain = Chain.open_or_create(args.chain, _key(args))
        chain.cleanup()
        return chain

    if args.head_start:
        from blockforensics.live.headstart import backup_live

        _open_source(args.source).close()  # refused (empty, no export) before any chain
        chain = open_chain()
        done = backup_live(chain, args.source, args.head_start, args.bitmap,
                           block_size=args.block_size, all_blocks=args.all_blocks,
                           compress=args.compress)
        if done.found and not args.json:  # a full: what was stored, per partition
            print("\n".join(done.found.report()))
        for note in [] if args.json else done.notes:  # recovered, or why re-read
            print(f"note: {note}")
        print(_dumps(done.to_json()) if args.json else
              f"point {done.point}: {done.tracked} blocks tracked, {done.ahead} copied ahead, "
              f"{done.after} after the snapshot ({done.seconds_after_snapshot:.2f} s); "
              f"tracking goes on in bitmap {done.next_bitmap}")
        return EXIT_OK
    # the source opens first: one that is refused or damaged leaves no chain behind
    with _open_source(args.source, reader=args.reader, parent=args.source_parent) as source, \
            _new_chain_discarded_on_failure(args.chain):
        chain = open_chain()
        block_size = args.block_size or (chain.block_size if len(chain) else source.block_size)
        check_disk_size(source, block_size)
        if args.bitmap:
            from blockforensics.formats.nbd import NbdDisk

            if not isinstance(source, NbdDisk):
                raise UsageError("--bitmap needs an NBD source (nbd+unix:///EXPORT?socket=PATH)")
            changed = source.dirty_map(args.bitmap, block_size)
        found = None if args.all_blocks else survey(source, block_size)
        with warnings.catch_warnings():  # a mismatch is reported below, and exits 1
            warnings.simplefilter("ignore", AcquisitionHashMismatch)
            point = backup(chain, source, parent=args.parent, full=args.full or None,
                           changed=changed, only=found.map if found else None,
                           block_size=block_size, label=args.label, compress=args.compress,
                           progress=show_progress())
        check = recorded(chain.directory).get(chain.images[point].name) \
            if acquisition(source) else None
    row = chain.rows()[point]
    if chain.commit_warning:  # the point exists: say so, so that no retry duplicates it
        print(f"blockforensics: warning: {chain.commit_warning}", file=sys.stderr)
    if args.json:  # what was recognised per partition, beside the point's own row
        extra = {**(check.to_json() if check else {}),
                 **({"source_notes": list(source.notes)} if source.notes else {})}
        print(_dumps({**row, **(found.to_json() if found else {"table": None,
                                                                  "partitions": []}),
                      **extra}, indent=1))
    else:
        for note in source.notes:
            print(f"source: {note}")
        if check is not None and check.ok:
            print(f"source: {check.report()}")
        print("\n".join(found.report() if found else ["--all-blocks: every block copied"]))
        print(f"point {point}: {row['kind']} {row['file']}, {row['blocks']} blocks stored, "
              f"{row['stored_bytes']} bytes")
    if check is not None and not check.ok:  # loud: the point holds what was read, not
        print(f"blockforensics: source: {check.report()}", file=sys.stderr)  # what was acquired
        return EXIT_CHECK_FAILED
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from blockforensics.image.summary import chain_rows

    rows = chain_rows(args.chain)  # Chain.rows without numpy (0.1 s of start-up) or pandas
    if args.json:  # with the check of each point's source (E01 hashes), where recorded
        from blockforensics.image.sources import recorded

        checks = recorded(args.chain)
        print(_dumps([{**row, "source_hashes_match": checks[row["file"]].ok
                       if row["file"] in checks else None} for row in rows], indent=1))
    elif not rows:
        print("(empty)")
    else:
        cells = [list(rows[0])] + [["-" if v is None else str(v) for v in row.values()]
                                   for row in rows]
        widths = [max(map(len, column)) for column in zip(*cells)]
        for line in cells:
            print(" ".join(cell.rjust(width) for cell, width in zip(line, widths)))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from blockforensics.fileio import check_output
    from blockforensics.image.backup import restore
    from blockforensics.image.device import is_block_device, restore_to_device

    chain = _open_chain(args)
    point = chain.point(args.point)
    if is_block_device(args.out):  # written in place, never replaced
        done = restore_to_device(chain, point, args.out, force=args.force,
                                 only_changed=args.only_changed, progress=show_progress())
        print(f"restored point {point} to {done}")
        return EXIT_OK
    if args.only_changed:
        raise UsageError(f"{args.out}: --only-changed applies to block devices")
    target = check_output(args.out, force=args.force, inputs=[i.path for i in chain.images])
    out = restore(chain, point, target, progress=show_progress())
    print(f"restored point {point} to {out} ({chain.disk(point).size} bytes)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from blockforensics.image.chain import is_chain, remove_leftovers
    from blockforensics.image.verify import verify

    if is_chain(args.chain):  # leftovers go first, as for every command opening a chain
        remove_leftovers(args.chain)
    report = verify(args.chain, _key(args), progress=show_progress())
    history = _went_back(args.chain)
    if not args.json:
        for line in [*report.problems, *history, f"verify: {_text(report)}"]:
            print(line)
    fs_report = None
    if args.fs and report.ok:  # the point's file systems, checked read-only where served
        from blockforensics.fsck import check_filesystems

        chain = _open_chain(args, clean=False)
        fs_report = check_filesystems(chain.disk(args.point or "-1"))
        if not args.json:
            print(fs_report)
    ok = report.ok and not history and (fs_report is None or fs_report.ok)
    if args.json:
        print(_dumps({"ok": ok, "chain": report.to_json(), "went_back": history,
                          "filesystems": fs_report.to_json() if fs_report else None}))
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def _went_back(directory: str) -> list[str]:
    """What went back in time since this machine's record of the chain (see History)."""
    from blockforensics.image.chain import Chain
    from blockforensics.image.store import History

    try:
        with Chain.open(directory) as chain:
            ids = [img.header.image_id for img in chain.images]
            return History(directory).compare(chain.manifest, ids)
    except BlockforensicsError:
        return []  # a chain that does not open: verify has said why


def cmd_repair(args: argparse.Namespace) -> int:
    from blockforensics.image.repair import repair

    print(repair(args.chain, apply=args.apply, key=_key(args), reseal=args.reseal))
    return EXIT_OK


def cmd_consolidate(args: argparse.Namespace) -> int:
    from blockforensics import consolidate

    if args.keep is not None:
        result: object = consolidate.apply_retention(args.chain, keep_last=args.keep,
                                             daily=args.daily, weekly=args.weekly,
                                             rewrite=args.rewrite)
    else:  # without --point: up to the newest
        result = consolidate.consolidate(args.chain, args.point or -1, start=args.start,
                                         rewrite=args.rewrite, progress=show_progress())
    print(f"consolidate: {_text(result)}")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from blockforensics import forensics

    chain = _open_chain(args, clean=False)
    result = forensics.diff(chain, args.a, args.b, files=args.files,
                            progress=show_progress())
    if args.json:
        print(_dumps(result.to_json(), indent=1))
    else:
        print(result)
    return EXIT_OK


def cmd_timeline(args: argparse.Namespace) -> int:
    chain = _open_chain(args, clean=False)
    if args.out:
        from blockforensics.fileio import check_output

        check_output(args.out, force=args.force)
    if args.format != "table":
        from blockforensics import timeline_formats

        versions = timeline_formats.file_versions(chain, zone=args.timezone,
                                                  progress=show_progress())
        text = timeline_formats.formatted(versions, args.format, str(chain.directory))
        if args.out:
            timeline_formats.save(text, args.out)
            print(f"wrote {args.format} timeline to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        note = timeline_formats.zone_note(versions)
        for line in ([note] if note else []) + [f"not read: {why}"
                                                 for why in versions.attrs["not_read"]]:
            print(f"note: {line}", file=sys.stderr)
        return EXIT_OK
    from blockforensics import forensics

    frame = forensics.timeline(chain, progress=show_progress())
    text = frame.to_json(orient="records", indent=1) if args.json else (
        frame.drop(columns="not_read").to_string(index=False) if len(frame) else "(empty)")
    if args.out:
        from blockforensics.fileio import atomic_writer

        with atomic_writer(args.out) as fh:
            fh.write((text + "\n").encode())
        print(f"wrote {'json' if args.json else 'table'} timeline to {args.out}", file=sys.stderr)
    else:
        print(text, flush=True)
    if not args.json:  # the table has no room for them: a line each, below it
        for why in frame["not_read"][frame["not_read"] != ""]:
            print(f"note: not read: {why}", file=sys.stderr)
    return EXIT_OK


def cmd_extract(args: argparse.Namespace) -> int:
    from blockforensics.tsk import extract

    chain = _open_chain(args, clean=False)
    out, size, deleted = extract(chain, args.point, args.path, args.out, force=args.force)
    print(f"extracted {args.path} ({size} bytes{', deleted' if deleted else ''}) "
          f"from point {chain.point(args.point)} to {out}")
    return EXIT_OK


def cmd_triage(args: argparse.Namespace) -> int:
    from blockforensics import triage

    chain = _open_chain(args, clean=False)
    if args.explain:
        print(triage.explain(chain, args.explain, point=args.point))
        return EXIT_OK
    result = triage.triage(chain, args.rules)
    print(_dumps(result.to_json(), indent=1) if args.json else result)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from blockforensics.export import ALIASES, CHAIN, export, export_chain
    from blockforensics.fileio import check_output

    fmt = ALIASES.get(args.format, args.format)
    target = check_output(args.out, force=args.force, inputs=[args.chain])
    if fmt in CHAIN:
        from blockforensics.formats.signature import holds_manifest

        if not holds_manifest(args.chain):  # a damaged manifest: the chain store names it
            raise UsageError(f"{args.chain}: --format {fmt} exports a chain's structure; "
                             "the source is not a chain directory")
        chain = _open_chain(args)
        files = export_chain(chain, args.point or "-1", target, fmt,
                             progress=show_progress())
        parents = ", ".join(f.name for f in files[:-1]) or "none: the point is a full"
        print(f"exported point {chain.point(args.point or '-1')} of {args.chain} to {files[-1]} "
              f"({fmt}: {len(files)} file{'s' * (len(files) > 1)}, parents {parents})")
        return EXIT_OK
    with _open_source(args.chain, point=args.point, key=_key(args), reader=args.reader,
                      parent=args.parent) as disk:
        out = export(disk, target, fmt, progress=show_progress())
    print(f"exported {args.chain} to {out} ({fmt})")
    return EXIT_OK


def cmd_mount(args: argparse.Namespace) -> int:
    from blockforensics.expose import check_mountpoint, mount, partition_files

    mountpoint = Path(args.mountpoint)
    check_mountpoint(mountpoint)  # before anything is opened or printed
    with _open_source(args.chain, point=args.point, key=_key(args),
                      reader=args.reader, parent=args.parent) as disk:
        print(f"serving {mountpoint / 'disk.vhd'} from {args.chain}, read-only; "
              "Ctrl-C to unmount", flush=True)
        _, parts, notes = partition_files(disk)
        for line in [*(f"  {p.name}: {p.describe()}" for p in parts), *notes]:
            print(line, flush=True)
        failed = mount(disk, mountpoint, foreground=True, direct=not args.page_cache)
    return EXIT_CHECK_FAILED if failed else EXIT_OK  # as serve: each said on stderr


def cmd_serve(args: argparse.Namespace) -> int:
    from blockforensics.nbd.server import (
        HANDSHAKE_LIMIT,
        MAX_CLIENTS,
        NbdServer,
        serve_until_signal,
    )

    with _open_source(args.chain, point=args.point, key=_key(args), reader=args.reader,
                      parent=args.parent) as disk:
        server = NbdServer(disk, socket_path=args.socket, port=args.port, bind=args.bind,
                           max_clients=args.max_clients or MAX_CLIENTS,
                           handshake_limit=args.handshake_limit or HANDSHAKE_LIMIT)
        print("ready", flush=True)
        print(f"serving {disk!r} read-only at {server.url}; SIGTERM or Ctrl-C to stop",
              flush=True)
        serve_until_signal(server)
    return EXIT_CHECK_FAILED if server.failed else EXIT_OK


def cmd_boot(args: argparse.Namespace) -> int:
    from blockforensics.boot import boot_disk, boot_file
    from blockforensics.formats.signature import holds_manifest

    options = {"expect": args.expect, "timeout": args.timeout, "screenshot": args.screenshot,
               "run": args.run, "firmware": args.firmware}
    if holds_manifest(args.disk) or args.point is not None:  # served over NBD, never exported
        with _open_source(args.disk, point=args.point, key=_key(args),
                          reader=args.reader) as disk:
            result = boot_disk(disk, **options)
    else:
        if not Path(args.disk).is_file():
            raise UsageError(f"{args.disk}: no such disk file")
        result = boot_file(Path(args.disk), parent=args.parent, reader=args.reader, **options)
    if args.json:
        print(_dumps({"expect": args.expect, **result.to_json()}, indent=1))
        return EXIT_OK if result.ok else EXIT_CHECK_FAILED
    firmware = f"firmware {result.firmware}: {result.firmware_reason}"
    if result.seconds_to_marker is not None:
        print(f"booted: {args.expect!r} appeared after {result.seconds_to_marker:.1f} s "
              f"({firmware})")
    else:
        print(f"boot check failed: {args.expect!r} not seen in {result.seconds_total:.1f} s "
              f"({firmware}); console tail:")
        print(result.tail())
    for run in result.runs:
        print(f"$ {run.command}")
        print(run.output, end="" if run.output.endswith("\n") or not run.output else "\n")
        print(f"[exit status {run.status}]" if run.error is None else f"[{run.error}]")
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED


def cmd_sample(args: argparse.Namespace) -> int:
    if args.kind == "investigation":
        from blockforensics.datasets.investigation import build_investigation

        case = build_investigation(args.out, fs=args.fs, seed=args.seed)
        print(f"chain {case.chain_dir} ({case.fs}, {len(case.truth)} known changes); "
              f"the live volume is {case.image}")
    elif args.kind == "ransomware":
        from blockforensics.datasets.ransomware import build_ransomware

        sample = build_ransomware(args.out, fs=args.fs, seed=args.seed)
        print(f"chain {sample.chain_dir} ({sample.fs}, 8 days: benign, then three attacks; "
              f"last clean point {sample.last_clean_point})")
    elif args.uefi:
        from blockforensics.datasets.bootdisk import build_uefi_boot_disk

        print(f"bootable UEFI disk {build_uefi_boot_disk(args.out)}")
    else:
        from blockforensics.datasets.bootdisk import build_boot_disk

        print(f"bootable disk {build_boot_disk(args.out)}")
    return EXIT_OK


def cmd_fleet(args: argparse.Namespace) -> int:
    from blockforensics.fleet import run_fleet

    result = run_fleet(args.fleet_command, args.dirs, scheduler=args.scheduler,
                       workers=args.workers, rules=args.rules, key_file=args.key_file,
                       key_dir=args.key_dir, progress=show_progress())
    print(_dumps(result.records, indent=1) if args.json else result.report())
    failed = result.errors() or (args.fleet_command == "verify" and not all(
        r["result"]["ok"] for r in result.records))
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from blockforensics.demo import run_demo

    return run_demo(Path(args.out))


# -------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


def _port(text: str) -> int:
    """A TCP port number, 1-65535."""
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text}")
    return value


def _key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", help="key file: 32 raw bytes, or a passphrase")


def _force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it exists (never an input, never inside a chain)")


def _reader_option(p: argparse.ArgumentParser) -> None:
    # checked when the source is opened: listing the plugins here would scan every
    # installed distribution's entry points on each start of the command
    p.add_argument("--reader", metavar="NAME",
                   help="reader plugin for the source, e.g. raw, vhd, blockforensics "
                        "(default: probe its signature)")


def _source_point_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--point", help="point of a chain source (default: the newest)")
    _reader_option(p)
    p.add_argument("--parent", metavar="FILE",
                   help="parent of a differencing image (default: found by its locators)")


def _point_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--point", default="-1",
                   help="point index (0 = first full, -1 = newest) or image file name")


if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[_Parser]
#: adds a command's arguments to its parser
Arguments = Callable[[argparse.ArgumentParser], None]
#: every command in the order ``--help`` lists them: name -> what adds its subparser
_COMMANDS: dict[str, Callable[[Subparsers], None]] = {}


def _command(name: str, func: Callable[[argparse.Namespace], int], help: str,
             chain: str | None = "chain directory", described: bool = True
             ) -> Callable[[Arguments], Arguments]:
    """Declares the command ``name`` (run by ``func``; ``chain``: the help of its first
    positional argument, the chain, if it takes one first; ``described``: whether its own
    ``--help`` repeats ``help``); the decorated function adds its other arguments, when
    the parser of that command is built."""
    def declare(arguments: Arguments) -> Arguments:
        def add(sub: Subparsers) -> None:
            p = sub.add_parser(name, help=help, description=help if described else None)
            p.set_defaults(func=func)
            if chain:
                p.add_argument("chain", help=chain)
            arguments(p)

        _COMMANDS[name] = add
        return arguments

    return declare


@_command("backup", cmd_backup, "back a raw disk image up into a chain", chain=None,
          described=False)
def _backup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="disk image: raw, VHD, a chain (its newest point), …")
    p.add_argument("chain", help="chain directory (created if missing)")
    _reader_option(p)
    p.add_argument("--source-parent", metavar="FILE",
                   help="parent of a differencing source image (default: its locators)")
    _key_option(p)
    p.add_argument("--block-size", type=_positive_int, help="bytes per block (first backup)")
    p.add_argument("--parent", help="parent point of the incremental (default: newest)")
    p.add_argument("--full", action="store_true", help="a new full image even if a chain exists")
    p.add_argument("--changed", help="a saved BlockMap of changed blocks (CBT)")
    p.add_argument("--all-blocks", action="store_true",
                   help="copy every block, not only those the file systems allocate")
    p.add_argument("--label", default="", help="free text stored in the image header")
    p.add_argument("--compress", action="store_true",
                   help="zstd-compress blocks where that saves space (before encryption)")
    p.add_argument("--bitmap", metavar="NAME",
                   help="copy the blocks QEMU's dirty bitmap NAME marks (NBD source)")
    p.add_argument("--head-start", metavar="QMP_SOCKET",
                   help="live QEMU: snapshot, head start and bitmap rotation over QMP")
    p.add_argument("--json", action="store_true",
                   help="print the point and what was recognised per partition as JSON "
                        "(with --head-start: blocks and times)")


@_command("list", cmd_list, "list the points of a chain")
def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print an array in creation order of {point, file, kind, parent, "
                        "blocks, stored_bytes, encrypted, created, ...}")


@_command("restore", cmd_restore, "restore a point to a raw file or a block device")
def _restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="raw file to write (exact size), or a block device (written "
                               "in place; needs --force)")
    _force_option(p)
    p.add_argument("--only-changed", action="store_true",
                   help="block device: write only the blocks whose content differs")
    _point_option(p)
    _key_option(p)


@_command("verify", cmd_verify, "check every image (and with the key, every block)")
def _verify_arguments(p: argparse.ArgumentParser) -> None:
    _key_option(p)
    p.add_argument("--fs", action="store_true",
                   help="also check the point's file systems read-only (fsck -n per partition)")
    p.add_argument("--point", help="the point --fs checks (default: the newest)")
    p.add_argument("--json", action="store_true",
                   help='print {"ok", "chain": {ok, images, blocks, authenticated, problems: '
                        '[{image, position, message}]}, "went_back": [...], "filesystems": '
                        '{table, ok, notes, checks: [...]} or null}')


@_command("repair", cmd_repair,
          "say which damaged points would be dropped from the chain; --apply drops them; "
          "--reseal --key-file K seals an encrypted chain anew")
def _repair_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--apply", action="store_true",
                   help="drop them (the files stay in the directory, unlisted); with "
                        "--key-file, an encrypted chain is also sealed anew")
    p.add_argument("--reseal", action="store_true",
                   help="encrypted chain, needs --key-file: check every point's keyed digest "
                        "and seal the manifest anew (a chain made before the seal existed)")
    _key_option(p)


@_command("consolidate", cmd_consolidate,
          "merge images into one, stored blocks verbatim (never reads a key)")
def _consolidate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--point", help="consolidate up to this point (default: the newest)")
    p.add_argument("--start", help="first point of the merged segment (default: the full)")
    p.add_argument("--keep", type=_positive_int, help="retention: keep the newest N points")
    p.add_argument("--daily", type=int, default=0, help="retention: one point per day for D days")
    p.add_argument("--weekly", type=int, default=0,
                   help="retention: one point per week for W weeks")
    p.add_argument("--rewrite", action="store_true",
                   help="copy every kept block into a new file (default: grow the merged "
                        "image holding the most in place, punching out the runs of 1 MiB or "
                        "more it replaced; an image a tenth dead is not grown again)")


@_command("diff", cmd_diff, "what changed between two points")
def _diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="older point")
    p.add_argument("b", help="newer point")
    p.add_argument("--files", action="store_true", help="name the files behind the changes")
    p.add_argument("--json", action="store_true",
                   help='print {"runs": [{start, length}], "files": [{path, type, change, '
                        'entropy_before, entropy_after}]}')
    _key_option(p)


@_command("timeline", cmd_timeline, "per point: blocks and files changed; with "
          "--format, every file version (MACB times, inode, hashes)")
def _timeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="table",
                   choices=["table", "bodyfile", "l2tcsv", "jsonl", "dfxml"])
    p.add_argument("-o", "--out", help="write to this file (default: standard output)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--json", action="store_true",
                   help="print the table as an array of objects, one per point")
    p.add_argument("--timezone", default="UTC", metavar="ZONE",
                   help="with --format: the zone (IANA name) of the clock that wrote FAT "
                        "and exFAT times, which carry none (default UTC; as fls -z)")
    _key_option(p)


@_command("extract", cmd_extract, "write one file as it was at a point (deleted "
          "files too, while The Sleuth Kit reaches them)")
def _extract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("point", help="point index or image file name")
    p.add_argument("path", help="the file's path at that point, e.g. /docs/report.txt")
    p.add_argument("out", help="file to write")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    _key_option(p)


@_command("triage", cmd_triage, "per point: clean, suspicious or encrypted, and why")
def _triage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help='print {"points": [{point, verdict, reasons, files}], '
                        '"last_clean_point"}')
    p.add_argument("--rules", metavar="DIR", help="extra YARA rules (*.yar, *.yara)")
    p.add_argument("--explain", metavar="FILE", help="the evidence for one file's changes")
    p.add_argument("--point", help="with --explain: only this point")
    _key_option(p)


@_command("export", cmd_export,
          "export a chain point (or any readable disk image) to a virtual disk file",
          chain="chain directory, or a disk image a reader plugin recognises")
def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="the file to write (for chain formats: the point's file; its "
                              "parents are written beside it)")
    _force_option(p)
    _source_point_option(p)
    p.add_argument("--format", default="vhd-dynamic",
                   choices=["vhd-dynamic", "vhd-fixed", "vhdx", "vmdk", "vmdk-stream", "qcow2",
                            "raw", "vhd-chain", "vhd-differencing", "qcow2-chain"])
    _key_option(p)


@_command("mount", cmd_mount, "serve a point as MOUNTPOINT/disk.vhd (read-only, FUSE)",
          chain="chain directory, or a disk image a reader plugin recognises")
def _mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    _source_point_option(p)
    _key_option(p)
    p.add_argument("--page-cache", action="store_true",
                   help="let the kernel cache the served files: faster for many small "
                   "reads (dd bs=4k), slower for large ones (default, Linux >= 6.6: "
                   "direct I/O, each read answered straight into the reader's buffer)")


@_command("serve", cmd_serve, "serve a point read-only over NBD until SIGTERM/SIGINT "
          "(prints 'ready' once clients can connect; a damaged block is answered EIO "
          "and named, and the exit status is then 1)",
          chain="chain directory, or a disk image a reader plugin recognises")
def _serve_arguments(p: argparse.ArgumentParser) -> None:
    _source_point_option(p)
    _key_option(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="a Unix socket to listen on")
    where.add_argument("--port", type=_port, help="a TCP port to listen on (1-65535)")
    p.add_argument("--bind", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    p.add_argument("--max-clients", type=_positive_int,
                   help="connections served at once; one more is closed (default 16)")
    p.add_argument("--handshake-limit", type=_positive_float, metavar="SECONDS",
                   help="a client that has not finished the NBD handshake this long after "
                        "connecting is closed (default 10, as qemu-nbd)")


@_command("boot", cmd_boot, "boot a disk file, or a chain point served over NBD, in "
          "QEMU and wait for a text (the disk or chain is never written)", chain=None)
def _boot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("disk", help="a disk file (raw, VHD, VHDX, VMDK, qcow2, VDI, E01) or a chain")
    _source_point_option(p)
    _key_option(p)
    p.add_argument("--expect", default="BLOCKFORENSICS-BOOT-OK")
    p.add_argument("--timeout", type=_positive_float, default=120.0,
                   help="seconds to wait for the text, and for each --run command")
    p.add_argument("--run", action="append", default=[], metavar="CMD",
                   help="once the text appeared, run CMD in the guest's shell on the serial "
                        "console (repeatable); exit 1 unless every CMD exits 0")
    p.add_argument("--json", action="store_true", help="the result as JSON, with runs: "
                   '[{"command", "output", "status", "seconds", "error"}]')
    p.add_argument("--screenshot", metavar="PNG",
                   help="save the guest's screen when the text appears, or when the wait "
                        "for it ends (QMP screendump)")
    p.add_argument("--firmware", choices=["bios", "uefi", "auto"], default="auto",
                   help="SeaBIOS, OVMF, or auto (default): uefi for an EFI system "
                        "partition (GPT, or MBR type 0xEF) and no BIOS boot code in the MBR")


@_command("sample", cmd_sample, "build a sample: the investigation case or a boot disk",
          chain=None)
def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["investigation", "ransomware", "bootdisk"])
    p.add_argument("out", help="directory (investigation) or disk file (bootdisk) to create")
    p.add_argument("--fs", choices=["fat32", "ext4"], default="fat32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uefi", action="store_true",
                   help="bootdisk: the UEFI-only disk (GPT, EFI system partition, "
                        "systemd-boot) instead of the BIOS one")


@_command("fleet", cmd_fleet, "triage, verify or timeline many chains on Dask, one task "
          "per chain", chain=None)
def _fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fleet_command", choices=["triage", "verify", "timeline"])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a chain, or a folder of chains")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler, e.g. tcp://host:8786 (default: a local "
                        "cluster of worker processes)")
    p.add_argument("--workers", type=_positive_int, help="local worker processes (default: "
                   "one per core)")
    p.add_argument("--rules", metavar="DIR", help="triage: extra YARA rules")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key-file", metavar="FILE",
                      help="the key of every encrypted chain (plain chains need none)")
    keys.add_argument("--key-dir", metavar="DIR",
                      help="a key file per encrypted chain: DIR/PATH.key for the chain at "
                           "PATH below the folder the chains share (e.g. DIR/host-1/chain.key), "
                           "else DIR/NAME.key for the chain in a directory NAME")
    p.add_argument("--json", action="store_true",
                   help='one object per chain: {"path", "status", "error", "result"}')


@_command("demo", cmd_demo, "the whole story on the built-in sample disk", chain=None)
def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="blockforensics-demo", help="directory for results")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser.  With ``command`` (a name in ``_COMMANDS``), only that
    command's subparser, which is all its arguments need (building every command's costs
    3-6 ms of each start); without, all of them (``--help`` lists them, an unknown
    command is answered with their names)."""
    from blockforensics import __version__

    parser = _Parser(prog="blockforensics", description=DESCRIPTION, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"blockforensics {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                title="commands", metavar="COMMAND")
    for name, add in _COMMANDS.items():
        if command in (None, name):
            add(sub)
    return parser


def _why(exc: OSError) -> str:
    """What a failed write's error means where it is not plain: a file too large on FAT."""
    if exc.errno == errno.EFBIG and exc.filename:
        from blockforensics.fileio import FAT_TYPES, file_system_type

        kind = file_system_type(os.path.dirname(os.path.abspath(exc.filename)))
        if kind in FAT_TYPES:
            return f" ({kind} holds at most 4 GiB - 1 byte per file; nothing was changed)"
    return ""


def _one_line(message: str) -> str:
    """``message`` with control characters (newlines, terminal escapes) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                   for c in message)


class Terminated(BaseException):
    """SIGTERM or SIGHUP (the terminal or ssh session gone), raised in the main thread so
    that outputs and chains are cleaned up as after Ctrl-C (temporaries removed, nothing
    half-written under a final name); ``args[0]``: the signal."""


#: what each signal that ends a command is called in its one line
_ENDING = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (also used by tests in-process)."""
    harden_streams()
    with contextlib.suppress(ValueError):  # not the main thread (tests): as it was
        for signum in _ENDING:  # an ignored one stays ignored (nohup)
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _terminate)
    try:
        words = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(words[0] if words and words[0] in _COMMANDS else None
                            ).parse_args(words)
        return args.func(args)
    except BlockforensicsError as exc:  # control characters from hostile input: escaped
        print(f"blockforensics: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("blockforensics: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        signum = exc.args[0]
        print(f"blockforensics: {_ENDING[signum]}", file=sys.stderr)
        return 128 + signum
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"blockforensics: error: {where}{exc.strerror or exc}{_why(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:  # a hostile input's nesting a reader follows (parents of parents)
        print("blockforensics: error: the input nests too deep (a loop of parent or backing "
              "images?)", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:  # what a damaged size asks for; a refusal, not a traceback
        print("blockforensics: error: out of memory (an image claiming a huge size or table?)",
              file=sys.stderr)
        return EXIT_USAGE


def run() -> NoReturn:
    """The command as a process (the ``blockforensics`` script, ``python -m blockforensics``):
    :func:`main`, then what Python's own exit does that has effects — threads joined (idle
    worker pools woken first), ``atexit`` handlers run, output flushed — and ``os._exit``,
    which leaves out the interpreter's teardown of every module and object: it changes
    nothing outside the process and costs 40-50 ms after a backup or an export (numpy and
    our modules), a tenth of a 512 MiB backup.  Every file was closed, fsynced where it
    must be, and renamed before :func:`main` returned.  An exit argparse raises itself
    (``--help``, a usage error) goes the usual way."""
    import atexit
    import threading

    code = main()
    threading._shutdown()  # type: ignore[attr-defined]  # what Python's exit runs first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError, AttributeError):  # a reader
            stream.flush()  # gone; closed; None: started with the descriptor closed (>&-)
    os._exit(code)


if __name__ == "__main__":
    run()

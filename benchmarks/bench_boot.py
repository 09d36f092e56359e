"""Time from command to boot marker: a chain point booted over NBD (``boot CHAIN --point
P``) against exporting it first and booting the exported file.

    python benchmarks/bench_boot.py [--repeat 5] [--dir /tmp] [--json F]

The data: the sample bootable disk (``blockforensics sample bootdisk``, 48 MiB + 3
sectors), backed up as a full, then, after a 1 MiB file and the boot marker
changed, as an incremental.  Each contender is one shell command, timed from its
start until ``boot`` has seen the incremental's marker on the serial console and
stopped QEMU (TCG):

- ``nbd``: ``blockforensics boot CHAIN --point 1`` (the point served over NBD from
  the chain's images, a copy-on-read qcow2 overlay over it);
- ``export vhd + boot``: ``blockforensics export --format vhd-dynamic`` then
  ``blockforensics boot OUT.vhd``;
- ``export qcow2-chain + boot``: the chain's own structure as qcow2 files, then boot.

The contenders take turns; each export run writes a new file.  ``--size-mib`` is
not used (the sample disk's size is fixed).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import Step, cli, fastest, options, table

from blockforensics.datasets.bootdisk import (
    MARKER_PREFIX,
    cached_boot_disk,
    set_boot_marker,
    write_fat_file,
)

MARKER = "incr"


def main() -> None:
    args = options(__doc__ or "", 48)
    work = Path(tempfile.mkdtemp(prefix="bench-boot-", dir=args.dir))
    try:
        disk = Path(shutil.copyfile(cached_boot_disk(), work / "disk.img"))
        chain = work / "chain"
        subprocess.run(cli("backup", disk, chain), check=True, capture_output=True)
        write_fat_file(disk, "DATA.BIN", bytes(range(256)) * 4096)
        set_boot_marker(disk, MARKER)
        subprocess.run(cli("backup", disk, chain), check=True, capture_output=True)
        expect = f"{MARKER_PREFIX} {MARKER}"

        def export_then_boot(out: Path, fmt: str) -> list[str]:
            export = shlex.join(cli("export", chain, out, "--point", 1, "--format", fmt))
            return ["sh", "-c", f"{export} && {shlex.join(cli('boot', out, '--expect', expect))}"]

        def clean() -> None:
            for f in work.glob("out*"):
                f.unlink()

        steps = [
            Step("nbd", cli("boot", chain, "--point", 1, "--expect", expect)),
            Step("export vhd + boot", export_then_boot(work / "out.vhd", "vhd-dynamic"), clean),
            Step("export qcow2-chain + boot", export_then_boot(work / "out.qcow2", "qcow2-chain"),
                 clean),
        ]
        runs = fastest(steps, args.repeat)
        reference = runs["export vhd + boot"]
        rows = [{"contender": run.label, "fastest_s": f"{run.seconds:.2f}",
                 "median_s": f"{run.median_seconds:.2f}",
                 "vs export vhd (median)": f"{reference.median_seconds / run.median_seconds:.2f}x"}
                for run in runs.values()]
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Fixed cost of the commands of issue 19's table: this checkout against another one.

``bench_startup.py --image IMG --baseline DIR [--repeat 9]``

Our commands race C programs (``cp``, ``qemu-img convert``) that start in a
millisecond, so what a command imports and computes before its first byte of
work is paid on every run.  Each command runs on the same image (default: the
512 MiB realistic ext4 image of ``bench_peers.py``, built in ``--dir``) by this
checkout (``after``) and by ``--baseline DIR`` (``before``: ``DIR`` on
``PYTHONPATH``), taking turns with ``python -c pass`` (the interpreter's own
start, ``site`` included) and ``python -c "import numpy"`` (the floor of every
command that touches block arrays); ``start-up`` is an export of the image's
first MiB, nearly nothing but the fixed cost.  Outputs are removed before each
run.  Run it at high priority, e.g. ``setsid bash -c 'echo -20 > /proc/self/autogroup
&& exec python3 benchmarks/bench_startup.py ...'``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import Step, cli, compiled, fastest, measure, options, table


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def main() -> None:
    args = options(__doc__, 512, lambda parser: (
        parser.add_argument("--image", type=Path, help="source image (default: build one)"),
        parser.add_argument("--baseline", type=Path, required=True,
                            help="the other checkout (its blockforensics compiled here)")))
    here = Path(__file__).resolve().parent.parent
    compiled(here / "blockforensics", args.baseline / "blockforensics")
    work = args.dir / "bench-startup"
    work.mkdir(parents=True, exist_ok=True)
    image = args.image
    if image is None:
        from bench_peers import build_image

        image = work / "src.img"
        if not image.exists():
            build_image(image, args.size_mib << 20)
    small = work / "small.img"
    with image.open("rb") as fh:
        small.write_bytes(fh.read(1 << 20))
    chain = work / "chain"
    _remove(chain)
    measure("chain", cli("backup", image, chain), {"PYTHONPATH": str(here)})  # read below
    out = work / "out"
    commands = {
        "backup (full, plain)": ("backup", image, out),
        "export raw -> vhd-fixed": ("export", image, out, "--format", "vhd-fixed"),
        "export raw -> vhd-dynamic": ("export", image, out, "--format", "vhd-dynamic"),
        "export chain -> vhd-fixed": ("export", chain, out, "--format", "vhd-fixed"),
        "export chain -> vhd-dynamic": ("export", chain, out, "--format", "vhd-dynamic"),
        "list": ("list", chain),
        "restore": ("restore", chain, out),
        "start-up (export 1 MiB -> vhd-fixed)": ("export", small, out, "--format", "vhd-fixed"),
    }
    versions = {"before": {"PYTHONPATH": str(args.baseline), "PYTHONSAFEPATH": "1"},
                "after": {"PYTHONPATH": str(here), "PYTHONSAFEPATH": "1"}}
    floors = {"python -c pass": "pass", "python -c 'import numpy'": "import numpy"}
    steps = [Step(label, [sys.executable, "-c", code]) for label, code in floors.items()]
    for name, command in commands.items():
        steps += [Step(f"{version}: {name}", cli(*command), lambda: _remove(out), env)
                  for version, env in versions.items()]
    runs = fastest(steps, args.repeat)
    rows = []
    for name in commands:
        before, after = runs[f"before: {name}"], runs[f"after: {name}"]
        rows.append({"command": name, "before s": f"{before.seconds:.3f}",
                     "after s": f"{after.seconds:.3f}",
                     "saved ms": f"{(before.seconds - after.seconds) * 1000:.0f}",
                     "before s (med)": f"{before.median_seconds:.3f}",
                     "after s (med)": f"{after.median_seconds:.3f}"})
    print(f"fastest of {args.repeat}; (med): medians; "
          + ", ".join(f"{label} {runs[label].seconds:.3f} s" for label in floors))
    print(table(rows))
    _remove(out)


if __name__ == "__main__":
    main()

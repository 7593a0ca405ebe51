"""Seconds `archscale --help` takes, this checkout against an older one, runs interleaved.

    python tests/bench/bench_cli_import.py [--old /path/to/old/checkout] [--repeats 5]

``--old`` is a source tree of archscale (e.g. ``git worktree add /tmp/cli-old HEAD``): it is run
through a folder holding an ``archscale`` link to it on PYTHONPATH, which shadows the installed
package. Each repeat runs old then new, so both see the same load; the medians are printed.
Target: under 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP = "from archscale.cli.main import app; app(['--help'], standalone_mode=False)"


def seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", HELP], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="An older archscale source tree to compare.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, dict[str, str]] = {"new": dict(os.environ)}
    with tempfile.TemporaryDirectory() as shadow:
        if args.old is not None:
            (Path(shadow) / "archscale").symlink_to(args.old.resolve())
            runs = {"old": {**os.environ, "PYTHONPATH": shadow}, **runs}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, env in runs.items():
                times[name].append(seconds(env))
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s "
              f"(min {min(values):.2f}, max {max(values):.2f}, {args.repeats} runs)")


if __name__ == "__main__":
    main()

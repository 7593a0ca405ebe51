"""The console-script entry point: tunes the process's allocator, then runs the CLI.

XLA:CPU allocates each call's temporary buffers afresh. glibc serves large ones with mmap and
unmaps them on free, so every call page-faults through them again, 4 KiB at a time: on the
2-core machine, writing a fresh 75 MB buffer ran at 3 GB/s against 16 GB/s for reused memory,
and zero-filling the layer scan's saved activations took a tenth of a training step. glibc's
``hugetlb=1`` tunable backs malloc's memory with transparent huge pages (512x fewer faults):
a training step of d_model 256 ran 15-25% faster. Tunables are read at process start, so the
command re-executes itself once with them set; nothing is imported before that but the standard
library. A user's own $GLIBC_TUNABLES are kept as they are: ours is added only when the user did
not set that key (``glibc.malloc.hugetlb=0`` stays 0). ``ARCHSCALE_KEEP_ALLOCATOR=1`` skips it.
On by default rather than opt-in: it costs nothing where it does not help (an exec before any
import) and the CPU runs it speeds up are the ones a first user makes (tests, the demo).
"""

from __future__ import annotations

import os
import sys

from archscale import environment

ALLOCATOR_TUNABLE = "glibc.malloc.hugetlb=1"


def merged_tunables(tunables: str) -> str:
    """``tunables`` ($GLIBC_TUNABLES: key=value pairs joined by ':') with ``ALLOCATOR_TUNABLE``
    appended unless its key is already set, to whatever value."""
    key = ALLOCATOR_TUNABLE.partition("=")[0]
    if key in (item.partition("=")[0] for item in tunables.split(":")):
        return tunables
    return ":".join(filter(None, [tunables, ALLOCATOR_TUNABLE]))


def tune_allocator() -> None:
    """Re-execute this process with ``merged_tunables`` as $GLIBC_TUNABLES (Linux only).

    Returns without doing anything when they are unchanged (our key set already, by us or the
    user), when the user opted out, or off Linux. Call it first thing in a script's entry
    point: the process restarts from scratch.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    merged = merged_tunables(tunables)
    if (not sys.platform.startswith("linux") or merged == tunables
            or environment.get(environment.KEEP_ALLOCATOR) == "1"):
        return
    env = {**os.environ, "GLIBC_TUNABLES": merged}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main() -> None:
    tune_allocator()
    from archscale.cli.main import main as run_cli

    run_cli()

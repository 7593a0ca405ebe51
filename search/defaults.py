"""Defaults the command line shows before it runs anything, in a module that imports nothing
heavy: Typer reads option defaults when ``archscale --help`` registers the commands."""

from pathlib import Path

DEFAULT_STORAGE = "archscale.journal"
"""The journal file used when no storage is given (in the working directory)."""
DEFAULT_HEARTBEAT_S = 30
"""Seconds between a running trial's heartbeats."""
DEMO_SWEEP = Path(__file__).parent / "examples" / "demo.yaml"
"""The packaged grid of `archscale demo`."""
DEFAULT_MAX_RETRIES = 10
"""Times a config whose worker (or trial process) died is re-queued before a study run gives up on
it and says so: generous, since preemptions and OOM kills of a whole node are external."""
DEFAULT_STORAGE_WAIT_S = 600
"""Seconds a worker rides out an unreachable database storage (retrying with backoff) before it
stops, keeping finished results in a local spool and saying how to resume."""

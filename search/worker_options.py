"""How a worker runs and watches over trials (``WorkerOptions``), apart from search/worker.py so
that the processes a worker starts (search/worker_process.py, search/trial_process.py) read it
without importing the worker."""

from __future__ import annotations

from dataclasses import dataclass

from archscale.search.defaults import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STORAGE_WAIT_S,
)
from archscale.search.recovery import default_grace

STORAGE_LOST = 75
"""Exit status of a worker that stopped because the storage stayed unreachable (EX_TEMPFAIL)."""


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs and watches over trials."""

    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    """Seconds between heartbeats of a running trial."""
    max_retries: int = DEFAULT_MAX_RETRIES
    """Times a config whose worker died is re-queued before the run gives up on it."""
    storage_wait_s: float = DEFAULT_STORAGE_WAIT_S
    """Seconds to ride out an unreachable database storage before stopping."""
    grace_s: int | None = None
    """Silence after which another host's trial counts as dead (default 2 x heartbeat + 10)."""
    artifacts: str | None = None
    """Artifact folder (default: beside the storage file, or ./archscale.artifacts)."""
    max_trials: int | None = None
    """Stop after running this many trials (default: until the study is done)."""
    progress: bool = True
    """Show the trainer's progress bar."""
    proposer: str | None = None
    """A designed study's engine, as ``"module:attribute"`` (search/designed.py)."""

    @property
    def grace(self) -> int:
        return self.grace_s or default_grace(self.heartbeat_s)

    @property
    def poll_s(self) -> float:
        return float(min(5.0, max(0.5, self.heartbeat_s / 2)))

    def process_args(self) -> list[str]:
        """The arguments of a local worker process (search/worker_process.py)."""
        args = ["--heartbeat", str(self.heartbeat_s), "--grace", str(self.grace),
                "--max-retries", str(self.max_retries), "--storage-wait", str(self.storage_wait_s)]
        if self.artifacts is not None:
            args += ["--artifacts", self.artifacts]
        if self.proposer is not None:
            args += ["--proposer", self.proposer]
        return args + ([] if self.progress else ["--no-progress"])

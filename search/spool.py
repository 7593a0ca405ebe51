"""Finished results that could not be recorded because the storage was down, kept on local disk.

When a run finishes during an outage longer than the worker's wait, its RunResult is written to
``<artifacts>/spool/<study>/trial<N>.json`` (atomically: written aside, then renamed) before the
worker stops. The next worker of the study on this machine (the resume command) records it: on a
waiting try of the same config (the stopped trial's retry), so the run is not trained again. A
file is removed only once its result is recorded, or once its config is complete anyway.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Spooled:
    """One kept result."""

    path: Path
    """Its file."""
    trial: int
    """The number of the trial that ran it."""
    config_key: str
    """The run's config key."""
    result: dict[str, Any]
    """The run's ``RunResult.to_dict()``."""


@dataclass(frozen=True)
class Spool:
    """The kept results of one study on this machine."""

    folder: Path
    """``<artifacts>/spool/<study>``."""

    def keep(self, trial: int, config_key: str, result: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"trial{trial}.json"
        aside = path.with_suffix(f".{os.getpid()}.tmp")
        with open(aside, "w") as f:
            json.dump({"trial": trial, "config_key": config_key, "result": result}, f)
            f.flush()
            os.fsync(f.fileno())
        aside.replace(path)
        return path

    def pending(self) -> list[Spooled]:
        if not self.folder.is_dir():
            return []
        kept = []
        for path in sorted(self.folder.glob("trial*.json")):
            entry = json.loads(path.read_text())
            kept.append(Spooled(path, entry["trial"], entry["config_key"], entry["result"]))
        return kept

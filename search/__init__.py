"""Optuna studies of shapes: sweep files, storages, workers, crash recovery, the run table.

Public entry points (the CLI's `archscale study ...` calls these):

* ``load_sweep`` / ``parse_sweep``: a validated sweep file (``SweepFile``).
* ``create_study``: validate, create (or continue) a study and enqueue its grid.
* ``open_study``: a ``StudyHandle`` from a study name and a storage URL.
* ``run_study`` / ``run_worker``: run a study to its end (K local workers) or one worker.
* ``trials_table``: the canonical run table (docs/CONTRIBUTING.md) that laws fit.

They load on first use (``archscale.lazy``): importing the package costs no Optuna or JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from archscale.lazy import lazy_exports

_EXPORTS = {"StudyHandle": "study", "create_study": "study", "open_study": "study",
            "SweepFile": "sweepfile", "SweepFileError": "sweepfile", "load_sweep": "sweepfile",
            "parse_sweep": "sweepfile", "COLUMNS": "table", "pareto_front": "table",
            "trials_table": "table", "WorkerOptions": "worker", "run_study": "worker",
            "run_worker": "worker"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from archscale.search.study import StudyHandle, create_study, open_study
    from archscale.search.sweepfile import SweepFile, SweepFileError, load_sweep, parse_sweep
    from archscale.search.table import COLUMNS, pareto_front, trials_table
    from archscale.search.worker import WorkerOptions, run_study, run_worker

__all__ = ["COLUMNS", "StudyHandle", "SweepFile", "SweepFileError", "WorkerOptions",
           "create_study", "load_sweep", "open_study", "pareto_front", "parse_sweep", "run_study",
           "run_worker", "trials_table"]

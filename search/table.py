"""Trials as tables: the canonical run table laws/ fits, a status table, the Pareto front.

``trials_table`` gives one row per COMPLETE trial with the columns of docs/CONTRIBUTING.md (a
CSV export has exactly these), built from each trial's stored RunResult (``RunResult.row()``).
Failed, diverged, pruned and duplicate runs join with ``include_failed=True``; their ``status``
column says which, so a fit keeps ``status == "complete"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from archscale.arch.spec import ArchSpec
from archscale.search.attrs import (
    DECODE_ATTR,
    MESSAGE_ATTR,
    RESULT_ATTR,
    SPEC_ATTR,
    STALE_ATTR,
    STATUS_ATTR,
    VAL_LOSS_ATTR,
)
from archscale.sweeps.results import RUN_COLUMNS, RunResult

TRIAL_COLUMNS: dict[str, str] = {
    # realized N scatter around the target (up to shape.max_params_error): clustering N could
    # split a scale, so the grid's own label is kept
    "scale": "a grid trial's target N (its model-size group); absent for searched studies",
    "seed": "the run's training seed: the study's, or a noise: repeat's own (search/noise.py)",
    "study": "the study's name",
    "trial_id": "the Optuna trial number",
}
"""The columns a study adds to each run's (sweeps/results.py RUN_COLUMNS)."""
COLUMNS = [c for c in RUN_COLUMNS if c != "status"] + list(TRIAL_COLUMNS) + ["status"]
"""The canonical run table, in order (a CSV export has exactly these)."""


def trial_row(trial: FrozenTrial, study_name: str) -> dict | None:
    """A trial's canonical row, or None when it holds no run result."""
    if RESULT_ATTR not in trial.user_attrs:
        return None
    result = RunResult.from_dict(trial.user_attrs[RESULT_ATTR])
    row = result.row()
    # The trial's status wins: a run that finished after its twin is a "duplicate".
    status = trial.user_attrs.get(STATUS_ATTR, row["status"])
    return {**row, "scale": trial.params.get("N"), "seed": result.seed, "study": study_name,
            "trial_id": trial.number, "status": status}


def trials_table(study: optuna.Study, *, include_failed: bool = False) -> pd.DataFrame:
    """One row per COMPLETE trial (plus failed/diverged/pruned runs with ``include_failed``)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state != TrialState.COMPLETE and not include_failed:
            continue
        row = trial_row(trial, study.study_name)
        if row is not None:
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    # Searched trials have no grid scale: laws then group runs by clusters of N.
    return table.drop(columns="scale") if table["scale"].isna().any() else table


def status_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial, running and waiting ones included: state, outcome, shape, loss, throughput."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        spec = ArchSpec.from_dict(attrs[SPEC_ATTR]) if SPEC_ATTR in attrs else None
        seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                   if trial.datetime_complete and trial.datetime_start else None)
        rows.append({
            "trial": trial.number, "state": trial.state.name,
            "status": attrs.get(STATUS_ATTR, ""),
            "N": spec.params_nonembed if spec else None,
            "d_model": spec.d_model if spec else None, "n_layers": spec.n_layers if spec else None,
            "heads": f"{spec.n_heads}/{spec.n_kv_heads}" if spec else "",
            "r": spec.r_mlp_attn if spec else None, "d_over_sqrt_n": spec.d_over_sqrt_n if spec else None,
            "loss": attrs.get(VAL_LOSS_ATTR), "decode_tokens_per_s": attrs.get(DECODE_ATTR),
            "seconds": seconds, "message": (attrs.get(MESSAGE_ATTR, "")
                                               or trial.system_attrs.get(STALE_ATTR, "")),
        })
    return pd.DataFrame(rows)


def pareto_indices(loss: Sequence[float], throughput: Sequence[float]) -> list[int]:
    """Positions of the points no other point beats on both lower loss and higher throughput,
    by loss. The one Pareto rule: the run table's front and the recommendation's both use it."""
    order = sorted(range(len(loss)), key=lambda i: (loss[i], -throughput[i]))
    keep, best = [], -math.inf
    for i in order:
        if throughput[i] > best:
            keep.append(i)
            best = throughput[i]
    return keep


def pareto_front(table: pd.DataFrame, loss: str = "loss",
                 throughput: str = "decode_tokens_per_s") -> pd.DataFrame:
    """Rows no other row beats on both lower ``loss`` and higher ``throughput``, by loss."""
    ok = table[table[loss].notna() & table[throughput].notna()]
    return ok.iloc[pareto_indices(ok[loss].tolist(), ok[throughput].tolist())]

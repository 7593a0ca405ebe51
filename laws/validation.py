"""How far a fitted law can be trusted: held-out-scale error and the paper's progressive tasks.

Scales come from laws/table.py (a ``scale`` column, or clusters of N). The held-out task fits
on every scale but the largest and predicts it (a held-out split chosen by the user is made in
laws/law.py, before the law is fitted); the progressive tasks (Bian et al. 2025) fit on the
scales up to the k-th and predict the (k+1)-th, for the MAX_PROGRESSIVE largest k (each task is
a full refit). Each reports the MSE, the mean relative error and Spearman's rank correlation
within every (scale, tokens) group of at least three architectures, and keeps what calibrates
prediction intervals (laws/intervals.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from archscale.arch.errors import ArchscaleError
from archscale.laws import intervals
from archscale.laws.table import group_labels, scale_labels, scale_order

FitPredict = Callable[[pd.DataFrame, pd.DataFrame], np.ndarray]
"""fit_predict(train, rows) -> point predictions for ``rows`` of a law fitted on ``train``."""
CountRuns = Callable[[pd.DataFrame], int] | None
"""How many runs a table's rows come from, where a run gives several rows (None: one each)."""
MIN_GROUP = 3
"""Smallest (scale, tokens) group whose ranking is scored."""
MAX_PROGRESSIVE = 5
"""Progressive tasks run: those predicting the largest scales."""


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def prediction_metrics(predicted: np.ndarray, measured: np.ndarray,
                       groups: np.ndarray | None = None) -> dict[str, Any]:
    """MSE, mean relative error and Spearman within each group of MIN_GROUP+ rows."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    error = predicted - measured
    out: dict[str, Any] = {
        "n": len(measured),
        "mse": float(np.mean(error**2)),
        "mean_relative_error": float(np.mean(np.abs(error) / np.abs(measured))),
    }
    if groups is not None:
        by_group = {}
        for group in dict.fromkeys(groups):
            members = groups == group
            if members.sum() < MIN_GROUP:
                continue
            if np.ptp(predicted[members]) == 0 or np.ptp(measured[members]) == 0:
                by_group[str(group)] = None  # a constant ranks nothing
            else:
                rho = spearmanr(predicted[members], measured[members]).statistic
                by_group[str(group)] = _finite_or_none(rho)
        scored = [v for v in by_group.values() if v is not None]
        out["spearman_by_group"] = by_group
        out["spearman_min"] = min(scored) if scored else None
        out["spearman_mean"] = float(np.mean(scored)) if scored else None
    return out


def _task(table: pd.DataFrame, train: np.ndarray, test: np.ndarray, target: str,
          fit_predict: FitPredict, min_train: int, axes: Sequence[str], space: str,
          beyond: np.ndarray | None = None, count_runs: CountRuns = None,
          labels: np.ndarray | None = None) -> dict[str, Any]:
    """Fit on ``train`` rows, score on ``test`` rows; a failed or impossible fit is reported.

    Besides the metrics, a task keeps each test row's extrapolation distance from the training
    rows and the training fit's in-sample scatter, which calibrate prediction intervals; rows
    ``beyond`` (larger scales than the test's, ``labels`` naming each row's scale) are predicted
    for that calibration only."""
    task: dict[str, Any] = {"n_train": int(train.sum()), "n_test": int(test.sum())}
    if train.sum() < min_train:
        task["skipped"] = f"only {int(train.sum())} training runs; the form needs {min_train}"
        return task
    train_df, test_df = table[train].reset_index(drop=True), table[test].reset_index(drop=True)
    far_df = table[beyond if beyond is not None else np.zeros(len(table), dtype=bool)]
    try:
        every = fit_predict(train_df, pd.concat([train_df, test_df, far_df], ignore_index=True))
    except ArchscaleError as err:
        task["skipped"] = str(err)
        return task
    n_train, n_test = len(train_df), len(test_df)
    fitted, predicted = every[:n_train], every[n_train:n_train + n_test]
    ranges = intervals.fitted_ranges(train_df, axes)
    if len(far_df):
        task["beyond"] = {"scale": np.asarray(labels)[beyond].tolist(),
                          "distance": intervals.distance(far_df, ranges).tolist(),
                          "residual": intervals.residuals(every[n_train + n_test:],
                                                         far_df[target], space).tolist()}
    measured = test_df[target].to_numpy(dtype=float)
    task.update(prediction_metrics(predicted, measured, group_labels(test_df)))
    task["train_scatter"] = intervals.in_sample_scatter(
        fitted, train_df[target].to_numpy(dtype=float), min_train - 1, space,
        None if count_runs is None else count_runs(train_df))
    task["rows"] = {"index": np.flatnonzero(test).tolist(), "predicted": predicted.tolist(),
                    "measured": measured.tolist(),
                    "distance": intervals.distance(test_df, ranges).tolist()}
    return task


def records(tasks: Sequence[dict[str, Any]], space: str, exclude_scales: Sequence[str] = ()
            ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(distance, residual, training runs of the refit) of every row the tasks predicted, one
    triple per task and predicted scale, but those at ``exclude_scales`` (which a held-out check
    must not calibrate on). The refit's size tells which refit a record came from, and how much
    it resembles the full fit (laws/calibration.py weighs its scores by it)."""
    out = []
    for task in tasks:
        if "rows" not in task:
            continue
        rows, n_train = task["rows"], int(task["n_train"])
        if task.get("test_scale") not in exclude_scales:
            out.append((np.asarray(rows["distance"], dtype=float),
                        intervals.residuals(rows["predicted"], rows["measured"], space), n_train))
        if "beyond" in task:
            far = task["beyond"]
            labels = np.asarray(far["scale"])
            for scale in dict.fromkeys(far["scale"]):
                if scale not in exclude_scales:
                    keep = labels == scale
                    out.append((np.asarray(far["distance"], dtype=float)[keep],
                                np.asarray(far["residual"], dtype=float)[keep], n_train))
    return out


def heldout(table: pd.DataFrame, target: str, fit_predict: FitPredict, min_train: int,
            axes: Sequence[str], space: str, count_runs: CountRuns = None,
            scales: tuple[np.ndarray, list[str]] | None = None) -> dict[str, Any] | None:
    """Fit on every scale but the largest, predict the largest (``scales`` as in
    ``progressive``, so the refits that calibrate its interval never saw that scale)."""
    labels, order = (scale_labels(table), scale_order(table)) if scales is None else scales
    if len(order) < 2:
        return None
    test = labels == order[-1]
    task = _task(table, ~test, test, target, fit_predict, min_train, axes, space,
                 count_runs=count_runs)
    return {"rule": f"largest scale {order[-1]!r} held out", "test_scale": order[-1], **task}


def progressive(table: pd.DataFrame, target: str, fit_predict: FitPredict, min_train: int,
                axes: Sequence[str], space: str, count_runs: CountRuns = None,
                scales: tuple[np.ndarray, list[str]] | None = None) -> list[dict[str, Any]]:
    """Fit on scales <= k, predict scale k + 1, for the last MAX_PROGRESSIVE k with enough runs.
    ``scales``: each row's scale and the scales in order (default: the table's, laws/table.py)."""
    labels, order = (scale_labels(table), scale_order(table)) if scales is None else scales
    tasks = []
    for k in range(max(1, len(order) - MAX_PROGRESSIVE), len(order)):
        train = np.isin(labels, order[:k])
        if train.sum() < min_train:
            continue
        test = labels == order[k]
        beyond = np.isin(labels, order[k + 1:])
        tasks.append({"train_scales": order[:k], "test_scale": order[k],
                      **_task(table, train, test, target, fit_predict, min_train, axes, space,
                              beyond, count_runs, labels)})
    return tasks

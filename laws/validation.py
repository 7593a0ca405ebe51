"""How far a fitted law can be trusted: held-out-scale error and the paper's progressive tasks.

Scales come from laws/table.py (a ``scale`` column, or clusters of N). The held-out task fits
on the runs below a size (``holdout_above``, default: every scale but the largest) and predicts
the rest; the progressive tasks (Bian et al. 2025) fit on the scales up to the k-th and predict
the (k+1)-th, for the MAX_PROGRESSIVE largest k (each task is a full refit). Each reports the
MSE, the mean relative error and Spearman's rank correlation within every (scale, tokens)
group of at least three architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from archscale.arch.errors import ArchscaleError
from archscale.laws.table import group_labels, scale_labels, scale_order

FitPredict = Callable[[pd.DataFrame, pd.DataFrame], np.ndarray]
"""fit_predict(train, test) -> point predictions for the test rows."""
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
          fit_predict: FitPredict, min_train: int) -> dict[str, Any]:
    """Fit on ``train`` rows, score on ``test`` rows; a failed or impossible fit is reported."""
    task: dict[str, Any] = {"n_train": int(train.sum()), "n_test": int(test.sum())}
    if train.sum() < min_train:
        task["skipped"] = f"only {int(train.sum())} training runs; the form needs {min_train}"
        return task
    train_df, test_df = table[train].reset_index(drop=True), table[test].reset_index(drop=True)
    try:
        predicted = fit_predict(train_df, test_df)
    except ArchscaleError as err:
        task["skipped"] = str(err)
        return task
    measured = test_df[target].to_numpy(dtype=float)
    task.update(prediction_metrics(predicted, measured, group_labels(test_df)))
    task["rows"] = {"index": np.flatnonzero(test).tolist(), "predicted": predicted.tolist(),
                    "measured": measured.tolist()}
    return task


def heldout(table: pd.DataFrame, target: str, fit_predict: FitPredict, min_train: int,
            holdout_above: float | None = None) -> dict[str, Any] | None:
    """Fit below ``holdout_above`` (default: all but the largest scale), predict the rest."""
    if holdout_above is None:
        order = scale_order(table)
        if len(order) < 2:
            return None
        test = scale_labels(table) == order[-1]
        rule = f"largest scale {order[-1]!r} held out"
    else:
        test = table["N"].to_numpy(dtype=float) >= holdout_above
        rule = f"runs with N >= {holdout_above:.4g} held out"
        if not test.any() or test.all():
            raise ArchscaleError(f"--holdout-above {holdout_above:.4g} leaves "
                                 f"{'no' if not test.any() else 'only'} held-out runs: choose an N "
                                 "between the smallest and the largest run")
    task = _task(table, ~test, test, target, fit_predict, min_train)
    return {"rule": rule, **task}


def progressive(table: pd.DataFrame, target: str, fit_predict: FitPredict,
                min_train: int) -> list[dict[str, Any]]:
    """Fit on scales <= k, predict scale k + 1, for the last MAX_PROGRESSIVE k with enough runs."""
    order = scale_order(table)
    labels = scale_labels(table)
    tasks = []
    for k in range(max(1, len(order) - MAX_PROGRESSIVE), len(order)):
        train = np.isin(labels, order[:k])
        if train.sum() < min_train:
            continue
        test = labels == order[k]
        tasks.append({"train_scales": order[:k], "test_scale": order[k],
                      **_task(table, train, test, target, fit_predict, min_train)})
    return tasks

"""What every law form provides: a fit, bootstrap refits and a vectorized prediction.

A law kind (chinchilla, conditional, throughput, accuracy, passk) is a ``LawKind`` of plain
functions over a JSON-able ``config`` (the declared form: terms, target column, options) so that
a law file rebuilds its predictor from the config and coefficients alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from archscale.laws.diagnostics import Problem

FormChecks = Callable[[dict[str, Any], dict[str, float], pd.DataFrame], list[Problem]]
"""A form's own checks: (config, coefficients by name, fitted table) -> problems."""


@dataclass(frozen=True)
class Estimate:
    """A point fit."""

    coef: np.ndarray
    """Coefficients, in the order of ``names``."""
    names: tuple[str, ...]
    """Coefficient names."""
    converged: bool
    """Whether the optimizer met its stopping rule."""
    config: dict[str, Any]
    """The config completed by the fit (e.g. the measured L_opt table, a default setting)."""
    notes: tuple[str, ...] = field(default=())
    """Anything the user should know about this fit."""
    state: Any = None
    """What the bootstrap reuses from the point fit (warm starts); not saved."""


@dataclass(frozen=True)
class LawKind:
    """The functions that make one law form."""

    name: str
    """The --law name."""
    configure: Callable[[dict[str, Any]], dict[str, Any]]
    """Options (CLI or Python) -> the complete, validated, JSON-able config."""
    target: Callable[[dict[str, Any]], str]
    """The column the law predicts, given its config."""
    n_params: Callable[[dict[str, Any]], int]
    """Fitted coefficients (to refuse tables with too few runs)."""
    min_scales: int
    """Distinct scales the form needs (2 for laws in N and D)."""
    fit: Callable[[pd.DataFrame, dict[str, Any]], Estimate]
    """Point fit on a table."""
    bootstrap: Callable[[pd.DataFrame, dict[str, Any], Estimate, np.ndarray],
                        tuple[np.ndarray, np.ndarray]]
    """Refits on resampled runs (counts, one row per resample) -> (samples S x P, converged S)."""
    predict: Callable[[dict[str, Any], np.ndarray, pd.DataFrame], np.ndarray]
    """Predictions of every coefficient row (S x P) for every table row: S x n."""
    axes: tuple[str, ...] = ()
    """Inputs along which a prediction can extrapolate beyond the fitted runs (N, D, loss):
    prediction intervals widen with the distance beyond their fitted range."""
    space: str = "log"
    """Where residuals are measured and prediction intervals are symmetric (laws/intervals.py
    SPACES): ``log`` for losses and throughputs, ``absolute`` for accuracies, ``neglog`` for
    pass rates."""
    problems: FormChecks | None = None
    """The form's own identification checks (config, coefficients by name, fitted table), beside
    the general ones of laws/law.py; they refuse refits that calibrate intervals as well."""
    runs: Callable[[dict[str, Any], pd.DataFrame], np.ndarray] | None = None
    """Which run each table row belongs to (config, table -> integer labels), for a form with
    several rows per run (pass@k at every k): the bootstrap resamples whole runs, and a
    coefficient costs a run's rows in the scatter's degrees of freedom. None: a row is a run."""

"""What every law form provides: a fit, bootstrap refits, a vectorized prediction, and the facts
the rest of archscale asks about it (inputs, default bootstrap, identification checks, options).

A law kind (chinchilla, conditional, throughput, accuracy, passk, or a user-declared form,
laws/declared.py) is a ``LawKind`` of plain functions over a JSON-able ``config`` (the declared
form: terms, target column, options) so that a law file rebuilds its predictor from the config
and coefficients alone. laws/registry.py lists them; nothing outside a kind's module tests its
name.
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
DesignChecks = Callable[[dict[str, Any], pd.DataFrame], list[Problem]]
"""A form's checks of a design before fitting: (config, table) -> problems."""
QUERY_INPUTS = ("shape", "tokens", "loss", "k")
"""What a one-row query (``archscale predict`` without --csv) can give a law: a shape (N and
the shape features), the training tokens D, a validation loss, samples per request k."""


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
    design_problems: DesignChecks | None = None
    """Checks of the runs before fitting (collinear N and D, too few values of a term's
    feature), beside the general ones; they refuse refits as ``problems`` do."""
    default_n_boot: int = 200
    """Bootstrap refits when the caller gives none (cheap batched refits afford more)."""
    needs: Callable[[dict[str, Any]], tuple[str, ...]] = lambda config: ()
    """What a one-row query must give (QUERY_INPUTS), given the config; empty: the law reads
    other columns (``columns``) and predicts tables only."""
    columns: Callable[[dict[str, Any]], tuple[str, ...]] | None = None
    """Run-table columns the law reads and predicts, for messages (None: said by ``needs``)."""
    options: tuple[str, ...] = ()
    """Options ``configure`` reads (the CLI refuses others for this kind)."""
    law_options: dict[str, str] = field(default_factory=dict)
    """Options whose value is a fitted law file, and the kind that law must be: the caller
    loads it and passes its coefficients (e.g. the conditional law's given L_opt)."""

    scales: Callable[[dict[str, Any]], tuple[str, ...]] | None = None
    """Coefficients that are positive scales, which the flat-direction check perturbs in log
    (a relative step); None: the names of diagnostics.LOG_SCALED (A, B, E, scale)."""
    heldout_rows: Callable[[dict[str, Any], pd.DataFrame], pd.DataFrame] | None = None
    """What a held-out row carries besides its inputs when a refit predicts it (the conditional
    law's measured L_opt: the best run of its group); None: nothing."""
    default_columns: dict[str, str] = field(default_factory=dict)
    """Column mapping (name -> source column) used when the caller gives none: a declared form
    names the columns of the public table it was written for."""

    @property
    def file(self) -> str:
        """Where a report saves this kind's fitted law (under its laws/ folder)."""
        return f"{self.name}.json"

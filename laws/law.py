"""A fitted law: form, coefficients, bootstrap samples, validation, identifiability and
provenance, and vectorized predictions with two kinds of interval. ``fit_law`` makes one.

* The interval of the law's *mean* comes from the seeded bootstrap over runs: the percentile
  interval of the predictions of every refit that converged (``mean_interval``). Coefficient
  intervals are the percentile intervals of the refits.
* The *prediction* interval says where a new run will land: the mean plus the scatter of runs
  and the error of extrapolating the form, calibrated on progressive held-out fits
  (laws/intervals.py; ``prediction_interval``). This is the one to read as "the run will land in".

A law whose design cannot identify it, or whose fit came out degenerate, carries the reasons
(laws/diagnostics.py) and is not ``identified``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

import archscale
from archscale.arch.errors import ArchscaleError, SettingError
from archscale.laws import calibration, diagnostics, intervals, validation
from archscale.laws.bootstrap import percentile_interval, resample_counts
from archscale.laws.diagnostics import Problem
from archscale.laws.intervals import DEFAULT_LEVEL, ErrorModel
from archscale.laws.kind import Estimate, LawKind
from archscale.laws.registry import get_kind
from archscale.laws.table import (
    Rows,
    add_features,
    as_table,
    axis_scales,
    axis_values,
    collapse_duplicates,
    group_labels,
    scale_labels,
    table_sha256,
)

N_DEFINITIONS = ("non_embedding", "total")
"""What a table's N counts: non-embedding parameters (the convention, arch/spec.py) or all."""

@dataclass(frozen=True)
class Law:
    """A fitted law; ``predict`` takes a run table (or rows) and returns one value per row."""

    kind: str
    """The form's name (chinchilla, conditional, throughput, accuracy, passk, or a declared
    form's name: its declaration is then in ``config``)."""
    config: dict[str, Any]
    """The declared form: terms, target, options (JSON-able)."""
    coef_names: tuple[str, ...]
    """Coefficient names, in the order of ``coef``."""
    coef: np.ndarray
    """Point estimate (P)."""
    coef_samples: np.ndarray
    """Bootstrap refits (S x P); failed refits are NaN rows."""
    converged: bool
    """Whether the point fit met its optimizer's stopping rule."""
    validation: dict[str, Any] = field(default_factory=dict)
    """In-sample, held-out-scale and progressive metrics."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the runs came from (study and trial ids, or a file hash) and how they were read."""
    bootstrap: dict[str, Any] = field(default_factory=dict)
    """Seed, resample count and the fraction of refits that converged."""
    notes: tuple[str, ...] = ()
    """What the user should know about this fit."""
    problems: tuple[Problem, ...] = ()
    """Why the design or the fit does not identify the law (empty: identified)."""
    error_model: ErrorModel | None = None
    """Scatter and extrapolation error behind prediction intervals (laws/intervals.py)."""
    n_definition: str = "non_embedding"
    """What N counted in the fitted table (N_DEFINITIONS); ``predict --spec`` converts to it."""
    version: str = archscale.__version__
    """archscale version that made the fit."""

    @property
    def identified(self) -> bool:
        return not self.problems

    @property
    def law_kind(self) -> LawKind:
        return get_kind(self.kind, self.config)

    @property
    def target(self) -> str:
        return self.law_kind.target(self.config)

    @property
    def coefficients(self) -> dict[str, float]:
        return dict(zip(self.coef_names, self.coef.tolist(), strict=True))

    def coef_intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        if len(self.coef_samples) == 0:
            return {}
        lo, hi = percentile_interval(self.coef_samples, level)
        return {n: (float(a), float(b)) for n, a, b in zip(self.coef_names, lo, hi, strict=True)}

    def predict(self, rows: Rows) -> np.ndarray:
        return self.law_kind.predict(self.config, self.coef[None, :], as_table(rows))[0]

    def predict_samples(self, rows: Rows) -> np.ndarray:
        """Predictions of every bootstrap refit (S x n)."""
        if len(self.coef_samples) == 0:
            raise SettingError("this law has no bootstrap samples: refit with {n_boot} > 0 to "
                               "get intervals")
        return self.law_kind.predict(self.config, self.coef_samples, as_table(rows))

    def mean_interval(self, rows: Rows, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap interval of the law's mean (not where a single run lands)."""
        return percentile_interval(self.predict_samples(rows), level)

    def prediction_interval(self, rows: Rows, level: float = DEFAULT_LEVEL
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Where a new run at each row will land, with probability ``level``; NaN where no
        calibration holds (``error_model.reason`` says why)."""
        if self.error_model is None:
            raise ArchscaleError("this law has no prediction-interval calibration (fitted by an "
                                 "older archscale): refit it with `archscale fit`")
        table = as_table(rows)
        mean = self.mean_interval(table, level) if len(self.coef_samples) else None
        return calibration.interval(self.error_model, self.predict(table),
                                    intervals.distance(table, self.error_model.ranges), level,
                                    mean)


def _check_table(kind: LawKind, config: dict[str, Any], table: pd.DataFrame) -> None:
    """Refuse too few runs for the coefficients, or a single scale where the form needs more."""
    n_params = kind.n_params(config)
    if len(table) <= n_params:
        raise ArchscaleError(f"the {kind.name} law has {n_params} coefficients but the table has "
                             f"{len(table)} runs: it needs at least {n_params + 1}")
    if kind.min_scales > 1 and {"N", "D"} <= set(table.columns):  # else the kind names the gap
        n_scales = len(set(scale_labels(table)))
        if n_scales < kind.min_scales:
            raise ArchscaleError(
                f"the {kind.name} law needs runs at {kind.min_scales}+ model sizes; the table "
                f"has {n_scales}: add runs at other scales")


def _provenance(table: pd.DataFrame, n_runs: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n_runs": len(table) if n_runs is None else n_runs,
                           "n_rows": len(table)}
    if {"study", "trial_id"} <= set(table.columns):
        out["studies"] = sorted(set(table["study"].astype(str)))
        out["trial_ids"] = [int(t) for t in table["trial_id"]]
    else:
        out["table_sha256"] = table_sha256(table)
    # the trained scales, so a prediction at a target N, D can state how far it extrapolates
    for name, column in (("n_range", "N"), ("d_range", "D")):
        if column in table.columns:
            values = pd.to_numeric(table[column], errors="coerce")
            out[name] = [float(values.min()), float(values.max())]
    return out


def holdout_mask(table: pd.DataFrame, holdout_above: float, holdout_by: str = "N") -> np.ndarray:
    """Rows held out: ``holdout_by`` (N, D, flops, tokens_per_param or any numeric column) at or
    above ``holdout_above``; flops and tokens per parameter without a column are derived from N
    and D (``table.axis_values``)."""
    values = axis_values(table, holdout_by)
    test = values >= holdout_above
    if not test.any() or test.all():
        raise SettingError(
            f"{{holdout_above}} {holdout_above:.4g} (by {holdout_by}) leaves "
            f"{'no' if not test.any() else 'only'} held-out runs: choose a value between "
            f"{np.nanmin(values):.4g} and {np.nanmax(values):.4g}")
    return test


def _design_problems(kind: LawKind, config: dict[str, Any], table: pd.DataFrame) -> list[Problem]:
    return [] if kind.design_problems is None else kind.design_problems(config, table)


def _fit_problems(kind: LawKind, estimate: Estimate, table: pd.DataFrame,
                  boot_info: dict[str, Any]) -> list[Problem]:
    coef = dict(zip(estimate.names, estimate.coef.tolist(), strict=True))
    problems = []
    if not estimate.converged:
        problems.append(Problem("not_converged", "the optimizer stopped before its tolerance: "
                                "check the data for outliers or diverged runs"))
    if kind.problems is not None:
        problems += kind.problems(estimate.config, coef, table)
    problems += diagnostics.flat_directions(
        lambda c: kind.predict(estimate.config, c[None, :], table)[0], estimate.coef,
        estimate.names, diagnostics.LOG_SCALED if kind.scales is None else kind.scales(
            estimate.config))
    problems += diagnostics.refit_problems(boot_info.get("converged_fraction"), boot_info["n"])
    return problems


def _resample(kind: LawKind, config: dict[str, Any], table: pd.DataFrame, n_boot: int,
              seed: int) -> np.ndarray:
    """Per-row counts of ``n_boot`` resamples of the runs (S x rows): a run with several rows
    (``kind.runs``) is drawn whole, so its rows' correlated errors never pass for independent."""
    if kind.runs is None:
        return resample_counts(len(table), n_boot, seed)
    labels = kind.runs(config, table)
    return resample_counts(int(labels.max()) + 1, n_boot, seed)[:, labels]


def _heldout_rows(law: Law, table: pd.DataFrame, index: np.ndarray, rule: str,
                  level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """The law's predictions, prediction intervals and metrics on held-out rows."""
    target = law.target
    predicted = law.predict(table)
    low, high = law.prediction_interval(table, level)
    measured = table[target].to_numpy(dtype=float)
    task = {"rule": rule, "n_train": law.provenance.get("n_rows"), "n_test": len(table),
            **validation.prediction_metrics(predicted, measured, group_labels(table)),
            f"coverage_{round(level * 100)}": intervals.coverage(low, high, measured)}
    task["rows"] = {"index": index.tolist(), "predicted": predicted.tolist(),
                    "measured": measured.tolist(), "lower": low.tolist(), "upper": high.tolist(),
                    "distance": intervals.distance(table, law.error_model.ranges).tolist()}
    return task


def _score_heldout(task: dict[str, Any], progressive: list[dict[str, Any]], kind: str,
                   space: str, noise_floor: float | None, level: float = DEFAULT_LEVEL) -> None:
    """Add prediction intervals to the largest-scale held-out task, calibrated only on its
    training fit and on the progressive fits that did not predict that scale."""
    if "rows" not in task:
        return
    rows = task["rows"]
    held = validation.records(progressive, space, exclude_scales=[task["test_scale"]])
    model = calibration.calibrate(kind, space, task["train_scatter"], {}, held, noise_floor,
                                  task["n_train"])
    low, high = calibration.interval(model, np.asarray(rows["predicted"]),
                                     np.asarray(rows["distance"]), level)
    rows["lower"], rows["upper"] = low.tolist(), high.tolist()
    task[f"coverage_{round(level * 100)}"] = intervals.coverage(low, high, rows["measured"])
    task["interval_method"] = model.label


def fit_law(kind_name: Any, table: pd.DataFrame, options: Mapping[str, Any] | None = None, *,
            n_boot: int | None = None, seed: int = 0, holdout_above: float | None = None,
            holdout_by: str = "N", progressive: bool = True,
            provenance: Mapping[str, Any] | None = None, noise_floor: float | None = None,
            n_definition: str = "non_embedding", report_heldout: bool = True) -> Law:
    """Fit, bootstrap (``n_boot`` resamples of the runs, seeded), validate and calibrate one law.

    ``kind_name`` is a kind's name (laws/registry.py), a declared form (laws/declared.py: a
    DeclaredForm, a declaration mapping or a form file) or a LawKind.

    With ``holdout_above`` the rows at or above it (by ``holdout_by``) are held out *before*
    fitting: the law is fitted on the rest, and its validation holds the held-out rows with
    their prediction intervals. The progressive refits extrapolate along ``holdout_by`` (N or
    ``scale``: the table's scales; another axis: ``table.axis_scales``) whether or not rows are
    held out: the axis names the extrapolation the intervals are calibrated for.
    ``noise_floor`` is the measured seed-to-seed scatter (relative), the least scatter a
    prediction interval assumes. ``report_heldout=False`` skips the refit
    that scores the largest scale held out for the report (the design engine refits hundreds of
    times and reads no report).
    """
    kind = get_kind(kind_name)
    if n_definition not in N_DEFINITIONS:
        raise SettingError(f"{{n_definition}} {n_definition!r}: choose one of {N_DEFINITIONS}")
    config = kind.configure(dict(options or {}))
    table, duplicates = collapse_duplicates(add_features(table).reset_index(drop=True))
    if duplicates:
        provenance = {**dict(provenance or {}), "duplicates_collapsed": duplicates}
    heldout_table, heldout_index = None, None
    if holdout_above is not None:
        test = holdout_mask(table, holdout_above, holdout_by)
        heldout_index = np.flatnonzero(test)
        heldout_table = table[test].reset_index(drop=True)
        table = table[~test].reset_index(drop=True)
    _check_table(kind, config, table)
    estimate = kind.fit(table, config)  # refuses missing or non-positive inputs first
    problems = _design_problems(kind, estimate.config, table)

    n_boot = kind.default_n_boot if n_boot is None else int(n_boot)
    samples = np.empty((0, len(estimate.coef)))
    boot_info: dict[str, Any] = {"n": n_boot, "seed": seed}
    if n_boot > 0:
        samples, ok = kind.bootstrap(table, estimate.config, estimate,
                                     _resample(kind, estimate.config, table, n_boot, seed))
        # a refit that did not converge never enters an interval
        keep = ok & np.isfinite(samples).all(axis=1)
        samples = np.where(keep[:, None], samples, np.nan)
        boot_info["converged_fraction"] = float(np.mean(ok))
    problems += _fit_problems(kind, estimate, table, boot_info)

    def fit_predict(train: pd.DataFrame, rows: pd.DataFrame, strict: bool = True) -> np.ndarray:
        """A refit on ``train`` predicts ``rows``. A ``strict`` refit that its runs do not
        identify is refused, as the full fit would be, so it never calibrates an interval."""
        _check_table(kind, config, train)
        part = kind.fit(train, config)
        unidentified = (_design_problems(kind, part.config, train)
                        + _fit_problems(kind, part, train, {"n": 0})) if strict else []
        if unidentified:
            raise ArchscaleError(f"refit not identified: {unidentified[0].message}")
        if kind.heldout_rows is not None:
            rows = kind.heldout_rows(config, rows)
        return kind.predict(part.config, part.coef[None, :], rows)[0]

    target = kind.target(config)
    space = kind.space
    count_runs = None if kind.runs is None else (
        lambda rows: int(kind.runs(config, rows).max()) + 1)
    n_runs = None if count_runs is None else count_runs(table)
    n_coef = len(estimate.coef)
    fitted = kind.predict(estimate.config, estimate.coef[None, :], table)[0]
    measured = table[target].to_numpy(dtype=float)
    checks: dict[str, Any] = {"in_sample": validation.prediction_metrics(fitted, measured)}
    min_train = kind.n_params(config) + 1
    tasks = []
    # the own refits extrapolate along the axis the user holds out by (N or the scale column:
    # the table's scales)
    scales = None if holdout_by in ("N", "scale") else axis_scales(table, holdout_by)
    n_scales = len(set(scale_labels(table) if scales is None else scales[0]))
    if progressive and n_scales >= 2:
        tasks = validation.progressive(table, target, fit_predict, min_train, kind.axes, space,
                                       count_runs, scales)
        checks["progressive"] = tasks
    error_model = calibration.calibrate(
        kind.name, space, intervals.in_sample_scatter(fitted, measured, n_coef, space, n_runs),
        intervals.fitted_ranges(table, kind.axes), validation.records(tasks, space), noise_floor,
        len(table), calibration.withheld_reason(problems))

    notes = list(estimate.notes)
    if n_boot > 0 and boot_info["converged_fraction"] < 1:
        failed = 1 - boot_info["converged_fraction"]
        notes.append(f"{failed:.1%} of bootstrap refits did not converge (left out of intervals)")
    law = Law(kind=kind.name, config=estimate.config, coef_names=estimate.names,
              coef=np.asarray(estimate.coef, dtype=np.float64), coef_samples=samples,
              converged=estimate.converged, validation=checks,
              provenance={**_provenance(table, n_runs), **dict(provenance or {})},
              bootstrap=boot_info, notes=tuple(notes), problems=tuple(problems),
              error_model=error_model, n_definition=n_definition)
    if heldout_table is not None:
        checks["heldout"] = _heldout_rows(law, heldout_table, heldout_index,
                                          f"runs with {holdout_by} >= {holdout_above:.4g} held out "
                                          "(not fitted)")
    elif report_heldout and n_scales >= 2:
        # scored even where the refit is degenerate: its error is part of what the user is told
        task = validation.heldout(table, target, partial(fit_predict, strict=False), min_train,
                                  kind.axes, space, count_runs, scales)
        if task is not None:
            _score_heldout(task, tasks, kind.name, space, noise_floor)
            checks["heldout"] = task
    return law

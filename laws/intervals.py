"""Prediction intervals: where a new run will land, beside the interval of the law's mean.

The pieces every calibration uses (laws/calibration.py picks which one holds):

* a run's residual around the law, f(measured) - f(predicted) in the law's ``space`` (SPACES:
  f = log for losses and throughputs, the identity for accuracies, and -log(-log) for pass
  rates, whose relative error in -log pass@k is the one that stays level across k and scales);
* the extrapolation ``distance`` of a row: summed over the law's inputs (N and D for loss laws),
  how far it lies beyond the range the law was fitted on, in units of that range's log width
  (0 inside);
* the in-sample scatter ``sigma_run``: the RMS of the in-sample residuals with the fitted
  coefficients' degrees of freedom taken out, or the measured seed-to-seed noise floor if larger;
* ``around``: the interval f^-1(f(prediction) +- half-width), never narrower than the bootstrap
  interval of the law's mean at the same level.

Method ``extrapolation-calibrated`` (the normal model, for kinds no public sweep calibrates): a
residual is normal with scale sigma(delta) = sqrt(sigma_run^2 + (growth * delta)^2), ``growth``
the least-squares fit of r^2 - sigma_run^2 = growth^2 delta^2 over the residuals r of these runs'
progressive held-out refits (fit on the scales up to k, predict every larger scale; refits that
their runs do not identify are left out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from archscale.laws.bootstrap import check_level
from archscale.laws.levels import DEFAULT_LEVEL as DEFAULT_LEVEL  # its home: laws/levels.py

METHOD = "extrapolation-calibrated"
UNCALIBRATED = "not calibrated (no progressive held-out fits)"
SPAN_FLOOR = float(np.log(2))
"""Least log width of a fitted range when measuring distance in units of it."""


@dataclass(frozen=True)
class ErrorModel:
    """How far a new run lands from the law's prediction, as a function of extrapolation."""

    space: str
    """Where residuals are measured (SPACES): ``log`` (relative), ``absolute`` or ``neglog``."""
    sigma_run: float
    """Scatter of runs inside the fitted range (residual units of ``space``)."""
    growth: float | None
    """Extra error per unit of extrapolation distance (``distance``: fitted-range widths),
    from held-out refits of these runs (the normal model, kinds without public sweeps); None
    when none calibrated it."""
    ranges: dict[str, list[float]]
    """Fitted range [min, max] of each input the distance is measured on."""
    n_fit: int = 0
    """Runs the in-sample scatter comes from."""
    n_heldout: int = 0
    """Held-out residuals of these runs' refits the calibration comes from."""
    noise_floor: float | None = None
    """Seed-to-seed scatter given to the fit (relative), if any."""
    method: str = field(default=METHOD)
    """Name of the method (module docstring; laws/calibration.py)."""
    law: str = ""
    """The law kind, which picks the public sweeps' records (laws/calibration.py)."""
    heldout: tuple[tuple[float, ...], ...] = ()
    """(distance, residual, training runs of the refit) of every held-out prediction of these
    runs' refits: the scores of the split-conformal calibration (laws/calibration.py). Law files
    from before the refit's size was kept hold (distance, residual) pairs."""
    source: str | None = None
    """``these runs`` or ``public sweeps``: what calibrates the intervals; None: nothing does."""
    reason: str | None = None
    """Why no interval is given (``source`` None)."""

    def __post_init__(self) -> None:
        # a model built with its own growth and no word on its source is calibrated on its runs
        if self.source is None and self.reason is None and self.growth is not None:
            object.__setattr__(self, "source", "these runs")

    def sigma(self, distance: np.ndarray) -> np.ndarray:
        growth = self.growth or 0.0
        return np.sqrt(self.sigma_run**2 + (growth * np.asarray(distance, dtype=float)) ** 2)

    @property
    def label(self) -> str:
        """One line for the user: which calibration holds, by which method, or why none."""
        if self.source is None:
            return f"no prediction interval: {self.reason}"
        return f"calibrated on {self.source} ({self.method})"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "space": self.space, "sigma_run": self.sigma_run,
                "growth": self.growth, "ranges": self.ranges, "n_fit": self.n_fit,
                "n_heldout": self.n_heldout, "noise_floor": self.noise_floor, "law": self.law,
                "heldout": [list(r) for r in self.heldout], "source": self.source,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorModel:
        growth = None if data.get("growth") is None else float(data["growth"])
        # a law file from before calibration sources: its own growth is all that calibrates it
        source = data.get("source", "these runs" if growth is not None else None)
        return cls(space=str(data["space"]), sigma_run=float(data["sigma_run"]), growth=growth,
                   ranges={k: [float(a), float(b)] for k, (a, b) in data["ranges"].items()},
                   n_fit=int(data.get("n_fit", 0)), n_heldout=int(data.get("n_heldout", 0)),
                   noise_floor=data.get("noise_floor"), method=str(data.get("method", METHOD)),
                   law=str(data.get("law", "")),
                   heldout=tuple(tuple(float(v) for v in r) for r in data.get("heldout", ())),
                   source=source,
                   reason=data.get("reason", None if source else
                                   "fitted by an older archscale without a calibration: refit"))


def fitted_ranges(table: pd.DataFrame, axes: Sequence[str]) -> dict[str, list[float]]:
    return {a: [float(table[a].min()), float(table[a].max())] for a in axes if a in table.columns}


def distance(table: pd.DataFrame, ranges: Mapping[str, Sequence[float]]) -> np.ndarray:
    """How far each row lies outside the fitted ranges, summed over the inputs, each in units of
    the fitted range's own log width (at least SPAN_FLOOR): going 3x beyond runs that span 1.1x
    is a longer reach than going 3x beyond runs that span 10x."""
    out = np.zeros(len(table))
    for axis, (low, high) in ranges.items():
        if axis not in table.columns:
            continue
        x = pd.to_numeric(table[axis], errors="coerce").to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            beyond = np.maximum(np.log(x / high), 0) + np.maximum(np.log(low / x), 0)
        out += np.nan_to_num(beyond, nan=0.0) / max(float(np.log(high / low)), SPAN_FLOOR)
    return out


def _neg_log_neg_log(x: np.ndarray) -> np.ndarray:
    return -np.log(-np.log(x))


def _exp_neg_exp_neg(t: np.ndarray) -> np.ndarray:
    return np.exp(-np.exp(-t))


SPACES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "absolute": (np.asarray, np.asarray), "log": (np.log, np.exp),
    "neglog": (_neg_log_neg_log, _exp_neg_exp_neg)}
"""Where residuals are measured and intervals are symmetric: (f, its inverse), f increasing."""


def to_space(values: np.ndarray, space: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return SPACES[space][0](np.asarray(values, dtype=float))


def residuals(predicted: np.ndarray, measured: np.ndarray, space: str) -> np.ndarray:
    return to_space(measured, space) - to_space(predicted, space)


def in_sample_scatter(fitted: np.ndarray, measured: np.ndarray, n_coef: int, space: str,
                      n_runs: int | None = None) -> float:
    """RMS residual with the coefficients' degrees of freedom taken out. Where the rows come from
    ``n_runs`` runs (several rows each, with errors shared within a run) a coefficient costs a
    run's worth of rows, not one row: dof = rows (1 - n_coef / n_runs). NaN where the fit
    predicts no finite value at any row (it measures no scatter)."""
    resid = residuals(fitted, measured, space)
    resid = resid[np.isfinite(resid)]
    if not len(resid):
        return math.nan
    runs = len(resid) if n_runs is None else n_runs
    dof = max(len(resid) * (runs - n_coef) / runs, len(resid) / runs)
    return float(np.sqrt(np.sum(resid**2) / dof))


def calibrate(space: str, sigma_run: float, ranges: dict[str, list[float]],
              heldout: Sequence[tuple[np.ndarray, np.ndarray, int]] = (),
              noise_floor: float | None = None, n_fit: int = 0) -> ErrorModel:
    """The error model from the in-sample scatter and held-out (distance, residual, refit's
    training runs) records (laws/validation.py ``records``)."""
    if noise_floor is not None and space == "log":
        sigma_run = max(sigma_run, float(noise_floor))
    growth, n_heldout = None, 0
    if heldout:
        delta = np.concatenate([record[0] for record in heldout])
        resid = np.concatenate([record[1] for record in heldout])
        keep = np.isfinite(delta) & np.isfinite(resid)
        delta, resid = delta[keep], resid[keep]
        n_heldout = int(keep.sum())
        if n_heldout and np.any(delta > 0):
            excess = resid**2 - sigma_run**2
            growth = float(np.sqrt(max(np.sum(excess * delta**2) / np.sum(delta**4), 0.0)))
        elif n_heldout:
            # held-out rows inside the fitted range: their scatter raises sigma_run instead
            sigma_run = max(sigma_run, float(np.sqrt(np.mean(resid**2))))
            growth = 0.0
    return ErrorModel(space=space, sigma_run=sigma_run, growth=growth, ranges=ranges,
                      n_fit=n_fit, n_heldout=n_heldout, noise_floor=noise_floor,
                      method=METHOD if growth is not None else UNCALIBRATED)


def interval(model: ErrorModel, predicted: np.ndarray, distance_n: np.ndarray,
             level: float = DEFAULT_LEVEL, mean_interval: tuple[np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The normal model's (lower, upper) interval of each row at ``level``, given its distance:
    half-width z sigma(distance), z the normal quantile of the level."""
    check_level(level)
    half = float(norm.ppf(0.5 + level / 2)) * model.sigma(distance_n)
    return around(model.space, predicted, half, mean_interval)


def around(space: str, predicted: np.ndarray, half: np.ndarray,
           mean_interval: tuple[np.ndarray, np.ndarray] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """f^-1(f(predicted) -/+ half), each side at least as wide as the law's mean interval at the
    same level (a run's range never undercuts the mean's); NaN half-widths stay NaN."""
    centre = to_space(predicted, space)
    below = above = np.asarray(half, dtype=float)
    if mean_interval is not None:
        low_mean, high_mean = (to_space(a, space) for a in mean_interval)
        below = np.maximum(below, np.nan_to_num(centre - low_mean, nan=0.0))
        above = np.maximum(above, np.nan_to_num(high_mean - centre, nan=0.0))
    inverse = SPACES[space][1]
    return inverse(centre - below), inverse(centre + above)


def coverage(low: np.ndarray, high: np.ndarray, measured: np.ndarray) -> float:
    """Fraction of ``measured`` inside [low, high]; NaN where no interval was given."""
    measured = np.asarray(measured, dtype=float)
    if np.all(np.isnan(np.asarray(low, dtype=float))):
        return float("nan")
    return float(np.mean((low <= measured) & (measured <= high)))

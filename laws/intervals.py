"""Prediction intervals: where a new run will land, beside the interval of the law's mean.

Method ``extrapolation-calibrated``. A run's residual around the law, f(measured) - f(predicted) in
the law's ``space`` (SPACES: f = log for losses and throughputs, the identity for accuracies, and
-log(-log) for pass rates, whose relative error in -log pass@k is the one that stays level across
k and scales), is taken as normal with scale

    sigma(delta) = sqrt(sigma_run^2 + (growth * delta)^2),

where ``delta`` is the extrapolation distance of the row: summed over the law's inputs (N and D
for loss laws), how far it lies beyond the range the law was fitted on, in units of that range's
log width (0 inside).

* ``sigma_run``, the scatter of runs the law cannot explain, is the RMS of the in-sample residuals
  with the fitted coefficients' degrees of freedom taken out, or the measured seed-to-seed noise
  floor if that is larger;
* ``growth``, how fast the error grows with extrapolation, comes from the progressive held-out
  fits (fit on the scales up to k, predict every larger scale): the least-squares fit of
  r^2 - sigma_run^2 = growth^2 delta^2 over their residuals r (0 if they are no worse than in
  sample). Refits that their runs do not identify are left out.

The interval is f^-1(f(prediction) +- z sigma(delta)) (prediction * exp(+-z sigma(delta)) in log
space) with z the normal quantile of the level, and never narrower than the bootstrap interval of
the law's mean at the same level. Without progressive fits the growth is unknown: the mean's
interval is then added in quadrature, and the method's name says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from archscale.laws.bootstrap import check_level
from archscale.laws.levels import DEFAULT_LEVEL as DEFAULT_LEVEL  # its home: laws/levels.py

METHOD = "extrapolation-calibrated"
UNCALIBRATED = "run scatter + bootstrap of the mean (extrapolation error not calibrated: no " \
               "progressive held-out fits)"
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
    """Extra error per unit of extrapolation distance (``distance``: fitted-range widths);
    None when no held-out fit calibrated it."""
    ranges: dict[str, list[float]]
    """Fitted range [min, max] of each input the distance is measured on."""
    n_fit: int = 0
    """Runs the in-sample scatter comes from."""
    n_heldout: int = 0
    """Held-out residuals the growth comes from."""
    noise_floor: float | None = None
    """Seed-to-seed scatter given to the fit (relative), if any."""
    method: str = field(default=METHOD)
    """Name of the method (module docstring)."""

    def sigma(self, distance: np.ndarray) -> np.ndarray:
        growth = self.growth or 0.0
        return np.sqrt(self.sigma_run**2 + (growth * np.asarray(distance, dtype=float)) ** 2)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "space": self.space, "sigma_run": self.sigma_run,
                "growth": self.growth, "ranges": self.ranges, "n_fit": self.n_fit,
                "n_heldout": self.n_heldout, "noise_floor": self.noise_floor}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorModel:
        return cls(space=str(data["space"]), sigma_run=float(data["sigma_run"]),
                   growth=None if data.get("growth") is None else float(data["growth"]),
                   ranges={k: [float(a), float(b)] for k, (a, b) in data["ranges"].items()},
                   n_fit=int(data.get("n_fit", 0)), n_heldout=int(data.get("n_heldout", 0)),
                   noise_floor=data.get("noise_floor"), method=str(data.get("method", METHOD)))


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
    run's worth of rows, not one row: dof = rows (1 - n_coef / n_runs)."""
    resid = residuals(fitted, measured, space)
    resid = resid[np.isfinite(resid)]
    runs = len(resid) if n_runs is None else n_runs
    dof = max(len(resid) * (runs - n_coef) / runs, len(resid) / runs)
    return float(np.sqrt(np.sum(resid**2) / dof))


def calibrate(space: str, sigma_run: float, ranges: dict[str, list[float]],
              heldout: Sequence[tuple[np.ndarray, np.ndarray]] = (),
              noise_floor: float | None = None, n_fit: int = 0) -> ErrorModel:
    """The error model from the in-sample scatter and held-out (distance, residual) records."""
    if noise_floor is not None and space == "log":
        sigma_run = max(sigma_run, float(noise_floor))
    growth, n_heldout = None, 0
    if heldout:
        delta = np.concatenate([d for d, _ in heldout])
        resid = np.concatenate([r for _, r in heldout])
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
    """(lower, upper) prediction interval of each row at ``level``, given its distance."""
    check_level(level)
    z = float(norm.ppf(0.5 + level / 2))
    half = z * model.sigma(distance_n)
    centre = to_space(predicted, model.space)
    below = above = half
    if mean_interval is not None:
        low_mean, high_mean = (to_space(a, model.space) for a in mean_interval)
        mean_below, mean_above = (np.nan_to_num(m, nan=0.0)
                                  for m in (centre - low_mean, high_mean - centre))
        if model.growth is None:  # the mean's uncertainty is not in the calibration: add it
            below, above = np.sqrt(half**2 + mean_below**2), np.sqrt(half**2 + mean_above**2)
        else:  # it is (held-out refits carry it), but a run's range never undercuts the mean's
            below, above = np.maximum(half, mean_below), np.maximum(half, mean_above)
    inverse = SPACES[model.space][1]
    return inverse(centre - below), inverse(centre + above)


def coverage(low: np.ndarray, high: np.ndarray, measured: np.ndarray) -> float:
    measured = np.asarray(measured, dtype=float)
    return float(np.mean((low <= measured) & (measured <= high)))

"""Calibrated or silent: which calibration a law's prediction intervals rest on, and its widths.

A loss law's interval half-width at level p, for a row at extrapolation distance ``delta``
(laws/intervals.py) predicted by a fit whose in-sample scatter is ``s``, is

    h(s, delta) = max(k * q_p(s, delta), z_p * s),      z_p the normal quantile of the level,

* ``q_p``, the *public prior*: the p-quantile of |log error| given (s, delta), learned by linear
  quantile regression (scikit-learn ``QuantileRegressor``, ``PRIOR_FEATURES``) over the held-out
  runs of many fit-small/predict-large splits of the public sweeps shipped in laws/public/
  (laws/public_sweeps.py), each sweep weighted equally;
* ``k``, *split-conformal* on these runs: where the law's own progressive refits predicted at
  least ``min_scores(p)`` held-out runs over MIN_SCALES or more (refit, scale) pairs, k is the
  weighted conformal p-quantile (``conformal_factor``) of their scores |r| / q_p(s, delta), s the
  law's own scatter (a refit on a few small scales understates it), and the interval is
  "calibrated on these runs"; otherwise k = 1 and it is "calibrated on public sweeps". Each
  refit weighs in proportion to the runs it was fitted on, shared among the runs it predicted:
  the first refit, on two scales, predicts the most runs and extrapolates worst, yet it is the
  least like the full fit whose interval it calibrates. The refits extrapolate along the axis
  the law is held out by (laws/law.py: FLOPs for a compute split), so their scores measure the
  extrapolation asked about;
* ``z_p * s``, the floor: a new run lands no nearer the law than the runs it was fitted on, so
  no interval is narrower than their scatter's (the in-range interval), however well the
  refits extrapolated.

Chosen by measurement (notes/intervals.md, tests/bench/bench_calibration.py, leave-one-data-set-
out over the shipped sweeps): against the normal model of laws/intervals.py, own quantile
regression, distance-local conformal and scores scaled by each refit's scatter, this gave the
fewest held-out runs outside the 80-98% band; the floor, the refits' axis (notes/calib.md) and
the refit-size weights (notes/calib3.md: 15 of 23 splits within 1.5x the oracle width instead of
11, coverage unchanged in band) were added on the same benchmark.

Kinds without shipped public sweeps (throughput, accuracy, pass@k) keep the normal model of
laws/intervals.py calibrated on their own refits; without refits, the in-sample scatter alone
gives intervals inside the fitted range and none beyond it. A law with a problem in
``VOIDS_INTERVAL`` gives none either, whatever would calibrate it (``withheld_reason``). Where no
interval holds, ``interval`` returns NaN and ``ErrorModel.reason`` says why.

``leaving_out`` hides sweeps from the prior (the benchmark's leave-one-sweep-out protocol).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.stats import norm

from archscale.arch.errors import ArchscaleError
from archscale.laws import intervals
from archscale.laws.bootstrap import check_level
from archscale.laws.diagnostics import Problem
from archscale.laws.intervals import DEFAULT_LEVEL, ErrorModel
from archscale.laws.public_sweeps import load_records
from archscale.laws.table import as_table

PRIOR_FEATURES = ("scatter", "distance")
"""What the public prior's quantile is linear in (no intercept): run scatter and distance."""
PRIOR_METHOD = ("quantile regression of |log error| on run scatter and extrapolation distance "
                "over {n} public sweeps (scikit-learn QuantileRegressor)")
CONFORMAL_METHOD = "split-conformal on {n} held-out refit predictions of these runs, " \
                   "weighted by refit size, shaped by the public prior"
MIN_SCALES = 2
"""(refit, predicted scale) pairs the own-run scores must come from: one pair is one draw."""
MIN_PRIOR_SWEEPS = 2
"""Sweeps of a kind needed for a kind-specific prior; else every loss law's records pool."""
LOSS_LAWS = ("chinchilla", "conditional")
"""Kinds the shipped (loss) sweeps calibrate."""
IN_RANGE_METHOD = "in-sample scatter, inside the fitted range only"
PUBLIC = "public sweeps"
OWN = "these runs"
VOIDS_INTERVAL = ("collinear", "few_values", "flat_direction", "refits_failed")
"""Problem codes (laws/diagnostics.py) after which no prediction interval is given. Both
calibrations measure how an *identified* fit errs when it extrapolates (the public sweeps' fits,
these runs' strict refits), so neither speaks for a fit whose predictions beyond its runs the
runs do not determine:

* ``collinear``: N and D moved together, so the split between their terms, and every prediction
  off their line, is arbitrary (a Chinchilla law reduced to L(N) along the line has no such
  problem: it refuses rows off the line, laws/chinchilla.py);
* ``few_values``: a term's feature took too few values to fix its curve between and beyond them;
* ``flat_direction``: coefficients trade off without moving a fitted run, yet move predictions
  elsewhere (two sizes leave A, alpha and E one equation short);
* ``refits_failed``: most bootstrap refits failed, so the mean itself is not known.

Out (the fit is determined but suspect; the interval stands beside the problem, which the law
still carries and ``fit`` refuses without --allow-degenerate): ``exponent``, ``at_bound``,
``E_zero``, ``E_above_loss``, ``term_at_bound`` (a coefficient at a bound is still fixed by the
runs), ``not_converged`` (the point fit stopped short; the bootstrap and refits measure its error)
and ``wrong_sign`` (an accuracy law the runs fix, pointing the wrong way)."""

_EXCLUDED: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "excluded_sweeps", default=frozenset())


@contextmanager
def leaving_out(*sweeps: str) -> Iterator[None]:
    """Within the block, the public prior is learned without ``sweeps`` (leave-one-out)."""
    token = _EXCLUDED.set(_EXCLUDED.get() | frozenset(sweeps))
    try:
        yield
    finally:
        _EXCLUDED.reset(token)


def min_scores(level: float) -> int:
    """Fewest scores whose conformal ``level`` quantile is finite: n >= level / (1 - level)."""
    return math.ceil(level / (1 - level) - 1e-9)


@lru_cache(maxsize=64)
def _prior(kind: str, level: float, excluded: frozenset[str]) -> tuple[np.ndarray, int] | None:
    """Quantile-regression coefficients (PRIOR_FEATURES) and the sweeps they come from."""
    from sklearn.linear_model import QuantileRegressor

    records = load_records()
    records = records[~records["sweep"].isin(excluded) & records["law"].isin(LOSS_LAWS)]
    if kind not in LOSS_LAWS or records.empty:
        return None
    own_kind = records[records["law"] == kind]
    if own_kind["sweep"].nunique() >= MIN_PRIOR_SWEEPS:
        records = own_kind
    weights = 1.0 / records.groupby("sweep")["sweep"].transform("size").to_numpy(float)
    model = QuantileRegressor(quantile=level, alpha=0.0, fit_intercept=False, solver="highs")
    model.fit(records[list(PRIOR_FEATURES)].to_numpy(float), records["residual"].abs(),
              sample_weight=weights)
    return np.maximum(model.coef_, 0.0), int(records["sweep"].nunique())


def prior(kind: str, level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, int] | None:
    """(coefficients of PRIOR_FEATURES, sweeps used) of the public prior, or None if no
    shipped sweep calibrates ``kind``."""
    check_level(level)
    return _prior(kind, float(level), _EXCLUDED.get())


def _prior_quantile(coef: np.ndarray, scatter: np.ndarray, distance: np.ndarray) -> np.ndarray:
    return coef[0] * np.asarray(scatter, float) + coef[1] * np.asarray(distance, float)


def withheld_reason(problems: Sequence[Problem]) -> str | None:
    """One line saying which problem voids the law's prediction intervals and which runs would
    restore them (the problem's own advice); None if none does (``VOIDS_INTERVAL``)."""
    void = next((p for p in problems if p.code in VOIDS_INTERVAL), None)
    if void is None:
        return None
    return (f"the runs do not identify the law ({void.code}), and a calibration measures how an "
            f"identified fit errs: {void.message}")


def calibrate(kind: str, space: str, sigma_run: float, ranges: dict[str, list[float]],
              heldout: Sequence[tuple[np.ndarray, np.ndarray, int]] = (),
              noise_floor: float | None = None, n_fit: int = 0,
              withheld: str | None = None) -> ErrorModel:
    """The error model of a law: ``heldout`` holds (distance, residual, training runs) of these
    runs' refits, one triple per (refit, predicted scale); ``withheld`` says why no interval may be given
    whatever calibrates."""
    base = intervals.calibrate(space, sigma_run, ranges, heldout, noise_floor, n_fit)
    scores = _heldout_scores(heldout)
    scales = sum(1 for record in heldout if len(record[0]))
    common = {"law": kind, "heldout": scores, "n_heldout": len(scores)}
    if withheld is not None:
        return _model(base, **common, source=None, reason=withheld, method="none")
    public = prior(kind)
    if public is None:
        if base.growth is not None:
            return _model(base, **common, source=OWN, reason=None, method=base.method)
        # inside the fitted range the in-sample scatter calibrates; beyond it nothing does
        return _model(base, **common, source=OWN, method=IN_RANGE_METHOD, reason=(
            f"beyond the fitted range no held-out refits of these runs calibrate how its error "
            f"grows (fit runs at 3+ scales), and no public sweep of a {kind} law is shipped"))
    if len(scores) >= min_scores(DEFAULT_LEVEL) and scales >= MIN_SCALES:
        return _model(base, **common, source=OWN, reason=None,
                      method=CONFORMAL_METHOD.format(n=len(scores)))
    return _model(base, **common, source=PUBLIC, reason=None,
                  method=PRIOR_METHOD.format(n=public[1]))


def _heldout_scores(heldout: Sequence[tuple[np.ndarray, np.ndarray, int]]
                    ) -> tuple[tuple[float, float, float], ...]:
    return tuple((float(d), float(r), float(n_train)) for distance, residual, n_train in heldout
                 for d, r in zip(distance, residual, strict=True)
                 if np.isfinite(d) and np.isfinite(r))


def _model(base: ErrorModel, **fields: object) -> ErrorModel:
    return replace(base, **fields)


def half_width(model: ErrorModel, distance: np.ndarray, level: float = DEFAULT_LEVEL
               ) -> np.ndarray:
    """Half-width of the prediction interval of each row (units of ``model.space``); NaN where
    no calibration holds."""
    check_level(level)
    distance = np.asarray(distance, dtype=float)
    if model.source is None:
        return np.full(distance.shape, np.nan)
    public = prior(model.law, level) if model.law in LOSS_LAWS else None
    if public is None:  # the normal model calibrated on these runs (laws/intervals.py)
        half = float(norm.ppf(0.5 + level / 2)) * model.sigma(distance)
        return half if model.growth is not None else np.where(distance > 0, np.nan, half)
    coef = public[0]
    k = conformal_factor(model, coef, level) if model.source == OWN else 1.0
    # a new run lands no nearer the law than the runs it was fitted on: never narrower than
    # the in-range interval of their scatter (refits that extrapolate well do not shrink it)
    floor = float(norm.ppf(0.5 + level / 2)) * model.sigma_run
    return np.maximum(k * _prior_quantile(coef, np.full(distance.shape, model.sigma_run),
                                          distance), floor)


def conformal_factor(model: ErrorModel, coef: np.ndarray, level: float) -> float:
    """Weighted split-conformal ``level`` quantile of the scores |r| / q_p(s, delta) of the law's
    refits (Tibshirani et al. 2019, weights normalised to mean 1, the new run weighing 1): a refit
    fitted on n runs that predicted m of them gives each score weight n / m. With equal weights
    (law files holding no refit sizes) this is the rank ceil((n + 1) level) of n scores."""
    held = np.array(model.heldout, dtype=float)
    scores = np.abs(held[:, 1]) / np.maximum(_prior_quantile(coef, model.sigma_run, held[:, 0]),
                                             1e-12)
    weights = np.ones(len(held))
    if held.shape[1] > 2:  # nested progressive refits: each size names one refit
        _, refit, per_refit = np.unique(held[:, 2], return_inverse=True, return_counts=True)
        weights = held[:, 2] / per_refit[refit]
    order = np.argsort(scores, kind="stable")
    weights = weights[order] / weights.mean()
    cumulative = np.cumsum(weights) / (weights.sum() + 1.0)
    # past every score's weight the quantile is the largest score (min_scores keeps this rare)
    rank = min(int(np.searchsorted(cumulative, level - 1e-12)), len(scores) - 1)
    return float(scores[order][rank])


def interval(model: ErrorModel, predicted: np.ndarray, distance: np.ndarray,
             level: float = DEFAULT_LEVEL,
             mean_interval: tuple[np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) prediction interval of each row at ``level``: symmetric in the model's
    space, never narrower than the interval of the law's mean at the same level; NaN where no
    calibration holds."""
    half = half_width(model, distance, level)
    return intervals.around(model.space, predicted, half, mean_interval)


@dataclass(frozen=True)
class Spread:
    """A law's calibrated uncertainty at some rows, for designs that weigh it (issue 24)."""

    sd: np.ndarray
    """Predictive standard deviation per row, in ``space`` units (log: about a relative error):
    the 90% half-width over the normal quantile 1.645; NaN where no calibration holds."""
    space: str
    """Where the spread is measured (laws/intervals.py SPACES)."""
    source: str | None
    """``these runs`` or ``public sweeps``; None where nothing calibrates the law."""
    method: str
    """The calibration method's name."""
    reason: str | None
    """Why there is no spread (``source`` None)."""

    def half_width(self, level: float = DEFAULT_LEVEL) -> np.ndarray:
        """Half-width of the symmetric prediction interval at ``level`` (normal scaling)."""
        check_level(level)
        return self.sd * float(norm.ppf(0.5 + level / 2))


def predictive_spread(law: object, rows: pd.DataFrame | Mapping[str, object]) -> Spread:
    """The calibrated predictive spread of ``law`` (a laws.law.Law) at ``rows``."""

    model = getattr(law, "error_model", None)
    if model is None:
        raise ArchscaleError("this law has no prediction-interval calibration (fitted by an "
                             "older archscale): refit it with `archscale fit`")
    table = as_table(rows)
    half = half_width(model, intervals.distance(table, model.ranges), DEFAULT_LEVEL)
    return Spread(sd=half / float(norm.ppf(0.5 + DEFAULT_LEVEL / 2)), space=model.space,
                  source=model.source, method=model.method, reason=model.reason)

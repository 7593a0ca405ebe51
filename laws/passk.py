"""pass@k laws: the coverage curve of one run, and pass@k across scales as a law kind.

Per run, k samples per problem:

* ``power`` (Brown et al. 2024, arXiv:2407.21787): -log pass@k = a k^(-b), a line in
  log(-log pass@k) against log k, fitted by least squares on k = 1..K.
* ``beta`` (Schaeffer et al. 2025, arXiv:2502.17578): each problem's pass@1 p is drawn from
  Beta(alpha, beta), fitted by maximum likelihood to every problem's c of n passing samples
  (beta-binomial). Then pass@k = 1 - B(alpha, beta + k) / B(alpha, beta) for every k, and at
  large k -log pass@k ~ Gamma(alpha + beta) / Gamma(beta) k^(-alpha): the power law's exponent
  is the left tail's alpha, which the hard problems' few passing samples already pin down, so
  the curve is forecast from fewer samples than a power fit needs.

Across scales (kind ``passk``, arXiv:2509.24012), with y = -log pass@k:

    compute: y = [E0(k)] + C0(k) (C / C_ref)^(-alpha(k))
    nd:      y = [E0(k)] + N0(k) (N / N_ref)^(-beta(k)) + D0(k) (D / D_ref)^(-gamma(k))
    loss:    y = [E0(k)] + L0(k) (L / L_ref)^(+kappa(k))

C is the run's training FLOPs (``flops``), N non-embedding parameters, D tokens, L the run's
validation loss (the paper's third law reads the likelihood of gold solutions instead; the loss
on held-out text of the task's kind plays that part here, and a loss law supplies it for shapes
not trained). The references are the geometric means of the fitted runs (they set the units of
the coefficients only). The paper fits each k separately; here each coefficient is a line in
ln k (ln C0(k) = lnC0 + lnC0_k ln k, alpha(k) = alpha + alpha_k ln k, ...), two numbers that let
the law predict between and beyond the measured k, with prediction intervals that widen beyond
them (``k`` is an axis). The irreducible E0(k) (``floor: true``) is off by default: on runs far
from saturating pass@k, as small models are, the checks find it unidentified (a flat direction),
and it vanishes with k anyway. The architecture terms a conditional law declares (laws/forms.py)
multiply y: prod (1 + sum c phi(x)).

The fit minimizes the squared relative errors of y, ln(y_fitted / y_measured), and prediction
intervals are calibrated on them (space ``neglog``, laws/intervals.py). On the runs below the
error of log pass@k grows 3x from the well-trained runs to the short small ones and 1.6x from
k = 32 to k = 1, while the relative error of y stays within 0.05-0.09 across scales and k: one
scatter fits every row only there. A table row is one (run, k); the rows of a run share its
errors, so the bootstrap draws whole runs and a coefficient costs a run's rows of the scatter's
degrees of freedom (``run_labels``).

Measured on 20 runs of 3k to 21k parameters (two token budgets, two MLP ratios, 256 problems x 32
samples of ``verse-word-rest``), fitted on the four smaller scales, predicting the largest at
k = 1..32 from each run's measured loss: the loss form misses by 8.5% on average (21% at k = 1,
6% at k = 8, 11% at k = 32) and its 90% intervals cover 81% of the 128 (run, k) rows; pooled over
the three fit-small / predict-large splits 87% of 768. nd misses by 12% and fails its exponent
check (the shapes of one size differ in pass@k by up to 6x at equal N and D; their loss tells
them apart, N and D cannot), compute by 21%.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize
from scipy.special import betaln

from archscale.arch.errors import ArchscaleError
from archscale.laws import diagnostics
from archscale.laws.bootstrap import percentile_interval, refit_each, resample_counts
from archscale.laws.diagnostics import PLAUSIBLE_EXPONENT, Problem
from archscale.laws.forms import Term, parse_terms
from archscale.laws.kind import Estimate, LawKind
from archscale.laws.table import positive_values

if TYPE_CHECKING:
    from archscale.laws.law import Law

TARGET = "pass_at_k"
COVARIATES = {"compute": ("flops",), "nd": ("N", "D"), "loss": ("loss",)}
"""The inputs of each form; each has a power-law term."""
EXPONENTS = {"flops": "alpha", "N": "beta", "D": "gamma", "loss": "kappa"}
SCALES = {"flops": "lnC0", "N": "lnN0", "D": "lnD0", "loss": "lnL0"}
RISING = ("loss",)
"""Inputs that raise -log pass@k as they grow: their term is (x / ref)^(+exponent)."""


# ---- one run's coverage curve ----------------------------------------------------------------
@dataclass(frozen=True)
class Coverage:
    """A fitted coverage curve pass@k of one run."""

    form: str
    """``power`` (Brown et al.) or ``beta`` (Schaeffer et al.)."""
    coef: dict[str, float]
    """power: a, b; beta: alpha, beta."""
    samples: np.ndarray
    """Bootstrap refits over problems (S x 2; beta only, else empty)."""

    @property
    def exponent(self) -> float:
        """The exponent of -log pass@k in k at large k: b, or the Beta's alpha."""
        return self.coef["b"] if self.form == "power" else self.coef["alpha"]

    def pass_at_k(self, k: np.ndarray, coef: np.ndarray | None = None) -> np.ndarray:
        """pass@k at every k (of the point fit, or of coefficient rows S x 2: S x len(k))."""
        k = np.asarray(k, dtype=float)
        rows = np.atleast_2d(list(self.coef.values()) if coef is None else coef)
        first, second = rows[:, :1], rows[:, 1:]
        if self.form == "power":
            out = np.exp(-first * k ** -second)
        else:
            out = -np.expm1(betaln(first, second + k) - betaln(first, second))
        return out[0] if coef is None else out

    def interval(self, k: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of pass@k over the refits (problems resampled)."""
        if not len(self.samples):
            raise ArchscaleError(f"this {self.form} coverage fit has no bootstrap refits")
        return percentile_interval(self.pass_at_k(k, self.samples), level)


def fit_power(k: np.ndarray, pass_k: np.ndarray) -> Coverage:
    """Brown et al.'s -log pass@k = a k^(-b) through measured pass@k (k with 0 < pass < 1)."""
    k, pass_k = np.asarray(k, dtype=float), np.asarray(pass_k, dtype=float)
    keep = (pass_k > 0) & (pass_k < 1)
    if np.unique(k[keep]).size < 2:
        raise ArchscaleError("the power coverage law needs pass@k strictly between 0 and 1 at 2+ "
                             "values of k")
    slope, intercept = np.polyfit(np.log(k[keep]), np.log(-np.log(pass_k[keep])), 1)
    return Coverage("power", {"a": float(np.exp(intercept)), "b": float(-slope)}, np.empty((0, 2)))


def _beta_binomial_fit(correct: np.ndarray, n: int, weights: np.ndarray) -> np.ndarray:
    """(alpha, beta) maximizing the weighted beta-binomial likelihood of ``correct`` of ``n``."""
    def negative_log_likelihood(theta: np.ndarray) -> float:
        a, b = np.exp(theta)
        return -float(np.sum(weights * (betaln(correct + a, n - correct + b) - betaln(a, b))))

    mean = np.clip(np.average(correct / n, weights=weights), 1e-3, 1 - 1e-3)
    result = minimize(negative_log_likelihood, np.log([mean, 1 - mean]), method="L-BFGS-B",
                      bounds=[(-9.0, 9.0)] * 2)
    return np.exp(result.x)


def fit_beta(correct: np.ndarray, n: int, n_boot: int = 0, seed: int = 0) -> Coverage:
    """Schaeffer et al.'s Beta distribution of per-problem pass@1 from each problem's ``correct``
    of ``n`` samples; ``n_boot`` refits over resampled problems give intervals."""
    correct = np.asarray(correct, dtype=float)
    if correct.size < 2 or n < 1 or np.any((correct < 0) | (correct > n)):
        raise ArchscaleError("the beta coverage law needs 2+ problems, each with 0..n passing of "
                             "n >= 1 samples")
    if not correct.any():
        raise ArchscaleError("no problem was ever solved: pass@1 is below what n samples resolve "
                             "and the beta coverage law has nothing to fit")
    point = _beta_binomial_fit(correct, n, np.ones_like(correct))
    counts = resample_counts(len(correct), n_boot, seed)
    samples = np.array([_beta_binomial_fit(correct, n, c.astype(float)) for c in counts])
    return Coverage("beta", {"alpha": float(point[0]), "beta": float(point[1])},
                    samples.reshape(-1, 2))


# ---- the law across scales -------------------------------------------------------------------
def configure(options: dict[str, Any]) -> dict[str, Any]:
    covariate = options.get("covariate") or "nd"
    if covariate not in COVARIATES:
        raise ArchscaleError(f"passk covariate {covariate!r}: choose one of {sorted(COVARIATES)}")
    terms = options.get("terms")
    config: dict[str, Any] = {"covariate": covariate, "terms": [] if not terms else
                              [t.to_dict() for t in parse_terms(terms)],
                              "floor": options.get("floor") in (True, "true", "yes")}
    if options.get("ref"):
        config["ref"] = {k: float(v) for k, v in options["ref"].items()}
    return config


def coef_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    names = ["lnE0", "lnE0_k"] if config["floor"] else []
    for column in COVARIATES[config["covariate"]]:
        names += [SCALES[column], f"{SCALES[column]}_k", EXPONENTS[column],
                  f"{EXPONENTS[column]}_k"]
    for term in config["terms"]:
        names += Term(**term).coef_names
    return tuple(names)


def _inputs(config: Mapping[str, Any], table: pd.DataFrame, what: str) -> dict[str, Any]:
    columns = [*COVARIATES[config["covariate"]], "k"]
    values = positive_values(table, columns, what)
    terms = [Term(**t) for t in config["terms"]]
    features = positive_values(table, [t.feature for t in terms], what)
    return {"ln_k": np.log(values["k"]), "design": [t.basis(features[t.feature]) for t in terms],
            "ln_x": {c: np.log(values[c] / config["ref"][c]) * (-1 if c in RISING else 1)
                     for c in COVARIATES[config["covariate"]]}}


def _neg_log_pass(config: Mapping[str, Any], coef_SxP: np.ndarray,
                  inputs: Mapping[str, Any]) -> np.ndarray:
    """y = -log pass@k for every coefficient row and table row (S x n)."""
    coef_SxP = np.atleast_2d(coef_SxP)
    ln_k = inputs["ln_k"][None, :]
    with np.errstate(over="ignore"):
        at = 2 if config["floor"] else 0
        y = np.exp(coef_SxP[:, :1] + coef_SxP[:, 1:2] * ln_k) if at else np.zeros_like(ln_k)
        for column in COVARIATES[config["covariate"]]:
            scale, scale_k, exponent, exponent_k = (coef_SxP[:, at + i, None] for i in range(4))
            y = y + np.exp(scale + scale_k * ln_k
                           - (exponent + exponent_k * ln_k) * inputs["ln_x"][column][None, :])
            at += 4
    for basis_NxK in inputs["design"]:
        width = basis_NxK.shape[1]
        y = y * (1.0 + coef_SxP[:, at:at + width] @ basis_NxK.T)
        at += width
    return y


def predict(config: dict[str, Any], coef_SxP: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    return np.exp(-_neg_log_pass(config, coef_SxP, _inputs(config, table, "the passk law")))


def _residuals(config: Mapping[str, Any], coef: np.ndarray, inputs: Mapping[str, Any],
               ln_y: np.ndarray) -> np.ndarray:
    """ln(predicted / measured -log pass@k): the relative error of y, level across k and scales
    where the error of log pass@k is not (it grows with y), and the space the prediction
    intervals are calibrated in (``neglog``, laws/intervals.py)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(_neg_log_pass(config, coef, inputs)[0], 1e-300)) - ln_y


def _least_squares(config: Mapping[str, Any], inputs: Mapping[str, Any], ln_y: np.ndarray,
                   weights: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, bool]:
    """Levenberg-Marquardt from ``start``; the coefficients and whether it converged."""
    sqrt_w = np.sqrt(weights)
    with np.errstate(over="ignore", invalid="ignore"):
        result = least_squares(lambda theta: _residuals(config, theta, inputs, ln_y) * sqrt_w,
                               start, method="lm", x_scale="jac")
    return result.x, bool(result.success) and bool(np.all(np.isfinite(result.x)))


def _starts(config: Mapping[str, Any], ln_y: np.ndarray) -> list[np.ndarray]:
    """A few starts: the floor E0 at 10% or 60% of the smallest y, each power term at the
    median y, exponents 0.1, 0.4 or 1 (flat in k), terms flat."""
    y = np.exp(ln_y)
    n_covariates = len(COVARIATES[config["covariate"]])
    n_floor = 2 if config["floor"] else 0
    n_terms = len(coef_names(config)) - n_floor - 4 * n_covariates
    spread = np.log(max(float(np.median(y)), 1e-6) / n_covariates)
    floors = [[np.log(f * max(float(y.min()), 1e-6)), -0.5] for f in (0.1, 0.6)]
    return [np.array([*floor[:n_floor], *[spread, -0.3, exponent, 0.0] * n_covariates,
                      *[0.0] * n_terms])
            for floor in floors[:1 + bool(n_floor)] for exponent in (0.1, 0.4, 1.0)]


def _data(config: Mapping[str, Any], table: pd.DataFrame) -> tuple[dict[str, Any], np.ndarray]:
    """The law's inputs and ln y = ln(-log pass@k) of every row."""
    measured = positive_values(table, [TARGET], "the passk law")[TARGET]
    if np.any(measured > 1):
        raise ArchscaleError(f"the passk law: {TARGET} holds values above 1: give pass rates "
                             "as fractions")
    if np.any(measured == 1):
        raise ArchscaleError(f"the passk law: {int(np.sum(measured == 1))} row(s) have "
                             f"{TARGET} = 1 (every problem solved), which says nothing about how "
                             "fast it nears 1: leave those rows out, or use more problems")
    return _inputs(config, table, "the passk law"), np.log(-np.log(measured))


def fit(table: pd.DataFrame, config: dict[str, Any]) -> Estimate:
    config = dict(config)
    if "ref" not in config:  # units of the coefficients: the fitted runs' geometric means
        scales = positive_values(table, list(COVARIATES[config["covariate"]]), "the passk law")
        config["ref"] = {c: float(np.exp(np.mean(np.log(v)))) for c, v in scales.items()}
    inputs, ln_y = _data(config, table)
    weights = np.ones(len(ln_y))
    fits = [_least_squares(config, inputs, ln_y, weights, s) for s in _starts(config, ln_y)]
    cost = [np.sum(_residuals(config, c, inputs, ln_y) ** 2) if ok else np.inf for c, ok in fits]
    best = int(np.argmin(cost))
    return Estimate(coef=fits[best][0], names=coef_names(config), converged=fits[best][1],
                    config=config, notes=(f"best of {len(fits)} starts",))


def bootstrap(table: pd.DataFrame, config: dict[str, Any], estimate: Estimate,
              counts_SxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inputs, ln_y = _data(config, table)
    return refit_each(counts_SxN,
                      lambda w: _least_squares(config, inputs, ln_y, w, estimate.coef))


def _exponents(config: Mapping[str, Any], coef: Mapping[str, float],
               k: np.ndarray) -> dict[str, np.ndarray]:
    return {name: coef[name] + coef[f"{name}_k"] * np.log(np.asarray(k, dtype=float))
            for name in (EXPONENTS[c] for c in COVARIATES[config["covariate"]])}


def exponents_at(law: Law, k: np.ndarray) -> dict[str, np.ndarray]:
    """Each power term's exponent at every k: alpha(k) = alpha + alpha_k ln k, ..."""
    return _exponents(law.config, law.coefficients, k)


def problems(config: dict[str, Any], coef: dict[str, float], table: pd.DataFrame) -> list[Problem]:
    """What the general checks of laws/law.py do not know about this form: 3+ values of k (a
    line in ln k per coefficient), N and D apart (nd), the declared terms' values, and the
    scaling exponents inside the plausible range over the fitted k."""
    found = []
    ks = np.unique(table["k"].to_numpy(dtype=float))  # the fit refused a table without k
    if ks.size < 3:
        found.append(Problem("few_values", (
            f"the runs hold pass@k at {ks.size} value(s) of k: every coefficient is a line in "
            "ln k, so give pass@k at 3+ values of k (e.g. k = 1..32)")))
    if config["covariate"] == "nd":
        collinear = diagnostics.collinear_problem(table, "passk")
        found += [] if collinear is None else [collinear]
    found += diagnostics.term_problems(table, config["terms"])
    low, high = PLAUSIBLE_EXPONENT
    for name, values in _exponents(config, coef, ks[[0, -1]]).items():
        if name == EXPONENTS["loss"] or np.all((low <= values) & (values <= high)):
            continue  # pass@k is exponential in the loss: its power has no scaling-law range
        found.append(Problem("exponent", (
            f"exponent {name}(k) runs {values[0]:.3g} to {values[-1]:.3g} over the fitted k, "
            f"outside the plausible {low}-{high}: the terms traded against each other; add runs "
            "that spread the scales further")))
    return found


def run_labels(config: Mapping[str, Any], table: pd.DataFrame) -> np.ndarray:
    """One label per run: the rows of a run are those with the same inputs (all but k)."""
    inputs = [*COVARIATES[config["covariate"]], *(t["feature"] for t in config["terms"])]
    return table.groupby(inputs, dropna=False, sort=False).ngroup().to_numpy()


KIND = LawKind(name="passk", configure=configure, target=lambda config: TARGET,
               n_params=lambda config: len(coef_names(config)), min_scales=2, fit=fit,
               bootstrap=bootstrap, predict=predict, axes=("N", "D", "k"), space="neglog",
               problems=problems, runs=run_labels, default_n_boot=100,
               needs=lambda config: (("loss", "k") if config["covariate"] == "loss"
                                     else ("shape", "tokens", "k")),
               options=("covariate", "terms", "floor", "ref"))

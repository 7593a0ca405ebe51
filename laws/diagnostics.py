"""Fits that refuse to lie: designs that cannot identify a law, and fits that came out degenerate.

Each check returns ``Problem``s: one line saying what is wrong and what data would fix it. A law
with any problem is not *identified*; ``archscale fit`` and ``demo`` refuse it unless told
``--allow-degenerate``. Checks before the fit (``design_problems``) look at the table alone;
checks after it (``fit_problems``) at the coefficients, the curvature of the predictions around
them and the bootstrap refits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from archscale.laws.forms import FORMS
from archscale.laws.table import scale_labels

PLAUSIBLE_EXPONENT = (0.02, 2.0)
"""Scaling exponents outside this range are not believed: published fits lie well inside it
(Kaplan et al. 0.076 / 0.095, Hoffmann et al. 0.34 / 0.28, Besiroglu et al. 0.35 / 0.37), and the
Hoffmann / Epoch start grid stops at 2."""
COLLINEAR_R2 = 0.99
"""log D explained this well by log N (R^2) leaves the N and D terms indistinguishable; so does
one token count per model size, whatever the R^2."""
VANISHED_TERM = 1e-4
"""A power-law term below this fraction of the lowest loss on every run has vanished."""
FLAT_DIRECTION = 1e-6
"""A coefficient direction whose unit step moves log predictions by less than this (RMS over the
runs) is not identified by the data."""
MAX_FAILED_REFITS = 0.2
"""More than this fraction of bootstrap refits failing means the fit sits on a ridge (the README's
rule: the failed ones never enter an interval, so up to this fraction the intervals still rest on
four resamples in five)."""
LOG_SCALED = ("A", "B", "E", "scale")
"""Positive scale coefficients, perturbed in log space (a unit step is an e-fold)."""


@dataclass(frozen=True)
class Problem:
    """Why a law is not identified, and what would fix it."""

    code: str
    """Short machine-readable name (collinear, few_values, exponent, E_zero, ...)."""
    message: str
    """One line for the user: what is wrong and which data would fix it."""

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def collinear_nd(table: pd.DataFrame) -> tuple[float, float] | None:
    """(intercept, slope) of log D on log N when they are collinear, else None."""
    if not {"N", "D"} <= set(table.columns) or len(table) < 2:
        return None
    log_n = np.log(table["N"].to_numpy(dtype=float))
    log_d = np.log(table["D"].to_numpy(dtype=float))
    if np.ptp(log_d) < 1e-9:  # one token count: D says nothing, but N alone may still vary
        return (float(log_d[0]), 0.0) if np.ptp(log_n) > 0 else None
    if np.ptp(log_n) < 1e-9:
        return None
    slope, intercept = np.polyfit(log_n, log_d, 1)
    resid = log_d - (intercept + slope * log_n)
    r2 = 1 - float(np.sum(resid**2)) / float(np.sum((log_d - log_d.mean()) ** 2))
    # sizes by clusters of N, not a ``scale`` column (that may name compute budgets)
    sizes = scale_labels(table[["N"]])
    one_budget_per_size = (pd.Series(np.round(log_d, 6)).groupby(sizes).nunique() == 1).all()
    if r2 >= COLLINEAR_R2 or one_budget_per_size:
        return float(intercept), float(slope)
    return None


def ratio_text(line: tuple[float, float]) -> str:
    intercept, slope = line
    if slope == 0:
        return f"D = {np.exp(intercept):.3g}"
    if abs(slope - 1) < 0.02:
        return f"D = {np.exp(intercept):.3g} N"
    return f"D = {np.exp(intercept):.3g} N^{slope:.3g}"


def collinear_problem(table: pd.DataFrame, law: str) -> Problem | None:
    line = collinear_nd(table)
    if line is None:
        return None
    return Problem("collinear", (
        f"N and D are collinear (every run lies near {ratio_text(line)}): the {law} law's N "
        "and D terms "
        "cannot be identified apart. Add runs at a second tokens-per-parameter ratio (e.g. 4x "
        "the tokens at two or more sizes) or an isoFLOP design"))


def term_problems(table: pd.DataFrame, terms: Sequence[dict[str, str]]) -> list[Problem]:
    """A U-shaped term needs 3+ distinct values of its feature, a monotone one 2+."""
    problems = []
    for term in terms:
        feature, form = term["feature"], term["form"]
        if feature not in table.columns:
            continue  # the fit names the missing column
        distinct = int(np.unique(np.round(table[feature].to_numpy(dtype=float), 6)).size)
        needed = len(FORMS[form].basis) + 1
        if distinct < needed:
            problems.append(Problem("few_values", (
                f"term {feature}:{form} has {len(FORMS[form].basis)} coefficient(s) but the runs "
                f"take only {distinct} distinct value(s) of {feature}: add runs at "
                f"{needed - distinct} more value(s) of {feature}, or declare a simpler form "
                f"({'log' if needed > 2 else 'drop the term'})")))
    return problems


def exponent_problems(coef: dict[str, float]) -> list[Problem]:
    lo, hi = PLAUSIBLE_EXPONENT
    return [Problem("exponent", (
        f"exponent {name} = {coef[name]:.4g} lies outside the plausible {lo}-{hi}: the fit "
        "traded one term against another; add runs that spread N and D further apart"))
        for name in ("alpha", "beta") if name in coef and not lo <= coef[name] <= hi]


def irreducible_problems(coef: dict[str, float], loss: np.ndarray) -> list[Problem]:
    if "E" not in coef:
        return []
    lowest = float(np.min(loss))
    if coef["E"] <= 1e-3 * lowest:
        return [Problem("E_zero", (
            f"E = {coef['E']:.3g} is at zero: the data do not reach the regime where loss "
            "flattens; train some runs longer (more tokens per parameter) or at larger sizes"))]
    if coef["E"] >= lowest:
        return [Problem("E_above_loss", (
            f"E = {coef['E']:.4g} is above the lowest measured loss {lowest:.4g}: the law "
            "cannot be right there; check for diverged runs or add larger runs"))]
    return []


def vanished_problems(coef: dict[str, float], n_params: np.ndarray, tokens: np.ndarray,
                      loss: np.ndarray) -> list[Problem]:
    """A power-law term that contributes nothing on any run sits at its bound of zero."""
    problems = []
    floor = VANISHED_TERM * float(np.min(loss))
    for scale, exponent, x, what in (("A", "alpha", n_params, "N"), ("B", "beta", tokens, "D")):
        if scale not in coef or exponent not in coef:
            continue
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            term = coef[scale] * np.power(x, -coef[exponent])
        if not np.all(term < floor):
            continue
        problems.append(Problem("term_at_bound", (
            f"the {what} term vanished ({scale} = {coef[scale]:.3g}, {exponent} = "
            f"{coef[exponent]:.3g}: below {VANISHED_TERM:g} of the loss on every run), so the "
            f"fit says loss does not depend on {what}; add runs that vary {what} at fixed "
            f"{'D' if what == 'N' else 'N'}")))
    return problems


def flat_directions(predict: Callable[[np.ndarray], np.ndarray], coef: np.ndarray,
                    names: Sequence[str], scales: Sequence[str] = LOG_SCALED) -> list[Problem]:
    """Directions in coefficient space (the ``scales`` coefficients in log) along which the
    predictions on the fitted runs do not move: the coefficients with weight on them are not
    identified. A scale at zero, exactly or so near that its e-fold moves no prediction, is left
    out: it sits at its bound (E_zero, term_at_bound report it), and the runs still fix it in
    linear terms, so it leaves no prediction undetermined (laws/calibration.py VOIDS_INTERVAL)."""
    coef = np.asarray(coef, dtype=float)
    log_scaled = np.array([n in scales and c > 0 for n, c in zip(names, coef, strict=True)])
    free = np.isfinite(coef) & ((coef != 0) | ~np.isin(list(names), list(scales)))
    if not free.any():
        return []
    theta = np.where(log_scaled, np.log(np.where(log_scaled, coef, 1.0)), coef)

    def log_prediction(t: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):  # a degenerate fit's steps overflow: NaN, caught below
            values = np.where(log_scaled, np.exp(t), t)
            return np.log(np.abs(predict(values)))

    base = log_prediction(theta)
    if not np.all(np.isfinite(base)):
        return []
    columns = []
    for i in np.flatnonzero(free):
        step = 1e-4 * max(1.0, abs(theta[i]))
        up, down = theta.copy(), theta.copy()
        up[i] += step
        down[i] -= step
        columns.append((log_prediction(up) - log_prediction(down)) / (2 * step))
    jac = np.column_stack(columns) / np.sqrt(len(base))
    if not np.all(np.isfinite(jac)):
        return []
    at_zero = log_scaled[free] & (np.linalg.norm(jac, axis=0) < FLAT_DIRECTION)
    free[np.flatnonzero(free)[at_zero]] = False
    jac = jac[:, ~at_zero]
    if not free.any():
        return []
    _, singular, vt = np.linalg.svd(jac, full_matrices=False)
    free_names = [n for n, f in zip(names, free, strict=True) if f]
    problems = []
    for value, direction in zip(singular, vt, strict=True):
        if value >= FLAT_DIRECTION:
            continue
        weights = np.abs(direction)
        involved = [free_names[j] for j in np.argsort(-weights) if weights[j] > 0.2]
        problems.append(Problem("flat_direction", (
            f"moving {', '.join(involved)} together changes the predictions on these runs by "
            f"{value:.1e} per unit step: the data do not identify them; add runs where their "
            "terms differ (other sizes, token counts or shapes)")))
    return problems


def loss_problems(coef: dict[str, float], table: pd.DataFrame, product_form: bool = False
                  ) -> list[Problem]:
    """Checks of a loss law in N and D: plausible exponents, an irreducible loss between zero and
    the lowest loss, no vanished term. In a product form E scales with the shape factor, so only
    E -> 0 is telling there."""
    loss = table["loss"].to_numpy(dtype=float)
    return [*exponent_problems(coef),
            *(p for p in irreducible_problems(coef, loss) if not product_form or p.code == "E_zero"),
            *vanished_problems(coef, table["N"].to_numpy(dtype=float),
                               table["D"].to_numpy(dtype=float), loss)]


def refit_problems(converged_fraction: float | None, n_boot: int) -> list[Problem]:
    if converged_fraction is None or n_boot == 0:
        return []
    failed = 1 - converged_fraction
    if failed <= MAX_FAILED_REFITS:
        return []
    return [Problem("refits_failed", (
        f"{failed:.0%} of {n_boot} bootstrap refits did not converge (they are left out of every "
        "interval): the fit sits on a ridge that a few runs more or less moves; add runs that "
        "spread the inputs"))]


def problems_to_dicts(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in problems]

"""What the design engine needs from a law, and the adapter that gives it for archscale's laws.

The engine (decide/design.py) asks a law four things: fit a table of finished runs (warm-started
from the previous fit, so a replay of hundreds of picks stays fast), predict rows for any
coefficient rows, the sensitivity of those predictions to the coefficients (the linearisation
behind V-optimal design), and the calibrated interval where a new run will land. ``DesignLaw``
is that protocol; ``KindLaw`` implements it for every law kind that ``archscale.laws.fit_law``
fits, including user-declared forms, so the engine never special-cases a form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError
from archscale.laws import diagnostics
from archscale.laws.diagnostics import Problem
from archscale.laws.intervals import DEFAULT_LEVEL
from archscale.laws.kind import LawKind
from archscale.laws.law import Law, fit_law
from archscale.laws.registry import get_kind

REFIT_GROWTH = 1.5
"""A warm refit is replaced by a full multi-start fit once the runs have grown by this factor
since the last full fit: warm starts are fast, but only a full fit re-checks identification (a
refusal stands until then) and can leave a local optimum."""
FD_STEP = 1e-5
"""Relative step of the central differences behind ``sensitivity`` and warm refits."""
MAX_LM_STEPS = 30
"""Levenberg-Marquardt iterations of a warm refit (it starts next to the optimum)."""


@dataclass(frozen=True)
class Fitted:
    """A law fitted to the finished runs, as the engine reads it."""

    coef: np.ndarray
    """Coefficients (P)."""
    sigma: float
    """Scatter of runs around the law in its residual space (the laws' calibrated sigma_run)."""
    problems: tuple[Problem, ...]
    """Why the runs do not identify the law (empty: identified)."""
    n_runs: int
    """Runs the last full (multi-start, checked) fit saw."""
    law: Any = field(default=None, repr=False)
    """The laws package's own fitted object, for predictions and intervals."""

    @property
    def identified(self) -> bool:
        return not self.problems


class DesignLaw(Protocol):
    """A law form, as the design engine uses it."""

    name: str
    """What the law is called in reports."""
    target: str
    """The column it predicts."""
    space: str
    """Where its residuals live: ``log`` (relative) or ``absolute``."""
    n_coef: int
    """Fitted coefficients (sizes the seed design)."""

    def fit(self, table: pd.DataFrame, warm: Fitted | None = None) -> Fitted:
        """Fit ``table``; ``warm`` is the previous fit, a start that a cheap refit may use."""
        ...

    def refit(self, fitted: Fitted, table: pd.DataFrame, weights_SxN: np.ndarray) -> np.ndarray:
        """Coefficients (S x P) of refits of ``table`` under each row of run weights (a
        bootstrap resample's counts), started from ``fitted``; NaN rows where a refit failed."""
        ...

    def predict(self, fitted: Fitted, coef_SxP: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
        """Predictions of every coefficient row for every row (S x n)."""
        ...

    def interval(self, fitted: Fitted, rows: pd.DataFrame,
                 level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Where a new run at each row lands with probability ``level`` (calibrated)."""
        ...


def to_space(values: np.ndarray, space: str) -> np.ndarray:
    """Predictions in the law's residual space (log for relative errors)."""
    if space == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(values)
    return values


def sensitivity(law: DesignLaw, fitted: Fitted, rows: pd.DataFrame) -> np.ndarray:
    """d f(prediction) / d log|coef| at the fit, for every row (n x P): the linearisation V-optimal
    design works on, by central differences (one vectorized prediction of 2P coefficient rows).
    Steps are relative, so a coefficient of 1e4 and an exponent of 0.3 are perturbed alike."""
    coef = np.asarray(fitted.coef, dtype=float)
    scale = np.maximum(np.abs(coef), 1e-8)
    steps = FD_STEP * scale
    eye = np.eye(len(coef))
    rows_2P = np.vstack([coef + eye * steps, coef - eye * steps])
    with np.errstate(all="ignore"):  # a step off the law's domain: no sensitivity there
        values = to_space(law.predict(fitted, rows_2P, rows), law.space)
        up, down = values[: len(coef)], values[len(coef):]
        jac = ((up - down) / (2 * steps[:, None])).T * scale[None, :]
    return np.where(np.isfinite(jac), jac, 0.0)


@dataclass(frozen=True)
class KindLaw:
    """A law kind of ``archscale.laws`` (built in or user-declared) behind ``DesignLaw``.

    A full fit is ``fit_law`` without bootstrap: the kind's own multi-start fit, its
    identification checks and its calibrated run scatter. A warm refit polishes the previous
    coefficients by least squares in the law's residual space (seconds saved per pick); every
    REFIT_GROWTH-fold growth of the runs the full fit runs again.
    """

    kind: str
    """The --law name."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The declared form (terms, target, ...), as ``fit_law`` takes it."""

    law_kind: LawKind = field(init=False, repr=False)
    """The kind ``kind`` names (an unknown name fails here, with the list of kinds)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "law_kind", get_kind(self.kind))

    @property
    def name(self) -> str:
        return self.kind

    @property
    def _config(self) -> dict[str, Any]:
        return self.law_kind.configure(dict(self.options))

    @property
    def target(self) -> str:
        return self.law_kind.target(self._config)

    @property
    def space(self) -> str:
        return "log" if self.law_kind.space == "log" else "absolute"

    @property
    def n_coef(self) -> int:
        return self.law_kind.n_params(self._config)

    def fit(self, table: pd.DataFrame, warm: Fitted | None = None) -> Fitted:
        if warm is None or len(table) >= REFIT_GROWTH * warm.n_runs:
            return self._full_fit(table)
        coef = self.refit(warm, table, np.ones((1, len(table))))[0]
        if not np.all(np.isfinite(coef)):
            return self._full_fit(table)
        residuals = self._residuals(warm, table, coef[None, :])[0]
        sigma = float(np.sqrt(np.sum(residuals**2) / max(len(table) - len(coef), 1)))
        law: Law = warm.law
        return replace(warm, coef=coef, sigma=sigma,
                       law=replace(law, coef=coef, coef_samples=np.empty((0, len(coef)))))

    def _full_fit(self, table: pd.DataFrame) -> Fitted:
        law = fit_law(self.law_kind, table, self.options, n_boot=0, progressive=False,
                      report_heldout=False)
        if not math.isfinite(law.error_model.sigma_run):  # no finite prediction at its runs
            raise ArchscaleError(f"the {self.name} fit predicts no finite value at its "
                                 f"{len(table)} runs")
        problems = tuple(law.problems)
        if "d_line" in law.config:  # a reduced fit along one D(N) line answers only there: the
            # design must still leave the line, as for a refused collinear law
            collinear = diagnostics.collinear_problem(table, law.kind)
            problems += (collinear,) if collinear is not None else ()
        return Fitted(coef=law.coef, sigma=float(law.error_model.sigma_run),
                      problems=problems, n_runs=len(table), law=law)

    def _residuals(self, fitted: Fitted, table: pd.DataFrame, coef_SxP: np.ndarray) -> np.ndarray:
        """Residuals in the law's space of every coefficient row (S x n), non-finite -> 1e3."""
        measured = to_space(table[self.target].to_numpy(dtype=float), self.space)
        with np.errstate(all="ignore"):
            r = to_space(self.predict(fitted, coef_SxP, table), self.space) - measured[None, :]
        return np.where(np.isfinite(r), r, 1e3)

    def refit(self, fitted: Fitted, table: pd.DataFrame, weights_SxN: np.ndarray) -> np.ndarray:
        """Weighted least squares in the law's space, by Levenberg-Marquardt from ``fitted``'s
        coefficients, all S problems advanced together: each iteration is one vectorized
        prediction of S x (2P + 1) coefficient rows (forward and central differences)."""
        weights = np.asarray(weights_SxN, dtype=float)
        n_s, n_p = len(weights), len(fitted.coef)
        scale = np.where(np.abs(fitted.coef) > 0, np.abs(fitted.coef), 1.0)
        u = np.tile(fitted.coef / scale, (n_s, 1))
        lam = np.full(n_s, 1e-3)
        eye = np.eye(n_p)

        def evaluate(u_SxP: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            step = FD_STEP * np.maximum(np.abs(u_SxP), 1.0)
            rows = np.concatenate([u_SxP[:, None, :], u_SxP[:, None, :] + step[:, :, None] * eye,
                                   u_SxP[:, None, :] - step[:, :, None] * eye], axis=1)
            r = self._residuals(fitted, table, rows.reshape(-1, n_p) * scale)
            r = r.reshape(n_s, 2 * n_p + 1, -1)
            jac = (r[:, 1: n_p + 1] - r[:, n_p + 1:]) / (2 * step[:, :, None])
            return r[:, 0], np.swapaxes(jac, 1, 2), np.einsum("sn,sn->s", weights, r[:, 0] ** 2)

        r, jac, cost = evaluate(u)
        for _ in range(MAX_LM_STEPS):
            jtw = np.swapaxes(jac, 1, 2) * weights[:, None, :]
            h = jtw @ jac
            g = np.einsum("spn,sn->sp", jtw, r)
            damped = h + lam[:, None, None] * (np.einsum("spp->sp", h)[:, :, None] * eye + 1e-12 * eye)
            delta = -np.linalg.solve(damped, g[:, :, None])[:, :, 0]
            r_new, jac_new, cost_new = evaluate(u + delta)
            better = cost_new < cost
            u = np.where(better[:, None], u + delta, u)
            r = np.where(better[:, None], r_new, r)
            jac = np.where(better[:, None, None], jac_new, jac)
            done = better & (cost - cost_new <= 1e-10 * np.maximum(cost, 1e-30))
            cost = np.where(better, cost_new, cost)
            lam = np.where(better, lam / 3, lam * 4)
            if np.all(done | (lam > 1e8)):
                break
        coef = u * scale
        return np.where(np.isfinite(coef).all(axis=1)[:, None], coef, np.nan)

    def predict(self, fitted: Fitted, coef_SxP: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
        law: Law = fitted.law
        return self.law_kind.predict(law.config, np.atleast_2d(coef_SxP), rows)

    def interval(self, fitted: Fitted, rows: pd.DataFrame,
                 level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
        law: Law = fitted.law
        if law.error_model is None:
            raise ArchscaleError(f"the {self.kind} fit has no calibrated error model")
        return law.prediction_interval(rows, level)

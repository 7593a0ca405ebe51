"""Batched damped Newton: many small smooth minimizations advanced together in numpy.

A multi-start fit (4,500 starts of a 5-parameter law) or a bootstrap (1,000 refits) is one batch:
every iteration evaluates all trial points at once and solves all the small Newton systems with
one batched eigendecomposition. Each element keeps its own Levenberg-Marquardt damping (Nielsen's
update from the ratio of actual to predicted decrease) on |H|, the Hessian with absolute
eigenvalues, so saddles repel instead of attract. Converged elements leave the batch, and a
trial's intermediates are kept so an accepted step pays only for the derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class BatchObjective(Protocol):
    """A batch of objectives; ``rows`` index the batch (each row may carry its own data)."""

    def value(self, x_BxP: np.ndarray, rows_B: np.ndarray) -> tuple[np.ndarray, tuple]:
        """f at each row's point, and per-row intermediates (arrays with a leading B axis)."""
        ...

    def derivatives(self, cache: tuple, rows_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient (B x P) and Hessian (B x P x P) from ``value``'s intermediates."""
        ...


@dataclass(frozen=True)
class BatchResult:
    """Where every element of the batch ended."""

    x: np.ndarray
    """Final parameters, one row per element (B x P)."""
    fun: np.ndarray
    """Objective at ``x`` (B)."""
    converged: np.ndarray
    """Whether the element met a stopping rule before ``max_iter`` (B, bool)."""
    n_iter: np.ndarray
    """Iterations each element used (B)."""


def _take(cache: tuple, mask: np.ndarray) -> tuple:
    return tuple(a[mask] for a in cache)


def minimize_batch(
    objective: BatchObjective,
    x0_BxP: np.ndarray,
    *,
    max_iter: int = 500,
    ftol: float = 2.2e-9,
    gtol: float = 1e-5,
) -> BatchResult:
    """Minimize from every row of ``x0_BxP`` at once.

    An element stops as scipy's L-BFGS-B does (same defaults): when an accepted step lowers f by
    at most ``ftol * max(|f|, 1)`` or the gradient's max norm falls to ``gtol``; or when its
    damping has grown so large that no step lowers f (a plateau or an exact minimum).
    """
    x = np.array(x0_BxP, dtype=np.float64, copy=True)
    n_batch = x.shape[0]
    fval = np.empty(n_batch)
    converged = np.zeros(n_batch, dtype=bool)
    n_iter = np.zeros(n_batch, dtype=np.int64)

    rows = np.arange(n_batch)
    f, cache = objective.value(x, rows)
    g, H = objective.derivatives(cache, rows)
    w, V = np.linalg.eigh(H)
    w = np.abs(w)
    lam = 1e-3 * np.maximum(w.max(axis=1), 1e-12)
    nu = np.full(n_batch, 2.0)
    for _ in range(max_iter):
        if rows.size == 0:
            break
        g_eig = np.einsum("bpq,bp->bq", V, g)
        denom = w + lam[:, None]
        step = -np.einsum("bpq,bq->bp", V, g_eig / denom)
        coord = g_eig / denom
        predicted = np.sum(g_eig * coord, axis=1) - 0.5 * np.sum(w * coord**2, axis=1)
        trial = x[rows] + step
        f_trial, trial_cache = objective.value(trial, rows)
        gain = f - f_trial
        better = np.isfinite(f_trial) & (gain > 0)
        n_iter[rows] += 1

        small_gain = better & (gain <= ftol * np.maximum(np.abs(f), 1.0))
        rho = np.minimum(gain / np.maximum(predicted, 1e-300), 1.0)
        lam = np.where(better, lam * np.maximum(1 / 3, 1 - (2 * rho - 1) ** 3), lam * nu)
        nu = np.where(better, 2.0, nu * 2.0)
        if better.any():
            x[rows[better]] = trial[better]
            f = np.where(better, f_trial, f)
            g_new, H_new = objective.derivatives(_take(trial_cache, better), rows[better])
            w_new, V_new = np.linalg.eigh(H_new)
            g[better], w[better], V[better] = g_new, np.abs(w_new), V_new

        flat = np.max(np.abs(g), axis=1) <= gtol
        stuck = lam > 1e12 * np.maximum(w.max(axis=1), 1e-12)
        done = small_gain | flat | stuck
        converged[rows[done]] = True
        fval[rows[done]] = f[done]
        keep = ~done
        rows, f, g, w, V = rows[keep], f[keep], g[keep], w[keep], V[keep]
        lam, nu = lam[keep], nu[keep]
    fval[rows] = f
    return BatchResult(x=x, fun=fval, converged=converged, n_iter=n_iter)

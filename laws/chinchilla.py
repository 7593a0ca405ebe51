"""Chinchilla law L = E + A / N^alpha + B / D^beta, fitted as Hoffmann et al. and Epoch AI do.

The fit minimizes the Huber loss (delta 1e-3) of log-loss residuals with the law in its
log-sum-exp form, log L_hat = logsumexp(a - alpha log N, b - beta log D, e), where A = e^a,
B = e^b, E = e^e, from every start of the replication's grid (alpha, beta in {0, 0.5, .., 2};
e in {-1, -0.5, .., 1}; a, b in {0, 5, .., 25}: 4,500 starts), keeping the best. All starts run
together in one batched damped-Newton solve (laws/newton.py) with the analytic gradient and
Hessian and scipy L-BFGS-B's stopping rule; the few best end points are then polished with tight
tolerances. Bootstrap refits run the same way, one batch row per (resample, start): each refit is
warm-started from the full-data optimum plus the three grid starts that reached it fastest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError
from archscale.laws import diagnostics
from archscale.laws.kind import Estimate, LawKind
from archscale.laws.newton import minimize_batch
from archscale.laws.table import positive_values

HUBER_DELTA = 1e-3
"""Huber threshold on log-loss residuals (Hoffmann et al. 2022)."""
COEF_NAMES = ("A", "B", "E", "alpha", "beta")
"""Natural-unit coefficients, in the order of every coefficient vector this module returns."""
N_WARM_GRID_STARTS = 3
"""Grid starts (besides the full-data optimum) that warm-start each bootstrap refit."""
BLOCK_ELEMENTS = 24_000
"""Batch rows x runs the objective evaluates at once: small enough to stay in a core's cache."""


def grid_starts() -> np.ndarray:
    """The 4,500 starts (a, b, e, alpha, beta) of the Hoffmann/Epoch grid."""
    half_steps = np.arange(0.0, 2.01, 0.5)
    grid = itertools.product(range(0, 26, 5), range(0, 26, 5), np.arange(-1.0, 1.01, 0.5),
                             half_steps, half_steps)
    return np.array(list(grid), dtype=np.float64)


def to_natural(p_BxP: np.ndarray) -> np.ndarray:
    """(a, b, e, alpha, beta) -> (A, B, E, alpha, beta)."""
    p_BxP = np.atleast_2d(p_BxP)
    return np.column_stack([np.exp(p_BxP[:, :3]), p_BxP[:, 3:]])


def to_log(coef_BxP: np.ndarray) -> np.ndarray:
    """(A, B, E, alpha, beta) -> (a, b, e, alpha, beta); a coefficient of 0 (a term the data
    cannot identify, e.g. B when every run has the same tokens per parameter) maps to -inf,
    which ``to_natural`` maps back to 0, so the log of 0 is expected here, not warned about."""
    coef_BxP = np.atleast_2d(coef_BxP)
    with np.errstate(divide="ignore"):
        return np.column_stack([np.log(coef_BxP[:, :3]), coef_BxP[:, 3:]])


def predict(coef_SxP: np.ndarray, n_params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Loss for every coefficient row and data point (S x n)."""
    A, B, E, alpha, beta = (c[:, None] for c in np.atleast_2d(coef_SxP).T)
    return E + A * np.power(n_params, -alpha) + B * np.power(tokens, -beta)


def compute_optimal(coef_SxP: np.ndarray, compute: float) -> tuple[np.ndarray, np.ndarray]:
    """N* and D* minimizing the law at training compute C = 6 N D (Hoffmann et al.'s budget):
    N* = (alpha A / (beta B))^(1 / (alpha + beta)) (C / 6)^(beta / (alpha + beta)), D* = C / 6N*."""
    A, B, _, alpha, beta = np.atleast_2d(coef_SxP).T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n_opt = (alpha * A / (beta * B)) ** (1 / (alpha + beta)) * (compute / 6) ** (
            beta / (alpha + beta))
        return n_opt, compute / (6 * n_opt)


class HuberLogObjective:
    """Sum of (optionally weighted) Huber losses of log residuals, for a batch of parameters.

    ``value`` computes the objective, its gradient and its Hessian together, a block of batch
    rows at a time (BLOCK_ELEMENTS points per block, so every temporary stays in the core's
    cache; whole-batch temporaries of 4,500 starts x hundreds of runs would not); the gradient
    and Hessian are the cache that ``derivatives`` hands back.
    """

    def __init__(self, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                 weights_BxN: np.ndarray | None = None, delta: float = HUBER_DELTA) -> None:
        self.log_n, self.log_d, self.log_loss = log_n, log_d, log_loss
        self.weights_BxN = weights_BxN
        self.delta = delta
        # sums over points of weight * [1, log N, log D, log N^2, log D^2, log N log D]
        self.basis_Nx6 = np.column_stack([np.ones_like(log_n), log_n, log_d, log_n**2, log_d**2,
                                          log_n * log_d])
        self.block_rows = max(1, BLOCK_ELEMENTS // max(len(log_n), 1))

    def value(self, x_BxP: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, tuple]:
        n_rows = len(rows)
        f, g, h = np.empty(n_rows), np.empty((n_rows, 5)), np.empty((n_rows, 5, 5))
        for start in range(0, n_rows, self.block_rows):
            block = slice(start, start + self.block_rows)
            weights = None if self.weights_BxN is None else self.weights_BxN[rows[block]]
            f[block], g[block], h[block] = self._evaluate(x_BxP[block], weights)
        return f, (g, h)

    def derivatives(self, cache: tuple, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cache

    def _evaluate(self, x_bxP: np.ndarray, weights_bxN: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """f, gradient and Hessian for one block of rows."""
        a, b, e, alpha, beta = (c[:, None] for c in x_bxP.T)
        delta = self.delta
        # relative to e so only two exponentials are needed; the clip only guards overflow
        q1 = alpha * self.log_n
        np.subtract(a - e, q1, out=q1)
        np.exp(np.minimum(q1, 700.0, out=q1), out=q1)
        q2 = beta * self.log_d
        np.subtract(b - e, q2, out=q2)
        np.exp(np.minimum(q2, 700.0, out=q2), out=q2)
        z = q1 + q2
        z += 1.0
        resid = np.log(z)
        resid += e - self.log_loss
        abs_resid = np.abs(resid)
        clipped = np.minimum(abs_resid, delta)
        # Huber(r) = m (|r| - m / 2) with m = min(|r|, delta)
        loss = clipped * -0.5
        loss += abs_resid
        loss *= clipped
        if weights_bxN is not None:
            loss *= weights_bxN
        f = loss.sum(axis=1)

        s3 = np.reciprocal(z, out=z)
        s1, s2 = np.multiply(q1, s3, out=q1), np.multiply(q2, s3, out=q2)  # softmax weights
        psi = np.clip(resid, -delta, delta, out=resid)  # Huber'(r)
        curv = np.less(abs_resid, delta).astype(np.float64)  # Huber''(r)
        if weights_bxN is not None:
            psi *= weights_bxN
            curv *= weights_bxN
        curv -= psi
        # Gradient of r: J = (s1, s2, s3, -s1 log N, -s2 log D). Hessian of the objective:
        # sum curv J J^T + psi sum_k s_k G_k G_k^T, G_k the gradient of the k-th LSE argument.
        n_rows, n_points = z.shape
        weights_9xbxN = np.empty((9, n_rows, n_points))
        for k, (u, v) in enumerate([(s1, s1), (s1, s2), (s1, s3), (s2, s2), (s2, s3), (s3, s3)]):
            np.multiply(curv, u, out=weights_9xbxN[k])
            weights_9xbxN[k] *= v
        for k, u in enumerate((s1, s2, s3), start=6):
            np.multiply(psi, u, out=weights_9xbxN[k])
        # nine small products, not one (9 b) x N one: OpenBLAS runs a product this small on one
        # thread, where a larger one would spin up threads that cost more than they save
        P11, P12, P13, P22, P23, P33, D1, D2, D3 = weights_9xbxN @ self.basis_Nx6
        g = np.column_stack([D1[:, 0], D2[:, 0], D3[:, 0], -D1[:, 1], -D2[:, 2]])
        h = np.empty((n_rows, 5, 5))
        upper = {
            (0, 0): P11[:, 0] + D1[:, 0], (0, 1): P12[:, 0], (0, 2): P13[:, 0],
            (0, 3): -P11[:, 1] - D1[:, 1], (0, 4): -P12[:, 2],
            (1, 1): P22[:, 0] + D2[:, 0], (1, 2): P23[:, 0], (1, 3): -P12[:, 1],
            (1, 4): -P22[:, 2] - D2[:, 2],
            (2, 2): P33[:, 0] + D3[:, 0], (2, 3): -P13[:, 1], (2, 4): -P23[:, 2],
            (3, 3): P11[:, 3] + D1[:, 3], (3, 4): P12[:, 5], (4, 4): P22[:, 4] + D2[:, 4],
        }
        for (i, j), value in upper.items():
            h[:, i, j] = h[:, j, i] = value
        return f, g, h


@dataclass(frozen=True)
class ChinchillaFit:
    """The best of a multi-start Huber fit."""

    coef: np.ndarray
    """(A, B, E, alpha, beta)."""
    objective: float
    """Huber objective at the optimum (sum over points)."""
    converged: bool
    """Whether the polished optimum met the tight stopping rule."""
    n_starts: int
    """Starts run."""
    n_at_best: int
    """Starts whose end point is within 1e-6 (relative) of the best objective."""
    warm_starts: np.ndarray
    """The optimum and the grid starts that reached it in the fewest iterations (log units)."""


def _log_data(n_params, tokens, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.log(np.asarray(n_params, dtype=np.float64)),
            np.log(np.asarray(tokens, dtype=np.float64)),
            np.log(np.asarray(loss, dtype=np.float64)))


def fit_chinchilla(n_params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, *,
                   starts: np.ndarray | None = None, delta: float = HUBER_DELTA,
                   n_polish: int = 8) -> ChinchillaFit:
    """Multi-start Huber fit in log space; ``starts`` (a, b, e, alpha, beta) default to the grid."""
    objective = HuberLogObjective(*_log_data(n_params, tokens, loss), delta=delta)
    starts = grid_starts() if starts is None else np.atleast_2d(starts)
    result = minimize_batch(objective, starts)
    finite = np.where(np.isfinite(result.fun), result.fun, np.inf)
    order = np.argsort(finite, kind="stable")
    polished = minimize_batch(objective, result.x[order[:n_polish]], ftol=1e-15, gtol=1e-12,
                              max_iter=200)
    i = int(np.argmin(polished.fun))
    best = float(polished.fun[i])
    at_best = finite <= best * (1 + 1e-6) + 1e-15
    fastest = np.flatnonzero(at_best)[np.argsort(result.n_iter[at_best], kind="stable")]
    return ChinchillaFit(
        coef=to_natural(polished.x[i])[0],
        objective=best,
        converged=bool(polished.converged[i]) and bool(np.isfinite(best)),
        n_starts=len(starts),
        n_at_best=int(at_best.sum()),
        warm_starts=np.vstack([polished.x[i], starts[fastest[:N_WARM_GRID_STARTS]]]),
    )


def bootstrap_chinchilla(n_params: np.ndarray, tokens: np.ndarray, loss: np.ndarray,
                         fit: ChinchillaFit, counts_SxN: np.ndarray,
                         delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Refit on resampled runs, given as per-run counts (one row per resample).

    Returns the coefficient samples (S x 5) and whether each refit converged (S).
    """
    n_samples = counts_SxN.shape[0]
    n_warm = fit.warm_starts.shape[0]
    weights = np.repeat(counts_SxN.astype(np.float64), n_warm, axis=0)
    objective = HuberLogObjective(*_log_data(n_params, tokens, loss), weights, delta)
    result = minimize_batch(objective, np.tile(fit.warm_starts, (n_samples, 1)))
    fun_SxW = np.where(np.isfinite(result.fun), result.fun, np.inf).reshape(n_samples, n_warm)
    best = np.argmin(fun_SxW, axis=1)
    chosen = np.arange(n_samples) * n_warm + best
    return to_natural(result.x[chosen]), result.converged[chosen]


# ---- the law kind ----------------------------------------------------------------------------
def _configure(options: dict[str, Any]) -> dict[str, Any]:
    delta = float(options.get("huber_delta", HUBER_DELTA))
    if not delta > 0:
        raise ArchscaleError(f"huber_delta={delta} must be positive (Hoffmann et al. use 1e-3)")
    return {"huber_delta": delta}


def _columns(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = positive_values(table, ["N", "D", "loss"], "the Chinchilla law")
    return values["N"], values["D"], values["loss"]


REDUCED_NAMES = ("A", "E", "alpha")
"""Coefficients of L(N) = E + A / N^alpha, what a design with D tied to N identifies."""
LINE_TOLERANCE = 0.05
"""A reduced law predicts rows whose D lies within this fraction of its fitted D(N) line."""


def reduced_starts() -> np.ndarray:
    """The grid's distinct (a, e, alpha) starts with the D term switched off (B = 0, beta = 0)."""
    grid = np.unique(grid_starts()[:, [0, 2, 3]], axis=0)
    return np.column_stack([grid[:, 0], np.full(len(grid), -1e3), grid[:, 1], grid[:, 2],
                            np.zeros(len(grid))])


def _fit(table: pd.DataFrame, config: dict[str, Any]) -> Estimate:
    columns = _columns(table)  # refuses missing or non-positive values first
    line = diagnostics.collinear_nd(table)
    config = {k: v for k, v in config.items() if k != "d_line"}
    if line is None:
        fit = fit_chinchilla(*columns, delta=config["huber_delta"])
        names, coef, notes = COEF_NAMES, fit.coef, ()
    else:
        # N and D move together: only L(N) along their line is identified, so fit that
        fit = fit_chinchilla(*columns, starts=reduced_starts(), delta=config["huber_delta"])
        config["d_line"] = list(line)
        names, coef = REDUCED_NAMES, fit.coef[[0, 2, 3]]
        notes = (f"N and D are collinear ({diagnostics.ratio_text(line)}): fitted what these runs "
                 f"identify, L(N) = E + A / N^alpha along that line; it predicts only there",)
    notes = (*notes, f"{fit.n_at_best} of {fit.n_starts} starts reached the best objective "
                     f"{fit.objective:.6g}")
    return Estimate(coef=coef, names=names, converged=fit.converged, config=config,
                    notes=notes, state=fit)


def _bootstrap(table: pd.DataFrame, config: dict[str, Any], estimate: Estimate,
               counts_SxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    samples, ok = bootstrap_chinchilla(*_columns(table), estimate.state, counts_SxN,
                                       config["huber_delta"])
    return (samples[:, [0, 2, 3]] if "d_line" in config else samples), ok


def _predict(config: dict[str, Any], coef_SxP: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    values = positive_values(table, ["N", "D"], "predicting with the Chinchilla law")
    coef_SxP = np.atleast_2d(coef_SxP)
    if "d_line" in config:
        intercept, slope = config["d_line"]
        on_line = np.exp(intercept) * values["N"] ** slope
        off = np.flatnonzero(np.abs(values["D"] / on_line - 1) > LINE_TOLERANCE)
        if off.size:
            i = int(off[0])
            raise ArchscaleError(
                f"this Chinchilla law was fitted on runs with "
                f"{diagnostics.ratio_text((intercept, slope))} (N and D collinear) and predicts "
                f"only there; row {i} has N={values['N'][i]:.4g}, D={values['D'][i]:.4g}: refit "
                "on runs at a second tokens-per-parameter ratio")
        zeros = np.zeros(len(coef_SxP))
        coef_SxP = np.column_stack([coef_SxP[:, 0], zeros, coef_SxP[:, 1], coef_SxP[:, 2], zeros])
    return predict(coef_SxP, values["N"], values["D"])


KIND = LawKind(name="chinchilla", configure=_configure, target=lambda config: "loss",
               n_params=lambda config: 3 if "d_line" in config else 5, min_scales=2, fit=_fit, bootstrap=_bootstrap,
               predict=_predict, axes=("N", "D"))

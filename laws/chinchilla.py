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

import hashlib
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
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
FIT_CACHE_SIZE = 16
"""Multi-start fits ``fit_chinchilla`` remembers (by their inputs)."""


def grid_starts() -> np.ndarray:
    """The 4,500 starts (a, b, e, alpha, beta) of the Hoffmann/Epoch grid."""
    half_steps = np.arange(0.0, 2.01, 0.5)
    grid = itertools.product(range(0, 26, 5), range(0, 26, 5), np.arange(-1.0, 1.01, 0.5),
                             half_steps, half_steps)
    return np.array(list(grid), dtype=np.float64)


def to_natural(p_BxP: np.ndarray) -> np.ndarray:
    """(a, b, e, alpha, beta) -> (A, B, E, alpha, beta)."""
    p_BxP = np.atleast_2d(p_BxP)
    with np.errstate(over="ignore"):  # a runaway start gives inf: a failed fit, judged as such
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
    # a failed fit's coefficients (0 x inf) predict NaN; callers judge that, numpy need not warn
    with np.errstate(over="ignore", invalid="ignore"):
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

    ``value`` computes the objective with its gradient and Hessian (the cache ``derivatives``
    hands back) a block of batch rows at a time, BLOCK_ELEMENTS points per block so that every
    temporary stays in a core's cache (whole-batch temporaries of 4,500 starts x hundreds of runs
    would not). Rejected Newton steps pay for derivatives they do not use; picking out the
    accepted rows of a block before differentiating costs more than it saves, and so do threads
    over blocks (numpy's calls on a block are too short to share the GIL well).
    """

    def __init__(self, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                 weights_BxN: np.ndarray | None = None, delta: float = HUBER_DELTA) -> None:
        self.log_n, self.log_d, self.log_loss = log_n, log_d, log_loss
        self.weights_BxN = weights_BxN
        self.delta = delta
        # sums over points of weight * [1, log N, log D, log N^2, log D^2, log N log D]
        self.basis_Nx6 = np.column_stack([np.ones_like(log_n), log_n, log_d, log_n**2, log_d**2,
                                          log_n * log_d])
        # (a - e, alpha) @ this = a - e - alpha log N, for a block of rows at once
        self.minus_log_n_2xN = np.stack([np.ones_like(log_n), -log_n])
        self.minus_log_d_2xN = np.stack([np.ones_like(log_d), -log_d])
        self.block_rows = max(1, BLOCK_ELEMENTS // max(len(log_n), 1))

    def value(self, x_BxP: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, tuple]:
        n_rows = len(rows)
        f, g, h = np.empty(n_rows), np.empty((n_rows, 5)), np.empty((n_rows, 5, 5))
        for start in range(0, n_rows, self.block_rows):
            block = slice(start, start + self.block_rows)
            weights = None if self.weights_BxN is None else self.weights_BxN[rows[block]]
            f[block], parts = self._value(x_BxP[block], weights)
            g[block], h[block] = self._derivatives(*parts)
        return f, (g, h)

    def derivatives(self, cache: tuple, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cache

    def _value(self, x_bxP: np.ndarray, weights_bxN: np.ndarray | None
               ) -> tuple[np.ndarray, tuple]:
        """f for one block of rows, and the per-point terms its derivatives need."""
        n_rows, n_points = len(x_bxP), len(self.log_n)
        a, b, e, alpha, beta = x_bxP.T
        # relative to e so only two exponentials are needed; the clip only guards overflow
        q1 = np.column_stack([a - e, alpha]) @ self.minus_log_n_2xN
        np.exp(np.minimum(q1, 700.0, out=q1), out=q1)
        q2 = np.column_stack([b - e, beta]) @ self.minus_log_d_2xN
        np.exp(np.minimum(q2, 700.0, out=q2), out=q2)
        z = q1 + q2
        z += 1.0
        resid = np.log(z)
        resid -= self.log_loss
        resid += e[:, None]
        # the weighted sums the derivatives take, filled in by both steps
        weights_9xbxN = np.empty((9, n_rows, n_points))
        curv, psi = weights_9xbxN[2], weights_9xbxN[8]
        np.clip(resid, -self.delta, self.delta, out=psi)  # Huber'(r)
        np.equal(psi, resid, out=curv, casting="unsafe")  # Huber''(r): 1 where not clipped
        # Huber(r) = m (r - m / 2) with m = clip(r, -delta, delta) = Huber'(r)
        half_way = psi * -0.5
        half_way += resid
        if weights_bxN is not None:
            psi *= weights_bxN
            curv *= weights_bxN
        f = np.einsum("ij,ij->i", psi, half_way)
        return f, (q1, q2, z, weights_9xbxN)

    def _derivatives(self, q1: np.ndarray, q2: np.ndarray, z: np.ndarray,
                     weights_9xbxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and Hessian from ``_value``'s terms (overwritten).

        The gradient of r is J = (s1, s2, s3, -s1 log N, -s2 log D), s the softmax weights of
        the three log-sum-exp terms; the Hessian of the objective is sum c J J^T +
        sum psi sum_k s_k G_k G_k^T, with psi = Huber'(r), c = Huber''(r) - psi and G_k the
        gradient of the k-th term (both weighted). Every sum is one of nine weighted sums of the
        basis (1, log N, log D, log^2 N, log^2 D, log N log D); those with s3 follow from
        s3 = 1 - s1 - s2.
        """
        n_rows = len(z)
        cs1, cs2, c, cs1s1, cs1s2, cs2s2, psi_s1, psi_s2, psi = weights_9xbxN
        s3 = np.reciprocal(z, out=z)
        s1, s2 = np.multiply(q1, s3, out=q1), np.multiply(q2, s3, out=q2)
        c -= psi
        np.multiply(c, s1, out=cs1)
        np.multiply(c, s2, out=cs2)
        np.multiply(cs1, s1, out=cs1s1)
        np.multiply(cs1, s2, out=cs1s2)
        np.multiply(cs2, s2, out=cs2s2)
        np.multiply(psi, s1, out=psi_s1)
        np.multiply(psi, s2, out=psi_s2)
        # nine small products, not one (9 b) x N one: OpenBLAS runs a product this small on one
        # thread, where a larger one would spin up threads that cost more than they save
        C1, C2, C, C11, C12, C22, D1, D2, D = weights_9xbxN @ self.basis_Nx6
        C13, C23 = C1 - C11 - C12, C2 - C12 - C22
        sums_Sxbx6 = np.stack([C11, C12, C13, C22, C23, C - C1 - C2 - C13 - C23,
                               D1, D2, D - D1 - D2, np.zeros_like(D)])
        g = _GRADIENT_SIGN * sums_Sxbx6[_GRADIENT_SUM, :, _GRADIENT_BASIS].T
        h = _HESSIAN_SIGN[:, None] * (sums_Sxbx6[_HESSIAN_SUM[0], :, _HESSIAN_BASIS[0]]
                                      + sums_Sxbx6[_HESSIAN_SUM[1], :, _HESSIAN_BASIS[1]])
        return g, h.T.reshape(n_rows, 5, 5)


def _hessian_terms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each Hessian entry comes from, for ``HuberLogObjective._derivatives``: entry (i, j)
    is sign times (sum k1 at basis column b1 + sum k2 at column b2), sums numbered C11, C12,
    C13, C22, C23, C33, D1, D2, D3 and a zero sum; columns 1, log N, log D, log^2 N, log^2 D,
    log N log D."""
    C11, C12, C13, C22, C23, C33, D1, D2, D3, ZERO = range(10)
    upper = {  # (i, j): (k1, b1, k2, b2)
        (0, 0): (C11, 0, D1, 0), (0, 1): (C12, 0, ZERO, 0), (0, 2): (C13, 0, ZERO, 0),
        (0, 3): (C11, 1, D1, 1), (0, 4): (C12, 2, ZERO, 0),
        (1, 1): (C22, 0, D2, 0), (1, 2): (C23, 0, ZERO, 0), (1, 3): (C12, 1, ZERO, 0),
        (1, 4): (C22, 2, D2, 2),
        (2, 2): (C33, 0, D3, 0), (2, 3): (C13, 1, ZERO, 0), (2, 4): (C23, 2, ZERO, 0),
        (3, 3): (C11, 3, D1, 3), (3, 4): (C12, 5, ZERO, 0), (4, 4): (C22, 4, D2, 4),
    }
    negative = {(0, 3), (0, 4), (1, 3), (1, 4), (2, 3), (2, 4)}  # -log N, -log D in J and G
    table = np.zeros((25, 5))
    for (i, j), terms in upper.items():
        sign = -1.0 if (i, j) in negative else 1.0
        table[5 * i + j] = table[5 * j + i] = (*terms, sign)
    return table[:, [0, 2]].T.astype(int), table[:, [1, 3]].T.astype(int), table[:, 4]


_HESSIAN_SUM, _HESSIAN_BASIS, _HESSIAN_SIGN = _hessian_terms()
_GRADIENT_SUM, _GRADIENT_BASIS = np.array([6, 7, 8, 6, 7]), np.array([0, 0, 0, 1, 2])
_GRADIENT_SIGN = np.array([1.0, 1.0, 1.0, -1.0, -1.0])


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


_FIT_CACHE: OrderedDict[bytes, ChinchillaFit] = OrderedDict()
_FIT_CACHE_LOCK = threading.Lock()


def fit_chinchilla(n_params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, *,
                   starts: np.ndarray | None = None, delta: float = HUBER_DELTA,
                   n_polish: int = 8) -> ChinchillaFit:
    """Multi-start Huber fit in log space; ``starts`` (a, b, e, alpha, beta) default to the grid.

    The last FIT_CACHE_SIZE fits are kept by their inputs and handed back (copied) for the same
    inputs: a law's validation tasks and the conditional law's starting fit refit the same runs
    (the held-out task and the last progressive one train on the same scales).
    """
    log_data = _log_data(n_params, tokens, loss)
    starts = grid_starts() if starts is None else np.atleast_2d(np.asarray(starts, np.float64))
    key = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (*log_data, starts))
                         + repr((len(log_data[0]), starts.shape, delta, n_polish)).encode()
                         ).digest()
    with _FIT_CACHE_LOCK:
        fit = _FIT_CACHE.get(key)
        if fit is not None:
            _FIT_CACHE.move_to_end(key)
    if fit is None:
        fit = _fit_starts(HuberLogObjective(*log_data, delta=delta), starts, n_polish)
        with _FIT_CACHE_LOCK:
            _FIT_CACHE[key] = fit
            while len(_FIT_CACHE) > FIT_CACHE_SIZE:
                _FIT_CACHE.popitem(last=False)
    return replace(fit, coef=fit.coef.copy(), warm_starts=fit.warm_starts.copy())


def _fit_starts(objective: HuberLogObjective, starts: np.ndarray, n_polish: int) -> ChinchillaFit:
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
LINE_TOLERANCE = 0.25
"""A reduced law predicts rows whose D lies within this fraction of the band its fitted runs
scatter in around their D(N) line."""


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
        off_line = np.log(columns[1]) - (line[0] + line[1] * np.log(columns[0]))
        config["d_line"] = [*line, float(off_line.min()), float(off_line.max())]
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
        intercept, slope, low, high = config["d_line"]
        off_line = np.log(values["D"]) - (intercept + slope * np.log(values["N"]))
        margin = np.log1p(LINE_TOLERANCE)
        off = np.flatnonzero((off_line < low - margin) | (off_line > high + margin))
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


def _design_problems(config: dict[str, Any], table: pd.DataFrame) -> list[diagnostics.Problem]:
    """``config`` is the fitted one: a reduced fit along a D(N) line (``d_line``) is what collinear
    runs identify, so collinearity is no problem for it."""
    if "d_line" in config:
        return []
    collinear = diagnostics.collinear_problem(table, "chinchilla")
    return [] if collinear is None else [collinear]


KIND = LawKind(name="chinchilla", configure=_configure, target=lambda config: "loss",
               n_params=lambda config: 3 if "d_line" in config else 5, min_scales=2, fit=_fit,
               bootstrap=_bootstrap, predict=_predict, axes=("N", "D"),
               problems=lambda config, coef, table: diagnostics.loss_problems(coef, table),
               design_problems=_design_problems, default_n_boot=1000,  # batched refits are cheap
               needs=lambda config: ("shape", "tokens"), options=("huber_delta",))

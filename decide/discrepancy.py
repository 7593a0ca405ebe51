"""What the law's form may miss: a smooth discrepancy, so the design hedges against a wrong form.

V-optimal design trusts the form: for a quadratic it wants the corners of the space, for a power
law the extremes of N and D, because there a run moves the coefficients most. Where the form is
misspecified, those are the runs that pull the fit away from the target region (ScaleBench
lr_bsz: a quadratic in log lr, whose loss rises steeply beyond the best lr; notes/engine.md).
Following Kennedy and O'Hagan (2001), the engine models the truth as law + delta, delta a
Gaussian process over the standardized log inputs (an RBF kernel of DISCREPANCY_LENGTH input
standard deviations) with prior sd DISCREPANCY x the law's calibrated run scatter: the residuals
a fit leaves are taken to be as much unmodelled structure as noise. A run then informs the
target two ways: through the coefficients (far runs, V-optimal's corners) and through delta
(runs near the target rows). Its own delta is noise for the coefficients, so a corner is worth
less than the form alone says. (Learning delta's size from the residuals by marginal likelihood
was measured and dropped: notes/engine.md.)

delta enters the engine as extra columns of its factor G (decide/design.py): Nystroem features
on inducing points at the target rows that the runs surround (beyond every run no run can
correct delta, and the engine trusts the form), exact for delta's covariance among those rows
and between any run and them; what the features miss of a run's own delta variance is added to
that run's noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics.pairwise import rbf_kernel

MAX_INDUCING = 64
"""Inducing points at most (KMeans centers of the target rows when there are more)."""
DISCREPANCY = 1.0
"""Prior sd of delta, in units of the law's calibrated run scatter (sigma_run)."""
DISCREPANCY_LENGTH = 1.0
"""RBF length scale of delta, in standard deviations of each (log) input."""


@dataclass(frozen=True)
class Discrepancy:
    """delta's prior."""

    amplitude: float
    """Prior sd of delta (the law's residual space)."""
    length: float = DISCREPANCY_LENGTH
    """RBF length scale (standardized inputs)."""


@dataclass(frozen=True)
class Features:
    """delta at some rows as phi @ w, w ~ N(0, I), plus independent noise ``extra``."""

    phi: np.ndarray
    """Features (rows x m)."""
    extra: np.ndarray
    """delta's variance at each row that the features miss (rows): it acts as run noise."""


def features(points: np.ndarray, target: np.ndarray, prior: Discrepancy, seed: int = 0
             ) -> Features:
    """delta's features at ``points`` (standardized inputs, rows x d) with inducing points at
    the ``target`` rows (the same space)."""
    inducing = target
    if len(target) > MAX_INDUCING:
        inducing = KMeans(MAX_INDUCING, n_init=1, random_state=seed).fit(target).cluster_centers_
    gamma = 0.5 / prior.length**2
    k_zz = rbf_kernel(inducing, inducing, gamma=gamma)
    w, v = np.linalg.eigh(k_zz)
    keep = w > 1e-8 * w.max()
    root_inv = v[:, keep] / np.sqrt(w[keep])  # K_zz^(-1/2) on its well-conditioned span
    phi = prior.amplitude * rbf_kernel(points, inducing, gamma=gamma) @ root_inv
    extra = np.maximum(prior.amplitude**2 - np.einsum("ij,ij->i", phi, phi), 0.0)
    return Features(phi, extra)


def kernel(a: np.ndarray, b: np.ndarray, prior: Discrepancy) -> np.ndarray:
    """delta's covariance between rows ``a`` and ``b`` (standardized inputs)."""
    return prior.amplitude**2 * rbf_kernel(a, b, gamma=0.5 / prior.length**2)


class FitBias:
    """The squared bias at the target that delta leaves in the law's least-squares fit.

    The kriging variance (``features``) scores the truth's uncertainty as if delta were fitted
    too, but a team fits the law alone: a run far from the target then pulls the coefficients by
    its own delta, and many runs in one far corner share one delta, which no number of them
    averages away (ScaleBench lr_bsz: the 27 runs nearest the target fit it with R^2 0.73, the
    whole pool 0.69; notes/engine3.md). Linearised, the fit moves by beta = A J_R^T (delta_R +
    eps) / sigma^2, A the posterior covariance of the coefficients, so its error at target row t
    is w_t^T (delta_R + eps) - delta_t with w_t = J_R A j_t / sigma^2, and (Box and Draper's
    bias of a response surface, with delta random)

        bias^2(t) = w_t^T K_RR w_t - 2 w_t^T k_Rt + k_tt.

    A candidate c joins R with a rank-one update of A; ``drop`` values every candidate at once
    and ``add`` takes a pick into R. Shapes: P coefficients, T target rows, C candidates."""

    def __init__(self, jac_runs: np.ndarray, jac_cand: np.ndarray, jac_target: np.ndarray,
                 z_runs: np.ndarray, z_cand: np.ndarray, z_target: np.ndarray,
                 cov: np.ndarray, sigma2: float, prior: Discrepancy) -> None:
        self.jac_cand, self.jac_target, self.cov, self.sigma2 = jac_cand, jac_target, cov, sigma2
        self.z_cand, self.prior = z_cand, prior
        k_rc = kernel(z_runs, z_cand, prior)
        self.s = jac_runs.T @ kernel(z_runs, z_runs, prior) @ jac_runs  # J_R^T K_RR J_R (P x P)
        self.b = jac_runs.T @ kernel(z_runs, z_target, prior)  # J_R^T K_RT (P x T)
        self.s_cand = jac_runs.T @ k_rc  # J_R^T K_RC (P x C)
        self.k_ct = kernel(z_cand, z_target, prior)  # (C x T)

    def _bias2(self, m: np.ndarray, j_m: np.ndarray | float, s_m: np.ndarray | float,
               k_t: np.ndarray | float) -> np.ndarray:
        """Mean bias^2 over the target for LS weights m (.. x P x T); j_m = j_c^T m, s_m = s_c^T m
        (0 without a candidate), k_t = k_ct."""
        amp2, s2 = self.prior.amplitude**2, self.sigma2
        quad = np.einsum("...pt,pq,...qt->...t", m, self.s, m) + 2 * j_m * s_m + amp2 * j_m**2
        cross = np.einsum("...pt,pt->...t", m, self.b) + j_m * k_t
        return np.mean(quad / s2**2 - 2 * cross / s2 + amp2, axis=-1)

    def now(self) -> float:
        return float(self._bias2(self.cov @ self.jac_target.T, 0.0, 0.0, 0.0))

    def drop(self, open_: np.ndarray) -> np.ndarray:
        """Expected fall of the mean bias^2 at the target if each candidate joins (0 where not
        ``open_``)."""
        out = np.zeros(len(self.jac_cand))
        idx = np.flatnonzero(open_)
        j_c = self.jac_cand[idx]  # (C x P)
        a_jt = self.cov @ self.jac_target.T  # (P x T)
        a_jc = j_c @ self.cov  # (C x P)
        den = self.sigma2 + np.einsum("cp,cp->c", a_jc, j_c)
        m = a_jt[None] - a_jc[:, :, None] * (j_c @ a_jt)[:, None, :] / den[:, None, None]
        j_m = np.einsum("cp,cpt->ct", j_c, m)
        s_m = np.einsum("pc,cpt->ct", self.s_cand[:, idx], m)
        out[idx] = self.now() - self._bias2(m, j_m, s_m, self.k_ct[idx])
        return out

    def add(self, i: int) -> None:
        """Candidate ``i`` joins the runs."""
        j = self.jac_cand[i]
        s_i = self.s_cand[:, i].copy()
        self.s += np.outer(j, s_i) + np.outer(s_i, j) + self.prior.amplitude**2 * np.outer(j, j)
        self.b += np.outer(j, self.k_ct[i])
        self.s_cand += np.outer(j, kernel(self.z_cand[i: i + 1], self.z_cand, self.prior)[0])
        a_j = self.cov @ j
        self.cov = self.cov - np.outer(a_j, a_j) / (self.sigma2 + j @ a_j)

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

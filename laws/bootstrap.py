"""Seeded bootstrap over runs: resample counts, refit loops, percentile intervals.

Resampling draws runs with replacement; a resample is kept as per-run counts (S x n), which a
fit uses as weights, so a batched fit can take every resample at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from archscale.arch.errors import ArchscaleError


def resample_counts(n_runs: int, n_samples: int, seed: int) -> np.ndarray:
    """How often each run appears in each of ``n_samples`` resamples (S x n, rows sum to n)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=n_samples)


def refit_each(counts_SxN: np.ndarray, fit_weighted: Callable[[np.ndarray], tuple[np.ndarray, bool]]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fit_weighted(weights_N) -> (coef, converged)`` for every resample."""
    results = [fit_weighted(row.astype(np.float64)) for row in counts_SxN]
    samples = np.array([coef for coef, _ in results], dtype=np.float64)
    converged = np.array([ok for _, ok in results], dtype=bool)
    return samples.reshape(len(results), -1), converged


def check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ArchscaleError(f"interval level {level} must lie strictly between 0 and 1 "
                             "(e.g. 0.95)")


def percentile_interval(samples_SxK: np.ndarray,
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed percentile interval over the first axis, ignoring failed (NaN) samples; NaN
    where no sample is left."""
    check_level(level)
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # an all-NaN column is answered with NaN, said here
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(samples_SxK, [tail, 100 - tail], axis=0)
    return lo, hi

"""The chance that the engine's law recommends the wrong shape, and how much a run lowers it.

Where the target rows name shapes, the decision a team takes is which shape of each group (rows
with one ``decisions`` label: one scale) to train, not the loss itself. ``WrongShape`` scores a
candidate by how much it is expected to lower P(the shape ranked first is not the best), by
preposterior simulation on the engine's Gaussian over the truth (decide/design.py: truth at rows
= mean + G theta, theta ~ N(0, M), G the law's linearisation, its bootstrap refits' disagreement
and, for ``design``, the discrepancy). Each of DRAWS draws is one possible truth theta_s with a
simulated outcome y_cs = g_c theta_s + eps_cs of every candidate. After the picks so far the
posterior mean is theta_hat_s (a Kalman update per pick); a candidate c moves it by
k_c (y_cs - g_c theta_hat_s), k_c = M g_c / (g_c^T M g_c + noise_c). The shape ranked first is
the argmin of the posterior mean at the target rows of each group, the best the argmin of the
truth; P(wrong) is the share of draws and groups where they differ. The draws and outcomes are
fixed (common random numbers), so candidates are compared on the same simulated worlds.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

DRAWS = 512
"""Simulated truths (the estimate's resolution is 1 / (DRAWS x groups))."""
CHUNK_CELLS = 4_000_000
"""Draws x candidates x target rows held at once (memory, not results)."""


class WrongShape:
    """P(wrong shape) now and after each candidate joins; ``add`` takes a pick in."""

    def __init__(self, mean_target: np.ndarray, g_cand: np.ndarray, g_target: np.ndarray,
                 noise: np.ndarray, decisions: Sequence[Hashable], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.g_cand, self.g_target, self.noise = g_cand, g_target, noise
        labels = np.asarray([str(d) for d in decisions])
        self.groups = [np.flatnonzero(labels == key) for key in dict.fromkeys(labels)
                       if (labels == key).sum() > 1]
        theta = rng.standard_normal((DRAWS, g_cand.shape[1]))  # truths, M = I at the start
        self.outcome = theta @ g_cand.T + rng.standard_normal((DRAWS, len(g_cand))) * np.sqrt(
            noise)[None, :]
        self.theta, self.theta_hat = theta, np.zeros_like(theta)
        self.cov = np.eye(g_cand.shape[1])
        truth = mean_target[None, :] + theta @ g_target.T
        self.mean_target = mean_target
        self.best = [np.argmin(truth[:, rows], axis=1) for rows in self.groups]

    def _wrong(self, posterior_mean: np.ndarray) -> np.ndarray:
        """P(wrong) averaged over groups, for posterior means (... x DRAWS x T)."""
        misses = [np.argmin(posterior_mean[..., rows], axis=-1) != best
                  for rows, best in zip(self.groups, self.best, strict=True)]
        return np.mean(np.mean(misses, axis=0), axis=-1)

    def _now_mean(self) -> np.ndarray:
        return self.mean_target[None, :] + self.theta_hat @ self.g_target.T

    def now(self) -> float:
        return float(self._wrong(self._now_mean())) if self.groups else 0.0

    def _gain_and_innovation(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(g_t k_c for each candidate (C x T), innovations (DRAWS x C))."""
        m_g = self.g_cand[idx] @ self.cov  # (C x r)
        den = np.einsum("cr,cr->c", m_g, self.g_cand[idx]) + self.noise[idx]
        shift = (m_g @ self.g_target.T) / den[:, None]
        innovation = self.outcome[:, idx] - self.theta_hat @ self.g_cand[idx].T
        return shift, innovation

    def drop(self, open_: np.ndarray) -> np.ndarray:
        """Expected fall of P(wrong) if each candidate joins (0 where not ``open_``)."""
        out = np.zeros(len(self.g_cand))
        if not self.groups:
            return out
        now_mean, now = self._now_mean(), self.now()
        open_idx = np.flatnonzero(open_)
        step = max(1, CHUNK_CELLS // (DRAWS * len(self.mean_target)))
        for start in range(0, len(open_idx), step):
            idx = open_idx[start: start + step]
            shift, innovation = self._gain_and_innovation(idx)
            after = now_mean[None] + innovation.T[:, :, None] * shift[:, None, :]  # C x S x T
            out[idx] = now - self._wrong(after)
        return out

    def add(self, i: int) -> None:
        """Candidate ``i`` joins: its simulated outcome updates every draw's posterior mean."""
        idx = np.array([i])
        m_g = self.cov @ self.g_cand[i]
        gain = m_g / (self.g_cand[i] @ m_g + self.noise[i])
        _, innovation = self._gain_and_innovation(idx)
        self.theta_hat = self.theta_hat + innovation[:, :1] * gain[None, :]
        self.cov = self.cov - np.outer(m_g, m_g) / (self.g_cand[i] @ m_g + self.noise[i])

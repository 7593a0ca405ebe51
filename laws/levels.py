"""The interval levels of every output: one home, light (no imports), so the command line's
defaults read them without loading the laws."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Levels:
    """Levels of the intervals archscale prints and writes."""

    prediction: float = 0.9
    """Prediction intervals: where a new run lands (``*_interval_90`` in recommendations,
    ``predict``'s intervals, substitution's pass@k)."""
    mean: float = 0.95
    """Intervals of a law's mean and of its coefficients (bootstrap percentiles)."""


LEVELS = Levels()
"""The levels in force."""
DEFAULT_LEVEL = LEVELS.prediction
"""Level of the prediction intervals the CLI prints and ``predict --csv`` writes."""

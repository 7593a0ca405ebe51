"""The run-to-run noise floor: how much the final loss of one run moves when only its seed does.

A sweep's ``noise:`` section trains a few grid runs again with other seeds (``plan.noise_repeats``).
Runs of the same shape and the same training tokens form a group; within each group of two or
more runs, each loss is divided by its group's mean, and the pooled standard deviation of those
ratios is the noise floor::

    noise_floor = sqrt( sum_g sum_i (L_gi / mean_g - 1)^2  /  sum_g (n_g - 1) )

the relative scatter one run's loss has around the mean of its seeds. A law's held-out relative
error cannot be expected to fall below it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError
from archscale.arch.spec import SHAPE_COLUMNS

GROUP_COLUMNS = (*SHAPE_COLUMNS, "D")
"""Columns that make two runs the same run but for the seed (the shape and its tokens)."""


def seed_groups(table: pd.DataFrame, column: str = "loss") -> list[pd.DataFrame]:
    """The groups of two or more complete runs that share shape and tokens (seeds differ) and
    measured ``column``."""
    missing = [c for c in (*GROUP_COLUMNS, column) if c not in table.columns]
    if missing:
        raise ArchscaleError(f"the noise floor needs the run table's columns {missing}: export "
                             "the study with `archscale study export`")
    rows = table
    if "status" in rows.columns:
        rows = rows[rows["status"].fillna("complete") == "complete"]
    rows = rows[np.isfinite(rows[column].astype(float))]
    groups = rows.groupby(list(GROUP_COLUMNS), sort=True)
    return [group for _, group in groups if len(group) >= 2]


def noise_floor(table: pd.DataFrame, column: str = "loss") -> float:
    """The relative run-to-run scatter of ``column`` (module docstring: the loss, or e.g.
    pass@k at one k); NaN when no shape and budget was trained more than once."""
    squares, dof = 0.0, 0
    for group in seed_groups(table, column):
        values = group[column].to_numpy(dtype=np.float64)
        squares += float(np.sum((values / values.mean() - 1.0) ** 2))
        dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else math.nan

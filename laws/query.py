"""Asking a saved law: the row one shape (or one loss) becomes (what it must give is the kind's
``needs``), a table scored with intervals, and Chinchilla's compute-optimal allocation with intervals.

`archscale predict` and notebooks call these; the rules live here, not in the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.arch.spec import ArchSpec
from archscale.laws.bootstrap import percentile_interval
from archscale.laws.chinchilla import compute_optimal
from archscale.laws.intervals import DEFAULT_LEVEL
from archscale.laws.law import Law
from archscale.laws.table import as_table, spec_features


def query_row(law: Law, spec: ArchSpec | None = None, tokens: float | None = None,
              loss: float | None = None, batch: int | None = None, context: int | None = None,
              k: Sequence[int] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The table ``law`` reads for a shape (and tokens) or a loss, one row (one per ``k`` for a
    pass@k law), and notes on how N was counted; one error naming what is missing."""
    kind = law.law_kind
    needs = kind.needs(law.config)
    if not needs:
        read = "" if kind.columns is None else f" (columns {', '.join(kind.columns(law.config))})"
        raise SettingError(f"the {law.kind} law reads a run table{read}, not a shape: score a "
                           "table of runs ({csv})")
    if "shape" in needs and spec is None:
        raise SettingError(f"a {law.kind} law needs a shape ({{spec}}) or a table of runs "
                           "({csv})")
    if "tokens" in needs and not (tokens and tokens > 0):
        raise SettingError(f"a {law.kind} law needs the training tokens ({{tokens}}, e.g. 1e11)")
    if "loss" in needs and loss is None:
        raise SettingError(f"a {law.kind} law needs a validation loss ({{loss}})")
    if "k" in needs and not k:
        raise SettingError(f"a {law.kind} law needs the samples per request ({{k}}, e.g. 1,8,32)")
    row: dict[str, Any] = {}
    notes = []
    if spec is not None:
        row.update(spec_features(spec, tokens or 0.0, batch=batch, context=context,
                                 n_definition=law.n_definition))
        if law.n_definition == "total":
            notes.append(f"this law was fitted with N = total parameters: the shape's "
                         f"{spec.params_total:,} total (not its {spec.params_nonembed:,} "
                         "non-embedding) is used as N")
    if loss is not None:
        row["loss"] = loss
    return as_table([{**row, "k": int(n)} for n in k] if k else row), notes


def score(law: Law, table: pd.DataFrame, level: float = DEFAULT_LEVEL) -> dict[str, np.ndarray]:
    """Per row: ``prediction``, ``lower`` and ``upper`` (the prediction interval at ``level``),
    and ``mean_lower``/``mean_upper`` (95% interval of the law's mean) where bootstrapped."""
    out = {"prediction": law.predict(table)}
    out["lower"], out["upper"] = law.prediction_interval(table, level)
    if len(law.coef_samples):
        out["mean_lower"], out["mean_upper"] = law.mean_interval(table, 0.95)
    return out


def compute_optimal_allocation(law: Law, compute: float) -> dict[str, Any]:
    """N*, D* and D*/N* at ``compute`` FLOPs (C = 6 N D), with 95% bootstrap intervals."""
    if law.kind != "chinchilla" or "d_line" in law.config:
        raise ArchscaleError("compute-optimal N and D need a Chinchilla law fitted on runs that "
                             "identify both N and D terms (`archscale fit --law chinchilla`)")
    if not compute > 0:
        raise SettingError(f"{{compute}} {compute:g} must be positive training FLOPs, e.g. 1e21")
    n_opt, d_opt = (float(v[0]) for v in compute_optimal(law.coef, compute))
    result: dict[str, Any] = {"compute": compute, "N": n_opt, "D": d_opt,
                              "tokens_per_param": d_opt / n_opt}
    if len(law.coef_samples):
        n_s, d_s = compute_optimal(law.coef_samples, compute)
        for key, values in (("N", n_s), ("D", d_s), ("tokens_per_param", d_s / n_s)):
            lo, hi = percentile_interval(values[:, None], 0.95)
            result[f"{key}_interval_95"] = [float(lo[0]), float(hi[0])]
    return result

"""A fitted law: form, coefficients, bootstrap samples, validation and provenance, and
vectorized predictions with intervals. ``fit_law`` makes one from a run table.

Intervals come from the seeded bootstrap over runs: a coefficient interval is the percentile
interval of its refits; a prediction interval is the percentile interval of the predictions of
every refit (uncertainty of the law's mean, not the scatter of single runs around it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

import archscale
from archscale.arch.errors import ArchscaleError
from archscale.laws import accuracy, chinchilla, conditional, throughput, validation
from archscale.laws.bootstrap import percentile_interval, resample_counts
from archscale.laws.kind import LawKind
from archscale.laws.table import add_features, scale_labels, table_sha256

KINDS: dict[str, LawKind] = {k.name: k for k in (chinchilla.KIND, conditional.KIND,
                                                 throughput.KIND, accuracy.KIND)}
"""Every law form, by its --law name."""
DEFAULT_N_BOOT = {"chinchilla": 1000, "conditional": 200, "throughput": 200, "accuracy": 200}
"""Bootstrap refits when not given: the batched Chinchilla refits are cheap, the rest loop."""

Rows = pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def get_kind(name: str) -> LawKind:
    if name not in KINDS:
        raise ArchscaleError(f"unknown law {name!r}: choose one of {sorted(KINDS)}")
    return KINDS[name]


def as_table(rows: Rows) -> pd.DataFrame:
    """A DataFrame, one row (a mapping) or many rows, with the derived features added."""
    if isinstance(rows, pd.DataFrame):
        table = rows
    elif isinstance(rows, Mapping):
        table = pd.DataFrame([dict(rows)])
    else:
        table = pd.DataFrame(list(rows))
    return add_features(table)


@dataclass(frozen=True)
class Law:
    """A fitted law; ``predict`` takes a run table (or rows) and returns one value per row."""

    kind: str
    """The form's name (chinchilla, conditional, throughput, accuracy)."""
    config: dict[str, Any]
    """The declared form: terms, target, options (JSON-able)."""
    coef_names: tuple[str, ...]
    """Coefficient names, in the order of ``coef``."""
    coef: np.ndarray
    """Point estimate (P)."""
    coef_samples: np.ndarray
    """Bootstrap refits (S x P); failed refits are NaN rows."""
    converged: bool
    """Whether the point fit met its optimizer's stopping rule."""
    validation: dict[str, Any] = field(default_factory=dict)
    """In-sample, held-out-scale and progressive metrics."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the runs came from (study and trial ids, or a file hash) and how they were read."""
    bootstrap: dict[str, Any] = field(default_factory=dict)
    """Seed, resample count and the fraction of refits that converged."""
    notes: tuple[str, ...] = ()
    """What the user should know about this fit."""
    version: str = archscale.__version__
    """archscale version that made the fit."""

    @property
    def law_kind(self) -> LawKind:
        return get_kind(self.kind)

    @property
    def target(self) -> str:
        return self.law_kind.target(self.config)

    @property
    def coefficients(self) -> dict[str, float]:
        return dict(zip(self.coef_names, self.coef.tolist(), strict=True))

    def coef_intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        if len(self.coef_samples) == 0:
            return {}
        lo, hi = percentile_interval(self.coef_samples, level)
        return {n: (float(a), float(b)) for n, a, b in zip(self.coef_names, lo, hi, strict=True)}

    def predict(self, rows: Rows) -> np.ndarray:
        return self.law_kind.predict(self.config, self.coef[None, :], as_table(rows))[0]

    def predict_samples(self, rows: Rows) -> np.ndarray:
        """Predictions of every bootstrap refit (S x n)."""
        if len(self.coef_samples) == 0:
            raise ArchscaleError("this law has no bootstrap samples: refit with n_boot > 0 "
                                 "(--n-boot) to get intervals")
        return self.law_kind.predict(self.config, self.coef_samples, as_table(rows))

    def predict_interval(self, rows: Rows, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        return percentile_interval(self.predict_samples(rows), level)


def _check_table(kind: LawKind, config: dict[str, Any], table: pd.DataFrame) -> None:
    """Refuse too few runs for the coefficients, or a single scale where the form needs more."""
    n_params = kind.n_params(config)
    if len(table) <= n_params:
        raise ArchscaleError(f"the {kind.name} law has {n_params} coefficients but the table has "
                             f"{len(table)} runs: it needs at least {n_params + 1}")
    if kind.min_scales > 1 and {"N", "D"} <= set(table.columns):  # else the kind names the gap
        n_scales = len(set(scale_labels(table)))
        n_tokens = table["D"].nunique()
        if n_scales < kind.min_scales or n_tokens < 2:
            raise ArchscaleError(
                f"the {kind.name} law needs runs at {kind.min_scales}+ model sizes and 2+ token "
                f"counts; the table has {n_scales} size(s) and {n_tokens} token count(s): add "
                "runs at other scales")


def _provenance(table: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"n_runs": len(table)}
    if {"study", "trial_id"} <= set(table.columns):
        out["studies"] = sorted(set(table["study"].astype(str)))
        out["trial_ids"] = [int(t) for t in table["trial_id"]]
    else:
        out["table_sha256"] = table_sha256(table)
    # the trained scales, so a prediction at a target N, D can state how far it extrapolates
    for name, column in (("n_range", "N"), ("d_range", "D")):
        if column in table.columns:
            values = pd.to_numeric(table[column], errors="coerce")
            out[name] = [float(values.min()), float(values.max())]
    return out


def fit_law(kind_name: str, table: pd.DataFrame, options: Mapping[str, Any] | None = None, *,
            n_boot: int | None = None, seed: int = 0, holdout_above: float | None = None,
            progressive: bool = True, provenance: Mapping[str, Any] | None = None) -> Law:
    """Fit, bootstrap (``n_boot`` resamples of the runs, seeded) and validate one law."""
    kind = get_kind(kind_name)
    config = kind.configure(dict(options or {}))
    table = add_features(table).reset_index(drop=True)
    _check_table(kind, config, table)
    estimate = kind.fit(table, config)

    n_boot = DEFAULT_N_BOOT[kind.name] if n_boot is None else int(n_boot)
    samples = np.empty((0, len(estimate.coef)))
    boot_info: dict[str, Any] = {"n": n_boot, "seed": seed}
    if n_boot > 0:
        samples, ok = kind.bootstrap(table, estimate.config, estimate,
                                     resample_counts(len(table), n_boot, seed))
        samples = np.where(np.isfinite(samples).all(axis=1, keepdims=True), samples, np.nan)
        boot_info["converged_fraction"] = float(np.mean(ok))

    def fit_predict(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
        _check_table(kind, config, train)
        part = kind.fit(train, config)
        if config.get("lopt") == "measured":  # the paper's protocol: a reference run per group
            test = test.assign(L_opt=conditional.group_best(test))
        return kind.predict(part.config, part.coef[None, :], test)[0]

    target = kind.target(config)
    fitted = kind.predict(estimate.config, estimate.coef[None, :], table)[0]
    checks: dict[str, Any] = {"in_sample": validation.prediction_metrics(
        fitted, table[target].to_numpy(dtype=float))}
    min_train = kind.n_params(config) + 1
    if len(set(scale_labels(table))) >= 2 or holdout_above is not None:
        checks["heldout"] = validation.heldout(table, target, fit_predict, min_train, holdout_above)
        if progressive:
            checks["progressive"] = validation.progressive(table, target, fit_predict, min_train)

    notes = list(estimate.notes)
    if not estimate.converged:
        notes.append("NOT CONVERGED: the optimizer stopped before its tolerance; check the data")
    if n_boot > 0 and boot_info["converged_fraction"] < 1:
        failed = 1 - boot_info["converged_fraction"]
        notes.append(f"{failed:.1%} of bootstrap refits did not converge")
    return Law(kind=kind.name, config=estimate.config, coef_names=estimate.names,
               coef=np.asarray(estimate.coef, dtype=np.float64), coef_samples=samples,
               converged=estimate.converged, validation=checks,
               provenance={**_provenance(table), **dict(provenance or {})},
               bootstrap=boot_info, notes=tuple(notes))

"""The run table laws fit: loading (DataFrame or CSV with a column mapping), derived features,
validation of the columns a law needs, scale groups, and the same features for any ArchSpec.

Canonical columns are those of docs/CONTRIBUTING.md. Derived here when missing: ``D`` from
``flops`` (by the trainer's FLOPs rule where the shape columns are present, else flops / 6N),
``d_over_sqrt_n`` (d_model / sqrt(N)), ``aspect`` (d_model / n_layers,
Bian et al. 2025a), ``r`` and ``gqa_group`` from the shape columns (through ArchSpec, where the
counting conventions live). A ``scale`` column names each run's model-size group; without one,
runs whose N lie within 10% of a neighbour share a scale.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archscale.arch.errors import SettingError
from archscale.arch.spec import SHAPE_COLUMNS, ArchSpec  # the columns that rebuild a run's shape

SCALE_GAP = 0.10
"""Neighbouring N values more than this relative gap apart start a new scale."""
SCALE_STEP = 0.5
"""Width (decades) of the scales along an axis other than N (``axis_scales``)."""


class TableError(SettingError):
    """A run table that cannot be fitted; the message names the column or rows and the fix (the
    settings it names, such as ``{columns}``, as a SettingError does)."""


def parse_columns(mapping: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"N=Model Size,D=tokens,loss=final_loss"`` -> {canonical: source column}."""
    if mapping is None or mapping == "":
        return {}
    if isinstance(mapping, Mapping):
        return dict(mapping)
    out = {}
    for item in mapping.split(","):
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise TableError(f"bad {{columns}} entry {item!r}: write CANONICAL=SOURCE pairs "
                             "separated by commas, e.g. N=n_params,D=train_tokens,loss=final_loss")
        out[name.strip()] = source.strip()
    return out


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def table_sha256(table: pd.DataFrame) -> str:
    """A stable hash of a table's contents (its CSV text)."""
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def load_table(source: pd.DataFrame | str | Path,
               columns: str | Mapping[str, str] | None = None) -> pd.DataFrame:
    """A run table with canonical names and derived features; rows not ``complete`` dropped."""
    if isinstance(source, pd.DataFrame):
        raw = source.copy()
    else:
        path = Path(source)
        if not path.is_file():
            raise TableError(f"no CSV file at {path}: give the path of an existing run table")
        try:
            raw = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise TableError(f"{path} is not a readable CSV: {err}") from None
    mapping = parse_columns(columns)
    missing = sorted(src for src in mapping.values() if src not in raw.columns)
    if missing:
        raise TableError(f"{{columns}} names {missing}, which the table lacks; its columns are "
                         f"{list(raw.columns)}")
    # copied, not renamed: a source column stays addressable by its own name (--holdout-by
    # budget after scale=budget)
    table = raw.assign(**{name: raw[src] for name, src in mapping.items()})
    if "status" in table.columns:
        table = table[table["status"].fillna("complete") == "complete"]
    return add_features(table.reset_index(drop=True))


def add_features(table: pd.DataFrame) -> pd.DataFrame:
    """Derive D, d_over_sqrt_n, aspect, r and gqa_group where the inputs allow and they lack."""
    table = table.copy()
    has = set(table.columns)
    if "D" not in has and {"flops", "N"} <= has:
        table["D"] = tokens_from_flops(table)
    if "d_over_sqrt_n" not in has and {"d_model", "N"} <= has:
        table["d_over_sqrt_n"] = table["d_model"] / np.sqrt(table["N"].astype(float))
    if "aspect" not in has and {"d_model", "n_layers"} <= has:
        table["aspect"] = table["d_model"] / table["n_layers"]
    if not {"r", "gqa_group"} <= has and set(SHAPE_COLUMNS) <= has:
        specs = row_specs(table)
        if "r" not in has:
            table["r"] = [s.r_mlp_attn for s in specs]
        if "gqa_group" not in has:
            table["gqa_group"] = [s.gqa_group for s in specs]
    return table


def collapse_duplicates(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The table without rows that repeat an earlier row in every column, and how many went: a
    run entered twice is one measurement, and counting it twice narrows every interval."""
    # cells that are containers (a study's spec or pick records) compare by their text
    comparable = table.map(lambda v: repr(v) if isinstance(v, dict | list) else v)
    repeated = comparable.duplicated()
    return table[~repeated].reset_index(drop=True), int(repeated.sum())


def training_flops(table: pd.DataFrame) -> pd.Series:
    """Training FLOPs of every row: the ``flops`` column, else D times the trainer's FLOPs per
    token (ArchSpec's train_flops_per_token: 6N plus attention) where the shape columns allow,
    else 6 N D (the rule of published tables that give only N and D)."""
    if "flops" in table.columns:
        return pd.to_numeric(table["flops"], errors="coerce")
    require_columns(table, ["N", "D"], "training FLOPs")
    if set(SHAPE_COLUMNS) <= set(table.columns):
        per_token = [s.train_flops_per_token() for s in row_specs(table)]
        return table["D"] * np.asarray(per_token, dtype=float)
    return 6.0 * table["N"] * table["D"]


def tokens_from_flops(table: pd.DataFrame) -> pd.Series:
    """D from training FLOPs by the rule the trainer counted them with (ArchSpec's
    train_flops_per_token: 6N plus attention) where the shape columns allow, else flops / 6N
    (the rule of published tables that give only N and FLOPs)."""
    if set(SHAPE_COLUMNS) <= set(table.columns):
        per_token = [s.train_flops_per_token() for s in row_specs(table)]
        return table["flops"] / np.asarray(per_token, dtype=float)
    return table["flops"] / (6.0 * table["N"])


def row_specs(table: pd.DataFrame) -> list[ArchSpec]:
    """The ArchSpec of every row (needs the shape columns)."""
    require_columns(table, SHAPE_COLUMNS, "shape-derived features")
    return [ArchSpec(**{k: int(row[k]) for k in SHAPE_COLUMNS})
            for row in table[list(SHAPE_COLUMNS)].to_dict("records")]


def require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TableError(f"{what} needs columns {missing}, which the table lacks (it has "
                         f"{list(table.columns)}): map them with {{columns}} (CANONICAL=SOURCE "
                         "pairs)")


def positive_values(table: pd.DataFrame, columns: Sequence[str], what: str,
                    positive: bool = True) -> dict[str, np.ndarray]:
    """The named columns as float arrays, refusing missing, NaN, infinite or (with ``positive``)
    non-positive values."""
    require_columns(table, columns, what)
    out = {}
    for name in columns:
        values = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | ((values <= 0) if positive else False))
        if bad.size:
            kind = "missing, NaN or non-positive" if positive else "missing or NaN"
            raise TableError(
                f"{what}: column {name!r} has {bad.size} {kind} values "
                f"(rows {bad[:5].tolist()}{'...' if bad.size > 5 else ''}): drop those runs or fix "
                "the column")
        out[name] = values
    return out


def scale_labels(table: pd.DataFrame) -> np.ndarray:
    """Each run's scale: the ``scale`` column, else clusters of N (gaps above SCALE_GAP split);
    one scale "all" for a table with neither (an accuracy table, say)."""
    if "scale" in table.columns:
        return table["scale"].astype(str).to_numpy()
    if "N" not in table.columns:
        return np.full(len(table), "all")
    n_params = positive_values(table, ["N"], "grouping runs by scale")["N"]
    order = np.argsort(n_params, kind="stable")
    cluster = np.cumsum(np.r_[0, np.diff(np.log(n_params[order])) > math.log1p(SCALE_GAP)])
    labels = np.empty(len(n_params), dtype=object)
    for k in np.unique(cluster):
        members = order[cluster == k]
        labels[members] = f"{np.median(n_params[members]):.3g}"
    return labels.astype(str)


def axis_values(table: pd.DataFrame, axis: str) -> np.ndarray:
    """Each row's value of ``axis``: a numeric column, or training FLOPs (``flops``, by the
    trainer's rule) or tokens per parameter (``tokens_per_param``, D / N) derived where absent."""
    if axis not in table.columns:
        if axis == "flops" and {"N", "D"} <= set(table.columns):
            return training_flops(table).to_numpy(dtype=float)
        if axis == "tokens_per_param" and {"N", "D"} <= set(table.columns):
            return (table["D"] / table["N"]).to_numpy(dtype=float)
        raise TableError(f"{{holdout_by}} {axis}: the table has no column {axis!r} (it has "
                         f"{list(table.columns)}); choose N, D, flops, tokens_per_param or "
                         "another numeric column")
    return pd.to_numeric(table[axis], errors="coerce").to_numpy(dtype=float)


def axis_scales(table: pd.DataFrame, axis: str) -> tuple[np.ndarray, list[str]]:
    """Scales along ``axis`` (``axis_values``): each run's label and the labels from smallest to
    largest. Scales are half-decade bins centred on 1, 3.16, 10, ... x 10^k, so a budget grid
    (1e19, 3e19, 1e20) puts one budget in each, and values that run on continuously (the FLOPs
    of runs not trained to set budgets) still give scales to extrapolate across."""
    values = positive_values(pd.DataFrame({axis: axis_values(table, axis)}), [axis],
                             "grouping runs by scale")[axis]
    centre = np.round(np.log10(values) / SCALE_STEP) * SCALE_STEP
    labels = np.array([f"{10**c:.3g}" for c in centre])
    return labels, [f"{10**c:.3g}" for c in np.unique(centre)]


def budget_scales(table: pd.DataFrame) -> bool:
    """Whether the scales are compute budgets (an isoFLOP design): every scale's runs share one
    training-FLOPs budget (within SCALE_GAP) while some scale holds several model sizes."""
    if "scale" not in table.columns or not ({"flops"} <= set(table.columns)
                                            or {"N", "D"} <= set(table.columns)):
        return False
    log_flops = np.log(training_flops(table).to_numpy(dtype=np.float64))
    if not np.all(np.isfinite(log_flops)):
        return False
    frame = pd.DataFrame({"scale": scale_labels(table), "flops": log_flops,
                          "N": np.round(np.log(table["N"].to_numpy(dtype=np.float64)), 3)
                          if "N" in table.columns else 0.0})
    by_scale = frame.groupby("scale")
    spread = by_scale["flops"].agg(np.ptp)
    return bool((spread <= math.log1p(SCALE_GAP)).all() and (by_scale["N"].nunique() > 1).any())


def scale_order(table: pd.DataFrame) -> list[str]:
    """Scale labels from smallest to largest: by compute budget where the scales are budgets
    (``budget_scales``), else by median N."""
    labels = scale_labels(table)
    if "N" not in table.columns:
        return sorted(str(s) for s in set(labels))
    size = (training_flops(table) if budget_scales(table) else table["N"]).to_numpy(np.float64)
    medians = {s: float(np.median(size[labels == s])) for s in np.unique(labels)}
    return [str(s) for s in sorted(medians, key=medians.get)]


def group_labels(table: pd.DataFrame) -> np.ndarray:
    """Runs compared fairly, as one string per run: its (scale, tokens) group, or its budget
    where the scales are compute budgets (the shapes and sizes that spend one budget)."""
    scales = scale_labels(table)
    if budget_scales(table):
        return scales.astype(str)
    tokens = table["D"].to_numpy(dtype=np.float64) if "D" in table.columns else np.zeros(len(table))
    return np.array([f"{s}|{t:.4g}" for s, t in zip(scales, tokens, strict=True)])


def spec_features(spec: ArchSpec, tokens: float, *, batch: int | None = None,
                  context: int | None = None, n_definition: str = "non_embedding"
                  ) -> dict[str, float]:
    """The canonical columns a law reads, for one shape trained on ``tokens`` tokens.

    ``batch`` and ``context`` set the throughput setting (tp_batch, tp_context); without them a
    throughput law uses the setting it was fitted at. ``n_definition`` is what the law's N
    counted (a law fitted on total parameters gets the shape's total as N).
    """
    row: dict[str, float] = {
        **spec.table_row(), "D": float(tokens), "aspect": spec.aspect,
        "flops": float(tokens) * spec.train_flops_per_token(),
    }
    if n_definition == "total":
        row["N"] = spec.params_total
        row["d_over_sqrt_n"] = spec.d_model / math.sqrt(spec.params_total)  # of that N
    elif n_definition != "non_embedding":
        raise TableError(f"N counts {n_definition!r}: choose non_embedding or total")
    if batch is not None:
        row["tp_batch"] = batch
    if context is not None:
        row["tp_context"] = context
    return row


def spec_table(specs: Sequence[ArchSpec], tokens: float | Sequence[float],
               **setting: Any) -> pd.DataFrame:
    """``spec_features`` of many shapes as one DataFrame (what ``Law.predict`` takes)."""
    tokens_list = [tokens] * len(specs) if np.isscalar(tokens) else list(tokens)
    if len(tokens_list) != len(specs):
        raise TableError(f"got {len(specs)} specs but {len(tokens_list)} token counts")
    rows = [spec_features(s, t, **setting) for s, t in zip(specs, tokens_list, strict=True)]
    return pd.DataFrame(rows)


Rows = pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def as_table(rows: Rows) -> pd.DataFrame:
    """A DataFrame, one row (a mapping) or many rows, with the derived features added."""
    if isinstance(rows, pd.DataFrame):
        table = rows
    elif isinstance(rows, Mapping):
        table = pd.DataFrame([dict(rows)])
    else:
        table = pd.DataFrame(list(rows))
    return add_features(table)

"""PNG figures of a fitted law: fit vs data, residuals, held-out predicted vs measured, and
U-curves of loss against each shape feature, per scale. Figures are drawn on matplotlib's Agg
canvas directly (no pyplot), so no display and no global backend switch are needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation

from archscale.laws.law import Law
from archscale.laws.table import as_table, scale_labels, scale_order

U_FEATURES = ("d_over_sqrt_n", "r", "aspect")
"""Shape features drawn as U-curves when the table has them (plus every declared term's)."""


def _scatter_by_scale(ax, table: pd.DataFrame, x: np.ndarray, y: np.ndarray) -> None:
    labels = scale_labels(table)
    for scale in scale_order(table):
        members = labels == scale
        ax.scatter(x[members], y[members], s=14, label=scale)
    if len(set(labels)) <= 12:
        ax.legend(title="scale", fontsize="small")


def _identity(ax, predicted: np.ndarray, measured: np.ndarray) -> None:
    lo = float(min(predicted.min(), measured.min()))
    hi = float(max(predicted.max(), measured.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("measured")


def _figure(n_axes: int = 1, width: float = 5.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n_axes, 4.5), layout="tight")
    return fig, list(fig.subplots(1, n_axes, squeeze=False)[0])


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def plot_fit(law: Law, table: pd.DataFrame, path: Path) -> Path:
    predicted, measured = law.predict(table), table[law.target].to_numpy(dtype=float)
    fig, (ax,) = _figure()
    _scatter_by_scale(ax, table, predicted, measured)
    _identity(ax, predicted, measured)
    ax.set_title(f"{law.kind} law: fit vs data ({law.target})")
    return _save(fig, path)


def plot_residuals(law: Law, table: pd.DataFrame, path: Path) -> Path:
    residual = table[law.target].to_numpy(dtype=float) - law.predict(table)
    x_name = "N" if "N" in table.columns else law.target
    fig, (ax,) = _figure(width=5.5)
    _scatter_by_scale(ax, table, table[x_name].to_numpy(dtype=float), residual)
    ax.axhline(0, color="gray", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(x_name)
    ax.set_ylabel(f"measured - predicted {law.target}")
    return _save(fig, path)


def plot_heldout(law: Law, path: Path) -> Path | None:
    rows = (law.validation.get("heldout") or {}).get("rows")
    if not rows:
        return None
    predicted, measured = np.array(rows["predicted"]), np.array(rows["measured"])
    fig, (ax,) = _figure()
    ax.scatter(predicted, measured, s=16)
    _identity(ax, predicted, measured)
    held = law.validation["heldout"]
    ax.set_title(f"held out ({held['rule']}): MSE {held['mse']:.3g}")
    return _save(fig, path)


def plot_u_curves(law: Law, table: pd.DataFrame, path: Path) -> Path | None:
    """Loss against each shape feature per scale: measured points, the law's predictions lines."""
    features = [t["feature"] for t in law.config.get("terms", [])]
    features += [f for f in U_FEATURES if f in table.columns and f not in features]
    if not features or law.target != "loss":
        return None
    predicted = law.predict(table)
    labels = scale_labels(table)
    groups = labels + "|" + table["D"].map("{:.3g}".format).to_numpy()
    fig, axes = _figure(len(features), width=4.5)
    for ax, feature in zip(axes, features, strict=True):
        x = table[feature].to_numpy(dtype=float)
        _scatter_by_scale(ax, table, x, table["loss"].to_numpy(dtype=float))
        for group in dict.fromkeys(groups):
            members = np.flatnonzero(groups == group)
            order = members[np.argsort(x[members])]
            ax.plot(x[order], predicted[order], color="black", lw=0.8, alpha=0.6)
        ax.set_xscale("log")
        # Label minor ticks too: a range under one decade would otherwise show no labels at all.
        ax.xaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_xlabel(feature)
        ax.set_ylabel("loss")
    fig.suptitle("U-curves: points measured, lines the law (one per scale and token count)")
    return _save(fig, path)


def save_plots(law: Law, table: pd.DataFrame, directory: str | Path,
               prefix: str = "") -> list[Path]:
    """Every figure that applies to this law and table, as PNGs ``<prefix><figure>.png`` in
    ``directory`` (a prefix lets several laws share one folder)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = as_table(table)
    made = [plot_fit(law, table, directory / f"{prefix}fit.png"),
            plot_residuals(law, table, directory / f"{prefix}residuals.png"),
            plot_heldout(law, directory / f"{prefix}heldout.png"),
            plot_u_curves(law, table, directory / f"{prefix}u_curves.png")]
    return [p for p in made if p is not None]

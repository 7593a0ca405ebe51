"""`archscale fit` and `archscale predict`: fit a law to runs, predict with a saved law."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from archscale.arch.errors import ArchscaleError
from archscale.arch.spec import load_spec
from archscale.laws import fit_law, load_law, load_table, save_law, spec_features
from archscale.laws.law import KINDS, Law
from archscale.laws.table import file_sha256, parse_columns


def _runs(study: str | None, storage: str | None, csv: Path | None,
          columns: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The run table and where it came from."""
    if (study is None) == (csv is None):
        raise ArchscaleError("give exactly one source of runs: --study NAME or --csv FILE")
    if csv is not None:
        table = load_table(csv, columns)
        return table, {"source": "csv", "path": str(csv), "sha256": file_sha256(csv),
                       "columns": parse_columns(columns)}
    # search (and Optuna) only when reading a study: laws itself never touches Optuna
    from archscale.search.study import open_study
    from archscale.search.table import trials_table

    handle = open_study(study, storage)
    table = load_table(trials_table(handle.study), columns)
    if table.empty:
        raise ArchscaleError(f"study {study!r} has no complete trials to fit yet")
    return table, {"source": "study", "study": study, "storage": handle.url}


def _drop_highest(table: pd.DataFrame, count: int) -> pd.DataFrame:
    if count <= 0:
        return table
    if "loss" not in table.columns or count >= len(table):
        raise ArchscaleError(f"--drop-highest-loss {count} needs a loss column and more runs")
    return table.drop(index=table["loss"].nlargest(count).index).reset_index(drop=True)


def _print_law(law: Law) -> None:
    table = Table(title=f"{law.kind} law ({law.target})")
    for column in ("coefficient", "value", "95% interval"):
        table.add_column(column)
    intervals = law.coef_intervals(0.95)
    for name, value in law.coefficients.items():
        lo, hi = intervals.get(name, (float("nan"), float("nan")))
        table.add_row(name, f"{value:.6g}", f"({lo:.4g}, {hi:.4g})" if name in intervals else "")
    Console().print(table)
    fitted = law.validation.get("in_sample", {})
    typer.echo(f"in-sample: MSE {fitted.get('mse', float('nan')):.4g}, mean relative error "
               f"{fitted.get('mean_relative_error', float('nan')):.3%}")
    held = law.validation.get("heldout")
    if held and "mse" in held:
        spearman = held.get("spearman_min")
        typer.echo(f"held out ({held['rule']}, {held['n_test']} runs): MSE {held['mse']:.4g}, "
                   f"mean relative error {held['mean_relative_error']:.3%}, min Spearman per "
                   f"group {'n/a' if spearman is None else f'{spearman:.3f}'}")
    elif held:
        typer.echo(f"held out: skipped ({held.get('skipped')})")
    for task in law.validation.get("progressive", []):
        if "mse" in task:
            typer.echo(f"  progressive -> {task['test_scale']}: MSE {task['mse']:.4g}, "
                       f"mean relative error {task['mean_relative_error']:.3%}")
    for note in law.notes:
        typer.echo(f"note: {note}")
    if not law.converged:
        typer.secho("WARNING: the fit did not converge", fg=typer.colors.YELLOW, err=True)


def fit(
    law: Annotated[str, typer.Option(help=f"Law form: {', '.join(KINDS)}.")],
    out: Annotated[Path, typer.Option(help="Where to write law.json.")],
    study: Annotated[str | None, typer.Option(help="Fit the complete trials of a study.")] = None,
    storage: Annotated[str | None, typer.Option(help="Study storage URL.")] = None,
    csv: Annotated[Path | None, typer.Option(help="Fit a run table CSV instead.")] = None,
    columns: Annotated[str | None, typer.Option(
        help="Map CSV columns: N=Model Size,D=tokens,loss=final_loss (also flops=, scale=, "
             "d_model=, ...).")] = None,
    terms: Annotated[str | None, typer.Option(
        help="Conditional law terms: feature:form,... (e.g. aspect:u_log_sq), JSON, or a JSON "
             "file; default d_over_sqrt_n:u_log_inv,r:u_log_inv.")] = None,
    combine: Annotated[str, typer.Option(help="Conditional: product or additive.")] = "product",
    lopt: Annotated[str, typer.Option(
        help="Conditional L_opt: joint, chinchilla, given (with --lopt-law) or "
             "measured.")] = "joint",
    lopt_law: Annotated[Path | None, typer.Option(
        help="Chinchilla law.json for --lopt given.")] = None,
    robust: Annotated[str | None, typer.Option(
        help="Conditional robust loss: soft_l1, huber, cauchy or arctan (default plain least "
             "squares).")] = None,
    target: Annotated[str | None, typer.Option(
        help="Throughput: decode or prefill; accuracy: val_accuracy or task_accuracy.")] = None,
    holdout_above: Annotated[float | None, typer.Option(
        help="Validate by fitting on N below this and predicting the rest.")] = None,
    n_boot: Annotated[int | None, typer.Option(
        help="Bootstrap refits (default 1000 for chinchilla, 200 otherwise; 0 for none).")] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    drop_highest_loss: Annotated[int, typer.Option(
        help="Drop the K runs with the highest loss first (Epoch's replication drops 5).")] = 0,
    progressive: Annotated[bool, typer.Option(
        help="Also run the progressive scale tasks.")] = True,
    plot: Annotated[Path | None, typer.Option(help="Folder for PNG figures.")] = None,
) -> None:
    """Fit a law to runs, validate it, and save it as law.json."""
    table, provenance = _runs(study, storage, csv, columns)
    table = _drop_highest(table, drop_highest_loss)
    if drop_highest_loss:
        provenance["dropped_highest_loss"] = drop_highest_loss
    options: dict[str, Any] = {"terms": terms, "combine": combine, "lopt": lopt, "robust": robust,
                               "target": target}
    if lopt_law is not None:
        given = load_law(lopt_law)
        if given.kind != "chinchilla":
            raise ArchscaleError(f"--lopt-law {lopt_law} holds a {given.kind} law; it must be a "
                                 "chinchilla law")
        options["chinchilla"] = given.coef.tolist()
        provenance["lopt_law"] = str(lopt_law)
    fitted = fit_law(law, table, options, n_boot=n_boot, seed=seed, holdout_above=holdout_above,
                     progressive=progressive, provenance=provenance)
    save_law(fitted, out)
    _print_law(fitted)
    typer.echo(f"saved {out}")
    if plot is not None:
        from archscale.laws.plots import save_plots

        for path in save_plots(fitted, table, plot):
            typer.echo(f"plot {path}")


def predict(
    law_file: Annotated[Path, typer.Argument(help="A law.json written by `archscale fit`.")],
    spec: Annotated[str | None, typer.Option(help="Preset name or spec JSON file.")] = None,
    tokens: Annotated[float | None, typer.Option(help="Training tokens D.")] = None,
    loss: Annotated[float | None, typer.Option(help="Validation loss (accuracy laws).")] = None,
    batch: Annotated[int | None, typer.Option(help="Throughput batch (default: fitted).")] = None,
    context: Annotated[int | None, typer.Option(
        help="Throughput context (default: fitted).")] = None,
    level: Annotated[float, typer.Option(help="Interval level.")] = 0.95,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict with a saved law for one shape (and token count), with its bootstrap interval."""
    law = load_law(law_file)
    row: dict[str, Any] = {}
    if spec is not None:
        row.update(spec_features(load_spec(spec), tokens or 0.0, batch=batch, context=context))
    if law.kind in ("chinchilla", "conditional") and not (tokens and tokens > 0):
        raise ArchscaleError(f"a {law.kind} law needs --tokens (training tokens, e.g. 1e11)")
    if law.kind in ("chinchilla", "conditional", "throughput") and spec is None:
        raise ArchscaleError(f"a {law.kind} law needs --spec (a preset or spec JSON)")
    if loss is not None:
        row["loss"] = loss
    elif law.kind == "accuracy":
        raise ArchscaleError("an accuracy law needs --loss (validation loss)")
    value = float(law.predict(row)[0])
    interval = None
    if len(law.coef_samples):
        lo, hi = law.predict_interval(row, level)
        interval = (float(lo[0]), float(hi[0]))
    if as_json:
        typer.echo(json.dumps({"target": law.target, "prediction": value, "level": level,
                               "interval": interval}))
        return
    shown = f"{law.target}: {value:.6g}"
    if interval is not None and np.all(np.isfinite(interval)):
        shown += f"  ({level:.0%} interval {interval[0]:.6g} - {interval[1]:.6g})"
    typer.echo(shown)

"""`archscale fit` and `archscale predict`: fit a law to runs, predict with a saved law."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from archscale import environment
from archscale.arch.errors import ArchscaleError
from archscale.arch.frameworks import load_spec
from archscale.cli.outputs import check_writable, save_or_fallback
from archscale.cli.tables import print_table
from archscale.laws.levels import LEVELS
from archscale.laws.registry import BUILTIN_KINDS

if TYPE_CHECKING:
    import pandas as pd

    from archscale.laws.kind import LawKind
    from archscale.laws.law import Law

# numpy, pandas and the laws load inside the commands: `--help` stays fast


def _runs(study: str | None, storage: str | None, csv: Path | None,
          columns: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The run table and where it came from."""
    if (study is None) == (csv is None):
        raise ArchscaleError("give exactly one source of runs: --study NAME or --csv FILE")
    from archscale.laws.table import file_sha256, load_table, parse_columns

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
    return table, {"source": "study", "study": study, "storage": handle.shown_url}


def _kind_options(kind: LawKind, given: dict[str, tuple[str, Any]], provenance: dict[str, Any]
                  ) -> dict[str, Any]:
    """The options ``kind`` reads from ``given`` (option -> (flag, value)), refusing flags it
    does not read; a law-file option (the kind's ``law_options``) is loaded and checked, and
    passes that law's coefficients."""
    stray = sorted(flag for option, (flag, value) in given.items()
                   if value is not None and option not in kind.options)
    if stray:
        raise ArchscaleError(f"the {kind.name} law takes no {', '.join(stray)}: drop it (its "
                             f"options: {', '.join(kind.options) or 'none'})")
    options = {option: value for option, (_, value) in given.items() if value is not None}
    from archscale.laws import load_law

    for option, needed in kind.law_options.items():
        if option in options:
            flag, path = given[option]
            law = load_law(path)
            if law.kind != needed:
                raise ArchscaleError(f"{flag} {path} holds a {law.kind} law; it must be a "
                                     f"{needed} law")
            options[option] = law.coef.tolist()
            provenance[flag.lstrip("-").replace("-", "_")] = str(path)
    return options


def _drop_highest(table: pd.DataFrame, count: int) -> pd.DataFrame:
    if count <= 0:
        return table
    if "loss" not in table.columns or count >= len(table):
        raise ArchscaleError(f"--drop-highest-loss {count} needs a loss column and more runs")
    return table.drop(index=table["loss"].nlargest(count).index).reset_index(drop=True)


def _print_law(law: Law) -> None:
    intervals = law.coef_intervals(0.95)
    rows = [(name, f"{value:.6g}", "({:.4g}, {:.4g})".format(*intervals[name])
             if name in intervals else "") for name, value in law.coefficients.items()]
    print_table(rows, ["coefficient", "value", "95% interval"],
                title=f"{law.kind} law ({law.target})")
    fitted = law.validation.get("in_sample", {})
    typer.echo(f"in-sample: MSE {fitted.get('mse', float('nan')):.4g}, mean relative error "
               f"{fitted.get('mean_relative_error', float('nan')):.3%}")
    held = law.validation.get("heldout")
    if held and "mse" in held:
        spearman = held.get("spearman_min")
        coverage = held.get("coverage_90")
        coverage = None if coverage is None or coverage != coverage else coverage  # NaN: none
        typer.echo(f"held out ({held['rule']}, {held['n_test']} runs): MSE {held['mse']:.4g}, "
                   f"mean relative error {held['mean_relative_error']:.3%}, min Spearman per "
                   f"group {'n/a' if spearman is None else f'{spearman:.3f}'}"
                   + ("" if coverage is None else f", 90% prediction intervals cover "
                      f"{coverage:.0%}"))
    elif held:
        typer.echo(f"held out: skipped ({held.get('skipped')})")
    for task in law.validation.get("progressive", []):
        if "mse" in task:
            typer.echo(f"  progressive -> {task['test_scale']}: MSE {task['mse']:.4g}, "
                       f"mean relative error {task['mean_relative_error']:.3%}")
    model = law.error_model
    if model is not None and model.source is None:
        typer.secho(f"prediction intervals: {model.label}", fg=typer.colors.YELLOW, err=True)
    elif model is not None:
        typer.echo(f"prediction intervals: {model.label}; run scatter {model.sigma_run:.3g} "
                   f"({model.space} units)")
    for note in law.notes:
        typer.echo(f"note: {note}")
    duplicates = law.provenance.get("duplicates_collapsed")
    if duplicates:
        typer.secho(f"warning: {duplicates} row(s) repeated an earlier row in every column and "
                    "were collapsed into one (a run counted twice would narrow every interval)",
                    fg=typer.colors.YELLOW, err=True)
    for problem in law.problems:
        typer.secho(f"not identified: {problem.message}", fg=typer.colors.YELLOW, err=True)


def _write_heldout(law: Law, table: pd.DataFrame, out: Path) -> Path | None:
    """The held-out rows of a ``--holdout-above`` fit, as the table gave them (run names and
    all), each with its prediction and prediction interval."""
    rows = (law.validation.get("heldout") or {}).get("rows")
    if not rows or "lower" not in rows:
        return None
    from archscale.laws.table import collapse_duplicates

    fitted_table, _ = collapse_duplicates(table.reset_index(drop=True))  # as fit_law indexes it
    path = out.with_name(f"{out.stem}.heldout.csv")
    fitted_table.iloc[rows["index"]].assign(
        prediction=rows["predicted"], lower=rows["lower"], upper=rows["upper"],
        extrapolation=rows["distance"]).to_csv(path, index=False)
    return path


def fit(
    out: Annotated[Path, typer.Option(help="Where to write law.json.")],
    law: Annotated[str | None, typer.Option(
        help=f"Law form: {', '.join(BUILTIN_KINDS)}, a packaged form (e.g. scalebench/moe) or "
             "one registered under the archscale.laws entry points.")] = None,
    form: Annotated[Path | None, typer.Option(
        help="A form of your own: a YAML (or JSON) file declaring name, expression, inputs, "
             "target, coefficients (bounds, starts), space and loss.")] = None,
    study: Annotated[str | None, typer.Option(help="Fit the complete trials of a study.")] = None,
    storage: Annotated[str | None, typer.Option(help="Study storage URL.", envvar=environment.STORAGE)] = None,
    csv: Annotated[Path | None, typer.Option(help="Fit a run table CSV instead.")] = None,
    columns: Annotated[str | None, typer.Option(
        help="Map CSV columns: N=Model Size,D=tokens,loss=final_loss (also flops=, scale=, "
             "d_model=, ...).")] = None,
    terms: Annotated[str | None, typer.Option(
        help="Conditional law terms: feature:form,... (e.g. aspect:u_log_sq), JSON, or a JSON "
             "file; default d_over_sqrt_n:u_log_inv,r:u_log_inv.")] = None,
    combine: Annotated[str | None, typer.Option(
        help="Conditional: product (default) or additive.")] = None,
    lopt: Annotated[str | None, typer.Option(
        help="Conditional L_opt: joint (default), chinchilla, given (with --lopt-law) or "
             "measured.")] = None,
    lopt_law: Annotated[Path | None, typer.Option(
        help="Chinchilla law.json for --lopt given.")] = None,
    robust: Annotated[str | None, typer.Option(
        help="Conditional robust loss: soft_l1, huber, cauchy or arctan (default plain least "
             "squares).")] = None,
    target: Annotated[str | None, typer.Option(
        help="Throughput: decode or prefill; accuracy: val_accuracy or task_accuracy.")] = None,
    holdout_above: Annotated[float | None, typer.Option(
        help="Hold out the runs at or above this value (of --holdout-by): the law is fitted on "
             "the rest, and the held-out rows are saved with their prediction intervals.")] = None,
    holdout_by: Annotated[str, typer.Option(
        help="Column --holdout-above applies to: N, D, flops, tokens_per_param or any numeric "
             "column; the progressive refits that calibrate intervals extrapolate along it "
             "too.")] = "N",
    n_definition: Annotated[str, typer.Option(
        help="What the table's N counts: non_embedding (the convention) or total; predict "
             "--spec converts a shape to it.")] = "non_embedding",
    noise_floor: Annotated[float | None, typer.Option(
        help="Measured seed-to-seed scatter of the loss (relative), the least scatter "
             "prediction intervals assume.")] = None,
    allow_degenerate: Annotated[bool, typer.Option(
        help="Save a law even if the runs do not identify it (it is marked so).")] = False,
    n_boot: Annotated[int | None, typer.Option(
        help="Bootstrap refits (default: the form's, 1000 for chinchilla, 200 for most; 0 for "
             "none).")] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    drop_highest_loss: Annotated[int, typer.Option(
        help="Drop the K runs with the highest loss first (Epoch's replication drops 5).")] = 0,
    progressive: Annotated[bool, typer.Option(
        help="Also run the progressive scale tasks.")] = True,
    plot: Annotated[Path | None, typer.Option(help="Folder for PNG figures.")] = None,
) -> None:
    """Fit a law to runs, validate it, and save it as law.json."""
    check_writable(out)
    check_writable(plot, "--plot", folder=True)
    from archscale.laws import fit_law, save_law
    from archscale.laws.registry import get_kind

    if (law is None) == (form is None):
        raise ArchscaleError("give exactly one law: --law NAME (a built-in or packaged form) or "
                             "--form FILE (a form of your own)")
    kind = get_kind(law if form is None else form)
    table, provenance = _runs(study, storage, csv, columns or kind.default_columns or None)
    table = _drop_highest(table, drop_highest_loss)
    if drop_highest_loss:
        provenance["dropped_highest_loss"] = drop_highest_loss
    if form is not None:
        provenance["form_file"] = str(form)
    options = _kind_options(kind, {"terms": ("--terms", terms), "combine": ("--combine", combine),
                                   "lopt": ("--lopt", lopt), "robust": ("--robust", robust),
                                   "target": ("--target", target),
                                   "chinchilla": ("--lopt-law", lopt_law)}, provenance)
    fitted = fit_law(kind, table, options, n_boot=n_boot, seed=seed, holdout_above=holdout_above,
                     holdout_by=holdout_by, progressive=progressive, provenance=provenance,
                     noise_floor=noise_floor, n_definition=n_definition)
    _print_law(fitted)
    if fitted.problems and not allow_degenerate:
        raise ArchscaleError(f"the {fitted.kind} law is not identified by these runs "
                             f"({len(fitted.problems)} problem(s) above) and was not saved: add "
                             "the runs named there, or pass --allow-degenerate to save it marked")
    out = save_or_fallback(lambda path: save_law(fitted, path), out, "the fitted law")
    typer.echo(f"saved {out}")
    heldout_csv = None if holdout_above is None else _write_heldout(fitted, table, out)
    if heldout_csv is not None:
        typer.echo(f"held-out rows with 90% prediction intervals: {heldout_csv}")
    if plot is not None:
        from archscale.laws.plots import save_plots

        for path in save_plots(fitted, table, plot):
            typer.echo(f"plot {path}")


def _predict_csv(law: Law, csv: Path, out: Path | None, columns: str | None,
                 level: float) -> None:
    if out is None:
        raise ArchscaleError("--csv needs --out (the CSV to write with prediction, lower, upper)")
    import numpy as np

    from archscale.laws.query import score
    from archscale.laws.table import load_table

    mapping = columns if columns is not None else law.provenance.get("columns") or None
    table = load_table(csv, mapping)
    if table.empty:
        raise ArchscaleError(f"{csv} has no complete rows to predict")
    scored = table.assign(**score(law, table, level))
    out = save_or_fallback(lambda path: scored.to_csv(path, index=False) or path, out,
                           "the predictions")
    _warn_calibration(law, scored["lower"])
    calibrated = law.error_model is not None and law.error_model.source is not None
    line = f"predicted {len(scored)} rows of {csv} -> {out} " + (
        f"({level:.0%} prediction intervals, {law.error_model.label})" if calibrated
        else "(no prediction intervals: lower and upper are empty)")
    if law.target in scored.columns and calibrated:
        measured = scored[law.target].to_numpy(dtype=float)
        inside = np.mean((scored["lower"] <= measured) & (measured <= scored["upper"]))
        error = np.mean(np.abs(scored["prediction"] - measured) / np.abs(measured))
        line += f"; measured {law.target}: mean relative error {error:.2%}, coverage {inside:.0%}"
    typer.echo(line)


def _warn_calibration(law: Law, lower: Any = None) -> None:
    """Say on stderr when no interval holds (for the law, or for some rows of ``lower``), or
    when only public sweeps calibrate it."""
    model = law.error_model
    missing = 0 if lower is None else int(sum(v != v for v in lower))
    if model is not None and model.source is not None and missing:
        typer.secho(f"warning: no prediction interval for {missing} row(s): {model.reason}",
                    fg=typer.colors.YELLOW, err=True)
    if model is None or model.source is None:
        reason = "no calibration (fitted by an older archscale)" if model is None else model.reason
        typer.secho(f"warning: no prediction intervals: {reason}", fg=typer.colors.YELLOW,
                    err=True)
    elif model.source != "these runs":
        typer.secho(f"warning: these runs cannot calibrate extrapolation error; the intervals "
                    f"are {model.label}", fg=typer.colors.YELLOW, err=True)


def _parse_ks(text: str | None) -> list[int] | None:
    """--k 1,8,32 -> [1, 8, 32]; one error for anything but positive integers."""
    if text is None:
        return None
    try:
        ks = [int(part) for part in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise ArchscaleError(f"--k {text!r}: give positive integers separated by commas, e.g. "
                             "1,8,32")
    return ks


MAX_COMPUTE_EXTRAPOLATION = 1e6
"""A compute budget more than this many times the fitted runs' largest 6 N D is refused: a
power law read that far past its data answers with a number nobody could defend."""


def _compute_extrapolation(law: Law, compute: float, result: dict[str, Any]) -> dict[str, float]:
    """How far ``compute`` and its N*, D* lie beyond the fitted runs (factors > 1 only), or a
    refusal past ``MAX_COMPUTE_EXTRAPOLATION``."""
    n_range, d_range = law.provenance.get("n_range"), law.provenance.get("d_range")
    if not (n_range and d_range):
        return {}
    largest = 6 * n_range[1] * d_range[1]  # no run used more than this
    factor = compute / largest
    if factor > MAX_COMPUTE_EXTRAPOLATION:
        raise ArchscaleError(f"--compute {compute:.3g} is {factor:.3g}x the largest compute this "
                             f"law was fitted on (6 N D <= {largest:.3g} FLOPs): past "
                             f"{MAX_COMPUTE_EXTRAPOLATION:.0e}x it cannot be answered; give a "
                             "budget nearer the runs, or fit on larger ones")
    factors = {"compute": factor, "N": result["N"] / n_range[1], "D": result["D"] / d_range[1]}
    return {k: v for k, v in factors.items() if v > 1}


def _predict_compute(law: Law, compute: float, as_json: bool) -> None:
    from archscale.laws.query import compute_optimal_allocation

    result = compute_optimal_allocation(law, compute)
    beyond = _compute_extrapolation(law, compute, result)
    if as_json:
        typer.echo(json.dumps({**result, "extrapolation": beyond}))
        return
    typer.echo(f"compute-optimal at C = {compute:.4g} FLOPs (C = 6 N D; 95% intervals of the "
               "law's mean, bootstrap):")
    for key, label in (("N", "N*"), ("D", "D*"), ("tokens_per_param", "D*/N*")):
        interval = result.get(f"{key}_interval_95")
        shown = "" if interval is None else f"  (95% {interval[0]:.4g} - {interval[1]:.4g})"
        typer.echo(f"  {label} = {result[key]:.4g}{shown}")
    if beyond:
        typer.secho("extrapolation: " + ", ".join(
            f"{'C' if k == 'compute' else k + '*'} is {v:.3g}x the largest fitted"
            for k, v in beyond.items()), fg=typer.colors.YELLOW, err=True)


def predict(
    law_file: Annotated[Path, typer.Argument(help="A law.json written by `archscale fit`.")],
    spec: Annotated[str | None, typer.Option(help="Preset name or spec JSON file.")] = None,
    tokens: Annotated[float | None, typer.Option(help="Training tokens D.")] = None,
    loss: Annotated[float | None, typer.Option(
        help="Validation loss (accuracy laws, passk laws of the loss).")] = None,
    k: Annotated[str | None, typer.Option(
        "--k", help="passk laws: samples per request, e.g. 1,8,32 (one prediction each).")] = None,
    csv: Annotated[Path | None, typer.Option(
        help="Score every row of a run table CSV (with --out).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="--csv output: the rows plus prediction, lower, upper (prediction interval), "
             "mean_lower, mean_upper (95% interval of the law's mean).")] = None,
    columns: Annotated[str | None, typer.Option(
        help="Map --csv columns: N=n_params,D=train_tokens,... (as for fit).")] = None,
    compute: Annotated[float | None, typer.Option(
        help="Chinchilla law: compute-optimal N*, D* and D*/N* at this many FLOPs.")] = None,
    batch: Annotated[int | None, typer.Option(help="Throughput batch (default: fitted).")] = None,
    context: Annotated[int | None, typer.Option(
        help="Throughput context (default: fitted).")] = None,
    level: Annotated[float, typer.Option(help="Prediction-interval level.")] = LEVELS.prediction,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict with a saved law: one shape, a whole CSV, or the compute-optimal N and D."""
    check_writable(out)
    for flag, value in (("--tokens", tokens), ("--loss", loss), ("--compute", compute)):
        if value is not None and not math.isfinite(value):
            raise ArchscaleError(f"{flag} {value} cannot be answered: give a finite number")
    from archscale.laws import load_law
    from archscale.laws.query import query_row, score

    law = load_law(law_file)
    for problem in law.problems:
        typer.secho(f"warning: this law is not identified: {problem.message}",
                    fg=typer.colors.YELLOW, err=True)
    if compute is not None:
        _predict_compute(law, compute, as_json)
        return
    if csv is not None:
        _predict_csv(law, csv, out, columns, level)
        return
    table, notes = query_row(law, None if spec is None else load_spec(spec), tokens, loss, batch,
                             context, _parse_ks(k))
    for note in notes:
        typer.echo(f"note: {note}")
    scored = score(law, table, level)
    rows = [{name: float(v[i]) for name, v in scored.items()} for i in range(len(table))]
    if "k" in table.columns:
        rows = [{"k": int(n), **row} for n, row in zip(table["k"], rows, strict=True)]
    if as_json:
        model = law.error_model
        head = {"target": law.target, "identified": law.identified, "level": level,
                "calibration": None if model is None else model.label}
        rows = [{name: None if v != v else v for name, v in row.items()} for row in rows]
        typer.echo(json.dumps({**head, **rows[0]} if len(rows) == 1 else {**head, "rows": rows}))
        return
    _warn_calibration(law, [row["lower"] for row in rows])
    for row in rows:
        at_k = "" if "k" not in row else f" (k = {row['k']})"
        shown = (f"{law.target}{at_k}: {row['prediction']:.6g}  (" + (
            "no prediction interval" if row["lower"] != row["lower"] else
            f"{level:.0%} prediction interval {row['lower']:.6g} - {row['upper']:.6g}"))
        if "mean_lower" in row:
            shown += f"; 95% interval of the law's mean {row['mean_lower']:.6g} - " \
                     f"{row['mean_upper']:.6g}"
        typer.echo(shown + ")")

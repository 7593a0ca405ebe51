"""What ``archscale substitute`` and the demo write about a ``Substitution``, and the pass@k law's
held-out check at every k.

Layout of ``<out>/``::

    substitution.csv          every candidate shape at every k: pass@k, its interval, the costs
    substitution.json         the points that reach the target, the cheapest, the floor, provenance
    substitution.png          least total cost against the target pass rate, one curve per k
    points/N<params>-k<k>/recommendations.json   each point as a recommendation (`archscale export`)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from archscale.arch.errors import ArchscaleError
from archscale.decide.options import MeasureSettings
from archscale.decide.recommend import SearchSpace, save_recommendation
from archscale.decide.substitute import (
    Demand,
    Substitution,
    candidate_shapes,
    cost_curves,
    passk_results,
    passk_rows,
    predict_pass,
    substitute,
)
from archscale.decide.throughput_models import ThroughputModel
from archscale.laws import Law, fit_law, save_law
from archscale.laws import intervals as interval_lib
from archscale.laws.passk import TARGET, fit_beta, fit_power
from archscale.laws.table import scale_labels, scale_order
from archscale.search.noise import noise_floor, seed_groups
from archscale.search.study import StudyHandle
from archscale.sweeps.passk import pass_at_k

CURVE_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""The k drawn as curves in the figure (those up to max_k)."""


def table(sub: Substitution) -> pd.DataFrame:
    """One row per candidate shape and k."""
    rows = []
    for i, spec in enumerate(sub.specs):
        for j, k in enumerate(sub.ks):
            train, inference = sub.demand.cost(spec, sub.tokens[i], k)
            rows.append({"params": spec.params_nonembed, "d_model": spec.d_model,
                         "n_layers": spec.n_layers, "n_heads": spec.n_heads,
                         "n_kv_heads": spec.n_kv_heads, "d_ff": spec.d_ff,
                         "tokens": sub.tokens[i], "k": k,
                         "pass_at_k": sub.pass_SxK[i, j], "pass_low_90": sub.low_SxK[i, j],
                         "pass_high_90": sub.high_SxK[i, j],
                         "reaches_target": bool(sub.pass_SxK[i, j] >= sub.target_pass),
                         "train_flops": train, "inference_flops": inference,
                         "total_flops": train + inference})
    return pd.DataFrame(rows)


def plot(sub: Substitution, path: Path) -> Path:
    """Least total FLOPs against the target pass rate, one curve per k, the target marked."""
    ks = [k for k in CURVE_KS if k <= sub.ks[-1]]
    targets = np.linspace(0.01, 0.99, 197)
    fig = Figure(figsize=(6.5, 4.5), layout="tight")
    ax = fig.subplots()
    for k, cost in cost_curves(sub, targets, ks).items():
        ax.plot(targets, cost, label=f"k = {k}")
    ax.axvline(sub.target_pass, color="gray", ls="--", lw=1, label="target")
    if sub.cheapest is not None:
        ax.plot([sub.target_pass], [sub.cheapest.total_flops], "k*", ms=12,
                label=f"cheapest: N {sub.specs[sub.cheapest.shape].params_nonembed:,}, "
                      f"k {sub.cheapest.k}")
    ax.set_yscale("log")
    ax.set_xlabel("target pass rate (predicted pass@k)")
    ax.set_ylabel(f"training + {sub.demand.requests:.3g} requests, FLOPs")
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write(sub: Substitution, out: Path) -> dict[str, Path]:
    """The files of the module docstring; their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "substitution.csv", "json": out / "substitution.json"}
    table(sub).to_csv(paths["table"], index=False)
    paths["json"].write_text(json.dumps(sub.to_dict(), indent=1, default=float) + "\n")
    paths["figure"] = plot(sub, out / "substitution.png")
    for point in sub.points:
        rec = sub.recommendations[point.shape]
        described = {**sub.point_dict(point), "target_pass": sub.target_pass,
                     "demand": dataclasses.asdict(sub.demand)}
        rec = dataclasses.replace(rec, provenance={**rec.provenance, "substitution": described})
        name = f"N{described['params']}-k{point.k}"
        paths[name] = save_recommendation(rec, out / "points" / name)
    return paths


def heldout_by_k(law: Law, rows: pd.DataFrame) -> dict[str, Any]:
    """The law's own held-out check (fitted without the largest trained scale, which it
    predicts from the runs' measured inputs) at every k and over all."""
    held = law.validation.get("heldout") or {}
    if "rows" not in held or "lower" not in held["rows"]:
        return {"skipped": held.get("skipped", "no held-out scale")}
    cells = held["rows"]
    k = rows["k"].to_numpy()[np.asarray(cells["index"])]
    return {"rule": held["rule"], "n_train": held["n_train"], "n_test": held["n_test"],
            "calibration": held.get("interval_method"),
            **_by_k(k, *(np.asarray(cells[c]) for c in ("predicted", "measured", "lower",
                                                         "upper")))}


def _by_k(k: np.ndarray, predicted: np.ndarray, measured: np.ndarray, lower: np.ndarray,
          upper: np.ndarray) -> dict[str, Any]:
    """Mean relative error and 90% interval coverage over all rows and at every k (coverage None
    where no calibration gives an interval)."""
    frame = pd.DataFrame({"k": k, "predicted": predicted, "measured": measured, "lower": lower,
                          "upper": upper})

    def scores(rows: pd.DataFrame) -> dict[str, Any]:
        return {"n": len(rows),
                "mean_relative_error": float(np.mean(np.abs(rows.predicted / rows.measured - 1))),
                "coverage_90": _or_none(interval_lib.coverage(rows.lower, rows.upper,
                                                              rows.measured))}

    return {**scores(frame), "by_k": [{"k": int(kk), **scores(g)} for kk, g in frame.groupby("k")]}


def heldout_chain(runs: pd.DataFrame, run_table: pd.DataFrame, loss_options: dict[str, Any],
                  law: Law, n_boot: int = 100, seed: int = 0) -> dict[str, Any]:
    """pass@k of the largest trained scale predicted from the smaller ones, end to end: the
    conditional loss law and the pass@k law (``law``'s form) refitted without that scale, the
    loss law predicting each held-out run's loss (and its interval) from its shape, N and D,
    the pass@k law its pass@k from there (``predict_pass``). For a law of N and D the loss is
    not read, and this is the law's own held-out check."""
    largest = float(runs["scale"].max())
    rule = f"scale {largest:.3g} held out from both laws; its loss predicted"
    options = {"n_boot": n_boot, "seed": seed, "holdout_above": largest, "holdout_by": "scale"}
    loss_law = fit_law("conditional", run_table, loss_options, **options)
    test = runs[runs["scale"] >= largest].reset_index(drop=True)
    loss = loss_law.predict(test)
    if not np.isfinite(loss).all():  # a designed study may train few runs below that scale
        below = run_table[run_table["scale"] < largest]
        # the reason the refit's intervals are withheld names what leaves it undetermined
        why = loss_law.error_model.reason or next(
            (p.message for p in loss_law.problems), "its fit failed")
        return {"rule": rule, "skipped": (
            f"the loss law refitted on the {len(below)} runs below scale {largest:.3g} (at "
            f"{below['scale'].nunique()} scales) predicts no loss for its runs ({why}): train "
            "the sweep's passk: slice at more scales")}
    passk_law = fit_law("passk", runs, law.config | {"ref": None}, **options)
    low, high = loss_law.prediction_interval(test)
    rows = test.assign(loss=loss, loss_low=low, loss_high=high)
    predicted, lower, upper = predict_pass(passk_law, rows)
    return {"rule": rule,
            "loss_mean_relative_error": float(np.mean(np.abs(rows["loss"] / test["loss"] - 1))),
            "calibration": passk_law.error_model.label,
            **_by_k(test["k"].to_numpy(), predicted, test["pass_at_k"].to_numpy(), lower,
                    upper)}


def coverage_forecast(correct: Sequence[int], n: int, n_fit: int, seed: int = 0
                      ) -> dict[str, Any]:
    """One run's coverage laws held out in k (Schaeffer et al.'s test): keep ``n_fit`` of each
    problem's ``n`` samples (drawn without replacement, seeded: a hypergeometric share of its
    passing ones), fit Brown et al.'s power law to pass@1..n_fit of those and the Beta law to
    their counts, and forecast pass@k for k = n_fit + 1..n, which Chen's estimator on all n
    samples measures. Returns the forecast k, the measured pass@k, and per form its forecast and
    mean relative error."""
    correct = np.asarray(correct, dtype=np.int64)
    if not 2 <= n_fit < n:
        raise ArchscaleError(f"a coverage forecast from {n_fit} of {n} samples needs "
                             "2 <= n_fit < n")
    kept = np.random.default_rng(seed).hypergeometric(correct, n - correct, n_fit)
    fit_k, ks = np.arange(1, n_fit + 1), np.arange(n_fit + 1, n + 1)
    measured = np.array([np.mean(pass_at_k(n, correct, k)) for k in ks])
    early = np.array([np.mean(pass_at_k(n_fit, kept, k)) for k in fit_k])
    out: dict[str, Any] = {"n_fit": n_fit, "k": ks.tolist(), "measured": measured.tolist()}
    for form, law in (("power", fit_power(fit_k, early)), ("beta", fit_beta(kept, n_fit))):
        forecast = law.pass_at_k(ks)
        out[form] = {"forecast": forecast.tolist(),
                     "mean_relative_error": float(np.mean(np.abs(forecast / measured - 1)))}
    return out


def forecasts(results: Mapping[int, tuple[dict[str, Any], dict[str, Any]]],
              fraction: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """``coverage_forecast`` of every run of ``passk_results``, from ``fraction`` of its samples;
    the median error of each form over the runs (a run whose kept samples solve too little to
    fit is counted, not scored)."""
    errors: dict[str, list[float]] = {"power": [], "beta": []}
    skipped, n_fit, n = 0, 0, 0
    for _, passk in results.values():
        n = int(passk["settings"]["samples"])
        n_fit = max(2, round(fraction * n))
        try:
            check = coverage_forecast(passk["correct"], n, n_fit, seed)
        except ArchscaleError:
            skipped += 1
            continue
        for form in errors:
            errors[form].append(check[form]["mean_relative_error"])
    return {"n_fit": n_fit, "n": n, "n_runs": len(errors["beta"]), "skipped_runs": skipped,
            **{f"{form}_median_relative_error": float(np.median(e)) if e else None
               for form, e in errors.items()}}


def passk_noise_floor(runs: pd.DataFrame) -> dict[str, Any]:
    """The seed-to-seed scatter of pass@k at every k (search/noise.py: runs of one shape and
    budget that differ only in their seed), the least error a law of single runs can expect;
    ``relative`` is None where no run was repeated."""
    ks = sorted(int(k) for k in runs["k"].unique())
    floors = [noise_floor(runs[runs["k"] == k], TARGET) for k in ks]
    groups = seed_groups(runs[runs["k"] == ks[0]], TARGET)
    return {"k": ks, "relative": None if not groups else floors,
            "n_groups": len(groups), "dof": sum(len(g) - 1 for g in groups)}


def fit_study_law(handle: StudyHandle, runs: pd.DataFrame, n_boot: int = 100, seed: int = 0,
                  covariate: str = "loss") -> Law:
    """The pass@k law of a study's ``passk_table`` (the ``covariate`` form; the loss form
    predicted held-out scales best, laws/passk.py); its provenance records what ``archscale
    substitute`` defaults to: the task's prompt and mean completion tokens and the study's
    tokens per parameter."""
    if runs.empty:
        unsolved = runs.attrs.get("unsolved_runs", 0)
        raise ArchscaleError(
            f"study {handle.name!r} has no complete runs with pass@k"
            + (f" ({unsolved} sampled run(s) solved no problem: use an easier task or larger "
               "models)" if unsolved else ": add a passk: key to its sweep file and run it"))
    return fit_law("passk", runs, {"covariate": covariate}, n_boot=n_boot, seed=seed, provenance={
        "source": "study", "study": handle.name, "storage": handle.shown_url,
        "unsolved_runs": runs.attrs.get("unsolved_runs", 0),
        "tokens_per_param": handle.sweep.budget.tokens_per_param,
        "prompt_tokens": int(runs["prompt_tokens"].iloc[0]),
        "sample_tokens": float(runs["mean_completion_tokens"].mean())})


def substitution_section(handle: StudyHandle, run_table: pd.DataFrame, loss_law: Law,
                         throughput: ThroughputModel, space: SearchSpace, out: Path, *,
                         tokens_per_param: float,
                         target_pass: float | None = None, target_k: int = 1,
                         requests: float | None = None,
                         params: Sequence[float] | None = None, n_boot: int = 100,
                         seed: int = 0, covariate: str = "loss",
                         measure: MeasureSettings | None = None,
                         batch: int = 64, context: int = 2048
                         ) -> tuple[Substitution, dict[str, Any]]:
    """The demo's section: fit the pass@k law on the study's runs (``run_table``: its run table,
    as ``load_table(trials_table(...))`` gives it), answer the substitution
    question with ``loss_law`` (the demo's conditional law) choosing each size's shape, and
    write ``out/`` (module docstring, plus ``laws/passk.json``).

    Defaults: ``target_pass`` the mean measured pass@``target_k`` of the largest trained scale
    (what its models give with that many samples); ``requests`` the demand at which serving the
    largest candidate at k = 1 costs as much as training it; ``params`` the trained scales (their
    median N) and 2x and 4x the largest. Returns (the answer, whose ``summary()`` is
    summary.json's list of points {"params", "k", "predicted_pass_at_k", "interval_90",
    "total_cost_flops"}; the checks: {"passk_law": ``heldout_by_k`` (the runs' measured loss
    in), "end_to_end": ``heldout_chain`` (their loss predicted too), "coverage_forecast":
    ``forecasts``, "noise_floor": ``passk_noise_floor``, "n_runs", "unsolved_runs"}).
    """
    results = passk_results(handle.study)
    runs = passk_rows(results)
    law = fit_study_law(handle, runs, n_boot, seed, covariate)
    save_law(law, out / "laws" / "passk.json")
    labels, order = scale_labels(runs), scale_order(runs)
    target_rule = "given"
    if target_pass is None:
        largest = runs[(labels == order[-1]) & (runs["k"] == target_k)]
        if largest.empty:
            raise ArchscaleError(f"the runs measured no pass@{target_k}: choose a target k up "
                                 f"to {int(runs['k'].max())}")
        target_pass = float(largest["pass_at_k"].mean())
        target_rule = f"the largest trained scale's mean measured pass@{target_k}"
    medians = [float(runs.loc[labels == s, "N"].median()) for s in order]
    recs = candidate_shapes(loss_law, throughput, space,
                            params or [*medians, 2 * medians[-1], 4 * medians[-1]],
                            tokens_per_param=tokens_per_param, measure=measure, batch=batch,
                            context=context)
    demand = Demand(1.0, law.provenance["prompt_tokens"], law.provenance["sample_tokens"])
    if requests is None:  # break-even: serving the largest at k = 1 costs its training
        train, per_request = demand.cost(recs[-1].recommended[0].spec,
                                         float(recs[-1].provenance["search"]["tokens"]), 1)
        requests = train / per_request
    sub = substitute(recs, law, target_pass=target_pass,
                     demand=dataclasses.replace(demand, requests=requests),
                     max_k=int(runs["k"].max()), provenance={"target": target_rule})
    write(sub, out)
    return sub, {"n_runs": int(runs["trial_id"].nunique()),
                 "unsolved_runs": int(runs.attrs.get("unsolved_runs", 0)),
                 "noise_floor": passk_noise_floor(runs),
                 "coverage_forecast": forecasts(results, seed=seed),
                 "passk_law": heldout_by_k(law, runs),
                 "end_to_end": heldout_chain(runs, run_table, loss_law.config, law, n_boot, seed)}


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def check_summary(held: dict[str, Any]) -> dict[str, Any]:
    """The held-out checks' figures, over all k and at every k (summary.json's
    ``substitution_check``)."""
    keys = ("rule", "n", "mean_relative_error", "coverage_90", "calibration",
            "loss_mean_relative_error", "by_k")
    return {"n_runs": held["n_runs"], "coverage_forecast": held["coverage_forecast"],
            "noise_floor": held["noise_floor"],
            **{name: {k: held[name].get(k) for k in keys} for name in ("passk_law", "end_to_end")}}


def markdown(sub: Substitution, held: dict[str, Any], task: str, figure: str) -> list[str]:
    """The demo report's section: the question, the held-out checks, the frontier, the floor."""
    demand = sub.demand
    lines = [
        "## Can sampling substitute for parameters?", "",
        f"pass@k of sampled completions on `{task}`, measured after {held['n_runs']} runs (the "
        "sweep's `passk:` slice), fitted across scales from each run's loss (laws/passk.py); a "
        "shape's loss comes from the conditional law. A request of "
        f"{demand.prompt_tokens} prompt tokens is answered by k samples of "
        f"{demand.sample_tokens:.1f} tokens and passes when one of them does (a verifier picks "
        f"it). Target pass rate {sub.target_pass:.3f} ({sub.provenance.get('target', 'given')}); "
        f"{demand.requests:.3g} requests, where serving the largest candidate at k = 1 costs "
        "as much as training it. Total cost = training FLOPs + requests x (prefill + k x one "
        "sample's generation).", ""]
    for name, label in (("passk_law", "The pass@k law alone, from each held-out run's "
                                      "measured loss"), ("end_to_end", "End to end")):
        check = held[name]
        if "mean_relative_error" not in check:
            lines.append(f"- {label}: skipped ({check.get('skipped')}).")
            continue
        worst = max(check["by_k"], key=lambda row: row["mean_relative_error"])
        lines.append(f"- {label} ({check['rule']}): mean relative error "
                     f"{_percent(check['mean_relative_error'])} over k = 1..{sub.ks[-1]} (worst "
                     f"{_percent(worst['mean_relative_error'])} at k = {worst['k']}); "
                     + (f"90% prediction intervals cover {_percent(check['coverage_90'])} of "
                        f"{check['n']} (run, k)." if check["coverage_90"] is not None else
                        f"no 90% prediction interval at the held-out scale "
                        f"({check['calibration']})."))
    floor = held["noise_floor"]
    if floor["relative"] is not None:
        at = dict(zip(floor["k"], floor["relative"], strict=True))
        lines.append(
            f"- Seed-to-seed scatter of pass@k ({floor['n_groups']} shape(s) trained with other "
            f"seeds, {floor['dof']} degree(s) of freedom): {_percent(at[floor['k'][0]])} at "
            f"k = {floor['k'][0]}, {_percent(at[floor['k'][-1]])} at k = {floor['k'][-1]}; no "
            "law can be expected to predict one run closer than that.")
    forecast = held["coverage_forecast"]
    if forecast["n_runs"]:
        lines.append(
            f"- Each run's coverage curve, held out in k: fitted on {forecast['n_fit']} of its "
            f"{forecast['n']} samples per problem, forecasting pass@{forecast['n_fit'] + 1}.."
            f"{forecast['n']}: the Beta law (Schaeffer et al.) misses by "
            f"{_percent(forecast['beta_median_relative_error'])}, the power law (Brown et al.) "
            f"by {_percent(forecast['power_median_relative_error'])} (medians over "
            f"{forecast['n_runs']} runs).")
    lines += ["", "| N | k | pass@k [90% prediction interval] | training FLOPs | inference FLOPs "
              "| total FLOPs |",
              "|---|---|---|---|---|---|"]
    for point in sub.points:
        row = sub.point_dict(point)
        low, high = row["interval_90"]
        mark = " (cheapest)" if row["cheapest"] else ""
        lines.append(f"| {row['params']:,}{mark} | {row['k']} | {row['predicted_pass_at_k']:.3f} "
                     f"[{low:.3f}, {high:.3f}] | {row['train_flops']:.3g} | "
                     f"{row['inference_flops']:.3g} | {row['total_cost_flops']:.3g} |")
    if not sub.points:
        lines.append("| no candidate reaches the target | | | | | |")
    lines += ["", f"Where substitution stops: {sub.floor['reason']}.", ""]
    lines += [f"- {note}" for note in sub.notes]
    lines += ["", f"![cost against target pass rate]({figure})", ""]
    return lines

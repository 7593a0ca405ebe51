"""The demo's report folder: report.md, PNG figures, law JSONs, recommendations, HF configs.

Layout of ``<out>/``::

    report.md                 what was run, the laws with intervals, held-out error, the answer
    laws/*.json               the fitted laws (``archscale predict`` / ``recommend`` read them)
    figures/*.png             U-curves, held-out, fits, the measured and predicted Pareto fronts
    recommendations.json      the recommendation with provenance (``archscale export`` reads it)
    summary.json              the headline figures, for programs (``summary``: keys below;
                              ``decision``: the shape decision scored, decide/decision.py)
    substitution/             where the sweep samples pass@k: decide/substitution_report.py
    hf/<shape>/config.json    one HuggingFace LlamaConfig per exported shape
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import archscale
from archscale.decide import design_report, substitution_report
from archscale.decide.decision import decision_markdown, decision_summary
from archscale.decide.export import export_hf
from archscale.decide.recommend import Recommendation, Scored, save_recommendation
from archscale.laws import save_law
from archscale.laws.law import Law
from archscale.laws.levels import LEVELS
from archscale.laws.plots import save_plots
from archscale.laws.registry import get_kind
from archscale.laws.table import scale_labels, scale_order, spec_table
from archscale.search.table import pareto_front

if TYPE_CHECKING:
    from archscale.decide.substitute import Substitution
    from archscale.search.study import StudyHandle

LAW_FILES = {kind: get_kind(kind).file
             for kind in ("chinchilla", "conditional", "accuracy", "throughput")}
"""Where each law the demo fits is saved (its kind's file), under ``<out>/laws/``."""


@dataclass
class DemoOutcome:
    """What a demo run produced (the report is written from this)."""

    handle: StudyHandle
    table: pd.DataFrame
    laws: dict[str, Law]
    recommendation: Recommendation
    target_params: float
    target_tokens: float
    baseline_note: str
    noise_floor: float
    seconds: dict[str, float] = field(default_factory=dict)
    substitution: tuple[Substitution, dict[str, Any]] | None = None
    """The answer of ``answer_substitution`` and its held-out checks (None: no pass@k)."""
    design: dict[str, Any] | None = None
    """What a designed study trained and gave up (decide/design_report.py; None: a full grid)."""


def _budgets(sweep: Any) -> str:
    grid = sweep.grid
    if grid.tokens_per_param:
        return " and ".join(f"{r:g}" for r in grid.tokens_per_param) + " tokens per parameter"
    if grid.tokens:
        return " and ".join(f"{t:,.0f}" for t in grid.tokens) + " tokens"
    return f"{sweep.budget.tokens_per_param:g} tokens per parameter"


def _percent(value: float | None) -> str:
    return "not measured" if value is None or value != value else f"{value:.2%}"


def json_ready(data: Any) -> Any:
    """``data`` with every number that is not finite (an interval nothing calibrates, a figure
    that could not be measured) as None: JSON's null, which every reader parses, not NaN."""
    if isinstance(data, dict):
        return {key: json_ready(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [json_ready(value) for value in data]
    if isinstance(data, float | np.floating):
        return float(data) if np.isfinite(data) else None
    return data


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(data), indent=1, allow_nan=False, default=float) + "\n")
    return path


def plot_pareto(table: pd.DataFrame, rec: Recommendation, path: Path) -> Path:
    """Left: measured runs (loss vs decode tok/s) with each scale's front; right: the target."""
    # a Figure on the Agg canvas, not pyplot: no global backend switch for a notebook to inherit
    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    ax_runs, ax_target = fig.subplots(1, 2)
    labels = scale_labels(table)  # grid scales: realized N scatter around each target
    for label in scale_order(table):
        runs = table[labels == label]
        points = ax_runs.scatter(runs["decode_tokens_per_s"], runs["loss"], s=14,
                                 label=f"N~{float(label):,.0f}")
        front = pareto_front(runs)
        ax_runs.plot(front["decode_tokens_per_s"], front["loss"], color=points.get_facecolor()[0],
                     lw=1)
    ax_runs.set_xscale("log")
    ax_runs.set_xlabel("measured decode tokens/s")
    ax_runs.set_ylabel("measured validation loss")
    ax_runs.set_title("trained runs and their Pareto fronts")
    ax_runs.legend(fontsize=8)

    def mark(items: list[Scored], **style: Any) -> None:
        ax_target.scatter([s.decode_tokens_per_s for s in items], [s.loss for s in items], **style)

    mark(rec.pareto, s=12, color="gray", label="Pareto set (predicted)")
    mark(rec.recommended, s=40, marker="*", color="tab:red", label="recommended")
    mark([rec.loss_optimal], s=40, marker="s", color="tab:blue", label="loss-optimal")
    if rec.baseline is not None:
        mark([rec.baseline], s=40, marker="^", color="black", label="baseline")
    ax_target.axhline(rec.target_loss, color="tab:red", lw=0.8, ls="--", label="target loss")
    # Linear: the shapes at one N differ by tens of percent, and a log axis over so short a
    # range labels its minor ticks on top of each other.
    ax_target.set_xlabel("predicted decode tokens/s")
    ax_target.set_ylabel("predicted loss")
    ax_target.set_title("at the target scale (laws)")
    ax_target.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


HELDOUT_KEYS = ("mean_relative_error", "mse", "spearman_min", "coverage_90")
"""Held-out figures summary.json gives per law (laws/validation.py, laws/law.py)."""


def law_summary(law: Law) -> dict[str, Any]:
    """A law's headline figures: exponents and E where it has them, whether the runs identify
    it (and why not), and its held-out error and 90% prediction-interval coverage."""
    held = law.validation.get("heldout") or {}
    out: dict[str, Any] = {k: v for k, v in law.coefficients.items() if k in ("alpha", "beta", "E")}
    out["identified"] = law.identified
    out["problems"] = [p.message for p in law.problems]
    out["heldout"] = {k: held.get(k) for k in HELDOUT_KEYS} | {"n": held.get("n_test"),
                                                               "rule": held.get("rule")}
    return out


def summary(outcome: DemoOutcome) -> dict[str, Any]:
    """summary.json: every figure a program checks a demo by."""
    rec = outcome.recommendation.to_dict()
    shapes = [("#" + str(i), s) for i, s in enumerate(rec["recommended"], 1)]
    shapes += [("loss-optimal", rec["loss_optimal"])]
    if rec["baseline"] is not None:
        shapes.append(("baseline", rec["baseline"]))
    keys = ("predicted_loss", "loss_interval_90", "predicted_accuracy", "accuracy_interval_90",
            "measured_decode_tokens_per_s", "predicted_decode_tokens_per_s")
    return {
        "decision": _decision(outcome),
        "laws": {kind: law_summary(law) for kind, law in outcome.laws.items()},
        "noise_floor_relative": (None if outcome.noise_floor != outcome.noise_floor
                                 else outcome.noise_floor),
        "throughput_check": outcome.recommendation.throughput_check,
        "target": {"params": outcome.target_params, "tokens": outcome.target_tokens},
        "recommendations": [{"name": name, "params_nonembed": s["params_nonembed"],
                             **{k: s.get(k) for k in keys}} for name, s in shapes],
        "seconds": outcome.seconds,
        **({} if outcome.substitution is None else {
            "substitution": outcome.substitution[0].summary(),
            "substitution_check": substitution_report.check_summary(outcome.substitution[1])}),
        **({} if outcome.design is None else {"design": outcome.design}),
    }


def _decision(outcome: DemoOutcome) -> dict[str, Any]:
    """The conditional law's shape decision scored (decide/decision.py)."""
    law = outcome.laws["conditional"]
    shapes = outcome.recommendation.recommended
    candidates = spec_table([s.spec for s in shapes], outcome.target_tokens,
                            n_definition=law.n_definition)
    return decision_summary(law, outcome.table, outcome.noise_floor, candidates)


def add_verify_to_summary(out: Path, verify: dict[str, Any]) -> Path:
    """summary.json's ``verify`` key: the verification run's loss and its 90% interval."""
    path = out / "summary.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["verify"] = {"measured_loss": verify["measured_loss"],
                      "predicted_loss": verify["predicted_loss"],
                      "loss_interval_90": verify["loss_interval_90"],
                      "inside": verify["measured_loss_inside_interval"],
                      "params_nonembed": verify["params_nonembed"]}
    return write_json(data, path)


def _coefficients(law: Law) -> list[str]:
    intervals = law.coef_intervals(LEVELS.mean)
    lines = [f"| coefficient | value | {LEVELS.mean:.0%} interval |", "|---|---|---|"]
    for name, value in law.coefficients.items():
        low, high = intervals.get(name, (None, None))
        shown = "" if low is None else f"({low:.4g}, {high:.4g})"
        lines.append(f"| {name} | {value:.5g} | {shown} |")
    return lines


def _validation(law: Law) -> str:
    held = law.validation.get("heldout") or {}
    if "mse" not in held:
        return f"held-out check skipped: {held.get('skipped', 'one scale only')}"
    spearman = held.get("spearman_min")
    coverage = held.get("coverage_90")
    return (f"held out ({held['rule']}, {held['n_test']} runs): MSE {held['mse']:.3g}, mean "
            f"relative error {held['mean_relative_error']:.2%}, lowest Spearman per group "
            f"{'n/a' if spearman is None else f'{spearman:.2f}'}"
            + ("" if coverage is None or coverage != coverage
               else f", 90% prediction intervals cover {coverage:.0%}")
            + ("" if law.error_model is None else f"; prediction intervals {law.error_model.label}"))


def _throughput_sentence(rec: Recommendation) -> str:
    check = rec.throughput_check or {}
    measured = check.get("n_measured", 0)
    if not measured:
        return "predicted by the throughput law fitted on this machine's trial measurements."
    error = check.get("law_median_abs_rel_error")
    return (f"{measured} shapes built at the target size with random weights and timed "
            f"interleaved on this machine (the measured column); the throughput law fitted on the "
            f"trials missed them by {_percent(error)} (median), and serves only shapes not "
            "measured.")


def _identification(law: Law) -> list[str]:
    if law.identified:
        return ["Identified: no design or fit problem found (laws/diagnostics.py)."]
    return ["**Not identified**: " + p.message + "." for p in law.problems]


def _shape_rows(rec: Recommendation) -> list[str]:
    rows = rec.display_rows()
    columns = ["shape", *rows[0][1]]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join([label, *cells.values()]) + " |" for label, cells in rows]


def _markdown(outcome: DemoOutcome, figures: dict[str, list[Path]], configs: list[Path],
              out: Path) -> str:
    handle, table, rec = outcome.handle, outcome.table, outcome.recommendation
    sweep = handle.sweep
    scales = ", ".join(f"{n:,.0f}" for n in sweep.grid.scales)
    extrapolation = (rec.extrapolation.get("loss_law") or {}).get("N") or {}
    lines = [
        "# archscale demo report", "",
        f"Written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by archscale {archscale.__version__}.",
        "", "## What was trained", "",
        f"Study `{handle.name}` in `{handle.shown_url}`: {len(table)} complete runs on "
        f"{handle.study.user_attrs.get('data_source', 'the embedded plays')} ({sweep.tokenizer} "
        f"tokenizer, sequence length {sweep.seq_len}), a grid of scales N = {scales} x "
        f"d/sqrt(N) {sweep.grid.d_over_sqrt_n} x r {sweep.grid.r} x GQA {sweep.grid.gqa}, each run "
        f"trained on {_budgets(sweep)}; the target is predicted at "
        f"{sweep.budget.tokens_per_param:g} tokens per parameter. Trials took "
        f"{outcome.seconds.get('trials', 0):.0f} s in this invocation (finished runs are never "
        "retrained), the fits {:.0f} s.".format(outcome.seconds.get("fits", 0)), "",
        f"Watch or inspect it: `optuna-dashboard {handle.shown_url}`.", "",
        f"Run-to-run noise floor (the same shape and tokens, other seeds): "
        f"{_percent(outcome.noise_floor)} of the loss; no law can be expected to predict a "
        "single run closer than that.", "",
        "## Fitted laws", "",
        "Coefficient intervals are 95% bootstrap percentile intervals over runs (the uncertainty "
        "of the law's mean). Prediction intervals (where a run lands) add the scatter of runs and "
        "the error of extrapolating the form, calibrated on these runs' progressive held-out "
        "refits or on public sweeps, as each law says (laws/calibration.py). The held-out check refits on the smaller scales and predicts the "
        "largest trained one.", "",
    ]
    for kind, law in outcome.laws.items():
        lines += [f"### {kind} ({law.target})", "", *_coefficients(law), "", _validation(law),
                  "", *_identification(law), ""]
        lines += [f"note: {note}" for note in law.notes]
        lines += [f"![{kind} {p.stem}](figures/{p.name})" for p in figures.get(kind, [])] + [""]
    lines += [
        f"## Recommendation at N = {outcome.target_params:,.0f}, D = {outcome.target_tokens:,.0f}",
        "",
        f"Target loss {rec.target_loss:.4f} (the loss-optimal shape's prediction + "
        f"{(rec.target_loss / rec.loss_optimal.loss - 1):.1%}). Decode throughput (batch "
        f"{rec.batch}, context {rec.context}): {_throughput_sentence(rec)} Baseline: "
        f"{outcome.baseline_note}.", "",
        *_shape_rows(rec), "",
        f"Extrapolation: {extrapolation.get('factor', float('nan')):.1f}x beyond the largest "
        "trained N; the intervals above are the laws' at that distance and widen with it.", "",
    ]
    lines += [f"- {note}" for note in rec.notes]
    lines += ["", "![Pareto fronts](figures/pareto.png)", ""]
    lines += decision_markdown(_decision(outcome),
                               [f"#{i}" for i in range(1, len(rec.recommended) + 1)])
    if outcome.design is not None:
        lines += design_report.markdown(outcome.design, "figures/design.png")
    if outcome.substitution is not None:
        lines += substitution_report.markdown(  # the section exists because passk: is set
            *outcome.substitution, outcome.handle.sweep.passk_settings.task,
            "substitution/substitution.png")
    lines += ["## Files", ""]
    lines += [f"- `{p.relative_to(out)}`" for p in sorted(out.glob("laws/*.json"))]
    lines += ["- `recommendations.json`: every number above with how it was obtained"]
    if outcome.substitution is not None:
        lines += ["- `substitution/`: every candidate at every k (CSV), the frontier (JSON), "
                  "the pass@k law, each point exportable (`archscale export`)"]
    lines += [f"- `{p.relative_to(out)}`" for p in configs]
    lines += ["", "Next: `archscale demo --verify` trains a recommended shape at a scale this "
              "machine affords and compares prediction with measurement.", ""]
    return "\n".join(lines)


def write_report(outcome: DemoOutcome, out: Path) -> Path:
    """Write the whole report folder; returns the path of report.md."""
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = out / "figures"
    figures: dict[str, list[Path]] = {}
    for kind, law in outcome.laws.items():
        save_law(law, out / "laws" / LAW_FILES[kind])
        figures[kind] = save_plots(law, outcome.table, figures_dir, prefix=f"{kind}_")
    plot_pareto(outcome.table, outcome.recommendation, figures_dir / "pareto.png")
    if outcome.design is not None:
        design_report.plot_design(outcome.handle, figures_dir / "design.png")
    source = save_recommendation(outcome.recommendation, out)
    configs = export_hf(source, out / "hf")
    write_json(summary(outcome), out / "summary.json")
    report = out / "report.md"
    report.write_text(_markdown(outcome, figures, configs, out))
    return report

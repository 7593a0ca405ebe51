"""`archscale demo`: the whole loop on the embedded corpus, sized for a laptop CPU.

Stages, each resumable because every run lives in the study's storage:

1. create (or continue) the grid study of ``examples/demo.yaml`` and run its missing trials;
2. fit the Chinchilla, architecture-conditional and decode-throughput laws on the complete runs,
   each validated by fitting on the smaller scales and predicting the largest trained one;
3. recommend shapes at ``scale_factor`` x the largest trained N (Algorithm 1 over the laws),
   beside the loss-optimal shape and a LLaMA-3.2-proportioned baseline at the same N;
   and, where the sweep samples pass@k, ask whether sampling substitutes for parameters: the
   pass@k law and the cheapest (shape, k) for a target pass rate (decide/substitution_report.py);
4. write ``report/``: report.md, PNG figures, the law JSONs, recommendations.json, HF configs.

``verify`` then trains one recommended shape at a scale this machine affords and compares the
laws' predictions with what it measures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.arch.shapes import shape_from_budget
from archscale.arch.spec import ArchSpec, SpecError
from archscale.decide.design_report import GRID_TABLE, design_summary, full_grid, matches_grid
from archscale.decide.design_study import PROPOSER, conditional_terms
from archscale.decide.options import DemoOptions, MeasureSettings
from archscale.decide.recommend import Recommendation, SearchSpace, recommend
from archscale.decide.report import (
    LAW_FILES,
    DemoOutcome,
    add_verify_to_summary,
    write_json,
    write_report,
)
from archscale.decide.substitute import Substitution
from archscale.decide.substitution_report import substitution_section
from archscale.decide.throughput_models import throughput_from_law
from archscale.laws import fit_law, load_law, load_table
from archscale.laws.law import Law
from archscale.search.noise import noise_floor
from archscale.search.plan import budget_for
from archscale.search.study import StudyHandle, create_study, open_study
from archscale.search.sweepfile import SweepFile, load_sweep
from archscale.search.table import trials_table
from archscale.search.worker import WorkerOptions, run_study
from archscale.sweeps.throughput import measure_throughput
from archscale.sweeps.trainer import train

LLAMA_PROPORTIONS = {"r": 4.8, "d_over_sqrt_n": 0.066, "gqa": 4}
"""LLaMA-3.2-1B's shape ratios (arch/presets/llama-3.2-1b.json), the baseline's at any N."""

Echo = Callable[[str], None]


def _require_grid(sweep: SweepFile) -> None:
    if sweep.grid is None or sweep.grid.d_over_sqrt_n is None or sweep.budget.tokens_per_param is None:
        raise ArchscaleError("the demo needs a grid sweep with d_over_sqrt_n widths and a "
                             "tokens_per_param budget (see search/examples/demo.yaml)")
    if len(sweep.grid.scales) < 3:
        raise ArchscaleError(f"the demo needs 3+ grid scales to fit on the smaller ones and check "
                             f"the largest; {sweep.grid and len(sweep.grid.scales)} given")


def demo_sweep(options: DemoOptions) -> SweepFile:
    """The sweep the demo trains: the file's, or with ``full_grid`` its every grid point."""
    sweep = load_sweep(options.sweep)
    return full_grid(sweep) if options.full_grid and sweep.design is not None else sweep


def run_trials(options: DemoOptions, echo: Echo) -> StudyHandle:
    """Create or continue the study and run every missing trial (or the design's picks)."""
    sweep = demo_sweep(options)
    _require_grid(sweep)
    handle = create_study(sweep, options.storage)
    done = len(trials_table(handle.study))
    todo = ("the design engine picks the runs" if sweep.design is not None
            else f"{len(handle.planned_runs())} planned")
    echo(f"[1/4] study {handle.name!r} in {handle.shown_url}: {done} runs complete, {todo}; "
         f"running on {options.workers} worker(s)")
    run_study(handle.name, handle.url, workers=options.workers,
              options=WorkerOptions(progress=options.progress, proposer=PROPOSER), echo=echo)
    return open_study(handle.name, handle.url)


def accuracy_target(table: pd.DataFrame) -> str:
    """The shipped multiple-choice task's accuracy where the runs measured it, else next-token
    accuracy."""
    task = table.get("task_accuracy")
    return "task_accuracy" if task is not None and task.notna().all() else "val_accuracy"


def law_settings(sweep: SweepFile, table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The options of the four laws the demo fits."""
    return {
        "chinchilla": {},
        # soft_l1: the seed scatter (about 2% of the loss) otherwise pulls E to zero
        "conditional": {"terms": conditional_terms(sweep), "robust": "soft_l1"},
        "accuracy": {"target": accuracy_target(table)},
        "throughput": {"target": "decode"},
    }


def fit_laws(handle: StudyHandle, table: pd.DataFrame, options: DemoOptions,
             noise: float, echo: Echo) -> dict[str, Law]:
    """Fit and validate the four laws (held out: the largest grid scale, by the table's
    ``scale`` column); ``noise`` is the measured seed-to-seed floor the intervals respect."""
    provenance = {"source": "study", "study": handle.name, "storage": handle.shown_url}
    laws = {}
    for kind, law_options in law_settings(handle.sweep, table).items():
        echo(f"[2/4] fitting the {kind} law on {len(table)} runs ({options.n_boot} bootstrap refits)")
        laws[kind] = fit_law(kind, table, law_options, n_boot=options.n_boot, seed=options.seed,
                             provenance=provenance,
                             noise_floor=None if kind != "conditional" or noise != noise else noise)
        for problem in laws[kind].problems:
            echo(f"      not identified: {problem.message}")
        if kind in ANNOTATING and laws[kind].problems and not options.allow_degenerate:
            echo(f"      {ANNOTATING[kind]} (the report says why)")
    return laws


ANNOTATING = {
    "accuracy": "the recommendation carries no accuracy",
    "chinchilla": "the report gives no shape-blind L(N, D); the recommendation rests on the "
                  "conditional law",
}
"""Laws the recommendation does not rest on, and what a refused one leaves out. Where the runs do
not identify one (the accuracy sigmoid's saturation on runs whose accuracy is still linear in
loss; Chinchilla's exponents on designed runs that vary shape more than N and D, which the
conditional law's shape terms explain and Chinchilla's cannot), the report says why and the demo
still ends well. The recommendation rests on the conditional and throughput laws."""


def refuse_unidentified(laws: dict[str, Law], out: Path) -> None:
    """One error naming every law the recommendation rests on that the runs do not identify
    (the report is already written)."""
    bad = {kind: law for kind, law in laws.items()
           if not law.identified and kind not in ANNOTATING}
    if bad:
        raise SettingError(
            f"the runs do not identify the {', '.join(bad)} law(s): "
            + "; ".join(f"{kind}: {law.problems[0].message}" for kind, law in bad.items())
            + f". The report in {out}/ says so; fix the grid, or pass {{allow_degenerate}}")


def baseline_shape(sweep: SweepFile, n_params: float, vocab_size: int) -> tuple[ArchSpec, str]:
    """LLaMA-3.2-1B's ratios (r 4.8, d/sqrt(N) 0.066, GQA 4) at ``n_params`` in the study's units."""
    for gqa in (LLAMA_PROPORTIONS["gqa"], 2, 1):
        try:
            shape = shape_from_budget(
                n_params, LLAMA_PROPORTIONS["r"], gqa, d_over_sqrt_n=LLAMA_PROPORTIONS["d_over_sqrt_n"],
                head_dim=sweep.shape.head_dim, vocab_size=vocab_size, seq_len=sweep.seq_len,
                d_ff_multiple=sweep.shape.d_ff_multiple,
                d_model_multiple=sweep.shape.d_model_multiple)
        except SpecError:
            continue
        return shape.spec, (f"LLaMA-3.2-1B proportions at N={shape.spec.params_nonembed:,} "
                            f"(r {LLAMA_PROPORTIONS['r']}, d/sqrt(N) "
                            f"{LLAMA_PROPORTIONS['d_over_sqrt_n']}, GQA {gqa})")
    raise SettingError(f"no LLaMA-proportioned shape at N={n_params:,.0f}: raise {{scale_factor}}")


def search_space(sweep: SweepFile, table: pd.DataFrame, n_params: float, tokens: float,
                 vocab_size: int, points: int = 15) -> SearchSpace:
    """Candidates at the target in the study's shape family, within the trained ranges of
    d/sqrt(N) and r: the laws' U-curves are not extrapolated in shape, only in scale."""
    def span(column: str) -> tuple[float, ...]:
        low, high = float(table[column].min()), float(table[column].max())
        return tuple(np.round(np.geomspace(low, high, points), 4))

    return SearchSpace(
        params=n_params, tokens=tokens, d_over_sqrt_n=span("d_over_sqrt_n"), r=span("r"),
        gqa_group=int(table["gqa_group"].min()), head_dim=sweep.shape.head_dim,
        vocab_size=vocab_size, seq_len=sweep.seq_len,
        d_model_multiple=sweep.shape.d_model_multiple, d_ff_multiple=sweep.shape.d_ff_multiple)


def recommend_at(handle: StudyHandle, table: pd.DataFrame, laws: dict[str, Law], n_params: float,
                 options: DemoOptions, measure: bool | None = None
                 ) -> tuple[Recommendation, float, str]:
    """Algorithm 1 at ``n_params`` with the study's budget rule; (recommendation, D, baseline).

    The finalists are timed at the target size (random weights, interleaved) when ``measure``
    (default: ``options.measure``), in the study's throughput setting."""
    sweep = handle.sweep
    tokens = float(budget_for(sweep, n_params).tokens)  # the rule every grid run trained under
    baseline, note = baseline_shape(sweep, n_params, handle.vocab_size)
    setting = sweep.throughput
    timing = MeasureSettings(min_seconds=setting.min_seconds, repeats=setting.repeats,
                             decode_tokens=setting.decode_tokens)
    rec = recommend(laws["conditional"], search_space(sweep, table, n_params, tokens,
                                                      handle.vocab_size),
                    throughput_from_law(laws["throughput"]),
                    max_loss_increase=options.max_loss_increase, top=options.top,
                    batch=setting.batch, context=sweep.tp_context, baseline=baseline,
                    accuracy_law=annotating_law(laws, "accuracy", options),
                    measure=timing if (options.measure if measure is None else measure) else None)
    return rec, tokens, note


def annotating_law(laws: dict[str, Law], kind: str, options: DemoOptions) -> Law | None:
    """``laws[kind]`` where the runs identify it (or ``--allow-degenerate`` keeps it), else None."""
    law = laws.get(kind)
    return law if law is not None and (law.identified or options.allow_degenerate) else None


def answer_substitution(handle: StudyHandle, table: pd.DataFrame, laws: dict[str, Law],
                        options: DemoOptions, echo: Echo
                        ) -> tuple[Substitution, dict[str, Any]] | None:
    """Where the sweep samples pass@k (``passk:``): the pass@k law, its held-out checks and the
    cheapest (shape, k) for the largest trained scale's pass@``target_k``, written to
    ``out/substitution`` (decide/substitution_report.py); None without ``passk:``."""
    sweep = handle.sweep
    if sweep.passk_settings is None:
        return None
    echo("[3/4] can sampling substitute for parameters? fitting the pass@k law and pricing "
         "(shape, k)")
    # the shape family only: candidate_shapes gives each candidate size its own N and tokens
    space = search_space(sweep, table, 1.0, 1.0, handle.vocab_size)
    try:
        return substitution_section(
            handle, table, laws["conditional"], throughput_from_law(laws["throughput"]), space,
            options.out / "substitution", tokens_per_param=float(sweep.budget.tokens_per_param),
            target_k=min(options.target_k, sweep.passk_settings.k_max),
            n_boot=min(options.n_boot, 100), seed=options.seed, batch=sweep.throughput.batch,
            context=sweep.tp_context)
    except ArchscaleError as err:  # the rest of the report stands without this section
        echo(f"      substitution skipped: {err}")
        return None


def run_demo(options: DemoOptions, echo: Echo = print) -> DemoOutcome:
    """Stages 1-4 (see the module docstring); returns what the report shows."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    handle = run_trials(options, echo)
    seconds["trials"] = time.perf_counter() - start
    table = load_table(trials_table(handle.study))
    if len(table) < 10:
        raise ArchscaleError(f"only {len(table)} complete runs in study {handle.name!r}: the laws "
                             "need more; check failed trials with `archscale study status`")
    start = time.perf_counter()
    noise = noise_floor(table)
    laws = fit_laws(handle, table, options, noise, echo)
    seconds["fits"] = time.perf_counter() - start
    target = options.scale_factor * float(handle.sweep.grid.scales[-1])
    echo(f"[3/4] recommending shapes at N={target:,.0f} ({options.scale_factor:g}x the largest "
         "trained scale)")
    start = time.perf_counter()
    rec, tokens, note = recommend_at(handle, table, laws, target, options)
    seconds["recommend"] = time.perf_counter() - start
    start = time.perf_counter()
    substitution = answer_substitution(handle, table, laws, options, echo)
    seconds["substitution"] = time.perf_counter() - start
    design = (None if handle.sweep.design is None else
              design_summary(handle, table, noise, tokens, rec, grid_answer(handle, options)))
    outcome = DemoOutcome(handle, table, laws, rec, target, tokens, note, noise, seconds,
                          substitution, design)
    echo(f"[4/4] writing {options.out}/")
    write_report(outcome, options.out)
    if not options.allow_degenerate:
        refuse_unidentified(laws, options.out)
    return outcome


def grid_answer(handle: StudyHandle, options: DemoOptions
                ) -> Callable[[], tuple[Law, Recommendation]] | None:
    """The full grid's conditional law and recommendation, from ``options.grid_table`` where it
    matches the study's grid (else None): what a designed demo's regret is measured against."""
    path = GRID_TABLE if options.grid_table is None else options.grid_table
    if path is None or not path.is_file():
        return None
    grid = load_table(path)
    if not matches_grid(grid, handle.sweep, handle.vocab_size):
        return None

    def answer() -> tuple[Law, Recommendation]:
        settings = law_settings(handle.sweep, grid)
        laws = {kind: fit_law(kind, grid, settings[kind], n_boot=0, progressive=False,
                              noise_floor=noise_floor(grid) if kind == "conditional" else None)
                for kind in ("conditional", "throughput")}
        target = options.scale_factor * float(handle.sweep.grid.scales[-1])
        return laws["conditional"], recommend_at(handle, grid, laws, target, options,
                                                 measure=False)[0]

    return answer


def load_report_laws(out: Path) -> dict[str, Law]:
    """The laws a finished demo saved, or one error saying to run the demo first."""
    paths = {kind: out / "laws" / name for kind, name in LAW_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SettingError(f"no fitted laws in {out}/laws ({', '.join(missing)} missing): run "
                           "the demo first (same {out} and {storage})")
    return {kind: load_law(path) for kind, path in paths.items()}


def verify(options: DemoOptions, echo: Echo = print) -> dict[str, Any]:
    """Train the top recommended shape at ``options.verify_scale`` x the largest trained N;
    compare. Laws the demo refused are refused here too, before any training; a recommendation
    without a prediction interval is verified against its point prediction, and the report says
    so."""
    laws = load_report_laws(options.out)
    if not options.allow_degenerate:
        refuse_unidentified(laws, options.out)
    handle = open_study(demo_sweep(options).name, options.storage)
    table = load_table(trials_table(handle.study))
    n_params = options.verify_scale * float(handle.sweep.grid.scales[-1])
    rec, tokens, _ = recommend_at(handle, table, laws, n_params, options, measure=False)
    top = rec.recommended[0]
    spec = top.spec
    echo(f"verify: training the top recommended shape at N={spec.params_nonembed:,} "
         f"(d_model {spec.d_model}, {spec.n_layers} layers, {spec.n_heads}/{spec.n_kv_heads} "
         f"heads, d_ff {spec.d_ff}) on {tokens:,.0f} tokens")
    sweep = handle.sweep
    result = train(spec, budget_for(sweep, n_params), sweep.recipe_obj, handle.load_data(), seed=sweep.seed,
                   progress=options.progress)
    if result.status != "complete" or result.val_loss is None:
        raise ArchscaleError(f"the verification run ended {result.status}: {result.message}")
    speed = measure_throughput(spec, **sweep.throughput_options())
    low, high = top.loss_interval_90
    has_interval = math.isfinite(low) and math.isfinite(high)
    report = {
        "spec": spec.to_dict(), "params_nonembed": spec.params_nonembed, "tokens": result.tokens,
        "extrapolation_factor": n_params / float(table["N"].max()),
        "predicted_loss": top.loss,
        "loss_interval_90": [low, high] if has_interval else None,
        "loss_mean_interval_95": ([top.loss_low, top.loss_high]
                                  if math.isfinite(top.loss_low + top.loss_high) else None),
        "measured_loss": result.val_loss,
        "loss_relative_error": (top.loss - result.val_loss) / result.val_loss,
        "measured_loss_inside_interval": (bool(low <= result.val_loss <= high) if has_interval
                                          else None),
        "predicted_decode_tokens_per_s": top.decode_tokens_per_s,
        "measured_decode_tokens_per_s": speed.decode_tokens_per_s,
        "throughput_relative_error": (top.decode_tokens_per_s - speed.decode_tokens_per_s)
        / speed.decode_tokens_per_s,
        "run": result.to_dict(),
    }
    write_json(report, options.out / "verify.json")
    add_verify_to_summary(options.out, report)
    return report


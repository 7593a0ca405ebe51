"""What a designed study spent and what it gave up, for the demo's report and summary.json.

``design_summary`` is summary.json's ``design`` key: the FLOPs and runs trained beside what the
full grid trains (``--full-grid``: every grid point and its noise repeats), the noise floor, why
the design stopped, and ``regret_vs_grid``: how much worse the design's recommended shape is than
the full grid's recommendation, both predicted by the law fitted on a full-grid run table of the
same sweep (search/examples/demo_full_grid.csv for the packaged demo), relative to the latter:

    regret_vs_grid = L_grid(shape recommended by the design) / L_grid(shape the grid recommends) - 1

``plot_design`` draws the (N, D, shape) plane: every grid point faded, the design's runs numbered
in the order the engine chose them, marked by shape.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from archscale.decide.recommendation import Recommendation, Scored
from archscale.laws.law import Law
from archscale.search import designed
from archscale.search.plan import plan_grid, planned_from_attrs
from archscale.search.study import StudyHandle
from archscale.search.sweepfile import SweepFile

GRID_TABLE = Path(__file__).resolve().parents[1] / "search" / "examples" / "demo_full_grid.csv"
"""The run table of the packaged demo grid trained in full (package data beside demo.yaml, so an
installed demo finds it). Refresh it whenever the demo grid changes (tests/test_studies.py checks
that it matches): ``archscale demo --full-grid --storage full.journal``, then ``archscale study
export demo-full-grid --storage full.journal --csv search/examples/demo_full_grid.csv``."""
MATCH_COLUMNS = ["d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "D"]
"""A full-grid table matches a sweep when it holds every grid run's shape and tokens."""


def matches_grid(table: pd.DataFrame, sweep: SweepFile, vocab_size: int) -> bool:
    """Whether ``table`` trained every run of ``sweep``'s grid (same shapes and tokens)."""
    need = grid_rows(sweep, vocab_size)
    # a run trains whole batches: its D is the planned tokens rounded as Recipe.steps_for does
    batch_tokens = sweep.recipe_obj.batch_size * sweep.seq_len
    need["D"] = np.maximum(1, np.round(need["D"] / batch_tokens)) * batch_tokens
    have = set(table[MATCH_COLUMNS].astype(int).itertuples(index=False, name=None))
    return set(need[MATCH_COLUMNS].astype(int).itertuples(index=False, name=None)) <= have


def full_grid(sweep: SweepFile) -> SweepFile:
    """The same sweep training every grid point (``demo --full-grid``), as its own study."""
    return sweep.model_copy(update={"design": None, "name": f"{sweep.name}-full-grid"})


def picked_runs(handle: StudyHandle) -> pd.DataFrame:
    """The design's finished picks in the order chosen (step, then trial number): their trial,
    step, N, D, d_over_sqrt_n, r, gqa_group and reason."""
    rows = []
    for trial in handle.study.get_trials(deepcopy=False):
        pick = trial.user_attrs.get(designed.DESIGN_PICK_ATTR)
        result = trial.user_attrs.get("result")
        if pick is None or trial.user_attrs.get("status") != "complete" or result is None:
            continue
        row = designed.candidate_rows([planned_from_attrs(trial)]).iloc[0]
        rows.append({"trial": trial.number, "step": pick["step"], "reason": pick["reason"],
                     "N": row["N"], "D": row["D"], "shape": _shape(row["params"])})
    table = pd.DataFrame(rows, columns=["trial", "step", "reason", "N", "D", "shape"])
    return table.sort_values(["step", "trial"]).reset_index(drop=True)


def _shape(params: dict[str, Any]) -> tuple:
    """A grid point's shape as the grid names it (width, r, GQA; realized values differ a bit)."""
    width = params.get("d_over_sqrt_n", params.get("d_model"))
    return (width, params["r"], params["gqa"])


def grid_rows(sweep: SweepFile, vocab_size: int) -> pd.DataFrame:
    """Every run ``--full-grid`` trains (grid points and noise repeats), as candidate rows."""
    return designed.candidate_rows(plan_grid(full_grid(sweep), vocab_size))


def loss_at(law: Law, shape: Scored, tokens: float) -> float:
    """The law's loss for one recommended shape at the target's tokens."""
    return float(law.predict(pd.DataFrame([{**shape.spec.table_row(), "D": tokens}]))[0])


def design_summary(handle: StudyHandle, table: pd.DataFrame, noise: float, tokens: float,
                   rec: Recommendation,
                   grid_answer: Callable[[], tuple[Law, Recommendation]] | None
                   ) -> dict[str, Any]:
    """summary.json's ``design`` (module docstring); ``grid_answer`` gives the full-grid law
    and recommendation (None: no full-grid table, and ``regret_vs_grid`` is null)."""
    grid = grid_rows(handle.sweep, handle.vocab_size)
    regret = None
    if grid_answer is not None:
        law, grid_rec = grid_answer()
        regret = (loss_at(law, rec.recommended[0], tokens)
                  / loss_at(law, grid_rec.recommended[0], tokens) - 1)
    return {"trained_flops": float(table["flops"].sum()), "grid_flops": float(grid["flops"].sum()),
            "runs": len(table), "grid_runs": len(grid), "regret_vs_grid": regret,
            "noise_floor": None if math.isnan(noise) else noise,
            "stopped_because": designed.stopped_because(handle.study)}


def plot_design(handle: StudyHandle, path: Path) -> Path:
    """The (N, D, shape) plane: grid points faded, the design's runs numbered in pick order,
    one marker per shape (d/sqrt(N), r, GQA)."""
    grid = grid_rows(handle.sweep, handle.vocab_size)
    grid["shape"] = grid["params"].map(_shape)
    picks = picked_runs(handle)
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    width = "d/sqrt(N)" if handle.sweep.grid.d_over_sqrt_n is not None else "d_model"
    markers = dict(zip(sorted(set(grid["shape"])), itertools.cycle("os^vD<>ph*"), strict=False))
    for shape, marker in markers.items():
        mine = grid[grid["shape"] == shape]
        ax.scatter(mine["N"], mine["D"], marker=marker, s=40, color="0.85", zorder=1)
        chosen = picks[picks["shape"] == shape]
        if len(chosen):
            ax.scatter(chosen["N"], chosen["D"], marker=marker, s=60, zorder=2,
                       label=f"{width} {shape[0]:g}, r {shape[1]:g}, GQA {shape[2]}")
    for order, row in enumerate(picks.itertuples(), start=1):
        ax.annotate(str(order), (row.N, row.D), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (non-embedding parameters)")
    ax.set_ylabel("D (training tokens)")
    ax.set_title(f"{len(picks)} runs the design chose (numbered in order) of {len(grid)} "
                 "(grey: the full grid)")
    if len(picks):
        ax.legend(fontsize=7, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def markdown(summary: dict[str, Any], figure: str) -> list[str]:
    """The report's section on the design."""
    regret = summary["regret_vs_grid"]
    noise = summary["noise_floor"]
    lines = [
        "## Which runs were trained (the design engine)", "",
        f"The design engine chose {summary['runs']} of the full grid's {summary['grid_runs']} runs "
        f"(noise repeats included), {summary['trained_flops']:.3g} of its "
        f"{summary['grid_flops']:.3g} training FLOPs "
        f"({summary['trained_flops'] / summary['grid_flops']:.0%}). It stopped: "
        f"{summary['stopped_because'] or 'not yet (the study is unfinished)'}.", ""]
    if regret is None:
        lines += ["No full-grid run table of this sweep is at hand, so the recommendation is not "
                  "compared with the full grid's (`archscale demo --full-grid` trains it).", ""]
    else:
        within = "within" if noise is not None and abs(regret) <= noise else "outside"
        lines += [f"Against the full grid's recommendation, both predicted by the law fitted on "
                  f"the full grid: regret {regret:+.2%} of the loss, {within} the noise floor "
                  f"({'not measured' if noise is None else f'{noise:.2%}'}).", ""]
    return [*lines, f"![design]({figure})", ""]

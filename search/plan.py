"""From a sweep file to concrete runs: shapes, budgets, grid points and search-space suggestions.

A run is identified by its config key, a hash of (spec, budget): two grid points that round to
the same integer shape are one run, and a worker never trains a key that already has a COMPLETE
trial. Everything else a run depends on (data, recipe, seed) is shared by the whole study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import optuna

from archscale.arch.errors import ArchscaleError
from archscale.arch.shapes import shape_from_budget
from archscale.arch.spec import ArchSpec
from archscale.search.sweepfile import SweepFile, SweepFileError
from archscale.sweeps.recipe import Budget


@dataclass(frozen=True)
class PlannedRun:
    """One run to train: the trial's parameters, the shape they realize and its budget."""

    params: dict[str, Any]
    """Trial parameters (grid coordinates or suggested values), as Optuna records them."""
    spec: ArchSpec
    """The integer shape."""
    budget: Budget
    """The training budget."""

    @property
    def key(self) -> str:
        return config_key(self.spec, self.budget)

    def user_attrs(self) -> dict[str, Any]:
        """What a trial stores before training, so a retry needs nothing else."""
        return {"config_key": self.key, "spec": self.spec.to_dict(), "budget": self.budget.to_dict()}


PLAN_ATTRS = ("config_key", "spec", "budget")
"""User attrs that describe the planned run (kept when a crashed trial is retried)."""


def config_key(spec: ArchSpec, budget: Budget) -> str:
    blob = json.dumps({"spec": spec.to_dict(), "budget": budget.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_spec(sweep: SweepFile, vocab_size: int, *, n_params: float, r: float, gqa: int,
               d_model: int | None = None, d_over_sqrt_n: float | None = None,
               n_layers: int | None = None) -> ArchSpec:
    """The shape for one target, or an ArchscaleError saying why it is impossible."""
    rules = sweep.shape
    shape = shape_from_budget(n_params, r, gqa, d_model=d_model, d_over_sqrt_n=d_over_sqrt_n,
                              n_layers=n_layers, head_dim=rules.head_dim, vocab_size=vocab_size,
                              seq_len=sweep.seq_len, d_ff_multiple=rules.d_ff_multiple,
                              d_model_multiple=rules.d_model_multiple,
                              tie_embeddings=rules.tie_embeddings)
    if abs(shape.params_rel_error) > rules.max_params_error:
        spec = shape.spec
        raise ArchscaleError(
            f"the nearest shape (d_model={spec.d_model}, {spec.n_layers} layers, {spec.n_heads} "
            f"heads, d_ff={spec.d_ff}) has N={spec.params_nonembed:,}, {shape.params_rel_error:+.0%} "
            f"off the target {n_params:,.0f}: change the width, depth or head_dim "
            f"(or raise shape.max_params_error)")
    return shape.spec


def budget_for(sweep: SweepFile, n_params: float, scale_index: int = 0) -> Budget:
    rule = sweep.budget
    if rule.tokens_per_param is not None:
        return Budget(tokens=round(rule.tokens_per_param * n_params))
    flops = rule.flops[scale_index] if isinstance(rule.flops, list) else rule.flops
    return Budget(flops=float(flops))


def _width_name(section: Any) -> str:
    return "d_model" if section.d_model is not None else "d_over_sqrt_n"


def grid_axes(sweep: SweepFile) -> dict[str, list]:
    """The grid's parameter names and values, in the order points are enumerated."""
    grid = sweep.grid
    assert grid is not None
    width = _width_name(grid)
    return {"N": grid.scales, width: getattr(grid, width), "r": grid.r, "gqa": grid.gqa}


def plan_grid(sweep: SweepFile, vocab_size: int) -> list[PlannedRun]:
    """Every distinct run of a grid, or one SweepFileError listing every impossible point."""
    grid = sweep.grid
    assert grid is not None
    axes = grid_axes(sweep)
    width = _width_name(grid)
    runs: dict[str, PlannedRun] = {}
    problems = []
    for point in itertools.product(*axes.values()):
        params = dict(zip(axes, point, strict=True))
        scale_index = grid.scales.index(params["N"])
        n_layers = grid.n_layers[scale_index] if grid.n_layers else None
        try:
            spec = build_spec(sweep, vocab_size, n_params=params["N"], r=params["r"],
                              gqa=params["gqa"], n_layers=n_layers, **{width: params[width]})
        except ArchscaleError as err:
            problems.append(f"grid point {params}: {err}")
            continue
        run = PlannedRun(params, spec, budget_for(sweep, params["N"], scale_index))
        runs.setdefault(run.key, run)
    if problems:
        raise SweepFileError(f"{len(problems)} grid point(s) have no valid shape:\n  - "
                             + "\n  - ".join(problems))
    return list(runs.values())


def check_search(sweep: SweepFile, vocab_size: int) -> None:
    """Every corner of the search space must give a shape (one error lists those that do not)."""
    search = sweep.search
    assert search is not None
    width = _width_name(search)
    span = getattr(search, width)
    problems = []
    for w, r, gqa in itertools.product((span.low, span.high), (search.r.low, search.r.high),
                                       search.gqa):
        try:
            build_spec(sweep, vocab_size, n_params=search.n_params, r=r, gqa=gqa,
                       n_layers=search.n_layers, **{width: w})
        except ArchscaleError as err:
            problems.append(f"search corner {width}={w}, r={r}, gqa={gqa}: {err}")
    if problems:
        raise SweepFileError("the search space has impossible corners:\n  - "
                             + "\n  - ".join(problems))


def suggest_run(trial: optuna.Trial, sweep: SweepFile, vocab_size: int) -> PlannedRun:
    """Ask the sampler for a searched shape (an ArchscaleError if it has no valid shape)."""
    search = sweep.search
    assert search is not None
    width = _width_name(search)
    if width == "d_model":
        value = trial.suggest_int("d_model", search.d_model.low, search.d_model.high,
                                  step=search.d_model.step)
    else:
        span = search.d_over_sqrt_n
        value = trial.suggest_float("d_over_sqrt_n", span.low, span.high, log=span.log)
    r = trial.suggest_float("r", search.r.low, search.r.high, log=search.r.log)
    gqa = trial.suggest_categorical("gqa", search.gqa)
    spec = build_spec(sweep, vocab_size, n_params=search.n_params, r=r, gqa=gqa,
                      n_layers=search.n_layers, **{width: value})
    return PlannedRun(dict(trial.params), spec, budget_for(sweep, search.n_params))


def suggest_grid_params(trial: optuna.Trial, sweep: SweepFile) -> None:
    """Record an enqueued grid point's coordinates as the trial's parameters."""
    for name, values in grid_axes(sweep).items():
        trial.suggest_categorical(name, values)


def planned_from_attrs(trial: optuna.Trial | optuna.trial.FrozenTrial) -> PlannedRun | None:
    """The run a trial was planned for (enqueued or retried), or None for a fresh trial."""
    attrs = trial.user_attrs
    if not all(name in attrs for name in PLAN_ATTRS):
        return None
    return PlannedRun(dict(trial.params), ArchSpec.from_dict(attrs["spec"]),
                      Budget.from_dict(attrs["budget"]))

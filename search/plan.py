"""From a sweep file to concrete runs: shapes, budgets, grid points and search-space suggestions.

A run is identified by its config key, a hash of (spec, budget[, seed]): two grid points that
round to the same integer shape are one run, and a worker never trains a key that already has a
COMPLETE trial. Everything else a run depends on (data, recipe) is shared by the whole study, and
so is the seed, except on the repeats of ``noise:``, whose own seed enters their key.
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
from archscale.search.attrs import BUDGET_ATTR, CONFIG_KEY_ATTR, PLAN_ATTRS, SEED_ATTR, SPEC_ATTR
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
    seed: int | None = None
    """The run's own seed (a ``noise:`` repeat); None: the study's seed."""

    @property
    def key(self) -> str:
        return config_key(self.spec, self.budget, self.seed)

    def user_attrs(self) -> dict[str, Any]:
        """What a trial stores before training, so a retry needs nothing else."""
        attrs = {CONFIG_KEY_ATTR: self.key, SPEC_ATTR: self.spec.to_dict(),
                 BUDGET_ATTR: self.budget.to_dict()}
        return attrs if self.seed is None else {**attrs, SEED_ATTR: self.seed}

    def run_seed(self, study_seed: int) -> int:
        """The seed this run trains with."""
        return study_seed if self.seed is None else self.seed


_REQUIRED_ATTRS = PLAN_ATTRS[:3]


def config_key(spec: ArchSpec, budget: Budget, seed: int | None = None) -> str:
    """16 hex digits naming a run: its shape, budget and (a repeat's) own seed."""
    run: dict[str, Any] = {"spec": spec.to_dict(), "budget": budget.to_dict()}
    if seed is not None:
        run["seed"] = seed
    blob = json.dumps(run, sort_keys=True)
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


def budget_for(sweep: SweepFile, n_params: float, scale_index: int = 0,
               tokens_per_param: float | None = None) -> Budget:
    """The budget of a run of target N ``n_params``: ``tokens_per_param`` x N tokens when given
    (a grid run's ratio from ``grid.tokens_per_param``), else the study's rule: the budget's
    ``tokens_per_param`` x N, or its FLOPs (one per grid scale: ``scale_index``). Without a ratio
    this is the budget a recommendation or verification at a new N trains for."""
    rule = sweep.budget
    ratio = tokens_per_param if tokens_per_param is not None else rule.tokens_per_param
    if ratio is not None:
        return Budget(tokens=round(ratio * n_params))
    flops = rule.flops[scale_index] if isinstance(rule.flops, list) else rule.flops
    return Budget(flops=float(flops))


def _width_name(section: Any) -> str:
    return "d_model" if section.d_model is not None else "d_over_sqrt_n"


def grid_axes(sweep: SweepFile) -> dict[str, list]:
    """The grid's parameter names and values, in the order points are enumerated: the budget
    axis (``grid.tokens_per_param`` or ``grid.tokens``; absent without one) outermost, in its
    listed order, so every shape has finished a run, and its throughput measurement
    (``objective``), before any of its other budgets runs."""
    grid = sweep.grid
    assert grid is not None
    width = _width_name(grid)
    axes = {"N": grid.scales, width: getattr(grid, width), "r": grid.r, "gqa": grid.gqa}
    if grid.budget_axis is not None:
        axes = {grid.budget_axis: getattr(grid, grid.budget_axis), **axes}
    return axes


def plan_grid(sweep: SweepFile, vocab_size: int) -> list[PlannedRun]:
    """Every distinct run of a grid, then the repeats of ``noise:`` (``noise_points``); or one
    SweepFileError listing every impossible point."""
    grid = sweep.grid
    assert grid is not None
    axes = grid_axes(sweep)
    width = _width_name(grid)
    runs: dict[str, PlannedRun] = {}
    shapes: dict[tuple, ArchSpec | None] = {}  # a shape's specs, built once for all its budgets
    problems = []
    for point in itertools.product(*axes.values()):
        params = dict(zip(axes, point, strict=True))
        shape = (params["N"], params[width], params["r"], params["gqa"])
        scale_index = grid.scales.index(params["N"])
        if shape not in shapes:
            n_layers = grid.n_layers[scale_index] if grid.n_layers else None
            try:
                shapes[shape] = build_spec(sweep, vocab_size, n_params=params["N"], r=params["r"],
                                           gqa=params["gqa"], n_layers=n_layers,
                                           **{width: params[width]})
            except ArchscaleError as err:
                shapes[shape] = None
                problems.append(f"grid point {params}: {err}")
        spec = shapes[shape]
        if spec is None:
            continue
        budget = (Budget(tokens=round(params["tokens"])) if "tokens" in params else
                  budget_for(sweep, params["N"], scale_index, params.get("tokens_per_param")))
        run = PlannedRun(params, spec, budget)
        runs.setdefault(run.key, run)
    if problems:
        raise SweepFileError(f"{len(problems)} grid point(s) have no valid shape:\n  - "
                             + "\n  - ".join(problems))
    planned = list(runs.values())
    _check_passk_slice(sweep, axes, planned)
    return planned + noise_repeats(sweep, planned)


def _check_passk_slice(sweep: SweepFile, axes: dict[str, list], planned: list[PlannedRun]
                       ) -> None:
    """``passk.only`` names grid axes and selects at least one run, else a typo would sample
    nothing, silently."""
    passk = sweep.passk_settings
    if passk is None or passk.only is None:
        return
    unknown = sorted(set(passk.only) - set(axes))
    if unknown:
        raise SweepFileError(f"passk.only names {unknown}, which are not grid axes: choose from "
                             f"{sorted(axes)}")
    if not any(passk.samples_run(run.params) for run in planned):
        raise SweepFileError(f"passk.only {passk.only} selects none of the grid's runs: give "
                             "values the grid lists")


def noise_points(n_runs: int, repeats: int) -> list[int]:
    """Indices of the ``repeats`` runs, of ``n_runs`` in plan order, that ``noise:`` repeats:
    the middles of ``repeats`` equal slices of the plan, so they spread over budgets and scales."""
    return [int((i + 0.5) * n_runs / repeats) for i in range(repeats)]


def noise_repeats(sweep: SweepFile, planned: list[PlannedRun]) -> list[PlannedRun]:
    """The repeats ``noise:`` asks for: each chosen grid run once per seed (none without it)."""
    noise = sweep.noise
    if noise is None:
        return []
    if noise.runs > len(planned):
        raise SweepFileError(f"noise.runs={noise.runs} asks to repeat more runs than the grid "
                             f"plans ({len(planned)})")
    chosen = [planned[i] for i in noise_points(len(planned), noise.runs)]
    return [PlannedRun(run.params, run.spec, run.budget, seed)
            for run in chosen for seed in noise.seeds]


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
    if not all(name in attrs for name in _REQUIRED_ATTRS):
        return None
    return PlannedRun(dict(trial.params), ArchSpec.from_dict(attrs[SPEC_ATTR]),
                      Budget.from_dict(attrs[BUDGET_ATTR]), attrs.get(SEED_ATTR))

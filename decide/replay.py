"""Replays of a finished sweep: would the design engine have matched the whole pool for less?

The pool is every finished run but the target rows. Each method picks runs from it under a budget
(a fraction of the pool's total cost), the law is fitted to the picks, and the fit is scored on
the target rows as Li et al. 2026 score it: R^2 over the target region, clipped to [-1, 1] (a fit
that fails scores -1), beside the MSE, the coverage of the law's calibrated 90% prediction
intervals and, where the target rows name shapes, the regret of the shape the fit recommends.

Methods: ``design`` and ``vopt`` (the engine, decide/design.py, in growing batches, each fit
warm-started from the last); ``random``; ``cheapest`` (cheapest first); ``cost-random`` (random,
weighted by inverse cost); ``all`` (the whole pool, budget 1). The baselines fill each budget in
their own order, skipping runs that no longer fit. The engine is run afresh for each budget, as
a team with that budget would run it: it knows what it may spend, so a small budget's seed takes
the cheapest runs that make the law fittable (a prefix of the largest budget's order may not).
With ``by``, each group (e.g. a corpus) gets its own law and its share of the budget, and the
target rows of every group are scored together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.decide.design import COST_POWER, choose
from archscale.decide.design import METHODS as ENGINE_METHODS
from archscale.decide.design_law import DesignLaw
from archscale.laws.law import holdout_mask

METHODS = ("design", "random", "cheapest", "cost-random", "vopt", "all")
"""Every method a replay runs, in report order."""
BATCH_GROWTH = 0.25
"""A replay asks the engine for batches of this fraction of the finished runs (K parallel
workers that grow with the sweep): the picks of a 20% budget take tens of fits, not hundreds."""
LEVEL = 0.9
"""Prediction-interval level whose coverage is reported."""


@dataclass(frozen=True)
class Outcome:
    """One method's fit at one budget in one repeat, on the target rows."""

    predicted: np.ndarray
    """Predictions at the target rows (NaN where the fit failed)."""
    lower: np.ndarray
    """Lower end of the 90% prediction interval (NaN where unavailable)."""
    upper: np.ndarray
    """Upper end."""
    runs: int
    """Runs the fit used."""
    cost: float
    """What they cost."""


@dataclass(frozen=True)
class Replay:
    """What to replay."""

    pool: pd.DataFrame
    """Runs a method may pick."""
    target: pd.DataFrame
    """Rows the fitted law must predict."""
    costs: np.ndarray
    """Cost of every pool row."""
    law: DesignLaw
    """The law fitted to the picks."""
    by: str | None = None
    """Column whose groups get a law each (None: one law)."""
    shapes: str | None = None
    """Target column naming shapes: regret of the shape each fit recommends."""
    within: tuple[str, ...] = field(default=())
    """Target columns whose equal values make one decision among shapes (e.g. the scale)."""
    cost_power: float = COST_POWER
    """The engine divides gain by cost to this power (decide/design.py)."""
    criterion: str = "variance"
    """What the engine's runs should make more certain (design.CRITERIA; ``wrong_shape`` needs
    ``shapes``)."""


def split_target(table: pd.DataFrame, target: str | None, holdout_above: float | None,
                 holdout_by: str = "N") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool, target): the target rows by ``target`` (a pandas query) or by ``holdout_by >=
    holdout_above``."""
    if target is not None:
        try:
            mask = table.eval(target)
        except Exception as err:  # pandas raises many types for a bad expression
            raise SettingError(f"{{target}} {target!r} is not a query on this table ({err}); "
                               f"its columns are {list(table.columns)}") from None
        mask = np.asarray(mask, dtype=bool)
        if not mask.any() or mask.all():
            raise SettingError(f"{{target}} {target!r} selects {int(mask.sum())} of {len(table)} "
                               "rows: it must leave both target rows and a pool")
    else:
        mask = holdout_mask(table, holdout_above, holdout_by)
    return table[~mask].reset_index(drop=True), table[mask].reset_index(drop=True)


def _order(method: str, costs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if method == "cheapest":
        return np.argsort(costs, kind="stable")
    if method == "random":
        return rng.permutation(len(costs))
    weights = 1.0 / costs  # cost-random: without replacement, chance proportional to 1 / cost
    keys = rng.exponential(size=len(costs)) / weights
    return np.argsort(keys)


def _fill(order: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """Runs of ``order`` taken in turn while they fit the budget (later cheaper ones still may)."""
    spent, chosen = 0.0, []
    for i in order:
        if spent + costs[i] <= budget:
            chosen.append(i)
            spent += costs[i]
    return np.array(chosen, dtype=int)


def _engine_picks(method: str, pool: pd.DataFrame, costs: np.ndarray, law: DesignLaw,
                  target: pd.DataFrame, budget: float, seed: int,
                  cost_power: float = COST_POWER, criterion: str = "variance",
                  decisions: pd.Series | None = None) -> np.ndarray:
    """The engine's picks in order up to ``budget``, in batches of BATCH_GROWTH times the runs
    finished so far (at least one), each batch chosen on the last batch's fit. ``decisions``:
    a decision label per target row (the ``wrong_shape`` criterion)."""
    chosen: list[int] = []
    spent, warm = 0.0, None
    position = pd.Series(np.arange(len(pool)), index=pool.index)
    while True:
        remaining = np.setdiff1d(np.arange(len(pool)), chosen)
        choice = choose(pool.iloc[chosen], pool.iloc[remaining], law, target,
                        costs=costs[remaining], k=max(1, int(BATCH_GROWTH * len(chosen))),
                        budget=budget - spent, method=method, warm=warm, seed=seed,
                        cost_power=cost_power, criterion=criterion,
                        decisions=None if decisions is None else decisions.tolist())
        if not choice.picks:
            return np.array(chosen, dtype=int)
        warm = choice.fitted if choice.fitted is not None else warm
        for pick in choice.picks:
            i = int(position[pick.index])
            chosen.append(i)
            spent += costs[i]


def _outcome(law: DesignLaw, runs: pd.DataFrame, target: pd.DataFrame, cost: float) -> Outcome:
    nan = np.full(len(target), np.nan)
    try:
        fitted = law.fit(runs)
        predicted = law.predict(fitted, fitted.coef, target)[0]
    except ArchscaleError:
        return Outcome(nan, nan, nan, len(runs), cost)
    try:
        lower, upper = law.interval(fitted, target, LEVEL)
    except ArchscaleError:
        lower, upper = nan, nan
    return Outcome(predicted, lower, upper, len(runs), cost)


def replay_one(spec: Replay, methods: Sequence[str], budgets: Sequence[float],
               seed: int) -> dict[str, dict[float, Outcome]]:
    """One repeat: every method at every budget (fractions of the pool's cost)."""
    groups = ([(None, np.ones(len(spec.pool), bool), np.ones(len(spec.target), bool))]
              if spec.by is None else
              [(g, (spec.pool[spec.by] == g).to_numpy(), (spec.target[spec.by] == g).to_numpy())
               for g in sorted(set(spec.target[spec.by]))])
    out: dict[str, dict[float, list]] = {m: {} for m in methods}
    for g_index, (_, in_pool, in_target) in enumerate(groups):
        pool, target = spec.pool[in_pool], spec.target[in_target]
        costs = spec.costs[in_pool]
        total = float(costs.sum())
        rng = np.random.default_rng([seed, g_index])
        for method in methods:
            method_budgets = [1.0] if method == "all" else list(budgets)
            for budget in method_budgets:
                if method == "all":
                    chosen = np.arange(len(pool))
                elif method in ENGINE_METHODS:
                    chosen = _engine_picks(method, pool, costs, spec.law, target, budget * total,
                                           seed, spec.cost_power, spec.criterion,
                                           None if spec.shapes is None
                                           else decision_keys(spec)[in_target])
                else:
                    chosen = _fill(_order(method, costs, rng), costs, budget * total)
                outcome = _outcome(spec.law, pool.iloc[chosen], target, float(costs[chosen].sum()))
                out[method].setdefault(budget, []).append((outcome, in_target))
    return {m: {b: _merge(parts, len(spec.target)) for b, parts in per.items()}
            for m, per in out.items()}


def _merge(parts: list[tuple[Outcome, np.ndarray]], n_target: int) -> Outcome:
    """Groups' outcomes as one: target rows in their places, runs and cost summed."""
    predicted, lower, upper = (np.full(n_target, np.nan) for _ in range(3))
    runs, cost = 0, 0.0
    for outcome, in_target in parts:
        predicted[in_target], lower[in_target] = outcome.predicted, outcome.lower
        upper[in_target] = outcome.upper
        runs += outcome.runs
        cost += outcome.cost
    return Outcome(predicted, lower, upper, runs, cost)


def r2_clipped(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Target-region R^2 clipped to [-1, 1]; -1 where any prediction is missing (a failed fit)."""
    if not np.all(np.isfinite(predicted)):
        return -1.0
    ss_tot = float(np.sum((measured - measured.mean()) ** 2))
    r2 = 1 - float(np.sum((measured - predicted) ** 2)) / max(ss_tot, 1e-300)
    return float(np.clip(r2, -1.0, 1.0))


def decision_keys(spec: Replay) -> pd.Series:
    """Which decision each target row belongs to (its ``within`` values joined; one decision
    without ``within``)."""
    return (spec.target[list(spec.within)].astype(str).agg("|".join, axis=1)
            if spec.within else pd.Series("all", index=spec.target.index))


def regret(spec: Replay, predicted: np.ndarray) -> float:
    """Mean over decisions (target rows with equal ``within`` values) of the measured loss of the
    shape the fit ranks best minus the best measured loss among the shapes (NaN if no shapes)."""
    if spec.shapes is None or not np.all(np.isfinite(predicted)):
        return math.nan
    measured = spec.target[spec.law.target].to_numpy(dtype=float)
    keys = decision_keys(spec)
    losses = []
    for key in dict.fromkeys(keys):
        rows = np.flatnonzero((keys == key).to_numpy())
        if len(rows) > 1:
            losses.append(measured[rows[np.argmin(predicted[rows])]] - measured[rows].min())
    return float(np.mean(losses)) if losses else math.nan


def summarize(spec: Replay, repeats: list[dict[str, dict[float, Outcome]]]
              ) -> dict[str, dict[str, dict[str, float]]]:
    """The JSON table: method -> budget -> means over repeats (schema in the issue)."""
    measured = spec.target[spec.law.target].to_numpy(dtype=float)
    total = float(spec.costs.sum())
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in repeats[0]:
        table[method] = {}
        for budget in repeats[0][method]:
            outcomes = [r[method][budget] for r in repeats]
            r2 = np.array([r2_clipped(o.predicted, measured) for o in outcomes])
            ok = [o for o in outcomes if np.all(np.isfinite(o.predicted))]
            inside = [np.mean((o.lower <= measured) & (measured <= o.upper)) for o in ok
                      if np.all(np.isfinite(o.lower))]
            row = {"r2_mean": float(r2.mean()), "r2_sd": float(r2.std()),
                   "mse_mean": _mean([np.mean((o.predicted - measured) ** 2) for o in ok]),
                   "coverage_90_mean": _mean(inside),
                   "runs_mean": float(np.mean([o.runs for o in outcomes])),
                   "cost_fraction_mean": float(np.mean([o.cost for o in outcomes])) / total,
                   "failed_fits": len(outcomes) - len(ok)}
            if spec.shapes is not None:
                row["regret_mean"] = _mean([regret(spec, o.predicted) for o in ok])
            table[method][f"{budget:g}"] = row
    return table


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else None


def run_replay(spec: Replay, methods: Sequence[str], budgets: Sequence[float], repeats: int,
               on_repeat: Callable[[int, dict], None] | None = None) -> dict:
    """``repeats`` seeded repeats of every method; the summary table under "methods".
    ``on_repeat(i, table so far)`` after each repeat (a long replay's partial results)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SettingError(f"unknown replay method(s) {unknown} in {{methods}}: choose from "
                           f"{METHODS}")
    if spec.criterion == "wrong_shape" and spec.shapes is None:
        raise SettingError("the wrong_shape criterion scores the shape each fit recommends: "
                           "name the target rows' shapes with {shapes}")
    if not budgets or not all(0 < b <= 1 for b in budgets):
        raise SettingError(f"{{budgets}} {list(budgets)} must be fractions in (0, 1], e.g. "
                           "0.01,0.05,0.1,0.2")
    results: list[dict[str, dict[float, Outcome]]] = []
    for seed in range(repeats):
        # the whole pool is the same fit in every repeat: fitted once
        result = replay_one(spec, [m for m in methods if m != "all" or seed == 0], budgets, seed)
        if "all" in methods:
            result["all"] = results[0]["all"] if results else result["all"]
        results.append(result)
        if on_repeat is not None:
            on_repeat(seed, _table(spec, results))
    return _table(spec, results)


def _table(spec: Replay, results: list[dict[str, dict[float, Outcome]]]) -> dict:
    return {"methods": summarize(spec, results), "pool_runs": len(spec.pool),
            "target_rows": len(spec.target), "law": spec.law.name, "repeats": len(results)}

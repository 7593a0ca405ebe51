"""The design engine behind designed studies: ``search.designed``'s proposer, on ``decide.design``.

At each step of a study with ``design:`` (search/designed.py), ``propose`` hands the engine the
finished runs, the open grid points (their training FLOPs as costs), the FLOPs left and the
target rows (the sweep's target scale x its target shapes), and turns the engine's choice into
picks with reasons. It also says where the decision stands:

* the target interval: the 90% interval of the law's mean loss at the top shape (mean of law,
  not where one run lands), from the fit's linearised coefficient covariance with the law's
  calibrated run scatter (decide/design_law.py); each pick carries it before and after that pick,
  as the engine's rank-one updates shrink the target's variance;
* each target shape's probability of being best: the share of draws from that covariance in
  which its predicted loss is the lowest; and the top shape's probability of being best up to
  ``design.tolerance``: the share of draws in which its loss is within that fraction of the
  lowest (shapes tied that closely cannot be told apart by training them, so a rule on the
  strict probability would never settle between them). The study stops when the latter passes
  ``design.stop_probability`` on every run the study trained (runs still training are waited
  for first), or when no open grid point fits in the budget left.

While the seed design (decide/design.py) is queued but not finished, a step waits for its runs
(at most one run: every seed run is already running) rather than guess without a fit.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError
from archscale.decide.design import PRIOR_SD, SIGMA_FLOOR, Choice, choose, seed_size
from archscale.decide.design_law import DesignLaw, KindLaw, sensitivity, to_space
from archscale.search.designed import DesignState, Pick, Proposal
from archscale.search.sweepfile import SweepFile

Z90 = 1.6448536269514722
"""The standard normal's 95% quantile: a two-sided 90% interval is mean +- Z90 sd."""
DRAWS = 4000
"""Draws of the target predictions behind each shape's probability of being best."""
TOP = 3
"""Target shapes shown in a status."""
PROPOSER = "archscale.decide.design_study:propose"
"""This module's proposer, as workers load it (``WorkerOptions.proposer``)."""


def conditional_terms(sweep: SweepFile) -> list[dict[str, str]]:
    """Bian et al.'s U-shaped terms in d/sqrt(N) and r where the grid has 3+ values of them (a
    U needs three), ln of the feature where it has two, plus ln(GQA group) when GQA varies."""
    grid = sweep.grid
    terms = []
    for feature, values in (("d_over_sqrt_n", grid.d_over_sqrt_n), ("r", grid.r),
                            ("gqa_group", grid.gqa)):
        if len(set(values)) >= 3 and feature != "gqa_group":
            terms.append({"feature": feature, "form": "u_log_inv"})
        elif len(set(values)) >= 2:
            terms.append({"feature": feature, "form": "log"})
    return terms


def design_law(sweep: SweepFile) -> DesignLaw:
    """The sweep's law and form; the conditional law's default form is the demo's: the terms the
    grid's values identify, fitted robustly (as the demo fits it)."""
    design = sweep.design
    form = design.form
    if form is None and design.law == "conditional":
        form = {"terms": conditional_terms(sweep), "robust": "soft_l1"}
    return KindLaw(design.law, form or {})


def target_rows(sweep: SweepFile) -> pd.DataFrame:
    """The target: N and D of the target scale, crossed with the target shapes (default: the
    grid's widths, ratios and GQA groups)."""
    grid, target = sweep.grid, sweep.design.target
    n_params = (target.n_params if target.n_params is not None
                else target.scale_factor * max(grid.scales))
    ratio = target.tokens_per_param or sweep.budget.tokens_per_param
    shapes = itertools.product(target.d_over_sqrt_n or grid.d_over_sqrt_n, target.r or grid.r,
                               target.gqa or grid.gqa)
    return pd.DataFrame([{"N": n_params, "D": ratio * n_params, "d_over_sqrt_n": w, "r": r,
                          "gqa_group": g} for w, r, g in shapes])


def propose(sweep: SweepFile, state: DesignState) -> Proposal:
    """The next batch of a designed study (module docstring)."""
    law = design_law(sweep)
    finished = state.finished
    finished = finished[np.isfinite(finished[law.target].astype(float))]
    pool = state.candidates
    if pool.empty:
        return Proposal((), "every grid point is trained", {"stage": "done"})
    seed = seed_size(law)
    k = state.batch
    if len(finished) < seed:
        if len(finished) + len(state.pending) >= seed:  # the seed is queued: wait for it
            return Proposal((), None, {"stage": "seed"}, wait=True)
        k = max(k, seed - len(finished) - len(state.pending)) if state.step == 0 else k
    target = target_rows(sweep)
    criterion = sweep.design.criterion
    choice = choose(finished, pool, law, target, costs=pool["flops"].to_numpy(dtype=float), k=k,
                    budget=state.left_flops, seed=sweep.seed, criterion=criterion,
                    # every target row is a shape at the one target scale: one decision
                    decisions=[0] * len(target) if criterion == "wrong_shape" else None)
    status, sd_top = decision_status(law, choice, finished, target, sweep.design.tolerance)
    settled = status.get("p_settled")
    if (choice.stage == "reduce" and settled is not None
            and settled >= sweep.design.stop_probability):
        # NaN (a law blind to shape) never settles: such a design ends on its budget
        if not state.pending.empty:
            # the runs still training could move the fit, even out of identification (the demo
            # once stopped settled on 54 runs and its law was refused on the 55 it fitted):
            # decide on every run the study trains, waiting at most one run for them
            return Proposal((), None, status, wait=True)
        return Proposal((), f"settled: the top shape is best within {sweep.design.tolerance:.1%} "
                        f"with probability {settled:.2f} >= {sweep.design.stop_probability:g}",
                        status)
    if not choice.picks:
        return Proposal((), f"budget spent: no open grid point fits in the {state.left_flops:.3g} "
                        f"FLOPs left of {state.budget_flops:.3g}", status)
    return Proposal(_picks(choice, status.get("target_loss"), sd_top, law.space), None, status)


def _picks(choice: Choice, loss: float | None, sd_top: float, space: str) -> tuple[Pick, ...]:
    """The engine's picks with their reasons and, once the law is fitted, the top shape's
    interval before and after each (its sd shrinks as the target's mean variance does)."""
    picks, variance = [], choice.target_sd**2
    for pick in choice.picks:
        after = max(variance - pick.gain, 0.0)
        before_after = [None, None]
        if loss is not None and math.isfinite(variance) and variance > 0:
            before_after = [_interval(loss, sd_top * math.sqrt(v / choice.target_sd**2), space)
                            for v in (variance, after)]
        picks.append(Pick(str(pick.index), pick.reason, pick.gain / pick.cost, *before_after))
        variance = after
    return tuple(picks)


def _interval(loss: float, sd: float, space: str) -> tuple[float, float]:
    """A 90% interval of a loss whose sd is ``sd`` in the law's residual space (log: of its
    logarithm)."""
    if space == "log":
        return (loss * math.exp(-Z90 * sd), loss * math.exp(Z90 * sd))
    return (loss - Z90 * sd, loss + Z90 * sd)


def decision_status(law: DesignLaw, choice: Choice, finished: pd.DataFrame,
                    target: pd.DataFrame, tolerance: float = 0.0) -> tuple[dict[str, Any], float]:
    """Where the decision stands (JSON-able), and the top shape's log-loss sd; ``p_settled``:
    the top shape's probability of being best up to ``tolerance`` (relative loss)."""
    status: dict[str, Any] = {"stage": choice.stage, "law": law.name,
                              "problems": [p.message for p in choice.problems]}
    fitted = choice.fitted
    if fitted is None or not fitted.identified:
        return status, math.nan
    mean = to_space(law.predict(fitted, fitted.coef[None, :], target)[0], law.space)
    cov = _target_covariance(law, fitted, finished, target)
    if np.ptp(mean) == 0 and len(mean) > 1:  # a law blind to shape: no shape is best
        status["problems"].append(f"the {law.name} law predicts every target shape alike")
    draws = np.random.default_rng(0).multivariate_normal(mean, cov, DRAWS, method="eigh")
    p_best = np.bincount(np.argmin(draws, axis=1), minlength=len(target)) / DRAWS
    if status["problems"]:
        p_best = np.full(len(target), np.nan)
    order = np.lexsort((mean, -p_best))[:TOP]
    top = order[0]
    # within ``tolerance`` of the draw's best, in the law's residual space
    margin = math.log1p(tolerance) if law.space == "log" else tolerance * abs(float(mean[top]))
    p_settled = float(np.mean(draws[:, top] <= draws.min(axis=1) + margin))
    loss = float(np.exp(mean[top])) if law.space == "log" else float(mean[top])
    sd_top = math.sqrt(max(cov[top, top], 0.0))
    status.update(
        target_loss=loss, target_interval_90=list(_interval(loss, sd_top, law.space)),
        target_sd=choice.target_sd, target_sd_after=choice.target_sd_after,
        tolerance=tolerance, p_settled=None if status["problems"] else p_settled,
        top_shapes=[{**{c: _plain(target.iloc[i][c]) for c in ("d_over_sqrt_n", "r", "gqa_group")
                        if c in target.columns},
                     "loss": float(np.exp(mean[i])) if law.space == "log" else float(mean[i]),
                     "p_best": float(p_best[i])} for i in order])
    return status, sd_top


def _target_covariance(law: DesignLaw, fitted: Any, finished: pd.DataFrame,
                       target: pd.DataFrame) -> np.ndarray:
    """Cov of the law's mean (its residual space) at the target rows: J Sigma J^T, with Sigma
    the inverse Fisher information of the finished runs at the calibrated run scatter and the
    engine's weak prior (decide/design.py's linearisation)."""
    sigma2 = max(fitted.sigma, SIGMA_FLOOR) ** 2
    jac_f = sensitivity(law, fitted, finished)
    jac_t = sensitivity(law, fitted, target)
    fisher = jac_f.T @ jac_f / sigma2 + np.eye(jac_t.shape[1]) / PRIOR_SD**2
    try:
        return jac_t @ np.linalg.solve(fisher, jac_t.T)
    except np.linalg.LinAlgError as err:
        raise ArchscaleError(f"the {law.name} fit's information matrix is singular: {err}") from None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value

"""Designed studies: a proposer picks which grid points to train, one batch per refit.

A study with ``design:`` in its sweep file enqueues no grid point up front. Its queue holds
*design steps* instead: trials that carry ``DESIGN_STEP_ATTR`` and no run. The worker that claims
a step (an atomic WAITING -> RUNNING move, like any trial) calls the proposer once, enqueues the
batch it picks as ordinary planned runs, and enqueues the next step behind them; it then closes
the step (PRUNED, ``status`` "design step"). So:

* one refit serves a batch, and only one worker refits at a time, without any lock but the
  storage's own claim;
* the next step is claimed when the batch's last run is, so workers wait on each other for the
  refit only, never for a run; runs still queued or running are *pending*: the proposer leaves
  them out of its picks and counts their FLOPs as spent;
* a worker that dies during a step leaves a RUNNING trial that recovery re-enqueues, like a dead
  run (the step's attrs are kept on the retry); ``ensure_step`` restores a lost step when a
  study is run again, so a designed study resumes like a grid one, on one machine or many.

Why not an Optuna sampler: a sampler proposes inside ``study.ask()`` of every worker, so each
would refit on its own, none would know the others' picks, and what it proposed would live only
in its process until the trial ends. Enqueued trials are in the storage from the moment they are
picked, with the reason on each.

The proposer is a callable ``(sweep, DesignState) -> Proposal``; ``search`` defines that
interface and never imports an implementation: workers load it from an importable
``"module:attribute"`` path that the caller names (the ``archscale`` CLI names decide's engine).
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from archscale.arch.errors import ArchscaleError
from archscale.search.attrs import DESIGN_PICK_ATTR, DESIGN_STEP_ATTR
from archscale.search.plan import PlannedRun, noise_points, plan_grid, planned_from_attrs
from archscale.search.recovery import Heartbeat
from archscale.search.sweepfile import SweepFile
from archscale.search.table import trials_table


class StudyHandle(Protocol):
    """What a design step reads of ``study.StudyHandle`` (search/study.py enqueues the first step,
    so this module cannot import it back)."""

    study: optuna.Study
    storage: BaseStorage
    sweep: SweepFile

    @property
    def vocab_size(self) -> int: ...

DESIGN_STATUS_ATTR = "design_status"
"""User attr of a finished step: where the design stood (``Proposal.status``), the FLOPs spent and
budgeted, and ``stopped_because`` on the last step."""
STEP_STATUS = "design step"
"""The ``status`` user attr of a closed step."""
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DesignState:
    """What the proposer sees at a step."""

    finished: pd.DataFrame
    """The run table of the COMPLETE runs (``search.table.trials_table``)."""
    candidates: pd.DataFrame
    """Grid points not yet trained, queued or running, one row per config key (index), with the
    run table's shape columns, ``D``, ``flops`` and the grid coordinates (``params``)."""
    pending: pd.DataFrame
    """Picked runs still queued or running (the same columns)."""
    grid_flops: float
    """FLOPs of training every grid point once."""
    spent_flops: float
    """FLOPs of the runs finished, queued or running (failed runs' planned FLOPs included)."""
    budget_flops: float
    """FLOPs the design may spend in all."""
    batch: int
    """Runs to pick at this step."""
    step: int
    """This step's number (0: the first, which seeds the design)."""

    @property
    def left_flops(self) -> float:
        return max(self.budget_flops - self.spent_flops, 0.0)


@dataclass(frozen=True)
class Pick:
    """One run the proposer picks, with why."""

    key: str
    """Its config key (an index label of ``DesignState.candidates``)."""
    reason: str
    """Why it was picked, in one line."""
    info_per_flop: float
    """Expected information about the target per FLOP (the criterion's gain over its cost; 0
    where a seed or identification rule picked it)."""
    interval_before: tuple[float, float] | None = None
    """The target's interval before this run (None before the law is fitted)."""
    interval_after: tuple[float, float] | None = None
    """The interval the proposer expects once this run is in."""

    def attrs(self, step: int) -> dict[str, Any]:
        return {"step": step, "reason": self.reason, "info_per_flop": self.info_per_flop,
                "target_interval_before": self.interval_before,
                "target_interval_after": self.interval_after}


@dataclass(frozen=True)
class Proposal:
    """The proposer's answer at a step."""

    picks: tuple[Pick, ...]
    """The runs to train next (none: stop)."""
    stop: str | None = None
    """Why the design ends here (the decision is settled, or the budget is spent); None while it
    goes on."""
    status: dict[str, Any] = field(default_factory=dict)
    """Where the design stands, JSON-able (e.g. the target interval and the top shapes with
    their probability of being best): stored on the step and shown by ``study status``."""
    wait: bool = False
    """Ask again once a pending run has finished (e.g. the seed design is queued but no law can
    be fitted yet): the step waits, at most as long as one run."""


Proposer = Callable[[SweepFile, DesignState], Proposal]
"""The engine behind a designed study."""


def load_proposer(path: str) -> Proposer:
    """The callable at ``"module:attribute"``, or an ArchscaleError saying what is wrong."""
    module, _, name = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ArchscaleError(f"design proposer {path!r} cannot be loaded ({err}): give "
                             "'module:attribute' of an importable callable") from None
    if not callable(found):
        raise ArchscaleError(f"design proposer {path!r} is not callable")
    return found


def is_step(trial: FrozenTrial | optuna.Trial) -> bool:
    return DESIGN_STEP_ATTR in trial.user_attrs


# ---- the candidate pool --------------------------------------------------------------------------
def candidate_rows(runs: list[PlannedRun]) -> pd.DataFrame:
    """One row per planned run (index: its config key): the run table's shape columns, ``D``
    (the tokens its budget buys), ``flops`` (training FLOPs, arch/spec.py's rule) and its grid
    coordinates as ``params``."""
    rows = {}
    for run in runs:
        tokens = run.budget.tokens_for(run.spec)
        rows[run.key] = {**run.spec.table_row(), "D": tokens,
                         "flops": float(tokens * run.spec.train_flops_per_token()),
                         "params": run.params}
    return pd.DataFrame.from_dict(rows, orient="index")


def grid_pool(handle: StudyHandle) -> tuple[list[PlannedRun], pd.DataFrame]:
    """The grid's runs (noise repeats excluded) and their candidate rows."""
    runs = [run for run in plan_grid(handle.sweep, handle.vocab_size) if run.seed is None]
    return runs, candidate_rows(runs)


def budget_flops(sweep: SweepFile, grid_flops: float) -> float:
    budget = sweep.design.budget
    return float(budget.flops) if budget.flops is not None else budget.fraction * grid_flops


def design_state(handle: StudyHandle, step: int) -> tuple[DesignState, dict[str, PlannedRun]]:
    """The state a step hands the proposer, and the grid's runs by key."""
    runs, pool = grid_pool(handle)
    by_key = {run.key: run for run in runs}
    trials = handle.study.get_trials(deepcopy=False)
    live = {t.user_attrs.get("config_key"): t for t in trials
            if t.state in (TrialState.WAITING, TrialState.RUNNING) and not is_step(t)}
    done = {t.user_attrs.get("config_key"): t for t in trials
            if t.state.is_finished() and "status" in t.user_attrs and not is_step(t)}
    spent = sum(_planned_flops(t) for t in [*live.values(), *done.values()])
    taken = pool.index.isin(list(live)) | pool.index.isin(list(done))
    pending = pool[pool.index.isin(list(live))]
    state = DesignState(
        finished=trials_table(handle.study), candidates=pool[~taken], pending=pending,
        grid_flops=float(pool["flops"].sum()), spent_flops=spent,
        budget_flops=budget_flops(handle.sweep, float(pool["flops"].sum())),
        batch=handle.sweep.design.batch, step=step)
    return state, by_key


def _planned_flops(trial: FrozenTrial) -> float:
    """A run's FLOPs: what it spent once it finished, else what its budget buys."""
    result = trial.user_attrs.get("result") or {}
    if result.get("flops"):
        return float(result["flops"])
    run = candidate_rows([_planned(trial)])
    return float(run["flops"].iloc[0])


def _planned(trial: FrozenTrial) -> PlannedRun:
    planned = planned_from_attrs(trial)
    if planned is None:
        raise ArchscaleError(f"trial {trial.number} of a designed study carries no planned run")
    return planned


# ---- steps -------------------------------------------------------------------------------------------
def enqueue_step(handle: StudyHandle, step: int) -> None:
    handle.study.enqueue_trial({}, user_attrs={DESIGN_STEP_ATTR: step})


def ensure_step(handle: StudyHandle) -> None:
    """Give a designed study a step to claim unless one is queued or running, the design has
    stopped, or nothing else is left (a study created, or run again after a step was lost)."""
    trials = handle.study.get_trials(deepcopy=False)
    steps = [t for t in trials if is_step(t)]
    if any(not t.state.is_finished() for t in steps) or stopped_because(handle.study):
        return
    enqueue_step(handle, max((t.user_attrs[DESIGN_STEP_ATTR] for t in steps), default=-1) + 1)


def stopped_because(study: optuna.Study) -> str | None:
    """Why the design ended (None while it runs)."""
    status = latest_status(study)
    return None if status is None else status.get("stopped_because")


def latest_status(study: optuna.Study) -> dict[str, Any] | None:
    """The status the last closed step stored (None before the first)."""
    closed = [t for t in study.get_trials(deepcopy=False)
              if is_step(t) and DESIGN_STATUS_ATTR in t.user_attrs]
    if not closed:
        return None
    return max(closed, key=lambda t: t.user_attrs[DESIGN_STEP_ATTR]).user_attrs[DESIGN_STATUS_ATTR]


def live_status(handle: StudyHandle) -> dict[str, Any] | None:
    """The last step's status with the FLOPs and finished runs as they stand now (runs queued
    or running count as spent); None before the first step closes."""
    status = latest_status(handle.study)
    if status is None:
        return None
    state, _ = design_state(handle, int(status["step"]))
    return {**status, "spent_flops": state.spent_flops, "runs": len(state.finished)}


def run_step(handle: StudyHandle, trial: optuna.Trial, proposer: Proposer,
             heartbeat_s: float) -> list[PlannedRun]:
    """Run a claimed step: propose, enqueue the picks (and, at step 0, the ``noise:`` repeats of
    the first picks) and the next step, and close this one; the runs enqueued."""
    step = int(trial.user_attrs[DESIGN_STEP_ATTR])
    with Heartbeat(handle.storage, trial._trial_id, heartbeat_s):
        state, by_key = design_state(handle, step)
        proposal = _propose(handle, trial, step, proposer, state)
        while proposal.wait:
            state, by_key = _await_pending(handle, step, state, heartbeat_s)
            proposal = _propose(handle, trial, step, proposer, state)
        unknown = [p.key for p in proposal.picks if p.key not in state.candidates.index]
        if unknown:
            raise ArchscaleError(f"the proposer picked {unknown}, which are not open candidates")
        picked = [by_key[p.key] for p in proposal.picks]
        for pick, run in zip(proposal.picks, picked, strict=True):
            handle.study.enqueue_trial(run.params, user_attrs={
                **run.user_attrs(), DESIGN_PICK_ATTR: pick.attrs(step)})
        repeats = noise_repeats_of(handle.sweep, picked) if step == 0 else []
        for run in repeats:
            handle.study.enqueue_trial(run.params, user_attrs=run.user_attrs())
        added = sum(candidate_rows(picked + repeats)["flops"]) if picked else 0.0
        stop = proposal.stop or (None if picked else "the proposer picked no run")
        status = {**proposal.status, "step": step, "runs": len(state.finished),
                  "spent_flops": state.spent_flops + added, "budget_flops": state.budget_flops,
                  "grid_flops": state.grid_flops, "stopped_because": stop}
        if stop is None:
            enqueue_step(handle, step + 1)
        trial.set_user_attr(DESIGN_STATUS_ATTR, _json_safe(status))
        trial.set_user_attr("status", STEP_STATUS)
        trial.set_user_attr("message", stop or f"picked {len(picked)} run(s)")
        handle.study.tell(trial, state=TrialState.PRUNED)
    _log.info("design step %d: %d picks%s", step, len(picked), f"; stopped: {stop}" if stop else "")
    return picked + repeats


def _await_pending(handle: StudyHandle, step: int, state: DesignState, heartbeat_s: float
                   ) -> tuple[DesignState, dict[str, PlannedRun]]:
    """The state once a run the proposer waits for has ended: asked again before that, it would
    refit on the same runs, on a core a worker trains on."""
    if state.pending.empty:
        raise ArchscaleError(f"design step {step}: the proposer waits for runs, but none is "
                             "queued or running")
    waiting_on = set(state.pending.index)
    while True:
        time.sleep(min(5.0, max(0.5, heartbeat_s / 2)))
        state, by_key = design_state(handle, step)
        if set(state.pending.index) != waiting_on:
            return state, by_key


def _propose(handle: StudyHandle, trial: optuna.Trial, step: int, proposer: Proposer,
             state: DesignState) -> Proposal:
    """The proposer's answer; a proposer's error fails the step and stops the worker, naming
    the fix."""
    try:
        return proposer(handle.sweep, state)
    except Exception as err:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("message", f"{type(err).__name__}: {err}")
        handle.study.tell(trial, state=TrialState.FAIL)
        raise ArchscaleError(f"design step {step} failed: {err}. Fix it and run the study "
                             "again: it continues from the runs it has") from err


def noise_repeats_of(sweep: SweepFile, picked: list[PlannedRun]) -> list[PlannedRun]:
    """``noise:`` repeats of a design: ``runs`` of the first batch's picks, spread as
    ``plan.noise_points`` spreads them over a grid, each once per seed."""
    noise = sweep.noise
    if noise is None or not picked:
        return []
    chosen = [picked[i] for i in sorted(set(noise_points(len(picked), min(noise.runs,
                                                                            len(picked)))))]
    return [PlannedRun(run.params, run.spec, run.budget, seed)
            for run in chosen for seed in noise.seeds]


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None: storages keep user attrs as JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


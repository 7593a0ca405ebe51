"""Designed studies (search/designed.py): the proposer's picks become runs, one refit per batch,
the budget holds, the stop is recorded, and a lost step or a dead worker loses nothing.

The proposer here is a stand-in (cheapest open candidate first), so these tests check the
plumbing against rules computed by hand, not the design engine's choices (tests/test_studies.py).
"""

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from optuna.trial import TrialState

from archscale.search import designed
from archscale.search.recovery import fail_and_retry
from archscale.search.study import create_study, open_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.worker import WorkerOptions, run_study, run_worker

pytestmark = pytest.mark.slow

GRID = {  # the four shapes of tests/test_study_runs.py (XLA's cache serves them), two budgets
    "seq_len": 32, "recipe": {"lr": 3e-3, "batch_size": 4, "eval_interval": 0.5,
                              "eval_tokens": 1024},
    "budget": {"tokens_per_param": 1}, "throughput": {"enabled": False}, "shape": {"head_dim": 8},
    "grid": {"scales": [6e3], "d_model": [16, 24], "r": [1.0], "gqa": [1, 2], "n_layers": [1],
             "tokens_per_param": [1, 2]},
    "noise": {"seeds": [1], "runs": 1},
    "design": {"budget": {"fraction": 0.5}, "batch": 2,
               "target": {"scale_factor": 10, "d_over_sqrt_n": [0.2]}},
}
PROPOSER = f"{Path(__file__).stem}:cheapest_first"
PG_URL = os.environ.get("ARCHSCALE_TEST_POSTGRES_URL")


def cheapest_first(sweep, state: designed.DesignState) -> designed.Proposal:
    """Stand-in engine: the cheapest open candidates the budget still affords."""
    left, picks = state.left_flops, []
    for key, row in state.candidates.sort_values("flops").iterrows():
        if len(picks) < state.batch and row["flops"] <= left:
            left -= row["flops"]
            picks.append(designed.Pick(key, "cheapest", 1 / row["flops"], (1.0, 2.0), (1.2, 1.8)))
    return designed.Proposal(tuple(picks), None if picks else "budget spent",
                             {"stage": "test", "pending": len(state.pending)})


def design_study(tmp_path, name):
    return create_study(parse_sweep({**GRID, "name": name}), str(tmp_path / "s.journal"))


def finished_runs(handle):
    return [t for t in handle.study.get_trials(states=(TrialState.COMPLETE,))]


def test_picks_train_within_budget_and_the_stop_is_recorded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    handle = design_study(tmp_path, "designed")
    assert [t.state for t in handle.study.get_trials()] == [TrialState.WAITING]  # one step only
    _, pool = designed.grid_pool(handle)
    cheapest = pool.sort_values("flops")["flops"]
    budget = 0.5 * pool["flops"].sum()
    run_worker(handle.name, handle.url, WorkerOptions(progress=False, proposer=PROPOSER))
    handle = open_study(handle.name, handle.url)
    runs = finished_runs(handle)
    picked = [t for t in runs if designed.DESIGN_PICK_ATTR in t.user_attrs]
    # by hand: a prefix of the cheapest candidates, plus the repeat of a first-batch pick, that
    # the budget affords, and that one more candidate would overrun
    assert len(runs) == len(picked) + 1 and sum(t.user_attrs.get("seed") == 1 for t in runs) == 1
    spent = sum(t.user_attrs["result"]["flops"] for t in runs)
    assert {t.user_attrs["config_key"] for t in picked} == set(cheapest.index[:len(picked)])
    assert spent <= budget < spent + cheapest.iloc[len(picked)]
    expected = len(picked)
    first = min(picked, key=lambda t: t.number).user_attrs[designed.DESIGN_PICK_ATTR]
    assert first == {"step": 0, "reason": "cheapest", "info_per_flop": 1 / cheapest.iloc[0],
                     "target_interval_before": [1.0, 2.0], "target_interval_after": [1.2, 1.8]}
    steps = [t for t in handle.study.get_trials() if designed.is_step(t)]
    assert all(t.state == TrialState.PRUNED for t in steps)
    assert len(steps) == -(-expected // 2) + 1  # batches of 2, then the step that stops
    status = designed.latest_status(handle.study)
    assert status["stopped_because"] == "budget spent" and status["stage"] == "test"
    assert status["spent_flops"] == pytest.approx(spent, rel=0.02)
    # run it again: the design has stopped, nothing is queued or trained
    run_study(handle.name, handle.url, options=WorkerOptions(progress=False, proposer=PROPOSER))
    assert len(finished_runs(open_study(handle.name, handle.url))) == len(runs)


@pytest.mark.parametrize("kind", ["journal", pytest.param("postgres", marks=[
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="set ARCHSCALE_TEST_POSTGRES_URL (tests/postgres.sh)")])])
def test_two_worker_processes_share_one_design(kind, tmp_path, monkeypatch):
    """Two workers on one storage, as on two machines sharing a PostgreSQL server."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    url = str(tmp_path / "s.journal") if kind == "journal" else PG_URL
    handle = create_study(parse_sweep({**GRID, "name": f"shared-{uuid.uuid4().hex[:8]}"}), url)
    run_study(handle.name, handle.url, workers=2,
              options=WorkerOptions(progress=False, proposer=PROPOSER))
    handle = open_study(handle.name, handle.url)
    keys = [t.user_attrs["config_key"] for t in finished_runs(handle)
            if designed.DESIGN_PICK_ATTR in t.user_attrs]
    assert len(keys) == len(set(keys)) >= 2  # no grid point trained twice
    assert designed.stopped_because(handle.study) == "budget spent"


def test_a_lost_step_is_restored_and_a_retried_step_keeps_its_number(tmp_path):
    handle = design_study(tmp_path, "lost")
    step = handle.study.get_trials()[0]
    handle.storage.set_trial_state_values(step._trial_id, TrialState.RUNNING)
    fail_and_retry(handle.study, handle.storage, step._trial_id, "its worker died", 1)
    retried = handle.study.get_trials()[-1]
    assert retried.state == TrialState.WAITING and retried.user_attrs == {"design_step": 0}
    handle.storage.set_trial_state_values(retried._trial_id, TrialState.RUNNING)
    fail_and_retry(handle.study, handle.storage, retried._trial_id, "died again", 1)  # no retry left
    assert handle.study.get_trials()[-1].state == TrialState.FAIL
    designed.ensure_step(handle)
    assert handle.study.get_trials()[-1].state == TrialState.WAITING
    designed.ensure_step(handle)  # one waiting step is enough
    assert sum(t.state == TrialState.WAITING for t in handle.study.get_trials()) == 1


def test_a_designed_study_needs_its_engine(tmp_path):
    handle = design_study(tmp_path, "no-engine")
    with pytest.raises(Exception, match="is designed"):
        run_worker(handle.name, handle.url, WorkerOptions(progress=False))
    with pytest.raises(Exception, match="cannot be loaded"):
        designed.load_proposer("archscale.search.designed:nothing_here")


def test_a_waiting_step_asks_the_proposer_again_only_once_a_run_it_waits_for_ends(monkeypatch):
    """Each answer refits the law: asked every poll, a step would refit on the same runs for as
    long as a run trains, on a core a worker trains on."""
    def state(*pending):
        return SimpleNamespace(pending=pd.DataFrame({"flops": 1.0}, index=list(pending)))

    polls = iter([state("a", "b"), state("a", "b"), state("a", "b"), state("b")])
    monkeypatch.setattr(designed, "design_state", lambda handle, step: (next(polls), {}))
    monkeypatch.setattr(designed.time, "sleep", lambda s: None)
    after, _ = designed._await_pending(None, 3, state("a", "b"), heartbeat_s=1.0)
    assert list(after.pending.index) == ["b"]
    assert next(polls, "used up") == "used up"  # it polled the storage until the change
    with pytest.raises(Exception, match="none is queued or running"):
        designed._await_pending(None, 3, state(), heartbeat_s=1.0)

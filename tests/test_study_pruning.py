"""Median pruning inside a study: a run whose intermediate loss is worse than the median of the
finished runs at the same step stops there, is recorded as pruned, and stays out of the fits."""

import numpy as np
from optuna.trial import TrialState

from archscale.search.study import create_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.table import trials_table
from archscale.search.worker import WorkerOptions, run_study
from archscale.sweeps.results import RunResult

SWEEP = {
    "name": "pruning", "tokenizer": "byte", "seq_len": 32,
    "recipe": {"lr": 1.0e-2, "batch_size": 8, "eval_interval": 0.25, "eval_tokens": 4096},
    "budget": {"tokens_per_param": 4}, "throughput": {"enabled": True, "batch": 2, "context": 32,
                                                      "decode_tokens": 4, "min_seconds": 0.05},
    "shape": {"head_dim": 8, "max_params_error": 0.3}, "seed": 0,
    # widths 16 and 24, r 0.5 to 3 at N = 16,000 (depth as the budget affords): some fall behind
    "search": {"n_params": 1.6e4, "d_model": {"low": 16, "high": 24}, "r": {"low": 0.5, "high": 3.0},
               "pruner": "median", "n_trials": 8, "n_startup_trials": 3},
}


def test_runs_behind_the_median_are_pruned_where_they_fall_behind(tmp_path):
    handle = create_study(parse_sweep(SWEEP), str(tmp_path / "study.journal"))
    run_study(handle.name, handle.url, options=WorkerOptions(progress=False))
    trials = handle.study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED
              and t.user_attrs.get("status") == "pruned"]
    assert len(trials) == 8 and len(finished) >= 3 and pruned, [t.state for t in trials]
    budget = round(4 * 1.6e4)
    for trial in pruned:
        result = RunResult.from_dict(trial.user_attrs["result"])
        assert result.status == "pruned" and result.tokens < budget
        # Optuna's median rule, checked from the stored values: at the step where the run
        # stopped, its loss was worse than the median of the earlier COMPLETE runs at that step
        # (MedianPruner reads completed trials only; one worker finishes them in number order)
        step, loss = max(trial.intermediate_values.items())
        earlier = [t.intermediate_values[step] for t in finished
                   if t.number < trial.number and step in t.intermediate_values]
        assert loss > np.median(earlier)
    for trial in finished:
        assert RunResult.from_dict(trial.user_attrs["result"]).tokens >= budget
    # the laws fit complete runs only; the pruned ones join with their status on request
    assert set(trials_table(handle.study)["trial_id"]) == {t.number for t in finished}
    statuses = trials_table(handle.study, include_failed=True)["status"]
    assert (statuses == "pruned").sum() == len(pruned)

"""How a finished run is recorded in its trial (state, attrs, artifact) and read back as a table."""

import json

from optuna.artifacts import download_artifact
from optuna.trial import TrialState

from archscale.search.objective import TrialRunner
from archscale.search.plan import planned_from_attrs
from archscale.search.spool import Spool
from archscale.search.storage import artifact_dir, artifact_store
from archscale.search.study import create_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.table import COLUMNS, trials_table
from archscale.search.worker import claim
from archscale.sweeps.results import RunResult

GRID = {
    "name": "record-grid", "seq_len": 32, "recipe": {"batch_size": 4},
    "budget": {"tokens_per_param": 1}, "shape": {"head_dim": 8},
    "grid": {"scales": [6e3], "d_model": [16, 24], "r": [1.0], "gqa": [1, 2], "n_layers": [1]},
}


def result_for(planned, status: str, val_loss: float | None) -> RunResult:
    curve = [{"step": 2, "tokens": 256, "train_loss": 5.0, "val_loss": val_loss, "val_accuracy": 0.1}]
    spec = planned.spec
    return RunResult(
        spec=spec.to_dict(), status=status, message="" if status == "complete" else status,
        val_loss=val_loss, val_accuracy=0.1, task_accuracy=None, loss_curve=curve, tokens=6016,
        flops=6016.0 * spec.train_flops_per_token(), steps=47, wall_time_s=1.0,
        tokens_per_s=6016.0, mfu=None, compile_time_s=0.5, device_kind="cpu", n_devices=1, seed=0,
        recipe={}, budget=planned.budget.to_dict(), data_fingerprint=None,
        diverged_step=47 if status == "diverged" else None, versions={}, git_commit=None,
        params_total=spec.params_total, params_nonembed=spec.params_nonembed,
        throughput={"batch": 2, "context": 32, "prefill_tokens_per_s": 9e4,
                    "decode_tokens_per_s": 3e3} if status == "complete" else None)


def test_outcomes_map_to_states_attrs_artifacts_and_table_rows(tmp_path):
    url = str(tmp_path / "s.journal")
    handle = create_study(parse_sweep(GRID), url)
    runner = TrialRunner(handle, data=None, artifacts=artifact_store(url),
                         artifact_dir=artifact_dir(url), heartbeat_s=1,
                         spool=Spool(tmp_path / "spool"))
    finished = {}
    for status, loss in (("complete", 4.2), ("diverged", None), ("pruned", 4.9), ("oom", None)):
        trial = claim(handle)
        planned = planned_from_attrs(trial)
        finished[status] = (trial.number, runner.record(trial, result_for(planned, status, loss)))
    assert {s: state for s, (_, state) in finished.items()} == {
        "complete": TrialState.COMPLETE, "diverged": TrialState.FAIL,
        "pruned": TrialState.PRUNED, "oom": TrialState.FAIL}

    trials = handle.study.get_trials()
    done = trials[finished["complete"][0]]
    assert done.values == [4.2] and done.user_attrs["decode_tokens_per_s"] == 3e3
    assert RunResult.from_dict(done.user_attrs["result"]).val_loss == 4.2
    curve = tmp_path / "curve.json"
    download_artifact(artifact_store=runner.artifacts, file_path=str(curve),
                      artifact_id=done.user_attrs["loss_curve_artifact"])
    assert json.loads(curve.read_text())[0]["val_loss"] == 4.2
    diverged = trials[finished["diverged"][0]]
    assert diverged.user_attrs["status"] == "diverged" and diverged.user_attrs["message"]

    # A second trial of the complete run's config is refused without training.
    handle.study.enqueue_trial(done.params, user_attrs={k: done.user_attrs[k]
                                                        for k in ("config_key", "spec", "budget")})
    twin = claim(handle)
    twin_state = runner._finish(twin, planned_from_attrs(twin), result_for(
        planned_from_attrs(twin), "complete", 4.1))
    assert twin_state == TrialState.PRUNED
    assert handle.study.get_trials()[twin.number].user_attrs["duplicate_of"] == done.number

    table = trials_table(handle.study)
    assert list(table.columns) == COLUMNS and table["trial_id"].tolist() == [done.number]
    row = table.iloc[0]
    assert (row["loss"], row["decode_tokens_per_s"], row["tp_batch"], row["tp_context"]) == (
        4.2, 3e3, 2, 32)
    assert row["N"] == done.user_attrs["N"] and row["D"] == 6016
    everything = trials_table(handle.study, include_failed=True)
    assert sorted(everything["status"]) == ["complete", "diverged", "duplicate", "oom", "pruned"]

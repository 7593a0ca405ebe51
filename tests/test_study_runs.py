"""Real studies: tiny models trained by real workers on real storages (journal, SQLite, PostgreSQL).

Every grid test uses the same four shapes, so after the first one XLA's persistent cache serves
the compilations (also to the worker subprocesses, which inherit ARCHSCALE_JAX_CACHE).
"""

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from archscale.cli.main import app
from archscale.search.attrs import OWNER_ATTR, STALE_ATTR, TRIES_ATTR
from archscale.search.storage import artifact_dir
from archscale.search.study import create_study, open_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.table import COLUMNS, trials_table
from archscale.search.worker import WorkerOptions, run_study, run_worker

pytestmark = pytest.mark.slow

GRID = {
    "name": "tiny-grid", "seq_len": 32,
    "recipe": {"lr": 3e-3, "batch_size": 4, "eval_interval": 0.5, "eval_tokens": 1024},
    "budget": {"tokens_per_param": 1}, "throughput": {"enabled": False},
    "shape": {"head_dim": 8},
    "grid": {"scales": [6e3], "d_model": [16, 24], "r": [1.0], "gqa": [1, 2], "n_layers": [1]},
}
QUIET = WorkerOptions(progress=False)
WORKER = [sys.executable, "-c", "from archscale.cli.main import main; main()", "study", "worker"]


def grid_sweep(name: str):
    return parse_sweep({**GRID, "name": name})


def assert_exactly_once(handle) -> list:
    """Every planned run has exactly one COMPLETE trial, with a finite loss; those trials."""
    complete = handle.study.get_trials(states=(TrialState.COMPLETE,))
    planned = {run.key for run in handle.planned_runs()}
    keys = [t.user_attrs["config_key"] for t in complete]
    assert sorted(keys) == sorted(planned)
    assert all(math.isfinite(t.values[0]) for t in complete)
    return complete


def kill_one_worker_mid_trial(url: str, name: str, n_workers: int, grace: int) -> None:
    """Start workers, SIGKILL the first one seen running a trial, let the others finish."""
    procs = [subprocess.Popen([*WORKER, name, "--storage", url, "--heartbeat", "1",
                               "--grace", str(grace), "--no-progress"]) for _ in range(n_workers)]
    try:
        handle = open_study(name, url)
        pids = {p.pid: p for p in procs}
        victim = None
        deadline = time.time() + 600
        while victim is None and time.time() < deadline:
            for trial in handle.study.get_trials(states=(TrialState.RUNNING,)):
                owner = trial.system_attrs.get(OWNER_ATTR, {})
                if owner.get("pid") in pids:
                    victim = pids[owner["pid"]]
                    break
            time.sleep(0.2)
        assert victim is not None, "no worker started a trial"
        os.kill(victim.pid, signal.SIGKILL)
        survivors = [p for p in procs if p is not victim]
        assert [p.wait(timeout=900) for p in survivors] == [0] * len(survivors)
        victim.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_continuing_a_study_never_retrains_finished_trials(tmp_path):
    url = str(tmp_path / "study.journal")
    handle = create_study(grid_sweep("tiny-grid"), url)
    first_number = run_worker("tiny-grid", url, WorkerOptions(max_trials=1, progress=False))[0]
    first = handle.study.get_trials()[first_number]
    assert first.state == TrialState.COMPLETE

    run_study("tiny-grid", url, options=QUIET)
    complete = assert_exactly_once(handle)
    assert len(complete) == 4 and len(handle.study.trials) == 4
    assert handle.study.get_trials()[first_number].datetime_complete == first.datetime_complete
    run_study("tiny-grid", url, options=QUIET)  # done: nothing runs again
    create_study(grid_sweep("tiny-grid"), url)  # nor is anything enqueued again
    assert len(handle.study.get_trials()) == 4

    table = trials_table(handle.study)
    assert list(table.columns) == COLUMNS and len(table) == 4
    assert (table["status"] == "complete").all() and table["loss"].between(2.0, 6.0).all()
    assert (table["D"] >= 6000).all() and (table["study"] == "tiny-grid").all()
    assert sorted(table["trial_id"]) == [0, 1, 2, 3]
    assert set(table["gqa_group"]) == {1, 2} and set(table["d_model"]) == {16, 24}
    curve_id = first.user_attrs["loss_curve_artifact"]
    assert (artifact_dir(url) / curve_id).is_file()

    cli = CliRunner()
    status = cli.invoke(app, ["study", "status", "tiny-grid", "--storage", url])
    assert status.exit_code == 0, status.output
    assert "complete: 4" in status.output
    csv = tmp_path / "runs.csv"
    export = cli.invoke(app, ["study", "export", "tiny-grid", "--storage", url, "--csv", str(csv)])
    assert export.exit_code == 0 and "wrote 4 runs" in export.output
    assert csv.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_journal_two_workers_one_killed_mid_trial_each_config_once(tmp_path):
    url = str(tmp_path / "study.journal")
    handle = create_study(grid_sweep("kill-journal"), url)
    kill_one_worker_mid_trial(url, "kill-journal", n_workers=2, grace=30)
    assert_exactly_once(handle)
    dead = handle.study.get_trials(states=(TrialState.FAIL,))
    assert len(dead) == 1 and "is gone" in dead[0].system_attrs[STALE_ATTR]
    assert "status" not in dead[0].user_attrs


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("ARCHSCALE_TEST_POSTGRES_URL"),
                    reason="set ARCHSCALE_TEST_POSTGRES_URL (bash tests/postgres.sh prints one)")
def test_postgres_three_workers_one_killed_mid_trial_each_config_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the artifact folder of a server storage is ./archscale.artifacts
    url = os.environ["ARCHSCALE_TEST_POSTGRES_URL"]
    name = f"kill-pg-{uuid.uuid4().hex[:8]}"
    handle = create_study(grid_sweep(name), url)
    try:
        kill_one_worker_mid_trial(url, name, n_workers=3, grace=4)
        assert_exactly_once(handle)
        dead = [t for t in handle.study.get_trials(states=(TrialState.FAIL,))
                if "status" not in t.user_attrs]
        assert len(dead) >= 1  # failed by Optuna's heartbeat, then retried
        retried = {t["trial"] for r in handle.study.trials for t in r.system_attrs.get(TRIES_ATTR, [])}
        assert all(t.number in retried for t in dead)
        assert (Path("archscale.artifacts")).is_dir()
    finally:
        optuna.delete_study(study_name=name, storage=handle.storage)


def test_multiobjective_search_with_a_seed_proposes_the_same_configs_again(tmp_path):
    search = {
        "name": "tiny-search", "seq_len": 32,
        "recipe": {"lr": 3e-3, "batch_size": 4, "eval_interval": 0.5, "eval_tokens": 1024},
        "budget": {"tokens_per_param": 1}, "shape": {"head_dim": 8, "max_params_error": 0.5},
        "throughput": {"batch": 1, "context": 16, "decode_tokens": 4, "repeats": 1},
        "seed": 7,
        "search": {"n_params": 6e3, "d_model": {"low": 16, "high": 32}, "r": {"low": 0.5, "high": 3},
                   "gqa": [1, 2], "n_layers": 1, "objectives": ["loss", "decode_throughput"],
                   "target_loss": 4.5, "n_trials": 3, "n_startup_trials": 3},
    }
    sqlite = f"sqlite:///{tmp_path / 'a.db'}"
    first = create_study(parse_sweep(search), sqlite)
    run_study("tiny-search", sqlite, options=QUIET)
    journal = str(tmp_path / "b.journal")
    second = create_study(parse_sweep(search), journal)
    run_worker("tiny-search", journal, WorkerOptions(max_trials=1, progress=False))
    run_worker("tiny-search", journal, QUIET)  # a new process would resume the same way

    def proposals(handle):
        return [t.params for t in handle.study.get_trials()]

    assert len(proposals(first)) == 3 and proposals(first) == proposals(second)
    for trial in first.study.get_trials():
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("message")
        loss, decode = trial.values
        assert decode == trial.user_attrs["result"]["throughput"]["decode_tokens_per_s"] > 0
        assert trial.system_attrs["constraints:target_loss"] == pytest.approx(loss - 4.5)
    assert first.study.best_trials


def test_budgets_and_seed_repeats_are_runs_of_their_own_each_shape_timed_once(tmp_path):
    from archscale.search.noise import noise_floor

    url = str(tmp_path / "study.journal")
    sweep = {**GRID, "name": "noisy-grid",
             "throughput": {"batch": 1, "context": 8, "decode_tokens": 2, "repeats": 1,
                            "min_seconds": 0},
             "grid": {**GRID["grid"], "d_model": [16], "tokens_per_param": [1, 2]},
             "noise": {"seeds": [3], "runs": 1}}
    handle = create_study(parse_sweep(sweep), url)
    run_study("noisy-grid", url, options=QUIET)
    trials = assert_exactly_once(handle)
    assert len(trials) == 5  # 2 shapes x 2 budgets, and one of them again with seed 3
    table = trials_table(handle.study).sort_values("trial_id")
    assert table["seed"].tolist() == [0, 0, 0, 0, 3]
    assert table.groupby("d_model")["D"].nunique().tolist() == [2]
    repeat, twin = table.iloc[4], table.iloc[2]  # the plan's middle run, repeated
    assert (repeat["D"], repeat["gqa_group"]) == (twin["D"], twin["gqa_group"])
    assert repeat["loss"] != twin["loss"]
    assert noise_floor(table) == pytest.approx(abs(repeat["loss"] - twin["loss"])
                                               / (repeat["loss"] + twin["loss"]) * 2 ** 0.5)
    by_number = {t.number: t for t in trials}
    assert by_number[4].user_attrs["seed"] == 3 and "seed" not in by_number[2].user_attrs
    # Each shape is timed by its first run; its other runs copy that measurement.
    measured = [n for n, t in by_number.items() if "throughput_of_trial" not in t.user_attrs]
    assert sorted(measured) == [0, 1]
    for number in (2, 3, 4):
        source = by_number[number].user_attrs["throughput_of_trial"]
        assert source in (0, 1)
        assert (by_number[number].user_attrs["result"]["throughput"]
                == by_number[source].user_attrs["result"]["throughput"])


def trial_process_of(worker: subprocess.Popen) -> int | None:
    """The pid of a worker's live trial process (its child that is not the spawn helper), if
    any. A trial process just killed stays a zombie until the worker reaps it: it is skipped,
    as is one that exits while it is looked at."""
    import psutil

    for child in psutil.Process(worker.pid).children():
        try:
            if (child.status() != psutil.STATUS_ZOMBIE
                    and "resource_tracker" not in " ".join(child.cmdline())):
                return child.pid
        except psutil.Error:  # exited, or became a zombie, between the two calls
            continue
    return None


def test_a_trial_process_killed_by_the_os_leaves_the_worker_alive_and_is_retried(tmp_path):
    url = str(tmp_path / "study.journal")
    handle = create_study(grid_sweep("crash-grid"), url)
    worker = subprocess.Popen([*WORKER, "crash-grid", "--storage", url, "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = []
    try:
        for sig in (signal.SIGSEGV, signal.SIGKILL):  # a fault in a kernel, the OOM killer
            deadline = time.time() + 600
            while time.time() < deadline and worker.poll() is None:
                running = handle.study.get_trials(states=(TrialState.RUNNING,))
                child = trial_process_of(worker)
                if running and child and running[0].number not in killed:
                    os.kill(child, sig)
                    killed.append(running[0].number)
                    break
                time.sleep(0.2)
        output, _ = worker.communicate(timeout=900)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output
    assert "Traceback" not in output
    assert_exactly_once(handle)
    trials = handle.study.get_trials()
    reasons = [trials[n].system_attrs[STALE_ATTR] for n in killed]
    assert "crashed with SIGSEGV" in reasons[0] and "killed by SIGKILL" in reasons[1]
    assert all(trials[n].state == TrialState.FAIL for n in killed)
    for number, reason in zip(killed, reasons, strict=True):
        assert f"trial {number}: {reason}; it runs again (try 2 of 11)" in output

"""Storages, stale-trial recovery, claiming and per-trial seeding, without training anything."""

import datetime
import os
import signal
import subprocess
import time
import uuid

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.search import storage as storage_lib
from archscale.search.attrs import HEARTBEAT_ATTR, OWNER_ATTR, STALE_ATTR, TRIES_ATTR
from archscale.search.devices import split_cores
from archscale.search.plan import suggest_run
from archscale.search.recovery import (
    Heartbeat,
    owner_info,
    recover_stale,
    stale_reason,
)
from archscale.search.samplers import make_sampler
from archscale.search.study import create_study, open_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.table import pareto_front
from archscale.search.worker import claim

GRID = {
    "name": "recovery-grid", "seq_len": 32, "recipe": {"batch_size": 4},
    "budget": {"tokens_per_param": 1}, "shape": {"head_dim": 8},
    "grid": {"scales": [6e3], "d_model": [16, 24], "r": [1.0], "gqa": [1, 2], "n_layers": [1]},
}
SEARCH = {
    "name": "recovery-search", "seq_len": 32, "recipe": {"batch_size": 4},
    "budget": {"tokens_per_param": 1}, "shape": {"head_dim": 8, "max_params_error": 0.5},
    "search": {"n_params": 6e3, "d_model": {"low": 16, "high": 32}, "r": {"low": 0.5, "high": 3},
               "gqa": [1, 2], "n_layers": 1, "objectives": ["loss", "decode_throughput"],
               "n_trials": 6, "n_startup_trials": 3},
}


@pytest.fixture
def dead_owner():
    """The owner record of a process on this host that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return {**owner_info(), "pid": child.pid, "start": None}


@pytest.fixture
def zombie():
    """The owner record of a SIGKILLed child process that nobody has reaped yet."""
    child = subprocess.Popen(["sleep", "60"])
    os.kill(child.pid, signal.SIGKILL)
    time.sleep(0.2)
    yield {**owner_info(), "pid": child.pid, "start": None}
    child.wait()


def running_trial(**system_attrs) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=system_attrs)
    trial.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=100)
    return trial


def test_storage_urls_and_artifact_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_lib.resolve_url(None) == str(tmp_path / "archscale.journal")
    assert storage_lib.artifact_dir(None) == tmp_path / "archscale.artifacts"
    assert storage_lib.artifact_dir("sqlite:///runs/s.db") == tmp_path / "runs" / "s.artifacts"
    url = storage_lib.resolve_url("postgresql://me@db.example/studies")
    assert url.startswith("postgresql+psycopg") and url.endswith("://me@db.example/studies")
    assert storage_lib.artifact_dir(url) == tmp_path / "archscale.artifacts"
    assert storage_lib.artifact_dir(url, "shared/art") == tmp_path / "shared" / "art"
    sqlite_file = tmp_path / "s.db"
    optuna.create_study(storage=f"sqlite:///{sqlite_file}")
    with pytest.raises(ArchscaleError, match="SQLite database: give url as sqlite:///"):
        storage_lib.open_storage(str(sqlite_file))
    with pytest.raises(ArchscaleError, match="is a folder"):
        storage_lib.open_storage(str(tmp_path))


def test_stale_reason_rules(zombie):
    assert stale_reason(running_trial(**{OWNER_ATTR: owner_info()}), grace_s=10) is None
    assert "is gone" in stale_reason(running_trial(**{OWNER_ATTR: zombie}), grace_s=10)
    elsewhere = {"host": "another-host/0", "pid": 1, "start": None}
    silent = running_trial(**{OWNER_ATTR: elsewhere, HEARTBEAT_ATTR: time.time() - 60})
    assert stale_reason(silent, grace_s=30) == "no heartbeat for 60 s"
    beating = running_trial(**{OWNER_ATTR: elsewhere, HEARTBEAT_ATTR: time.time() - 5})
    assert stale_reason(beating, grace_s=30) is None
    assert stale_reason(running_trial(), grace_s=30) == "no heartbeat for 100 s"


def test_journal_recovery_requeues_a_dead_workers_trial_exactly_once(tmp_path, zombie):
    handle = create_study(parse_sweep(GRID), str(tmp_path / "s.journal"))
    assert len(handle.study.trials) == 4
    trial = claim(handle)
    key = trial.user_attrs["config_key"]
    handle.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, zombie)
    trial.set_user_attr("status", "complete")  # a partial result the retry must not inherit

    recovered = recover_stale(handle.study, handle.storage, grace_s=60, max_retries=10)
    assert [(r.number, r.tries, r.retried) for r in recovered] == [(trial.number, 1, True)]
    assert recover_stale(handle.study, handle.storage, grace_s=60, max_retries=10) == []
    trials = handle.study.get_trials()
    dead = trials[trial.number]
    assert dead.state == TrialState.FAIL and "is gone" in dead.system_attrs[STALE_ATTR]
    retry = trials[-1]
    assert len(trials) == 5 and retry.state == TrialState.WAITING
    assert retry.user_attrs["config_key"] == key and "status" not in retry.user_attrs
    assert retry.system_attrs["fixed_params"] == dead.system_attrs["fixed_params"]
    assert retry.system_attrs[TRIES_ATTR] == [{"trial": trial.number,
                                               "reason": dead.system_attrs[STALE_ATTR]}]
    assert {k for k in retry.system_attrs if k.startswith("archscale:")} == {TRIES_ATTR}

    # A grid worker claims the four waiting trials, then nothing: no unplanned trial appears.
    claimed = [claim(handle) for _ in range(4)]
    assert sorted(t.user_attrs["config_key"] for t in claimed if t) == sorted(
        t.user_attrs["config_key"] for t in trials if t.state == TrialState.WAITING)
    assert claim(handle) is None and len(handle.study.trials) == 5


PG_URL = os.environ.get("ARCHSCALE_TEST_POSTGRES_URL")


@pytest.mark.parametrize("kind", ["journal", "sqlite", pytest.param("postgres", marks=[
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="set ARCHSCALE_TEST_POSTGRES_URL (tests/postgres.sh)")])])
def test_a_dead_workers_trial_is_recovered_at_once_with_its_reason_by_one_worker(
        kind, tmp_path, dead_owner):
    url = {"journal": str(tmp_path / "s.journal"), "sqlite": f"sqlite:///{tmp_path / 's.db'}",
           "postgres": PG_URL}[kind]
    name = f"recover-{uuid.uuid4().hex[:8]}"
    handle = create_study(parse_sweep({**GRID, "name": name}), url)
    try:
        trial = claim(handle)
        handle.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, dead_owner)
        Heartbeat(handle.storage, trial._trial_id, interval_s=60).close()  # it beat just now
        other = open_study(name, url)  # a second worker looking at the same time
        found = [recover_stale(h.study, h.storage, grace_s=3600, max_retries=10)
                 for h in (handle, other)]
        assert [len(f) for f in found] == [1, 0]  # no grace wait, and reported once
        reason = f"worker pid {dead_owner['pid']} on {dead_owner['host']} is gone"
        assert found[0][0].reason == reason
        assert other.study.trials[trial.number].system_attrs[STALE_ATTR] == reason
        assert other.study.trials[-1].state == TrialState.WAITING
    finally:
        if kind == "postgres":
            optuna.delete_study(study_name=name, storage=handle.storage)


def test_an_rdb_trial_whose_heartbeat_stopped_is_retried_with_its_reason(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_study(parse_sweep(GRID), url)
    handle = open_study("recovery-grid", url)
    trial = claim(handle)
    with Heartbeat(handle.storage, trial._trial_id, interval_s=1):
        time.sleep(1.5)
    assert recover_stale(handle.study, handle.storage, grace_s=2, max_retries=1) == []  # in grace
    time.sleep(2.5)
    [recovered] = recover_stale(handle.study, handle.storage, grace_s=2, max_retries=1)
    assert recovered.number == trial.number and recovered.retried
    trials = handle.study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    assert trials[trial.number].system_attrs[STALE_ATTR].startswith("no heartbeat for ")
    retry = trials[-1]
    assert retry.state == TrialState.WAITING
    assert [t["trial"] for t in retry.system_attrs[TRIES_ATTR]] == [trial.number]
    assert retry.user_attrs["config_key"] == trial.user_attrs["config_key"]


def test_a_dead_workers_config_is_retried_up_to_the_limit_then_named_with_every_reason(
        tmp_path, dead_owner, monkeypatch):
    url = str(tmp_path / "s.journal")
    handle = create_study(parse_sweep(GRID), url)
    for _ in range(3):  # the other configs finish
        trial = claim(handle)
        handle.study.tell(trial, [3.0])
    numbers = []
    for i in range(5):  # more deaths than the old fixed limit of 3: still retried
        trial = claim(handle)
        numbers.append(trial.number)
        handle.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, dead_owner)
        [recovered] = recover_stale(handle.study, handle.storage, grace_s=60, max_retries=4)
        assert (recovered.tries, recovered.retried) == (i + 1, i < 4)
    assert claim(handle) is None
    key = trial.user_attrs["config_key"]

    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    result = cli.invoke(app, ["study", "run", "recovery-grid", "--storage", url,
                              "--max-retries", "4", "--no-progress"])
    assert result.exit_code != 0 and isinstance(result.exception, ArchscaleError)
    message = str(result.exception)
    assert f"config {key}:" in message
    for i, number in enumerate(numbers, 1):
        assert f"try {i} (trial {number}): worker pid {dead_owner['pid']} on " in message
    assert f"archscale study requeue recovery-grid {key} --storage {url}" in message
    status = cli.invoke(app, ["study", "status", "recovery-grid", "--storage", url])
    assert f"config {key}: given up after 5 tries" in status.output

    requeued = cli.invoke(app, ["study", "requeue", "recovery-grid", key[:8], "--storage", url])
    assert requeued.exit_code == 0, requeued.output
    retry = claim(handle)
    assert retry.user_attrs["config_key"] == key and retry.number == numbers[-1] + 1
    status = cli.invoke(app, ["study", "status", "recovery-grid", "--storage", url])
    assert "given up" not in status.output


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_proposals_depend_on_seed_and_history_not_on_the_process(sampler):
    sweep = parse_sweep({**SEARCH, "search": {**SEARCH["search"], "sampler": sampler}})

    def propose(study, n):
        proposals = []
        for _ in range(n):
            trial = study.ask()
            run = suggest_run(trial, sweep, vocab_size=256)
            proposals.append(run.params)
            # A deterministic stand-in for (loss, decode throughput).
            study.tell(trial, [run.spec.params_nonembed / 1e4 + run.spec.r_mlp_attn,
                               1e4 / run.spec.n_layers / run.spec.d_model])
        return proposals

    directions = sweep.directions
    straight = propose(optuna.create_study(directions=directions, sampler=make_sampler(sweep)), 6)
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, directions=directions, study_name="s",
                                sampler=make_sampler(sweep))
    resumed = propose(first, 2)
    resumed += propose(optuna.load_study(study_name="s", storage=storage,
                                         sampler=make_sampler(sweep)), 4)
    assert resumed == straight
    assert len({tuple(p.values()) for p in straight}) > 3
    other = sweep.model_copy(update={"seed": 1})
    assert propose(optuna.create_study(directions=directions, sampler=make_sampler(other)),
                   3) != straight[:3]


def test_pareto_front_and_core_split():
    table = pd.DataFrame({"loss": [3.0, 2.9, 3.1, 2.8, 3.0],
                          "decode_tokens_per_s": [100.0, 90.0, 120.0, 50.0, float("nan")]})
    front = pareto_front(table)
    assert front.index.tolist() == [3, 1, 0, 2]
    assert split_cores(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ArchscaleError, match="use 1 to 2 workers"):
        split_cores(3, [0, 1])

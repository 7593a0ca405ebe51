"""Chaos (issue 28): K workers on one study, SIGKILLed at random (a worker, or only its trial
process), the journal torn mid-record, the PostgreSQL server restarted under them. Every planned
config ends COMPLETE exactly once, with the same loss as an undisturbed run's, to the bit.

A benchmark, not part of `pytest -q`: each variant takes 5-20 minutes on 2 CPU cores, which the
30-minute CI cannot spare. Run it with `python -m pytest tests/bench/chaos_study.py` (the
PostgreSQL variant with ARCHSCALE_TEST_POSTGRES_URL set). Seeded; the seed is in the test's id."""

import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest
from optuna.trial import TrialState
from test_study_runs import GRID, QUIET, assert_exactly_once, trial_process_of

from archscale.search.study import create_study, open_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.worker import run_study

pytestmark = pytest.mark.slow
WORKERS = 2
WORKER = [sys.executable, "-c", "from archscale.cli.main import main; main()", "study", "worker",
          "--no-progress", "--heartbeat", "2"]
SWEEP = {**GRID, "grid": {**GRID["grid"], "r": [1.0, 2.0]}}  # 8 configs


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """Loss by config key of the grid run by one worker, nothing disturbed."""
    url = str(tmp_path_factory.mktemp("undisturbed") / "study.journal")
    handle = create_study(parse_sweep({**SWEEP, "name": "chaos"}), url)
    run_study("chaos", url, options=QUIET)
    return {t.user_attrs["config_key"]: t.values[0] for t in assert_exactly_once(handle)}


def start_workers(name: str, url: str) -> list[subprocess.Popen]:
    return [subprocess.Popen([*WORKER, name, "--storage", url], stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT) for _ in range(WORKERS)]


def kill_at_random(rng: random.Random, procs: list[subprocess.Popen]) -> str:
    """SIGKILL one live worker, or only its trial process; what was killed."""
    alive = [p for p in procs if p.poll() is None]
    if not alive:
        return "none"
    victim = rng.choice(alive)
    child = trial_process_of(victim)
    if child and rng.random() < 0.5:
        os.kill(child, signal.SIGKILL)
        return "trial process"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    return "worker"


def tear_journal(path: str, rng: random.Random) -> int:
    """Cut the journal inside its last record, as a crash mid-write leaves it; bytes cut."""
    with open(path, "rb") as f:
        data = f.read()
    start = data.rfind(b"\n", 0, len(data) - 1) + 1
    cut = rng.randrange(start + 1, len(data))
    with open(path, "r+b") as f:
        f.truncate(cut)
    return len(data) - cut


def run_with_chaos(name: str, url: str, rng: random.Random, disturb) -> list[str]:
    """Rounds of K workers disturbed at random, then workers left to finish; what was done."""
    handle = open_study(name, url)
    done = []
    for _ in range(3):
        procs = start_workers(name, url)
        try:
            deadline = time.time() + 600
            while not handle.study.get_trials(states=(TrialState.RUNNING,)):
                assert time.time() < deadline
                time.sleep(0.2)
            time.sleep(rng.uniform(0.5, 6))
            done.append(kill_at_random(rng, procs))
            time.sleep(rng.uniform(0.5, 6))
            done.append(disturb(procs))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    final = start_workers(name, url)
    assert [p.wait(timeout=1800) for p in final] == [0] * WORKERS
    print(f"chaos: {done}; trials {len(handle.study.trials)}")  # shown with -s or -rP
    return done


def check(handle, undisturbed: dict) -> None:
    complete = assert_exactly_once(handle)
    assert {t.user_attrs["config_key"]: t.values[0] for t in complete} == undisturbed


@pytest.mark.parametrize("seed", [28])
def test_chaos_on_the_journal(undisturbed, tmp_path, seed):
    rng = random.Random(seed)
    url = str(tmp_path / "study.journal")
    handle = create_study(parse_sweep({**SWEEP, "name": "chaos"}), url)

    def kill_all_and_tear(procs):
        for p in procs:
            p.kill()
            p.wait()
        return f"journal torn by {tear_journal(url, rng)} bytes"

    done = run_with_chaos("chaos", url, rng, kill_all_and_tear)
    assert any(d.startswith("journal torn") for d in done), done
    check(open_study("chaos", url), undisturbed)
    assert handle.study.get_trials(states=(TrialState.FAIL,))  # the chaos did hit trials


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("ARCHSCALE_TEST_POSTGRES_URL"),
                    reason="set ARCHSCALE_TEST_POSTGRES_URL (bash tests/postgres.sh prints one)")
@pytest.mark.parametrize("seed", [28])
def test_chaos_on_postgres_restarted(undisturbed, tmp_path, seed, monkeypatch):
    from test_study_outage import Server

    monkeypatch.chdir(tmp_path)
    rng = random.Random(seed)
    server = Server()
    try:
        name = f"chaos-{uuid.uuid4().hex[:6]}"
        create_study(parse_sweep({**SWEEP, "name": name}), server.url)

        def restart(procs):
            server.stop()
            time.sleep(rng.uniform(1, 8))
            server.start()
            return "server restarted"

        run_with_chaos(name, server.url, rng, restart)
        check(open_study(name, server.url), undisturbed)
    finally:
        server.stop()

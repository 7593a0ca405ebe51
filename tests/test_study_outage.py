"""A PostgreSQL storage stopped and restarted under a running study (issue 28): workers ride out
an outage shorter than their wait; after a longer one they stop with one line naming the masked
storage and the resume command, keep the finished result locally, and record it on resume. Each
test starts a server of its own (tests/postgres.sh on a free port), so stopping it disturbs no
other test."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_study_runs import GRID, assert_exactly_once

from archscale.search.attrs import HEARTBEAT_ATTR
from archscale.search.study import create_study, open_study
from archscale.search.sweepfile import parse_sweep

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.skipif(
    not os.environ.get("ARCHSCALE_TEST_POSTGRES_URL"),
    reason="set ARCHSCALE_TEST_POSTGRES_URL (bash tests/postgres.sh prints one)")]
SCRIPT = Path(__file__).parent / "postgres.sh"
CLI = [sys.executable, "-c", "from archscale.cli.main import main; main()"]


class Server:
    """A throwaway PostgreSQL cluster that a test may stop and start."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="archscale-pg-")  # the postgres user must reach it
        self.env = {**os.environ, "ARCHSCALE_PG_PORT": str(port), "ARCHSCALE_PG_DIR": self.dir}
        self.url = self.start()

    def start(self) -> str:
        return subprocess.run(["bash", str(SCRIPT)], env=self.env, check=True,
                              capture_output=True, text=True).stdout.strip()

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=self.env, check=True,
                       capture_output=True)


@pytest.fixture
def server():
    pg = Server()
    yield pg
    pg.stop()
    shutil.rmtree(pg.dir, ignore_errors=True)


def start_run(name: str, url: str, wait_s: int, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "study", "run", name, "--storage", url, "--no-progress",
                             "--storage-wait", str(wait_s), "--heartbeat", "1"], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop_mid_trial(server: Server, handle, run: subprocess.Popen) -> None:
    """Stop the server once a trial trains (its trial process has beat)."""
    deadline = time.time() + 600
    while not any(HEARTBEAT_ATTR in t.system_attrs
                  for t in handle.study.get_trials(states=(TrialState.RUNNING,))):
        assert time.time() < deadline and run.poll() is None, run.stdout.read()
        time.sleep(0.2)
    server.stop()


def test_an_outage_shorter_than_the_wait_is_ridden_out(server, tmp_path):
    name = f"outage-{uuid.uuid4().hex[:6]}"
    handle = create_study(parse_sweep({**GRID, "name": name}), server.url)
    run = start_run(name, server.url, 300, tmp_path)
    try:
        stop_mid_trial(server, handle, run)
        time.sleep(8)
        server.start()
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output
    assert "Traceback" not in output
    assert "is unreachable; retrying for up to 300 s" in output and "answers again" in output
    assert_exactly_once(open_study(name, server.url))


def test_a_longer_outage_stops_with_the_resume_command_and_keeps_the_result(server, tmp_path):
    name = f"outage-{uuid.uuid4().hex[:6]}"
    handle = create_study(parse_sweep({**GRID, "name": name}), server.url)
    run = start_run(name, server.url, 3, tmp_path)
    try:
        stop_mid_trial(server, handle, run)
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 2 and "Traceback" not in output, output
    error = output[output.index("error: "):].strip().splitlines()
    assert len(error) == 2, output  # what happened and how to resume; the driver's message
    assert error[0].startswith(f"error: storage {server.url} stayed unreachable for 3 s")
    assert "Connection refused" in error[1] or "connection" in error[1].lower()
    resume = re.search(r"resume with `([^`]+)`", error[0]).group(1)
    assert resume == f"archscale study run {name} --storage {server.url}"
    kept = list((tmp_path / "archscale.artifacts" / "spool" / name).glob("*.json"))
    assert len(kept) == 1 and "finished results are kept in" in error[0]

    server.start()
    again = subprocess.run([*CLI, *resume.split()[1:], "--no-progress"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "recorded the result trial" in again.stdout
    assert not any((tmp_path / "archscale.artifacts" / "spool" / name).glob("*.json"))
    assert_exactly_once(open_study(name, server.url))

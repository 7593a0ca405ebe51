"""Storage credentials never leave the user's shell (issue 18).

A study whose PostgreSQL URL carries a password is fitted, recommended, reported and exported;
the password is then in no written file, no printed line and no worker process's argv. The fast
tests at the top need no server.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import types
import uuid
from pathlib import Path

import optuna
import pytest
import typer
from conftest import SMALL_STUDY_SWEEP
from typer.testing import CliRunner

from archscale import environment
from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.search import storage as storage_lib
from archscale.search import worker as worker_lib
from archscale.search.storage import display_url, hide_in_text, hide_passwords

PG_URL = os.environ.get("ARCHSCALE_TEST_POSTGRES_URL")


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://me:s3cret@db.example:5432/studies", "postgresql://me:***@db.example:5432/studies"),
    ("postgresql+psycopg2://me:p%40ss%2Fw@h/db", "postgresql+psycopg2://me:***@h/db"),
    ("postgresql://me@h/db", "postgresql://me@h/db"),  # libpq: PGPASSWORD, ~/.pgpass
    ("postgresql://h/db?sslmode=require&password=s3cret", None),
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
    ("/tmp/archscale.journal", "/tmp/archscale.journal"),
])
def test_display_url_hides_exactly_the_password(url, shown):
    result = display_url(url)
    if shown is not None:
        assert result == shown
    for secret in ("s3cret", "p%40ss", "p@ss"):
        assert secret not in result
    assert storage_lib.has_password(url) == (result != url)


def test_passwords_in_saved_data_and_messages_are_hidden_where_found():
    url = "postgresql+psycopg2://me:p%40ss@h:5/db"
    data = {"provenance": {"storage": url, "n": 3}, "notes": [f"study in `{url}`", "plain"]}
    shown, found = hide_passwords(data)
    assert found == {"provenance.storage": "postgresql+psycopg2://me:***@h:5/db",
                     "notes[0]": "study in `postgresql+psycopg2://me:***@h:5/db`"}
    assert "p@ss" not in json.dumps(shown) and "p%40ss" not in json.dumps(shown)
    assert shown["provenance"]["n"] == 3 and shown["notes"][1] == "plain"
    assert hide_passwords({"storage": "postgresql://me@h/db"}) == ({"storage": "postgresql://me@h/db"},
                                                                   {})
    assert hide_in_text("driver said p@ss and p%40ss", url) == "driver said *** and ***"


def test_a_storage_error_shows_the_users_url_masked_then_the_drivers_message():
    """Issue 27 item 8: the URL as typed (no driver name added, nothing re-escaped), its password
    hidden, and the driver's own message on a line of its own."""
    url = "postgresql://alice:s3cretpw@127.0.0.1:1/archdb"
    result = CliRunner().invoke(app, ["study", "status", "x", "--storage", url])
    assert isinstance(result.exception, ArchscaleError)
    first, driver = str(result.exception).split("\n")
    assert first == "cannot open storage postgresql://alice:***@127.0.0.1:1/archdb"
    assert driver.startswith("OperationalError: ") and "Connection refused" in driver
    assert "s3cretpw" not in str(result.exception)


def test_every_storage_option_reads_archscale_storage():
    import click

    found = []

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            if param.name == "storage":
                found.append((path, param.envvar))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "archscale")
    assert len(found) >= 7  # study create/run/worker/status/export, fit, demo
    assert all(envvar == environment.STORAGE for _, envvar in found), found


def test_storage_comes_from_the_environment(tmp_path, monkeypatch):
    missing = tmp_path / "from-env.journal"
    monkeypatch.setenv(environment.STORAGE, str(missing))
    result = CliRunner().invoke(app, ["study", "status", "nothing"])
    assert isinstance(result.exception, ArchscaleError)
    assert f"no study storage at {missing}" in str(result.exception)


# --- against a real PostgreSQL server -------------------------------------------------------------

needs_postgres = pytest.mark.skipif(not PG_URL, reason="set ARCHSCALE_TEST_POSTGRES_URL (bash "
                                                       "tests/postgres.sh prints one)")


@pytest.fixture(scope="module")
def password_study(small_study):
    """(study name, URL with a password, the password, the same URL without it): a role made for
    this module with LOGIN PASSWORD, owning a database of its own (both dropped afterwards), that
    holds a copy of the session's finished small study."""
    import psycopg2
    from sqlalchemy.engine import make_url

    admin = make_url(PG_URL)
    tag = uuid.uuid4().hex[:10]
    role, database, password = f"cred_{tag}", f"cred_{tag}", f"Pw{uuid.uuid4().hex}"
    conn = psycopg2.connect(host=admin.host, port=admin.port, user=admin.username,
                            password=admin.password, dbname=admin.database)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (password,))
        cur.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
    where = f"{admin.host}:{admin.port}/{database}"
    url = f"postgresql://{role}:{password}@{where}"
    try:
        name, journal = small_study
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.copy_study(from_study_name=name, from_storage=storage_lib.open_storage(journal),
                          to_storage=storage_lib.open_storage(url))
        yield name, url, password, f"postgresql://{role}@{where}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.close()


def _recording_popen(spawned: list):
    """subprocess.Popen that also records each child's argv as the kernel shows it (`ps`)."""
    def popen(args, *rest, **kwargs):
        proc = subprocess.Popen(args, *rest, **kwargs)
        cmdline, seen = Path(f"/proc/{proc.pid}/cmdline"), b""
        deadline = time.monotonic() + 10
        # Popen returns once exec began; the kernel fills in the new argv a moment later
        while not seen and cmdline.exists() and proc.poll() is None and time.monotonic() < deadline:
            seen = cmdline.read_bytes().replace(b"\0", b" ")
            time.sleep(0.01)
        spawned.append({"argv": list(args), "cmdline": seen, "env": kwargs.get("env") or {}})
        return proc
    return popen


class Session:
    """Runs `archscale` commands in a folder, the URL in $ARCHSCALE_STORAGE, keeping all they print;
    worker processes are started through a Popen that records their argv."""

    def __init__(self, url: str, out: Path, monkeypatch) -> None:
        self.url, self.out, self.printed, self.spawned = url, out, [], []
        self.shown = display_url(url)
        out.mkdir()
        monkeypatch.chdir(out)  # a server storage's artifacts go to ./archscale.artifacts
        monkeypatch.setattr(worker_lib, "subprocess", types.SimpleNamespace(
            Popen=_recording_popen(self.spawned), TimeoutExpired=subprocess.TimeoutExpired))

    def __call__(self, args: list[str], env_url: bool = True, ok: bool = True):
        env = {environment.STORAGE: self.url} if env_url else {}
        result = CliRunner().invoke(app, args, env=env)
        self.printed.append(result.output + str(result.exception or ""))
        if ok:
            assert result.exit_code == 0, self.printed[-1]
        return result

    def assert_password_nowhere(self, password: str, capfd) -> None:
        """Not in a line printed here or by a worker process, nor in any file under ``out``."""
        captured = capfd.readouterr()
        for text in [*self.printed, captured.out, captured.err]:
            assert password not in text
        written = [p for p in self.out.rglob("*") if p.is_file()]
        assert len(written) >= 5  # laws, recommendations, configs, report, figures
        leaked = [str(p) for p in written if password.encode() in p.read_bytes()]
        assert not leaked, leaked


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
def test_status_workers_fit_recommend_export_never_show_the_password(password_study, tmp_path,
                                                                    monkeypatch, capfd):
    name, url, password, _ = password_study
    run = Session(url, tmp_path / "out", monkeypatch)
    shown = run.shown
    assert "***" in shown and password not in shown

    # status and the create hints, with the URL from $ARCHSCALE_STORAGE or --storage
    assert "***@" in run(["study", "status", name]).output
    created = run(["study", "create", str(SMALL_STUDY_SWEEP), "--storage", url]).output
    assert f"--storage {shown}" in created and "password hidden" in created

    # workers in subprocesses (the study is finished: they start, find nothing to do and stop)
    workers = min(2, len(os.sched_getaffinity(0)))
    run(["study", "run", name, "--workers", str(workers), "--no-progress"])
    if workers > 1:
        assert len(run.spawned) == workers
        for child in run.spawned:
            assert child["env"][environment.STORAGE] == url
            assert password not in " ".join(child["argv"])
            assert b"archscale.search.worker_process" in child["cmdline"] and password.encode() not in child["cmdline"]

    # fit from the study (the URL on the command line), recommend, export
    for law, extra in (("throughput", ["--target", "decode"]),
                       ("conditional", ["--terms", "d_over_sqrt_n:log,r:log,gqa_group:log"])):
        run(["fit", "--law", law, *extra, "--study", name, "--storage", url, "--out",
             f"{law}.json", "--n-boot", "10", "--no-progressive",
             "--allow-degenerate"], env_url=False)  # the toy study is collinear
        assert json.loads((run.out / f"{law}.json").read_text())["provenance"]["storage"] == shown
    run(["recommend", "--law", "conditional.json", "--throughput-law", "throughput.json",
         "--params", "1.6e5", "--tokens", "8e5", "--max-loss-increase", "2%", "--vocab-size", "256",
         "--seq-len", "32", "--head-dim", "8", "--gqa", "1", "--d-over-sqrt-n", "0.2:0.35",
         "--r", "1:3", "--batch", "4", "--context", "32", "--out", "rec"])
    rec = json.loads((run.out / "rec" / "recommendations.json").read_text())
    assert rec["provenance"]["loss_law"]["provenance"]["storage"] == shown
    assert "password hidden" not in run(["export", "rec"]).output

    # a recommendation written before passwords were hidden: one message, the export goes on
    old = tmp_path / "old"  # the planted input, outside the folder searched below
    old.mkdir()
    rec["provenance"]["loss_law"]["provenance"]["storage"] = url
    (old / "recommendations.json").write_text(json.dumps(rec))
    message = run(["export", str(old), "--out", "old-export"]).output
    hidden = url.replace(password, "***")
    assert message.count("password hidden") == 1
    assert f"provenance.loss_law.provenance.storage: {hidden}" in message
    manifest = json.loads((run.out / "old-export" / "recommendations.json").read_text())
    assert manifest["provenance"]["loss_law"]["provenance"]["storage"] == hidden
    assert list(manifest["export"]["passwords_hidden"]) == ["provenance.loss_law.provenance.storage"]
    assert len(list((run.out / "old-export").glob("*/config.json"))) == len(rec["recommended"]) + 1

    # errors that name the storage
    missing = run(["study", "status", "no-such-study"], ok=False)
    assert isinstance(missing.exception, ArchscaleError) and shown in str(missing.exception)
    wrong_db = url.rpartition("/")[0] + "/no_such_database"
    bad = run(["study", "status", name, "--storage", wrong_db], env_url=False, ok=False)
    assert isinstance(bad.exception, ArchscaleError) and "***" in str(bad.exception)

    run.assert_password_nowhere(password, capfd)


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
def test_demo_report_laws_and_export_never_show_the_password(password_study, tmp_path,
                                                             monkeypatch, capfd):
    _, url, password, _ = password_study
    run = Session(url, tmp_path / "out", monkeypatch)
    run(["demo", "--sweep", str(SMALL_STUDY_SWEEP), "--out", "report", "--workers", "1",
         "--n-boot", "10", "--no-progress", "--allow-degenerate"])
    report = run.out / "report"
    assert f"`{run.shown}`" in (report / "report.md").read_text()
    for law in (report / "laws").glob("*.json"):
        assert json.loads(law.read_text())["provenance"]["storage"] == run.shown
    manifest = json.loads((report / "hf" / "recommendations.json").read_text())
    assert manifest["provenance"]["loss_law"]["provenance"]["storage"] == run.shown
    run.assert_password_nowhere(password, capfd)


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
def test_a_url_without_a_password_opens_with_pgpassword_or_a_pgpass_file(password_study, tmp_path):
    name, _, password, passwordless = password_study
    cli = CliRunner()
    result = cli.invoke(app, ["study", "status", name],
                        env={environment.STORAGE: passwordless, "PGPASSWORD": password})
    assert result.exit_code == 0, result.output
    assert "complete: 24" in result.output
    host, port, database = passwordless.rpartition("@")[2].replace("/", ":").split(":")
    role = passwordless.partition("://")[2].partition("@")[0]
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{host}:{port}:{database}:{role}:{password}\n")
    pgpass.chmod(0o600)
    result = cli.invoke(app, ["study", "status", name, "--storage", passwordless],
                        env={"PGPASSFILE": str(pgpass), "PGPASSWORD": None})
    assert result.exit_code == 0, result.output
    assert "complete: 24" in result.output and password not in result.output
    # the server checks the password (tests/postgres.sh): without it the role is refused,
    # in one clear error that does not print the password it was not given
    result = cli.invoke(app, ["study", "status", name, "--storage", passwordless],
                        env={"PGPASSFILE": str(tmp_path / "none"), "PGPASSWORD": None})
    assert isinstance(result.exception, ArchscaleError), result.output
    assert "password" in str(result.exception).lower()

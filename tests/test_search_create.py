"""Two `study create` of one sweep at once (issue 28): one study, each planned run enqueued once,
and both succeed. The two creators are forked after the imports and released together by a
barrier, so they race inside create_study itself. On PostgreSQL each round starts on a new
database, so they also race to create Optuna's tables (as two workers starting on a new server do)."""

import multiprocessing
import os
import uuid

import optuna
import pytest
import sqlalchemy

from archscale.search.storage import open_storage, resolve_url
from archscale.search.study import create_study
from archscale.search.sweepfile import parse_sweep

GRID = {
    "seq_len": 32, "recipe": {"batch_size": 4}, "budget": {"tokens_per_param": 1},
    "shape": {"head_dim": 8},
    "grid": {"scales": [6e3], "d_model": [16, 24], "r": [1.0, 2.0], "gqa": [1, 2],
             "n_layers": [1]},
}
ROUNDS = 3
PG_URL = os.environ.get("ARCHSCALE_TEST_POSTGRES_URL")


def _create(barrier, sweep, url) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    barrier.wait()
    create_study(sweep, url)


@pytest.mark.parametrize("kind", ["journal", pytest.param("postgres", marks=[
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="set ARCHSCALE_TEST_POSTGRES_URL (tests/postgres.sh)")])])
def test_two_creates_at_once_give_one_study_with_each_run_once(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    context = multiprocessing.get_context("fork")  # imports done once; create_study runs no JAX
    for i in range(ROUNDS):
        url = str(tmp_path / f"{i}.journal") if kind == "journal" else new_database(PG_URL)
        sweep = parse_sweep({**GRID, "name": f"race-{uuid.uuid4().hex[:8]}"})
        barrier = context.Barrier(2)
        procs = [context.Process(target=_create, args=(barrier, sweep, url)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        assert [p.exitcode for p in procs] == [0, 0]
        storage = open_storage(url)
        names = [s.study_name for s in storage.get_all_studies()]
        assert names.count(sweep.name) == 1
        study = optuna.load_study(study_name=sweep.name, storage=storage)
        keys = [t.user_attrs["config_key"] for t in study.trials]
        assert len(keys) == 8 and len(set(keys)) == 8
        if kind == "postgres":
            storage.engine.dispose()
            drop_database(url)


def new_database(server_url: str) -> str:
    """The URL of a new, empty database on the test server (no Optuna tables yet)."""
    name = f"race_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    _admin(f'DROP DATABASE "{url.rsplit("/", 1)[1]}"')


def _admin(statement: str) -> None:
    """Run ``statement`` on the test server's maintenance database, outside a transaction."""
    server = sqlalchemy.make_url(resolve_url(PG_URL)).set(database="postgres")
    engine = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()

"""Shared test setup: CPU-only JAX with a persistent compilation cache, tiny shapes."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ARCHSCALE_JAX_CACHE", str(Path.home() / ".cache/archscale/jax-tests"))
# Tokenizers, data and hardware probes (sweeps/hardware.py reads this variable too) stay out of
# the user's ~/.cache/archscale; the `cache` fixture gives a module a fresh one.
os.environ.setdefault("ARCHSCALE_CACHE", str(Path.home() / ".cache/archscale-tests"))

import pytest

from archscale.arch.runtime import configure_jax

configure_jax()

REPO_ROOT = Path(__file__).resolve().parents[1]
# Public validation data, copied with its sources noted (tests/data/validation/README.md).
VALIDATION_DIR = REPO_ROOT / "tests" / "data" / "validation"


@pytest.fixture
def tiny_spec():
    from archscale.arch import ArchSpec

    return ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                    head_dim=8, d_ff=64)


SMALL_STUDY_SWEEP = REPO_ROOT / "tests" / "data" / "small_study.yaml"


@pytest.fixture(scope="session")
def small_study(tmp_path_factory):
    """(name, storage URL) of tests/data/small_study.yaml, created and run to its end once per
    session in a temporary journal file, through the Python API. Every planned run is COMPLETE.
    Shared by the tests that read a finished study: read it, never add trials to it."""
    from archscale.search.study import create_study
    from archscale.search.table import trials_table
    from archscale.search.worker import WorkerOptions, run_study

    url = str(tmp_path_factory.mktemp("small_study") / "study.journal")
    handle = create_study(SMALL_STUDY_SWEEP, url)
    run_study(handle.name, handle.url, options=WorkerOptions(progress=False))
    complete = len(trials_table(handle.study))
    assert complete == len(handle.planned_runs()), (
        f"small_study: {complete} of {len(handle.planned_runs())} runs completed; see "
        f"`archscale study status {handle.name} --storage {handle.url}`")
    return handle.name, handle.url


PASSK_STUDY_SWEEP = REPO_ROOT / "tests" / "data" / "passk_study.yaml"


@pytest.fixture(scope="session")
def passk_study(tmp_path_factory):
    """(name, storage URL) of tests/data/passk_study.yaml (12 runs, each sampled for pass@k), run
    to its end once per session. Read it, never add trials to it."""
    from archscale.search.study import create_study
    from archscale.search.table import trials_table
    from archscale.search.worker import WorkerOptions, run_study

    url = str(tmp_path_factory.mktemp("passk_study") / "study.journal")
    handle = create_study(PASSK_STUDY_SWEEP, url)
    run_study(handle.name, handle.url, options=WorkerOptions(progress=False))
    assert len(trials_table(handle.study)) == len(handle.planned_runs())
    return handle.name, handle.url


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private $ARCHSCALE_CACHE (tokenizers, hardware probes) for one test module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("archscale-cache")
        mp.setenv("ARCHSCALE_CACHE", str(path))
        yield path

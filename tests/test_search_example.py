"""The search example runs end to end through the CLI; searched shapes stay inside the ranges
the sweep file sets (or the file is refused, saying why); `study status` counts what its table
shows, prints every value whole in 80 columns, and has --json."""

import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.search.study import create_study

SEARCH_EXAMPLE = Path(__file__).resolve().parents[1] / "search" / "examples" / "tiny_search.yaml"


def _inside(value, low, high):
    return low <= value <= high


@pytest.mark.slow
def test_the_search_example_runs_and_stays_inside_its_ranges(tmp_path):
    storage = str(tmp_path / "s.journal")
    run = CliRunner().invoke(app, ["study", "run", str(SEARCH_EXAMPLE), "--storage", storage,
                                   "--no-progress"])
    assert run.exit_code == 0, run.output
    status = CliRunner().invoke(app, ["study", "status", "tiny-search", "--storage", storage,
                                      "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.output)
    search = yaml.safe_load(SEARCH_EXAMPLE.read_text())["search"]
    low, high = search["d_over_sqrt_n"]
    trials = shown["trials"]
    assert len(trials) == search["n_trials"] == shown["n_trials"]
    trained = [t for t in trials if t["status"] == "complete"]
    assert trained and shown["pareto"]
    for t in trained:
        assert _inside(t["d_over_sqrt_n"], low, high), t
        assert _inside(t["r"], search["r"]["low"], search["r"]["high"]), t
        assert t["d_model"] % int(t["heads"].split("/")[0]) == 0, t
    assert sum(shown["counts"].values()) == len(trials)


def test_a_search_with_no_shape_inside_its_ranges_is_refused(tmp_path):
    """d/sqrt(N) in [0.26, 0.29] at N = 1e4 (head_dim 8, widths in steps of 8): the widths 24
    and 32 realize 0.25 and >= 0.30, so no shape is inside; today's rounding trained them."""
    sweep = yaml.safe_load(SEARCH_EXAMPLE.read_text())
    sweep["search"]["d_over_sqrt_n"] = [0.26, 0.29]
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump(sweep))
    result = CliRunner().invoke(app, ["study", "create", str(path), "--storage",
                                      str(tmp_path / "s.journal")])
    assert isinstance(result.exception, ArchscaleError)
    assert "no shape inside the search's ranges near d_over_sqrt_n=0.26" in str(result.exception)
    assert "is outside [0.26, 0.29]" in str(result.exception)


@pytest.fixture
def study_with_a_duplicate(tmp_path, monkeypatch):
    """The example's study with three trials: complete, duplicate (PRUNED) and waiting."""
    monkeypatch.setenv("COLUMNS", "80")
    storage = str(tmp_path / "s.journal")
    handle = create_study(SEARCH_EXAMPLE, storage)
    spec = {"vocab_size": 256, "seq_len": 32, "n_layers": 1, "d_model": 32, "n_heads": 4,
            "n_kv_heads": 2, "head_dim": 8, "d_ff": 72, "tie_embeddings": True}
    dist = {"r": optuna.distributions.FloatDistribution(1.0, 4.0)}
    handle.study.add_trial(create_trial(state=TrialState.COMPLETE, values=[2.5, 12345.0],
                                        params={"r": 1.7}, distributions=dist, user_attrs={
        "spec": spec, "status": "complete", "val_loss": 2.5, "decode_tokens_per_s": 12345.0}))
    handle.study.add_trial(create_trial(state=TrialState.PRUNED, params={"r": 1.7},
                                        distributions=dist, user_attrs={
        "spec": spec, "status": "duplicate",
        "message": "the same shape and budget as trial 0, which finished first: its result is "
                   "reused and this trial is not trained"}))
    handle.study.enqueue_trial({"r": 2.0})
    return handle.name, storage


def test_status_counts_match_its_table_and_values_are_whole(study_with_a_duplicate):
    name, storage = study_with_a_duplicate
    result = CliRunner().invoke(app, ["study", "status", name, "--storage", storage])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for word in ("complete", "duplicate", "waiting", "decode", "12,345"):
        assert word in result.output
    assert "complete: 1, duplicate: 1, waiting: 1, n_trials: 3" in result.output
    assert "pruned" not in result.output

    shown = json.loads(CliRunner().invoke(app, ["study", "status", name, "--storage", storage,
                                                "--json"]).output)
    statuses = [t["status"] for t in shown["trials"]]
    assert statuses == ["complete", "duplicate", "waiting"]
    assert shown["counts"] == {"complete": 1, "duplicate": 1, "waiting": 1}

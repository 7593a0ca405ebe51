"""Sweep files: validation (every problem in one error), grid planning, budgets, config keys."""

import copy
from pathlib import Path

import pytest
import yaml

from archscale.search.plan import budget_for, config_key, plan_grid
from archscale.search.study import create_study
from archscale.search.sweepfile import SweepFileError, load_sweep, parse_sweep

EXAMPLE = Path(__file__).resolve().parents[1] / "search" / "examples" / "tiny_grid.yaml"

GRID = {
    "name": "unit-grid", "seq_len": 32, "recipe": {"batch_size": 4},
    "budget": {"tokens_per_param": 2}, "shape": {"head_dim": 8, "max_params_error": 0.4},
    "grid": {"scales": [6e3, 2e4], "d_model": [16, 32], "r": [1.0, 3.0], "gqa": [1, 2],
             "n_layers": [1, 2]},
}


def sweep(**changes):
    data = copy.deepcopy(GRID)
    data.update(changes)
    return data


def test_example_sweep_file_plans_sixteen_distinct_runs():
    example = load_sweep(EXAMPLE)
    runs = plan_grid(example, vocab_size=256)
    assert len(runs) == 16
    assert len({run.key for run in runs}) == 16
    for run in runs:
        assert abs(run.spec.params_nonembed / run.params["N"] - 1) <= example.shape.max_params_error
        assert run.budget.tokens == round(5 * run.params["N"])
        assert run.spec.n_heads % run.params["gqa"] == 0
        assert run.spec.vocab_size == 256 and run.spec.seq_len == 64


def test_malformed_file_lists_every_bad_key_and_creates_nothing(tmp_path):
    bad = sweep(bogus=1, recipe={"batch_size": 4, "lr_schedule": "cosine"})
    bad["grid"] = {**bad["grid"], "scale": [1e4], "r": [-1.0]}
    bad["budget"] = {"tokens_per_param": 2, "flops": 1e12}
    del bad["seq_len"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    storage = tmp_path / "study.journal"
    with pytest.raises(SweepFileError) as err:
        create_study(path, str(storage))
    message = str(err.value)
    for expected in ("bogus: unknown key", "grid.scale: unknown key", "seq_len: required",
                     "grid.r.0: Input should be greater than 0", "exactly one of tokens_per_param or flops",
                     "lr_schedule"):
        assert expected in message, (expected, message)
    assert "valid keys here: d_model, d_over_sqrt_n, gqa, n_layers, r, scales" in message
    assert not storage.exists()


def test_not_a_mapping_and_bad_yaml_are_reported(tmp_path):
    with pytest.raises(SweepFileError, match="mapping"):
        parse_sweep([1, 2])
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SweepFileError, match="not valid YAML"):
        load_sweep(path)


def test_impossible_grid_points_are_all_listed_before_anything_exists(tmp_path):
    # d_model 64 cannot fit 2 layers into 2,000 parameters, nor 3,000.
    data = sweep(grid={"scales": [2e3, 3e3], "d_model": [64], "r": [1.0], "n_layers": [2, 2]})
    storage = tmp_path / "study.journal"
    with pytest.raises(SweepFileError) as err:
        create_study(parse_sweep(data), str(storage))
    assert "2 grid point(s) have no valid shape" in str(err.value)
    assert "'N': 2000.0" in str(err.value) and "'N': 3000.0" in str(err.value)
    assert not storage.exists()


def test_grid_points_that_round_to_one_shape_are_one_run():
    data = sweep(grid={"scales": [6e3], "d_model": [16], "r": [1.0, 1.01], "n_layers": [1]})
    runs = plan_grid(parse_sweep(data), vocab_size=256)
    assert len(runs) == 1
    assert runs[0].params["r"] == 1.0


def test_budgets_per_scale_and_config_keys():
    tokens = parse_sweep(sweep())
    assert budget_for(tokens, 6e3).tokens == 12_000
    flops = parse_sweep(sweep(budget={"flops": [1e11, 4e11]}))
    assert budget_for(flops, 2e4, scale_index=1).flops == 4e11
    runs = plan_grid(flops, vocab_size=256)
    assert {run.budget.flops for run in runs} == {1e11, 4e11}
    run = runs[0]
    assert run.key == config_key(run.spec, run.budget)
    assert config_key(run.spec.replace(d_ff=run.spec.d_ff + 8), run.budget) != run.key
    with pytest.raises(SweepFileError, match="one per grid scale"):
        parse_sweep(sweep(budget={"flops": [1e11]}))


def test_search_section_rules():
    base = {k: v for k, v in GRID.items() if k != "grid"}
    search = {"n_params": 6e3, "d_model": {"low": 16, "high": 32}, "r": {"low": 1, "high": 3},
              "objectives": ["loss", "decode_throughput"], "n_trials": 4}
    ok = parse_sweep({**base, "search": search})
    assert ok.directions == ["minimize", "maximize"]
    with pytest.raises(SweepFileError) as err:
        parse_sweep({**base, "search": {**search, "pruner": "median", "objectives": ["latency"],
                                        "d_model": {"low": 16, "high": 30}}})
    assert "search.objectives.0: Input should be 'loss' or 'decode_throughput'" in str(err.value)
    assert "must be a multiple of step=8" in str(err.value)
    with pytest.raises(SweepFileError, match="pruners need a single objective"):
        parse_sweep({**base, "search": {**search, "pruner": "median"}})
    with pytest.raises(SweepFileError, match="exactly one of grid: or search:"):
        parse_sweep({**base, "search": search, "grid": GRID["grid"]})
    with pytest.raises(SweepFileError, match=r"throughput\.enabled"):
        parse_sweep({**base, "throughput": {"enabled": False}, "search": search})

"""Sweep files: validation (every problem in one error), grid planning, budgets, config keys."""

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from archscale.search.plan import budget_for, config_key, noise_points, plan_grid
from archscale.search.study import create_study
from archscale.search.sweepfile import SweepFileError, load_sweep, parse_sweep

EXAMPLE = Path(__file__).resolve().parents[1] / "search" / "examples" / "tiny_grid.yaml"
DEMO = EXAMPLE.with_name("demo.yaml")

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


def test_a_grid_of_token_budgets_trains_every_shape_at_each():
    data = sweep(budget={"tokens_per_param": 2})
    data["grid"] = {**data["grid"], "tokens_per_param": [2, 6]}
    two = parse_sweep(data)
    one = plan_grid(parse_sweep(sweep()), vocab_size=256)
    runs = plan_grid(two, vocab_size=256)
    assert len(runs) == 2 * len(one) and len({run.key for run in runs}) == len(runs)
    assert {run.spec for run in runs} == {run.spec for run in one}
    for run in runs:
        assert run.budget.tokens == round(run.params["tokens_per_param"] * run.params["N"])
        assert run.seed is None
    # Every shape at the first ratio, then every shape at the next, in the same order.
    half = len(one)
    assert [run.spec for run in runs[:half]] == [run.spec for run in runs[half:]]
    assert {run.params["tokens_per_param"] for run in runs[:half]} == {2}
    # The target of a recommendation trains at the budget's ratio, not the grid's.
    assert budget_for(two, 1e5).tokens == 200_000
    with pytest.raises(SweepFileError, match="needs a tokens_per_param budget"):
        parse_sweep({**data, "budget": {"flops": 1e11}})
    with pytest.raises(SweepFileError, match="repeat a value"):
        parse_sweep({**data, "grid": {**data["grid"], "tokens_per_param": [2, 2]}})


def test_a_grid_of_token_counts_trains_every_scale_on_the_same_budgets():
    data = sweep(budget={"tokens_per_param": 20})
    data["grid"] = {**data["grid"], "tokens": [4e4, 1e4]}
    counts = parse_sweep(data)
    runs = plan_grid(counts, vocab_size=256)
    assert [run.budget.tokens for run in runs] == [40_000] * 16 + [10_000] * 16
    assert {run.params["N"] for run in runs[:16]} == {6e3, 2e4}  # each D at each scale
    assert budget_for(counts, 1e4).tokens == 200_000  # the target's ratio, not the grid's
    with pytest.raises(SweepFileError, match="at most one of tokens_per_param or tokens"):
        parse_sweep({**data, "grid": {**data["grid"], "tokens_per_param": [2]}})
    with pytest.raises(SweepFileError, match=r"grid\.tokens needs a tokens_per_param budget"):
        parse_sweep({**data, "budget": {"flops": 1e11}})


def test_noise_repeats_a_few_grid_runs_with_other_seeds():
    base = plan_grid(parse_sweep(sweep()), vocab_size=256)
    noisy = parse_sweep(sweep(noise={"seeds": [3, 4], "runs": 2}))
    runs = plan_grid(noisy, vocab_size=256)
    assert runs[:len(base)] == base and len(runs) == len(base) + 4
    assert noise_points(len(base), 2) == [len(base) // 4, 3 * len(base) // 4]
    repeats = runs[len(base):]
    chosen = [base[i] for i in noise_points(len(base), 2)]
    assert [(r.spec, r.budget, r.params, r.seed) for r in repeats] == [
        (c.spec, c.budget, c.params, s) for c in chosen for s in (3, 4)]
    assert len({run.key for run in runs}) == len(runs)  # the seed enters a repeat's key
    assert repeats[0].user_attrs()["seed"] == 3 and "seed" not in base[0].user_attrs()
    assert repeats[0].run_seed(noisy.seed) == 3 and base[0].run_seed(noisy.seed) == 0
    # A run without a seed of its own keeps the key it had before seeds could enter it.
    old = hashlib.sha256(json.dumps({"spec": base[0].spec.to_dict(), "budget": base[0].budget
                                     .to_dict()}, sort_keys=True).encode()).hexdigest()[:16]
    assert base[0].key == config_key(base[0].spec, base[0].budget) == old
    assert config_key(chosen[0].spec, chosen[0].budget, 3) == repeats[0].key != chosen[0].key
    for bad, match in ((sweep(noise={"seeds": [0], "runs": 1}), "include the study's seed 0"),
                       (sweep(noise={"seeds": [1, 1], "runs": 1}), "distinct"),
                       (sweep(noise={"seeds": [1], "runs": 0}), "noise.runs")):
        with pytest.raises(SweepFileError, match=match):
            parse_sweep(bad)
    with pytest.raises(SweepFileError, match="more runs than the grid plans"):
        plan_grid(parse_sweep(sweep(noise={"seeds": [1], "runs": 99})), vocab_size=256)
    search = {k: v for k, v in GRID.items() if k != "grid"}
    search["search"] = {"n_params": 6e3, "d_model": {"low": 16, "high": 32},
                        "r": {"low": 1, "high": 3}, "n_trials": 4}
    with pytest.raises(SweepFileError, match="needs a grid"):
        parse_sweep({**search, "noise": {"seeds": [1], "runs": 1}})


def test_the_demo_grid_identifies_n_and_d():
    """Two budgets per scale, 3+ widths for the U-shaped term, seed repeats: what the demo fits."""
    demo = load_sweep(DEMO)
    runs = plan_grid(demo, vocab_size=256)
    grid = [run for run in runs if run.seed is None]
    per_scale = {}
    for run in grid:
        per_scale.setdefault(run.params["N"], set()).add(run.budget.tokens)
    assert len(per_scale) >= 4 and all(len(tokens) >= 2 for tokens in per_scale.values())
    assert len({round(run.spec.d_model / run.spec.params_nonembed ** 0.5, 2) for run in grid}) >= 3
    assert len(runs) > len(grid) and {run.seed for run in runs} - {None}
    assert min(demo.recipe_obj.steps_for(run.spec, run.budget) for run in runs) >= 150

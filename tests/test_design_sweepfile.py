"""The ``design:`` block of a sweep file: its keys, defaults and the rules that relate it to the
grid, each problem reported by key path like the rest of the file."""

import copy

import pytest

from archscale.search.sweepfile import SweepFileError, parse_sweep

GRID = {
    "name": "unit-design", "seq_len": 32, "recipe": {"batch_size": 4},
    "budget": {"tokens_per_param": 2}, "shape": {"head_dim": 8, "max_params_error": 0.4},
    "grid": {"scales": [6e3, 2e4], "d_over_sqrt_n": [0.2, 0.3], "r": [1.0, 3.0]},
}
DESIGN = {"budget": {"fraction": 0.3}, "target": {"scale_factor": 10}}


def sweep(design, **changes):
    data = copy.deepcopy(GRID)
    data.update(changes, design=design)
    return data


def problems(data) -> str:
    with pytest.raises(SweepFileError) as err:
        parse_sweep(data)
    return str(err.value)


def test_defaults_fill_what_the_file_leaves_out():
    design = parse_sweep(sweep(DESIGN)).design
    assert design.budget.fraction == 0.3 and design.budget.flops is None
    assert design.batch == 2 and design.law == "conditional" and design.form is None
    assert design.stop_probability == 0.9
    assert design.target.scale_factor == 10 and design.target.r is None


def test_every_problem_of_the_block_is_listed_by_key_path():
    message = problems(sweep({"budget": {"fraction": 2, "flops": 1e12},
                              "target": {"scale_factor": 10, "n_params": 1e6},
                              "stop_probability": 1.0, "batch": 0, "sampler": "tpe"}))
    assert "design.budget.fraction" in message
    assert "design.target: give exactly one of scale_factor or n_params" in message
    assert "design.stop_probability" in message and "design.batch" in message
    assert "design.sampler: unknown key (valid keys here: batch, budget, criterion, form, law, " in message


def test_a_budget_names_flops_or_a_fraction_exactly_once():
    assert "design.budget: give exactly one of flops or fraction" in problems(
        sweep({"budget": {}, "target": {"n_params": 1e6}}))
    assert parse_sweep(sweep({"budget": {"flops": 3e12}, "target": {"n_params": 1e6}})
                       ).design.budget.flops == 3e12


def test_a_design_needs_a_grid_and_a_target_width_and_ratio():
    search = {k: v for k, v in GRID.items() if k != "grid"}
    search["search"] = {"n_params": 1e4, "d_model": {"low": 8, "high": 16},
                        "r": {"low": 1, "high": 4}, "n_trials": 3}
    assert "design: chooses among grid points: it needs a grid:" in problems(
        {**search, "design": DESIGN})
    widths = sweep(DESIGN, grid={**GRID["grid"], "d_over_sqrt_n": None, "d_model": [16, 24]})
    assert "design.target.d_over_sqrt_n is needed when the grid gives d_model" in problems(widths)
    flops = sweep(DESIGN, budget={"flops": 1e9})
    assert "design.target.tokens_per_param is needed" in problems(flops)

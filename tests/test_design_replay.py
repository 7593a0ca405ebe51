"""The replay benchmark: its scores against hand computations, `archscale bench design`'s JSON
in the issue's schema, and the engine against random choice on a public pool (ScaleBench moe,
tests/data/validation/scalebench/moe.csv: Li et al. 2026's pool of 193 runs and 28 target runs).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from archscale.cli.main import app
from archscale.decide.costs import parse_cost
from archscale.decide.design_law import KindLaw
from archscale.decide.replay import Replay, r2_clipped, regret, run_replay, split_target
from archscale.laws.table import load_table

SCALEBENCH = Path(__file__).parent / "data" / "validation" / "scalebench"
MOE = SCALEBENCH / "moe.csv"
PARALLEL = SCALEBENCH / "parallel.csv"
KEYS = {"r2_mean", "r2_sd", "mse_mean", "coverage_90_mean", "runs_mean", "cost_fraction_mean"}


def test_r2_is_the_target_regions_clipped_to_minus_one_and_one():
    measured = np.array([1.0, 2.0, 3.0, 4.0])
    # SS_res = 0.25 * 4 = 1, SS_tot = 5: R^2 = 0.8
    assert r2_clipped(measured + np.array([0.5, -0.5, 0.5, -0.5]), measured) == pytest.approx(0.8)
    assert r2_clipped(measured + 10, measured) == -1.0
    assert r2_clipped(np.array([1.0, np.nan, 3, 4]), measured) == -1.0  # a failed fit


def test_regret_is_the_recommended_shapes_excess_loss():
    target = pd.DataFrame({"scale": ["s", "s", "s", "m", "m"], "shape": list("abcab"),
                           "loss": [3.0, 2.9, 3.1, 2.5, 2.6]})
    spec = Replay(pool=target, target=target, costs=np.ones(5), law=KindLaw("chinchilla"),
                  shapes="shape", within=("scale",))
    # at s the fit ranks c best (measured 3.1 vs best 2.9: regret 0.2); at m it ranks a (0)
    predicted = np.array([3.0, 3.0, 2.0, 1.0, 2.0])
    assert regret(spec, predicted) == pytest.approx(0.1)


def test_bench_design_writes_the_issues_schema(tmp_path):
    out = tmp_path / "replay.json"
    result = CliRunner().invoke(app, [
        "bench", "design", "--csv", str(MOE), "--law", "scalebench/moe",
        "--target", "split == 'target'", "--cost", "N * experts", "--budgets", "0.1",
        "--repeats", "2", "--methods", "random,cheapest,cost-random,all", "--json", str(out)])
    assert result.exit_code == 0, result.output
    methods = json.loads(out.read_text())["methods"]
    assert set(methods) == {"random", "cheapest", "cost-random", "all"}
    assert set(methods["all"]) == {"1"} and set(methods["random"]) == {"0.1"}
    for per_budget in methods.values():
        for budget, row in per_budget.items():
            assert set(row) >= KEYS
            assert -1 <= row["r2_mean"] <= 1
            assert row["cost_fraction_mean"] <= float(budget) + 1e-12
    assert methods["all"]["1"]["runs_mean"] == 193
    # the cheapest runs are the same in every repeat
    assert methods["cheapest"]["0.1"]["r2_sd"] == 0


def test_bench_design_refuses_a_target_that_leaves_no_pool():
    result = CliRunner().invoke(app, [
        "bench", "design", "--csv", str(MOE), "--law", "scalebench/moe", "--target",
        "N > 0", "--repeats", "1", "--json", "/tmp/never.json"])
    assert result.exit_code != 0
    assert "must leave both target rows and a pool" in str(result.exception)


def test_bench_design_refuses_the_wrong_shape_criterion_without_shapes():
    result = CliRunner().invoke(app, [
        "bench", "design", "--csv", str(MOE), "--law", "scalebench/moe", "--target",
        "split == 'target'", "--cost", "N * experts", "--repeats", "1", "--criterion",
        "wrong_shape", "--json", "/tmp/never.json"])
    assert result.exit_code != 0
    assert "wrong_shape criterion scores the shape" in str(result.exception)


@pytest.mark.slow
def test_engine_beats_random_at_five_percent_on_moe():
    law = KindLaw("scalebench/moe")
    table = load_table(MOE, law.law_kind.default_columns)
    pool, target = split_target(table, "split == 'target'", None)
    spec = Replay(pool=pool, target=target, costs=parse_cost("N * experts", list(pool))(pool),
                  law=law)
    result = run_replay(spec, ["design", "random"], [0.05], repeats=3)["methods"]
    assert result["design"]["0.05"]["r2_mean"] > result["random"]["0.05"]["r2_mean"]


def test_engine_run_per_budget_fits_parallel_at_ten_percent():
    # ScaleBench parallel, one law (4 coefficients, so 5 runs) per corpus, cost N. Per corpus the
    # 18 pool runs cost 3.32e10 in all; the five cheapest (5.36 + 5.38 + 5.41 + 6.94 + 6.97)e8 =
    # 3.01e9 fit in 10% (3.32e9), so a fit is affordable; at 5% (1.66e9) only three do (four: 2.31e9).
    law = KindLaw("scalebench/parallel")
    table = load_table(PARALLEL, law.law_kind.default_columns)
    pool, target = split_target(table, "split == 'target'", None)
    spec = Replay(pool=pool, target=target, costs=parse_cost("N", list(pool))(pool), law=law,
                  by="group")
    result = run_replay(spec, ["design"], [0.05, 0.1], repeats=1)["methods"]["design"]
    assert result["0.05"]["failed_fits"] == 1 and result["0.05"]["runs_mean"] <= 6
    assert result["0.1"]["failed_fits"] == 0 and result["0.1"]["runs_mean"] >= 10
    assert result["0.1"]["r2_mean"] > 0.9

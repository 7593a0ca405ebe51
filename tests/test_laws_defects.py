"""The ten defects of issue 23, each held by a test that failed on the code the issue measured
(main at 793fb90): reduced fits on one tokens-per-parameter line, vanished shape terms, the
README's failed-refit rule, predict --csv's column mapping, --holdout-by flops and budget, the
held-out table, raw numpy warnings, duplicated rows, and demo --verify after a refused demo."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.laws import diagnostics, fit_law, load_law
from archscale.laws.chinchilla import predict as chinchilla_predict
from archscale.laws.chinchilla import to_natural
from archscale.laws.registry import get_kind

EPOCH = np.array([477.8, 2143.9, 1.817, 0.3473, 0.3672])
"""Besiroglu et al. 2024's published fit (A, B, E, alpha, beta)."""


def chinchilla_runs(n_params: np.ndarray, tokens: np.ndarray, noise: float = 0.005,
                    seed: int = 0) -> pd.DataFrame:
    """Runs on the published Epoch law with relative noise."""
    rng = np.random.default_rng(seed)
    loss = chinchilla_predict(EPOCH, n_params, tokens)[0] * (1 + noise * rng.normal(size=len(n_params)))
    return pd.DataFrame({"N": n_params, "D": tokens, "loss": loss})


def twenty_per_param() -> pd.DataFrame:
    """A grid where every run has D = 20 N, like the public 435-run grid of the issue."""
    n_params = np.repeat(np.geomspace(2e7, 2e9, 12), 3) * np.tile([1.0, 1.01, 1.02], 12)
    return chinchilla_runs(n_params, 20 * n_params)


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# 1 -------------------------------------------------------------------------------------------
def test_one_tokens_per_param_grid_saves_a_reduced_law_valid_on_its_line(tmp_path):
    csv, out = tmp_path / "d20.csv", tmp_path / "law.json"
    twenty_per_param().to_csv(csv, index=False)
    result = run("fit", "--law", "chinchilla", "--csv", csv, "--out", out, "--n-boot", "20")
    assert result.exit_code == 0, result.output
    law = load_law(out)
    assert law.identified and law.coef_names == ("A", "E", "alpha")
    # along D = 20 N, L(N) = E + A / N^alpha + B / (20 N)^beta: the reduced fit tracks it there
    n_params = np.array([3e9])
    truth = chinchilla_predict(EPOCH, n_params, 20 * n_params)[0]
    assert law.predict(pd.DataFrame({"N": n_params, "D": 20 * n_params})) == pytest.approx(
        truth, rel=0.02)
    with pytest.raises(ArchscaleError, match="predicts only there"):
        law.predict(pd.DataFrame({"N": [3e9], "D": [3e9]}))
    assert "not identified" not in result.output and "along that line" in result.output


# 2 -------------------------------------------------------------------------------------------
def test_a_shape_term_at_zero_is_a_problem():
    from archscale.laws import conditional

    table = pd.DataFrame({"N": [1e8, 2e8, 4e8], "D": [2e9, 4e9, 8e9], "loss": [3.0, 2.9, 2.8],
                          "aspect": [16.0, 64.0, 128.0]})
    config = conditional.configure({"terms": "aspect:u_log_sq"})
    zero = {"aspect.ln": 0.0, "aspect.ln2": 0.0}
    problems = conditional.KIND.problems(config, zero, table)
    assert [p.code for p in problems] == ["term_at_bound"] and "aspect" in problems[0].message
    # a term that moves the loss by a percent is alive
    assert conditional.KIND.problems(config, {"aspect.ln": 0.01, "aspect.ln2": 0.0}, table) == []


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_failed_refits_follow_the_readme_and_leave_no_interval():
    # the README: "at most 20% failed bootstrap refits"
    assert diagnostics.refit_problems(0.795, 200)[0].code == "refits_failed"
    assert diagnostics.refit_problems(0.8, 200) == []
    kind = get_kind("chinchilla")

    def never_converges(table, config, estimate, counts):
        samples, _ = kind.bootstrap(table, config, estimate, counts)
        return samples, np.zeros(len(samples), dtype=bool)

    grid = np.repeat(np.geomspace(1e8, 1e9, 4), 3)
    table = chinchilla_runs(grid, grid * np.tile([10.0, 20.0, 40.0], 4))
    law = fit_law(dataclasses.replace(kind, bootstrap=never_converges), table, n_boot=10)
    assert "refits_failed" in [p.code for p in law.problems]
    low, high = law.prediction_interval(pd.DataFrame({"N": [2e9], "D": [4e10]}))
    assert np.isnan(low).all() and np.isnan(high).all()
    assert law.error_model.source is None and "refits" in law.error_model.reason


# 4, 6 ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_csv_reuses_the_stored_mapping_and_fit_writes_heldout_only_when_asked(tmp_path):
    grid = np.repeat(np.geomspace(1e8, 2e9, 5), 3)
    table = chinchilla_runs(grid, grid * np.tile([10.0, 20.0, 40.0], 5))
    raw = table.rename(columns={"N": "params", "D": "toks", "loss": "final"})
    raw.insert(0, "run_name", [f"run{i}" for i in range(len(raw))])
    csv = tmp_path / "runs.csv"
    raw.to_csv(csv, index=False)
    out = tmp_path / "law.json"
    mapping = "N=params,D=toks,loss=final"
    result = run("fit", "--law", "chinchilla", "--csv", csv, "--columns", mapping, "--out", out,
                 "--n-boot", "10")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "law.heldout.csv").exists()  # nothing was held out by the user
    scored = tmp_path / "scored.csv"
    result = run("predict", out, "--csv", csv, "--out", scored)  # no --columns again
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(scored)) == len(raw)
    result = run("fit", "--law", "chinchilla", "--csv", csv, "--columns", mapping, "--out", out,
                 "--n-boot", "10", "--holdout-above", "1e9")
    assert result.exit_code == 0, result.output
    held = pd.read_csv(tmp_path / "law.heldout.csv")
    assert list(held["run_name"]) == list(raw.loc[raw["params"] >= 1e9, "run_name"])


# 5 -------------------------------------------------------------------------------------------
def test_holdout_by_flops_derives_them_and_budget_survives_being_the_scale(tmp_path):
    grid = np.repeat(np.geomspace(1e8, 2e9, 5), 3)
    table = chinchilla_runs(grid, grid * np.tile([10.0, 20.0, 40.0], 5))
    law = fit_law("chinchilla", table, n_boot=0, holdout_above=1e20, holdout_by="flops")
    held = law.validation["heldout"]
    assert held["n_test"] == int((6 * table.N * table.D >= 1e20).sum())  # C = 6 N D
    raw = table.assign(budget=np.round(6 * table.N * table.D, -17))
    csv, out = tmp_path / "runs.csv", tmp_path / "law.json"
    raw.to_csv(csv, index=False)
    result = run("fit", "--law", "chinchilla", "--csv", csv, "--columns", "scale=budget",
                 "--out", out, "--n-boot", "0", "--holdout-above", "1e20", "--holdout-by",
                 "budget")
    assert result.exit_code == 0, result.output


# 7 -------------------------------------------------------------------------------------------
def test_no_raw_numpy_overflow_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isinf(to_natural(np.array([[800.0, 1.0, 0.0, 0.3, 0.3]]))[0, 0])
        # a degenerate fit: steps of a huge log-scale coefficient overflow inside the check
        diagnostics.flat_directions(lambda c: c[0] * np.ones(3), np.array([1e300]), ["A"])


# 8 -------------------------------------------------------------------------------------------
def test_duplicated_rows_are_collapsed_and_said(tmp_path):
    grid = np.repeat(np.geomspace(1e8, 2e9, 5), 3)
    table = chinchilla_runs(grid, grid * np.tile([10.0, 20.0, 40.0], 5))
    once = fit_law("chinchilla", table, n_boot=50)
    twice = fit_law("chinchilla", pd.concat([table, table], ignore_index=True), n_boot=50)
    assert twice.provenance["duplicates_collapsed"] == len(table)
    assert twice.coef_intervals()["alpha"] == once.coef_intervals()["alpha"]  # not narrowed
    csv = tmp_path / "twice.csv"
    pd.concat([table, table]).to_csv(csv, index=False)
    result = run("fit", "--law", "chinchilla", "--csv", csv, "--out", tmp_path / "l.json",
                 "--n-boot", "0")
    assert result.exit_code == 0 and "collapsed" in result.output


# 9 -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_prediction_interval_holds_the_mean_interval_at_its_own_level():
    """A 90% interval for a new run can be narrower than the 95% interval of the mean (levels
    differ), never narrower than the mean's interval at 90%."""
    grid = np.repeat(np.geomspace(1e8, 2e9, 5), 3)
    table = chinchilla_runs(grid, grid * np.tile([10.0, 20.0, 40.0], 5), noise=0.02)
    law = fit_law("chinchilla", table, n_boot=100)
    rows = pd.DataFrame({"N": [5e9, 1e10], "D": [1e11, 2e11]})
    low, high = law.prediction_interval(rows, 0.9)
    mean_low, mean_high = law.mean_interval(rows, 0.9)
    assert np.all(low <= mean_low) and np.all(mean_high <= high)


# 10 ------------------------------------------------------------------------------------------
def test_verify_refuses_a_refused_demo_before_training(tmp_path, monkeypatch):
    from archscale.decide import demo
    from archscale.decide.report import LAW_FILES
    from archscale.laws import save_law

    grid = np.repeat(np.geomspace(1e8, 1e9, 3), 2)
    law = fit_law("chinchilla", chinchilla_runs(grid, grid * np.tile([10.0, 40.0], 3)), n_boot=0)
    bad = dataclasses.replace(law, problems=(diagnostics.Problem(
        "E_zero", "E = 2.02e-12 is at zero: train some runs longer"),))
    for name in LAW_FILES.values():
        save_law(bad, tmp_path / "laws" / name)

    def no_training(*args, **kwargs):
        raise AssertionError("verify trained a shape for laws the demo refused")

    monkeypatch.setattr(demo, "train", no_training)
    with pytest.raises(ArchscaleError, match="do not identify"):
        demo.verify(demo.DemoOptions(out=tmp_path))
    assert not (tmp_path / "verify.json").exists()

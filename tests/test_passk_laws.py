"""pass@k laws against independent truth: Brown et al.'s published SWE-bench coverage, a Beta
population of problems (Schaeffer et al.), and synthetic runs drawn from known coefficients."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import betaln

from archscale.arch.errors import ArchscaleError
from archscale.laws import fit_law, load_law, save_law
from archscale.laws.passk import KIND, fit_beta, fit_power, predict


def test_power_coverage_law_through_brown_et_al_swe_bench_lite():
    """Brown et al. (2024): DeepSeek-Coder-V2-Instruct solves 15.9% of SWE-bench Lite with one
    sample and 56% with 250; -log pass@k = a k^-b through both has a = -ln 0.159."""
    law = fit_power(np.array([1, 250]), np.array([0.159, 0.56]))
    assert law.coef["a"] == pytest.approx(-np.log(0.159))
    assert law.coef["b"] == pytest.approx(np.log(np.log(0.159) / np.log(0.56)) / np.log(250))
    assert law.pass_at_k(np.array([1, 250])) == pytest.approx([0.159, 0.56])
    with pytest.raises(ArchscaleError, match="2\\+ values of k"):
        fit_power(np.array([1, 2]), np.array([0.0, 1.0]))


def _beta_population(alpha: float, beta: float, problems: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.binomial(n, rng.beta(alpha, beta, problems))


def _true_pass(alpha: float, beta: float, k: np.ndarray) -> np.ndarray:
    """E[1 - (1 - p)^k] for p ~ Beta(alpha, beta)."""
    return 1 - np.exp(betaln(alpha, beta + k) - betaln(alpha, beta))


def test_beta_coverage_law_recovers_the_problem_distribution():
    correct = _beta_population(0.3, 3.0, 3000, 32, seed=0)
    law = fit_beta(correct, 32, n_boot=30)
    assert law.coef["alpha"] == pytest.approx(0.3, rel=0.1)
    assert law.coef["beta"] == pytest.approx(3.0, rel=0.2)
    k = np.array([1, 8, 32, 1000])
    low, high = law.interval(k, 0.9)
    assert np.all(low <= law.pass_at_k(k)) and np.all(law.pass_at_k(k) <= high)
    assert np.abs(law.pass_at_k(k) / _true_pass(0.3, 3.0, k) - 1).max() < 0.06


def test_beta_law_forecasts_many_samples_from_few_better_than_the_power_law():
    """Schaeffer et al.: with 8 samples per problem of a hard population (pass@1 1.5%), the Beta
    fit forecasts pass@10000 and the exponent (alpha); a power law through the measured
    pass@1..8 carries its small-k slope out and misses the bend."""
    from archscale.sweeps.passk import pass_at_k

    alpha, beta = 0.3, 20.0
    correct = _beta_population(alpha, beta, 2000, 8, seed=1)
    ks = np.arange(1, 9)
    measured = np.array([float(np.mean(pass_at_k(8, correct, k))) for k in ks])
    far = np.array([10000.0])
    truth = _true_pass(alpha, beta, far)[0]
    fitted = fit_beta(correct, 8)
    assert fitted.exponent == pytest.approx(alpha, abs=0.03)
    beta_error = abs(fitted.pass_at_k(far)[0] / truth - 1)
    power_error = abs(fit_power(ks, measured).pass_at_k(far)[0] / truth - 1)
    assert beta_error < 0.03 and power_error > 0.08


TRUE = {"lnE0": np.log(0.05), "lnE0_k": -0.6, "lnN0": 0.0, "lnN0_k": -0.25, "beta": 0.4,
        "beta_k": 0.05, "lnD0": np.log(0.6), "lnD0_k": -0.2, "gamma": 0.3, "gamma_k": 0.03}
REF = {"N": 1e4, "D": 3e5}
CONFIG = {"covariate": "nd", "terms": [], "floor": True, "ref": REF}


def synthetic_runs(noise: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """Five scales x two token budgets x three runs, pass@1..32 from the known law with
    log-normal scatter."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in (3e3, 5e3, 8e3, 1.3e4, 2.1e4):
        for tokens_per_param in (16, 48):
            for _ in range(3):
                size = n * rng.uniform(0.95, 1.05)
                rows += [{"N": size, "D": tokens_per_param * n, "k": k, "scale": f"{n:.3g}"}
                         for k in range(1, 33)]
    table = pd.DataFrame(rows)
    truth = predict(CONFIG, np.array(list(TRUE.values())), table)[0]
    return table.assign(pass_at_k=truth * np.exp(rng.normal(0, noise, len(table))),
                        truth=truth)


def test_passk_law_recovers_known_coefficients_and_predicts_the_held_out_scale():
    table = synthetic_runs()
    law = fit_law("passk", table, {"covariate": "nd", "floor": True, "ref": REF}, n_boot=20,
                  seed=0)
    assert law.identified, law.problems
    coef = law.coefficients
    for name in ("beta", "gamma", "beta_k", "gamma_k"):
        assert coef[name] == pytest.approx(TRUE[name], abs=0.05), name
    assert np.abs(law.predict(table) / table["truth"] - 1).max() < 0.03
    held = law.validation["heldout"]  # fitted on four scales, the 96 runs x k of the fifth
    assert held["rule"] == "largest scale '2.1e+04' held out" and held["n_test"] == 6 * 32
    assert held["mean_relative_error"] < 0.03
    assert 0.8 <= held["coverage_90"] <= 1.0


def test_loss_form_recovers_its_exponents_from_runs_of_known_loss():
    """pass@k = exp(-L0(k) (L / 2.3)^kappa(k)) on runs whose loss falls with N and D."""
    config = {"covariate": "loss", "terms": [], "floor": False, "ref": {"loss": 2.3}}
    true = np.array([1.2, -0.3, 2.7, 0.27])
    table = synthetic_runs().assign(loss=lambda t: 1.2 + 40 * t["N"] ** -0.3 + 30 * t["D"] ** -0.25)
    truth = predict(config, true, table)[0]
    noisy = truth * np.exp(np.random.default_rng(3).normal(0, 0.02, len(table)))
    law = fit_law("passk", table.assign(pass_at_k=noisy),
                  {"covariate": "loss", "ref": {"loss": 2.3}}, n_boot=10)
    assert law.identified, law.problems
    assert law.coef_names == ("lnL0", "lnL0_k", "kappa", "kappa_k")
    assert law.coef == pytest.approx(true, abs=0.05)
    assert np.abs(law.predict(table) / truth - 1).max() < 0.01


def test_passk_law_is_a_law_kind_that_saves_and_loads(tmp_path):
    table = synthetic_runs().assign(flops=lambda t: 6 * t["N"] * t["D"])
    law = fit_law("passk", table, {"covariate": "compute", "floor": True}, n_boot=5,
                  progressive=False)
    assert law.coef_names == ("lnE0", "lnE0_k", "lnC0", "lnC0_k", "alpha", "alpha_k")
    loaded = load_law(save_law(law, tmp_path / "passk.json"))
    assert loaded.kind == KIND.name == "passk" and loaded.config == law.config
    rows = table.head(40)
    assert np.array_equal(loaded.predict(rows), law.predict(rows))
    # without progressive refits (and no public pass@k sweep) only the in-sample scatter
    # calibrates: intervals inside the fitted range, none beyond it, and the law says why
    low, high = loaded.prediction_interval(rows)
    inside = loaded.predict(rows)
    assert np.all(low < inside) and np.all(inside < high)
    far = rows.assign(N=rows["N"] * 1e3, flops=rows["flops"] * 1e3)
    assert np.isnan(loaded.prediction_interval(far)[0]).all()
    assert loaded.error_model.reason == law.error_model.reason and "passk" in loaded.error_model.reason


def test_passk_law_names_what_it_cannot_identify():
    table = synthetic_runs()
    one_budget = table[table["D"] == 16 * table["scale"].astype(float)]
    law = fit_law("passk", one_budget, {"covariate": "nd"}, n_boot=0, progressive=False)
    assert "collinear" in [p.code for p in law.problems]
    law = fit_law("passk", table[table["k"].isin([1, 32])], {"covariate": "nd"}, n_boot=0,
                    progressive=False)
    assert "few_values" in [p.code for p in law.problems]
    with pytest.raises(ArchscaleError, match=r"pass_at_k.*non-positive"):
        fit_law("passk", table.assign(pass_at_k=0.0), {"covariate": "nd"}, n_boot=0)


def test_fit_command_runs_the_forms_own_checks(tmp_path):
    """`archscale fit --law passk` goes through fit_law, which runs the form's checks: pass@k at
    two values of k cannot give a line in ln k per coefficient, and the fit is refused."""
    from typer.testing import CliRunner

    from archscale.cli.main import app

    path = tmp_path / "runs.csv"
    table = synthetic_runs()
    table[table["k"].isin([1, 32])].drop(columns="truth").to_csv(path, index=False)
    result = CliRunner().invoke(app, ["fit", "--law", "passk", "--csv", str(path), "--out",
                                      str(tmp_path / "law.json"), "--n-boot", "0"])
    assert isinstance(result.exception, ArchscaleError), result.output
    assert "not identified" in str(result.exception)
    assert "not identified: the runs hold pass@k at 2 value(s) of k" in result.output


def test_bootstrap_resamples_whole_runs():
    """A run gives 32 rows (one per k); a resample draws the run, so its rows share a count."""
    from archscale.laws.law import _resample

    table = synthetic_runs()
    counts_SxN = _resample(KIND, CONFIG, table, 50, seed=0)
    run_of_row = table.groupby(["N", "D"], sort=False).ngroup().to_numpy()
    assert len(np.unique(run_of_row)) == 30 and counts_SxN.shape == (50, 30 * 32)
    for run in range(30):
        rows = counts_SxN[:, run_of_row == run]
        assert np.all(rows == rows[:, :1])
    assert np.all(counts_SxN.sum(axis=1) == 30 * 32)  # 30 runs drawn, 32 rows each


def test_intervals_are_calibrated_on_the_relative_error_of_minus_log_pass():
    """Noise that is log-normal in -log pass@k (sd 0.05, the same at every k and scale): the law
    recovers that sd as its run scatter and its 90% intervals cover about 90% of fresh runs at
    the fitted scales, at k = 1 (pass@k near 0) as at k = 32."""
    table = synthetic_runs(noise=0.0)
    y = -np.log(table["truth"])
    rng = np.random.default_rng(5)
    run_noise = rng.normal(0, 0.05, len(table) // 32).repeat(32)  # one draw per run, all k
    law = fit_law("passk", table.assign(pass_at_k=np.exp(-y * np.exp(run_noise))),
                  {"covariate": "nd", "floor": True, "ref": REF}, n_boot=0, progressive=False)
    assert law.error_model.space == "neglog"
    assert law.error_model.sigma_run == pytest.approx(0.05, rel=0.25)
    fresh = np.exp(-y * np.exp(rng.normal(0, 0.05, len(table) // 32).repeat(32)))
    low, high = law.prediction_interval(table)
    inside = (low <= fresh) & (fresh <= high)
    for k in (1, 32):
        assert 0.75 <= inside[table["k"] == k].mean() <= 1.0
    assert 0.8 <= inside.mean() <= 0.98


def test_neglog_interval_and_clustered_scatter_by_hand():
    """pass = exp(-y): an interval symmetric in ln y is pass ** exp(-+z sigma); a scatter over 4
    runs of 3 rows with 2 coefficients has 12 (4 - 2) / 4 = 6 degrees of freedom."""
    from archscale.laws import intervals

    model = intervals.ErrorModel(space="neglog", sigma_run=0.1, growth=0.0, ranges={})
    low, high = intervals.interval(model, np.array([0.2]), np.zeros(1), 0.9)
    z = 1.6448536269514722
    assert low[0] == pytest.approx(0.2 ** np.exp(z * 0.1))
    assert high[0] == pytest.approx(0.2 ** np.exp(-z * 0.1))
    measured = np.array([0.1, 0.2, 0.3] * 4)
    fitted = measured ** np.exp(np.repeat([0.1, -0.1, 0.2, 0.0], 3))
    ln_y_error = np.repeat([0.1, -0.1, 0.2, 0.0], 3)  # ln(y_fitted / y_measured)
    assert intervals.in_sample_scatter(fitted, measured, 2, "neglog", n_runs=4) == pytest.approx(
        np.sqrt(np.sum(ln_y_error**2) / 6))
    assert intervals.in_sample_scatter(fitted, measured, 2, "neglog") == pytest.approx(
        np.sqrt(np.sum(ln_y_error**2) / 10))


def test_predict_command_answers_a_passk_law_at_each_k(tmp_path):
    """`archscale predict LAW --loss L --k 1,32`: one prediction per k, the form's formula at the
    saved coefficients, inside its 90% interval; a law of N and D asks for a shape instead."""
    import json

    from typer.testing import CliRunner

    from archscale.cli.main import app

    table = synthetic_runs().assign(loss=lambda t: 1.2 + 40 * t["N"] ** -0.3 + 30 * t["D"] ** -0.25)
    law = fit_law("passk", table.assign(pass_at_k=np.exp(-np.exp(1.2) * (table["loss"] / 2.3) ** 2.7
                                                           * table["k"] ** -0.3)),
                  {"covariate": "loss", "ref": {"loss": 2.3}}, n_boot=10)
    path = save_law(law, tmp_path / "passk.json")
    result = CliRunner().invoke(app, ["predict", str(path), "--loss", "2.2", "--k", "1,32",
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    c = law.coefficients
    for row, k in zip(rows, (1, 32), strict=True):
        y = np.exp(c["lnL0"] + c["lnL0_k"] * np.log(k)) * (2.2 / 2.3) ** (
            c["kappa"] + c["kappa_k"] * np.log(k))
        assert row["k"] == k and row["prediction"] == pytest.approx(np.exp(-y))
        assert row["lower"] < row["prediction"] < row["upper"]
    missing = CliRunner().invoke(app, ["predict", str(path), "--loss", "2.2"])
    assert "needs the samples per request (--k" in str(missing.exception)
    nd = save_law(fit_law("passk", table, {"covariate": "nd"}, n_boot=0, progressive=False),
                  tmp_path / "nd.json")
    missing = CliRunner().invoke(app, ["predict", str(nd), "--k", "1"])
    assert "needs a shape (--spec" in str(missing.exception)

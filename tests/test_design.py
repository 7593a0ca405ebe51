"""The design engine's picking rule against hand computations, its seed, and its answers to a
refused law. A linear law y = a + b x makes the V-optimal gain a closed form: with Sigma =
sigma^2 (X^T X)^-1, adding x_c lowers the variance at x_t to x_t^T Sigma' x_t, where
Sigma' = sigma^2 (X^T X + x_c x_c^T)^-1 (computed here by inverting, not by the engine's
rank-one update)."""

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from archscale.arch.errors import ArchscaleError
from archscale.decide import design
from archscale.decide.costs import parse_cost
from archscale.decide.design import choose, seed_size
from archscale.decide.design_law import Fitted, KindLaw
from archscale.laws.diagnostics import Problem

SIGMA = 0.05


@dataclass(frozen=True)
class LinearLaw:
    """y = a + b x, least squares; its run scatter fixed at SIGMA."""

    name: str = "linear"
    target: str = "y"
    space: str = "absolute"
    n_coef: int = 2
    problems: tuple = ()

    def fit(self, table, warm=None):
        coef = self.refit(None, table, np.ones((1, len(table))))[0]
        return Fitted(coef=coef, sigma=SIGMA, problems=self.problems, n_runs=len(table))

    def refit(self, fitted, table, weights_SxN):
        x = np.column_stack([np.ones(len(table)), table["x"].to_numpy(float)])
        y = table["y"].to_numpy(float)
        return np.array([np.linalg.lstsq(x * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
                         for w in np.asarray(weights_SxN, float)])

    def predict(self, fitted, coef_SxP, rows):
        coef = np.atleast_2d(coef_SxP)
        return coef[:, :1] + coef[:, 1:2] * rows["x"].to_numpy(float)[None, :]

    def interval(self, fitted, rows, level=0.9):
        p = self.predict(fitted, fitted.coef, rows)[0]
        return p - 2 * SIGMA, p + 2 * SIGMA


def _runs(x):
    x = np.asarray(x, float)
    return pd.DataFrame({"x": x, "y": 2.0 + 0.5 * x})


def _variance(x_done, x_target):
    """Mean predictive variance of the linear fit at the target points (hand formula)."""
    design_matrix = np.column_stack([np.ones(len(x_done)), x_done])
    sigma = SIGMA**2 * np.linalg.inv(design_matrix.T @ design_matrix)
    rows = np.column_stack([np.ones(len(x_target)), x_target])
    return float(np.mean(np.einsum("ij,jk,ik->i", rows, sigma, rows)))


@pytest.fixture
def flat_prior(monkeypatch):
    monkeypatch.setattr(design, "PRIOR_SD", 1e6)  # the hand formula has no prior


def test_vopt_gain_and_pick_match_the_closed_form(flat_prior):
    finished = _runs([1.0, 2.0, 3.0, 4.0])
    pool = _runs([0.5, 2.5, 6.0, 9.0])
    target = _runs([10.0, 12.0])
    costs = np.array([1.0, 1.0, 4.0, 9.0])
    choice = choose(finished, pool, LinearLaw(), target, costs=costs, k=1, method="vopt",
                    cost_power=1.0)
    before = _variance(finished["x"], target["x"])
    gains = np.array([before - _variance(np.r_[finished["x"], x], target["x"])
                      for x in pool["x"]])
    best = int(np.argmax(gains / costs))
    assert choice.stage == "reduce"
    assert choice.picks[0].index == pool.index[best]
    assert choice.picks[0].gain == pytest.approx(gains[best], rel=1e-5)
    assert choice.target_sd == pytest.approx(np.sqrt(before), rel=1e-5)


def test_batch_is_greedy_on_the_updated_posterior(flat_prior):
    finished = _runs([1.0, 2.0, 3.0, 3.5])
    pool = _runs([0.0, 4.0, 5.0, 8.0, 8.5])
    target = _runs([9.0])
    costs = np.ones(len(pool))
    choice = choose(finished, pool, LinearLaw(), target, costs=costs, k=2, method="vopt")
    first, second = choice.picks
    done = np.r_[finished["x"], pool.loc[first.index, "x"]]
    before = _variance(done, target["x"])
    gains = {i: before - _variance(np.r_[done, pool.loc[i, "x"]], target["x"])
             for i in pool.index if i != first.index}
    assert second.index == max(gains, key=gains.get)
    assert second.gain == pytest.approx(gains[second.index], rel=1e-5)
    assert choice.target_sd_after == pytest.approx(
        np.sqrt(_variance(np.r_[done, pool.loc[second.index, "x"]], target["x"])), rel=1e-5)


def test_budget_is_never_exceeded():
    finished = _runs([1.0, 2.0, 3.0, 4.0])
    pool = _runs(np.linspace(0, 10, 11))
    costs = np.linspace(1, 11, 11)
    choice = choose(finished, pool, LinearLaw(), _runs([12.0]), costs=costs, k=5, budget=7.0)
    assert sum(p.cost for p in choice.picks) <= 7.0
    assert len({p.index for p in choice.picks}) == len(choice.picks)


def test_seed_fills_the_space_cheaply():
    # two far-apart clumps of candidates: a space-filling seed must take runs from both
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(1, 2, 20), rng.uniform(100, 200, 20)]
    pool = pd.DataFrame({"x": x, "y": np.nan})
    costs = x.copy()
    law = LinearLaw()
    choice = choose(pool.iloc[:0], pool, law, _runs([300.0]), costs=costs, k=10)
    assert choice.stage == "seed"
    assert len(choice.picks) == seed_size(law)
    picked = pool.loc[[p.index for p in choice.picks], "x"]
    assert (picked < 10).any() and (picked > 10).any()


def test_seed_gathers_near_target_rows_the_runs_surround():
    # a target inside the candidates' range is where a local form's fit is asked about: the
    # seed's strata gather there (runs far from it bias the fit); a target beyond every run
    # leaves the seed spread evenly, whatever the target
    x = np.geomspace(1, 200, 60)
    pool = pd.DataFrame({"x": x, "y": np.nan})

    def seed_x(target_x, method="design"):
        choice = choose(pool.iloc[:0], pool, LinearLaw(), _runs([target_x]), costs=x.copy(),
                        k=10, method=method)
        assert choice.stage == "seed"
        return pool.loc[[p.index for p in choice.picks], "x"].to_numpy()

    spread = seed_x(300.0)
    assert seed_x(1000.0) == pytest.approx(spread)
    assert seed_x(150.0, method="vopt") == pytest.approx(spread)  # V-optimal trusts the form
    gathered = seed_x(150.0)
    assert len(gathered) == len(spread) == seed_size(LinearLaw())

    def far(picked):
        return np.mean(np.abs(np.log(picked / 150.0)))

    assert far(gathered) < far(spread)
    assert np.min(np.abs(np.log(gathered / 150))) < np.min(np.abs(np.log(spread / 150)))

    # a target row that does not name every input (a study's target shapes carry no layer
    # count) is not inside: the seed spreads as for a target beyond every run
    layered = pool.assign(n_layers=np.arange(len(pool)) % 3 + 1)

    def layered_seed(target_x):
        choice = choose(layered.iloc[:0], layered, LinearLaw(), _runs([target_x]),
                        costs=x.copy(), k=10)
        return [p.index for p in choice.picks]

    assert layered_seed(150.0) == layered_seed(300.0)


def test_a_small_budgets_seed_keeps_the_law_fittable():
    # the budget buys exactly the three cheapest runs (2 coefficients + 1): one run of the far
    # clump (cost >= 100) in the seed would leave the law unfittable, even picked one at a time
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(1, 2, 20), rng.uniform(100, 200, 20)]
    pool = _runs(x)
    budget = float(np.sort(x)[:3].sum()) + 1e-9  # (float sums: spent + left == budget)
    finished, spent = pool.iloc[:0], 0.0
    for _ in range(5):
        left = pool.drop(finished.index)
        choice = choose(finished, left, LinearLaw(), _runs([300.0]), costs=left["x"].to_numpy(),
                        k=1, budget=budget - spent)
        if not choice.picks:
            break
        finished = pd.concat([finished, pool.loc[[choice.picks[0].index]]])
        spent += choice.picks[0].cost
    assert sorted(finished["x"]) == pytest.approx(np.sort(x)[:3])


def test_refused_law_asks_for_longer_runs():
    advice = ("E = 2.02e-12 is at zero: the data do not reach the regime where loss flattens; "
              "train some runs longer (more tokens per parameter) or at larger sizes")
    law = LinearLaw(problems=(Problem("E_zero", advice),))
    finished = pd.DataFrame({"N": [1e6, 2e6, 4e6, 8e6], "D": [2e7, 4e7, 8e7, 1.6e8],
                             "x": [1.0, 2, 3, 4], "y": [1.0, 2, 3, 4]})
    pool = pd.DataFrame({"N": [1e6, 2e6, 3e6, 1e6], "D": [2e7, 4e7, 3e8, 2e8],
                         "x": [5.0, 6, 7, 8], "y": np.nan})
    costs = (6 * pool["N"] * pool["D"]).to_numpy()
    choice = choose(finished, pool, law, pool.iloc[:1], costs=costs, k=2, inputs=["N", "D"])
    assert choice.stage == "identify"
    ratio = (pool["D"] / pool["N"]).loc[[p.index for p in choice.picks]]
    assert (ratio > 20).all()  # every finished run has D = 20 N
    assert "train some runs longer" in choice.picks[0].reason


def test_refused_term_asks_for_new_values_of_its_feature():
    advice = ("term r:u_log_inv has 2 coefficient(s) but the runs take only 1 distinct value(s) "
              "of r: add runs at 2 more value(s) of r, or declare a simpler form (log)")
    law = LinearLaw(problems=(Problem("few_values", advice),))
    finished = pd.DataFrame({"r": [2.0] * 4, "x": [1.0, 2, 3, 4], "y": [1.0, 2, 3, 4]})
    pool = pd.DataFrame({"r": [2.0, 2.0, 3.0, 3.0, 4.0], "x": [5.0, 6, 7, 8, 9], "y": np.nan})
    choice = choose(finished, pool, law, pool.iloc[:1], costs=np.ones(5), k=2, inputs=["r", "x"])
    assert sorted(pool.loc[[p.index for p in choice.picks], "r"]) == [3.0, 4.0]


def test_cost_expressions_are_arithmetic_only():
    table = pd.DataFrame({"N": [1e6, 2e6], "D": [1e7, 3e7], "num_experts": [1, 8]})
    np.testing.assert_allclose(parse_cost(None, list(table))(table), 6 * table.N * table.D)
    np.testing.assert_allclose(parse_cost("N * num_experts", list(table))(table), [1e6, 1.6e7])
    for bad in ("__import__('os').system('true')", "N.__class__", "[N]", "Q * 2", "'a'"):
        with pytest.raises(ArchscaleError):
            parse_cost(bad, list(table))(table)


def test_chinchilla_refused_as_collinear_gets_runs_off_its_line():
    # every finished run at D = 20 N: laws/diagnostics.py refuses the Chinchilla law as
    # collinear and asks for "runs at a second tokens-per-parameter ratio"
    A, B, E, alpha, beta = 482.0, 2085.4, 1.82, 0.3478, 0.3658  # Epoch's replication
    sizes = np.geomspace(1e7, 1e9, 12)
    finished = pd.DataFrame({"N": sizes, "D": 20 * sizes})
    finished["loss"] = E + A / finished.N**alpha + B / finished.D**beta
    pool = pd.DataFrame([(n, n * r) for n in np.geomspace(1e7, 1e9, 8) for r in (5, 20, 80)],
                        columns=["N", "D"])
    costs = parse_cost(None, list(pool))(pool)
    choice = choose(finished, pool, KindLaw("chinchilla"), pd.DataFrame({"N": [1e10],
                                                                        "D": [2e11]}),
                    costs=costs, k=3, budget=costs.sum())
    assert choice.stage == "identify"
    assert [p.code for p in choice.problems] == ["collinear"]
    ratios = (pool["D"] / pool["N"]).loc[[p.index for p in choice.picks]]
    assert len(ratios) == 3 and not np.isclose(ratios, 20).any()


def _kriging_variance(x_obs, x_t, scale, tau):
    """Variance of (a + b x + delta)(x_t) given runs at x_obs, flat prior on (a, b) (universal
    kriging), delta of prior sd tau with the engine's low-rank covariance: exact to and at the
    target, k(x, t) k(t, x') / tau^2 between runs, tau^2 on the diagonal; x standardized by
    ``scale`` (the log-input mean and sd)."""
    def z(x):
        return (np.log(np.asarray(x, float)) - scale[0]) / scale[1]

    k_t = tau**2 * np.exp(-0.5 * (z(x_obs) - z(x_t)) ** 2)
    c0 = np.outer(k_t, k_t) / tau**2 + SIGMA**2 * np.eye(len(x_obs))
    np.fill_diagonal(c0, tau**2 + SIGMA**2)
    h = np.column_stack([np.ones(len(x_obs)), x_obs])
    c0_inv = np.linalg.inv(c0)
    u = np.array([1.0, x_t]) - h.T @ c0_inv @ k_t
    return float(tau**2 - k_t @ c0_inv @ k_t + u @ np.linalg.inv(h.T @ c0_inv @ h) @ u)


def test_design_gain_is_the_kriging_variance_drop_under_a_discrepancy(flat_prior, monkeypatch):
    # design = law + delta (decide/discrepancy.py), delta's prior sd = the run scatter; the
    # bootstrap columns are set aside (one draw) so the gain is the closed form's
    monkeypatch.setattr(design, "N_ENSEMBLE", 1)
    finished = _runs([1.0, 2.0, 3.0, 4.0])
    pool = _runs([4.5, 6.0, 30.0])
    target = _runs([8.0])
    choice = choose(finished, pool, LinearLaw(), target, costs=np.ones(3), k=3,
                    method="design", cost_power=1.0)
    logs = np.log(np.r_[finished["x"], pool["x"], target["x"]])
    scale = (logs.mean(), logs.std())
    done = list(finished["x"])
    for pick in choice.picks:  # greedy: each gain given the picks before it
        before = _kriging_variance(np.array(done), 8.0, scale, SIGMA)
        x = pool.loc[pick.index, "x"]
        after = _kriging_variance(np.array([*done, x]), 8.0, scale, SIGMA)
        assert pick.gain == pytest.approx(before - after, rel=1e-4)
        done.append(x)


def test_a_discrepancy_values_a_run_near_the_target_above_a_far_lever(flat_prior, monkeypatch):
    # two candidates of equal cost: a lever far beyond the target and a run next to it. Without
    # a discrepancy the lever lowers the target's variance more (hand: 4.61e-4 vs 5.16e-4), so
    # V-optimal takes it; with one of the run scatter's size the run next to the target does
    # (7.46e-4 vs 1.00e-3): the closed form decides, the engine must follow
    monkeypatch.setattr(design, "N_ENSEMBLE", 1)
    finished = _runs([1.0, 2.0, 3.0, 4.0, 20.0])
    pool = _runs([10.5, 100.0])
    target = _runs([10.0])
    logs = np.log(np.r_[finished["x"], pool["x"], target["x"]])
    scale = (logs.mean(), logs.std())
    after = {tau: [_kriging_variance(np.r_[finished["x"], x], 10.0, scale, tau)
                   for x in pool["x"]] for tau in (1e-6, SIGMA)}
    picks = {m: choose(finished, pool, LinearLaw(), target, costs=np.ones(2), method=m)
             .picks[0].index for m in ("vopt", "design")}
    assert picks["vopt"] == int(np.argmin(after[1e-6])) == 1
    assert picks["design"] == int(np.argmin(after[SIGMA])) == 0


def test_beyond_every_run_design_trusts_the_form(flat_prior, monkeypatch):
    # the target lies beyond every finished and candidate run: no run can correct a discrepancy
    # there, so design's gain is the law's own closed form (as V-optimal's), bootstrap set aside
    monkeypatch.setattr(design, "N_ENSEMBLE", 1)
    finished = _runs([1.0, 2.0, 3.0, 4.0])
    pool = _runs([0.5, 2.5, 6.0, 9.0])
    target = _runs([10.0, 12.0])
    choice = choose(finished, pool, LinearLaw(), target, costs=np.ones(4), method="design")
    before = _variance(finished["x"], target["x"])
    gains = {i: before - _variance(np.r_[finished["x"], x], target["x"])
             for i, x in pool["x"].items()}
    assert choice.picks[0].index == max(gains, key=gains.get)
    assert choice.picks[0].gain == pytest.approx(gains[choice.picks[0].index], rel=1e-5)


def _ls_bias2(x_runs, x_t, z_runs, z_t, tau, length=1.0):
    """Mean squared bias at x_t of the least-squares line through runs at x_runs when the truth
    is the line + delta (RBF of sd tau over standardized z): the hat weights w = X (X^T X)^-1 x_t,
    bias^2 = w^T K w - 2 w^T k + tau^2, by inversion."""
    def k(a, b):
        return tau**2 * np.exp(-0.5 * np.subtract.outer(a, b) ** 2 / length**2)
    design_matrix = np.column_stack([np.ones(len(x_runs)), x_runs])
    rows = np.column_stack([np.ones(len(x_t)), x_t])
    w = design_matrix @ np.linalg.inv(design_matrix.T @ design_matrix) @ rows.T
    k_rr, k_rt = k(z_runs, z_runs), k(z_runs, z_t)
    return float(np.mean(np.einsum("rt,rs,st->t", w, k_rr, w) - 2 * np.sum(w * k_rt, axis=0)
                         + tau**2))


def test_fit_bias_drop_is_the_least_squares_bias_by_inversion():
    # a line fitted by least squares to runs whose truth has a smooth delta: how much each
    # candidate lowers the squared bias at the target, before and after a first pick joins
    from archscale.decide.discrepancy import Discrepancy, FitBias
    x_runs, x_cand, x_t = np.array([1.0, 1.5, 2.0, 2.2]), np.array([0.2, 2.9, 3.1, 5.0]), \
        np.array([3.0, 3.3])
    z = {name: x / 2 for name, x in (("r", x_runs), ("c", x_cand), ("t", x_t))}
    tau = 0.04

    def jac(x):
        return np.column_stack([np.ones(len(x)), x])

    cov = SIGMA**2 * np.linalg.inv(jac(x_runs).T @ jac(x_runs))  # flat prior
    bias = FitBias(jac(x_runs), jac(x_cand), jac(x_t), z["r"][:, None], z["c"][:, None],
                   z["t"][:, None], cov, SIGMA**2, Discrepancy(tau))
    runs, zs = x_runs, z["r"]
    for pick in (1, None):
        before = _ls_bias2(runs, x_t, zs, z["t"], tau)
        assert bias.now() == pytest.approx(before, rel=1e-9)
        drops = [before - _ls_bias2(np.r_[runs, x], x_t, np.r_[zs, zc], z["t"], tau)
                 for x, zc in zip(x_cand, z["c"], strict=True)]
        assert bias.drop(np.ones(4, bool)) == pytest.approx(drops, rel=1e-6, abs=1e-12)
        if pick is not None:
            bias.add(pick)
            runs, zs = np.r_[runs, x_cand[pick]], np.r_[zs, z["c"][pick]]


def _p_wrong_after(mu, s2_before, s2_after):
    """P(sign of the posterior mean of d != sign of d) once a run is in, d ~ N(mu, s2_before):
    the run reveals X ~ N(0, v) of d (v = s2_before - s2_after), Y ~ N(0, s2_after) stays hidden;
    wrong iff mu + X and mu + X + Y differ in sign (two bivariate normal orthants)."""
    from scipy.stats import multivariate_normal, norm
    v = s2_before - s2_after
    if v <= 1e-12 * s2_before:  # the run reveals nothing of d
        return float(norm.cdf(-abs(mu) / np.sqrt(s2_before)))
    cov = [[v, -v], [-v, s2_before]]
    return float(multivariate_normal([-mu, mu], cov).cdf([0, 0])
                 + multivariate_normal([mu, -mu], cov).cdf([0, 0]))


def test_wrong_shape_criterion_buys_the_run_that_ranks_two_shapes(flat_prior):
    # two shapes at x = 10 and 12 (one decision) whose losses differ by d = -2 b; the fit's slope
    # is barely off zero, so the ranking is uncertain (P(wrong) = Phi(-|mu_d| / sd_d) = 0.344).
    # A cheap run at the finished runs' centre lowers the mean variance at both shapes most per
    # cost but says nothing about b (P(wrong) unchanged); a far lever pins b. Hand: P(wrong)
    # after the lever 0.0225 (bivariate normal orthants), after x = 11 0.0838 (at twice the cost)
    from scipy.stats import norm
    finished = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [2.0, 2.04, 1.98, 2.05]})
    pool = _runs([2.5, 11.0, -30.0])
    costs = np.array([0.001, 2.0, 1.0])
    target = _runs([10.0, 12.0])

    def cov(x):
        rows = np.column_stack([np.ones(len(x)), x])
        return SIGMA**2 * np.linalg.inv(rows.T @ rows)

    x_f = finished["x"].to_numpy()
    slope = np.polyfit(x_f, finished["y"], 1)[0]
    mu, c = -2 * slope, np.array([0.0, -2.0])
    s2 = c @ cov(x_f) @ c
    before = norm.cdf(-abs(mu) / np.sqrt(s2))
    drops = np.array([before - _p_wrong_after(mu, s2, c @ cov(np.r_[x_f, x]) @ c)
                      for x in pool["x"]])
    assert drops[0] == pytest.approx(0.0, abs=1e-9)
    variance_gains = np.array([_variance(x_f, target["x"]) - _variance(np.r_[x_f, x], target["x"])
                               for x in pool["x"]])
    picks = {criterion: choose(finished, pool, LinearLaw(), target, costs=costs, method="vopt",
                               cost_power=1.0, criterion=criterion, decisions=["one", "one"])
             .picks[0] for criterion in ("variance", "wrong_shape")}
    assert picks["variance"].index == pool.index[np.argmax(variance_gains / costs)] == 0
    assert picks["wrong_shape"].index == pool.index[np.argmax(drops / costs)] == 2
    assert picks["wrong_shape"].gain == pytest.approx(drops[2], abs=0.04)  # 512 draws


def test_wrong_shape_criterion_needs_the_shapes():
    finished, pool = _runs([1.0, 2.0, 3.0, 4.0]), _runs([5.0, 6.0])
    with pytest.raises(ArchscaleError, match="shapes"):
        choose(finished, pool, LinearLaw(), _runs([10.0, 12.0]), costs=np.ones(2),
               criterion="wrong_shape")


@dataclass(frozen=True)
class PartialLaw(LinearLaw):
    """The linear law, undefined (NaN) at x = 7: a row off a law's domain."""

    def predict(self, fitted, coef_SxP, rows):
        values = super().predict(fitted, coef_SxP, rows)
        return np.where(rows["x"].to_numpy(float)[None, :] == 7.0, np.nan, values)


def test_rows_off_the_laws_domain_raise_no_numpy_warnings():
    # numpy's RuntimeWarnings reached the demo's output (issue 23, defect 7): a row where the
    # law is undefined has no sensitivity and no refit spread, silently
    finished = _runs([1.0, 2.0, 3.0, 4.0, 5.0])
    pool = _runs([6.0, 7.0, 8.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = choose(finished, pool, PartialLaw(), _runs([7.0, 9.0]), costs=np.ones(3), k=2)
    assert choice.stage == "reduce" and len(choice.picks) == 2
    assert all(np.isfinite(p.gain) for p in choice.picks)

"""The shape decision scored (decide/decision.py): P(best) from whole-fit draws, regret at the
held-out scale beside the noise floor, and "cannot be told apart -> rank by throughput"."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from archscale.decide.decision import (
    decision_summary,
    heldout_decision,
    order_by_throughput,
    p_best,
    ties_with_top,
)
from archscale.laws import fit_law
from archscale.laws.chinchilla import predict as chinchilla_predict

EPOCH = np.array([477.8, 2143.9, 1.817, 0.3473, 0.3672])


def shaped_runs(noise: float, shape_effect: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """Chinchilla times a parabola in log aspect (minimum at aspect 64), five aspects per size."""
    rng = np.random.default_rng(seed)
    rows = []
    for n_params in np.geomspace(1e8, 1.6e9, 5):
        for aspect in (16.0, 32.0, 64.0, 128.0, 256.0):
            tokens = 20 * n_params
            loss = chinchilla_predict(EPOCH, np.array([n_params]), np.array([tokens]))[0][0]
            loss *= 1 + shape_effect * np.log(aspect / 64) ** 2
            rows.append({"N": n_params, "D": tokens, "aspect": aspect,
                         "loss": loss * (1 + noise * rng.normal())})
    return pd.DataFrame(rows)


def test_p_best_counts_the_draws_each_shape_wins():
    law = fit_law("chinchilla", shaped_runs(0.0, shape_effect=0.0).assign(
        D=lambda t: t["D"] * np.tile([1.0, 2.0, 4.0, 1.0, 2.0], 5)), n_boot=0)
    # four draws by hand: the N term or the D term dominates in turn
    draws = np.array([EPOCH, EPOCH, EPOCH * [1, 1, 1, 1, 0.5], EPOCH])
    law = dataclasses.replace(law, coef=EPOCH, coef_samples=draws, coef_names=law.coef_names)
    rows = pd.DataFrame({"N": [1e9, 1e7], "D": [1e9, 1e12]})
    truth = chinchilla_predict(draws, rows["N"].to_numpy(), rows["D"].to_numpy())
    expected = np.bincount(truth.argmin(axis=1), minlength=2) / 4
    assert np.allclose(p_best(law, rows), expected)
    assert expected.min() > 0  # both shapes win some draw: a real test of the counting


def test_a_law_that_ranks_right_has_no_regret_and_a_noise_floor_can_rank_nothing():
    table = shaped_runs(noise=0.0)
    law = fit_law("conditional", table, {"terms": "aspect:u_log_sq"}, n_boot=20)
    scored = heldout_decision(law, table, noise_floor=0.001)
    assert scored.n_groups == 1 and scored.regret == 0.0 and scored.spearman == 1.0
    assert scored.can_rank
    # shapes that differ by less than twice the seed noise cannot be ranked, whatever the law says
    flat = shaped_runs(noise=0.0, shape_effect=0.0005)
    flat_law = fit_law("conditional", flat, {"terms": "aspect:u_log_sq"}, n_boot=0)
    verdict = heldout_decision(flat_law, flat, noise_floor=0.01)
    assert not verdict.can_rank and "cannot rank" in verdict.reason
    summary = decision_summary(law, table, 0.001, table.tail(5))
    assert set(summary) >= {"regret", "noise_floor", "spearman", "p_best"}
    assert abs(sum(summary["p_best"]) - 1) < 1e-9


def test_ties_are_ranked_by_throughput():
    table = shaped_runs(noise=0.0)
    law = fit_law("conditional", table, {"terms": "aspect:u_log_sq"}, n_boot=0)
    rows = table.tail(5).reset_index(drop=True)  # the largest size, aspects 16 ... 256
    tied = ties_with_top(law, rows, noise_floor=0.01)
    # aspect 64 is best; 32 and 128 lie log(2)^2 * 2% = 0.96% above it, inside a 1% floor
    assert tied.tolist() == [False, True, True, True, False]
    assert order_by_throughput(tied, [5.0, 1.0, 2.0, 3.0, 9.0]) == [3, 2, 1]

"""The design's view of the decision (decide/design_study.py): each target shape's probability
of being best, against the normal CDF of a law whose prediction difference is Gaussian."""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from archscale.decide.design import PRIOR_SD, Choice
from archscale.decide.design_law import Fitted
from archscale.decide.design_study import decision_status


@dataclass(frozen=True)
class Line:
    """loss = a + b x: two coefficients, absolute residuals."""

    name: str = "line"
    target: str = "loss"
    space: str = "absolute"
    n_coef: int = 2

    def predict(self, fitted, coef_SxP, rows):
        coef = np.atleast_2d(coef_SxP)
        return coef[:, :1] + coef[:, 1:2] * rows["x"].to_numpy()[None, :]


def test_probability_of_being_best_is_the_normal_cdf_of_the_difference():
    a, b, sigma = 2.0, 0.05, 0.2
    finished = pd.DataFrame({"x": np.linspace(-1, 1, 9)})
    fitted = Fitted(coef=np.array([a, b]), sigma=sigma, problems=(), n_runs=9)
    target = pd.DataFrame({"x": [0.0, 1.0]})  # shape 0 predicts a, shape 1 a + b: 0 is better
    choice = Choice((), "reduce", math.nan, math.nan, fitted)
    status, _ = decision_status(Line(), choice, finished, target)
    # by hand: with coef = coef0 + u |coef0|, the Fisher information of u is J^T J / sigma^2
    # plus the prior; b's variance is b^2 times u_b's; P(shape 0 best) = P(b > 0)
    jac = np.column_stack([np.full(9, a), b * finished["x"]])
    cov_u = np.linalg.inv(jac.T @ jac / sigma**2 + np.eye(2) / PRIOR_SD**2)
    expected = norm.cdf(b / (b * math.sqrt(cov_u[1, 1])))
    top = status["top_shapes"]
    assert top[0]["loss"] == pytest.approx(a)
    assert top[0]["p_best"] == pytest.approx(expected, abs=0.02)  # 4000 draws: sd < 0.008
    assert top[0]["p_best"] + top[1]["p_best"] == pytest.approx(1.0)
    low, high = status["target_interval_90"]
    assert low < a < high and high - a == pytest.approx(a - low)  # absolute space: symmetric


def test_probability_of_being_best_within_a_tolerance_is_the_normal_cdf_shifted_by_it():
    """A shape within ``tolerance`` of the best counts as best: P(loss_0 <= loss_1 + m) with the
    margin m = tolerance x the top shape's loss (absolute space), so the design can settle
    between shapes too close to tell apart."""
    a, b, sigma, tolerance = 2.0, 0.05, 0.2, 0.02
    finished = pd.DataFrame({"x": np.linspace(-1, 1, 9)})
    fitted = Fitted(coef=np.array([a, b]), sigma=sigma, problems=(), n_runs=9)
    target = pd.DataFrame({"x": [0.0, 1.0]})
    choice = Choice((), "reduce", math.nan, math.nan, fitted)
    strict, _ = decision_status(Line(), choice, finished, target)
    status, _ = decision_status(Line(), choice, finished, target, tolerance)
    # by hand, as above: loss_1 - loss_0 = b (1 + u_b), so P(b (1 + u_b) >= -m)
    jac = np.column_stack([np.full(9, a), b * finished["x"]])
    cov_u = np.linalg.inv(jac.T @ jac / sigma**2 + np.eye(2) / PRIOR_SD**2)
    margin = tolerance * a
    expected = norm.cdf((b + margin) / (b * math.sqrt(cov_u[1, 1])))
    assert status["p_settled"] == pytest.approx(expected, abs=0.02)
    assert status["p_settled"] > status["top_shapes"][0]["p_best"] + 0.05
    assert strict["p_settled"] == pytest.approx(strict["top_shapes"][0]["p_best"])
    assert status["tolerance"] == tolerance

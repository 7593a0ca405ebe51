"""Accuracy law: validation loss -> accuracy by a sigmoid (Bhagia et al. 2024),

    acc = a / (1 + exp(-k (L - L0))) + b,

fitted by Levenberg-Marquardt on runs that report both (``val_accuracy`` by default, or
``task_accuracy``). Accuracy falls as loss rises, so k comes out negative.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from scipy.special import expit

from archscale.arch.errors import ArchscaleError
from archscale.laws.bootstrap import refit_each
from archscale.laws.diagnostics import Problem
from archscale.laws.kind import Estimate, LawKind
from archscale.laws.table import positive_values

TARGETS = ("val_accuracy", "task_accuracy")
COEF_NAMES = ("a", "k", "L0", "b")


def configure(options: dict[str, Any]) -> dict[str, Any]:
    target = options.get("target") or "val_accuracy"
    if target not in TARGETS:
        raise ArchscaleError(f"accuracy target {target!r}: choose one of {TARGETS}")
    return {"target": target}


def sigmoid(coef_SxP: np.ndarray, loss: np.ndarray) -> np.ndarray:
    a, k, l0, b = (c[:, None] for c in np.atleast_2d(coef_SxP).T)
    return a * expit(k * (loss[None, :] - l0)) + b


def sigmoid_jacobian(theta: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """d sigmoid / d (a, k, L0, b) at each loss, [N, 4]. Analytic: a finite-difference one costs
    4 more evaluations per step, and a refused fit's bootstrap refits run to their limit."""
    a, k, l0, _ = theta
    s = expit(k * (loss - l0))
    slope = a * s * (1.0 - s)
    return np.stack([s, slope * (loss - l0), -slope * k, np.ones_like(s)], axis=1)


def _data(config: dict[str, Any], table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    loss = positive_values(table, ["loss"], "the accuracy law")["loss"]
    target = config["target"]
    acc = positive_values(table, [target], "the accuracy law", positive=False)[target]
    return loss, acc


def _fit_weighted(loss: np.ndarray, acc: np.ndarray, weights: np.ndarray,
                  theta0: np.ndarray) -> tuple[np.ndarray, bool]:
    sqrt_w = np.sqrt(weights)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return (sigmoid(theta, loss)[0] - acc) * sqrt_w

    def jacobian(theta: np.ndarray) -> np.ndarray:
        return sigmoid_jacobian(theta, loss) * sqrt_w[:, None]

    result = least_squares(residuals, theta0, jac=jacobian, method="lm", x_scale="jac")
    return result.x, bool(result.success) and bool(np.all(np.isfinite(result.x)))


def _start(loss: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Span of the accuracies, a slope that covers the loss range, the median loss."""
    spread = max(float(np.ptp(loss)), 1e-3)
    return np.array([max(float(np.ptp(acc)), 1e-3) * 1.2, -4.0 / spread, float(np.median(loss)),
                     float(acc.min()) - 0.1 * float(np.ptp(acc))])


def fit(table: pd.DataFrame, config: dict[str, Any]) -> Estimate:
    loss, acc = _data(config, table)
    coef, ok = _fit_weighted(loss, acc, np.ones(len(loss)), _start(loss, acc))
    return Estimate(coef=coef, names=COEF_NAMES, converged=ok, config=dict(config))


def bootstrap(table: pd.DataFrame, config: dict[str, Any], estimate: Estimate,
              counts_SxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loss, acc = _data(config, table)
    return refit_each(counts_SxN, lambda w: _fit_weighted(loss, acc, w, estimate.coef))


def predict(config: dict[str, Any], coef_SxP: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    loss = positive_values(table, ["loss"], "predicting with the accuracy law")["loss"]
    return sigmoid(coef_SxP, loss)


def problems(config: dict[str, Any], coef: dict[str, float], table: pd.DataFrame) -> list[Problem]:
    """Accuracy must fall as the loss rises: its slope a k sigma'(...) must be negative. The
    sigmoid fits a rising curve as well with a < 0, k < 0 as with a > 0, k > 0, so the sign of
    a k, not of k alone, says which way it goes; a fit where it rises saw too little loss."""
    slope_sign = coef["a"] * coef["k"]
    return [Problem("wrong_sign", f"accuracy rises with loss (a k = {slope_sign:.3g}): the runs "
                    "span too little loss; add runs at other sizes")] if slope_sign >= 0 else []


KIND = LawKind(name="accuracy", configure=configure, target=lambda config: config["target"],
               n_params=lambda config: 4, min_scales=1, fit=fit, bootstrap=bootstrap,
               predict=predict, axes=("loss",), space="absolute", problems=problems,
               needs=lambda config: ("loss",), options=("target",))

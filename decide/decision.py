"""Scoring the decision users take from a loss law: which shape to train.

* ``p_best``: the probability that each candidate shape has the lowest loss, from the law's
  whole-fit bootstrap draws. Each draw is one refit predicting every shape at once, so the
  correlation across shapes is kept; the calibrated extrapolation error (laws/calibration.py)
  shifts every shape at one scale alike and leaves the ranking unchanged.
* ``heldout_decision``: at the held-out scale (the law's validation refit, fitted without it),
  the *regret* of the law's pick in every group of shapes compared fairly: the measured loss of
  the shape the law ranks first minus the best measured loss, relative to the best; beside the
  seed-to-seed noise floor, with Spearman's rank correlation and whether the data can rank the
  shapes at all.
* ``order_by_throughput``: where the top shapes cannot be told apart (within the noise floor,
  or the bootstrap often reverses them), rank them by measured throughput instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from archscale.laws.law import Law
from archscale.laws.table import collapse_duplicates, group_labels

TIE_PROBABILITY = 0.1
"""A shape ties with the top pick if it beats it in at least this fraction of bootstrap draws
(the 80% interval of their difference holds zero)."""


def p_best(law: Law, rows: pd.DataFrame) -> np.ndarray:
    """Probability that each row's shape has the lowest predicted loss, over the law's bootstrap
    draws (failed refits left out); NaN where the law has no draws."""
    if len(law.coef_samples) == 0:
        return np.full(len(rows), np.nan)
    draws = law.predict_samples(rows)
    draws = draws[np.all(np.isfinite(draws), axis=1)]
    if len(draws) == 0:
        return np.full(len(rows), np.nan)
    wins = np.bincount(np.argmin(draws, axis=1), minlength=len(rows))
    return wins / len(draws)


def ties_with_top(law: Law, rows: pd.DataFrame, noise_floor: float | None = None) -> np.ndarray:
    """Which rows cannot be told apart from the row predicted best: their predicted loss lies
    within the relative ``noise_floor`` of it, or they beat it in TIE_PROBABILITY of the draws."""
    predicted = law.predict(rows)
    top = int(np.argmin(predicted))
    tied = predicted <= predicted[top] * (1 + (noise_floor or 0.0))
    if len(law.coef_samples):
        draws = law.predict_samples(rows)
        draws = draws[np.all(np.isfinite(draws), axis=1)]
        if len(draws):
            tied |= np.mean(draws <= draws[:, [top]], axis=0) >= TIE_PROBABILITY
    return tied


def order_by_throughput(tied: np.ndarray, throughput: Sequence[float]) -> list[int]:
    """Indices of the tied rows, fastest first (measured throughput is what users came for)."""
    indices = np.flatnonzero(tied)
    return [int(i) for i in indices[np.argsort(-np.asarray(throughput, float)[indices],
                                               kind="stable")]]


@dataclass(frozen=True)
class Decision:
    """How well the law's ranking of shapes held at the held-out scale."""

    regret: float | None
    """Mean over groups of (measured loss of the law's pick - best measured) / best measured."""
    regret_max: float | None
    """The worst group's regret."""
    noise_floor: float | None
    """Seed-to-seed scatter of the loss (relative): a regret below it is no measured loss."""
    spearman: float | None
    """Mean Spearman correlation of predicted and measured loss within the groups."""
    n_groups: int
    """Groups of 3+ shapes compared at the held-out scale."""
    can_rank: bool
    """Whether the data rank the shapes: groups exist, the measured spread exceeds the noise
    floor and the law's ranking agrees with measurement (Spearman > 0)."""
    reason: str
    """One line: why the data can or cannot rank the shapes."""

    def to_dict(self) -> dict[str, Any]:
        return {"regret": self.regret, "regret_max": self.regret_max,
                "noise_floor": self.noise_floor, "spearman": self.spearman,
                "n_groups": self.n_groups, "can_rank": self.can_rank, "reason": self.reason}


def heldout_decision(law: Law, table: pd.DataFrame, noise_floor: float | None,
                     min_group: int = 3) -> Decision:
    """Regret and rank agreement of ``law``'s held-out refit, on the fitted ``table``."""
    held = (law.validation.get("heldout") or {}).get("rows")
    floor = None if noise_floor is None or noise_floor != noise_floor else float(noise_floor)
    if not held:
        return Decision(None, None, floor, None, 0, False,
                        "no held-out scale was predicted (the fit has a single scale)")
    fitted, _ = collapse_duplicates(table.reset_index(drop=True))  # as fit_law indexes it
    groups = group_labels(fitted.iloc[held["index"]])
    predicted, measured = np.asarray(held["predicted"]), np.asarray(held["measured"])
    regrets, rhos, spreads = [], [], []
    for group in dict.fromkeys(groups):
        members = groups == group
        if members.sum() < min_group:
            continue
        best = measured[members].min()
        regrets.append(measured[members][np.argmin(predicted[members])] / best - 1)
        spreads.append(np.ptp(measured[members]) / best)
        if np.ptp(predicted[members]) > 0 and np.ptp(measured[members]) > 0:
            rhos.append(float(spearmanr(predicted[members], measured[members]).statistic))
    if not regrets:
        return Decision(None, None, floor, None, 0, False,
                        f"no group of {min_group}+ shapes at the held-out scale: the runs cannot "
                        "rank shapes")
    spearman = float(np.mean(rhos)) if rhos else None
    regret, worst = float(np.mean(regrets)), float(np.max(regrets))
    if floor is not None and max(spreads) <= 2 * floor:
        can_rank, reason = False, (
            f"the shapes' measured losses differ by at most {max(spreads):.2%}, within twice the "
            f"noise floor {floor:.2%}: the data cannot rank them; choose by throughput")
    elif spearman is None or spearman <= 0:
        can_rank, reason = False, (
            f"the law's ranking does not agree with measurement at the held-out scale (Spearman "
            f"{'n/a' if spearman is None else f'{spearman:.2f}'}): it cannot rank shapes; "
            "choose by throughput")
    else:
        can_rank, reason = True, (
            f"the law's pick lost {regret:.2%} on average (worst {worst:.2%}) against the best "
            "measured shape" + ("" if floor is None else f", noise floor {floor:.2%}"))
    return Decision(regret, worst, floor, spearman, len(regrets), can_rank, reason)


def decision_summary(law: Law, table: pd.DataFrame, noise_floor: float | None,
                     candidates: pd.DataFrame) -> dict[str, Any]:
    """summary.json's ``decision``: the held-out scale's regret, noise floor and Spearman, the
    probability each candidate (a row of ``candidates``) is best, and whether the data rank."""
    scored = heldout_decision(law, table, noise_floor)
    chances = p_best(law, candidates)
    return {**scored.to_dict(),
            "p_best": [None if p != p else float(p) for p in chances]}


def decision_markdown(decision: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The report's lines on the decision (decide/report.py): a ranking only where it holds."""
    lines = ["## Is the shape decision checked?", ""]
    p = ", ".join(f"{name} {value:.0%}" for name, value in zip(names, decision["p_best"],
                                                              strict=True) if value is not None)
    if not decision["can_rank"]:
        lines += [f"**The data cannot rank shapes**: {decision['reason']}. The shapes above meet "
                  "the loss target; among them, take the fastest by measured throughput.", ""]
    else:
        lines += [f"At the held-out scale {decision['reason']}; Spearman within groups "
                  f"{decision['spearman']:.2f}.", ""]
    if p:
        lines += [f"Probability each recommended shape has the lowest loss (bootstrap draws of "
                  f"the whole fit): {p}.", ""]
    return lines

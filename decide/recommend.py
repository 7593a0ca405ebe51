"""Recommend shapes at a target scale from fitted laws (Bian et al. 2026, Algorithm 1, and more).

1. Over (d_model, r) at the target N, D and a base GQA group: maximise predicted decode throughput
   subject to predicted loss <= target, over every d_model multiple in the width range and a
   dense log grid of r (the laws are cheap).
2. Local search over GQA for each of the best shapes: walk n_kv_heads down through the divisors of
   n_heads (the freed K/V parameters moved into the MLP, so N stays put), stopping once the
   throughput gain ends, the loss constraint breaks or ``min_kv_heads`` is reached.
3. Also the loss-optimal shape (the paper's "Panda") and the Pareto set of (loss, throughput).

Every reported loss is the law's prediction for the exact integer shape, at its own N. Integer
rounding moves N by up to ``max_params_error`` and, near the optimum, that moves the Chinchilla
part of the loss more than the shape terms do; so the loss-optimal shape is chosen at equal N
(the law evaluated at the target N with each shape's own d/sqrt(N), r, GQA group), and reported
with its own prediction.

The target loss is absolute (``target_loss``) or a relative increase over the loss-optimal shape's
prediction (``max_loss_increase``). Every number says how it was obtained, and predictions beyond
the trained scales carry their extrapolation factors (target / largest trained N and D).

Each reported loss carries two intervals: the bootstrap interval of the law's mean
(``loss_low``/``loss_high``, at ``level``) and the 90% prediction interval, where a run of that
shape will land (``loss_interval_90``; laws/intervals.py), the one the table prints. With an
accuracy law, each shape also gets the accuracy at its predicted loss, whose 90% interval spans
the accuracy law's prediction intervals at the loss interval's ends and at the point (accuracy
is monotone in loss). With ``measure``, the recommended shapes, the loss-optimal shape and the
baseline are built at the target size with random weights and timed, interleaved: measured
decode tokens/s rank the recommended shapes, and the throughput model serves only shapes that
do not fit in memory, with its error on the measured shapes stated (``throughput_check``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

import archscale
from archscale.arch.errors import SettingError
from archscale.arch.spec import ArchSpec
from archscale.decide.options import SERVING
from archscale.decide.recommendation import (
    PREDICTION_LEVEL,
    Recommendation,
    Scored,
    save_recommendation,
)
from archscale.decide.space import SearchSpace
from archscale.decide.throughput_models import (
    MeasureSettings,
    ThroughputModel,
    check_methods,
    check_notes,
    check_throughput,
)
from archscale.laws import Law, spec_table
from archscale.laws.levels import LEVELS
from archscale.search.table import pareto_indices

__all__ = ["Recommendation", "Scored", "SearchSpace", "accuracy_at", "gqa_local_search",
           "pareto_front", "recommend", "save_recommendation", "score"]


def score(specs: list[ArchSpec], law: Law, throughput: ThroughputModel, tokens: float,
          batch: int, context: int, level: float = LEVELS.mean, origin: str = "grid"
          ) -> list[Scored]:
    """Predicted loss (with the interval of the law's mean at ``level`` and the 90% prediction
    interval) and decode throughput of each shape."""
    table = spec_table(specs, tokens)
    loss = np.asarray(law.predict(table), dtype=float)
    missing = np.full(len(specs), np.nan)
    if len(law.coef_samples):
        low, high = (np.asarray(a, dtype=float) for a in law.mean_interval(table, level))
    else:
        low = high = missing
    if law.error_model is not None:
        lower, upper = (np.asarray(a, dtype=float)
                        for a in law.prediction_interval(table, PREDICTION_LEVEL))
    else:
        lower = upper = missing
    speed = throughput.decode_tokens_per_s(specs, batch, context)
    return [Scored(s, float(l_), float(lo_), float(hi_), float(v), origin,
                   loss_interval_90=(float(a), float(b)))
            for s, l_, lo_, hi_, v, a, b in zip(specs, loss, low, high, speed, lower, upper,
                                                strict=True)]


def accuracy_at(scored: list[Scored], accuracy_law: Law) -> list[Scored]:
    """Each shape with the accuracy law at its predicted loss, and a 90% accuracy interval
    that takes in the loss's uncertainty: the extremes of the accuracy law's prediction
    intervals at the loss interval's two ends and at the point (accuracy is monotone in loss),
    clipped to [0, 1]. The loss interval is the prediction interval, else the interval of the
    law's mean, else the point; the accuracy law's is its prediction interval, else the
    interval of its mean, else none."""
    if not scored:
        return []
    point = np.array([s.loss for s in scored])
    ends = []
    for s in scored:
        pair = s.loss_interval_90
        if not all(math.isfinite(v) for v in pair):
            pair = (s.loss_low, s.loss_high)
        ends.append(pair if all(math.isfinite(v) for v in pair) else (s.loss, s.loss))
    losses = np.concatenate([point, np.array(ends).T.ravel()])  # point, lows, highs
    rows = pd.DataFrame({"loss": losses})
    if accuracy_law.error_model is not None:
        lower, upper = accuracy_law.prediction_interval(rows, PREDICTION_LEVEL)
    elif len(accuracy_law.coef_samples):
        lower, upper = accuracy_law.mean_interval(rows, PREDICTION_LEVEL)
    else:
        lower = upper = accuracy_law.predict(rows)
    n = len(scored)
    accuracy = np.asarray(accuracy_law.predict(rows[:n]), dtype=float)
    low = np.clip(np.asarray(lower, dtype=float).reshape(3, n).min(axis=0), 0, 1)
    high = np.clip(np.asarray(upper, dtype=float).reshape(3, n).max(axis=0), 0, 1)
    return [dataclasses.replace(s, predicted_accuracy=float(a), accuracy_interval_90=(lo, hi))
            for s, a, lo, hi in zip(scored, accuracy, low.tolist(), high.tolist(), strict=True)]


def pareto_front(scored: list[Scored]) -> list[Scored]:
    """Shapes no other shape beats on both loss (lower) and throughput (higher), by loss."""
    keep = pareto_indices([s.loss for s in scored], [s.decode_tokens_per_s for s in scored])
    return [scored[i] for i in keep]


def gqa_local_search(start: Scored, law: Law, throughput: ThroughputModel, space: SearchSpace,
                     batch: int, context: int, target_loss: float, level: float,
                     min_gain: float = 0.01, min_kv_heads: int = 1) -> list[Scored]:
    """Walk n_kv_heads down the divisors of n_heads from ``start``; the path taken, start first.

    Each step keeps d_model, depth and heads and moves the freed K/V parameters into the MLP
    (``SearchSpace.regroup``), so N stays put. The walk stops before ``min_kv_heads``, at the
    first step whose loss breaks the target, or whose throughput gain over the previous step is
    below ``min_gain``.
    """
    path = [start]
    n_heads = start.spec.n_heads
    for kv in range(start.spec.n_kv_heads - 1, max(min_kv_heads, 1) - 1, -1):
        if n_heads % kv:
            continue
        spec = space.regroup(start.spec, kv)
        if spec is None:
            continue
        (step,) = score([spec], law, throughput, space.tokens, batch, context, level,
                        origin=f"GQA search from n_kv_heads={start.spec.n_kv_heads}")
        if step.loss > target_loss:
            break
        if step.decode_tokens_per_s < path[-1].decode_tokens_per_s * (1 + min_gain):
            break
        path.append(step)
    return path


def _extrapolation(provenance: Mapping[str, Any], targets: Mapping[str, float]) -> dict[str, Any]:
    """Target / largest trained value of N and/or D (None where the law lacks the range)."""
    out: dict[str, Any] = {}
    for key, target in targets.items():
        trained = provenance.get(f"{key.lower()}_range")
        out[key] = None if not trained else {
            "target": float(target), "trained_min": trained[0], "trained_max": trained[1],
            "factor": float(target) / trained[1]}
    return out


def _law_features(law: Law) -> set[str]:
    if law.kind != "conditional":
        raise SettingError(f"{{law}} holds a {law.kind} law, which cannot tell shapes apart: "
                           "recommend needs a conditional law (`archscale fit --law conditional`)")
    return {t["feature"] for t in law.config["terms"]}


def _notes(law: Law, throughput: ThroughputModel, extrapolation: dict[str, Any],
           min_kv_heads: int, level: float, accuracy_law: Law | None) -> list[str]:
    notes = [f"loss law: {n}" for n in law.notes if "NOT CONVERGED" in n or "bootstrap" in n]
    notes += [f"loss law not identified ({p.code}): {p.message}" for p in law.problems]
    if "gqa_group" not in _law_features(law):
        notes.append(f"the loss law has no gqa_group term, so the GQA search sees no loss cost "
                     "of sharing KV heads (only the r shift of moving their parameters into the "
                     "MLP): it stops when throughput gains end, the target breaks, or at "
                     f"--min-kv-heads {min_kv_heads}")
    if not len(law.coef_samples):
        notes.append("the loss law has no bootstrap samples: no interval of its mean (refit "
                     "with --n-boot)")
    if law.error_model is None:
        notes.append(f"the loss law has no prediction-interval calibration (fitted by an older "
                     f"archscale): no {PREDICTION_LEVEL:.0%} prediction interval, so the table "
                     f"shows the {level:.0%} interval of the law's mean, which leaves out run "
                     "scatter and extrapolation error; refit it with `archscale fit`")
    if accuracy_law is not None:
        notes += [f"accuracy law not identified ({p.code}): {p.message}"
                  for p in accuracy_law.problems]
        if accuracy_law.error_model is None:
            notes.append("the accuracy law has no prediction-interval calibration (fitted by an "
                         "older archscale): its accuracy intervals hold the interval of its "
                         "mean only; refit it with `archscale fit --law accuracy`")
    for which, ext in extrapolation.items():
        for key, value in ext.items():
            if value is None:
                notes.append(f"{which}: the law file does not record its trained {key} range "
                             "(fitted by an older archscale): refit it to label extrapolation")
            elif value["factor"] > 1:
                notes.append(f"{which}: extrapolating {value['factor']:.3g}x beyond the largest "
                             f"trained {key} ({value['trained_max']:.3g})")
    if throughput.fitted_on is None:
        notes.append(f"throughput is a {throughput.description}")
    return notes


def _prediction_method(law: Law) -> str:
    model = law.error_model
    if model is None:
        return "not available: the law has no error model (fitted by an older archscale)"
    if model.growth is None:
        spread = (f"run scatter {model.sigma_run:.3g} and the bootstrap interval of the law's "
                  "mean added in quadrature (how the error grows with extrapolation is not "
                  "calibrated: the law was fitted without progressive held-out fits)")
    else:
        spread = (f"sigma^2 = run scatter {model.sigma_run:.3g}^2 + ({model.growth:.3g} x log "
                  f"units beyond the fitted {', '.join(model.ranges)})^2, the growth calibrated "
                  f"on {model.n_heldout} progressive held-out predictions")
    return (f"{PREDICTION_LEVEL:.0%} prediction interval, where a run of this shape lands "
            f"({model.method}; laws/intervals.py): the prediction x exp(+-z sigma) with {spread}")


def _methods(law: Law, throughput: ThroughputModel, tokens: float, batch: int, context: int,
             level: float, dtype: str, accuracy_law: Law | None) -> dict[str, str]:
    terms = ", ".join(f"{t['feature']}:{t['form']}" for t in law.config["terms"])
    methods = {
        "predicted_loss": f"conditional law ({law.config['combine']}, L_opt {law.config['lopt']}, "
                          f"terms {terms}) at this shape's N and D={tokens:.4g}",
        "loss_interval_90": _prediction_method(law),
        "loss_mean_interval": f"{level:.0%} percentile interval of the predictions of "
                              f"{law.bootstrap.get('n', 0)} bootstrap refits (uncertainty of the "
                              "law's mean; not where a run lands)",
        "predicted_decode_tokens_per_s": f"{throughput.description}, at batch {batch} and "
                                         f"context {context}",
        "kv_cache_bytes": f"exact: 2 x n_layers x n_kv_heads x head_dim x bytes of {dtype} x "
                          f"batch {batch} x context {context}",
        "params": "exact count of the shape (N = non-embedding; arch/spec.py conventions)",
    }
    if accuracy_law is not None:
        how = ("prediction interval" if accuracy_law.error_model is not None
               else "interval of the mean" if len(accuracy_law.coef_samples) else "point")
        methods["predicted_accuracy"] = (f"accuracy law (sigmoid of loss -> "
                                         f"{accuracy_law.target}) at the predicted loss")
        methods["accuracy_interval_90"] = (
            f"lowest and highest ends of the accuracy law's {PREDICTION_LEVEL:.0%} {how} at the "
            f"loss's {PREDICTION_LEVEL:.0%} prediction interval ends and at the predicted loss "
            "(accuracy is monotone in loss), clipped to [0, 1]")
    return methods


def recommend(law: Law, space: SearchSpace, throughput: ThroughputModel, *,
              target_loss: float | None = None, max_loss_increase: float | None = None,
              top: int = 5, batch: int = SERVING.batch, context: int = SERVING.context,
              level: float = LEVELS.mean,
              baseline: ArchSpec | None = None, min_kv_heads: int = 1, min_gain: float = 0.01,
              accuracy_law: Law | None = None, measure: MeasureSettings | bool | None = None,
              provenance: Mapping[str, Any] | None = None) -> Recommendation:
    """Algorithm 1 over the fitted laws; see the module docstring.

    ``accuracy_law`` (kind accuracy) adds each shape's predicted accuracy and its interval;
    ``measure`` (True or the settings) times the finalists at the target size.
    """
    _law_features(law)
    if accuracy_law is not None and accuracy_law.kind != "accuracy":
        raise SettingError(f"{{accuracy_law}} holds a {accuracy_law.kind} law: give an accuracy "
                           "law (`archscale fit --law accuracy`)")
    settings = MeasureSettings() if measure is True else (measure or None)
    if (target_loss is None) == (max_loss_increase is None):
        raise SettingError("give exactly one of {target_loss} or {max_loss_increase}")
    if max_loss_increase is not None and not 0 <= max_loss_increase < 1:
        raise SettingError(f"{{max_loss_increase}} {max_loss_increase} must be a fraction in "
                           "[0, 1), e.g. 0.005 or 0.5%")
    if top < 1 or batch < 1 or context < 1 or min_kv_heads < 1 or not 0 < level < 1:
        raise SettingError(f"{{top}} {top}, {{batch}} {batch}, {{context}} {context} and "
                           f"{{min_kv_heads}} {min_kv_heads} must be >= 1 and {{level}} {level} "
                           "in (0, 1)")
    candidates = space.candidates()
    scored = score(candidates, law, throughput, space.tokens, batch, context, level)
    at_budget = law.predict(spec_table(candidates, space.tokens).assign(N=space.params))
    loss_optimal = scored[int(np.argmin(at_budget))]
    if target_loss is None:
        target_loss = loss_optimal.loss * (1 + max_loss_increase)
        how = f"loss-optimal shape's prediction x (1 + {max_loss_increase:g})"
    else:
        how = "given (--target-loss)"
    feasible = sorted((s for s in scored if s.loss <= target_loss),
                      key=lambda s: -s.decode_tokens_per_s)
    if not feasible:
        best = min(s.loss for s in scored)
        raise SettingError(f"no shape reaches the target loss {target_loss:.4f}: the best "
                           f"predicted is {best:.4f}; raise {{target_loss}} or {{tokens}}")
    if loss_optimal.loss <= target_loss:
        # A shape slower than the loss-optimal one is dominated by it: never recommend it.
        feasible = [s for s in feasible
                    if s.decode_tokens_per_s >= loss_optimal.decode_tokens_per_s]
    recommended: dict[ArchSpec, Scored] = {}
    visited = list(scored)
    for start in feasible:
        if len(recommended) >= top:
            break
        path = gqa_local_search(start, law, throughput, space, batch, context, target_loss,
                                level, min_gain, min_kv_heads)
        visited += path[1:]
        recommended.setdefault(path[-1].spec, path[-1])
    ranked = sorted(recommended.values(), key=lambda s: -s.decode_tokens_per_s)[:top]
    base = None
    if baseline is not None:
        (base,) = score([baseline], law, throughput, space.tokens, batch, context, level,
                        origin="baseline")
    pareto = pareto_front(visited)
    extrapolation = {"loss_law": _extrapolation(law.provenance, {"N": space.params,
                                                                 "D": space.tokens})}
    if throughput.fitted_on is not None:  # a throughput law does not depend on D
        extrapolation["throughput_law"] = _extrapolation(throughput.fitted_on,
                                                         {"N": space.params})
    dtype = throughput.dtype
    notes = _notes(law, throughput, extrapolation, min_kv_heads, level, accuracy_law)
    methods = _methods(law, throughput, space.tokens, batch, context, level, dtype, accuracy_law)
    if accuracy_law is not None:
        shapes = [*ranked, loss_optimal, *pareto, *([base] if base is not None else [])]
        done = dict(zip((id(s) for s in shapes), accuracy_at(shapes, accuracy_law), strict=True))
        ranked, loss_optimal, pareto = ([done[id(s)] for s in ranked], done[id(loss_optimal)],
                                        [done[id(s)] for s in pareto])
        base = None if base is None else done[id(base)]
    check = None
    if settings is not None:
        finalists = [*ranked, loss_optimal, *([base] if base is not None else [])]
        measured, check = check_throughput(
            [s.spec for s in finalists], [s.decode_tokens_per_s for s in finalists],
            [s.origin for s in finalists], throughput, batch, context, settings)

        def add(s: Scored) -> Scored:
            value = measured.get(s.spec)
            return s if value is None else dataclasses.replace(s, measured_decode_tokens_per_s=value)

        ranked, loss_optimal, pareto = ([add(s) for s in ranked], add(loss_optimal),
                                        [add(s) for s in pareto])
        base = None if base is None else add(base)
        pool = {s.spec: s for s in ranked}
        if loss_optimal.loss <= target_loss:  # it competes on measured speed too
            pool.setdefault(loss_optimal.spec, loss_optimal)
        ranked = sorted(pool.values(), key=lambda s: -s.throughput)[:top]
        notes += check_notes(check, throughput)
        methods.update(check_methods(check))
    return Recommendation(
        recommended=ranked, loss_optimal=loss_optimal, pareto=pareto,
        baseline=base, target_loss=float(target_loss), batch=batch, context=context, dtype=dtype,
        extrapolation=extrapolation, methods=methods, notes=tuple(notes), throughput_check=check,
        provenance={
            "archscale_version": archscale.__version__,
            "target_loss": {"value": float(target_loss), "how": how},
            "loss_law": {"kind": law.kind, "form": law.config, "provenance": law.provenance,
                         "version": law.version, "converged": law.converged},
            **({} if accuracy_law is None else {"accuracy_law": {
                "kind": accuracy_law.kind, "form": accuracy_law.config,
                "provenance": accuracy_law.provenance, "version": accuracy_law.version,
                "converged": accuracy_law.converged}}),
            "throughput": throughput.description,
            "search": {**space.to_dict(), "min_kv_heads": min_kv_heads, "min_gain": min_gain,
                       "top": top, "candidates": len(scored), "interval_level": level,
                       "measure": None if settings is None else settings.to_dict()},
            **dict(provenance or {})})

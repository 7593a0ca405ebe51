"""Can sampling substitute for parameters? The cheapest (shape, k) for a target pass@k.

At each candidate size N the shape is the one ``recommend`` picks from the conditional loss law
(the fastest decoder within ``max_loss_increase`` of the loss-optimal shape's loss, trained on
``tokens_per_param`` x N tokens); the pass@k law (laws/passk.py) predicts its pass@k for every k,
with 90% prediction intervals: from N and D, or, for a law of the loss, from the loss the loss
law predicts for that shape, whose own interval widens the pass@k interval (in quadrature). A
request is answered by k samples and passes when one of them does (a verifier picks it), so
pass@k is the request's pass rate.

Cost (Sardana et al. 2024): total = training FLOPs + R x (the prompt's prefill + k x one sample's
generation). FLOPs follow arch/spec.py: D x ``train_flops_per_token`` to train,
``prefill_cost`` for the prompt and ``inference_flops_per_token`` (with the output projection)
for each further decode step of a sample (``Demand.flops``). The prompt is prefilled once per request (a server forks its KV cache for the k
samples). Beside it: the generation's device-seconds, R k G / decode tokens/s, from the
throughput that ``recommend`` reports (measured at the target size where it was timed, else the
throughput law or the roofline).

For the target X each shape needs the least k whose predicted pass@k reaches X (the 90% interval
bounds it between the least k its upper end reaches X at and the least its lower end does); the
cheapest of these is the answer. Substitution stops where pass@1 is too low for any k up to
``max_k`` to reach X (Snell et al. 2024; Wu et al. 2024): the floor is found by bisection in log N
between the two candidates that bracket it, their table rows interpolated geometrically.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from archscale.arch.errors import SettingError
from archscale.arch.spec import ArchSpec
from archscale.decide.options import SERVING, MeasureSettings
from archscale.decide.recommend import Recommendation, Scored, SearchSpace, recommend
from archscale.decide.throughput_models import ThroughputModel
from archscale.laws import Law, spec_table
from archscale.laws.intervals import DEFAULT_LEVEL, SPACES, to_space
from archscale.laws.passk import COVARIATES
from archscale.search.attrs import RESULT_ATTR
from archscale.search.table import trial_row

PASSK_COLUMNS = ("k", "pass_at_k", "majority_vote", "prompt_tokens", "mean_completion_tokens",
                 "passk_seconds", "tokens_generated")
"""Columns ``passk_table`` adds to the run table's (one row per run and k)."""


def passk_results(study: optuna.Study) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """Every COMPLETE trial that measured pass@k, by trial number: (its run-table row, its
    ``RunResult.passk``: per-problem pass counts, pass@k, settings and cost). A run whose
    sampling failed after training (``{"error": ...}``) has no pass@k and is not listed."""
    out = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run = trial_row(trial, study.study_name)
        passk = trial.user_attrs[RESULT_ATTR].get("passk") if run else None
        if passk is not None and "error" not in passk:
            out[trial.number] = (run, passk)
    return out


def passk_table(study: optuna.Study) -> pd.DataFrame:
    """The COMPLETE trials that measured pass@k, one row per (run, k) (``passk_rows``)."""
    return passk_rows(passk_results(study))


def passk_rows(results: Mapping[int, tuple[dict[str, Any], dict[str, Any]]]) -> pd.DataFrame:
    """``passk_results``, one row per (run, k): the run table's columns (search/table.py) plus
    PASSK_COLUMNS. Runs that solved no problem (pass@k = 0 at every k: below what their samples
    resolve) are left out and counted in ``attrs["unsolved_runs"]``."""
    rows, unsolved = [], 0
    for run, passk in results.values():
        if not any(passk["correct"]):
            unsolved += 1
            continue
        for k, value in zip(passk["k"], passk["pass_at_k"], strict=True):
            rows.append({**run, "k": k, "pass_at_k": value,
                         "majority_vote": passk["majority_vote"],
                         "prompt_tokens": passk["prompt_tokens"],
                         "mean_completion_tokens": passk["mean_completion_tokens"],
                         "passk_seconds": passk["seconds"],
                         "tokens_generated": passk["tokens_generated"]})
    table = pd.DataFrame(rows)
    table.attrs["unsolved_runs"] = unsolved
    return table


@dataclass(frozen=True)
class Demand:
    """What serving costs: R requests, each a prompt and k sampled completions."""

    requests: float
    """R, requests over the model's life."""
    prompt_tokens: int
    """Tokens of a request's prompt (prefilled once per request)."""
    sample_tokens: float
    """Tokens generated per sample (up to and with its stop token)."""

    def __post_init__(self) -> None:
        if not (self.requests > 0 and self.prompt_tokens >= 1 and self.sample_tokens > 0):
            raise SettingError(f"{{requests}} {self.requests:g}, {{prompt_tokens}} "
                               f"{self.prompt_tokens} and {{sample_tokens}} "
                               f"{self.sample_tokens:g} must be positive")

    def flops(self, spec: ArchSpec) -> tuple[float, float]:
        """(prefill FLOPs of one prompt, FLOPs of generating one sample after it).

        The prefill is ``ArchSpec.prefill_cost``'s, the one rule measurement and rooflines use:
        it ends in the output projection whose logits every sample draws its first token from.
        A sample of G tokens then takes G - 1 decode steps, the step at cached context t
        costing ``inference_flops_per_token(t)`` with the output projection."""
        prefill = spec.prefill_cost(1, self.prompt_tokens)[0]
        end = self.prompt_tokens + max(1, round(self.sample_tokens))
        generate = sum(spec.inference_flops_per_token(t, include_lm_head=True)
                       for t in range(self.prompt_tokens + 1, end))
        return float(prefill), float(generate)

    def cost(self, spec: ArchSpec, tokens: float, k: int) -> tuple[float, float]:
        """(training FLOPs on ``tokens``, FLOPs of serving every request with k samples)."""
        prefill, generate = self.flops(spec)
        return tokens * spec.train_flops_per_token(), self.requests * (prefill + k * generate)


@dataclass(frozen=True)
class Point:
    """One shape answering every request with k samples."""

    shape: int
    """Index of the shape in ``Substitution.recommendations``."""
    k: int
    """Samples per request."""
    pass_at_k: float
    """Predicted pass@k."""
    interval_90: tuple[float, float]
    """90% prediction interval of pass@k (clipped to [0, 1])."""
    k_range: tuple[int | None, int | None]
    """Least k whose interval's upper end, and lower end, reach the target (None: no k <=
    max_k does)."""
    train_flops: float
    """Training FLOPs of the shape on its tokens."""
    inference_flops: float
    """R x (prefill + k x generation) FLOPs."""
    inference_seconds: float
    """R x k x sample tokens / decode tokens/s: device-seconds of generation."""

    @property
    def total_flops(self) -> float:
        return self.train_flops + self.inference_flops


@dataclass(frozen=True)
class Substitution:
    """The shapes, their predicted pass@k at every k, and the points that reach the target."""

    target_pass: float
    """X: the pass rate a request must reach."""
    demand: Demand
    """Requests and tokens per request."""
    ks: tuple[int, ...]
    """k = 1..max_k."""
    recommendations: list[Recommendation]
    """``recommend``'s answer at each candidate N (its first shape is the candidate)."""
    tokens: list[float]
    """Training tokens of each candidate."""
    pass_SxK: np.ndarray
    """Predicted pass@k of each shape (rows) at each k (columns)."""
    low_SxK: np.ndarray
    """Lower ends of the 90% prediction intervals."""
    high_SxK: np.ndarray
    """Upper ends."""
    points: list[Point]
    """Each shape that reaches the target, at the least k that does, by N."""
    floor: dict[str, Any]
    """Where substitution stops: the pass@1 below which no k <= max_k reaches the target."""
    notes: tuple[str, ...] = ()
    """What the user must know to read the numbers."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Laws, settings and versions behind the numbers."""

    @property
    def specs(self) -> list[ArchSpec]:
        return [rec.recommended[0].spec for rec in self.recommendations]

    @property
    def cheapest(self) -> Point | None:
        return min(self.points, key=lambda p: p.total_flops, default=None)

    def point_dict(self, point: Point) -> dict[str, Any]:
        spec, scored = self.specs[point.shape], self.recommendations[point.shape].recommended[0]
        return {"params": spec.params_nonembed, "params_total": spec.params_total,
                "tokens": self.tokens[point.shape], "spec": spec.to_dict(), "k": point.k,
                "predicted_pass_at_k": point.pass_at_k, "interval_90": list(point.interval_90),
                "k_range_90": list(point.k_range), "predicted_loss": scored.loss,
                "decode_tokens_per_s": scored.throughput,
                "decode_tokens_per_s_basis": ("measured" if scored.measured_decode_tokens_per_s
                                              is not None else "predicted"),
                "train_flops": point.train_flops, "inference_flops": point.inference_flops,
                "total_cost_flops": point.total_flops,
                "inference_device_seconds": point.inference_seconds,
                "cheapest": point is self.cheapest}

    def summary(self) -> list[dict[str, Any]]:
        """The frontier as summary.json lists it."""
        keys = ("params", "k", "predicted_pass_at_k", "interval_90", "total_cost_flops")
        return [{k: self.point_dict(p)[k] for k in keys} for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_pass": self.target_pass, "demand": dataclasses.asdict(self.demand),
            "points": [self.point_dict(p) for p in self.points],
            "cheapest": None if self.cheapest is None else self.point_dict(self.cheapest),
            "floor": self.floor,
            "shapes": [{"params": s.params_nonembed, "tokens": t, "spec": s.to_dict(),
                        "pass_at_k": {str(k): [float(m), float(lo), float(hi)] for k, m, lo, hi
                                      in zip(self.ks, pm, pl, ph, strict=True)}}
                       for s, t, pm, pl, ph in zip(self.specs, self.tokens, self.pass_SxK,
                                                   self.low_SxK, self.high_SxK, strict=True)],
            "notes": list(self.notes), "provenance": self.provenance,
        }


def _rows(scored: Sequence[Scored], tokens: Sequence[float], ks: Sequence[int]
          ) -> pd.DataFrame:
    """The pass@k law's input rows, shape-major: every shape's table features and predicted
    loss (with its 90% interval, ``loss_low`` and ``loss_high``) at every k."""
    table = spec_table([s.spec for s in scored], list(tokens)).assign(
        loss=[s.loss for s in scored], loss_low=[s.loss_interval_90[0] for s in scored],
        loss_high=[s.loss_interval_90[1] for s in scored])
    return table.loc[table.index.repeat(len(ks))].assign(k=np.tile(ks, len(scored))
                                                         ).reset_index(drop=True)


def predict_pass(law: Law, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted pass@k and its 90% prediction interval, clipped to [0, 1]. A law of the loss
    reads the predicted loss, whose own 90% interval (``loss_low``, ``loss_high``) shifts the
    prediction; the shift and the pass@k law's half-width are independent errors, added in
    quadrature in the law's space (laws/intervals.py; pass@k falls as the loss rises, so the
    loss's high end widens the lower side)."""
    predicted = np.asarray(law.predict(rows))
    low, high = law.prediction_interval(rows, DEFAULT_LEVEL)
    if "loss" in COVARIATES[law.config["covariate"]]:
        space = law.error_model.space
        centre = to_space(predicted, space)
        below, above = centre - to_space(low, space), to_space(high, space) - centre
        shifts = {}
        for end in ("loss_low", "loss_high"):
            known = np.isfinite(rows[end].to_numpy(dtype=float))
            at_end = law.predict(rows.assign(loss=rows[end].where(known, rows["loss"])))
            shifts[end] = np.abs(to_space(at_end, space) - centre)
        inverse = SPACES[space][1]
        low = inverse(centre - np.hypot(below, shifts["loss_high"]))
        high = inverse(centre + np.hypot(above, shifts["loss_low"]))
    return predicted, np.clip(low, 0, 1), np.clip(high, 0, 1)


def least_k(values_K: np.ndarray, ks: Sequence[int], target: float) -> int | None:
    reached = np.flatnonzero(values_K >= target)
    return int(ks[reached[0]]) if reached.size else None


def _floor(law: Law, rows: pd.DataFrame, reach: Sequence[int | None], ks: Sequence[int],
           target: float, pass_1: np.ndarray) -> dict[str, Any]:
    """The pass@1 below which no k <= max_k reaches the target, by bisection in log N between
    the largest candidate that fails and the next larger one (which reaches it)."""
    max_k = ks[-1]
    fails = [i for i, k in enumerate(reach) if k is None]
    if not fails:
        return {"found": False, "reason": f"every candidate reaches the target with k <= {max_k}"
                f": the floor lies below the smallest (pass@1 {pass_1[0]:.3g})"}
    if fails[-1] == len(reach) - 1:
        return {"found": False, "reason": f"no candidate reaches the target with k <= {max_k}: "
                "try larger --params or --max-k"}
    lo_row, hi_row = rows.iloc[fails[-1] * len(ks)], rows.iloc[(fails[-1] + 1) * len(ks)]
    numeric = [c for c in rows.columns if pd.api.types.is_numeric_dtype(rows[c])
               and (rows[c] > 0).all()]

    def at(t: float, k: int) -> pd.DataFrame:  # row between the two, at fraction t in log N
        row = {c: float(lo_row[c] * (hi_row[c] / lo_row[c]) ** t) for c in numeric}
        return pd.DataFrame([{**row, "k": k}])

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if float(law.predict(at(middle, max_k))[0]) >= target:
            high = middle
        else:
            low = middle
    row = at(high, 1)
    return {"found": True, "pass_at_1": float(law.predict(row)[0]), "params": float(row["N"][0]),
            "tokens": float(row["D"][0]), "max_k": max_k, "between_params": [int(lo_row["N"]), int(hi_row["N"])],
            "reason": f"below pass@1 {float(law.predict(row)[0]):.3g} (N ~ {row['N'][0]:,.0f}) "
                      f"no k <= {max_k} reaches pass@k {target:.3g}"}


def candidate_shapes(loss_law: Law, throughput: ThroughputModel, space: SearchSpace,
                     params: Sequence[float], *, tokens_per_param: float,
                     max_loss_increase: float = 0.01, batch: int = SERVING.batch,
                     context: int = SERVING.context,
                     measure: MeasureSettings | None = None) -> list[Recommendation]:
    """``recommend``'s answer at each candidate N, smallest first (its first shape is the
    candidate); ``space`` is the shape family, its params and tokens replaced by each N's."""
    if not params or min(params) <= 0 or tokens_per_param <= 0:
        raise SettingError(f"{{params}} {list(params)} must list one positive size or more and "
                           f"{{tokens_per_param}} {tokens_per_param:g} be positive")
    return [recommend(loss_law, dataclasses.replace(space, params=float(n),
                                                    tokens=tokens_per_param * float(n)),
                      throughput, max_loss_increase=max_loss_increase, top=1, batch=batch,
                      context=context, measure=measure) for n in sorted(params)]


def substitute(recommendations: Sequence[Recommendation], passk_law: Law, *, target_pass: float,
               demand: Demand, max_k: int, provenance: Mapping[str, Any] | None = None
               ) -> Substitution:
    """Every candidate shape at k = 1..max_k and the points reaching ``target_pass`` (module
    docstring); the candidates come from ``candidate_shapes``; ``provenance`` is added to the
    answer's."""
    if passk_law.kind != "passk":
        raise SettingError(f"{{passk_law}} holds a {passk_law.kind} law: fit one with "
                           "`archscale fit --law passk` or `archscale substitute --study`")
    if not 0 < target_pass < 1 or max_k < 1:
        raise SettingError(f"{{target_pass}} {target_pass} must lie in (0, 1) and {{max_k}} "
                           f"{max_k} be >= 1")
    ks = tuple(range(1, max_k + 1))
    recs = list(recommendations)
    scored = [rec.recommended[0] for rec in recs]
    tokens = [float(rec.provenance["search"]["tokens"]) for rec in recs]
    specs = [s.spec for s in scored]
    rows = _rows(scored, tokens, ks)
    predicted, low, high = (a.reshape(len(specs), len(ks)) for a in predict_pass(passk_law, rows))
    points, reach = [], []
    for i, spec in enumerate(specs):
        k = least_k(predicted[i], ks, target_pass)
        reach.append(k)
        if k is None:
            continue
        train, serve = demand.cost(spec, tokens[i], k)
        points.append(Point(
            shape=i, k=k, pass_at_k=float(predicted[i, k - 1]),
            interval_90=(float(low[i, k - 1]), float(high[i, k - 1])),
            k_range=(least_k(high[i], ks, target_pass), least_k(low[i], ks, target_pass)),
            train_flops=train, inference_flops=serve,
            inference_seconds=demand.requests * k * demand.sample_tokens / scored[i].throughput))
    floor = _floor(passk_law, rows, reach, ks, target_pass, predicted[:, 0])
    fitted_k = passk_law.error_model.ranges.get("k", [1, max_k])[1]
    notes = [f"pass@k law not identified ({p.code}): {p.message}" for p in passk_law.problems]
    if max_k > fitted_k:
        notes.append(f"k beyond {fitted_k:g} (the largest measured) is extrapolated: its intervals "
                     "widen with the distance")
    trained = passk_law.provenance.get("n_range") or [math.inf, math.inf]
    if specs[-1].params_nonembed > trained[1]:
        notes.append(f"sizes above the largest trained N ({trained[1]:,.0f}) are extrapolated: "
                     "their intervals widen with the distance")
    first = recs[0].provenance
    return Substitution(
        target_pass, demand, ks, recs, tokens, predicted, low, high, points, floor, tuple(notes),
        {"loss_law": first["loss_law"], "throughput": first["throughput"],
         "shape_search": {k: v for k, v in first["search"].items() if k not in ("params",
                                                                               "tokens")},
         "passk_law": {"kind": passk_law.kind, "form": passk_law.config,
                       "provenance": passk_law.provenance, "identified": passk_law.identified,
                       "version": passk_law.version}, **dict(provenance or {})})


def cost_curves(sub: Substitution, targets: np.ndarray, ks: Sequence[int]
                ) -> dict[int, np.ndarray]:
    """For each k: the least total FLOPs over the shapes whose predicted pass@k reaches each
    target (NaN where none does)."""
    curves = {}
    for k in ks:
        cost = np.full(len(targets), np.nan)
        for i, spec in enumerate(sub.specs):
            total = sum(sub.demand.cost(spec, sub.tokens[i], k))
            reached = sub.pass_SxK[i, k - 1] >= targets
            cost = np.where(reached, np.fmin(cost, total), cost)
        curves[k] = cost
    return curves

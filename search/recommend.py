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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import archscale
from archscale.arch.errors import ArchscaleError
from archscale.arch.shapes import shape_from_budget
from archscale.arch.spec import ArchSpec, SpecError
from archscale.laws import Law, spec_table
from archscale.search.throughput_models import ThroughputModel


def _range(values: tuple[float, ...], name: str) -> tuple[float, float]:
    if not values or not all(v > 0 for v in values):
        raise ArchscaleError(f"{name} range {values} must hold positive values, e.g. 0.03:0.3")
    return min(values), max(values)


@dataclass(frozen=True)
class SearchSpace:
    """Candidate shapes at the target scale."""

    params: float
    """Target non-embedding parameters N."""
    tokens: float
    """Training tokens D the loss is predicted for."""
    d_over_sqrt_n: tuple[float, ...] = (0.03, 0.3)
    """Width range as d_model / sqrt(N): every d_model multiple between its min and max is tried."""
    r: tuple[float, ...] = (0.5, 8.0)
    """MLP-to-attention ratio range: ``r_points`` values log-spaced between its min and max."""
    r_points: int = 48
    """Grid points in r (48 over 0.5..8 steps 6%, about one d_ff multiple of 128 at 1B)."""
    gqa_group: int = 4
    """GQA group of step 1; step 2 searches larger groups from here."""
    head_dim: int = 64
    """Head width of every candidate."""
    n_layers: int | None = None
    """Fixed depth, or None for n_heads near d / head_dim and the depth the budget affords."""
    vocab_size: int = 128256
    """Vocabulary of the target model."""
    seq_len: int = 8192
    """Context of the target model."""
    d_model_multiple: int = 128
    """d_model rounding (hardware-friendly widths)."""
    d_ff_multiple: int = 128
    """d_ff rounding."""
    max_params_error: float = 0.05
    """Candidates missing N by more than this fraction are dropped."""
    heads_divide_d_model: bool = True
    """Keep only shapes with d_model a multiple of n_heads: transformers 5.x refuses other
    LlamaConfigs even with an explicit head_dim (huggingface/transformers#46082)."""

    def __post_init__(self) -> None:
        if not (self.params > 0 and self.tokens > 0):
            raise ArchscaleError(f"--params {self.params:g} and --tokens {self.tokens:g} must be "
                                 "positive, e.g. --params 1e9 --tokens 1e11")
        _range(self.d_over_sqrt_n, "--d-over-sqrt-n")
        _range(self.r, "--r")
        if self.r_points < 1 or self.gqa_group < 1:
            raise ArchscaleError(f"r_points={self.r_points} and --gqa {self.gqa_group} must be >= 1")

    def shape(self, d_model: int, r: float, gqa_group: int) -> ArchSpec | None:
        """The valid integer shape at (d_model, r, GQA group) and the target N, or None."""
        try:
            shape = shape_from_budget(
                self.params, r, gqa_group, d_model=d_model, n_layers=self.n_layers,
                head_dim=self.head_dim, vocab_size=self.vocab_size, seq_len=self.seq_len,
                d_ff_multiple=self.d_ff_multiple, d_model_multiple=self.d_model_multiple)
        except SpecError:
            return None
        spec = shape.spec
        if abs(shape.params_rel_error) > self.max_params_error:
            return None
        if self.heads_divide_d_model and spec.d_model % spec.n_heads:
            return None
        return spec

    def regroup(self, spec: ArchSpec, n_kv_heads: int) -> ArchSpec | None:
        """``spec`` with ``n_kv_heads``, the K/V parameters freed moved into the MLP (d_ff
        rounded) so N stays put; None if that misses the target N by too much."""
        fewer = spec.replace(n_kv_heads=n_kv_heads)
        freed = spec.attn_params_per_layer - fewer.attn_params_per_layer
        per_unit = spec.mlp_params_per_layer // spec.d_ff  # MLP parameters per unit of d_ff
        step = self.d_ff_multiple
        regrouped = fewer.replace(d_ff=spec.d_ff + round(freed / per_unit / step) * step)
        if abs(regrouped.params_nonembed / self.params - 1) > self.max_params_error:
            return None
        return regrouped

    def widths(self) -> range:
        lo, hi = _range(self.d_over_sqrt_n, "--d-over-sqrt-n")
        step = self.d_model_multiple
        root = math.sqrt(self.params)
        return range(max(step, math.ceil(lo * root / step) * step), math.floor(hi * root) + 1, step)

    def candidates(self) -> list[ArchSpec]:
        """Every distinct valid shape of step 1 (base GQA group)."""
        lo, hi = _range(self.r, "--r")
        specs: dict[ArchSpec, None] = {}
        for d_model in self.widths():
            for r in np.geomspace(lo, hi, self.r_points):
                spec = self.shape(d_model, float(r), self.gqa_group)
                if spec is not None:
                    specs[spec] = None
        if not specs:
            raise ArchscaleError(
                f"no valid shape within {self.max_params_error:.0%} of N={self.params:.3g} in "
                f"d/sqrt(N) {self.d_over_sqrt_n} and r {self.r}: widen --d-over-sqrt-n / --r, "
                "change --layers or --head-dim")
        return list(specs)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class Scored:
    """One shape with its predictions."""

    spec: ArchSpec
    """The shape."""
    loss: float
    """Predicted loss of this exact shape (its own N) at the target tokens."""
    loss_low: float
    """Lower end of the loss interval (NaN when the law has no bootstrap samples)."""
    loss_high: float
    """Upper end of the loss interval."""
    decode_tokens_per_s: float
    """Predicted decode throughput at the recommendation's (batch, context)."""
    origin: str = "grid"
    """Where the shape came from: the step-1 grid, a GQA step, or the baseline."""

    def to_dict(self, batch: int, context: int, dtype: str = "bf16") -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(), "origin": self.origin,
            "params_total": self.spec.params_total, "params_nonembed": self.spec.params_nonembed,
            "r_mlp_attn": self.spec.r_mlp_attn, "d_over_sqrt_n": self.spec.d_over_sqrt_n,
            "gqa_group": self.spec.gqa_group,
            "predicted_loss": self.loss,
            "loss_interval": [_finite(self.loss_low), _finite(self.loss_high)],
            "predicted_decode_tokens_per_s": self.decode_tokens_per_s,
            "kv_cache_bytes": self.spec.kv_cache_bytes(batch, context, dtype),
            "kv_cache_bytes_per_token": self.spec.kv_cache_bytes_per_token(dtype),
        }


@dataclass(frozen=True)
class Recommendation:
    """The answer: recommended shapes, the loss-optimal shape, the Pareto set, a baseline."""

    recommended: list[Scored]
    """Best shapes by throughput under the target loss, fastest first."""
    loss_optimal: Scored
    """The shape of lowest loss at equal N (the paper's Panda)."""
    pareto: list[Scored]
    """Shapes no other shape beats on both loss and throughput, by loss."""
    baseline: Scored | None
    """A reference shape predicted with the same laws, or None."""
    target_loss: float
    """The loss constraint every recommended shape meets."""
    batch: int
    """Decode batch of the throughput predictions."""
    context: int
    """Cached context of the throughput predictions."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Laws, search settings, versions and command settings behind the numbers."""
    dtype: str = "bf16"
    """Serving dtype of the throughput predictions and KV-cache bytes."""
    extrapolation: dict[str, Any] = field(default_factory=dict)
    """Per law (loss_law, throughput_law): target / largest trained N and D."""
    methods: dict[str, str] = field(default_factory=dict)
    """How each reported number is obtained, by output key."""
    notes: tuple[str, ...] = ()
    """What the user must know to read the numbers."""

    def shape_dict(self, s: Scored) -> dict[str, Any]:
        out = s.to_dict(self.batch, self.context, self.dtype)
        law = self.extrapolation.get("loss_law") or {}
        out["extrapolation"] = {
            "N": None if law.get("N") is None else s.spec.params_nonembed / law["N"]["trained_max"],
            "D": None if law.get("D") is None else law["D"]["factor"]}
        if self.baseline is not None:
            out["vs_baseline"] = _versus(s, self.baseline)
        out["obtained"] = self.methods
        return out

    def display_rows(self) -> list[tuple[str, dict[str, str]]]:
        """(label, column -> text) for the recommended shapes by rank, the loss-optimal shape and
        the baseline: the one table ``archscale recommend`` prints and the demo report shows."""
        level = self.provenance["search"]["interval_level"]
        rows = [(f"#{rank}", s) for rank, s in enumerate(self.recommended, 1)]
        rows.append(("loss-optimal", self.loss_optimal))
        if self.baseline is not None:
            rows.append(("baseline", self.baseline))
        return [(label, _display_cells(s, self.baseline, level, self.dtype)) for label, s in rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_loss": self.target_loss,
            "throughput_setting": {"batch": self.batch, "context": self.context,
                                   "dtype": self.dtype},
            "extrapolation": self.extrapolation,
            "recommended": [self.shape_dict(s) for s in self.recommended],
            "loss_optimal": self.shape_dict(self.loss_optimal),
            "pareto": [self.shape_dict(s) for s in self.pareto],
            "baseline": None if self.baseline is None else self.shape_dict(self.baseline),
            "notes": list(self.notes),
            "provenance": self.provenance,
        }


def _display_cells(s: Scored, baseline: Scored | None, level: float, dtype: str) -> dict[str, str]:
    spec = s.spec
    loss = f"{s.loss:.4f}"
    if math.isfinite(s.loss_low) and math.isfinite(s.loss_high):
        loss += f" [{s.loss_low:.4f}, {s.loss_high:.4f}]"
    gain = ""
    if baseline is not None and s is not baseline:
        versus = _versus(s, baseline)
        gain = f"{versus['throughput_gain']:+.1%}" + ("" if versus["equal_or_better_loss"]
                                                       else " (worse loss)")
    return {"d_model": str(spec.d_model), "layers": str(spec.n_layers),
            "heads/kv": f"{spec.n_heads}/{spec.n_kv_heads}", "d_ff": str(spec.d_ff),
            "r": f"{spec.r_mlp_attn:.2f}", "d/sqrt(N)": f"{spec.d_over_sqrt_n:.4f}",
            "N": f"{spec.params_nonembed:,}", f"predicted loss [{level:.0%}]": loss,
            "decode tok/s": f"{s.decode_tokens_per_s:,.0f}", "vs baseline": gain,
            "KV bytes/token": f"{spec.kv_cache_bytes_per_token(dtype):,}"}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _versus(s: Scored, base: Scored) -> dict[str, Any]:
    """Throughput gain over the baseline, which counts as a gain at equal-or-better loss only."""
    gain = s.decode_tokens_per_s / base.decode_tokens_per_s - 1
    better = s.loss <= base.loss
    return {"throughput_gain": gain, "loss_delta": s.loss - base.loss,
            "equal_or_better_loss": better, "gain_at_equal_or_better_loss": gain if better else None}


def save_recommendation(rec: Recommendation, out_dir: str | Path) -> Path:
    """Write ``out_dir/recommendations.json``; returns its path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArchscaleError(f"--out {out} is a file: give a directory for recommendations.json")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recommendations.json"
    path.write_text(json.dumps(rec.to_dict(), indent=1, allow_nan=False) + "\n")
    return path


def score(specs: list[ArchSpec], law: Law, throughput: ThroughputModel, tokens: float,
          batch: int, context: int, level: float = 0.95, origin: str = "grid") -> list[Scored]:
    """Predicted loss (with its interval) and decode throughput of each shape."""
    table = spec_table(specs, tokens)
    loss = np.asarray(law.predict(table), dtype=float)
    if len(law.coef_samples):
        low, high = (np.asarray(a, dtype=float) for a in law.predict_interval(table, level))
    else:
        low = high = np.full(len(specs), np.nan)
    speed = throughput.decode_tokens_per_s(specs, batch, context)
    return [Scored(s, float(l_), float(lo_), float(hi_), float(v), origin)
            for s, l_, lo_, hi_, v in zip(specs, loss, low, high, speed, strict=True)]


def pareto_front(scored: list[Scored]) -> list[Scored]:
    """Shapes no other shape beats on both loss (lower) and throughput (higher), by loss."""
    front, best_speed = [], -math.inf
    for s in sorted(scored, key=lambda s: (s.loss, -s.decode_tokens_per_s)):
        if s.decode_tokens_per_s > best_speed:
            front.append(s)
            best_speed = s.decode_tokens_per_s
    return front


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
        raise ArchscaleError(f"--law holds a {law.kind} law, which cannot tell shapes apart: "
                             "recommend needs a conditional law (`archscale fit --law conditional`)")
    return {t["feature"] for t in law.config["terms"]}


def _notes(law: Law, throughput: ThroughputModel, extrapolation: dict[str, Any],
           min_kv_heads: int) -> list[str]:
    notes = [f"loss law: {n}" for n in law.notes if "NOT CONVERGED" in n or "bootstrap" in n]
    if "gqa_group" not in _law_features(law):
        notes.append(f"the loss law has no gqa_group term, so the GQA search sees no loss cost "
                     "of sharing KV heads (only the r shift of moving their parameters into the "
                     "MLP): it stops when throughput gains end, the target breaks, or at "
                     f"--min-kv-heads {min_kv_heads}")
    if not len(law.coef_samples):
        notes.append("the loss law has no bootstrap samples: no loss intervals (refit with --n-boot)")
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


def _methods(law: Law, throughput: ThroughputModel, tokens: float, batch: int, context: int,
             level: float, dtype: str) -> dict[str, str]:
    terms = ", ".join(f"{t['feature']}:{t['form']}" for t in law.config["terms"])
    return {
        "predicted_loss": f"conditional law ({law.config['combine']}, L_opt {law.config['lopt']}, "
                          f"terms {terms}) at this shape's N and D={tokens:.4g}",
        "loss_interval": f"{level:.0%} percentile interval of the predictions of "
                         f"{law.bootstrap.get('n', 0)} bootstrap refits (uncertainty of the law's "
                         "mean; not the error of extrapolating its form)",
        "predicted_decode_tokens_per_s": f"{throughput.description}, at batch {batch} and "
                                         f"context {context}",
        "kv_cache_bytes": f"exact: 2 x n_layers x n_kv_heads x head_dim x bytes of {dtype} x "
                          f"batch {batch} x context {context}",
        "params": "exact count of the shape (N = non-embedding; arch/spec.py conventions)",
    }


def recommend(law: Law, space: SearchSpace, throughput: ThroughputModel, *,
              target_loss: float | None = None, max_loss_increase: float | None = None,
              top: int = 5, batch: int = 64, context: int = 2048, level: float = 0.95,
              baseline: ArchSpec | None = None, min_kv_heads: int = 1, min_gain: float = 0.01,
              provenance: Mapping[str, Any] | None = None) -> Recommendation:
    """Algorithm 1 over the fitted laws; see the module docstring."""
    _law_features(law)
    if (target_loss is None) == (max_loss_increase is None):
        raise ArchscaleError("give exactly one of --target-loss or --max-loss-increase")
    if max_loss_increase is not None and not 0 <= max_loss_increase < 1:
        raise ArchscaleError(f"--max-loss-increase {max_loss_increase} must be a fraction in [0, 1), "
                             "e.g. 0.005 or 0.5%")
    if top < 1 or batch < 1 or context < 1 or min_kv_heads < 1 or not 0 < level < 1:
        raise ArchscaleError(f"--top {top}, --batch {batch}, --context {context} and "
                             f"--min-kv-heads {min_kv_heads} must be >= 1 and --level {level} in "
                             "(0, 1)")
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
        raise ArchscaleError(f"no shape reaches the target loss {target_loss:.4f}: the best "
                             f"predicted is {best:.4f}; raise --target-loss or --tokens")
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
    extrapolation = {"loss_law": _extrapolation(law.provenance, {"N": space.params,
                                                                 "D": space.tokens})}
    if throughput.fitted_on is not None:  # a throughput law does not depend on D
        extrapolation["throughput_law"] = _extrapolation(throughput.fitted_on,
                                                         {"N": space.params})
    dtype = throughput.dtype
    return Recommendation(
        recommended=ranked, loss_optimal=loss_optimal, pareto=pareto_front(visited),
        baseline=base, target_loss=float(target_loss), batch=batch, context=context, dtype=dtype,
        extrapolation=extrapolation,
        methods=_methods(law, throughput, space.tokens, batch, context, level, dtype),
        notes=tuple(_notes(law, throughput, extrapolation, min_kv_heads)),
        provenance={
            "archscale_version": archscale.__version__,
            "target_loss": {"value": float(target_loss), "how": how},
            "loss_law": {"kind": law.kind, "form": law.config, "provenance": law.provenance,
                         "version": law.version, "converged": law.converged},
            "throughput": throughput.description,
            "search": {**space.to_dict(), "min_kv_heads": min_kv_heads, "min_gain": min_gain,
                       "top": top, "candidates": len(scored), "interval_level": level},
            **dict(provenance or {})})

"""Recommend shapes at a target scale from fitted laws (Bian et al. 2026, Algorithm 1, and more).

1. Over (d_model, r) at the target N, D and a base GQA group: maximise predicted decode throughput
   subject to predicted loss <= target (exhaustively over valid integer shapes: the laws are cheap).
2. Local search over GQA for each of the best shapes: walk n_kv_heads down through the divisors of
   n_heads, stopping once the throughput gain ends or the loss constraint breaks.
3. Also the loss-optimal shape (the paper's "Panda") and the Pareto set of (loss, throughput).

The target loss is absolute (``target_loss``) or a relative increase over the loss-optimal shape's
prediction (``max_loss_increase``). Every number carries how it was obtained; predictions beyond
the largest trained N are labelled with their extrapolation factor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError
from archscale.arch.shapes import shape_from_budget
from archscale.arch.spec import ArchSpec, SpecError
from archscale.sweeps.throughput import roofline


class LossLaw(Protocol):
    """What recommend needs of a fitted loss law (``archscale.laws``)."""

    def predict(self, table: pd.DataFrame) -> np.ndarray: ...
    def predict_interval(self, table: pd.DataFrame, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]: ...


class ThroughputModel(Protocol):
    """Predicted decode tokens/s of many shapes at one (batch, context)."""

    description: str

    def decode_tokens_per_s(self, specs: list[ArchSpec], batch: int, context: int) -> np.ndarray: ...


@dataclass(frozen=True)
class RooflineThroughput:
    """Decode throughput at the memory/compute roofline of a device (no fitted efficiency)."""

    peak_flops: float
    """Device matmul FLOP/s in the serving dtype."""
    bandwidth: float
    """Device memory bandwidth, bytes/s."""
    device: str
    """Device name, for provenance."""
    dtype: str = "bfloat16"
    """Serving dtype of weights and cache."""

    @property
    def description(self) -> str:
        return (f"roofline on {self.device} ({self.peak_flops:.3g} FLOP/s, {self.bandwidth:.3g} B/s, "
                f"{self.dtype}): an upper bound, no fitted efficiency")

    def decode_tokens_per_s(self, specs: list[ArchSpec], batch: int, context: int) -> np.ndarray:
        return np.array([roofline(s, batch=batch, context=context, decode_tokens=0, dtype=self.dtype,
                                  peak=self.peak_flops, bandwidth=self.bandwidth)
                         ["decode_roofline_tokens_per_s"] for s in specs])


@dataclass(frozen=True)
class SearchSpace:
    """Candidate shapes at the target scale."""

    params: float
    """Target non-embedding parameters N."""
    tokens: float
    """Training tokens D the loss is predicted for."""
    d_over_sqrt_n: tuple[float, ...] = tuple(np.round(np.geomspace(0.03, 0.3, 25), 4))
    """Widths to try, as d_model / sqrt(N)."""
    r: tuple[float, ...] = tuple(np.round(np.geomspace(0.5, 8.0, 25), 3))
    """MLP-to-attention ratios to try."""
    gqa_group: int = 4
    """GQA group of step 1; step 2 searches from here."""
    head_dim: int = 64
    """Head width of every candidate."""
    n_layers: int | None = None
    """Fixed depth, or None for n_heads = d / head_dim and the depth the budget affords."""
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

    def candidates(self) -> list[ArchSpec]:
        specs: dict[ArchSpec, None] = {}
        for x in self.d_over_sqrt_n:
            for r in self.r:
                try:
                    shape = shape_from_budget(
                        self.params, r, self.gqa_group, d_over_sqrt_n=x, n_layers=self.n_layers,
                        head_dim=self.head_dim, vocab_size=self.vocab_size, seq_len=self.seq_len,
                        d_ff_multiple=self.d_ff_multiple, d_model_multiple=self.d_model_multiple)
                except SpecError:
                    continue
                if abs(shape.params_rel_error) <= self.max_params_error:
                    specs[shape.spec] = None
        if not specs:
            raise ArchscaleError(f"no valid shape within {self.max_params_error:.0%} of N="
                                 f"{self.params:.3g}: widen d_over_sqrt_n / r or set n_layers")
        return list(specs)


@dataclass(frozen=True)
class Scored:
    """One shape with its predictions."""

    spec: ArchSpec
    loss: float
    loss_low: float
    loss_high: float
    decode_tokens_per_s: float

    def to_dict(self, batch: int, context: int) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "params_total": self.spec.params_total, "params_nonembed": self.spec.params_nonembed,
            "r_mlp_attn": self.spec.r_mlp_attn, "d_over_sqrt_n": self.spec.d_over_sqrt_n,
            "gqa_group": self.spec.gqa_group,
            "predicted_loss": self.loss, "loss_interval": [self.loss_low, self.loss_high],
            "predicted_decode_tokens_per_s": self.decode_tokens_per_s,
            "kv_cache_bytes": self.spec.kv_cache_bytes(batch, context),
            "kv_cache_bytes_per_token": self.spec.kv_cache_bytes_per_token(),
        }


@dataclass(frozen=True)
class Recommendation:
    """The answer: recommended shapes, the loss-optimal shape, the Pareto set, a baseline."""

    recommended: list[Scored]
    loss_optimal: Scored
    pareto: list[Scored]
    baseline: Scored | None
    target_loss: float
    batch: int
    context: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def as_dict(s: Scored) -> dict[str, Any]:
            return s.to_dict(self.batch, self.context)

        return {
            "target_loss": self.target_loss,
            "throughput_setting": {"batch": self.batch, "context": self.context},
            "recommended": [as_dict(s) for s in self.recommended],
            "loss_optimal": as_dict(self.loss_optimal),
            "pareto": [as_dict(s) for s in self.pareto],
            "baseline": None if self.baseline is None else as_dict(self.baseline),
            "provenance": self.provenance,
        }


def _table(specs: Iterable[ArchSpec], tokens: float) -> pd.DataFrame:
    return pd.DataFrame([{**s.table_row(), "D": float(tokens)} for s in specs])


def _score(specs: list[ArchSpec], law: LossLaw, throughput: ThroughputModel, tokens: float,
           batch: int, context: int, level: float) -> list[Scored]:
    table = _table(specs, tokens)
    loss = np.asarray(law.predict(table), dtype=float)
    low, high = (np.asarray(a, dtype=float) for a in law.predict_interval(table, level))
    speed = throughput.decode_tokens_per_s(specs, batch, context)
    return [Scored(s, float(l_), float(lo_), float(hi_), float(v))
            for s, l_, lo_, hi_, v in zip(specs, loss, low, high, speed, strict=True)]


def pareto_front(scored: list[Scored]) -> list[Scored]:
    """Shapes no other shape beats on both loss (lower) and throughput (higher), by loss."""
    front, best_speed = [], -math.inf
    for s in sorted(scored, key=lambda s: (s.loss, -s.decode_tokens_per_s)):
        if s.decode_tokens_per_s > best_speed:
            front.append(s)
            best_speed = s.decode_tokens_per_s
    return front


def gqa_local_search(start: Scored, law: LossLaw, throughput: ThroughputModel, tokens: float,
                     batch: int, context: int, target_loss: float, level: float,
                     min_gain: float = 0.01) -> list[Scored]:
    """Walk n_kv_heads down the divisors of n_heads from ``start``; the path taken, start first.

    Stops at the first step whose throughput gain is below ``min_gain`` (relative) or whose
    predicted loss breaks the target.
    """
    path = [start]
    n_heads = start.spec.n_heads
    for kv in sorted((k for k in range(1, start.spec.n_kv_heads) if n_heads % k == 0), reverse=True):
        (step,) = _score([start.spec.replace(n_kv_heads=kv)], law, throughput, tokens, batch,
                         context, level)
        if step.loss > target_loss or step.decode_tokens_per_s < path[-1].decode_tokens_per_s * (1 + min_gain):
            break
        path.append(step)
    return path


def recommend(law: LossLaw, space: SearchSpace, throughput: ThroughputModel, *,
              target_loss: float | None = None, max_loss_increase: float | None = None,
              top: int = 5, batch: int = 64, context: int = 2048, level: float = 0.95,
              baseline: ArchSpec | None = None) -> Recommendation:
    """Algorithm 1 over the fitted laws; see the module docstring."""
    if (target_loss is None) == (max_loss_increase is None):
        raise ArchscaleError("give exactly one of --target-loss or --max-loss-increase")
    if max_loss_increase is not None and not 0 <= max_loss_increase < 1:
        raise ArchscaleError(f"--max-loss-increase {max_loss_increase} must be a fraction in [0, 1), "
                             "e.g. 0.005 or 0.5%")
    scored = _score(space.candidates(), law, throughput, space.tokens, batch, context, level)
    loss_optimal = min(scored, key=lambda s: s.loss)
    if target_loss is None:
        target_loss = loss_optimal.loss * (1 + max_loss_increase)
    feasible = sorted((s for s in scored if s.loss <= target_loss),
                      key=lambda s: -s.decode_tokens_per_s)
    if not feasible:
        raise ArchscaleError(f"no shape reaches the target loss {target_loss:.4f}: the best predicted "
                             f"is {loss_optimal.loss:.4f}; raise the target or the token budget")
    recommended: dict[ArchSpec, Scored] = {}
    for start in feasible:
        if len(recommended) >= top:
            break
        best = gqa_local_search(start, law, throughput, space.tokens, batch, context, target_loss,
                                level)[-1]
        recommended.setdefault(best.spec, best)
    ranked = sorted(recommended.values(), key=lambda s: -s.decode_tokens_per_s)[:top]
    base = None
    if baseline is not None:
        (base,) = _score([baseline], law, throughput, space.tokens, batch, context, level)
    return Recommendation(recommended=ranked, loss_optimal=loss_optimal,
                          pareto=pareto_front(scored + ranked), baseline=base,
                          target_loss=float(target_loss), batch=batch, context=context,
                          provenance={"throughput": throughput.description,
                                      "candidates": len(scored),
                                      "interval_level": level})

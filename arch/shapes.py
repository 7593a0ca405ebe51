"""Shape from budget: the valid integer ArchSpec nearest a target (N, d_model, r, GQA group)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from archscale.arch.spec import ArchSpec, SpecError


@dataclass(frozen=True)
class BudgetShape:
    """A realized shape beside the target it was built for."""

    spec: ArchSpec
    """The valid integer shape."""
    target_params: float
    """Requested non-embedding parameter count N."""
    target_r: float
    """Requested MLP-to-attention parameter ratio."""

    @property
    def params_rel_error(self) -> float:
        return self.spec.params_nonembed / self.target_params - 1.0

    @property
    def r_rel_error(self) -> float:
        return self.spec.r_mlp_attn / self.target_r - 1.0


@dataclass(frozen=True)
class _LinearCounts:
    """ArchSpec's non-embedding count N as the linear function of depth, heads and d_ff it is,
    read off ArchSpec itself (so the inversion follows whatever ArchSpec counts):
    N = outside + layers * (per_layer + per_head * heads + per_ff * d_ff), and per layer
    attention = per_head * heads, MLP = per_ff * d_ff."""

    per_head: float
    """Attention parameters per query head (its share of the KV heads included)."""
    per_ff: float
    """MLP parameters per unit of d_ff."""
    per_layer: float
    """Parameters of a layer outside attention and MLP (its norms)."""
    outside: float
    """Non-embedding parameters outside the layers (the final norm)."""

    @classmethod
    def of(cls, build: Callable[[int, int, int], ArchSpec], group: int) -> _LinearCounts:
        """Differences of ``build(layers, heads, d_ff)``'s counts: the smallest valid shape and
        one more layer, one more group of heads, one more unit of d_ff."""
        one = build(1, group, 1)
        layer = build(2, group, 1).params_nonembed - one.params_nonembed
        return cls(
            per_head=(build(1, 2 * group, 1).attn_params_per_layer
                      - one.attn_params_per_layer) / group,
            per_ff=build(1, group, 2).mlp_params_per_layer - one.mlp_params_per_layer,
            per_layer=layer - one.attn_params_per_layer - one.mlp_params_per_layer,
            outside=one.params_nonembed - layer)


def _multiples_around(value: float, step: int) -> list[int]:
    """The multiples of ``step`` just below and above ``value`` (never below ``step``)."""
    low = max(step, math.floor(value / step) * step)
    return sorted({low, low + step, max(step, low - step)})


def shape_from_budget(
    n_params: float,
    r: float,
    gqa_group: int,
    *,
    d_model: int | None = None,
    d_over_sqrt_n: float | None = None,
    n_layers: int | None = None,
    head_dim: int = 64,
    vocab_size: int = 256,
    seq_len: int = 256,
    d_ff_multiple: int = 8,
    d_model_multiple: int = 8,
    tie_embeddings: bool = True,
) -> BudgetShape:
    """Nearest valid shape to a target non-embedding N with hidden size d and ratio r.

    Give exactly one of ``d_model`` or ``d_over_sqrt_n`` (the latter uses the target N).
    With ``n_layers`` given, the per-layer budget fixes the number of query heads (a multiple of
    ``gqa_group``) and d_ff (a multiple of ``d_ff_multiple``); without it, n_heads = d / head_dim
    and the depth is what the budget affords. Among the neighbouring integer shapes the one with
    the smallest |log(N / target)| + |log(r / target r)| wins.
    """
    problems = []
    if not n_params > 0:
        problems.append(f"n_params={n_params} must be positive")
    if not r > 0:
        problems.append(f"r={r} must be positive")
    if gqa_group < 1:
        problems.append(f"gqa_group={gqa_group} must be >= 1")
    if (d_model is None) == (d_over_sqrt_n is None):
        problems.append("give exactly one of d_model or d_over_sqrt_n")
    if n_layers is not None and n_layers < 1:
        problems.append(f"n_layers={n_layers} must be >= 1")
    if problems:
        raise SpecError("shape_from_budget: " + "; ".join(problems))

    if d_model is None:
        d_model = max(d_model_multiple,
                      round(d_over_sqrt_n * math.sqrt(n_params) / d_model_multiple) * d_model_multiple)

    def build(layers: int, heads: int, d_ff: int) -> ArchSpec:
        return ArchSpec(vocab_size=vocab_size, seq_len=seq_len, n_layers=layers, d_model=d_model,
                        n_heads=heads, n_kv_heads=heads // gqa_group, head_dim=head_dim, d_ff=d_ff,
                        tie_embeddings=tie_embeddings)

    counts = _LinearCounts.of(build, gqa_group)
    candidates: list[ArchSpec] = []
    if n_layers is not None:
        per_layer = (n_params - counts.outside) / n_layers - counts.per_layer
        if per_layer <= 0:
            raise SpecError(f"n_params={n_params:.3g} is too small for {n_layers} layers of width "
                            f"{d_model}: lower n_layers or d_model")
        attn = per_layer / (1 + r)
        for heads, d_ff in itertools.product(
                _multiples_around(attn / counts.per_head, gqa_group),
                _multiples_around(r * attn / counts.per_ff, d_ff_multiple)):
            candidates.append(build(n_layers, heads, d_ff))
    else:
        heads_options = _multiples_around(d_model / head_dim, gqa_group)
        for heads in heads_options:
            attn = counts.per_head * heads
            for d_ff in _multiples_around(r * attn / counts.per_ff, d_ff_multiple):
                per_layer = attn + counts.per_ff * d_ff + counts.per_layer
                depth = (n_params - counts.outside) / per_layer
                for layers in {max(1, math.floor(depth)), max(1, math.ceil(depth))}:
                    candidates.append(build(layers, heads, d_ff))

    def distance(spec: ArchSpec) -> float:
        return abs(math.log(spec.params_nonembed / n_params)) + abs(math.log(spec.r_mlp_attn / r))

    best = min(candidates, key=distance)
    return BudgetShape(spec=best, target_params=float(n_params), target_r=float(r))

"""The candidate shapes of a recommendation: widths, MLP ratios and GQA groups at a target N,
each realized as a valid integer shape within ``max_params_error`` of it and inside the user's
ranges.

Rounding to integer heads and d_ff moves a shape's realized r and d/sqrt(N) off the grid point
it came from, and moving K/V parameters into the MLP (``regroup``) raises r; a shape that lands
outside ``--r`` or ``--d-over-sqrt-n`` is dropped, so what is recommended is the nearest shape
inside them (the grid is dense), or the error says none is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from archscale.arch.errors import SettingError
from archscale.arch.shapes import shape_from_budget
from archscale.arch.spec import ArchSpec, SpecError


def _positive(values: tuple[float, ...]) -> bool:
    return bool(values) and all(0 < v < math.inf for v in values)


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
        if not (0 < self.params < math.inf and 0 < self.tokens < math.inf):
            raise SettingError(f"{{params}} {self.params:g} and {{tokens}} {self.tokens:g} must "
                               "be finite and positive, e.g. 1e9 and 1e11")
        if not _positive(self.d_over_sqrt_n):
            raise SettingError(f"{{d_over_sqrt_n}} range {self.d_over_sqrt_n} must hold positive "
                               "values, e.g. 0.03:0.3")
        if not _positive(self.r):
            raise SettingError(f"{{r}} range {self.r} must hold positive values, e.g. 0.5:8")
        if min(self.r_points, self.gqa_group, self.d_model_multiple, self.d_ff_multiple) < 1:
            raise SettingError(f"r_points {self.r_points}, {{gqa_group}} {self.gqa_group}, "
                               f"{{d_model_multiple}} {self.d_model_multiple} and "
                               f"{{d_ff_multiple}} {self.d_ff_multiple} must be >= 1")

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
        return spec if self.inside(spec) else None

    def inside(self, spec: ArchSpec) -> bool:
        """Whether a shape's realized d/sqrt(N) and r lie in the ranges the user gave."""
        d_lo, d_hi = min(self.d_over_sqrt_n), max(self.d_over_sqrt_n)
        r_lo, r_hi = min(self.r), max(self.r)
        return d_lo <= spec.d_over_sqrt_n <= d_hi and r_lo <= spec.r_mlp_attn <= r_hi

    def regroup(self, spec: ArchSpec, n_kv_heads: int) -> ArchSpec | None:
        """``spec`` with ``n_kv_heads``, the K/V parameters freed moved into the MLP (d_ff
        rounded) so N stays put; None if that misses the target N by too much or takes r (or
        d/sqrt(N)) out of the ranges."""
        fewer = spec.replace(n_kv_heads=n_kv_heads)
        freed = spec.attn_params_per_layer - fewer.attn_params_per_layer
        per_unit = spec.mlp_params_per_layer // spec.d_ff  # MLP parameters per unit of d_ff
        step = self.d_ff_multiple
        regrouped = fewer.replace(d_ff=spec.d_ff + round(freed / per_unit / step) * step)
        if abs(regrouped.params_nonembed / self.params - 1) > self.max_params_error:
            return None
        return regrouped if self.inside(regrouped) else None

    def widths(self) -> range:
        lo, hi = min(self.d_over_sqrt_n), max(self.d_over_sqrt_n)
        step = self.d_model_multiple
        root = math.sqrt(self.params)
        return range(max(step, math.ceil(lo * root / step) * step), math.floor(hi * root) + 1, step)

    def candidates(self) -> list[ArchSpec]:
        """Every distinct valid shape of step 1 (base GQA group)."""
        import numpy as np  # here: the command line reads this module's defaults at start

        lo, hi = min(self.r), max(self.r)
        specs: dict[ArchSpec, None] = {}
        for d_model in self.widths():
            for r in np.geomspace(lo, hi, self.r_points):
                spec = self.shape(d_model, float(r), self.gqa_group)
                if spec is not None:
                    specs[spec] = None
        if not specs:
            raise SettingError(
                f"no valid shape within {self.max_params_error:.0%} of N={self.params:.3g} with "
                f"its realized d/sqrt(N) in {self.d_over_sqrt_n} and r in {self.r}: widen "
                "{d_over_sqrt_n} / {r}, change {n_layers} or {head_dim}")
        return list(specs)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

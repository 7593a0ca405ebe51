"""ArchSpec: a LLaMA-style decoder shape and every quantity derived from the shape alone.

Conventions (the one place they are written down; tests hold them):

* N ("non-embedding parameters", as in Kaplan et al. and Bian et al.) counts every parameter of
  the decoder blocks plus the final norm. The token embedding, and the separate output projection
  when embeddings are untied, are "embedding parameters". Total = N + embedding.
* r = MLP parameters / attention parameters of one layer (the paper's r_mlp/attn). Attention
  parameters are Q, K, V and O projections (no biases); MLP parameters are the three SwiGLU
  matrices. Norm weights belong to neither (they are in N).
* GQA group size = query heads per KV head (n_heads / n_kv_heads), as in the paper's tables.
* FLOPs count 2 per multiply-accumulate. The attention term counts QK^T and AV:
  - training, per token: 6 N + 6 * n_layers * seq_len * n_heads * head_dim. The forward attention
    cost of one token at context t is 4 * t * n_heads * head_dim per layer; a causal sequence of
    length T averages t = T / 2 (causal halving), and backward costs twice the forward.
  - inference, per generated token at context T: 2 N + 4 * n_layers * T * n_heads * head_dim
    (the new token attends to all T cached keys: no halving).
  The output projection (2 * d_model * vocab per token forward) is not in N; budgets follow the
  paper and leave it out, while MFU counts it as work done (``include_lm_head=True``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archscale.arch.errors import ArchscaleError, reject_unknown_keys

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "int8": 1}


class SpecError(ArchscaleError):
    """An impossible or malformed shape; the message names the field and the fix."""


def mean_decode_context(context: int, decode_tokens: int) -> int:
    """The cached length a decode of ``decode_tokens`` steps from ``context`` is costed at: the
    middle of the span it generates (its steps read context .. context + decode_tokens - 1)."""
    return context + decode_tokens // 2


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name such as 'bf16' or 'float32'."""
    try:
        return DTYPE_BYTES[str(dtype)]
    except KeyError:
        raise SpecError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ArchSpec:
    """Shape of a LLaMA-style decoder (pre-RMSNorm, RoPE, GQA, SwiGLU, no biases)."""

    vocab_size: int = field(metadata={"column": "vocabulary"})
    """Tokenizer vocabulary size (rows of the embedding table)."""
    seq_len: int = field(metadata={"column": "training context"})
    """Training context length in tokens; also the default attention context for FLOPs."""
    n_layers: int = field(metadata={"column": "decoder blocks"})
    """Number of decoder blocks."""
    d_model: int = field(metadata={"column": "hidden size"})
    """Hidden size (residual stream width)."""
    n_heads: int = field(metadata={"column": "query heads"})
    """Query heads per layer."""
    n_kv_heads: int = field(metadata={"column": "key/value heads"})
    """Key/value heads per layer; n_heads must be a multiple (grouped-query attention)."""
    head_dim: int = field(metadata={"column": "width of one head"})
    """Width of one attention head (need not equal d_model / n_heads)."""
    d_ff: int = field(metadata={"column": "SwiGLU inner width"})
    """SwiGLU inner width (each of the gate, up and down matrices is d_model x d_ff)."""
    tie_embeddings: bool = True
    """Whether the output projection reuses the token embedding matrix."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""

    def __post_init__(self) -> None:
        problems = []
        for name in SHAPE_COLUMNS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name}={value!r} must be an integer")
            elif value <= 0:
                problems.append(f"{name}={value} must be positive")
        if not problems and self.n_heads % self.n_kv_heads:
            problems.append(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}: "
                f"choose n_kv_heads among the divisors {_divisors(self.n_heads)}"
            )
        if not problems and self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE: use {self.head_dim + 1}")
        if not (self.rope_theta > 0):
            problems.append(f"rope_theta={self.rope_theta} must be positive (10000 is usual)")
        if not (self.norm_eps > 0):
            problems.append(f"norm_eps={self.norm_eps} must be positive (1e-5 is usual)")
        if problems:
            raise SpecError("invalid ArchSpec: " + "; ".join(problems))

    # ---- parameter counts -------------------------------------------------------------------
    @property
    def attn_params_per_layer(self) -> int:
        q_and_o = 2 * self.d_model * self.n_heads * self.head_dim
        k_and_v = 2 * self.d_model * self.n_kv_heads * self.head_dim
        return q_and_o + k_and_v

    @property
    def mlp_params_per_layer(self) -> int:
        return 3 * self.d_model * self.d_ff

    @property
    def norm_params_per_layer(self) -> int:
        return 2 * self.d_model

    @property
    def params_attn(self) -> int:
        return self.n_layers * self.attn_params_per_layer

    @property
    def params_mlp(self) -> int:
        return self.n_layers * self.mlp_params_per_layer

    @property
    def params_nonembed(self) -> int:
        """N: blocks (attention, MLP, norms) plus the final norm."""
        per_layer = self.attn_params_per_layer + self.mlp_params_per_layer + self.norm_params_per_layer
        return self.n_layers * per_layer + self.d_model

    @property
    def params_embed(self) -> int:
        tables = 1 if self.tie_embeddings else 2
        return tables * self.vocab_size * self.d_model

    @property
    def params_total(self) -> int:
        return self.params_nonembed + self.params_embed

    @property
    def r_mlp_attn(self) -> float:
        return self.mlp_params_per_layer / self.attn_params_per_layer

    @property
    def gqa_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def d_over_sqrt_n(self) -> float:
        """d_model / sqrt(N), N non-embedding (Bian et al.'s width-to-size ratio)."""
        return self.d_model / math.sqrt(self.params_nonembed)

    @property
    def aspect(self) -> float:
        """d_model / n_layers (Bian et al. 2025a's aspect ratio)."""
        return self.d_model / self.n_layers

    # ---- FLOPs (conventions in the module docstring) ----------------------------------------
    def attention_flops_per_token(self, context: int) -> int:
        """Forward FLOPs of QK^T and AV for one token attending to ``context`` keys."""
        return 4 * self.n_layers * context * self.n_heads * self.head_dim

    def lm_head_flops_per_token(self) -> int:
        """Forward FLOPs of the output projection (not part of N)."""
        return 2 * self.d_model * self.vocab_size

    def train_flops_per_token(self, include_lm_head: bool = False) -> int:
        """6 N + causal-halved attention (x3 for backward); optionally the output projection."""
        flops = 6 * self.params_nonembed + 3 * self.attention_flops_per_token(self.seq_len) // 2
        if include_lm_head:
            flops += 3 * self.lm_head_flops_per_token()
        return flops

    def inference_flops_per_token(self, context: int | None = None,
                                  include_lm_head: bool = False) -> int:
        """2 N + attention to all ``context`` cached keys, per generated token."""
        context = self.seq_len if context is None else context
        flops = 2 * self.params_nonembed + self.attention_flops_per_token(context)
        if include_lm_head:
            flops += self.lm_head_flops_per_token()
        return flops

    # ---- memory -------------------------------------------------------------------------------
    def kv_cache_bytes_per_token(self, dtype: str = "bf16") -> int:
        """K and V of every layer for one cached token."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * dtype_bytes(dtype)

    def kv_cache_bytes(self, batch: int, context: int, dtype: str = "bf16") -> int:
        return batch * context * self.kv_cache_bytes_per_token(dtype)

    def weight_bytes(self, dtype: str = "bf16") -> int:
        """Bytes of all parameters."""
        return self.params_total * dtype_bytes(dtype)

    def decode_weight_bytes(self, dtype: str = "bf16") -> int:
        """Weight bytes one decode step must read: N plus the output projection.

        The input embedding is gathered row by row, so an untied input table is not read whole.
        """
        return (self.params_nonembed + self.vocab_size * self.d_model) * dtype_bytes(dtype)

    # ---- serving steps: measurement, rooflines and the throughput law all cost them here ---------
    def prefill_cost(self, batch: int, context: int, dtype: str = "bf16") -> tuple[int, int]:
        """(FLOPs, bytes) of prefilling ``batch`` prompts of ``context`` tokens: 2N per token,
        causal attention over 1..context keys, one output projection per prompt; every weight
        read and the KV cache written."""
        flops = batch * (context * 2 * self.params_nonembed
                         + self.attention_flops_per_token(1) * context * (context + 1) // 2
                         + self.lm_head_flops_per_token())
        return flops, self.weight_bytes(dtype) + self.kv_cache_bytes(batch, context, dtype)

    def decode_step_cost(self, batch: int, context: int, dtype: str = "bf16") -> tuple[int, int]:
        """(FLOPs, bytes) of one decode step of ``batch`` sequences with ``context`` cached
        tokens: the decode weights and the whole KV cache read (``mean_decode_context`` gives the
        context a measured decode of several steps is costed at)."""
        flops = batch * self.inference_flops_per_token(context, include_lm_head=True)
        return flops, self.decode_weight_bytes(dtype) + self.kv_cache_bytes(batch, context, dtype)

    # ---- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        reject_unknown_keys(cls, data, error=SpecError)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise SpecError(f"ArchSpec is missing {missing}")
        return cls(**data)

    def replace(self, **changes: Any) -> ArchSpec:
        return dataclasses.replace(self, **changes)

    def table_row(self) -> dict[str, Any]:
        """The shape columns of the run table (``TABLE_COLUMNS``) that laws read."""
        return {column: getattr(self, column if attr is None else attr)
                for column, (attr, _) in TABLE_COLUMNS.items()}

    def summary(self) -> dict[str, Any]:
        """The derived table printed by ``archscale arch show``."""
        return {
            "params_total": self.params_total,
            "params_nonembed": self.params_nonembed,
            "params_embed": self.params_embed,
            "params_attn": self.params_attn,
            "params_mlp": self.params_mlp,
            "r_mlp_attn": self.r_mlp_attn,
            "gqa_group": self.gqa_group,
            "d_over_sqrt_n": self.d_over_sqrt_n,
            "train_flops_per_token": self.train_flops_per_token(),
            "inference_flops_per_token": self.inference_flops_per_token(),
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token(),
            "weight_bytes_bf16": self.weight_bytes(),
        }


SHAPE_COLUMNS: dict[str, str] = {f.name: f.metadata["column"] for f in dataclasses.fields(ArchSpec)
                                 if "column" in f.metadata}
"""The integer fields (a field with a ``column`` meaning), in field order: each must be a
positive integer, the run table stores each, and a run's ArchSpec is rebuilt from them. A new
integer knob declares its meaning there and lands in every list derived from this one."""

TABLE_COLUMNS: dict[str, tuple[str | None, str]] = {
    "N": ("params_nonembed", "non-embedding parameters"),
    "params_total": ("params_total", "all parameters"),
    **{name: (None, meaning) for name, meaning in SHAPE_COLUMNS.items()},
    "r": ("r_mlp_attn", "MLP / attention parameters per layer"),
    "d_over_sqrt_n": ("d_over_sqrt_n", "d_model / sqrt(N)"),
    "gqa_group": ("gqa_group", "query heads per KV head"),
}
"""The run table's columns that a shape alone gives: column -> (the ArchSpec property it reads,
None for the field of that name; its meaning), in table order."""


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


# ---- presets ---------------------------------------------------------------------------------
_PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in _PRESET_DIR.glob("*.json"))


def get_preset(name: str) -> ArchSpec:
    path = _PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise SpecError(f"unknown preset {name!r}: choose one of {preset_names()}")
    return ArchSpec.from_dict(json.loads(path.read_text()))

"""What a run trains for (Budget) and how (Recipe): AdamW, warmup, cosine/WSD, scaling rules.

A study compares shapes under one Recipe. So that a U-curve in width is not an artefact of one
learning rate tuned for one width, the learning rate and batch size may follow a declared rule:

* ``lr_rule="power_n"``: lr = lr * (N / lr_ref_params) ** lr_exponent (N non-embedding, as in
  arch/spec.py); ``batch_rule="power_n"`` likewise for the batch size.
* ``lr_rule="mup"``: muP-style per-width scaling for Adam: the hidden matrices (attention and MLP
  weights) get lr * mup_base_width / d_model; embeddings and norms keep lr.

``Recipe.resolved(spec)`` applies the rules and returns the concrete recipe one shape trains with
(its lr_rule/batch_rule become "constant", except "mup", whose per-matrix factor the optimizer
applies). sweeps/optimizer.py turns a Recipe into JAX: its schedule and optimizer. This module
imports no JAX, so readers of recipes (exports, sweep files) stay light.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from archscale.arch.errors import ArchscaleError, reject_unknown_keys
from archscale.arch.spec import ArchSpec


@dataclass(frozen=True)
class Budget:
    """A run's training budget: exactly one of tokens or FLOPs."""

    tokens: int | None = None
    """Training tokens (sequences x seq_len x steps)."""
    flops: float | None = None
    """Training FLOPs, turned into tokens by ``spec.train_flops_per_token()`` (no LM head)."""

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.flops is None):
            raise ArchscaleError("a Budget needs exactly one of tokens or flops "
                                 f"(got tokens={self.tokens}, flops={self.flops})")
        value = self.tokens if self.tokens is not None else self.flops
        if not value > 0:
            raise ArchscaleError(f"the budget must be positive (got {value})")

    def tokens_for(self, spec: ArchSpec) -> int:
        """Training tokens this budget buys for ``spec``."""
        if self.tokens is not None:
            return int(self.tokens)
        return int(self.flops // spec.train_flops_per_token())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        return cls(**data)


@dataclass(frozen=True)
class Recipe:
    """The optimizer recipe shared by every run of a study."""

    lr: float = 3e-3
    """Peak learning rate (for rule "power_n": at N = lr_ref_params; "mup": at mup_base_width)."""
    batch_size: int = 16
    """Sequences per optimizer step, across all devices (a multiple of the device count)."""
    warmup: float = 0.05
    """Linear warmup: a fraction of the run's steps if <= 1, else a number of tokens."""
    schedule: Literal["cosine", "wsd"] = "cosine"
    """Decay after warmup: cosine to min_lr_ratio, or warmup-stable-decay (linear final decay)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    decay_fraction: float = 0.2
    """WSD only: the final fraction of the steps over which the LR decays."""
    weight_decay: float = 0.1
    """Decoupled (AdamW) weight decay, applied to weight matrices and embeddings, not norms."""
    b1: float = 0.9
    """Adam first-moment decay."""
    b2: float = 0.95
    """Adam second-moment decay."""
    eps: float = 1e-8
    """Adam epsilon."""
    grad_clip: float = 1.0
    """Clip gradients to this global L2 norm."""
    eval_interval: float = 0.1
    """Validation every this fraction of the run if <= 1, else every this many tokens."""
    eval_tokens: int = 65536
    """Validation tokens (the study's shared windows) evaluated at each evaluation."""
    lr_rule: Literal["constant", "power_n", "mup"] = "constant"
    """How the LR follows the shape (see the module docstring)."""
    lr_ref_params: float = 1e6
    """power_n: the non-embedding N at which ``lr`` is the LR."""
    lr_exponent: float = -0.25
    """power_n: exponent of N / lr_ref_params."""
    mup_base_width: int = 64
    """mup: the d_model at which ``lr`` is the hidden matrices' LR."""
    batch_rule: Literal["constant", "power_n"] = "constant"
    """How the batch size follows the shape."""
    batch_ref_params: float = 1e6
    """batch power_n: the N at which ``batch_size`` is the batch."""
    batch_exponent: float = 0.0
    """batch power_n: exponent of N / batch_ref_params."""
    batch_multiple: int = 8
    """batch power_n: the scaled batch is rounded to a multiple of this (divisible by devices)."""

    def __post_init__(self) -> None:
        # YAML 1.1 reads 1.0e4 (no exponent sign) as text: say so before any comparison fails.
        text = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                if f.type in ("float", "int") and not isinstance(getattr(self, f.name), int | float)]
        if text:
            raise ArchscaleError(f"invalid Recipe: {', '.join(text)} must be a number (YAML reads "
                                 "1.0e4 as text: write 1.0e+4 or 10000)")
        problems = []
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be positive")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if self.schedule not in ("cosine", "wsd"):
            problems.append(f"schedule={self.schedule!r} must be 'cosine' or 'wsd'")
        if self.lr_rule not in ("constant", "power_n", "mup"):
            problems.append(f"lr_rule={self.lr_rule!r} must be 'constant', 'power_n' or 'mup'")
        if self.batch_rule not in ("constant", "power_n"):
            problems.append(f"batch_rule={self.batch_rule!r} must be 'constant' or 'power_n'")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            problems.append(f"decay_fraction={self.decay_fraction} must be in (0, 1]")
        if self.warmup < 0:
            problems.append(f"warmup={self.warmup} must be >= 0 (a fraction <= 1, or tokens)")
        if not self.eval_interval > 0:
            problems.append(f"eval_interval={self.eval_interval} must be > 0")
        if self.eval_tokens < 1:
            problems.append(f"eval_tokens={self.eval_tokens} must be >= 1")
        if not self.grad_clip > 0:
            problems.append(f"grad_clip={self.grad_clip} must be positive")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay} must be >= 0")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps > 0):
            problems.append(f"need 0 <= b1, b2 < 1 and eps > 0 (got {self.b1}, {self.b2}, {self.eps})")
        if self.mup_base_width < 1 or self.batch_multiple < 1:
            problems.append("mup_base_width and batch_multiple must be >= 1")
        if problems:
            raise ArchscaleError("invalid Recipe: " + "; ".join(problems))

    def resolved(self, spec: ArchSpec) -> Recipe:
        """The concrete recipe for ``spec``: scaling rules applied (idempotent)."""
        changes: dict[str, Any] = {}
        n = spec.params_nonembed
        if self.lr_rule == "power_n":
            changes.update(lr=self.lr * (n / self.lr_ref_params) ** self.lr_exponent,
                           lr_rule="constant")
        if self.batch_rule == "power_n":
            scaled = self.batch_size * (n / self.batch_ref_params) ** self.batch_exponent
            multiple = self.batch_multiple
            changes.update(batch_size=max(multiple, round(scaled / multiple) * multiple),
                           batch_rule="constant")
        return dataclasses.replace(self, **changes)

    def param_lr_scale(self, spec: ArchSpec, path: str) -> float:
        """Per-parameter LR factor: mup scales the hidden matrices by base width / d_model."""
        if self.lr_rule == "mup" and _is_hidden_matrix(path):
            return self.mup_base_width / spec.d_model
        return 1.0

    def steps_for(self, spec: ArchSpec, budget: Budget) -> int:
        """Optimizer steps of a run (the budget's tokens rounded to whole steps, at least 1)."""
        return max(1, round(budget.tokens_for(spec) / (self.batch_size * spec.seq_len)))

    def _steps_of(self, value: float, total_steps: int, spec: ArchSpec) -> int:
        """A fraction of the run (<= 1) or a number of tokens (> 1), in steps."""
        if value <= 1:
            return round(value * total_steps)
        return math.ceil(value / (self.batch_size * spec.seq_len))

    def warmup_steps(self, spec: ArchSpec, total_steps: int) -> int:
        return min(total_steps, self._steps_of(self.warmup, total_steps, spec))

    def eval_every(self, spec: ArchSpec, total_steps: int) -> int:
        """Steps between evaluations (at least 1); the last step is always evaluated."""
        return max(1, self._steps_of(self.eval_interval, total_steps, spec))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        reject_unknown_keys(cls, data)
        return cls(**data)


def _is_hidden_matrix(path: str) -> bool:
    """Attention and MLP weights (not embeddings, the LM head or norm scales)."""
    return "norm" not in path and "embed" not in path and "lm_head" not in path

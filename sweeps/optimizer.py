"""A Recipe as JAX: the learning-rate schedule (traced scalars) and the AdamW optimizer.

The schedule is computed inside the compiled step from traced scalars (``ScheduleArgs``), so
changing the LR, warmup, run length or schedule never recompiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from archscale.arch.spec import ArchSpec
from archscale.sweeps.recipe import Recipe


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ScheduleArgs:
    """The LR schedule as fp32 scalars (host NumPy values, traced inside the step): one compiled
    step serves every LR and length."""

    peak_lr: ArrayLike
    """Peak learning rate."""
    warmup_steps: ArrayLike
    """Steps of linear warmup from 0."""
    total_steps: ArrayLike
    """Steps of the whole run."""
    decay_start: ArrayLike
    """Step where the decay begins (== warmup_steps for cosine)."""
    min_lr_ratio: ArrayLike
    """Final LR / peak LR."""
    cosine: ArrayLike
    """1.0 for cosine decay, 0.0 for WSD's linear decay."""


def schedule_args(recipe: Recipe, spec: ArchSpec, total_steps: int) -> ScheduleArgs:
    """``recipe``'s LR schedule for a run of ``total_steps`` as ``ScheduleArgs``."""
    warmup = recipe.warmup_steps(spec, total_steps)
    decay_start = (total_steps - round(recipe.decay_fraction * total_steps)
                   if recipe.schedule == "wsd" else warmup)
    # NumPy scalars: host values, so building them compiles nothing (jnp scalars would).
    return ScheduleArgs(
        peak_lr=np.float32(recipe.lr), warmup_steps=np.float32(warmup),
        total_steps=np.float32(total_steps), decay_start=np.float32(max(decay_start, warmup)),
        min_lr_ratio=np.float32(recipe.min_lr_ratio),
        cosine=np.float32(recipe.schedule == "cosine"))


def learning_rate(step: jax.Array, s: ScheduleArgs) -> jax.Array:
    """LR of the update with 0-based index ``step`` (traced)."""
    step = step.astype(jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / jnp.maximum(s.warmup_steps, 1.0))
    progress = jnp.clip((step - s.decay_start) / jnp.maximum(s.total_steps - s.decay_start, 1.0),
                        0.0, 1.0)
    decay = jnp.where(s.cosine > 0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)), 1.0 - progress)
    return s.peak_lr * warm * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * decay)


def make_optimizer(recipe: Recipe, spec: ArchSpec) -> optax.GradientTransformation:
    """Clipped AdamW with every numeric hyperparameter held in the optimizer state.

    The learning rate in the state is overwritten each step from ``learning_rate``; mup's
    per-matrix LR factors are applied to the final updates (AdamW's decay scales with the LR).
    """

    def decay_mask(params):
        return _path_map(lambda path, _: "norm" not in path, params)

    def adamw(learning_rate, b1, b2, eps, weight_decay, grad_clip):
        parts = [optax.clip_by_global_norm(grad_clip),
                 optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=decay_mask)]
        if recipe.lr_rule == "mup":
            parts.append(optax.stateless(lambda updates, params: _path_map(
                lambda path, u: u * recipe.param_lr_scale(spec, path), updates)))
        return optax.chain(*parts)

    return optax.inject_hyperparams(adamw)(
        learning_rate=0.0, b1=recipe.b1, b2=recipe.b2, eps=recipe.eps,
        weight_decay=recipe.weight_decay, grad_clip=recipe.grad_clip)


def _path_map(fn, tree):
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(jax.tree_util.keystr(p), x), tree)

"""The compiled functions of a run: the initial state, a chunk of optimizer steps, and the
validation pass.

One ``jax.jit`` per function over ``nnx.split`` state (not ``nnx.jit``), compiled ahead of time
so compile time is measured apart from training. The initial state (weights, optimizer state,
step counter) is one compiled call with the seed traced, so the repeats of a shape with other
seeds reuse it, and no eager op (key creation, zeros) compiles anything of its own. A chunk runs
up to ``k`` optimizer steps in one dispatch (``lax.scan`` over k batches; steps past
``n_active`` are skipped by ``lax.cond``), so tiny models are not bound by dispatch overhead and
any run length, evaluation interval or last partial chunk reuses the same executable. The train
state is donated. Everything numeric about the recipe (the LR schedule as ``ScheduleArgs``, the
AdamW hyperparameters held in the optimizer state) is traced: one executable serves every LR,
run length and schedule of a shape, and executables are kept per process, so an LR sweep or a
study compiles each shape once: three executables a shape (``init_state``,
``StepFunctions.chunk``, ``StepFunctions.evaluate``), whatever its budgets and seeds.

Sharding (``sweeps.sharding``): the initial state comes out of its compiled call already laid
out over the mesh (``out_shardings``; every device computes its own shards, nothing is copied
from one device to the others), and the chunk keeps that layout (its in and out shardings are
the state arrays' own). A step gathers every weight whole (``_model``) and keeps the batch
split, so FSDP divides the resident state (weights, Adam moments) by F; within a step all layers
are gathered at once, not one at a time, since the layer scan is the model's. Likewise the model
draws all its weights as one flat normal (``arch.model``), which XLA cannot split the way the
weights are: during the init call each device briefly holds a whole copy of the parameters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from archscale.arch.model import Transformer
from archscale.arch.runtime import compiler_options
from archscale.arch.spec import ArchSpec
from archscale.sweeps.optimizer import ScheduleArgs, learning_rate, make_optimizer, schedule_args
from archscale.sweeps.recipe import Recipe
from archscale.sweeps.sharding import batch_sharded, replicated, state_sharding

_MAX_CACHED = 8


@dataclass(frozen=True)
class StepFunctions:
    """The executables of one (shape, batch, chunk length, mesh, dtype, optimizer form)."""

    chunk: Any
    """(state, rest, batches_KxBxT1, ScheduleArgs, n_active) -> (state, losses_K); donates state."""
    evaluate: Any
    """(params, rest, windows_MxBxT1, weights_MxB) -> (sum of weighted per-window mean loss,
    likewise accuracy), the M validation batches in one dispatch."""
    compile_time_s: float
    """Seconds spent compiling both (0.0 when taken from the process cache)."""


_cache: OrderedDict[tuple, StepFunctions] = OrderedDict()
_init_cache: OrderedDict[tuple, tuple[Any, dict[str, Any]]] = OrderedDict()


def _optimizer_form(recipe: Recipe) -> tuple:
    """What the optimizer's initial state depends on (the hyperparameters it holds, muP)."""
    return (recipe.b1, recipe.b2, recipe.eps, recipe.weight_decay, recipe.grad_clip,
            recipe.lr_rule == "mup", recipe.mup_base_width)


def fresh_state(params: Any, tx: optax.GradientTransformation) -> dict[str, Any]:
    """The train state of fresh ``params``: {"params", "opt", "step"}, what checkpoints hold."""
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def _init_function(spec: ArchSpec, recipe: Recipe, compute_dtype, mesh: Mesh):
    """(jitted seed -> (state, rest), box that holds the graphdef once traced), kept per process."""
    key = (spec, _optimizer_form(recipe), jnp.dtype(compute_dtype).name, _mesh_key(mesh))
    if key in _init_cache:
        _init_cache.move_to_end(key)
        return _init_cache[key]
    box: dict[str, Any] = {}
    tx = make_optimizer(recipe, spec)

    def init(seed):
        model = Transformer(spec, rngs=nnx.Rngs(jax.random.key(seed)), compute_dtype=compute_dtype)
        box["graphdef"], params, rest = nnx.split(model, nnx.Param, ...)
        return fresh_state(params, tx), rest

    # Traced, not compiled: the state's shapes give its layout before any of it exists.
    state, rest = jax.eval_shape(init, np.uint32(0))
    shardings = (state_sharding(state, mesh), jax.tree.map(lambda _: replicated(mesh), rest))
    _init_cache[key] = (jax.jit(init, out_shardings=shardings), box)
    if len(_init_cache) > _MAX_CACHED:
        _init_cache.popitem(last=False)
    return _init_cache[key]


def _mesh_key(mesh: Mesh) -> tuple:
    return tuple(mesh.shape.items()), tuple(d.id for d in mesh.devices.flat)


def init_state(spec: ArchSpec, recipe: Recipe, seed: int, compute_dtype, mesh: Mesh):
    """(graphdef, state, rest): fresh params and optimizer state, laid out over ``mesh``
    (``sharding.state_sharding``: split over its fsdp axis, replicated over data).

    ``state`` is {"params", "opt", "step"}; ``rest`` holds any non-parameter model variables.
    One compiled call per shape (the seed is an argument); the weights are those of
    ``Transformer(spec, rngs=nnx.Rngs(seed))``.
    """
    init, box = _init_function(spec, recipe, compute_dtype, mesh)
    state, rest = init(np.uint32(seed))
    return box["graphdef"], state, rest


def token_losses(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy (nats) and argmax correctness, fused: no log-softmax tensor."""
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    correct_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
    return lse_BxT - target_BxT, correct_BxT


def _model(graphdef, params, rest, gathered: NamedSharding) -> Transformer:
    """The model with every weight gathered whole (FSDP): each device then runs whole
    contractions on its slice of the batch, as on one device. Left to itself, XLA split the
    contractions instead and gathered every activation of the whole batch."""
    return nnx.merge(graphdef, jax.lax.with_sharding_constraint(params, gathered), rest)


def _loss(graphdef, params, rest, batch_BxT1, gathered: NamedSharding):
    model = _model(graphdef, params, rest, gathered)
    nll_BxT, _ = token_losses(model(batch_BxT1[:, :-1]), batch_BxT1[:, 1:])
    return jnp.mean(nll_BxT)


def _build(graphdef, tx: optax.GradientTransformation, k: int, gathered: NamedSharding):
    grad_fn = jax.value_and_grad(lambda p, r, b: _loss(graphdef, p, r, b, gathered))

    def chunk(state, rest, batches_KxBxT1, sched: ScheduleArgs, n_active):
        def step(state, batch_BxT1):
            loss, grads = grad_fn(state["params"], rest, batch_BxT1)
            opt = state["opt"]
            opt.hyperparams["learning_rate"] = learning_rate(state["step"], sched)
            updates, opt = tx.update(grads, opt, state["params"])
            params = optax.apply_updates(state["params"], updates)
            return {"params": params, "opt": opt, "step": state["step"] + 1}, loss

        if k == 1:
            state, loss = step(state, batches_KxBxT1[0])
            return state, loss[None]

        def maybe_step(state, xs):
            batch_BxT1, active = xs
            return jax.lax.cond(active, step, lambda s, _: (s, jnp.zeros((), jnp.float32)),
                                state, batch_BxT1)

        return jax.lax.scan(maybe_step, state, (batches_KxBxT1, jnp.arange(k) < n_active))

    def evaluate(params, rest, windows_MxBxT1, weights_MxB):
        model = _model(graphdef, params, rest, gathered)

        def batch(sums, xs):
            windows_BxT1, weights_B = xs
            nll_BxT, correct_BxT = token_losses(model(windows_BxT1[:, :-1]), windows_BxT1[:, 1:])
            return (sums[0] + jnp.sum(jnp.mean(nll_BxT, axis=1) * weights_B),
                    sums[1] + jnp.sum(jnp.mean(correct_BxT, axis=1) * weights_B)), None

        zero = jnp.zeros((), jnp.float32)
        return jax.lax.scan(batch, (zero, zero), (windows_MxBxT1, weights_MxB))[0]

    return chunk, evaluate


def step_functions(spec: ArchSpec, recipe: Recipe, *, k: int, eval_batches: int, mesh: Mesh,
                   compute_dtype, graphdef, state, rest) -> StepFunctions:
    """The compiled chunk and eval functions for this run (from the process cache if present)."""
    key = (spec, recipe.batch_size, k, eval_batches, _mesh_key(mesh),
           jnp.dtype(compute_dtype).name, recipe.lr_rule == "mup", recipe.mup_base_width)
    if key in _cache:
        _cache.move_to_end(key)
        return StepFunctions(_cache[key].chunk, _cache[key].evaluate, 0.0)
    rep, data = replicated(mesh), batch_sharded(mesh, batch_axis=1)
    state_sh, rest_sh = (jax.tree.map(lambda x: x.sharding, tree) for tree in (state, rest))
    chunk, evaluate = _build(graphdef, make_optimizer(recipe, spec), k, rep)
    B, T = recipe.batch_size, spec.seq_len
    batches = jax.ShapeDtypeStruct((k, B, T + 1), jnp.int32, sharding=data)
    sched = schedule_args(recipe, spec, 1)
    start = time.perf_counter()
    chunk_exe = jax.jit(chunk, in_shardings=(state_sh, rest_sh, data, rep, rep),
                        out_shardings=(state_sh, rep), donate_argnums=0).lower(
                            state, rest, batches, sched, np.int32(k)).compile(
                                compiler_options=compiler_options())
    windows = jax.ShapeDtypeStruct((eval_batches, B, T + 1), jnp.int32, sharding=data)
    weights = jax.ShapeDtypeStruct((eval_batches, B), jnp.float32, sharding=data)
    eval_exe = jax.jit(evaluate, in_shardings=(state_sh["params"], rest_sh, data, data),
                       out_shardings=rep).lower(state["params"], rest, windows, weights).compile(
                           compiler_options=compiler_options())
    compiled = StepFunctions(chunk_exe, eval_exe, time.perf_counter() - start)
    _cache[key] = compiled
    if len(_cache) > _MAX_CACHED:
        _cache.popitem(last=False)
    return compiled

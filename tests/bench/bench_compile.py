"""Compile time against depth: the train step and the decode loop, 4 vs 24 layers.

    python tests/bench/bench_compile.py [--d-model 128] [--layers 4 24]

The forward and backward passes scan over the stacked layers, so the train step's compile time
should barely grow with depth (target: 24 layers in about the time of 4). The decode loop
(``Transformer.greedy_decode``) unrolls its layers on purpose: each reads and updates its own
cache buffer in place, where a scan would copy a stacked cache's layer at every step (about 3x
slower decoding on CPU), so its compile time grows with depth; the figures show by how much.

The persistent compilation cache is off here (it would make repeat runs free), and every
figure is the ahead-of-time ``.compile()`` of a freshly lowered function.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
from flax import nnx

from archscale.arch import ArchSpec
from archscale.arch.model import Transformer
from archscale.arch.runtime import default_compute_dtype
from archscale.sweeps.recipe import Recipe
from archscale.sweeps.sharding import data_mesh
from archscale.sweeps.train_step import init_state, step_functions
from archscale.sweeps.trainer import auto_steps_per_dispatch

BATCH = 8
DECODE = dict(batch=8, max_len=256, steps=32)


def spec_for(d_model: int, n_layers: int) -> ArchSpec:
    return ArchSpec(vocab_size=256, seq_len=128, n_layers=n_layers, d_model=d_model,
                    n_heads=4, n_kv_heads=2, head_dim=d_model // 4, d_ff=3 * d_model)


def train_compile_s(spec: ArchSpec) -> tuple[float, int]:
    """Seconds to compile the chunk of train steps (and the eval pass); the chunk length."""
    recipe = Recipe(batch_size=BATCH).resolved(spec)
    dtype = default_compute_dtype()
    mesh = data_mesh()
    graphdef, state, rest = init_state(spec, recipe, 0, dtype, mesh)
    k = auto_steps_per_dispatch(spec, BATCH, dtype)
    fns = step_functions(spec, recipe, k=k, eval_batches=2, mesh=mesh, compute_dtype=dtype,
                         graphdef=graphdef, state=state, rest=rest)
    return fns.compile_time_s, k


def decode_compile_s(spec: ArchSpec) -> float:
    """Seconds to compile a greedy_decode loop of DECODE["steps"] tokens."""
    model = Transformer(spec, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    batch, max_len, steps = DECODE["batch"], DECODE["max_len"], DECODE["steps"]
    cache = jax.eval_shape(lambda s: nnx.merge(graphdef, s).init_cache(batch, max_len), state)
    tokens_B = jax.ShapeDtypeStruct((batch,), jnp.int32)
    decode = jax.jit(lambda s, t, c: nnx.merge(graphdef, s).greedy_decode(t, c, steps),
                     donate_argnums=2)
    lowered = decode.lower(state, tokens_B, cache)
    start = time.perf_counter()
    lowered.compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, nargs=2, default=[4, 24])
    args = parser.parse_args()
    shallow, deep = (spec_for(args.d_model, n) for n in args.layers)
    print(f"device {jax.devices()[0].device_kind}  d_model {args.d_model}  train batch {BATCH} x "
          f"seq {shallow.seq_len}  decode batch {DECODE['batch']}, {DECODE['steps']} steps")
    # Warm-up: the first compilation in a process pays one-off XLA start-up costs.
    train_compile_s(spec_for(args.d_model, 1))

    rows = {}
    for name, measure in (("train step", lambda s: train_compile_s(s)[0]),
                          ("decode loop", decode_compile_s)):
        rows[name] = [measure(spec) for spec in (shallow, deep)]
    for name, (t_shallow, t_deep) in rows.items():
        print(f"{name:12s} compile: {args.layers[0]:2d} layers {t_shallow:6.2f} s   "
              f"{args.layers[1]:2d} layers {t_deep:6.2f} s   ratio {t_deep / t_shallow:.2f}")
    print("target: train step ratio about 1 (scan over layers); decode unrolls its layers")


if __name__ == "__main__":
    main()

"""Training's LLVM level on CPU: compile time and step time, -O3 (XLA's default, what throughput
is measured on) against the level training compiles at (``compiler_options()``).

    python tests/bench/bench_cpu_codegen.py [--shapes 5,8,2,1,32 3,36,8,4,32 6,256,4,2,1024]

Each shape is n_layers,d_model,n_heads,n_kv_heads,d_ff. Both builds of one train chunk are
compiled in one process (compile time as process CPU seconds, which the other load on a shared
machine disturbs less than wall time), then called in turn, so load drifts hit both alike. The
persistent compilation cache is off: every figure is a fresh ``.compile()``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from archscale.arch import ArchSpec
from archscale.arch.runtime import compiler_options
from archscale.sweeps.optimizer import make_optimizer
from archscale.sweeps.recipe import Recipe
from archscale.sweeps.sharding import batch_sharded, make_mesh, replicated
from archscale.sweeps.train_step import _build, init_state, schedule_args

BUILDS = {"-O3 (served)": True, "training": False}


def spec_of(shape: str) -> ArchSpec:
    n_layers, d_model, n_heads, n_kv_heads, d_ff = map(int, shape.split(","))
    seq_len, head_dim = (32, 4) if d_model < 128 else (128, d_model // n_heads)
    return ArchSpec(vocab_size=256, seq_len=seq_len, n_layers=n_layers, d_model=d_model,
                    n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff)


def measure(spec: ArchSpec, steps: int, calls: int) -> dict[str, tuple[float, float]]:
    """Per build: (compile CPU seconds, median milliseconds per optimizer step)."""
    batch = 8 if spec.d_model < 128 else 16
    recipe = Recipe(lr=3e-2, batch_size=batch).resolved(spec)
    mesh = make_mesh(None)
    graphdef, state, rest = init_state(spec, recipe, 0, jnp.float32, mesh)
    chunk, _ = _build(graphdef, make_optimizer(recipe, spec), steps, replicated(mesh))
    sched = schedule_args(recipe, spec, 1000)
    tokens = np.random.default_rng(0).integers(0, 256, (steps, batch, spec.seq_len + 1))
    batches = jax.device_put(jnp.asarray(tokens, jnp.int32), batch_sharded(mesh, batch_axis=1))
    lowered = jax.jit(chunk).lower(state, rest, batches, sched, np.int32(steps))
    compiled, compile_s, states = {}, {}, {}
    for name, served in BUILDS.items():
        start = time.process_time()
        compiled[name] = lowered.compile(compiler_options=compiler_options(served=served))
        compile_s[name] = time.process_time() - start
        states[name] = init_state(spec, recipe, 0, jnp.float32, mesh)[1]
    seconds = {name: [] for name in BUILDS}
    for _ in range(calls + 1):  # the first call of each is a warm-up
        for name, fn in compiled.items():
            start = time.perf_counter()
            states[name], losses = fn(states[name], rest, batches, sched, np.int32(steps))
            jax.block_until_ready(losses)
            seconds[name].append(time.perf_counter() - start)
    return {name: (compile_s[name], 1e3 * float(np.median(seconds[name][1:])) / steps)
            for name in BUILDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["5,8,2,1,32", "3,36,8,4,32",
                                                        "6,256,4,2,1024"])
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    print(f"training compiles with {compiler_options()}")
    print(f"{'shape (L,d,h,kv,ff)':<22}{'build':<14}{'compile CPU s':>14}{'ms/step':>10}")
    for shape in args.shapes:
        spec = spec_of(shape)
        steps = 16 if spec.d_model < 128 else 2
        for name, (compile_s, step_ms) in measure(spec, steps, args.calls).items():
            print(f"{shape:<22}{name:<14}{compile_s:>14.2f}{step_ms:>10.3f}")


if __name__ == "__main__":
    main()

"""Hand-written Huber-log derivatives (laws/chinchilla.py) against jax.vmap(jax.hessian), in one run.

Hoffmann et al.'s runs, the 4,500-start grid of the Chinchilla fit. Issue 16 asked to prefer JAX's
derivatives if they are as fast. Measured on 2 CPU cores: about 20x slower per evaluation, and a
recompile of 2-3 s for every batch size, which changes as starts converge and leave the batch.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from archscale.laws import chinchilla

EPOCH_CSV = Path(__file__).resolve().parents[1] / "data" / "validation" / "chinchilla_epoch.csv"


def best_seconds(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    raw = pd.read_csv(EPOCH_CSV)
    n_params = raw["Model Size"].to_numpy(float)
    log_n, log_d = np.log(n_params), np.log(raw["Training FLOP"].to_numpy(float) / (6 * n_params))
    log_loss = np.log(raw["loss"].to_numpy(float))
    objective = chinchilla.HuberLogObjective(log_n, log_d, log_loss)
    starts = chinchilla.grid_starts()
    rows = np.arange(len(starts))
    delta = chinchilla.HUBER_DELTA

    def huber_log(p):
        a, b, e, alpha, beta = p
        terms = jnp.stack([a - alpha * log_n, b - beta * log_d, jnp.full_like(log_n, e)])
        resid = jax.nn.logsumexp(terms, axis=0) - log_loss
        clipped = jnp.clip(resid, -delta, delta)
        return jnp.sum(clipped * (resid - clipped / 2))

    with_derivatives = jax.jit(jax.vmap(
        lambda p: (huber_log(p), jax.grad(huber_log)(p), jax.hessian(huber_log)(p))))
    start = time.perf_counter()
    _, _, hessian_jax = jax.block_until_ready(with_derivatives(jnp.asarray(starts)))
    compile_s = time.perf_counter() - start
    hand = best_seconds(lambda: objective.value(starts, rows))
    by_jax = best_seconds(lambda: jax.block_until_ready(with_derivatives(jnp.asarray(starts))))
    _, (_, hessian_hand) = objective.value(starts, rows)
    print(f"{len(starts)} starts x {len(n_params)} runs: hand-written {hand * 1e3:.1f} ms, "
          f"jax.vmap(jax.hessian) {by_jax * 1e3:.1f} ms ({by_jax / hand:.1f}x), first call "
          f"{compile_s:.2f} s; max |H_jax - H_hand| "
          f"{np.max(np.abs(np.asarray(hessian_jax) - hessian_hand)):.1e}")
    for size in (4000, 3000):  # the batch shrinks as starts converge: each size recompiles
        start = time.perf_counter()
        jax.block_until_ready(with_derivatives(jnp.asarray(starts[:size])))
        print(f"batch of {size}: {time.perf_counter() - start:.2f} s (compile + one evaluation)")


if __name__ == "__main__":
    main()

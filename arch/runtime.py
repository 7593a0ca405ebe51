"""Process-wide JAX settings: the persistent compilation cache and the compute dtype."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from archscale import environment

_configured = False


def configure_jax() -> None:
    """Turn on the persistent compilation cache once per process.

    The cache lives in $ARCHSCALE_JAX_CACHE (default $ARCHSCALE_CACHE/jax, archscale.environment) so repeated runs
    of the same shapes (tests, resumed studies, workers) skip XLA compilation.
    """
    global _configured
    if _configured:
        return
    cache_dir = environment.jax_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _configured = True


def default_compute_dtype() -> jnp.dtype:
    """bf16 compute on accelerators, fp32 on CPU; $ARCHSCALE_COMPUTE_DTYPE overrides.

    Parameters always stay fp32; this is the one setting that picks the matmul dtype.
    """
    override = environment.get(environment.COMPUTE_DTYPE)
    if override:
        return jnp.dtype(override)
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)


# XLA:CPU's YNNPACK fusions ran a training step (d_model 256, 6 layers, 4096 tokens) 10-25%
# slower than its own Eigen dots and loop fusions on the 2-core CPU: the step's GEMMs have
# thousands of rows and its softmax-gradient reductions are large. Decode's 32-row GEMMs on
# in x out weights (``arch.cpu_backend``'s serving copies) ran at 73-90 GFLOP/s on Eigen against
# 57-66 on YNNPACK (weights out of cache), so every compile turns it off.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# XLA:CPU runs LLVM at -O3 by default; its GEMMs are library calls that no level changes. At -O2
# a demo-sized train step (d_model 8-36) compiled in 37-43% less CPU time (7.5 -> 4.3 s, 9.3 ->
# 5.9 s) and ran within 5% (1.98 vs 1.88, 4.99 vs 5.11 ms a step); at d_model 256, 6 layers, in
# the same time (7.5 vs 7.6 s) and 2% slower (1232 vs 1262 ms), about the run-to-run noise
# (tests/bench/bench_cpu_codegen.py). A small-model sweep is mostly compilation, so training,
# evaluation and sampling compile at -O2; throughput is measured on the default -O3 build, the
# code a CPU deployment would serve.
_CPU_UNTIMED_OPTIONS = {**_CPU_OPTIONS, "xla_backend_optimization_level": "2"}


@functools.cache
def compiler_options(*, served: bool = False) -> dict[str, str]:
    """XLA options for compiling training, eval and sampling, or with ``served`` the prefill and
    decode whose throughput is measured ({} where none apply).

    An XLA that does not know an option rejects the compile; the options are then dropped
    (checked once with a tiny function) rather than failing every run.
    """
    if jax.default_backend() != "cpu":
        return {}
    options = _CPU_OPTIONS if served else _CPU_UNTIMED_OPTIONS
    try:
        jax.jit(jnp.sum).lower(jnp.ones(2)).compile(compiler_options=options)
    except Exception:  # any rejection means: compile without them
        return {}
    return dict(options)

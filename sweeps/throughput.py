"""Inference throughput of a shape: prefill and decode tokens/s beside their roofline estimates.

The setting mirrors the paper's long-prompt serving measurement (a batch of long prompts, then
generation with the cache holding them), scaled to the device: batch 8 x context 512 on CPU,
batch 64 x context 2048 on accelerators (``default_setting``). Random weights are used: the
speed of a shape does not depend on the values.

* prefill: one batch of ``context``-token prompts through ``Transformer.prefill`` (logits of the
  last position only, as a server needs), tokens/s = batch * context / seconds.
* decode: ``decode_tokens`` greedy steps inside ONE compiled ``fori_loop``
  (``Transformer.greedy_decode``), the cache donated and updated in place, starting with
  ``context`` cached tokens; tokens/s = batch * steps / s. It runs on the platform's serving
  backend (``serving.serving_backend``: native kernels on CPU where they build, else XLA),
  which every result names (``backend``), since backends differ in speed.

Three compiled functions a shape: ``setup`` (random weights, their per-layer serving layout
and an empty cache, in one call), prefill and decode. Both are timed after a warm-up call
(compilation) as the fastest of ``repeats`` calls (the median call is recorded beside it): other
processes sharing the device only ever add time, so the fastest call is the figure that repeats. Both keep calling until ``min_seconds`` of calls
are timed: a small shape's decode call takes ~0.1 s on CPU and its prefill a few milliseconds,
and on a shared 2-core VM single calls spread +-15% (p10 to p90), so the fastest of a handful
says little; the fastest over seconds of calls comes closer to the undisturbed time.
Laws compare shapes by their throughput ratios, and load on a shared machine drifts by 20-30%
over minutes, moving shapes measured at different times apart. ``compare_throughput`` measures
several shapes in one process with their calls interleaved (one call of each per round) and
reports each shape's speed relative to the first as the median of per-round ratios, which the
load two neighbouring calls share cancels out of.
Rooflines: prefill time >= max(FLOPs / peak FLOP/s, bytes / bandwidth) where FLOPs are 2N per
token, causal attention and one output projection per prompt, bytes the weights plus the
written cache; a decode step reads the decode weights (N and the output projection) and the
cache at its mean length and does 2N + attention + output projection FLOPs per token; its
roofline time is the larger of the two quotients. ``*_fraction`` is measured / roofline.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archscale.arch.errors import ArchscaleError, reject_unknown_keys
from archscale.arch.model import KVCache, Transformer
from archscale.arch.runtime import compiler_options, default_compute_dtype
from archscale.arch.serving import ServingBackend, serving_backend
from archscale.arch.spec import ArchSpec, mean_decode_context
from archscale.sweeps import hardware
from archscale.sweeps.timing import TIMING

_OLD_BACKENDS = {"archscale-cpu-kernel": "cpu-kernels",
                 "archscale-cpu-kernel (attention only)": "cpu-kernels (attention only)"}
"""``decode_kernels`` of results written before ``backend`` -> their backend."""


@dataclass(frozen=True)
class ThroughputResult:
    """One throughput measurement of one shape, with its roofline context."""

    spec: dict[str, Any]
    """The measured ArchSpec as a dict."""
    batch: int
    """Sequences decoded together."""
    context: int
    """Prompt tokens per sequence (cached before decoding starts)."""
    decode_tokens: int
    """Generated tokens per sequence in the timed decode loop."""
    repeats: int
    """Timed calls at least; figures are from the fastest."""
    dtype: str
    """Compute, weight and cache dtype."""
    device_kind: str
    """The device measured on."""
    prefill_tokens_per_s: float
    """Prompt tokens processed per second (the fastest call)."""
    decode_tokens_per_s: float
    """Generated tokens per second, all sequences together (the fastest call)."""
    prefill_roofline_tokens_per_s: float
    """Upper bound on prefill tokens/s from FLOPs and bytes against the device peaks."""
    decode_roofline_tokens_per_s: float
    """Upper bound on decode tokens/s from bytes and FLOPs against the device peaks."""
    decode_bound: str
    """Which limit sets the decode roofline: 'memory' or 'compute'."""
    decode_bytes_per_step: int
    """Bytes one decode step must read (weights plus the cache at its mean length)."""
    peak_flops: float
    """Device FLOP/s used for the rooflines."""
    memory_bandwidth: float
    """Device bytes/s used for the rooflines."""
    compile_seconds: float
    """Warm-up time of the prefill and decode functions (compilation plus one run)."""
    decode_calls: int = 0
    """Timed decode calls: ``repeats``, or more to fill ``min_seconds`` (0: not recorded)."""
    prefill_calls: int = 0
    """Timed prefill calls, likewise (0: not recorded; before it was recorded, ``repeats``)."""
    prefill_tokens_per_s_median: float | None = None
    """Prefill tokens/s of the median call (None: not recorded)."""
    decode_tokens_per_s_median: float | None = None
    """Decode tokens/s of the median call (None: not recorded)."""
    backend: str = "xla"
    """The serving backend decode ran on: 'cpu-kernels' (``arch.cpu_backend``) or 'xla';
    'cpu-kernels (attention only)' for results measured before decode's matmuls had a kernel."""

    @property
    def prefill_fraction(self) -> float:
        return self.prefill_tokens_per_s / self.prefill_roofline_tokens_per_s

    @property
    def decode_fraction(self) -> float:
        return self.decode_tokens_per_s / self.decode_roofline_tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **{name: getattr(self, name) for name in DERIVED}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThroughputResult:
        # Older results name what decode ran on in `decode_kernels`, or before the matmul kernel
        # in `decode_attention` (the attention kernel alone): read into `backend`, then dropped.
        data = {k: v for k, v in data.items() if k not in DERIVED}  # to_dict's, recomputed
        attention = data.pop("decode_attention", "xla")
        kernels = data.pop("decode_kernels", "archscale-cpu-kernel (attention only)"
                           if attention != "xla" else "xla")
        data = {"backend": _OLD_BACKENDS.get(kernels, kernels), **data}
        # unknown keys are refused, as RunResult.from_dict refuses them (one behaviour)
        reject_unknown_keys(cls, data)
        return cls(**data)


DERIVED = ("prefill_fraction", "decode_fraction")
"""Properties ``ThroughputResult.to_dict`` adds for readers; ``from_dict`` recomputes them."""

_COMPUTE_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
                   "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def compute_dtype(dtype=None) -> jnp.dtype:
    """The dtype to measure in: a name ('bf16', 'float32', ...) or a dtype; None: the default."""
    if dtype is None:
        return default_compute_dtype()
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in _COMPUTE_DTYPES:
        raise ArchscaleError(f"dtype {dtype!r} is not a floating compute dtype: use one of "
                             f"{sorted(_COMPUTE_DTYPES)}")
    return jnp.dtype(_COMPUTE_DTYPES[name])


def default_setting() -> tuple[int, int]:
    """(batch, context): long-prompt serving, scaled down on CPU."""
    return (8, 512) if jax.default_backend() == "cpu" else (64, 2048)


def roofline(spec: ArchSpec, *, batch: int, context: int, decode_tokens: int, dtype,
             peak: float, bandwidth: float) -> dict[str, Any]:
    """Prefill and decode roofline tokens/s (conventions in the module docstring)."""
    name = jnp.dtype(dtype).name
    prefill_flops, prefill_bytes = spec.prefill_cost(batch, context, name)
    prefill_s = max(prefill_flops / peak, prefill_bytes / bandwidth)
    step_flops, step_bytes = spec.decode_step_cost(
        batch, mean_decode_context(context, decode_tokens), name)
    memory_s, compute_s = step_bytes / bandwidth, step_flops / peak
    return {
        "prefill_roofline_tokens_per_s": batch * context / prefill_s,
        "decode_roofline_tokens_per_s": batch / max(memory_s, compute_s),
        "decode_bound": "memory" if memory_s >= compute_s else "compute",
        "decode_bytes_per_step": step_bytes,
    }


@dataclass(frozen=True)
class ThroughputComparison:
    """Several shapes measured together in one setting, their calls interleaved."""

    results: tuple[ThroughputResult, ...]
    """Each shape's measurement, in the order given."""
    decode_ratios: tuple[float, ...]
    """Each shape's decode tokens/s relative to the first: the median over rounds of the ratio
    of its call and the first shape's call in the same round."""
    prefill_ratios: tuple[float, ...]
    """The same for prefill tokens/s."""

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results],
                "decode_ratios": list(self.decode_ratios),
                "prefill_ratios": list(self.prefill_ratios)}


@dataclass(frozen=True)
class _Compiled:
    """One shape compiled for one setting, with its cache: the calls to time."""

    spec: ArchSpec
    compile_seconds: float
    prefill: Callable[[], Any]
    """Prefill ``context`` tokens into the cache rewound to empty."""
    decode: Callable[[], Any]
    """``decode_tokens`` steps from the cache rewound to ``context`` tokens."""


def _compile(spec: ArchSpec, *, batch: int, context: int, decode_tokens: int, dtype,
             seed: int, backend: ServingBackend) -> _Compiled:
    box: dict[str, Any] = {}

    def setup(seed):
        # Weights stored in the compute dtype: a decode step reads them once, with no cast per
        # step. Per-layer weights are sliced out of the stacks once, as a server does when it
        # loads them. One compiled call builds the weights, their serving layout and the cache.
        model = Transformer(spec, rngs=nnx.Rngs(jax.random.key(seed)), compute_dtype=dtype,
                            param_dtype=dtype)
        box["graphdef"], state = nnx.split(model)
        return (state, model.layer_weights(backend),
                model.init_cache(batch, context + decode_tokens))

    def prefill(state, weights, tokens_BxT, cache):
        logits_Bx1xV, cache = nnx.merge(box["graphdef"], state).prefill(
            tokens_BxT, cache, last_only=True, weights=weights)
        return jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32), cache

    def decode(state, weights, tokens_B, cache):
        return nnx.merge(box["graphdef"], state).greedy_decode(tokens_B, cache, decode_tokens,
                                                               weights=weights)

    state, weights, cache = jax.jit(setup)(np.uint32(seed))
    prompt_BxT = np.random.default_rng(seed).integers(0, spec.vocab_size, (batch, context),
                                                      dtype=np.int32)
    start = time.perf_counter()
    # Donation lets XLA write the cache in place instead of copying it every call.
    prefill = jax.jit(prefill, donate_argnums=3).lower(
        state, weights, prompt_BxT, cache).compile(compiler_options=compiler_options(served=True))
    decode = jax.jit(decode, donate_argnums=3).lower(
        state, weights, jax.ShapeDtypeStruct((batch,), jnp.int32), cache).compile(
            compiler_options=compiler_options(served=True))
    first_B, cache = jax.block_until_ready(prefill(state, weights, prompt_BxT, cache))
    _, cache = jax.block_until_ready(decode(state, weights, first_B, cache))
    compile_seconds = time.perf_counter() - start
    held = [cache]  # one cache, donated to each call and replaced by its result

    def rewound(length: int) -> KVCache:
        # Every timed call starts from the same state; slots past `length` are masked garbage.
        return KVCache(held[0].k_BxKxSxH, held[0].v_BxKxSxH, np.int32(length))

    def prefill_call() -> KVCache:
        _, held[0] = prefill(state, weights, prompt_BxT, rewound(0))
        return held[0]

    def decode_call() -> KVCache:
        _, held[0] = decode(state, weights, first_B, rewound(context))
        return held[0]

    return _Compiled(spec, compile_seconds, prefill_call, decode_call)


def paired_ratio(reference_seconds: list[float], seconds: list[float | None]) -> float:
    """Speed relative to the reference from calls timed in the same rounds (None: no call that
    round): the median of the per-round ratios, which the load two neighbouring calls share
    cancels out of."""
    return statistics.median(r / s for r, s in zip(reference_seconds, seconds, strict=True)
                             if s is not None)


def compare_throughput(specs: Sequence[ArchSpec], *, batch: int | None = None,
                       context: int | None = None, decode_tokens: int = TIMING.decode_tokens,
                       repeats: int = TIMING.repeats, min_seconds: float = TIMING.min_seconds,
                       dtype=None, seed: int = 0) -> ThroughputComparison:
    """Prefill and decode tokens/s of each of ``specs`` in one setting (defaults from
    ``default_setting``), their timed calls interleaved (``hardware.timed_rounds``): each shape's
    prefill and its decode are each timed over at least ``repeats`` calls and ``min_seconds``
    seconds. Every shape stays compiled, with its cache, until all are measured."""
    default_batch, default_context = default_setting()
    batch = default_batch if batch is None else batch
    context = default_context if context is None else context
    for name, value in (("batch", batch), ("context", context), ("decode_tokens", decode_tokens),
                        ("repeats", repeats), ("number of shapes", len(specs))):
        if value < 1:
            raise ArchscaleError(f"throughput measurement: {name}={value} must be >= 1")
    if min_seconds < 0:
        raise ArchscaleError(f"throughput measurement: min_seconds={min_seconds} must be >= 0")
    dtype = compute_dtype(dtype)
    backend = serving_backend(dtype)
    compiled = [_compile(spec, batch=batch, context=context, decode_tokens=decode_tokens,
                         dtype=dtype, seed=seed, backend=backend) for spec in specs]
    prefill_rounds = hardware.timed_rounds([c.prefill for c in compiled], repeats, min_seconds)
    decode_rounds = hardware.timed_rounds([c.decode for c in compiled], repeats, min_seconds)
    prefill_times, decode_times = ([[t for t in ts if t is not None] for ts in rounds]
                                   for rounds in (prefill_rounds, decode_rounds))
    peak, bandwidth = hardware.peak_flops(dtype), hardware.memory_bandwidth()
    results = tuple(ThroughputResult(
        spec=c.spec.to_dict(), batch=batch, context=context, decode_tokens=decode_tokens,
        repeats=repeats, dtype=dtype.name, device_kind=hardware.device_kind(),
        prefill_tokens_per_s=batch * context / min(prefill_s),
        decode_tokens_per_s=batch * decode_tokens / min(decode_s),
        **roofline(c.spec, batch=batch, context=context, decode_tokens=decode_tokens, dtype=dtype,
                   peak=peak, bandwidth=bandwidth),
        peak_flops=peak, memory_bandwidth=bandwidth, compile_seconds=c.compile_seconds,
        decode_calls=len(decode_s), prefill_calls=len(prefill_s), backend=backend.name,
        prefill_tokens_per_s_median=batch * context / statistics.median(prefill_s),
        decode_tokens_per_s_median=batch * decode_tokens / statistics.median(decode_s),
    ) for c, prefill_s, decode_s in zip(compiled, prefill_times, decode_times, strict=True))
    return ThroughputComparison(
        results,
        decode_ratios=tuple(paired_ratio(decode_rounds[0], d) for d in decode_rounds),
        prefill_ratios=tuple(paired_ratio(prefill_rounds[0], p) for p in prefill_rounds))


def measure_throughput(spec: ArchSpec, **setting: Any) -> ThroughputResult:
    """Prefill and decode tokens/s of one shape: ``compare_throughput`` of ``spec`` alone (the
    same keyword arguments)."""
    return compare_throughput([spec], **setting).results[0]

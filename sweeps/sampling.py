"""Sampled completions from the KV-cache decoder: temperature and top-p (nucleus), batched, seeded.

Only the decoder's public API is used (``init_cache``, ``layer_weights``, ``prefill``,
``decode_step``). One compiled call generates ``max_new_tokens`` tokens for a batch of prompts:
the prompts are prefilled (logits of the last position only), the first token is drawn from
those logits, and each further token from the logits of a ``decode_step`` inside one
``lax.fori_loop``. Temperature and top-p are traced, so changing them never recompiles;
temperature 0 is greedy decoding.

Every prompt of one call has the same length: the cache holds one length for every row and the
decoder has no padding mask, so callers group prompts by length. Each prompt is sampled
``n_samples`` times (its rows repeated), in calls of ``batch_size`` rows (the last call padded);
call i draws with ``fold_in(key(seed), i)``, so the samples are a pure function of the seed, the
batch size and the prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archscale.arch.errors import ArchscaleError
from archscale.arch.model import Transformer
from archscale.arch.runtime import compiler_options


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn."""

    temperature: float = 1.0
    """Softmax temperature; 0 draws the argmax (greedy)."""
    top_p: float = 0.95
    """Nucleus: draw from the most likely tokens whose probabilities sum to at least this."""
    max_new_tokens: int = 10
    """Tokens generated per completion."""
    batch_size: int = 512
    """Rows (prompt x sample) per compiled call."""
    seed: int = 0
    """Seed of the draws."""

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and 0 < self.top_p <= 1):
            raise ArchscaleError(f"sampling: temperature {self.temperature} must be >= 0 and top_p "
                                 f"{self.top_p} in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.seed < 0:
            raise ArchscaleError(f"sampling: max_new_tokens {self.max_new_tokens} and batch_size "
                                 f"{self.batch_size} must be >= 1, seed {self.seed} >= 0")


@dataclass(frozen=True)
class Samples:
    """Completions of a group of equal-length prompts, and what drawing them cost."""

    tokens_PxSxN: np.ndarray
    """Generated ids: prompt x sample x new token (int32)."""
    seconds: float
    """Wall time of the sampling calls, compilation excluded."""
    compile_seconds: float
    """Time spent compiling (0 when the executable was already built in this process)."""
    rows: int
    """Rows decoded, padding included (what the device paid for)."""


NUCLEUS_STEPS = 24
"""Bisection steps that place the nucleus threshold (to 2^-24 of the top probability)."""


def next_tokens(logits_BxV: jax.Array, key: jax.Array, temperature: jax.Array,
                top_p: jax.Array) -> jax.Array:
    """One token per row: the argmax at temperature 0, else a draw from the tempered softmax
    restricted to its nucleus, the most likely tokens whose mass reaches ``top_p`` (the most
    likely token is always kept).

    The nucleus is {p >= t} for the largest threshold t whose set still holds ``top_p`` of the
    mass, found by bisection: sorting every row (the textbook way) took 7x longer on XLA:CPU.
    """
    greedy_B = jnp.argmax(logits_BxV, axis=-1)
    scaled_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
    probs_BxV = jax.nn.softmax(scaled_BxV, axis=-1)

    def halve(_, bounds):
        low_Bx1, high_Bx1 = bounds
        middle_Bx1 = (low_Bx1 + high_Bx1) / 2
        mass_Bx1 = jnp.sum(jnp.where(probs_BxV >= middle_Bx1, probs_BxV, 0.0), axis=-1,
                           keepdims=True)
        holds = mass_Bx1 >= top_p
        return jnp.where(holds, middle_Bx1, low_Bx1), jnp.where(holds, high_Bx1, middle_Bx1)

    start = (jnp.zeros_like(probs_BxV[:, :1]), jnp.max(probs_BxV, axis=-1, keepdims=True))
    floor_Bx1, _ = jax.lax.fori_loop(0, NUCLEUS_STEPS, halve, start)
    nucleus_BxV = jnp.where(probs_BxV >= floor_Bx1, scaled_BxV, -jnp.inf)
    drawn_B = jax.random.categorical(key, nucleus_BxV)
    return jnp.where(temperature > 0, drawn_B, greedy_B).astype(jnp.int32)


_COMPILED: dict[tuple, object] = {}
"""Executables by (graph, state dtypes, batch, prompt length, new tokens), kept per process."""


def _compiled(graphdef, state, batch: int, prompt_len: int, new_tokens: int):
    """(generate(state, prompts_BxT, key, temperature, top_p) -> tokens_BxN, compile seconds)."""
    key = (graphdef, tuple(str(x.dtype) for x in jax.tree.leaves(state)), batch, prompt_len,
           new_tokens)
    if key in _COMPILED:
        return _COMPILED[key], 0.0

    def generate(state, prompts_BxT, key, temperature, top_p):
        model = nnx.merge(graphdef, state)
        weights = model.layer_weights()  # sliced once, outside the loop
        cache = model.init_cache(batch, prompt_len + new_tokens - 1)
        logits_Bx1xV, cache = model.prefill(prompts_BxT, cache, last_only=True, weights=weights)
        first_B = next_tokens(logits_Bx1xV[:, 0], jax.random.fold_in(key, 0), temperature, top_p)
        out_BxN = jnp.zeros((batch, new_tokens), jnp.int32).at[:, 0].set(first_B)

        def step(i, carry):
            tokens_B, cache, out_BxN = carry
            logits_BxV, cache = model.decode_step(tokens_B, cache, weights=weights)
            tokens_B = next_tokens(logits_BxV, jax.random.fold_in(key, i), temperature, top_p)
            return tokens_B, cache, out_BxN.at[:, i].set(tokens_B)

        return jax.lax.fori_loop(1, new_tokens, step, (first_B, cache, out_BxN))[2]

    start = time.perf_counter()
    prompts = jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    _COMPILED[key] = jax.jit(generate).lower(state, prompts, jax.random.key(0), scalar,
                                             scalar).compile(compiler_options=compiler_options())
    return _COMPILED[key], time.perf_counter() - start


def sample(model: Transformer, prompts_PxT: np.ndarray, n_samples: int,
           settings: SamplingSettings, stream: int = 0) -> Samples:
    """``n_samples`` completions of each prompt (every prompt ``T`` tokens long); ``stream``
    separates the draws of several groups sampled with one seed."""
    prompts_PxT = np.asarray(prompts_PxT, dtype=np.int32)
    if prompts_PxT.ndim != 2 or prompts_PxT.shape[1] < 1 or n_samples < 1:
        raise ArchscaleError(f"sample: prompts must be P x T with T >= 1 (got shape "
                             f"{prompts_PxT.shape}) and n_samples >= 1 (got {n_samples})")
    n_prompts, prompt_len = prompts_PxT.shape
    rows_RxT = np.repeat(prompts_PxT, n_samples, axis=0)
    batch = min(settings.batch_size, len(rows_RxT))
    n_calls = -(-len(rows_RxT) // batch)
    rows_RxT = np.concatenate([rows_RxT, np.repeat(rows_RxT[:1], n_calls * batch - len(rows_RxT),
                                                   axis=0)])
    graphdef, state = nnx.split(model)
    compiled, compile_seconds = _compiled(graphdef, state, batch, prompt_len,
                                          settings.max_new_tokens)
    key = jax.random.fold_in(jax.random.key(settings.seed), stream)
    scalars = (np.float32(settings.temperature), np.float32(settings.top_p))
    start = time.perf_counter()
    out = [compiled(state, rows_RxT[i * batch:(i + 1) * batch], jax.random.fold_in(key, i),
                    *scalars) for i in range(n_calls)]
    tokens = np.concatenate([np.asarray(o) for o in out])[:n_prompts * n_samples]
    return Samples(tokens.reshape(n_prompts, n_samples, settings.max_new_tokens),
                   time.perf_counter() - start, compile_seconds, n_calls * batch)

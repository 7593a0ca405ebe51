"""Attention, and the one place that picks how each platform runs it.

Three calls, all grouped-query (K KV heads serve N = K G query heads; K/V are never repeated):

* ``causal_attention``: a whole sequence (training, evaluation): query t sees keys 0..t.
* ``prefill_attention``: T new queries at positions start..start+T-1 over an S-slot KV cache.
* ``decode_attention``: one query per row over the cache, read in place in its BxKxSxH layout.

``implementation`` picks the kernel of the first two (``jax.nn.dot_product_attention`` unless
said otherwise):

* GPU (CUDA, compute capability >= 8.0) with bf16/fp16 operands and head_dim a multiple of 8 up
  to 128: cuDNN flash attention. Causal attention needs no mask tensor; prefill passes its
  offset causal mask, which cuDNN reads as a Tc x S bias (never B N T S scores).
* TPU: Pallas splash attention for causal attention when T is a multiple of 128; prefill
  (its causal diagonal sits at a traced offset) runs on XLA.
* Everything else (CPU, fp32 on GPU): XLA. XLA holds the B N T S fp32 scores, so a call whose
  scores would pass ``SCORE_BYTES`` runs as a loop over query chunks sized to fit it (``_chunked``,
  each chunk rematerialized in the backward pass); shorter calls (every training shape of the
  CPU demo and benchmarks) run in one piece. The loop computes the masked half of causal
  scores too: simple, and long contexts belong on the platforms with kernels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

SCORE_BYTES = 256 * 2**20
"""Most bytes of fp32 scores (B N Tc S) one XLA attention call holds; above it, query chunks."""
SPLASH_BLOCK = 128
"""Splash attention's query and key block (its default); T must be a multiple of it."""


@functools.cache
def _splash_modules() -> tuple[Any, Any] | None:
    """Pallas' splash-attention kernel and mask modules, or None where this jax build lacks them.
    Imported on first use: only TPU runs them, and elsewhere their import (with Pallas) costs
    about 0.12 s of every process's start."""
    try:
        from jax.experimental.pallas.ops.tpu.splash_attention import (
            splash_attention_kernel,
            splash_attention_mask,
        )
    except ImportError:  # pragma: no cover - depends on the jax build
        return None
    return splash_attention_kernel, splash_attention_mask


@functools.cache
def _cudnn_device() -> bool:
    """True on a CUDA GPU that runs cuDNN's flash attention (Ampere, compute capability 8.0+)."""
    device = jax.devices()[0]
    if device.platform != "gpu" or "cuda" not in device.client.platform_version.lower():
        return False
    try:
        return int(device.compute_capability.split(".")[0]) >= 8
    except (AttributeError, ValueError):
        return False


def implementation(dtype, head_dim: int, causal_len: int | None = None) -> str:
    """'cudnn', 'splash' or 'xla': the kernel this platform runs attention of these operands on.

    ``causal_len`` is T of a whole-sequence causal call, None for prefill over a cache.
    """
    platform = jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if platform == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128 and _cudnn_device():
        return "cudnn"
    if (platform == "tpu" and causal_len is not None and causal_len % SPLASH_BLOCK == 0
            and _splash_modules() is not None):
        return "splash"
    return "xla"


def causal_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                     ) -> jax.Array:
    """Causal self-attention of a whole sequence: out_BxTxNxH (query t sees keys 0..t)."""
    T, H = q_BxTxNxH.shape[1], q_BxTxNxH.shape[3]
    impl = implementation(q_BxTxNxH.dtype, H, causal_len=T)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True,
                                            implementation="cudnn")
    if impl == "splash":
        return _splash_causal(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
    return _masked(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, jnp.arange(T, dtype=jnp.int32), impl)


def prefill_attention(q_BxTxNxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array,
                      start: jax.Array) -> jax.Array:
    """T queries at positions start.. over the cache (keys past each query's position, and
    slots not yet written, are masked): out_BxTxNxH."""
    T, H = q_BxTxNxH.shape[1], q_BxTxNxH.shape[3]
    # Keys in the layout dot_product_attention takes; XLA folds the transpose into the dot.
    k_BxSxKxH, v_BxSxKxH = (jnp.swapaxes(c, 1, 2).astype(q_BxTxNxH.dtype)
                            for c in (k_BxKxSxH, v_BxKxSxH))
    positions_T = start + jnp.arange(T, dtype=jnp.int32)
    return _masked(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, positions_T,
                   implementation(q_BxTxNxH.dtype, H))


def decode_attention(q_BxKxGxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array,
                     valid: jax.Array) -> jax.Array:
    """One query position per row over the first ``valid`` cache slots: out_BxKxGxH.

    Plain XLA on every platform: a decode step is bound by reading the cache, its scores are
    B N S, and the cache is read in place (dot_product_attention would want it as BxSxKxH).
    """
    scale = 1.0 / math.sqrt(q_BxKxGxH.shape[-1])
    k_BxKxSxH, v_BxKxSxH = (c.astype(q_BxKxGxH.dtype) for c in (k_BxKxSxH, v_BxKxSxH))
    scores_BxKxGxS = jnp.einsum("bkgh,bksh->bkgs", q_BxKxGxH, k_BxKxSxH,
                                preferred_element_type=jnp.float32) * scale
    valid_S = jnp.arange(k_BxKxSxH.shape[2]) < valid
    scores_BxKxGxS = jnp.where(valid_S, scores_BxKxGxS, jnp.finfo(jnp.float32).min)
    probs_BxKxGxS = jax.nn.softmax(scores_BxKxGxS, axis=-1).astype(v_BxKxSxH.dtype)
    return jnp.einsum("bkgs,bksh->bkgh", probs_BxKxGxS, v_BxKxSxH)


def _masked(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
            positions_T: jax.Array, impl: str) -> jax.Array:
    """Query t sees key s iff s <= positions_T[t]; in query chunks where the scores (XLA) or the
    mask cuDNN reads as a bias would pass SCORE_BYTES."""
    B, T, N, _ = q_BxTxNxH.shape
    S = k_BxSxKxH.shape[1]

    def attend(q_BxRxNxH, positions_R):
        mask_1x1xRxS = (jnp.arange(S, dtype=jnp.int32) <= positions_R[:, None])[None, None]
        return jax.nn.dot_product_attention(q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask_1x1xRxS,
                                            implementation=impl)

    # Bytes per query row: fp32 scores of every (row, head) for XLA; a bf16 bias row for cuDNN.
    row_bytes = 2 * S if impl == "cudnn" else 4 * B * N * S
    if T * row_bytes <= SCORE_BYTES:
        return attend(q_BxTxNxH, positions_T)
    rows = 2 ** max(0, int(math.log2(max(1, SCORE_BYTES // row_bytes))))
    return _chunked(attend, q_BxTxNxH, positions_T, min(rows, T))


def _chunked(attend: Callable[[jax.Array, jax.Array], jax.Array], q_BxTxNxH: jax.Array,
             positions_T: jax.Array, rows: int) -> jax.Array:
    """``attend`` over query chunks of ``rows`` in a loop; each chunk is rematerialized in the
    backward pass, so no more than one chunk's scores are ever held."""
    B, T, N, H = q_BxTxNxH.shape
    chunks = -(-T // rows)
    pad = chunks * rows - T  # padded rows repeat the last position; their outputs are dropped
    q_BxCRxNxH = jnp.pad(q_BxTxNxH, ((0, 0), (0, pad), (0, 0), (0, 0)))
    positions_CxR = jnp.pad(positions_T, (0, pad), mode="edge").reshape(chunks, rows)
    q_CxBxRxNxH = jnp.moveaxis(q_BxCRxNxH.reshape(B, chunks, rows, N, H), 1, 0)
    out_CxBxRxNxH = jax.lax.map(jax.checkpoint(lambda xs: attend(*xs)),
                                (q_CxBxRxNxH, positions_CxR))
    return jnp.moveaxis(out_CxBxRxNxH, 0, 1).reshape(B, chunks * rows, N, H)[:, :T]


def _splash_causal(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                   *, interpret: bool = False) -> jax.Array:
    """Causal attention through Pallas splash attention (TPU; ``interpret`` runs it anywhere).

    The kernel takes one sequence with heads first and applies no 1/sqrt(H) scale, so queries
    are scaled here and the batch is vmapped. Under a sharded jit, wrap the call in shard_map:
    XLA cannot partition the kernel itself.
    """
    T, N, H = q_BxTxNxH.shape[1:]
    splash, splash_mask = _splash_modules()
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((T, T))] * N)
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    q_BxNxTxH = jnp.swapaxes(q_BxTxNxH * (1.0 / math.sqrt(H)), 1, 2).astype(q_BxTxNxH.dtype)
    out_BxNxTxH = jax.vmap(kernel)(q_BxNxTxH, jnp.swapaxes(k_BxTxKxH, 1, 2),
                                   jnp.swapaxes(v_BxTxKxH, 1, 2))
    return jnp.swapaxes(out_BxNxTxH, 1, 2).astype(q_BxTxNxH.dtype)

"""Optional speed code for decoding on XLA:CPU: two ``ServingBackend``s (``arch.serving``).

XLA:CPU multiplies a decode step's few rows by a weight stored output x input 2-3x slower than by
an input x output copy, runs its attention as one tiny matrix-vector product per (row, KV head),
each with its own thread-pool round trip, and its few-row matmuls at 50-75 GFLOP/s with the
weights cold in memory.

* ``cpu-kernels`` (fp32, where ``arch.cpu_kernels`` builds): decode attention streams each
  (row, KV head) of the cache once, in place, and each matrix whose output width is a multiple
  of 16 is packed once into contiguous 16-column panels that the matmul kernel streams
  (70-95 GFLOP/s); a matrix of another width keeps an input x output copy.
* ``cpu-xla`` (other dtypes, or no kernels): XLA throughout, every matrix an input x output copy
  (a decode step of d_model 512 ran 2.2x faster than on ``serving.XLA_SERVING``).

Prompts (T > 1) multiply the same layouts through XLA. Only ``serving.serving_backend``
imports this module, and only on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from archscale.arch import attention, cpu_kernels
from archscale.arch.serving import ServingBackend

PANEL_NAMES = {"wqkv_JHxD": "wqkv_PxDx16", "wo_DxNH": "wo_PxNHx16",
               "w_gate_up_2FxD": "w_gate_up_PxDx16", "w_down_DxF": "w_down_PxFx16"}
"""Each stacked output x input matrix and its name when packed in panels (``pack_panels``)."""
TRANSPOSED_NAMES = {"wqkv_JHxD": "wqkv_DxJH", "wo_DxNH": "wo_NHxD",
                    "w_gate_up_2FxD": "w_gate_up_Dx2F", "w_down_DxF": "w_down_FxD"}
"""Its name as an input x output copy (where it is not packed in panels)."""


def serving_backend(dtype) -> ServingBackend:
    """``CPU_KERNELS`` for an fp32 compute dtype where the kernels run, else ``CPU_XLA``."""
    if jnp.dtype(dtype) == jnp.float32 and cpu_kernels.available():
        return CPU_KERNELS
    return CPU_XLA


def _prepare(p: dict[str, jax.Array], *, panels: bool) -> dict[str, jax.Array]:
    """One layer's weights in a backend's layout: each matrix packed in panels (where ``panels``
    and its output width is a whole number of them) or as an input x output copy."""
    serving = {}
    for name, w_OxI in p.items():
        if name not in PANEL_NAMES:
            serving[name] = w_OxI
        elif panels and w_OxI.shape[0] % cpu_kernels.PANEL == 0:
            serving[PANEL_NAMES[name]] = cpu_kernels.pack_panels(w_OxI.T)
        else:
            serving[TRANSPOSED_NAMES[name]] = w_OxI.T
    return serving


def _matmul(x_BxTxI: jax.Array, p: dict[str, jax.Array], name: str) -> jax.Array:
    """x @ W for the matrix stored as ``name``, in the layout ``_prepare`` gave it."""
    if TRANSPOSED_NAMES[name] in p:
        return jnp.einsum("bti,io->bto", x_BxTxI, p[TRANSPOSED_NAMES[name]])
    w_PxIx16 = p[PANEL_NAMES[name]]
    B, T, _ = x_BxTxI.shape
    if T == 1:
        return cpu_kernels.panel_matmul(x_BxTxI[:, 0], w_PxIx16)[:, None]
    return jnp.einsum("bti,pic->btpc", x_BxTxI, w_PxIx16).reshape(B, T, -1)


def _decode_attention(q_BxKxGxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array,
                      valid: jax.Array) -> jax.Array:
    """The attention kernel for an fp32 query and cache; XLA's for a cache of another dtype."""
    if all(x.dtype == jnp.float32 for x in (q_BxKxGxH, k_BxKxSxH, v_BxKxSxH)):
        return cpu_kernels.decode_attention(q_BxKxGxH, k_BxKxSxH, v_BxKxSxH, valid)
    return attention.decode_attention(q_BxKxGxH, k_BxKxSxH, v_BxKxSxH, valid)


CPU_KERNELS = ServingBackend("cpu-kernels", _decode_attention,
                             functools.partial(_prepare, panels=True), _matmul)
CPU_XLA = ServingBackend("cpu-xla", attention.decode_attention,
                         functools.partial(_prepare, panels=False), _matmul)

"""Serving backends: what a generation loop runs (the weights' serving layout, the matmuls on
them, decode attention), and the registry that picks one per platform.

``serving_backend`` picks what a generation loop runs: the weights' serving layout, the matmuls
on them and decode attention. ``XLA_SERVING`` everywhere, except where an optional backend module
offers faster code for this platform (today ``arch.cpu_backend`` on CPU: native kernels, or
weight layouts XLA:CPU streams faster). The model knows only the ``ServingBackend`` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax

from archscale.arch.attention import decode_attention


@dataclass(frozen=True)
class ServingBackend:
    """What a generation loop runs: decode attention, and the serving layout of the weights.

    ``prepare`` turns one layer's weights (matrices stored output x input, under the names of
    ``Layers.stacked``) into the backend's own layout; ``matmul(x_BxTxI, weights, name)`` is
    x @ W for the matrix stored as ``name`` in that layout. None: as stored, XLA's einsum.
    """

    name: str
    """Recorded beside every throughput figure, since backends differ in speed."""
    decode_attention: Callable[..., jax.Array] = decode_attention
    """(q_BxKxGxH, k_BxKxSxH, v_BxKxSxH, valid) -> out_BxKxGxH."""
    prepare: Callable[[dict[str, jax.Array]], dict[str, jax.Array]] | None = None
    matmul: Callable[[jax.Array, dict[str, jax.Array], str], jax.Array] | None = None


XLA_SERVING = ServingBackend("xla")


def serving_backend(dtype) -> ServingBackend:
    """The serving backend for compute ``dtype`` on this platform."""
    if jax.default_backend() == "cpu":
        from archscale.arch import cpu_backend  # optional speed code for XLA:CPU

        return cpu_backend.serving_backend(dtype)
    return XLA_SERVING

"""Serving backends: what a generation loop runs (the weights' serving layout, the matmuls on
them, decode attention), and the registry that picks one per platform.

``serving_backend`` picks what a generation loop runs: the weights' serving layout, the matmuls
on them and decode attention. ``XLA_SERVING`` everywhere, except where an optional backend module
registered in ``BACKEND_MODULES`` offers faster code for this platform (today
``arch.cpu_backend`` on CPU: native kernels, or weight layouts XLA:CPU streams faster). The model
knows only the ``ServingBackend`` interface; attention imports no backend.
"""

from __future__ import annotations

import importlib
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


BACKEND_MODULES: dict[str, str] = {"cpu": "archscale.arch.cpu_backend"}
"""Platform (``jax.default_backend()``) -> the module with faster serving code there, whose
``serving_backend(dtype)`` picks among its backends. Imported on first use, by name: optional
speed code that nothing else imports. Other platforms get ``XLA_SERVING``."""


def serving_backend(dtype) -> ServingBackend:
    """The serving backend for compute ``dtype`` on this platform."""
    module = BACKEND_MODULES.get(jax.default_backend())
    if module is None:
        return XLA_SERVING
    return importlib.import_module(module).serving_backend(dtype)

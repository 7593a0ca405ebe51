"""Data parallelism over every local device: one mesh axis "data", batch sharded, params replicated.

A worker therefore uses a whole GPU node or TPU host. On CPU, tests fake several devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX initialises).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from archscale.arch.errors import ArchscaleError

DATA_AXIS = "data"


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all local devices)."""
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Sharding of an array whose ``batch_axis`` is split across the data axis."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ArchscaleError(f"batch_size={batch_size} is not divisible by the {n} devices: "
                             f"use a multiple of {n} (e.g. {max(n, batch_size // n * n)})")


def put_replicated(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def put_batch(array: np.ndarray, mesh: Mesh, batch_axis: int = 0) -> jax.Array:
    return jax.device_put(array, batch_sharded(mesh, batch_axis))

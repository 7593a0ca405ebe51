"""The device mesh of a run: data parallelism (``data``) times fully sharded data parallelism
(``fsdp``), and the processes of a multi-host run.

The batch is split over both axes together (every device sees B / (D F) sequences). Parameters
and optimizer state are split over ``fsdp`` (``state_sharding``) and replicated over ``data``;
XLA gathers each weight where a step uses it and reduce-scatters its gradient. A worker uses every
device its process sees; on CPU, tests fake several with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX initialises).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from archscale.arch.errors import ArchscaleError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
"""Mesh axes the batch is split over, together."""


@dataclass(frozen=True)
class MeshShape:
    """How a run lays out its devices: ``data`` replicas, each sharded over ``fsdp`` devices."""

    data: int | None = None
    """Data-parallel replicas (None: every device the fsdp axis leaves)."""
    fsdp: int = 1
    """Devices each parameter and its optimizer state are split over (1: replicated)."""

    def __post_init__(self) -> None:
        bad = [f"{axis}={size}" for axis, size in (("data", self.data), ("fsdp", self.fsdp))
               if size is not None and size < 1]
        if bad:
            raise ArchscaleError(f"mesh {', '.join(bad)}: each axis must be >= 1")

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        """``"data=2,fsdp=4"`` (either axis may be left out)."""
        sizes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name.strip() not in ("data", "fsdp") or not value.strip().isdigit():
                raise ArchscaleError(f"mesh {text!r}: write data=D,fsdp=F with D, F positive "
                                     "integers (e.g. data=2,fsdp=4; leave data out for all devices)")
            sizes[name.strip()] = int(value)
        return cls(**sizes)


def make_mesh(shape: MeshShape | None = None, devices: list | None = None) -> Mesh:
    """The (data, fsdp) mesh of ``shape`` over ``devices`` (default: every device of every
    process), whose count must be data x fsdp."""
    shape = MeshShape() if shape is None else shape
    devices = jax.devices() if devices is None else list(devices)
    n, fsdp = len(devices), shape.fsdp
    data = n // fsdp if shape.data is None else shape.data
    if data * fsdp != n:
        choices = [d for d in range(1, n + 1) if n % d == 0]
        fix = (f"e.g. data={n // fsdp},fsdp={fsdp}" if n % fsdp == 0
               else f"fsdp one of {', '.join(map(str, choices))}")
        asked = f"fsdp={fsdp}" if shape.data is None else f"data={data},fsdp={fsdp}"
        raise ArchscaleError(f"mesh {asked} does not fit the run's {n} devices: data x fsdp must "
                             f"equal {n} ({fix})")
    return jax.make_mesh((data, fsdp), BATCH_AXES, (AxisType.Auto,) * 2, devices=devices)


def data_mesh(devices: list | None = None) -> Mesh:
    """Data parallelism alone over ``devices`` (default: every device): the default mesh."""
    return make_mesh(MeshShape(), devices)


def mesh_sizes(mesh: Mesh) -> dict[str, int]:
    """{"data": D, "fsdp": F}, as a run's JSON records it."""
    return {name: int(size) for name, size in mesh.shape.items()}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Sharding of an array whose ``batch_axis`` is split across every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """A weight of ``shape`` split on its largest axis divisible by ``fsdp``; scalars, vectors
    and weights with no such axis replicated."""
    if fsdp > 1 and len(shape) >= 2:
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % fsdp == 0:
                return PartitionSpec(*(FSDP_AXIS if a == axis else None for a in range(len(shape))))
    return PartitionSpec()


def state_sharding(abstract: Any, mesh: Mesh) -> Any:
    """Shardings for a pytree of arrays (or ShapeDtypeStructs): ``fsdp_spec`` of each leaf."""
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp)), abstract)


def bytes_per_device(tree: Any) -> int:
    """Bytes the arrays of ``tree`` hold on the fullest local device (their addressable shards)."""
    held: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return max(held.values(), default=0)


def check_batch(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ArchscaleError(
            f"batch_size={batch_size} is not divisible by the mesh's {n} devices "
            f"({' x '.join(f'{k}={v}' for k, v in mesh_sizes(mesh).items())}): use a multiple of "
            f"{n} (e.g. {max(n, batch_size // n * n)})")


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array every process holds whole, placed by ``sharding`` (each process copies only
    its own devices' shards, so it works across hosts)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_replicated(tree, mesh: Mesh):
    return jax.tree.map(lambda x: put(x, replicated(mesh)), tree)


def put_batch(array: np.ndarray, mesh: Mesh, batch_axis: int = 0) -> jax.Array:
    return put(array, batch_sharded(mesh, batch_axis))


# ---- several hosts ---------------------------------------------------------------------------

def distributed_args(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """``jax.distributed.initialize`` keyword arguments when ``environ`` describes a run of
    several processes, else None.

    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID name them explicitly; under
    SLURM (srun), Open MPI (mpirun) or on a multi-host Cloud TPU (TPU_WORKER_HOSTNAMES) JAX
    detects them itself, so the arguments are empty.
    """
    n = _integer(environ, "JAX_NUM_PROCESSES")
    if n > 1:
        missing = [v for v in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if v not in environ]
        if missing:
            raise ArchscaleError(f"JAX_NUM_PROCESSES={n} needs {' and '.join(missing)} too (the "
                                 "coordinator's host:port and this process's 0-based id)")
        return {"coordinator_address": environ["JAX_COORDINATOR_ADDRESS"], "num_processes": n,
                "process_id": _integer(environ, "JAX_PROCESS_ID")}
    if _integer(environ, "SLURM_NTASKS") > 1 or _integer(environ, "OMPI_COMM_WORLD_SIZE") > 1:
        return {}
    if len(environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return {}
    return None


def _integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, 1))
    except ValueError:
        raise ArchscaleError(f"{name}={environ[name]!r} must be an integer") from None


def initialize_distributed() -> None:
    """Join the other processes of a multi-host run (see ``distributed_args``); a no-op on one
    host. Call it before anything else touches JAX's devices."""
    args = distributed_args(os.environ)
    if args is not None and not jax.distributed.is_initialized():
        jax.distributed.initialize(**args)

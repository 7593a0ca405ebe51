"""Which devices each local worker owns: disjoint accelerators, or its own CPU cores.

``study run --workers K`` starts K worker processes. Left alone, each would claim every local
accelerator and preallocate 75% of each GPU's memory, so the second one would run out. Instead
each worker's environment names its own devices before JAX starts in it:

* GPUs: worker i sees a disjoint, near-equal share (``CUDA_VISIBLE_DEVICES``), with preallocation
  off (``XLA_PYTHON_CLIENT_PREALLOCATE=false``) and its memory pool capped at ``MEMORY_HEADROOM``
  of each GPU (with preallocation off JAX's default cap is 75%). With more workers than GPUs,
  workers share GPUs round-robin, each capped at its share of the headroom, and
  ``assign_devices`` says so.
* TPUs: a chip serves one process, so K must divide the host's chips into groups of 1, 2 or 4;
  worker i gets its chips through libtpu's topology variables (the recipe of JAX's maintainers:
  gist.github.com/skye/f82ba45d2445bb19d53545538754f9a3; not yet run on a TPU host here).
* CPU: worker i is pinned to its share of this process's cores (``os.sched_setaffinity``; XLA
  sizes its thread pool from the affinity). Where the OS has no affinity calls (macOS) the
  workers share every core (``os.cpu_count()``), and ``assign_devices`` says so.

``assign_devices`` is pure (a platform and a device list in, per-worker settings out);
``local_devices`` lists this host's accelerators in a short-lived child process, so this
process never opens one that a worker needs (a TPU chip admits one process at a time).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from archscale.arch.errors import ArchscaleError, SettingError

MEMORY_HEADROOM = 0.9
"""Fraction of a GPU's memory its workers' pools may fill together (the rest: CUDA contexts,
cuDNN workspaces and other processes)."""

MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
# Newer jaxlibs also read the newer name (and refuse both at once); all read the old one.
_MEM_FRACTION_NEW = "XLA_CLIENT_MEM_FRACTION"
_TPU_CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}
"""A worker's chips as a box of the host's chip grid (TPU_CHIPS_PER_PROCESS_BOUNDS)."""
_TPU_FIRST_PORT = 8476


@dataclass(frozen=True)
class LocalDevices:
    """The devices of this host that workers divide."""

    platform: str
    """"gpu", "tpu" or "cpu" (jax's platform names)."""
    ids: tuple[str, ...]
    """Accelerators as their visibility variable names them ("0", "GPU-<uuid>", ...); for a
    CPU, this process's cores."""
    can_pin: bool = True
    """CPU only: whether the OS can pin a process to cores."""


@dataclass(frozen=True)
class WorkerDevices:
    """What one worker owns."""

    label: str
    """For messages, e.g. "GPU 0,1" or "cores 0-3"."""
    env: dict[str, str] = field(default_factory=dict)
    """Set in the worker's environment before it starts (before JAX initialises)."""
    cores: tuple[int, ...] = ()
    """CPU cores to pin the worker to (empty: not pinned)."""


@dataclass(frozen=True)
class DevicePlan:
    """Every worker's devices, and a note when workers share any (None when they do not)."""

    workers: list[WorkerDevices]
    note: str | None = None


def assign_devices(devices: LocalDevices, workers: int) -> DevicePlan:
    """Give each of ``workers`` local workers its own devices (see the module docstring)."""
    if workers < 1:
        raise SettingError(f"{{workers}} {workers}: need at least 1")
    assign = {"gpu": _assign_gpus, "tpu": _assign_tpus, "cpu": _assign_cores}.get(devices.platform)
    if assign is None:
        raise SettingError(f"{{workers}} {workers} on platform {devices.platform!r}: archscale "
                           "divides only GPUs, TPUs and CPU cores; run one worker")
    return assign(devices, workers)


def _assign_gpus(devices: LocalDevices, workers: int) -> DevicePlan:
    ids = devices.ids
    if workers <= len(ids):
        shares = [list(share) for share in np.array_split(np.array(ids, dtype=object), workers)]
    else:  # round-robin: worker i on GPU i mod G
        shares = [[ids[i % len(ids)]] for i in range(workers)]
    per_gpu = Counter(gpu for share in shares for gpu in share)
    plan = []
    for share in shares:
        fraction = MEMORY_HEADROOM / per_gpu[share[0]]
        plan.append(WorkerDevices(f"GPU {','.join(share)}", {
            "CUDA_VISIBLE_DEVICES": ",".join(share),
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            MEM_FRACTION: f"{fraction:.3g}"}))
    note = None
    if workers > len(ids):
        most = max(per_gpu.values())
        note = (f"{workers} workers on {len(ids)} GPU(s): up to {most} share a GPU, with "
                f"preallocation off and each capped at {MEMORY_HEADROOM / most:.0%} of its "
                "memory; a trial that needs more fails as out of memory")
    return DevicePlan(plan, note)


def _assign_tpus(devices: LocalDevices, workers: int) -> DevicePlan:
    chips = len(devices.ids)
    per_worker = chips // workers if chips % workers == 0 else 0
    if per_worker not in _TPU_CHIP_BOUNDS:
        sizes = sorted({chips // n for n in _TPU_CHIP_BOUNDS if chips % n == 0}, reverse=True)
        raise SettingError(f"{{workers}} {workers}: a TPU chip serves one process, and this "
                           f"host's {chips} chip(s) divide into workers of 1, 2 or 4 chips: use "
                           f"{{workers}} {' or '.join(map(str, sizes))}")
    plan = []
    for i in range(workers):
        share = ",".join(devices.ids[i * per_worker:(i + 1) * per_worker])
        port = str(_TPU_FIRST_PORT + i)
        plan.append(WorkerDevices(f"TPU chip(s) {share}", {
            "TPU_VISIBLE_CHIPS": share,
            "TPU_VISIBLE_DEVICES": share,  # the older libtpu's name
            "TPU_CHIPS_PER_PROCESS_BOUNDS": _TPU_CHIP_BOUNDS[per_worker],
            "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_PROCESS_PORT": port,
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
            "TPU_MESH_CONTROLLER_PORT": port,
            "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}))
    return DevicePlan(plan)


def _assign_cores(devices: LocalDevices, workers: int) -> DevicePlan:
    cores = [int(c) for c in devices.ids]
    shares = split_cores(workers, cores)
    if not devices.can_pin:
        return DevicePlan([WorkerDevices(f"{len(cores)} shared cores") for _ in shares],
                          f"this OS cannot pin processes to cores: the {workers} workers share "
                          f"all {len(cores)}")
    return DevicePlan([WorkerDevices(f"cores {_span(share)}", cores=tuple(share))
                       for share in shares])


def split_cores(workers: int, cores: list[int] | None = None) -> list[list[int]]:
    """``cores`` (default: this process's) in ``workers`` contiguous, near-equal shares."""
    cores = available_cores() if cores is None else cores
    if not 1 <= workers <= len(cores):
        raise SettingError(f"{{workers}} {workers}: this machine gives {len(cores)} cores, so "
                           f"use 1 to {len(cores)} workers")
    return [[int(c) for c in share] for share in np.array_split(np.array(cores), workers)]


def _span(cores: Sequence[int]) -> str:
    contiguous = list(cores) == list(range(cores[0], cores[-1] + 1))
    return f"{cores[0]}-{cores[-1]}" if contiguous and len(cores) > 1 else ",".join(map(str, cores))


def available_cores() -> list[int]:
    """The cores this process may run on (every core where the OS has no affinity calls)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_to_cores(cores: Sequence[int]) -> None:
    """Restrict this process (and the XLA threads it will start) to ``cores``, where the OS can."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def worker_environ(base: Mapping[str, str], worker: WorkerDevices) -> dict[str, str]:
    """``base`` with the worker's settings applied."""
    env = {**base, **worker.env}
    if MEM_FRACTION in worker.env:
        env.pop(_MEM_FRACTION_NEW, None)  # else jaxlib refuses to start: both names set
    return env


_PROBE = """
import json, jax
devices = jax.local_devices()
platform = devices[0].platform
# TPU v2/v3 show each chip as two devices (one per core); chips are what libtpu assigns.
count = len({tuple(d.coords) for d in devices}) if platform == "tpu" else len(devices)
print(json.dumps({"platform": platform, "count": count}))
"""

_VISIBLE = {"gpu": "CUDA_VISIBLE_DEVICES", "tpu": "TPU_VISIBLE_CHIPS"}


def _accelerator_plugin_installed() -> bool:
    """Whether JAX could find an accelerator: libtpu, or a PJRT plugin (CUDA, ROCm, Metal)."""
    return bool(importlib.util.find_spec("libtpu") or importlib.util.find_spec("jax_plugins")
                or importlib.metadata.entry_points(group="jax_plugins"))


def local_devices(environ: Mapping[str, str] = os.environ) -> LocalDevices:
    """This host's devices as JAX sees them under ``environ``: asked in a child process (which
    lets go of them when it exits), unless $JAX_PLATFORMS is "cpu" or JAX has no accelerator
    plugin to find one with."""
    if environ.get("JAX_PLATFORMS", "") != "cpu" and _accelerator_plugin_installed():
        env = {**environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        probe = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                               text=True, timeout=600)
        if probe.returncode:
            raise ArchscaleError("could not list this host's devices with JAX:\n"
                                 + probe.stderr[-2000:])
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        platform, count = found["platform"], found["count"]
        if platform != "cpu":
            named = [v.strip() for v in environ.get(_VISIBLE.get(platform, ""), "").split(",")]
            named = [v for v in named if v]
            ids = named[:count] if len(named) >= count else [str(i) for i in range(count)]
            return LocalDevices(platform, tuple(ids))
    return LocalDevices("cpu", tuple(map(str, available_cores())),
                        can_pin=hasattr(os, "sched_setaffinity"))

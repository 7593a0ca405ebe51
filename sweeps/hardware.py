"""What the device can do: peak matmul FLOP/s and memory bandwidth, for MFU and rooflines.

Known accelerators come from a table of published dense (no sparsity) peaks, found by the exact
device kind. Anything else (CPUs; after one warning, accelerators missing from the table) is
measured once by a probe, a jitted matmul for FLOP/s and a large array reduction for read
bandwidth, and cached in a small JSON file ($ARCHSCALE_CACHE/hardware.json, default
~/.cache/archscale/hardware.json) keyed by device kind, CPU model and jax version.
$ARCHSCALE_PEAK_FLOPS and $ARCHSCALE_MEMORY_BANDWIDTH override both.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from archscale import environment
from archscale.arch.errors import ArchscaleError


@dataclass(frozen=True)
class DevicePeaks:
    """Published peaks of one accelerator device (as JAX counts devices)."""

    bf16_flops: float
    """Dense bf16/fp16 matmul FLOP/s."""
    fp32_flops: float
    """FLOP/s of an fp32 matmul at JAX's default precision (TF32 on NVIDIA, one bf16 pass on TPU)."""
    bandwidth: float
    """Memory (HBM) bandwidth in bytes/s."""


# Published dense (no sparsity) peaks of one JAX device, by the name `--device` takes. Sources:
# NVIDIA datasheets (nvidia.com/en-us/data-center/<h100|h200|grace-hopper-superchip|a100|l40s|
# l40|l4>/, hgx/ for B200; their tables give bf16 and TF32 "with sparsity": halved here) and
# Google's Cloud TPU pages (cloud.google.com/tpu/docs/<v3|v4|v5e|v5p|v6e>). A TPU v3 chip shows
# JAX two devices (one per TensorCore), so its per-chip 123 TFLOP/s and 900 GB/s are halved.
KNOWN_DEVICES: dict[str, DevicePeaks] = {
    "h100": DevicePeaks(989e12, 494e12, 3.35e12),  # H100 SXM
    "h100 pcie": DevicePeaks(756e12, 378e12, 2.0e12),
    "h100 nvl": DevicePeaks(835e12, 418e12, 3.9e12),
    "h200": DevicePeaks(989e12, 494e12, 4.8e12),  # H200 SXM
    "h200 nvl": DevicePeaks(835e12, 418e12, 4.8e12),
    "gh200": DevicePeaks(989e12, 494e12, 4.0e12),  # GH200 with 96 GB HBM3 (480 GB LPDDR5X)
    "b200": DevicePeaks(2.25e15, 1.125e15, 8.0e12),
    "a100-sxm4-80gb": DevicePeaks(312e12, 156e12, 2.039e12),
    "a100 80gb pcie": DevicePeaks(312e12, 156e12, 1.935e12),
    "a100": DevicePeaks(312e12, 156e12, 1.555e12),  # A100 40GB, SXM4 or PCIe
    "l40s": DevicePeaks(362e12, 183e12, 0.864e12),
    "l40": DevicePeaks(181e12, 90.5e12, 0.864e12),
    "l4": DevicePeaks(121e12, 60e12, 0.3e12),
    "tpu v3": DevicePeaks(61.5e12, 61.5e12, 0.45e12),  # per TensorCore: half a chip
    "tpu v4": DevicePeaks(275e12, 275e12, 1.2e12),
    "tpu v5 lite": DevicePeaks(197e12, 197e12, 0.819e12),  # v5e
    "tpu v5p": DevicePeaks(459e12, 459e12, 2.765e12),
    "tpu v6 lite": DevicePeaks(918e12, 918e12, 1.64e12),  # v6e (Trillium)
}

# jax's device_kind (normalized: lower case, single spaces) -> KNOWN_DEVICES name. Matched whole,
# never by substring: "NVIDIA GH200 480GB" contains "h200", "NVIDIA L40S" "l4", "TPU v4 lite"
# (the v4i inference chip) "tpu v4". A kind not listed here is measured (``peak_flops``).
DEVICE_KINDS: dict[str, str] = {
    "nvidia h100 80gb hbm3": "h100",
    "nvidia h100 pcie": "h100 pcie",
    "nvidia h100 nvl": "h100 nvl",
    "nvidia h200": "h200",
    "nvidia h200 nvl": "h200 nvl",
    "nvidia gh200 480gb": "gh200",
    "nvidia b200": "b200",
    "nvidia a100-sxm4-80gb": "a100-sxm4-80gb",
    "nvidia a100 80gb pcie": "a100 80gb pcie",
    "nvidia a100-sxm4-40gb": "a100",
    "nvidia a100-pcie-40gb": "a100",
    "nvidia l40s": "l40s",
    "nvidia l40": "l40",
    "nvidia l4": "l4",
    "tpu v3": "tpu v3",
    "tpu v4": "tpu v4",
    "tpu v5 lite": "tpu v5 lite",
    "tpu v5": "tpu v5p",
    "tpu v6 lite": "tpu v6 lite",
}


def device_kind() -> str:
    """The first local device's kind, e.g. 'NVIDIA H100 80GB HBM3', 'TPU v5 lite' or 'cpu'."""
    return jax.devices()[0].device_kind


def normalize_kind(kind: str) -> str:
    """A device kind as ``DEVICE_KINDS`` spells it: lower case, whitespace runs as one space."""
    return " ".join(kind.lower().split())


def known_peaks(kind: str | None = None) -> DevicePeaks | None:
    """Table entry for ``kind`` (default: this device), or None when it is not in the table."""
    name = DEVICE_KINDS.get(normalize_kind(kind or device_kind()))
    return KNOWN_DEVICES[name] if name else None


def _peaks_or_warn() -> DevicePeaks | None:
    """This device's table entry; an accelerator without one is warned about once per process
    (CPUs are never in the table: measuring them is the plan, not a fallback)."""
    peaks = known_peaks()
    if peaks is None and jax.default_backend() != "cpu":
        _warn_unknown(device_kind())
    return peaks


@functools.cache
def _warn_unknown(kind: str) -> None:
    warnings.warn(f"device {kind!r} is not in archscale's table of published peaks "
                  "(sweeps/hardware.py): MFU and rooflines use a measured matmul peak and read "
                  "bandwidth instead, which run below the datasheet's; set $ARCHSCALE_PEAK_FLOPS "
                  "and $ARCHSCALE_MEMORY_BANDWIDTH to use published figures", stacklevel=3)


def peak_flops(dtype="float32") -> float:
    """Peak matmul FLOP/s of one device in ``dtype``: the table, else the measured probe."""
    override = environment.get(environment.PEAK_FLOPS)
    if override:
        return _positive_float(environment.PEAK_FLOPS, override)
    name = jnp.dtype(dtype).name
    peaks = _peaks_or_warn()
    if peaks is not None:
        return peaks.fp32_flops if name == "float32" else peaks.bf16_flops
    return _cached(f"matmul_flops_{name}", lambda: probe_matmul_flops(dtype))


def memory_bandwidth() -> float:
    """Memory bandwidth of one device in bytes/s: the table, else the measured probe."""
    override = environment.get(environment.MEMORY_BANDWIDTH)
    if override:
        return _positive_float(environment.MEMORY_BANDWIDTH, override)
    peaks = _peaks_or_warn()
    if peaks is not None:
        return peaks.bandwidth
    return _cached("read_bandwidth", probe_bandwidth)


# ---- probes ---------------------------------------------------------------------------------
def timed_rounds(fns, repeats: int, min_seconds: float = 0.0) -> list[list[float | None]]:
    """Seconds of each call of each of ``fns`` (outputs waited for), called in turn, round after
    round, until every function has been called at least ``repeats`` times and timed for at
    least ``min_seconds``. Returns times[fn][round]: None where a function that already had its
    calls sat the round out. ``fns[0]`` is called in every round, so every other function's call
    has a call of it from the same round to be compared with.

    Calling the functions alternately exposes them to the same load from other processes, so
    their per-round ratios cancel the load that a shared machine adds to both alike. Letting
    the others sit out keeps a slow function from being called as often as the fastest needs."""
    times: list[list[float | None]] = [[] for _ in fns]
    calls, seconds = [0] * len(fns), [0.0] * len(fns)

    def satisfied(index: int) -> bool:
        return calls[index] >= repeats and seconds[index] >= min_seconds

    while not all(satisfied(index) for index in range(len(fns))):
        for index, fn in enumerate(fns):
            if index and satisfied(index):
                times[index].append(None)
                continue
            start = time.perf_counter()
            jax.block_until_ready(fn())
            elapsed = time.perf_counter() - start
            times[index].append(elapsed)
            calls[index], seconds[index] = calls[index] + 1, seconds[index] + elapsed
    return times


def _warm_best_seconds(fn, *args, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after a warm-up call: other processes sharing the
    device only ever add time, so the fastest call is the figure that repeats."""
    jax.block_until_ready(fn(*args))  # compile and warm up
    (seconds,) = timed_rounds([lambda: fn(*args)], repeats)
    return min(seconds)


def probe_matmul_flops(dtype="float32", size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of a jitted square matmul (2 n^3 FLOPs)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.dtype(dtype))
    seconds = _warm_best_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats)
    return 2 * size**3 / seconds


def probe_bandwidth(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Best-of-``repeats`` read bandwidth (bytes/s): a sum over an array far larger than caches."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    seconds = _warm_best_seconds(jax.jit(jnp.sum), x, repeats=repeats)
    return n_bytes / seconds


# ---- the per-machine cache ------------------------------------------------------------------
def cache_path() -> Path:
    """$ARCHSCALE_CACHE/hardware.json: the cache root tokenizers and data use too."""
    return environment.cache_root() / "hardware.json"


def _machine_key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        cpu = f"{models[0]} x{len(models)}" if models else cpu
    except OSError:
        pass
    return f"{device_kind()} | {cpu} | jax {jax.__version__}"


def _cached(name: str, measure) -> float:
    path = cache_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        table = {}
    entry = table.setdefault(_machine_key(), {})
    if name not in entry:
        entry[name] = measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=2, sort_keys=True))
        tmp.replace(path)  # atomic: concurrent workers never read half a file
    return float(entry[name])


def _positive_float(var: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ArchscaleError(f"${var}={text!r} must be a positive number (e.g. 1e14); unset it to "
                             "use the table or the probe")
    return value

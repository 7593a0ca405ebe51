"""Throughput for recommend: a device roofline, a fitted decode throughput law, or a measurement.

The two models answer one question: predicted decode tokens/s of many shapes at one (batch,
context), with a description of how the numbers are obtained and the data they were fitted on.

``measure_decode`` times shapes at the target size instead (random weights, calls interleaved:
``sweeps.throughput.compare_throughput``), those whose weights and KV cache fit in the device's
memory (``MeasureSettings.memory_fraction`` of it); the models serve only the rest.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from archscale.arch.errors import ArchscaleError
from archscale.arch.spec import ArchSpec
from archscale.decide.options import MeasureSettings
from archscale.laws import Law, spec_table
from archscale.sweeps.throughput import roofline


class ThroughputModel(Protocol):
    """Predicted decode tokens/s of many shapes at one (batch, context).

    ``description`` says how the numbers are obtained, ``dtype`` is the serving dtype of weights
    and KV cache, ``fitted_on`` the provenance (``n_range``, ``d_range``) of a fitted model or
    None for one that is not fitted.
    """

    description: str
    dtype: str
    fitted_on: Mapping[str, Any] | None

    def decode_tokens_per_s(self, specs: list[ArchSpec], batch: int, context: int) -> np.ndarray: ...


@dataclass(frozen=True)
class RooflineThroughput:
    """Decode throughput at the memory/compute roofline of a device (no fitted efficiency)."""

    peak_flops: float
    """Device matmul FLOP/s in the serving dtype."""
    bandwidth: float
    """Device memory bandwidth, bytes/s."""
    device: str
    """Device name, for provenance."""
    dtype: str = "bfloat16"
    """Serving dtype of weights and cache."""

    @property
    def description(self) -> str:
        return (f"roofline on {self.device} ({self.peak_flops:.3g} FLOP/s, {self.bandwidth:.3g} B/s, "
                f"{self.dtype}): an upper bound, no fitted efficiency")

    @property
    def fitted_on(self) -> None:
        return None

    def decode_tokens_per_s(self, specs: list[ArchSpec], batch: int, context: int) -> np.ndarray:
        return np.array([roofline(s, batch=batch, context=context, decode_tokens=0, dtype=self.dtype,
                                  peak=self.peak_flops, bandwidth=self.bandwidth)
                         ["decode_roofline_tokens_per_s"] for s in specs])


@dataclass(frozen=True)
class LawThroughput:
    """Decode throughput from a fitted throughput law (laws/throughput.py) at the setting asked."""

    law: Law
    """A throughput law with target decode."""

    @property
    def description(self) -> str:
        notes = "; ".join(n for n in self.law.notes if n.startswith("effective"))
        return (f"fitted throughput law (step time = overhead + bytes / bandwidth + FLOPs / compute, "
                f"{self.law.provenance.get('n_runs', '?')} measured runs, {self.dtype}; {notes})")

    @property
    def dtype(self) -> str:
        return str(self.law.config["dtype"])

    @property
    def fitted_on(self) -> Mapping[str, Any]:
        return self.law.provenance

    def decode_tokens_per_s(self, specs: list[ArchSpec], batch: int, context: int) -> np.ndarray:
        return self.law.predict(spec_table(specs, 0.0, batch=batch, context=context))


def throughput_from_law(law: Law) -> ThroughputModel:
    """A fitted decode throughput law as the throughput model (predictions at the given setting)."""
    if law.kind != "throughput" or law.config.get("target") != "decode":
        what = law.kind if law.kind != "throughput" else f"{law.config.get('target')} throughput"
        raise ArchscaleError(f"the throughput law is a {what} law: recommend needs a decode "
                             "throughput law (`archscale fit --law throughput --target decode`)")
    return LawThroughput(law)


# ---- measurement at the target size -----------------------------------------------------------
def device_memory_bytes() -> tuple[float | None, str]:
    """(bytes, where the figure comes from) of the first JAX device's memory: an accelerator's
    ``memory_stats()['bytes_limit']`` less what is in use, the host's physical memory on CPU;
    (None, why) when neither is known."""
    import jax

    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            free = float(stats["bytes_limit"]) - float(stats.get("bytes_in_use", 0))
            return free, f"{device.device_kind} memory_stats: bytes_limit - bytes_in_use"
        return None, f"{device.device_kind} reports no bytes_limit"
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None, "the host's physical memory is unknown (no os.sysconf)"
    if pages <= 0 or size <= 0:
        return None, "the host's physical memory is unknown"
    return float(pages * size), "host physical memory (os.sysconf)"


def measure_bytes(spec: ArchSpec, batch: int, context: int, dtype: str) -> int:
    """Weights plus the KV cache of one shape measured at (batch, context)."""
    return spec.weight_bytes(dtype) + spec.kv_cache_bytes(batch, context, dtype)


@dataclass(frozen=True)
class DecodeMeasurement:
    """Decode tokens/s of the shapes that fit, and why the others were not measured."""

    tokens_per_s: dict[ArchSpec, float]
    """Measured decode tokens/s, by shape."""
    skipped: dict[ArchSpec, str]
    """Shapes not measured, with the reason."""
    info: dict[str, Any] = field(default_factory=dict)
    """Setting, device, memory plan, groups and seconds spent: the provenance."""


def _groups(specs: Sequence[ArchSpec], sizes: Sequence[int], budget: float | None
            ) -> tuple[list[list[ArchSpec]], dict[ArchSpec, str]]:
    """Shapes packed in order into groups whose bytes fit ``budget`` together (one interleaved
    comparison each); a shape that does not fit alone is skipped."""
    groups: list[list[ArchSpec]] = []
    skipped: dict[ArchSpec, str] = {}
    used = 0.0
    for spec, size in zip(specs, sizes, strict=True):
        if budget is not None and size > budget:
            skipped[spec] = (f"weights + KV cache {size / 2**30:.3g} GiB exceed the "
                             f"{budget / 2**30:.3g} GiB planned for measurement")
            continue
        if not groups or (budget is not None and used + size > budget):
            groups.append([])
            used = 0.0
        groups[-1].append(spec)
        used += size
    return groups, skipped


def measure_decode(specs: Sequence[ArchSpec], batch: int, context: int,
                   settings: MeasureSettings) -> DecodeMeasurement:
    """Time the decode of each shape that fits in memory, with random weights, at (batch,
    context): the shapes of one group are compiled together and their calls interleaved
    (``compare_throughput``); a shape is measured once however often it is given."""
    from archscale.sweeps import hardware
    from archscale.sweeps.throughput import compare_throughput, compute_dtype

    dtype = compute_dtype(settings.dtype).name
    unique = list(dict.fromkeys(specs))
    memory, memory_source = ((settings.memory_bytes, "given (memory_bytes)")
                             if settings.memory_bytes is not None else device_memory_bytes())
    budget = None if memory is None else memory * settings.memory_fraction
    sizes = [measure_bytes(s, batch, context + settings.decode_tokens, dtype) for s in unique]
    groups, skipped = _groups(unique, sizes, budget)
    measured: dict[ArchSpec, float] = {}
    start = time.perf_counter()
    for group in groups:
        comparison = compare_throughput(
            group, batch=batch, context=context, decode_tokens=settings.decode_tokens,
            repeats=settings.repeats, min_seconds=settings.min_seconds, dtype=dtype,
            seed=settings.seed)
        measured.update({s: r.decode_tokens_per_s
                         for s, r in zip(group, comparison.results, strict=True)})
    info = {**settings.to_dict(), "batch": batch, "context": context, "dtype": dtype,
            "device_kind": hardware.device_kind(),
            "memory": {"bytes": memory, "source": memory_source, "budget_bytes": budget,
                       "checked": memory is not None},
            "groups": len(groups), "n_measured": len(measured), "n_skipped": len(skipped),
            "seconds": time.perf_counter() - start}
    return DecodeMeasurement(measured, skipped, info)


def check_throughput(specs: Sequence[ArchSpec], predicted: Sequence[float], origins: Sequence[str],
                     model: ThroughputModel, batch: int, context: int, settings: MeasureSettings
                     ) -> tuple[dict[ArchSpec, float], dict[str, Any]]:
    """Time ``specs`` at (batch, context) (``measure_decode``); (measured decode tokens/s by
    shape, the check: per shape predicted vs measured, and the model's median absolute relative
    error on the measured shapes, ``law_median_abs_rel_error``)."""
    measurement = measure_decode(specs, batch, context, settings)
    measured = measurement.tokens_per_s
    rows, seen = [], set()
    for spec, value, origin in zip(specs, predicted, origins, strict=True):
        if spec in seen:
            continue
        seen.add(spec)
        row: dict[str, Any] = {
            "shape": f"d_model {spec.d_model}, {spec.n_layers} layers, heads {spec.n_heads}/"
                     f"{spec.n_kv_heads}, d_ff {spec.d_ff}",
            "origin": origin, "predicted_decode_tokens_per_s": float(value),
            "measured_decode_tokens_per_s": measured.get(spec)}
        if spec in measured:
            row["relative_error"] = float(value) / measured[spec] - 1
        else:
            row["not_measured"] = measurement.skipped.get(spec, "not measured")
        rows.append(row)
    errors = [abs(r["relative_error"]) for r in rows if "relative_error" in r]
    check = {"n_measured": len(errors), "n_not_measured": len(rows) - len(errors),
             "law_median_abs_rel_error": statistics.median(errors) if errors else None,
             "model": model.description, "shapes": rows, "setting": measurement.info}
    return measured, check


def _which(model: ThroughputModel) -> str:
    return "throughput law" if model.fitted_on is not None else "roofline"


def check_notes(check: Mapping[str, Any], model: ThroughputModel) -> list[str]:
    """What the user must know about a ``check_throughput`` result."""
    setting, which = check["setting"], _which(model)
    error = check["law_median_abs_rel_error"]
    notes = [f"decode throughput measured at the target size for {check['n_measured']} shape(s) "
             f"(random weights, calls interleaved, batch {setting['batch']}, context "
             f"{setting['context']}, {setting['dtype']}, on {setting['device_kind']}); the "
             "recommended shapes are ranked by it where measured"]
    if error is not None:
        notes.append(f"the {which}'s median |relative error| on the {check['n_measured']} "
                     f"measured shape(s): {error:.1%}")
    if check["n_not_measured"]:
        notes.append(f"{check['n_not_measured']} shape(s) not measured (weights + KV cache do "
                     f"not fit in {setting['memory_fraction']:.0%} of the device memory): they "
                     f"show the {which}'s prediction" + (
                         f", whose error on the measured shapes was {error:.1%}"
                         if error is not None else ", which no measurement checked"))
    if not setting["memory"]["checked"]:
        notes.append(f"device memory unknown ({setting['memory']['source']}): the shapes were "
                     "measured without a memory check")
    return notes


def check_methods(check: Mapping[str, Any]) -> dict[str, str]:
    """How the measured numbers of a ``check_throughput`` result are obtained, by output key."""
    s = check["setting"]
    return {
        "measured_decode_tokens_per_s": (
            "timed at the target size with random weights (sweeps.throughput.compare_throughput,"
            f" calls of the shapes interleaved): batch {s['batch']}, context {s['context']}, "
            f"{s['dtype']}, {s['decode_tokens']} greedy steps per call, the fastest of >= "
            f"{s['repeats']} calls over >= {s['min_seconds']:g} s, on {s['device_kind']}; null "
            "where the shape's weights + KV cache did not fit in memory"),
        "throughput_check": "law_median_abs_rel_error: median over the measured shapes of "
                            "|predicted - measured| / measured",
    }

"""Throughput models for recommend: a device roofline, or a fitted decode throughput law.

Both answer one question: predicted decode tokens/s of many shapes at one (batch, context),
with a description of how the numbers are obtained and the data they were fitted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from archscale.arch.errors import ArchscaleError
from archscale.arch.spec import ArchSpec
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

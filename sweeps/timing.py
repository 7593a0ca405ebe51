"""How a throughput measurement times a shape: the defaults of ``archscale bench``, of a sweep
file's ``throughput:`` section and of sweeps/throughput.py, in one place. Light (no JAX), so the
command line and the sweep-file schema read them without loading the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """How each shape's prefill and decode calls are timed."""

    decode_tokens: int = 32
    """Greedy steps per timed decode call (decode is costed at the mean context)."""
    repeats: int = 5
    """Timed calls of each at least; the fastest counts (other processes only add time)."""
    min_seconds: float = 2.0
    """Prefill and decode are each timed for at least this long (more calls than repeats when
    they are short)."""
    batch: int = 1
    """Sequences decoded together where a study measures (bench's default is the device's
    setting, ``throughput.default_setting``)."""


TIMING = Timing()
"""The defaults in force."""

"""The deciding commands' settings and their defaults, as frozen dataclasses: the decode
setting throughput is predicted at (``Serving``), how recommend times its finalists
(``MeasureSettings``) and what the demo runs (``DemoOptions``). Light (no
numpy, no JAX), so the command line reads its option defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archscale.arch.errors import ArchscaleError
from archscale.search.defaults import DEMO_SWEEP
from archscale.sweeps.timing import TIMING


@dataclass(frozen=True)
class Serving:
    """The decode setting recommendations and substitutions predict throughput at."""

    batch: int = 64
    """Sequences decoded together."""
    context: int = 2048
    """Cached context of each."""


SERVING = Serving()
"""The setting in force where the caller gives none."""


@dataclass(frozen=True)
class MeasureSettings:
    """How ``recommend`` times its finalists at the target size (``compare_throughput``)."""

    min_seconds: float = 1.0
    """Prefill and decode of each shape are each timed for at least this long."""
    repeats: int = 3
    """Timed calls of each at least; the fastest counts."""
    decode_tokens: int = TIMING.decode_tokens
    """Greedy steps per timed decode call."""
    dtype: str | None = None
    """Compute, weight and cache dtype; None: the default compute dtype (fp32 on CPU, bf16 on
    accelerators), which is what sweeps measure in and so what a fitted throughput law saw."""
    memory_bytes: float | None = None
    """Device memory to plan with; None: detected (``device_memory_bytes``)."""
    memory_fraction: float = 0.5
    """Share of that memory the measured shapes' weights + KV caches may fill together: the
    rest is for the per-layer weight slices a server holds beside the stacks, compilation
    temporaries and everything else on the device."""
    seed: int = 0
    """Seed of the random weights and prompts."""

    def __post_init__(self) -> None:
        if self.min_seconds < 0 or self.repeats < 1 or self.decode_tokens < 1:
            raise ArchscaleError(f"throughput measurement: min_seconds {self.min_seconds} must be "
                                 f">= 0, repeats {self.repeats} and decode_tokens "
                                 f"{self.decode_tokens} >= 1")
        if not 0 < self.memory_fraction <= 1:
            raise ArchscaleError(f"throughput measurement: memory_fraction {self.memory_fraction} "
                                 "must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs and where it writes."""

    sweep: Path = DEMO_SWEEP
    """Grid sweep file; the default is the packaged demo grid."""
    storage: str | None = None
    """Study storage URL (default: ./archscale.journal, a file in the working directory)."""
    out: Path = Path("report")
    """Report folder."""
    workers: int = 2
    """Local worker processes, each pinned to its own cores (tiny models use one core well)."""
    scale_factor: float = 10.0
    """Recommend at this multiple of the largest trained N (tokens scale with the budget rule)."""
    verify_scale: float = 2.0
    """``verify`` trains the top recommended shape at this multiple of the largest trained N."""
    max_loss_increase: float = 0.01
    """Loss target: the loss-optimal shape's prediction plus this fraction."""
    top: int = 3
    """Recommended shapes to keep."""
    n_boot: int = 200
    """Bootstrap refits per law (intervals)."""
    seed: int = 0
    """Bootstrap seed."""
    progress: bool = True
    """Show the trainer's progress bars."""
    allow_degenerate: bool = False
    """Finish without an error even if the runs do not identify a law (the report says so)."""
    measure: bool = True
    """Time the finalists at the target size (random weights, interleaved) beside the law."""
    target_k: int = 8
    """Where the sweep samples pass@k, the substitution's target is what the largest trained
    scale reaches with this many samples: can a larger model reach it with fewer, or a smaller
    one with more, for less?"""
    full_grid: bool = False
    """Train every grid point, not only the runs the sweep's ``design:`` picks."""
    grid_table: Path | None = None
    """A full-grid run table of the sweep (default: the one shipped for the packaged demo grid,
    decide/design_report.GRID_TABLE): a designed demo's recommendation is compared with the full
    grid's (``regret_vs_grid``); used only where it matches the sweep's grid."""

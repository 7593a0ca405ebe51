"""Everything derived from a shape alone: ArchSpec, parameter counts, FLOPs, the Flax model,
KV-cache decoding and exporters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from archscale.arch.errors import ArchscaleError
from archscale.arch.shapes import BudgetShape, shape_from_budget
from archscale.arch.spec import ArchSpec, SpecError, get_preset, preset_names
from archscale.lazy import lazy_exports

# the format readers (and yaml) load on first use: every archscale.arch.* import runs this file
__getattr__, __dir__ = lazy_exports(__name__, {"load_spec": "frameworks"})

if TYPE_CHECKING:
    from archscale.arch.frameworks import load_spec

__all__ = ["ArchSpec", "ArchscaleError", "BudgetShape", "SpecError", "get_preset", "load_spec",
           "preset_names", "shape_from_budget"]

"""Everything derived from a shape alone: ArchSpec, parameter counts, FLOPs, the Flax model,
KV-cache decoding and exporters."""

from archscale.arch.errors import ArchscaleError
from archscale.arch.frameworks import load_spec
from archscale.arch.shapes import BudgetShape, shape_from_budget
from archscale.arch.spec import ArchSpec, SpecError, get_preset, preset_names

__all__ = ["ArchSpec", "ArchscaleError", "BudgetShape", "SpecError", "get_preset", "load_spec", "preset_names",
           "shape_from_budget"]

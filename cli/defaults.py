"""Option defaults read from the typed config objects that hold them, so each setting has one
home (the search space: decide/space.py; the demo: decide/demo_options.py; throughput timing:
sweeps/timing.py; interval levels: laws/levels.py). Typer declares options as function
parameters, so a parameter's default is written as a lookup here rather than as a literal."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def field_defaults(config: type) -> dict[str, Any]:
    """A frozen dataclass's defaults by field name (fields without one left out)."""
    return {f.name: f.default for f in dataclasses.fields(config)
            if f.default is not dataclasses.MISSING}


def range_text(values: Sequence[float]) -> str:
    """A (min, max) default as a MIN:MAX option text: (0.5, 8.0) -> '0.5:8'."""
    return ":".join(f"{v:g}" for v in values)

"""User-declared law forms: an expression, its inputs, coefficients with bounds and starts, and the
space its residuals live in, written in a few lines of Python or YAML.

    form = declare("dc", "E + A / N**alpha + B / D**beta", inputs=["N", "D"], target="loss",
                   coefficients={"A": {"bounds": [0, None], "log": True, "starts": [1e2, 1e4]},
                                 "alpha": {"bounds": [0, 2], "starts": [0.3, 0.6]}, ...},
                   space="log", loss="huber")
    law = fit_law(form, table)              # or: fit_law(load_form("dc.yaml"), table)

A YAML file holds the same keys (see laws/form_library/ for examples). The law JSON embeds the
declaration, so a saved law predicts on a machine without the file. Fitting and derivatives live
in laws/declared_fit.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archscale.arch.errors import ArchscaleError
from archscale.laws.expression import Expression, parse

SPACES = ("log", "absolute")
"""Where a declared form's residuals are measured (laws/intervals.py SPACES): ``log`` for
positive targets (losses; relative error), ``absolute`` for targets of any sign."""
LOSSES = ("squares", "huber")
"""Fitting losses: least squares, or Huber (threshold ``huber_delta``) of the residuals, as
Hoffmann et al. and Epoch AI fit Chinchilla."""
DEFAULT_N_STARTS = 64
"""Starts drawn (scrambled Sobol, seeded) within the bounds when a coefficient declares none."""
DEFAULT_LOCAL_STARTS = 16
"""Starts of the grid, best objective first, that a local least-squares fit runs from."""
DEFAULT_N_BOOT = 200
"""Bootstrap refits of a declared form when not given (each is one warm-started local fit)."""


@dataclass(frozen=True)
class Coefficient:
    """One fitted coefficient of a declared form."""

    name: str
    """Its name in the expression."""
    bounds: tuple[float, float] = (-math.inf, math.inf)
    """Lower and upper bound (infinite: unbounded)."""
    starts: tuple[float, ...] = ()
    """Start values (one axis of the start grid); empty: drawn within finite bounds."""
    log: bool = False
    """Fitted as log(value): for a positive scale that spans decades (bounds must be > 0)."""

    def __post_init__(self) -> None:
        lo, hi = self.bounds
        if not lo < hi:
            raise ArchscaleError(f"coefficient {self.name}: bounds {list(self.bounds)} are empty; "
                                 "write [lower, upper] with lower < upper")
        if self.log and lo < 0:
            raise ArchscaleError(f"coefficient {self.name} is fitted in log but its lower bound "
                                 f"{lo} is negative: give bounds [0, ...] or drop log")
        if any(not lo <= s <= hi for s in self.starts):
            raise ArchscaleError(f"coefficient {self.name}: starts {list(self.starts)} leave its "
                                 f"bounds {list(self.bounds)}")
        drawable = math.isfinite(hi) and (lo > 0 if self.log else math.isfinite(lo))
        if not self.starts and not drawable:
            raise ArchscaleError(f"coefficient {self.name} has no starts and its range "
                                 f"{list(self.bounds)} cannot be sampled: declare starts, or "
                                 "finite bounds (above 0 for a log coefficient)")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bounds": [_finite_or_none(b) for b in self.bounds]}
        if self.starts:
            out["starts"] = list(self.starts)
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class DeclaredForm:
    """A law form declared by its expression (see the module docstring)."""

    name: str
    """The law's name (what --law and law.json call it)."""
    expression: str
    """The prediction, in the arithmetic laws/expression.py accepts."""
    inputs: tuple[str, ...]
    """Run-table columns the expression reads."""
    target: str
    """The column the law predicts."""
    coefficients: tuple[Coefficient, ...]
    """Fitted coefficients, in the order of every coefficient vector."""
    definitions: Mapping[str, str] = field(default_factory=dict)
    """Named intermediate quantities (name -> expression, in order), e.g. an effective data
    size that the expression then reads."""
    space: str = "log"
    """Where residuals are measured (SPACES)."""
    loss: str = "squares"
    """Fitting loss (LOSSES)."""
    huber_delta: float = 1e-3
    """Huber threshold, in residual units of ``space`` (with loss ``huber``)."""
    n_starts: int = DEFAULT_N_STARTS
    """Starts drawn within the bounds for the coefficients that declare none."""
    local_starts: int = DEFAULT_LOCAL_STARTS
    """Best grid starts a local fit runs from."""
    n_boot: int = DEFAULT_N_BOOT
    """Default bootstrap refits."""
    axes: tuple[str, ...] = ()
    """Inputs along which predictions extrapolate (intervals widen beyond their fitted range);
    default: every input."""
    min_scales: int = 1
    """Distinct model sizes (scales of N) the form needs."""
    group: str | None = None
    """A column of categories (e.g. the corpus) whose every value gets its own copy of the
    ``per_group`` coefficients; the rest are shared."""
    per_group: tuple[str, ...] = ()
    """Coefficients fitted once per value of ``group``."""
    columns: Mapping[str, str] = field(default_factory=dict)
    """Default column mapping (input or target name -> source column of a known table), used
    when the caller gives none, e.g. for a ScaleBench CSV."""
    description: str = ""
    """What the form says, in words."""
    source: str = ""
    """Where the form comes from (paper, repository file)."""

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ArchscaleError(f"form {self.name}: space {self.space!r} is not one of {SPACES}")
        if self.loss not in LOSSES:
            raise ArchscaleError(f"form {self.name}: loss {self.loss!r} is not one of {LOSSES}")
        names = [*self.inputs, *(c.name for c in self.coefficients)]
        if len(set(names)) != len(names):
            raise ArchscaleError(f"form {self.name}: names repeat among inputs and coefficients "
                                 f"({names}): give each a distinct name")
        if not self.coefficients:
            raise ArchscaleError(f"form {self.name} declares no coefficients")
        unused = set(names) - self.parsed.names()
        if unused:
            raise ArchscaleError(f"form {self.name}: {sorted(unused)} declared but not used in "
                                 f"the expression {self.expression!r}")
        if set(self.per_group) - set(self.coef_names) or bool(self.per_group) != bool(self.group):
            raise ArchscaleError(f"form {self.name}: per_group {list(self.per_group)} must name "
                                 "coefficients, and goes with a group column (and vice versa)")
        if not set(self.axes) <= set(self.inputs):
            raise ArchscaleError(f"form {self.name}: axes {list(self.axes)} must be inputs "
                                 f"{list(self.inputs)}")

    @property
    def parsed(self) -> Expression:
        return parse(self.expression, [*self.inputs, *(c.name for c in self.coefficients)],
                     self.definitions)

    @property
    def coef_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.coefficients)

    @property
    def extrapolation_axes(self) -> tuple[str, ...]:
        return self.axes or self.inputs

    def to_dict(self) -> dict[str, Any]:
        """The declaration as JSON-able data (what a YAML file and law.json hold)."""
        return {"name": self.name, "expression": self.expression, "inputs": list(self.inputs),
                "target": self.target,
                "coefficients": {c.name: c.to_dict() for c in self.coefficients},
                "definitions": dict(self.definitions), "space": self.space, "loss": self.loss, "huber_delta": self.huber_delta,
                "n_starts": self.n_starts, "local_starts": self.local_starts,
                "n_boot": self.n_boot, "axes": list(self.axes), "min_scales": self.min_scales,
                "group": self.group, "per_group": list(self.per_group),
                "columns": dict(self.columns), "description": self.description,
                "source": self.source}


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)


def indicator(form: DeclaredForm, level: str) -> str:
    """The 0/1 input column that marks rows of ``level`` of the form's group."""
    return _identifier(f"{form.group}_is_{level}")


def ungrouped(form: DeclaredForm, levels: Sequence[str]) -> DeclaredForm:
    """The same law without groups: each per-group coefficient c becomes c_<level> for every
    level, and c a definition sum_level c_<level> * <group>_is_<level> over 0/1 indicator inputs
    (``indicator``), so fitting, derivatives and prediction need nothing group-aware."""
    if not form.group:
        return form
    coefficients, mixes = [], {}
    for c in form.coefficients:
        if c.name not in form.per_group:
            coefficients.append(c)
            continue
        names = [_identifier(f"{c.name}_{level}") for level in levels]
        coefficients += [dataclasses.replace(c, name=n) for n in names]
        mixes[c.name] = " + ".join(f"{n} * {indicator(form, level)}"
                                   for n, level in zip(names, levels, strict=True))
    return dataclasses.replace(
        form, coefficients=tuple(coefficients), definitions={**mixes, **form.definitions},
        inputs=(*form.inputs, *(indicator(form, level) for level in levels)),
        axes=form.extrapolation_axes, group=None, per_group=())


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _bound(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _coefficient(name: str, spec: Any) -> Coefficient:
    if not isinstance(spec, Mapping):
        raise ArchscaleError(f"coefficient {name}: declare it as a mapping with bounds, starts "
                             f"and log, e.g. {{bounds: [0, 2], starts: [0.3, 0.6]}} (got {spec!r})")
    unknown = set(spec) - {"bounds", "starts", "log"}
    if unknown:
        raise ArchscaleError(f"coefficient {name}: unknown keys {sorted(unknown)} (use bounds, "
                             "starts, log)")
    lo, hi = spec.get("bounds") or (None, None)
    starts = spec.get("starts") or ()
    return Coefficient(name=name, bounds=(_bound(lo, -math.inf), _bound(hi, math.inf)),
                       starts=tuple(float(s) for s in starts), log=bool(spec.get("log", False)))


FIELDS = ("name", "expression", "inputs", "target", "coefficients", "definitions", "space", "loss",
          "huber_delta", "n_starts", "local_starts", "n_boot", "axes", "min_scales", "group",
          "per_group", "columns", "description", "source")
"""Keys a declaration may hold."""


def declare(name: str, expression: str, inputs: Sequence[str], target: str,
            coefficients: Mapping[str, Any] | Sequence[Coefficient], **options: Any
            ) -> DeclaredForm:
    """A declared form; ``coefficients`` maps each name to {bounds, starts, log} (or is a list
    of Coefficient); ``options`` are the other DeclaredForm fields (space, loss, ...)."""
    unknown = set(options) - set(FIELDS)
    if unknown:
        raise ArchscaleError(f"form {name}: unknown keys {sorted(unknown)}; a form declares "
                             f"{', '.join(FIELDS)}")
    coefs = (tuple(coefficients) if not isinstance(coefficients, Mapping)
             else tuple(_coefficient(str(k), v) for k, v in coefficients.items()))
    for key in ("axes", "per_group"):
        if key in options:
            options[key] = tuple(options[key] or ())
    return DeclaredForm(name=str(name), expression=str(expression),
                        inputs=tuple(str(i) for i in inputs), target=str(target),
                        coefficients=coefs, **options)


def form_from_dict(data: Mapping[str, Any]) -> DeclaredForm:
    """A form from its declaration (a parsed YAML or JSON file, or ``to_dict``'s output)."""
    missing = [k for k in ("name", "expression", "inputs", "target", "coefficients")
               if k not in data]
    if missing:
        raise ArchscaleError(f"a form declaration needs {missing}; it has {sorted(data)}")
    rest = {k: v for k, v in data.items()
            if k not in ("name", "expression", "inputs", "target", "coefficients")}
    return declare(data["name"], data["expression"], data["inputs"], data["target"],
                   data["coefficients"], **rest)


def load_form(source: str | Path | Mapping[str, Any] | DeclaredForm) -> DeclaredForm:
    """A form from a YAML or JSON file, a declaration mapping, or a form (returned as is)."""
    if isinstance(source, DeclaredForm):
        return source
    if isinstance(source, Mapping):
        return form_from_dict(source)
    path = Path(source)
    if not path.is_file():
        raise ArchscaleError(f"no form file at {path}: write a YAML declaration (name, "
                             "expression, inputs, target, coefficients) or name a registered form")
    try:
        data = (json.loads(path.read_text()) if path.suffix == ".json"
                else yaml.safe_load(path.read_text()))
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ArchscaleError(f"{path} is not a readable form file: {err}") from None
    if not isinstance(data, Mapping):
        raise ArchscaleError(f"{path} holds no declaration (a mapping of name, expression, "
                             "inputs, target, coefficients)")
    return form_from_dict(data)

"""Every law kind archscale can fit, found by name: the built-in kinds (each declares its facts in
its own module as ``KIND``), the forms packaged in laws/form_library/ (e.g.
``scalebench/moe``), forms other packages register under the entry-point group
``archscale.laws``, and any declared form (a YAML/JSON file, a mapping, a DeclaredForm).

Importing this module loads no kind: names are listed from BUILTIN_KINDS and the library's files,
and a kind's module is imported when it is asked for.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archscale.arch.errors import ArchscaleError

if TYPE_CHECKING:
    from archscale.laws.kind import LawKind

BUILTIN_KINDS = {"chinchilla": "archscale.laws.chinchilla",
                 "conditional": "archscale.laws.conditional",
                 "throughput": "archscale.laws.throughput",
                 "accuracy": "archscale.laws.accuracy", "passk": "archscale.laws.passk"}
"""Built-in kinds by their --law name, and the module whose ``KIND`` declares each."""
ENTRY_POINT_GROUP = "archscale.laws"
"""Entry-point group where other packages register kinds: each entry point loads a LawKind, a
DeclaredForm, a declaration mapping or the path of a form file."""
LIBRARY = Path(__file__).with_name("form_library")
"""Packaged form files; a form is named by its path below here without the suffix."""

ALIASES = LIBRARY / "aliases.yaml"
"""Short names of packaged forms (e.g. a ScaleBench task's primary form)."""


def library_forms() -> dict[str, Path]:
    """Packaged forms by name (``scalebench/moe/sl_3``, and aliases such as ``scalebench/moe``)."""
    import yaml

    forms = {str(p.relative_to(LIBRARY).with_suffix("")): p
             for p in sorted(LIBRARY.rglob("*.yaml")) if p != ALIASES}
    aliases = yaml.safe_load(ALIASES.read_text()) or {}
    return {**forms, **{alias: forms[name] for alias, name in aliases.items()}}


@functools.cache
def _entry_point_kinds() -> dict[str, LawKind]:
    out = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        kind = as_kind(entry.load())
        out[entry.name] = kind
    return out


def kind_names() -> list[str]:
    """Every kind that can be asked for by name."""
    return [*BUILTIN_KINDS, *_entry_point_kinds(), *library_forms()]


def as_kind(source: Any) -> LawKind:
    """A LawKind from a LawKind, a DeclaredForm, a declaration mapping or a form file."""
    from archscale.laws.declared import DeclaredForm, load_form
    from archscale.laws.declared_fit import kind_for
    from archscale.laws.kind import LawKind

    if isinstance(source, LawKind):
        return source
    if isinstance(source, DeclaredForm | Mapping):
        return kind_for(load_form(source))
    return kind_for(load_form(Path(source)))


def get_kind(source: Any, config: Mapping[str, Any] | None = None) -> LawKind:
    """The kind ``source`` names or declares. A saved law's ``config`` that embeds a declaration
    rebuilds the declared kind from it, so no form file is needed to predict."""
    if config is not None and "declaration" in config:
        from archscale.laws.declared_fit import kind_from_config

        return kind_from_config(dict(config))
    if not isinstance(source, str):
        return as_kind(source)
    if source in BUILTIN_KINDS:
        return importlib.import_module(BUILTIN_KINDS[source]).KIND
    if source in _entry_point_kinds():
        return _entry_point_kinds()[source]
    library = library_forms()
    if source in library:
        return as_kind(library[source])
    if Path(source).suffix in (".yaml", ".yml", ".json") and Path(source).is_file():
        return as_kind(Path(source))
    raise ArchscaleError(f"unknown law {source!r}: choose one of {kind_names()}, or give the "
                         "path of a YAML (or JSON) file that declares a form")

"""The command line stays light: `archscale --help` imports no JAX, Optuna, pandas or plotting
(each command imports what it needs when it runs), and the light constants match their sources."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("jax", "flax", "orbax", "optuna", "matplotlib", "torch", "pandas", "scipy")


def test_cli_imports_no_heavy_package():
    code = ("import archscale.cli.main, sys; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_light_names_match_their_sources():
    from archscale import laws

    # `fit --law` lists the kinds without loading them; each name loads the kind of that name
    assert all(laws.get_kind(name).name == name for name in laws.BUILTIN_KINDS)


@pytest.mark.parametrize("package", ["arch", "laws", "search"])
def test_lazy_names_are_the_objects_their_modules_define(package):
    """Each public name of a lazy package is the very object its ``TYPE_CHECKING`` import (what
    type checkers and readers see) names, and ``dir`` lists every one."""
    init = Path(__file__).resolve().parents[1] / package / "__init__.py"
    declared = {alias.asname or alias.name: node.module
                for node in ast.walk(ast.parse(init.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module.startswith("archscale.")
                and node.module != "archscale.lazy"
                for alias in node.names}
    module = importlib.import_module(f"archscale.{package}")
    assert declared and set(declared) <= set(module.__all__) | set(dir(module))
    for name, source in declared.items():
        assert getattr(module, name) is getattr(importlib.import_module(source), name), name
    assert set(dir(module)) >= set(declared)

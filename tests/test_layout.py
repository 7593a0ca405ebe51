"""The layout shows the flow: imports between folders point one way, no two modules import each
other (directly or round a loop), and the light commands load no JAX.

Imports are read from the source with ``ast`` (every import statement, inside functions and
``TYPE_CHECKING`` blocks too), so an import that runs only sometimes still counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("arch", "sweeps", "search", "laws", "decide", "cli")
ALLOWED = {
    "arch": set(),
    "sweeps": {"arch"},
    "search": {"arch", "sweeps"},
    "laws": {"arch"},
    "decide": {"arch", "sweeps", "search", "laws"},
    "cli": {"arch", "sweeps", "search", "laws", "decide"},
}
"""Folder -> the other folders it may import (docs/CONTRIBUTING.md, "Conventions")."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("archscale", *parts))


def modules() -> dict[str, Path]:
    files = [*ROOT.glob("*.py"), *(p for f in FOLDERS for p in (ROOT / f).glob("*.py"))]
    return {module_name(p): p for p in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The archscale modules ``path`` names in any import statement (``from pkg import mod``
    names the module ``pkg.mod`` where there is one, else ``pkg``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else None


def test_the_graph_reads_real_imports():
    """Guards the parser: edges known to exist are found."""
    edges = graph()
    assert "archscale.arch.spec" in edges["archscale.arch.frameworks"]
    assert "archscale.decide.recommendation" in edges["archscale.decide.export"]
    assert "archscale.arch.cpu_kernels" in edges["archscale.arch.cpu_backend"]


def test_folders_import_in_the_direction_of_the_flow():
    wrong = sorted(f"{src} imports {dst}" for src, targets in graph().items()
                   for dst in targets
                   if folder(src) and folder(dst) and folder(dst) != folder(src)
                   and folder(dst) not in ALLOWED[folder(src)])
    assert wrong == []


def test_no_module_imports_round_a_loop():
    """Tarjan's strongly connected components of the module graph: each must be one module."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


HEAVY = ("jax", "flax", "optax", "orbax")


@pytest.mark.parametrize("args", [
    ["arch", "show", "llama-3.2-1b"],
    ["arch", "show", "llama-3.2-1b", "--json"],
])
def test_arch_show_loads_no_jax(args):
    assert heavy_modules_after(args) == []  # `archscale export`: tests/test_export.py


def heavy_modules_after(args: list[str]) -> list[str]:
    """The heavy packages a fresh interpreter holds after running ``archscale ARGS``."""
    code = ("import sys\nfrom archscale.cli.main import app\n"
            f"try:\n    app({args!r})\nexcept SystemExit as stop:\n    assert not stop.code, stop\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])

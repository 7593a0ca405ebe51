"""The command line stays light: `archscale --help` imports no JAX, Optuna, pandas or plotting
(each command imports what it needs when it runs), and the light constants match their sources."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("jax", "flax", "orbax", "optuna", "matplotlib", "torch", "pandas", "scipy")


def test_cli_imports_no_heavy_package():
    code = ("import archscale.cli.main, sys; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_light_names_match_their_sources():
    from archscale import laws, search

    # `fit --law` lists the kinds without loading them; each name loads the kind of that name
    assert all(laws.get_kind(name).name == name for name in laws.BUILTIN_KINDS)
    # the packages' public names still import, lazily
    assert callable(laws.fit_law) and callable(search.run_study)
    assert set(dir(search)) >= {"create_study", "trials_table"}

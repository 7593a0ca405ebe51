"""Every ARCHSCALE_* variable the package reads is declared once (archscale/environment.py) and
listed in the README; the cache folders all hang off one root."""

import re
from pathlib import Path

from archscale import environment

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("arch", "sweeps", "search", "laws", "cli") for p in
           (ROOT / folder).rglob("*.py")] + [ROOT / "environment.py"]


def test_every_variable_the_code_names_is_declared_and_documented():
    named = {m for p in SOURCES for m in re.findall(r"ARCHSCALE_[A-Z_]+", p.read_text())}
    assert named <= set(environment.VARIABLES), named - set(environment.VARIABLES)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Environment"):]
    assert all(f"`{name}`" in section for name in environment.VARIABLES)


def test_caches_hang_off_one_root(monkeypatch, tmp_path):
    for name in (environment.JAX_CACHE, environment.KERNEL_CACHE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(environment.CACHE, str(tmp_path))
    assert environment.cache_root() == tmp_path
    assert environment.jax_cache_dir() == tmp_path / "jax"
    assert environment.kernel_cache_dir() == tmp_path / "kernels"
    monkeypatch.setenv(environment.JAX_CACHE, str(tmp_path / "elsewhere"))
    assert environment.jax_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv(environment.CACHE, "")  # empty counts as unset
    assert environment.cache_root() == Path.home() / ".cache" / "archscale"

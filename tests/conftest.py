"""Shared test setup: CPU-only JAX with a persistent compilation cache, tiny shapes."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ARCHSCALE_JAX_CACHE", str(Path.home() / ".cache/archscale/jax-tests"))

import pytest

from archscale.arch.runtime import configure_jax

configure_jax()

REPO_ROOT = Path(__file__).resolve().parents[1]
VALIDATION_DIR = REPO_ROOT.parent / "shared" / "validation"


@pytest.fixture
def tiny_spec():
    from archscale.arch import ArchSpec

    return ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                    head_dim=8, d_ff=64)

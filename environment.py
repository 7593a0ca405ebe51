"""Every environment variable archscale reads, and the folders it caches in: stated once here.

Modules read the variables through these names and functions, never by spelling them; the README's
"Environment" table and tests/test_environment.py hold to this list. Imports nothing heavy, so the
allocator restart (cli/entry.py) and the workers' start can read it first.
"""

from __future__ import annotations

import os
from pathlib import Path

STORAGE = "ARCHSCALE_STORAGE"
CACHE = "ARCHSCALE_CACHE"
JAX_CACHE = "ARCHSCALE_JAX_CACHE"
KERNEL_CACHE = "ARCHSCALE_KERNEL_CACHE"
CPU_KERNELS = "ARCHSCALE_CPU_KERNELS"
COMPUTE_DTYPE = "ARCHSCALE_COMPUTE_DTYPE"
PEAK_FLOPS = "ARCHSCALE_PEAK_FLOPS"
MEMORY_BANDWIDTH = "ARCHSCALE_MEMORY_BANDWIDTH"
KEEP_ALLOCATOR = "ARCHSCALE_KEEP_ALLOCATOR"
STUDY = "ARCHSCALE_STUDY"

VARIABLES: dict[str, str] = {
    STORAGE: "study storage URL for every command with --storage, and how workers get it",
    CACHE: "root of the caches (default ~/.cache/archscale): tokenizers/, data/, hardware.json",
    JAX_CACHE: "JAX's persistent compilation cache (default $ARCHSCALE_CACHE/jax)",
    KERNEL_CACHE: "compiled CPU decode kernels (default $ARCHSCALE_CACHE/kernels)",
    CPU_KERNELS: "0 serves CPU decode without the C++ kernels (the cpu-xla backend)",
    COMPUTE_DTYPE: "matmul dtype: float32 or bfloat16 (default bf16 on accelerators, fp32 on CPU)",
    PEAK_FLOPS: "device peak FLOP/s for MFU and rooflines, instead of the table or a probe",
    MEMORY_BANDWIDTH: "device memory bytes/s for rooflines, instead of the table or a probe",
    KEEP_ALLOCATOR: "1 skips the glibc allocator restart of the archscale command",
    STUDY: "the study the notebooks read (with ARCHSCALE_STORAGE)",
}
"""Name -> what it controls (the README lists the same)."""


def get(name: str) -> str | None:
    """A variable's value, or None when unset or empty; only names of ``VARIABLES``."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not an archscale environment variable")
    return os.environ.get(name) or None


def cache_root() -> Path:
    """$ARCHSCALE_CACHE, else ~/.cache/archscale."""
    return Path(get(CACHE) or Path.home() / ".cache" / "archscale")


def jax_cache_dir() -> Path:
    """$ARCHSCALE_JAX_CACHE, else <cache root>/jax."""
    return Path(get(JAX_CACHE) or cache_root() / "jax")


def kernel_cache_dir() -> Path:
    """$ARCHSCALE_KERNEL_CACHE, else <cache root>/kernels."""
    return Path(get(KERNEL_CACHE) or cache_root() / "kernels")

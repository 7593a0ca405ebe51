"""Native CPU kernels of a decode step: built on first use, called from jitted code via XLA FFI.

Used only by ``arch.cpu_backend`` (the optional XLA:CPU serving backend); the model never calls
them directly.

XLA:CPU runs a decode step's attention as one tiny matrix-vector product per (sequence, KV head),
each with its own thread-pool round trip, and its few-row weight matmuls at 50-75 GFLOP/s with
the weights cold in memory. ``kernels/decode.cc`` streams each head's keys and values once, and
multiplies the batch's rows by weights packed in contiguous panels (why and how: the file's
comments). It is C++ compiled once per machine with the system compiler (``$CXX``, else
``c++``/``g++``/``clang++``) against the installed jaxlib's FFI headers, and cached in
``$ARCHSCALE_KERNEL_CACHE`` (default ``$ARCHSCALE_CACHE/kernels``) under a key of the source,
flags, compiler, jax version and CPU, so a shared home directory never hands one machine
another's ``-march=native`` build.

``available()`` is False without a compiler (one warning), with ``ARCHSCALE_CPU_KERNELS=0`` or off
CPU; decode then runs on XLA alone (same numbers to ~1e-6), and throughput results record which
backend ran, because the two are not equally fast.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from archscale import environment

_log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "decode.cc"
ATTENTION_TARGET, MATMUL_TARGET = "archscale_decode_attention", "archscale_panel_matmul"
TARGETS = {ATTENTION_TARGET: "ArchscaleDecodeAttention", MATMUL_TARGET: "ArchscalePanelMatmul"}
"""XLA FFI target name -> the handler symbol the library exports."""
PANEL = 16
"""Output columns per panel of a packed weight (``pack_panels``)."""
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")


def cache_dir() -> Path:
    return environment.kernel_cache_dir()


def _compiler() -> str | None:
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)


def _cpu_description() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


def _build(compiler: str) -> Path:
    """The compiled library, from the cache or compiled now (atomically, safe across workers)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version, jax.__version__,
                                    platform.machine(), _cpu_description()]).encode()).hexdigest()
    library = cache_dir() / f"decode-{key[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        result = subprocess.run([compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE),
                                 "-o", str(built)], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip()[-2000:])
        os.replace(built, library)
    return library


@functools.cache
def available() -> bool:
    """True where the kernels are built and registered with XLA (once per process)."""
    if jax.default_backend() != "cpu" or environment.get(environment.CPU_KERNELS) == "0":
        return False
    compiler = _compiler()
    if compiler is None:
        _log.warning("no C++ compiler found (set CXX or install g++): decode runs on XLA alone, "
                     "which is slower on CPU; throughput results record this")
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                        platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as error:
        _log.warning("building the CPU decode kernels failed, decode runs on XLA alone "
                     "(throughput results record this): %s", error)
        return False
    return True


def decode_attention(q_BxKxGxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array,
                     valid: jax.Array) -> jax.Array:
    """Softmax attention of one query position to the first ``valid`` cached keys (fp32).

    Same result as ``attention.decode_attention``; call only where ``available()``.
    """
    call = jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct(q_BxKxGxH.shape, jnp.float32),
                            vmap_method="sequential")
    return call(q_BxKxGxH, k_BxKxSxH, v_BxKxSxH, jnp.asarray(valid, jnp.int32))


def pack_panels(w_IxO: jax.Array) -> jax.Array:
    """An input x output weight as O / 16 panels of I x 16 (``panel_matmul``'s layout): each
    panel is contiguous, so a decode step streams it from memory once."""
    inputs, outputs = w_IxO.shape
    return w_IxO.reshape(inputs, outputs // PANEL, PANEL).transpose(1, 0, 2)


def panel_matmul(x_MxI: jax.Array, w_PxIx16: jax.Array) -> jax.Array:
    """x @ W for few rows (a decode step's batch) and W packed by ``pack_panels`` (fp32); call
    only where ``available()``."""
    rows, outputs = x_MxI.shape[0], w_PxIx16.shape[0] * PANEL
    call = jax.ffi.ffi_call(MATMUL_TARGET, jax.ShapeDtypeStruct((rows, outputs), jnp.float32),
                            vmap_method="sequential")
    return call(x_MxI, w_PxIx16)

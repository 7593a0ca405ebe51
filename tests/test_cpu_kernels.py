"""The optional CPU serving backend and its native decode kernels (attention, panel matmul): the
same numbers as XLA, built once and cached, a clear fallback to XLA where they cannot be built,
and a model that never imports them. Only the tests that run a kernel need a C++ compiler."""

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from archscale.arch import ArchSpec, attention, cpu_backend, cpu_kernels
from archscale.arch.cpu_backend import PANEL_NAMES, TRANSPOSED_NAMES
from archscale.arch.model import Transformer
from archscale.arch.serving import XLA_SERVING, serving_backend

needs_kernels = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not cpu_kernels.available(),
    reason="the kernels run on CPU, built with a C++ compiler")


@needs_kernels
@pytest.mark.parametrize(("batch", "kv_heads", "group", "head_dim", "slots", "valid"), [
    (3, 4, 1, 64, 40, 37),   # MHA, AVX2 path with a tail of 5 keys
    (2, 2, 4, 32, 24, 24),   # GQA, every slot valid
    (2, 1, 3, 16, 9, 1),     # one valid key: softmax of a single score
    (1, 2, 2, 12, 11, 6),    # head_dim not a multiple of 8: the portable path
    (4, 4, 2, 64, 300, 290),  # 2.4 MB of keys and values: split over the thread pool
])
def test_kernel_matches_xla_attention(batch, kv_heads, group, head_dim, slots, valid):
    keys = jax.random.split(jax.random.key(batch * 100 + head_dim), 3)
    q = jax.random.normal(keys[0], (batch, kv_heads, group, head_dim)) * 3.0
    k = jax.random.normal(keys[1], (batch, kv_heads, slots, head_dim))
    v = jax.random.normal(keys[2], (batch, kv_heads, slots, head_dim))
    # Slots past `valid` hold garbage in a real cache: huge values must not leak into the result.
    k, v = (x.at[:, :, valid:].set(1e30) for x in (k, v))
    got = jax.jit(cpu_kernels.decode_attention)(q, k, v, jnp.int32(valid))
    expected = attention.decode_attention(q, k, v, jnp.int32(valid))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@needs_kernels
@pytest.mark.parametrize(("rows", "inputs", "outputs"), [
    (32, 64, 48),   # five full tiles of 6 rows and a tail of 2
    (7, 40, 16),    # one tile and a single-row tail, one panel
    (5, 9, 32),     # fewer rows than a tile
    (1, 3, 64),
    (30, 512, 256),  # 8 MFLOP: split over the thread pool
])
def test_panel_matmul_matches_a_float64_matmul(rows, inputs, outputs):
    keys = jax.random.split(jax.random.key(rows * inputs), 2)
    x_MxI = jax.random.normal(keys[0], (rows, inputs))
    w_IxO = jax.random.normal(keys[1], (inputs, outputs))
    got = jax.jit(lambda x, w: cpu_kernels.panel_matmul(x, cpu_kernels.pack_panels(w)))(x_MxI, w_IxO)
    expected = np.asarray(x_MxI, np.float64) @ np.asarray(w_IxO, np.float64)
    # fp32 rounding grows with the number of summed products (entries are ~sqrt(inputs)).
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * inputs)


def test_packed_panels_are_contiguous_16_column_slices():
    w_IxO = jnp.arange(3 * 32, dtype=jnp.float32).reshape(3, 32)
    panels_PxIx16 = cpu_kernels.pack_panels(w_IxO)
    assert panels_PxIx16.shape == (2, 3, 16)
    np.testing.assert_array_equal(panels_PxIx16[1], w_IxO[:, 16:])


def test_layer_weights_pack_only_matrices_with_whole_panels():
    # Output widths: wqkv (4 + 2 * 2) * 12 = 96 and gate/up 2 * 40 = 80 are whole panels;
    # wo and w_down give d_model 36 outputs, which stay input x output copies for XLA.
    spec = ArchSpec(vocab_size=64, seq_len=16, n_layers=1, d_model=36, n_heads=4, n_kv_heads=2,
                    head_dim=12, d_ff=40)
    model = Transformer(spec, rngs=nnx.Rngs(0), compute_dtype=jnp.float32)
    serving = model.layer_weights(cpu_backend.CPU_KERNELS)
    (weights,) = serving.layers
    assert serving.backend is cpu_backend.CPU_KERNELS
    assert weights[PANEL_NAMES["wqkv_JHxD"]].shape == (6, 36, 16)
    assert weights[PANEL_NAMES["w_gate_up_2FxD"]].shape == (5, 36, 16)
    assert weights[TRANSPOSED_NAMES["wo_DxNH"]].shape == (48, 36)
    assert weights[TRANSPOSED_NAMES["w_down_DxF"]].shape == (40, 36)
    # Without kernels every matrix is an input x output copy; the generic backend keeps them
    # as stored.
    (transposed,) = model.layer_weights(cpu_backend.CPU_XLA).layers
    assert {name: transposed[TRANSPOSED_NAMES[name]].shape for name in TRANSPOSED_NAMES} == {
        "wqkv_JHxD": (36, 96), "wo_DxNH": (48, 36), "w_gate_up_2FxD": (36, 80),
        "w_down_DxF": (40, 36)}
    (plain,) = model.layer_weights(XLA_SERVING).layers
    assert plain["wqkv_JHxD"].shape == (96, 36) and plain.keys() == model.layers.stacked(
        jnp.float32).keys()


def test_the_kernels_serve_fp32_where_they_build(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        monkeypatch.setattr(cpu_kernels, "available", lambda: True)
        assert serving_backend(jnp.float32) is cpu_backend.CPU_KERNELS
        assert serving_backend(jnp.bfloat16) is cpu_backend.CPU_XLA  # kernels: fp32
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
        assert serving_backend(jnp.float32) is cpu_backend.CPU_XLA
    assert caplog.records == []


def test_the_model_never_imports_the_cpu_backend():
    script = ("import sys, jax.numpy as jnp; from flax import nnx; "
              "from archscale.arch import ArchSpec; from archscale.arch.model import Transformer; "
              "spec = ArchSpec(vocab_size=64, seq_len=8, n_layers=1, d_model=16, n_heads=2, "
              "n_kv_heads=1, head_dim=8, d_ff=16); "
              "Transformer(spec, rngs=nnx.Rngs(0))(jnp.zeros((1, 8), jnp.int32)); "
              "print(sorted(m for m in sys.modules if m.startswith('archscale.arch.cpu')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, env=_base_env())
    assert result.stdout.strip() == "[]"  # training imports neither; serving selects it


@needs_kernels
def test_a_valid_length_outside_the_cache_is_an_error():
    x = jnp.ones((1, 1, 1, 8))
    cache = jnp.ones((1, 1, 4, 8))
    with pytest.raises(Exception, match="valid length is outside the cache"):
        jax.block_until_ready(cpu_kernels.decode_attention(x, cache, cache, jnp.int32(5)))


@needs_kernels
def test_the_build_is_cached_per_source_and_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_KERNEL_CACHE", str(tmp_path))
    compiler = cpu_kernels._compiler()
    first = cpu_kernels._build(compiler)
    built_at = first.stat().st_mtime_ns
    assert cpu_kernels._build(compiler) == first and first.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch files left


def _backend_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = ("import logging; logging.basicConfig(); "
              "from archscale.arch.serving import serving_backend; "
              "print(serving_backend('float32').name)")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env={**_base_env(), **env})


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CXX", "ARCHSCALE_CPU_KERNELS")}


@pytest.mark.parametrize(("env", "warning"), [
    ({"ARCHSCALE_CPU_KERNELS": "0"}, None),
    ({"CXX": "/nonexistent/c++"}, "no C++ compiler found"),
    ({"CXX": "false"}, "building the CPU decode kernels failed"),
])
def test_falls_back_to_xla_with_one_clear_warning(env, warning, tmp_path):
    result = _backend_in_subprocess({**env, "ARCHSCALE_KERNEL_CACHE": str(tmp_path)})
    assert result.stdout.strip() == cpu_backend.CPU_XLA.name
    if warning is None:
        assert result.stderr.strip() == ""
    else:
        assert result.stderr.count(warning) == 1 and "Traceback" not in result.stderr

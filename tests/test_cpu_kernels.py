"""The native CPU decode-attention kernel: same numbers as XLA's attention, built once and cached,
and a clear fallback to XLA where it cannot be built."""

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archscale.arch import cpu_kernels
from archscale.arch.model import _attend

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or cpu_kernels.decode_attention_impl() != cpu_kernels.KERNEL_IMPL,
    reason="the kernel runs on CPU with a C++ compiler")


def _xla_reference(q_BxKxGxH, k_BxKxSxH, v_BxKxSxH, valid):
    mask_1xS = jnp.arange(k_BxKxSxH.shape[2])[None, :] < valid
    return _attend(q_BxKxGxH[:, None], k_BxKxSxH, v_BxKxSxH, mask_1xS)[:, 0]


@pytest.mark.parametrize(("batch", "kv_heads", "group", "head_dim", "slots", "valid"), [
    (3, 4, 1, 64, 40, 37),   # MHA, AVX2 path with a tail of 5 keys
    (2, 2, 4, 32, 24, 24),   # GQA, every slot valid
    (2, 1, 3, 16, 9, 1),     # one valid key: softmax of a single score
    (1, 2, 2, 12, 11, 6),    # head_dim not a multiple of 8: the portable path
])
def test_kernel_matches_xla_attention(batch, kv_heads, group, head_dim, slots, valid):
    keys = jax.random.split(jax.random.key(batch * 100 + head_dim), 3)
    q = jax.random.normal(keys[0], (batch, kv_heads, group, head_dim)) * 3.0
    k = jax.random.normal(keys[1], (batch, kv_heads, slots, head_dim))
    v = jax.random.normal(keys[2], (batch, kv_heads, slots, head_dim))
    # Slots past `valid` hold garbage in a real cache: huge values must not leak into the result.
    k, v = (x.at[:, :, valid:].set(1e30) for x in (k, v))
    got = jax.jit(cpu_kernels.decode_attention)(q, k, v, jnp.int32(valid))
    np.testing.assert_allclose(got, _xla_reference(q, k, v, valid), rtol=2e-5, atol=2e-6)


def test_a_valid_length_outside_the_cache_is_an_error():
    x = jnp.ones((1, 1, 1, 8))
    cache = jnp.ones((1, 1, 4, 8))
    with pytest.raises(Exception, match="valid length is outside the cache"):
        jax.block_until_ready(cpu_kernels.decode_attention(x, cache, cache, jnp.int32(5)))


def test_the_build_is_cached_per_source_and_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_KERNEL_CACHE", str(tmp_path))
    compiler = cpu_kernels._compiler()
    first = cpu_kernels._build(compiler)
    built_at = first.stat().st_mtime_ns
    assert cpu_kernels._build(compiler) == first and first.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch files left


def _impl_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = ("import logging; logging.basicConfig(); "
              "from archscale.arch.cpu_kernels import decode_attention_impl; "
              "print(decode_attention_impl())")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env={**_base_env(), **env})


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CXX", "ARCHSCALE_CPU_KERNELS")}


@pytest.mark.parametrize(("env", "warning"), [
    ({"ARCHSCALE_CPU_KERNELS": "0"}, None),
    ({"CXX": "/nonexistent/c++"}, "no C++ compiler found"),
    ({"CXX": "false"}, "building the CPU decode-attention kernel failed"),
])
def test_falls_back_to_xla_with_one_clear_warning(env, warning, tmp_path):
    result = _impl_in_subprocess({**env, "ARCHSCALE_KERNEL_CACHE": str(tmp_path)})
    assert result.stdout.strip() == cpu_kernels.XLA_IMPL
    if warning is None:
        assert result.stderr.strip() == ""
    else:
        assert result.stderr.count(warning) == 1 and "Traceback" not in result.stderr


def test_decode_uses_the_kernel_only_for_fp32(caplog):
    with caplog.at_level(logging.WARNING):
        assert cpu_kernels.use_decode_kernel(jnp.float32, jnp.float32)
        assert not cpu_kernels.use_decode_kernel(jnp.bfloat16, jnp.float32)
    assert caplog.records == []

"""arch.attention: every path against a naive softmax attention written here in numpy (fp32 to
1e-5), MHA and GQA, causal, with and without a KV cache; the chunked long-context path; which
implementation each platform gets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archscale.arch import attention
from archscale.arch.serving import XLA_SERVING, serving_backend


def reference(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, positions_T):
    """Softmax attention in float64 numpy: query t sees key s iff s <= positions_T[t]; query
    head n reads KV head n // G."""
    q, k, v = (np.asarray(a, np.float64) for a in (q_BxTxNxH, k_BxSxKxH, v_BxSxKxH))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scores_BxNxTxS = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    visible_TxS = np.arange(k.shape[1])[None, :] <= np.asarray(positions_T)[:, None]
    scores_BxNxTxS = np.where(visible_TxS, scores_BxNxTxS, -np.inf)
    probs = np.exp(scores_BxNxTxS - scores_BxNxTxS.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def qkv(batch, queries, keys, heads, kv_heads, head_dim, seed=0):
    q_key, k_key, v_key = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(q_key, (batch, queries, heads, head_dim)) * 2.0,
            jax.random.normal(k_key, (batch, keys, kv_heads, head_dim)),
            jax.random.normal(v_key, (batch, keys, kv_heads, head_dim)))


HEADS = pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)],
                                ids=["mha", "gqa", "mqa"])


def cache_of(k_BxSxKxH, slots, fill=1e4):
    """k_BxSxKxH written into the first slots of a BxKxSxH cache; the slots after hold garbage."""
    B, S, K, H = k_BxSxKxH.shape
    cache = jnp.full((B, K, slots, H), fill, jnp.float32)
    return cache.at[:, :, :S].set(jnp.swapaxes(k_BxSxKxH, 1, 2))


@HEADS
def test_causal_attention_matches_the_reference(heads, kv_heads):
    q, k, v = qkv(2, 12, 12, heads, kv_heads, 8)
    got = jax.jit(attention.causal_attention)(q, k, v)
    np.testing.assert_allclose(got, reference(q, k, v, np.arange(12)), atol=1e-5, rtol=0)


@HEADS
def test_prefill_over_a_cache_matches_the_reference(heads, kv_heads):
    # 5 tokens already cached, 7 new ones at positions 5..11, a cache of 16 slots.
    q, k, v = qkv(2, 7, 12, heads, kv_heads, 8, seed=1)
    got = jax.jit(attention.prefill_attention)(q, cache_of(k, 16), cache_of(v, 16), jnp.int32(5))
    np.testing.assert_allclose(got, reference(q, k, v, 5 + np.arange(7)), atol=1e-5, rtol=0)


@HEADS
def test_decode_over_a_cache_matches_the_reference(heads, kv_heads):
    q, k, v = qkv(3, 1, 9, heads, kv_heads, 8, seed=2)
    q_BxKxGxH = q[:, 0].reshape(3, kv_heads, heads // kv_heads, 8)
    got = jax.jit(attention.decode_attention)(q_BxKxGxH, cache_of(k, 16), cache_of(v, 16),
                                              jnp.int32(9))
    np.testing.assert_allclose(got.reshape(3, 1, heads, 8), reference(q, k, v, [8]), atol=1e-5,
                               rtol=0)


@pytest.fixture
def tiny_score_budget(monkeypatch):
    """A budget of 4 query rows of scores for these shapes: every call below runs in chunks."""
    monkeypatch.setattr(attention, "SCORE_BYTES", 4 * 4 * 2 * 4 * 16)


def chunked(fn, *args):
    """fn(*args), checked to run as a loop over query chunks (a fresh trace: jit caches none)."""
    assert "scan" in str(jax.make_jaxpr(fn)(*args))
    return jax.jit(lambda *a: fn(*a))(*args)


@HEADS
def test_chunked_long_context_path_matches_the_reference(heads, kv_heads, tiny_score_budget):
    # T = 13 is no multiple of the 4-row chunk: the last chunk is padded.
    q, k, v = qkv(2, 13, 13, heads, kv_heads, 8, seed=3)
    got = chunked(attention.causal_attention, q, k, v)
    np.testing.assert_allclose(got, reference(q, k, v, np.arange(13)), atol=1e-5, rtol=0)
    q, k, v = qkv(2, 9, 13, heads, kv_heads, 8, seed=4)
    got = chunked(attention.prefill_attention, q, cache_of(k, 16), cache_of(v, 16), jnp.int32(4))
    np.testing.assert_allclose(got, reference(q, k, v, 4 + np.arange(9)), atol=1e-5, rtol=0)


def test_chunked_gradients_equal_the_direct_ones(monkeypatch):
    q, k, v = qkv(2, 13, 13, 4, 2, 8, seed=5)

    def loss(q, k, v):
        return jnp.sum(jnp.sin(attention.causal_attention(q, k, v)))

    direct = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    monkeypatch.setattr(attention, "SCORE_BYTES", 4 * 4 * 4 * 13)
    chunked = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(direct, chunked, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_chunked_path_never_holds_the_full_scores(monkeypatch):
    """A 2048-token sequence, forward and backward: XLA's memory plan holds several B N T S fp32
    score matrices in one piece, less than one in chunks of an eighth of them."""
    q, k, v = qkv(1, 2048, 2048, 2, 2, 16, seed=6)
    full_scores_bytes = 1 * 2 * 2048 * 2048 * 4  # 32 MiB

    def temp_bytes():
        grad = jax.grad(lambda *a: jnp.sum(attention.causal_attention(*a)), argnums=(0, 1, 2))
        return jax.jit(grad).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes() > 2 * full_scores_bytes
    monkeypatch.setattr(attention, "SCORE_BYTES", full_scores_bytes // 8)
    assert temp_bytes() < full_scores_bytes


def test_splash_kernel_matches_the_reference_in_interpret_mode():
    """The TPU kernel's wrapper (scaling, layout, GQA), run by Pallas' interpreter on this CPU."""
    q, k, v = qkv(1, 128, 128, 4, 2, 16, seed=7)
    got = attention._splash_causal(q, k, v, interpret=True)
    np.testing.assert_allclose(got, reference(q, k, v, np.arange(128)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("platform, cudnn, dtype, head_dim, causal_len, expected", [
    ("cpu", False, jnp.float32, 64, 256, "xla"),
    ("cpu", False, jnp.bfloat16, 64, 256, "xla"),
    ("gpu", True, jnp.bfloat16, 64, None, "cudnn"),
    ("gpu", True, jnp.float16, 128, 256, "cudnn"),
    ("gpu", True, jnp.float32, 64, 256, "xla"),      # cuDNN's flash attention is bf16/fp16
    ("gpu", True, jnp.bfloat16, 12, 256, "xla"),     # head_dim not a multiple of 8
    ("gpu", False, jnp.bfloat16, 64, 256, "xla"),    # pre-Ampere or ROCm
    ("tpu", False, jnp.bfloat16, 64, 256, "splash"),
    ("tpu", False, jnp.bfloat16, 64, 200, "xla"),    # not a whole number of splash blocks
    ("tpu", False, jnp.bfloat16, 64, None, "xla"),   # prefill: the diagonal's offset is traced
])
def test_each_platform_gets_its_implementation(monkeypatch, platform, cudnn, dtype, head_dim,
                                               causal_len, expected):
    monkeypatch.setattr(attention.jax, "default_backend", lambda: platform)
    monkeypatch.setattr(attention, "_cudnn_device", lambda: cudnn)
    assert attention.implementation(dtype, head_dim, causal_len) == expected


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_serving_backend_off_cpu_is_plain_xla(monkeypatch, platform):
    monkeypatch.setattr(attention.jax, "default_backend", lambda: platform)
    for dtype in (jnp.float32, jnp.bfloat16):
        assert serving_backend(dtype) is XLA_SERVING

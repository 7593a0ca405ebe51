"""The Flax model: parameter counts, cached decoding == full forward, causality, jit-ability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from archscale.arch import ArchscaleError, ArchSpec, cpu_backend
from archscale.arch.model import KVCache, Transformer, count_params
from archscale.arch.serving import XLA_SERVING


def make_spec(**changes) -> ArchSpec:
    base = dict(vocab_size=97, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=48)
    return ArchSpec(**{**base, **changes})


@pytest.mark.parametrize("changes", [
    {},
    {"tie_embeddings": False},
    {"n_kv_heads": 4},                                   # GQA group 1 (multi-head)
    {"n_kv_heads": 1},                                   # GQA group 4 (multi-query)
    {"head_dim": 12, "n_heads": 2, "n_kv_heads": 1},     # head_dim != d_model / n_heads
    {"n_layers": 1, "d_model": 48, "d_ff": 40, "tie_embeddings": False},
])
def test_count_params_equals_spec(changes):
    spec = make_spec(**changes)
    model = Transformer(spec, rngs=nnx.Rngs(0))
    assert count_params(model) == spec.params_total


@pytest.fixture(scope="module")
def gqa_model():
    return Transformer(make_spec(), rngs=nnx.Rngs(0), compute_dtype=jnp.float32)


@pytest.fixture(scope="module")
def tokens_BxT():
    return jax.random.randint(jax.random.key(1), (3, 12), 0, 97)


def test_forward_shape_dtype_and_scale(gqa_model, tokens_BxT):
    logits = gqa_model(tokens_BxT)
    assert logits.shape == (3, 12, 97) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    # At init the next-token distribution is near uniform: loss ~ log(vocab).
    loss = -jax.nn.log_softmax(logits).mean(axis=-1).mean()
    assert abs(float(loss) - np.log(97)) < 0.5


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("backend", ["default", "xla", "cpu-xla"])
def test_cached_decoding_matches_forward(kv_heads, backend, tokens_BxT):
    model = Transformer(make_spec(n_kv_heads=kv_heads), rngs=nnx.Rngs(kv_heads),
                        compute_dtype=jnp.float32)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))
    prefill = jax.jit(lambda state, tokens, cache: nnx.merge(graphdef, state).prefill(tokens, cache))
    serving = {"default": None, "xla": XLA_SERVING,
               "cpu-xla": cpu_backend.CPU_XLA}[backend]

    @jax.jit
    def decode(state, tokens_BxT, cache):
        # Token by token with the layer weights sliced once, as a generation loop does: on the
        # platform's serving backend (on CPU, its native kernels where they build: every output
        # width here is a multiple of 16, so all matrices are packed), on plain XLA, or on XLA
        # with the CPU backend's input x output copies.
        model = nnx.merge(graphdef, state)
        weights = model.layer_weights(serving)
        steps = []
        for t in range(tokens_BxT.shape[1]):
            logits_BxV, cache = model.decode_step(tokens_BxT[:, t], cache, weights=weights)
            steps.append(logits_BxV[:, None])
        return jnp.concatenate(steps, axis=1), cache

    cache = model.init_cache(batch=3, max_len=16)
    # Two prefill chunks (the second attends to the first through the cache), then decoding.
    first, cache = prefill(state, tokens_BxT[:, :4], cache)
    second, cache = prefill(state, tokens_BxT[:, 4:8], cache)
    rest, cache = decode(state, tokens_BxT[:, 8:], cache)
    cached = jnp.concatenate([first, second, rest], axis=1)
    np.testing.assert_allclose(cached, forward(state, tokens_BxT), atol=1e-4, rtol=0)
    assert int(cache.length) == 12


def test_prefill_last_only(gqa_model, tokens_BxT):
    last, cache = gqa_model.prefill(tokens_BxT, gqa_model.init_cache(3, 12), last_only=True)
    assert last.shape == (3, 1, 97)
    np.testing.assert_allclose(last[:, 0], gqa_model(tokens_BxT)[:, -1], atol=1e-4, rtol=0)
    assert cache.max_len == 12 and len(cache.k_BxKxSxH) == 2
    assert cache.k_BxKxSxH[0].shape == (3, 2, 12, 8)


def test_causality(gqa_model, tokens_BxT):
    changed = tokens_BxT.at[:, 8].set((tokens_BxT[:, 8] + 1) % 97)
    before, after = gqa_model(tokens_BxT), gqa_model(changed)
    np.testing.assert_array_equal(before[:, :8], after[:, :8])
    assert not np.allclose(before[:, 8:], after[:, 8:])


def test_split_merge_inside_jit(gqa_model, tokens_BxT):
    graphdef, params, rest = nnx.split(gqa_model, nnx.Param, ...)

    @jax.jit
    def loss(params, rest, tokens):
        logits = nnx.merge(graphdef, params, rest)(tokens)
        return -jax.nn.log_softmax(logits).mean()

    grads = jax.grad(loss)(params, rest, tokens_BxT)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    np.testing.assert_allclose(loss(params, rest, tokens_BxT),
                               -jax.nn.log_softmax(gqa_model(tokens_BxT)).mean(), rtol=1e-5)


def test_cache_is_a_pytree_that_jit_donates(gqa_model, tokens_BxT):
    graphdef, state = nnx.split(gqa_model)

    def step(state, tokens_B, cache):
        return nnx.merge(graphdef, state).decode_step(tokens_B, cache)

    donated = gqa_model.init_cache(3, 4)
    logits, cache = jax.jit(step, donate_argnums=2)(state, tokens_BxT[:, 0], donated)
    assert isinstance(cache, KVCache) and int(cache.length) == 1
    np.testing.assert_allclose(logits, gqa_model(tokens_BxT[:, :1])[:, 0], atol=1e-4, rtol=0)
    # Every layer's buffers were handed to XLA, which wrote the new cache into them in place.
    assert all(b.is_deleted() for b in (*donated.k_BxKxSxH, *donated.v_BxKxSxH))
    assert not any(b.is_deleted() for b in (*cache.k_BxKxSxH, *cache.v_BxKxSxH))


def test_bf16_compute_keeps_fp32_params_and_logits(tokens_BxT):
    model = Transformer(make_spec(), rngs=nnx.Rngs(0), compute_dtype=jnp.bfloat16)
    reference = Transformer(make_spec(), rngs=nnx.Rngs(0), compute_dtype=jnp.float32)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    logits = model(tokens_BxT)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, reference(tokens_BxT), atol=0.05)


def test_cache_misuse_raises(gqa_model, tokens_BxT):
    with pytest.raises(ArchscaleError, match="max_len"):
        gqa_model.prefill(tokens_BxT, gqa_model.init_cache(3, 8))
    with pytest.raises(ArchscaleError, match="batch=0"):
        gqa_model.init_cache(0, 8)

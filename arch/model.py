"""The LLaMA-style decoder in Flax NNX, with KV-cache prefill and decoding.

Embedding (tied or untied), pre-RMSNorm blocks of RoPE grouped-query attention and a SwiGLU MLP,
a final RMSNorm, no biases. Layer weights are stacked along a leading layer axis L and the
forward pass scans over them (``jax.lax.scan``), so compile time does not grow with depth.

Dtypes: parameters are ``param_dtype`` (fp32); matmuls run in ``compute_dtype`` (bf16 on
accelerators, fp32 on CPU, see ``archscale.arch.runtime.default_compute_dtype``) with fp32
accumulation; norms, RoPE and softmax run in fp32; logits are fp32.

Dimension letters: B batch, T query positions, S key positions (cache slots), D d_model,
N query heads, K KV heads, G query heads per KV head (N = K G), J = N + 2K heads of the fused
QKV projection, H head_dim, F d_ff, V vocab, L layers. Letters run together name one flattened
axis: JH is J * H.

Matmuls see every weight as a 2-D output x input matrix (``Layers.stacked``): XLA lowers such a
dot to one GEMM on the array, where a weight with several free or contracted axes gets transposed
on every call. Attention is ``arch.attention``'s, which picks each platform's implementation; a
generation loop runs on a ``ServingBackend`` chosen there too (the weights' serving layout, its
matmuls and decode attention), so no platform's speed code lives here.

Keys and values are laid out BxKxSxH (KV head before position) in the cache: a decode step's
attention reads each (row, KV head) of it in place, with no transpose.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from archscale.arch import attention, serving
from archscale.arch.errors import ArchscaleError
from archscale.arch.runtime import default_compute_dtype
from archscale.arch.serving import ServingBackend
from archscale.arch.spec import ArchSpec

INIT_STD = 0.02
"""Standard deviation of every weight matrix at init (GPT-2 / LLaMA style)."""



@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for ``length`` tokens of each batch row (a pytree).

    One buffer per layer (not one stacked array): a decode step updates each in place and its
    attention reads it directly, where slicing a layer out of a stacked array would copy it.
    """

    k_BxKxSxH: tuple[jax.Array, ...]
    """Cached keys of each layer, RoPE applied; slots from ``length`` on hold garbage (masked)."""
    v_BxKxSxH: tuple[jax.Array, ...]
    """Cached values of each layer."""
    length: jax.Array
    """int32 scalar: tokens already cached (the same for every batch row)."""

    @property
    def max_len(self) -> int:
        return self.k_BxKxSxH[0].shape[2]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ServingWeights:
    """Each layer's weights in a serving backend's layout (a pytree; the backend is static)."""

    layers: tuple[dict[str, jax.Array], ...]
    """One dict per layer: ``Layers.stacked``'s names and layout, or the backend's own."""
    backend: ServingBackend = field(metadata={"static": True})
    """The backend whose ``prepare`` made them; its matmuls and decode attention read them."""


def _weight_shapes(spec: ArchSpec) -> dict[str, tuple[tuple[int, ...], float | None]]:
    """Every weight's shape and init std (None: a norm weight, initialised to ones)."""
    L, D, N, K, H, F, V = (spec.n_layers, spec.d_model, spec.n_heads, spec.n_kv_heads,
                           spec.head_dim, spec.d_ff, spec.vocab_size)
    # Residual-branch outputs shrink with depth so the residual stream's scale stays put.
    out_std = INIT_STD / math.sqrt(2 * L)
    shapes = {
        "embed_VxD": ((V, D), INIT_STD),
        "final_norm_D": ((D,), None),
        "attn_norm_LxD": ((L, D), None),
        "wqkv_LxJxHxD": ((L, N + 2 * K, H, D), INIT_STD),
        "wo_LxDxNxH": ((L, D, N, H), out_std),
        "mlp_norm_LxD": ((L, D), None),
        "w_gate_up_Lx2xFxD": ((L, 2, F, D), INIT_STD),
        "w_down_LxDxF": ((L, D, F), out_std),
    }
    if not spec.tie_embeddings:
        shapes["lm_head_DxV"] = ((D, V), INIT_STD)
    return shapes


@partial(jax.jit, static_argnums=(1, 2))
def _initial_weights(key: jax.Array, spec: ArchSpec, dtype) -> dict[str, jax.Array]:
    """All initial weights from one compiled call (eager init compiles once per weight shape)."""
    shapes = _weight_shapes(spec)
    # One normal draw sliced into every weight: a threefry per weight made this tiny function
    # take seconds to compile, which dominated short runs of small models.
    sizes = {name: math.prod(shape) for name, (shape, std) in shapes.items() if std is not None}
    flat = jax.random.normal(key, (sum(sizes.values()),), dtype)
    offsets = dict(zip(sizes, itertools.accumulate(sizes.values(), initial=0), strict=False))
    return {name: jnp.ones(shape, dtype) if std is None
            else std * flat[offsets[name]:offsets[name] + sizes[name]].reshape(shape)
            for name, (shape, std) in shapes.items()}


class Layers(nnx.Module):
    """The n_layers decoder blocks, every weight stacked along a leading layer axis L."""

    def __init__(self, weights: dict[str, jax.Array]) -> None:
        self.attn_norm_LxD = nnx.Param(weights["attn_norm_LxD"])
        self.wqkv_LxJxHxD = nnx.Param(weights["wqkv_LxJxHxD"])
        self.wo_LxDxNxH = nnx.Param(weights["wo_LxDxNxH"])
        self.mlp_norm_LxD = nnx.Param(weights["mlp_norm_LxD"])
        self.w_gate_up_Lx2xFxD = nnx.Param(weights["w_gate_up_Lx2xFxD"])
        self.w_down_LxDxF = nnx.Param(weights["w_down_LxDxF"])

    def stacked(self, dtype) -> dict[str, jax.Array]:
        """Every layer's weights stacked along L, for lax.scan: norm scales as stored, matrices
        as 2-D output x input views (free reshapes) in ``dtype``. Keys name one layer's shape."""
        L, D = self.attn_norm_LxD.shape
        matrices = {
            "wqkv_JHxD": self.wqkv_LxJxHxD[...].reshape(L, -1, D),
            "wo_DxNH": self.wo_LxDxNxH[...].reshape(L, D, -1),
            "w_gate_up_2FxD": self.w_gate_up_Lx2xFxD[...].reshape(L, -1, D),
            "w_down_DxF": self.w_down_LxDxF[...],
        }
        return {"attn_norm_D": self.attn_norm_LxD[...], "mlp_norm_D": self.mlp_norm_LxD[...],
                **{name: w.astype(dtype) for name, w in matrices.items()}}


class Transformer(nnx.Module):
    """LLaMA-style decoder-only language model of shape ``spec``."""

    def __init__(self, spec: ArchSpec, *, rngs: nnx.Rngs, compute_dtype=None,
                 param_dtype=jnp.float32) -> None:
        self.spec = spec
        self.compute_dtype = jnp.dtype(compute_dtype or default_compute_dtype())
        weights = _initial_weights(rngs.params(), spec, jnp.dtype(param_dtype))
        self.embed_VxD = nnx.Param(weights["embed_VxD"])
        self.layers = Layers(weights)
        self.final_norm_D = nnx.Param(weights["final_norm_D"])
        if not spec.tie_embeddings:
            self.lm_head_DxV = nnx.Param(weights["lm_head_DxV"])

    # ---- public API ---------------------------------------------------------------------------
    def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
        """Causal forward pass: fp32 logits_BxTxV. Pure and traceable (no cache, no state)."""
        cos, sin = self.rope_tables(jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32))

        def layer(x_BxTxD, p):
            q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self._qkv(p, x_BxTxD, cos, sin, _matmul)
            out_BxTxNxH = attention.causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
            return self._finish(p, x_BxTxD, out_BxTxNxH, _matmul), None

        x_BxTxD, _ = jax.lax.scan(layer, self._embed(tokens_BxT),
                                  self.layers.stacked(self.compute_dtype))
        return self._logits(x_BxTxD)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache with room for ``max_len`` tokens per row (dtype: the compute dtype)."""
        if batch < 1 or max_len < 1:
            raise ArchscaleError(f"init_cache(batch={batch}, max_len={max_len}): both must be >= 1")
        s = self.spec
        dtype = jnp.dtype(dtype or self.compute_dtype)
        shape = (batch, s.n_kv_heads, max_len, s.head_dim)
        # 2 L distinct buffers: a donated cache must not hand XLA one buffer twice.
        k, v = (tuple(jnp.zeros(shape, dtype) for _ in range(s.n_layers)) for _ in range(2))
        return KVCache(k, v, jnp.zeros((), jnp.int32))

    def layer_weights(self, backend: ServingBackend | None = None) -> ServingWeights:
        """Each layer's weights sliced out of the stacks in the compute dtype, in ``backend``'s
        serving layout (default: ``serving.serving_backend`` of the compute dtype).

        A generation loop computes this once, before the loop, and passes it to every
        ``decode_step``: slicing inside the loop would copy every weight at every token.
        """
        backend = backend or serving.serving_backend(self.compute_dtype)
        stacked = self.layers.stacked(self.compute_dtype)
        layers = tuple({name: w[index] for name, w in stacked.items()}
                       for index in range(self.spec.n_layers))
        return ServingWeights(tuple(map(backend.prepare, layers)) if backend.prepare else layers,
                              backend)

    def prefill(self, tokens_BxT: jax.Array, cache: KVCache, *, last_only: bool = False,
                weights: ServingWeights | None = None,
                rope: tuple[jax.Array, jax.Array] | None = None,
                ) -> tuple[jax.Array, KVCache]:
        """Append ``tokens_BxT`` to the cache; fp32 logits_BxTxV of those positions.

        ``last_only`` returns logits_Bx1xV of the last position alone, as a server does when it
        only needs the first generated token (the output projection then costs one position).
        ``weights`` is ``layer_weights()``, computed once outside a generation loop (their
        backend runs the matmuls, and the attention of a single position), and
        ``rope`` the (cos, sin) tables of these T positions (``rope_tables``): XLA fuses the
        tables into their consumers, so computed here they cost a cos and a sin per batch row
        and head (about 2 ms of a 35 ms decode step of d_model 512).
        The caller keeps ``cache.length + T <= cache.max_len`` (a traced length cannot be checked
        here; writes past the end would be clamped by dynamic_update_slice).

        The layers are unrolled rather than scanned so that each reads its own cache buffer in
        place (a scan would slice, hence copy, a stacked cache at every step).
        """
        T = tokens_BxT.shape[1]
        if cache.max_len < T:
            raise ArchscaleError(f"prefill of {T} tokens does not fit a cache of max_len "
                                 f"{cache.max_len}: call init_cache with a larger max_len")
        s = self.spec
        start = cache.length
        cos, sin = rope or self.rope_tables(start + jnp.arange(T, dtype=jnp.int32))
        weights = weights if weights is not None else self.layer_weights()
        backend = weights.backend
        matmul = backend.matmul or _matmul
        x_BxTxD = self._embed(tokens_BxT)
        new_k, new_v = [], []
        for p, k_cache, v_cache in zip(weights.layers, cache.k_BxKxSxH, cache.v_BxKxSxH,
                                       strict=True):
            q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self._qkv(p, x_BxTxD, cos, sin, matmul)
            k_cache, v_cache = _write(k_cache, k_BxTxKxH, start), _write(v_cache, v_BxTxKxH, start)
            if T == 1:
                B = q_BxTxNxH.shape[0]
                q_BxKxGxH = q_BxTxNxH.reshape(B, s.n_kv_heads, s.gqa_group, s.head_dim)
                out_BxKxGxH = backend.decode_attention(q_BxKxGxH, k_cache, v_cache, start + 1)
                out_BxTxNxH = out_BxKxGxH.reshape(q_BxTxNxH.shape)
            else:
                out_BxTxNxH = attention.prefill_attention(q_BxTxNxH, k_cache, v_cache, start)
            x_BxTxD = self._finish(p, x_BxTxD, out_BxTxNxH, matmul)
            new_k.append(k_cache)
            new_v.append(v_cache)
        if last_only:
            x_BxTxD = x_BxTxD[:, -1:]
        return self._logits(x_BxTxD), KVCache(tuple(new_k), tuple(new_v), start + T)

    def decode_step(self, tokens_B: jax.Array, cache: KVCache, *,
                    weights: ServingWeights | None = None,
                    rope: tuple[jax.Array, jax.Array] | None = None,
                    ) -> tuple[jax.Array, KVCache]:
        """Append one token per row; fp32 logits_BxV of the next token (``weights``, ``rope``:
        see prefill)."""
        logits_Bx1xV, cache = self.prefill(tokens_B[:, None], cache, weights=weights, rope=rope)
        return logits_Bx1xV[:, 0], cache

    def greedy_decode(self, tokens_B: jax.Array, cache: KVCache, steps: int, *,
                      weights: ServingWeights | None = None,
                      ) -> tuple[jax.Array, KVCache]:
        """Feed ``tokens_B``, then each row's argmax, ``steps`` times in one ``lax.fori_loop``.

        Returns the generated tokens_BxN (N = steps; token i is the argmax after input i) and
        the cache ``steps`` tokens longer. Jit it with the cache donated: every step then
        updates each layer's buffer in place. ``weights`` (``layer_weights()``) may be prepared
        once per model, as a server does; by default they are sliced here, before the loop.
        The caller keeps ``cache.length + steps <= cache.max_len``.
        """
        weights = weights if weights is not None else self.layer_weights()
        cos_Nx1xHh, sin_Nx1xHh = self.rope_tables(cache.length + jnp.arange(steps, dtype=jnp.int32))

        def step(i, carry):
            tokens_B, cache, out_BxN = carry
            rope = (jax.lax.dynamic_slice_in_dim(cos_Nx1xHh, i, 1),
                    jax.lax.dynamic_slice_in_dim(sin_Nx1xHh, i, 1))
            logits_BxV, cache = self.decode_step(tokens_B, cache, weights=weights, rope=rope)
            tokens_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
            return tokens_B, cache, out_BxN.at[:, i].set(tokens_B)

        out_BxN = jnp.zeros((tokens_B.shape[0], steps), jnp.int32)
        _, cache, out_BxN = jax.lax.fori_loop(0, steps, step,
                                              (tokens_B.astype(jnp.int32), cache, out_BxN))
        return out_BxN, cache

    def rope_tables(self, positions_T: jax.Array) -> tuple[jax.Array, jax.Array]:
        """RoPE cos and sin of these positions, each Tx1x(H/2)."""
        return _rope_tables(positions_T, self.spec.head_dim, self.spec.rope_theta)

    # ---- pieces shared by the forward pass and the cached path -------------------------------
    def _embed(self, tokens_BxT: jax.Array) -> jax.Array:
        return jnp.take(self.embed_VxD[...], tokens_BxT, axis=0).astype(self.compute_dtype)

    def _qkv(self, p, x_BxTxD, cos, sin, matmul: Matmul):
        """Normed input -> q_BxTxNxH, k_BxTxKxH, v_BxTxKxH with RoPE on q and k."""
        s = self.spec
        N, K = s.n_heads, s.n_kv_heads
        h_BxTxD = _rms_norm(x_BxTxD, p["attn_norm_D"], s.norm_eps)
        B, T = x_BxTxD.shape[:2]
        qkv_BxTxJH = matmul(h_BxTxD, p, "wqkv_JHxD")
        qkv_BxTxJxH = qkv_BxTxJH.reshape(B, T, N + 2 * K, s.head_dim)
        q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = jnp.split(qkv_BxTxJxH, [N, N + K], axis=2)
        return _rope(q_BxTxNxH, cos, sin), _rope(k_BxTxKxH, cos, sin), v_BxTxKxH

    def _finish(self, p, x_BxTxD, attn_BxTxNxH, matmul: Matmul):
        """Output projection and residual, then the SwiGLU MLP block and residual."""
        B, T = x_BxTxD.shape[:2]
        attn_BxTxNH = attn_BxTxNxH.reshape(B, T, -1)
        x_BxTxD = x_BxTxD + matmul(attn_BxTxNH, p, "wo_DxNH")
        h_BxTxD = _rms_norm(x_BxTxD, p["mlp_norm_D"], self.spec.norm_eps)
        gate_up_BxTx2F = matmul(h_BxTxD, p, "w_gate_up_2FxD")
        gate_up_BxTx2xF = gate_up_BxTx2F.reshape(B, T, 2, self.spec.d_ff)
        hidden_BxTxF = jax.nn.silu(gate_up_BxTx2xF[:, :, 0]) * gate_up_BxTx2xF[:, :, 1]
        return x_BxTxD + matmul(hidden_BxTxF, p, "w_down_DxF")

    def _logits(self, x_BxTxD: jax.Array) -> jax.Array:
        """Final norm and output projection; compute-dtype operands, fp32 accumulation."""
        h_BxTxD = _rms_norm(x_BxTxD, self.final_norm_D[...], self.spec.norm_eps)
        head_DxV = self.embed_VxD[...].T if self.spec.tie_embeddings else self.lm_head_DxV[...]
        return jnp.einsum("btd,dv->btv", h_BxTxD, head_DxV.astype(self.compute_dtype),
                          preferred_element_type=jnp.float32)


Matmul = Callable[[jax.Array, dict[str, jax.Array], str], jax.Array]
"""x_BxTxI @ W for the matrix named ``name`` (a ``Layers.stacked`` key) in a layer's weights."""


def _matmul(x_BxTxI: jax.Array, p: dict[str, jax.Array], name: str) -> jax.Array:
    """x @ W for the matrix stored output x input as ``name``."""
    return jnp.einsum("bti,oi->bto", x_BxTxI, p[name])


def _write(cache_BxKxSxH: jax.Array, new_BxTxKxH: jax.Array, start: jax.Array) -> jax.Array:
    """The cache with these T positions written from slot ``start`` on."""
    new_BxKxTxH = jnp.swapaxes(new_BxTxKxH, 1, 2).astype(cache_BxKxSxH.dtype)
    return jax.lax.dynamic_update_slice(cache_BxKxSxH, new_BxKxTxH, (0, 0, start, 0))


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * weight.astype(jnp.float32)).astype(x.dtype)


def _rope_tables(positions_T: jax.Array, head_dim: int,
                 theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of shape Tx1x(H/2), broadcastable over BxTxheadsx(H/2)."""
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles_TxHh = positions_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles_TxHh)[:, None, :], jnp.sin(angles_TxHh)[:, None, :]


def _rope(x_BxTxNxH: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding in the half-split ("rotate_half") form HF LLaMA uses."""
    x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxNxH.dtype)


def count_params(model: nnx.Module) -> int:
    """Number of parameters (every nnx.Param element); equals ``spec.params_total``."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

"""archscale weights -> HuggingFace ``LlamaForCausalLM`` weights (names, layouts, safetensors).

Our model stores each layer's matrices stacked along a leading layer axis and fused (Q, K and
V in one projection, gate and up in another), all output x input like torch's ``nn.Linear``;
HF keeps one matrix per projection and layer. Splitting and reshaping is all it takes:

* RoPE: both rotate split halves of each head (``rotate_half``, arch/model.py ``_rope``), so
  q and k rows need no permutation (an interleaved-pairs RoPE would).
* GQA: query head n uses KV head n // G in both (HF's ``repeat_kv`` repeats each KV head G
  times in a row; our fused QKV stores the N query heads first, in that order).
* Tied embeddings: HF ties ``lm_head.weight`` to the embedding and leaves it out of the file.

tests/test_hf_numerics.py holds the mapping to transformers' own forward pass within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from archscale.arch.errors import ArchscaleError
from archscale.arch.export import write_hf_config
from archscale.arch.model import Transformer

WEIGHTS_FILE = "model.safetensors"


def hf_state_dict(model: Transformer, dtype=np.float32) -> dict[str, np.ndarray]:
    """``LlamaForCausalLM`` state-dict names -> ``model``'s weights as ``dtype`` numpy arrays."""
    spec = model.spec
    N, K, H = spec.n_heads, spec.n_kv_heads, spec.head_dim
    weights = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    layers = {name: np.asarray(w, dtype) for name, w in weights["layers"].items()}
    out = {"model.embed_tokens.weight": np.asarray(weights["embed_VxD"], dtype),
           "model.norm.weight": np.asarray(weights["final_norm_D"], dtype)}
    if not spec.tie_embeddings:
        out["lm_head.weight"] = np.asarray(weights["lm_head_DxV"], dtype).T
    for i in range(spec.n_layers):
        wqkv_JxHxD = layers["wqkv_LxJxHxD"][i]
        q, k, v = np.split(wqkv_JxHxD, [N, N + K], axis=0)
        gate_FxD, up_FxD = layers["w_gate_up_Lx2xFxD"][i]
        prefix = f"model.layers.{i}."
        out |= {
            prefix + "input_layernorm.weight": layers["attn_norm_LxD"][i],
            prefix + "post_attention_layernorm.weight": layers["mlp_norm_LxD"][i],
            prefix + "self_attn.q_proj.weight": q.reshape(N * H, -1),
            prefix + "self_attn.k_proj.weight": k.reshape(K * H, -1),
            prefix + "self_attn.v_proj.weight": v.reshape(K * H, -1),
            prefix + "self_attn.o_proj.weight": layers["wo_LxDxNxH"][i].reshape(spec.d_model, -1),
            prefix + "mlp.gate_proj.weight": gate_FxD,
            prefix + "mlp.up_proj.weight": up_FxD,
            prefix + "mlp.down_proj.weight": layers["w_down_LxDxF"][i],
        }
    return {name: np.ascontiguousarray(w) for name, w in out.items()}


def save_hf(model: Transformer, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write ``config.json`` and ``model.safetensors`` (fp32, as trained) into ``out_dir``, a
    folder ``LlamaForCausalLM.from_pretrained`` loads; ``dtype`` is the config's dtype field
    (what transformers casts the weights to on loading). Returns the weights file's path."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise ArchscaleError("writing weights needs the safetensors package: "
                             "pip install 'archscale[hf]'") from None
    write_hf_config(model.spec, out_dir, dtype)
    path = Path(out_dir) / WEIGHTS_FILE
    # transformers 4 refuses a safetensors file whose metadata does not name its framework.
    save_file(hf_state_dict(model), str(path), metadata={"format": "pt"})
    return path

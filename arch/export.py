"""ArchSpec <-> HuggingFace LLaMA ``config.json`` (what training frameworks load).

The written config holds both the transformers 5 fields (``rope_parameters``, ``dtype``) and
their transformers 4 spellings (``rope_theta``, ``torch_dtype``), so either version reads it.
``head_dim`` is always explicit: it need not equal hidden_size / num_attention_heads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archscale.arch.spec import ArchSpec, SpecError

# LlamaConfig defaults for keys a config may leave out.
_HF_DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 10000.0}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")


def spec_to_hf_config(spec: ArchSpec, dtype: str = "bfloat16") -> dict[str, Any]:
    """LlamaConfig fields describing ``spec`` (LlamaForCausalLM has spec.params_total params)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "intermediate_size": spec.d_ff,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "max_position_embeddings": spec.seq_len,
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "rope_theta": spec.rope_theta,
        "rms_norm_eps": spec.norm_eps,
        "tie_word_embeddings": spec.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def spec_from_hf_config(config: dict[str, Any]) -> ArchSpec:
    """The ArchSpec of a LLaMA-style HF config dict (RoPE scaling, if any, is not represented)."""
    model_type = config.get("model_type", "llama")
    if model_type != "llama":
        raise SpecError(f"HF config has model_type={model_type!r}: only 'llama' configs map onto "
                        "an ArchSpec (pre-RMSNorm, RoPE, GQA, SwiGLU, no biases)")
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise SpecError(f"HF config is missing {missing}: a LlamaConfig needs {list(_REQUIRED)}")
    unsupported = [key for key in ("attention_bias", "mlp_bias") if config.get(key)]
    if config.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={config['hidden_act']!r}")
    if unsupported:
        raise SpecError(f"HF config uses {unsupported}: ArchSpec models have no biases and a SiLU "
                        "(SwiGLU) MLP; set them to false / 'silu' or pick another config")
    heads = config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    return ArchSpec(
        vocab_size=config["vocab_size"],
        seq_len=config.get("max_position_embeddings", 2048),
        n_layers=config["num_hidden_layers"],
        d_model=config["hidden_size"],
        n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        d_ff=config["intermediate_size"],
        tie_embeddings=bool(config.get("tie_word_embeddings", _HF_DEFAULTS["tie_word_embeddings"])),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", _HF_DEFAULTS["rope_theta"]))),
        norm_eps=float(config.get("rms_norm_eps", _HF_DEFAULTS["rms_norm_eps"])),
    )


def write_hf_config(spec: ArchSpec, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Write ``out_dir/config.json`` for ``spec``; returns its path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out} is a file: give a directory to hold config.json")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    path.write_text(json.dumps(spec_to_hf_config(spec, dtype), indent=2) + "\n")
    return path

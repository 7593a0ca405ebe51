"""ArchSpec <-> HuggingFace LLaMA ``config.json``: the "hf" format of arch/frameworks.py.

The written config holds both the transformers 5 fields (``rope_parameters``, ``dtype``) and
their transformers 4 spellings (``rope_theta``, ``torch_dtype``), so either version reads it.
``head_dim`` is always explicit: it need not equal hidden_size / num_attention_heads. The field
names come from ``FIELD_TABLE``, like every other framework's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archscale.arch.framework_files import flatten, nest
from archscale.arch.frameworks import config_fields, spec_from_fields, write_config
from archscale.arch.spec import ArchSpec


def spec_to_hf_config(spec: ArchSpec, dtype: str = "bfloat16") -> dict[str, Any]:
    """LlamaConfig fields describing ``spec`` (LlamaForCausalLM has spec.params_total params)."""
    return nest(config_fields(spec, "hf", dtype))


def spec_from_hf_config(config: dict[str, Any]) -> ArchSpec:
    """The ArchSpec of a LLaMA-style HF config dict (RoPE scaling, if any, is not represented)."""
    return spec_from_fields(flatten(config), "hf")


def write_hf_config(spec: ArchSpec, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Write ``out_dir/config.json`` for ``spec``; returns its path."""
    return write_config(spec, "hf", out_dir, dtype=dtype)

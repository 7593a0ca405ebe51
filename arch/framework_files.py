"""The text of each framework's config file, and reading any of them back.

arch/frameworks.py decides the fields (flat paths such as ``model_config.n_embd``); this module
only writes them in the framework's file syntax and parses files into the same flat fields:
JSON (HuggingFace, OLMo-core), YAML (MaxText, litgpt), a bash array of Megatron-LM arguments,
and a torchtitan config module whose shape is the literal ``SHAPE`` dict.
"""

from __future__ import annotations

import ast
import json
import pprint
import shlex
from pathlib import Path
from typing import Any

import yaml

from archscale.arch.spec import SpecError

MEGATRON_ARRAY = "MODEL_ARGS"
"""The bash array megatron_args.sh defines."""

TORCHTITAN_TEMPLATE = '''\
"""{header}

torchtitan 0.3 config module: a Llama3 decoder with explicit head_dim and FFN width.
"""

from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.config import TrainingConfig
from torchtitan.distributed.pipeline_parallel import pipeline_llm
from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
from torchtitan.models.common.config_utils import (
    get_attention_config,
    make_ffn_config,
    make_gqa_config,
)
from torchtitan.models.llama3 import (
    _EMBEDDING_INIT,
    _EMBEDDING_SKIP_INIT,
    _LINEAR_INIT,
    _NORM_INIT,
    _depth_init,
    _output_linear_init,
    parallelize_llama,
)
from torchtitan.models.llama3.model import Llama3Model, Llama3TransformerBlock
from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter
from torchtitan.protocols.model_spec import ModelSpec
from torchtitan.trainer import Trainer

SHAPE = {shape}


def model_config(attn_backend: str = "flex") -> Llama3Model.Config:
    """The Llama3Model.Config of SHAPE."""
    s = SHAPE
    dim, vocab = s["dim"], s["vocab_size"]
    rope = ComplexRoPE.Config(dim=s["head_dim"], max_seq_len=s["max_seq_len"], theta=s["theta"])

    def norm() -> RMSNorm.Config:
        return RMSNorm.Config(normalized_shape=dim, eps=s["eps"], param_init=_NORM_INIT)

    layers = [Llama3TransformerBlock.Config(
        attention_norm=norm(), ffn_norm=norm(),
        attention=make_gqa_config(
            dim=dim, n_heads=s["n_heads"], n_kv_heads=s["n_kv_heads"], head_dim=s["head_dim"],
            wqkv_param_init=_LINEAR_INIT, wo_param_init=_depth_init(layer), fuse_qkv=True,
            inner_attention=get_attention_config(attn_backend), rope=rope),
        feed_forward=make_ffn_config(dim=dim, hidden_dim=s["hidden_dim"],
                                     w1_param_init=_LINEAR_INIT,
                                     w2w3_param_init=_depth_init(layer)))
        for layer in range(s["n_layers"])]
    return Llama3Model.Config(
        dim=dim, vocab_size=vocab, enable_weight_tying=s["enable_weight_tying"], norm=norm(),
        # tied: the output projection's init is the shared weight's, as in torchtitan's 1B/3B
        tok_embeddings=Embedding.Config(
            num_embeddings=vocab, embedding_dim=dim,
            param_init=_EMBEDDING_SKIP_INIT if s["enable_weight_tying"] else _EMBEDDING_INIT),
        lm_head=Linear.Config(in_features=dim, out_features=vocab,
                              param_init=_output_linear_init(dim)),
        layers=layers)


def archscale_shape() -> Trainer.Config:
    """The --config function: this shape; data, optimizer and parallelism are yours to add."""
    spec = ModelSpec(name="llama3", flavor="archscale", model=model_config(),
                     parallelize_fn=parallelize_llama, pipelining_fn=pipeline_llm,
                     post_optimizer_build_fn=None, state_dict_adapter=Llama3StateDictAdapter)
    return Trainer.Config(
        model_spec=spec, training=TrainingConfig(seq_len=SHAPE["max_seq_len"]),
        loss=ChunkedLossWrapper.Config(
            loss_fn=CrossEntropyLoss.Config(global_vocab_size=SHAPE["vocab_size"])))
'''


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _comment(text: str, mark: str = "#") -> str:
    return "".join(f"{mark} {line}\n" for line in text.splitlines())


def render(filename: str, flat: dict[str, Any], header: str) -> str:
    """The text of a config file called ``filename`` (its syntax by extension) holding ``flat``."""
    if filename.endswith(".json"):
        return json.dumps(nest(flat), indent=2) + "\n"
    if filename.endswith((".yml", ".yaml")):
        return _comment(header) + yaml.safe_dump(nest(flat), sort_keys=False)
    if filename.endswith(".sh"):
        args = [f"    {path}" if value is True else f"    {path} {shlex.quote(str(value))}"
                for path, value in flat.items() if value is not False]
        return _comment(header) + f"{MEGATRON_ARRAY}=(\n" + "\n".join(args) + "\n)\n"
    shape = pprint.pformat(flat, sort_dicts=False, width=96)
    return TORCHTITAN_TEMPLATE.format(header=header, shape=shape)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_megatron_args(text: str) -> dict[str, Any]:
    """Flags of a Megatron-LM argument list (bare, or a bash array) -> {flag: value or True}."""
    tokens = [t for t in shlex.split(text, comments=True) if t != ")"]
    if tokens and tokens[0].endswith("=("):
        tokens = tokens[1:]
    out: dict[str, Any] = {}
    for i, token in enumerate(tokens):
        if not token.startswith("--"):
            continue
        if "=" in token:
            flag, value = token.split("=", 1)
            out[flag] = _number(value)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[token] = _number(tokens[i + 1])
        else:
            out[token] = True
    return out


def _torchtitan_shape(path: Path, text: str) -> dict[str, Any]:
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise SpecError(f"{path} is not valid Python: {err}") from None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "SHAPE"):
            return ast.literal_eval(node.value)
    raise SpecError(f"{path} has no top-level SHAPE = {{...}} literal: archscale reads the "
                    "torchtitan modules `archscale export --format torchtitan` writes")


def _from_mapping(path: Path, data: Any) -> tuple[str, dict[str, Any]]:
    """(format, fields) of a parsed JSON or YAML document."""
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold an object (mapping) of shape fields")
    if isinstance(data.get("spec"), dict):  # a recommendation entry or an export's archscale.json
        data = data["spec"]
    if "olmo_core" in str(data.get("_CLASS_", "")):
        return "olmo-core", flatten(data)
    if "hidden_size" in data:
        return "hf", flatten(data)
    if "model_config" in data:
        return "litgpt", flatten(data)
    if "n_embd" in data:  # a bare litgpt Config (a checkpoint's model_config.yaml)
        return "litgpt", flatten({"model_config": data})
    if "decoder_block" in data or any(key.startswith("base_") for key in data):
        return "maxtext", data
    return "archscale", data


def parse(path: Path) -> tuple[str, dict[str, Any]]:
    """(format or "archscale", fields) of a shape file, by its extension and content."""
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".py":
        return "torchtitan", _torchtitan_shape(path, text)
    if suffix in (".sh", ".args") or text.lstrip().startswith(("--", f"{MEGATRON_ARRAY}=(")):
        return "megatron", parse_megatron_args(text)
    if suffix in (".yml", ".yaml"):
        try:
            return _from_mapping(path, yaml.safe_load(text))
        except yaml.YAMLError as err:
            raise SpecError(f"{path} is not valid YAML: {err}") from None
    try:
        return _from_mapping(path, json.loads(text))
    except json.JSONDecodeError as err:
        raise SpecError(f"{path} is not valid JSON: {err}") from None

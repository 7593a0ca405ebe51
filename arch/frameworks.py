"""ArchSpec <-> the configs training frameworks read: one field table, one writer, one reader.

``FIELD_TABLE`` is the one place that says where each ArchSpec field lives in each framework's
config (HuggingFace, MaxText, torchtitan, Megatron-LM, litgpt, OLMo-core); a row per field, a
column per format (tests hold it complete). ``FIXED_TABLE`` states the knobs ArchSpec holds
fixed where a framework's block could vary them (litgpt's experts). A ``Format`` in
``FRAMEWORKS`` adds the file it writes and how the framework loads it, what makes that framework
build a LLaMA-style block (``marks``: SwiGLU, RMSNorm, no biases, RoPE; written, and checked when
a file is read), what it writes but never reads (``extras``), the framework's own defaults for
fields a file may leave out, and the fields its schema types as integers. Parameter counts come
from arch/spec.py only; no format counts. arch/framework_files.py holds the file syntaxes.

A tuple of paths is written to every path and read from the first present; a path starting with
``!`` holds the negation (Megatron's ``--untie-embeddings-and-output-weights``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.arch.framework_files import parse, render
from archscale.arch.spec import ArchSpec, SpecError, get_preset, preset_names

FORMATS = ("hf", "maxtext", "torchtitan", "megatron", "litgpt", "olmo-core")
"""Export formats, in the column order of ``FIELD_TABLE``."""

Paths = tuple[str, ...]


def _row(*paths: str | Paths | None) -> dict[str, Paths]:
    return {fmt: (p,) if isinstance(p, str) else (p or ())
            for fmt, p in zip(FORMATS, paths, strict=True)}


FIELD_TABLE: dict[str, dict[str, Paths]] = {
    # ArchSpec field   hf / maxtext / torchtitan / megatron / litgpt / olmo-core
    "vocab_size": _row("vocab_size", "vocab_size", "vocab_size", "--vocab-size",
                       ("model_config.padded_vocab_size", "model_config.vocab_size"), "vocab_size"),
    "seq_len": _row("max_position_embeddings", "max_target_length", "max_seq_len",
                    ("--seq-length", "--max-position-embeddings"), "model_config.block_size", None),
    "n_layers": _row("num_hidden_layers", "base_num_decoder_layers", "n_layers", "--num-layers",
                     "model_config.n_layer", "n_layers"),
    "d_model": _row("hidden_size", "base_emb_dim", "dim", "--hidden-size", "model_config.n_embd",
                    "d_model"),
    "n_heads": _row("num_attention_heads", "base_num_query_heads", "n_heads",
                    "--num-attention-heads", "model_config.n_head", "block.sequence_mixer.n_heads"),
    "n_kv_heads": _row("num_key_value_heads", "base_num_kv_heads", "n_kv_heads",
                       "--num-query-groups", "model_config.n_query_groups",
                       "block.sequence_mixer.n_kv_heads"),
    "head_dim": _row("head_dim", "head_dim", "head_dim", "--kv-channels", "model_config.head_size",
                     "block.sequence_mixer.head_dim"),
    "d_ff": _row("intermediate_size", "base_mlp_dim", "hidden_dim", "--ffn-hidden-size",
                 "model_config.intermediate_size", "block.feed_forward.hidden_size"),
    "tie_embeddings": _row("tie_word_embeddings", "logits_via_embedding", "enable_weight_tying",
                           "!--untie-embeddings-and-output-weights", "train.tie_embeddings",
                           "tie_word_embeddings"),
    "rope_theta": _row(("rope_parameters.rope_theta", "rope_theta"), "rope_max_timescale", "theta",
                       "--rotary-base", "model_config.rope_base", "block.sequence_mixer.rope.theta"),
    "norm_eps": _row("rms_norm_eps", "normalization_layer_epsilon", "eps", "--norm-epsilon",
                     "model_config.norm_eps", ("block.layer_norm.eps", "lm_head.layer_norm.eps")),
}
"""ArchSpec field -> format -> the framework's field path(s) (dots nest, ``--`` is a flag)."""

FIXED_TABLE: dict[str, dict[str, dict[str, Any]]] = {
    # a block feature ArchSpec does not vary -> format -> the fields stating its one value, where
    # the framework's LLaMA-style block does not fix it already
    "experts": {"litgpt": {"model_config.n_expert": 0}},  # a dense MLP (no mixture of experts)
}
"""Knobs ArchSpec holds fixed; written, and checked when read, as marks (``Format.all_marks``).
A knob that becomes an ArchSpec field moves from here to FIELD_TABLE (docs/adding-a-knob.md)."""

Default = Any | Callable[[dict[str, Any]], Any]


class FormatError(ArchscaleError):
    """A shape a format cannot express; the message names the nearest shape it can."""


@dataclass(frozen=True)
class Format:
    """One framework's config: how ArchSpec maps onto it beyond the field table."""

    name: str
    """Key in FORMATS and FIELD_TABLE."""
    title: str
    """The framework's name in messages."""
    filename: str
    """The file written per shape."""
    loads_with: str
    """How the framework reads the file."""
    checked: str
    """How tests/test_frameworks.py checks it against the framework."""
    marks: Mapping[str, Any] = field(default_factory=dict)
    """Framework fields that make the block LLaMA-style: written, and required when read."""
    extras: Mapping[str, Any] = field(default_factory=dict)
    """Framework fields written but not read back (launch conveniences, class tags)."""
    defaults: Mapping[str, Default] = field(default_factory=dict)
    """The framework's default per ArchSpec field, or per mark path, for a file that omits it
    (a callable takes the fields read so far)."""
    int_fields: frozenset[str] = frozenset()
    """ArchSpec fields the framework's schema types as integers."""
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Applies the framework's own rules to a read file's fields before they map back."""
    finish: Callable[[ArchSpec, dict[str, Any]], dict[str, Any]] | None = None
    """Adds fields the writer derives from the whole shape."""
    notes: Callable[[ArchSpec], list[str]] | None = None
    """What a team must know to load a shape from the file."""

    def paths(self, spec_field: str) -> Paths:
        return FIELD_TABLE[spec_field][self.name]

    @property
    def all_marks(self) -> dict[str, Any]:
        """``marks`` and this format's fields of the knobs ArchSpec holds fixed (FIXED_TABLE)."""
        fixed = (row.get(self.name, {}) for row in FIXED_TABLE.values())
        return {**self.marks, **{path: v for fields in fixed for path, v in fields.items()}}


def _by_heads(values: dict[str, Any]) -> int:
    return values["n_heads"]


def _head_dim(values: dict[str, Any]) -> int:
    return values["d_model"] // values["n_heads"]


def _padded(vocab: int, multiple: int) -> int:
    return -(-vocab // multiple) * multiple


def _megatron_prepare(flat: dict[str, Any]) -> dict[str, Any]:
    """Megatron-LM: query groups count only with --group-query-attention; the embedding has the
    vocabulary padded to --make-vocab-size-divisible-by (at tensor-parallel size 1)."""
    flat = dict(flat)
    if not flat.get("--group-query-attention"):
        flat.pop("--num-query-groups", None)
    if "--vocab-size" in flat:
        flat["--vocab-size"] = _padded(flat["--vocab-size"],
                                       flat.get("--make-vocab-size-divisible-by", 128))
    return flat


def _megatron_finish(spec: ArchSpec, flat: dict[str, Any]) -> dict[str, Any]:
    # The largest padding multiple (up to Megatron's default 128) that adds no rows.
    return {**flat, "--make-vocab-size-divisible-by": math.gcd(spec.vocab_size, 128)}


def _hf_notes(spec: ArchSpec) -> list[str]:
    if not spec.d_model % spec.n_heads:
        return []
    return [f"hidden_size {spec.d_model} is not a multiple of num_attention_heads {spec.n_heads}; "
            "the config is exact (head_dim is explicit) but transformers 5.x refuses it "
            "(huggingface/transformers#46082)"]


def _megatron_notes(spec: ArchSpec) -> list[str]:
    notes = [f"Megatron-LM sizes the embedding from its tokenizer's vocabulary (--vocab-size "
             f"{spec.vocab_size} is the NullTokenizer's): use a tokenizer of that size"]
    if spec.vocab_size % 128:
        multiple = math.gcd(spec.vocab_size, 128)
        notes.append(f"vocab {spec.vocab_size}: --make-vocab-size-divisible-by {multiple} keeps "
                     "the embedding exact at tensor-parallel size 1; at TP > 1 Megatron pads it "
                     f"to a multiple of {multiple} x TP")
    return notes


def _olmo_notes(spec: ArchSpec) -> list[str]:
    return [f"OLMo-core's model config has no context length: train at max_sequence_length "
            f"{spec.seq_len}"]


def _litgpt_prepare(flat: dict[str, Any]) -> dict[str, Any]:
    """litgpt Config: without padded_vocab_size the embedding pads to padding_multiple (512)."""
    if "model_config.padded_vocab_size" in flat or "model_config.vocab_size" not in flat:
        return flat
    multiple = flat.get("model_config.padding_multiple", 512)
    return {**flat, "model_config.padded_vocab_size": _padded(flat["model_config.vocab_size"],
                                                              multiple)}


_OLMO = "olmo_core.nn."
FRAMEWORKS: dict[str, Format] = {f.name: f for f in (
    Format("hf", "HuggingFace", "config.json", "transformers.AutoConfig.from_pretrained(FOLDER)",
           "transformers builds LlamaForCausalLM from it on the meta device",
           marks={"model_type": "llama", "hidden_act": "silu", "attention_bias": False,
                  "mlp_bias": False},
           extras={"architectures": ["LlamaForCausalLM"], "rope_parameters.rope_type": "default",
                   "initializer_range": 0.02},
           defaults={"seq_len": 2048, "n_kv_heads": _by_heads, "head_dim": _head_dim,
                     "tie_embeddings": False, "rope_theta": 10000.0, "norm_eps": 1e-6,
                     "model_type": "llama", "hidden_act": "silu", "attention_bias": False,
                     "mlp_bias": False},
           notes=_hf_notes),
    Format("maxtext", "MaxText", "maxtext.yml",
           "python3 -m maxtext.trainers.pre_train.train maxtext.yml run_name=RUN",
           "keys and value types against MaxText 0.2.5's configs/base.yml (maxtext needs Python "
           ">= 3.12 and TPU/GPU dependencies, so no model is built here)",
           marks={"decoder_block": "llama2", "mlp_activations": ["silu", "linear"],
                  "global_parameter_scale": 1, "attention_bias": False, "use_qk_norm": False,
                  "rope_type": "default"},
           extras={"base_config": "base.yml", "enable_dropout": False},
           # configs/base.yml of maxtext 0.2.5, the file every MaxText config extends
           defaults={"vocab_size": 32000, "seq_len": 2048, "n_layers": 16, "d_model": 2048,
                     "n_heads": 16, "n_kv_heads": 16, "head_dim": 128, "d_ff": 7168,
                     "tie_embeddings": False, "rope_theta": 10000, "norm_eps": 1e-5,
                     "decoder_block": "llama2", "mlp_activations": ["silu", "linear"],
                     "global_parameter_scale": 1, "attention_bias": False,
                     "use_qk_norm": False, "rope_type": "default"},
           int_fields=frozenset({"rope_theta"})),
    Format("torchtitan", "torchtitan", "torchtitan_config.py",
           "PYTHONPATH=FOLDER torchrun -m torchtitan.train --module torchtitan_config "
           "--config archscale_shape",
           "torchtitan 0.3's ConfigManager loads the module and its Llama3Model is built on the "
           "meta device"),
    Format("megatron", "Megatron-LM", "megatron_args.sh",
           'source megatron_args.sh && torchrun pretrain_gpt.py "${MODEL_ARGS[@]}" ...',
           "megatron-core builds GPTModel on the meta device from the arguments, parsed with "
           "Megatron-LM's argument definitions (tests/data/frameworks/megatron_args.json)",
           marks={"--swiglu": True, "--normalization": "RMSNorm", "--disable-bias-linear": True,
                  "--position-embedding-type": "rope", "--add-qkv-bias": False,
                  "--qk-layernorm": False, "--use-rope-scaling": False},
           extras={"--group-query-attention": True},
           defaults={"n_kv_heads": _by_heads, "head_dim": _head_dim,
                     "d_ff": lambda v: 4 * v["d_model"], "tie_embeddings": True,
                     "rope_theta": 10000, "norm_eps": 1e-5, "--swiglu": False,
                     "--normalization": "LayerNorm", "--disable-bias-linear": False,
                     "--position-embedding-type": "learned_absolute", "--add-qkv-bias": False,
                     "--qk-layernorm": False, "--use-rope-scaling": False},
           int_fields=frozenset({"rope_theta"}), prepare=_megatron_prepare,
           finish=_megatron_finish, notes=_megatron_notes),
    Format("litgpt", "litgpt", "litgpt.yaml", "litgpt pretrain --config litgpt.yaml",
           "litgpt pretrain's own argument parser (jsonargparse over its setup signature) reads "
           "it and GPT is built on the meta device, tied as litgpt pretrain ties it",
           marks={f"model_config.{k}": v for k, v in {
               "mlp_class_name": "LLaMAMLP", "norm_class_name": "RMSNorm",
               "parallel_residual": False, "bias": False, "rotary_percentage": 1.0,
               "shared_attention_norm": False, "norm_qk": False, "attn_bias": False,
               "lm_head_bias": False, "post_attention_norm": False, "post_mlp_norm": False,
               "scale_embeddings": False}.items()},
           extras={"model_name": "archscale", "model_config.name": "archscale"},  # CLI needs one
           # litgpt.Config's dataclass defaults, and TrainArgs.tie_embeddings (None: untied)
           defaults={"seq_len": 4096, "n_layers": 16, "d_model": 4096, "n_heads": 32,
                     "n_kv_heads": _by_heads, "head_dim": _head_dim, "tie_embeddings": False,
                     "rope_theta": 10000, "norm_eps": 1e-5,
                     **{f"model_config.{k}": v for k, v in {
                         "mlp_class_name": "GptNeoxMLP", "norm_class_name": "LayerNorm",
                         "parallel_residual": True, "bias": True, "rotary_percentage": 0.25,
                         "shared_attention_norm": False, "norm_qk": False, "attn_bias": False,
                         "lm_head_bias": False, "post_attention_norm": False,
                         "post_mlp_norm": False, "scale_embeddings": False,
                         "n_expert": 0}.items()}},
           int_fields=frozenset({"rope_theta"}), prepare=_litgpt_prepare),
    Format("olmo-core", "OLMo-core", "olmo_core.json",
           'TransformerConfig.from_json("olmo_core.json").build(init_device="meta")',
           "OLMo-core's TransformerConfig.from_json parses it and builds the model on the meta "
           "device",
           marks={"_CLASS_": f"{_OLMO}transformer.config.TransformerConfig", "name": "default",
                  "block.name": "default", "block.sequence_mixer.name": "default",
                  "block.sequence_mixer.bias": False, "block.sequence_mixer.rope.name": "default",
                  "block.feed_forward.name": "default", "block.feed_forward.bias": False,
                  "block.feed_forward.activation": "silu", "block.layer_norm.name": "rms",
                  "block.layer_norm.bias": False, "lm_head.name": "default",
                  "lm_head.bias": False, "lm_head.layer_norm.name": "rms",
                  "lm_head.layer_norm.bias": False},
           extras={"block._CLASS_": f"{_OLMO}transformer.config.TransformerBlockConfig",
                   "block.sequence_mixer._CLASS_": f"{_OLMO}attention.AttentionConfig",
                   "block.sequence_mixer.rope._CLASS_": f"{_OLMO}rope.RoPEConfig",
                   "block.feed_forward._CLASS_": f"{_OLMO}feed_forward.FeedForwardConfig",
                   "block.layer_norm._CLASS_": f"{_OLMO}layer_norm.LayerNormConfig",
                   "lm_head._CLASS_": f"{_OLMO}lm_head.LMHeadConfig",
                   "lm_head.layer_norm._CLASS_": f"{_OLMO}layer_norm.LayerNormConfig"},
           # OLMo-core's model config has no context length (its train module's has): 2048 as HF
           defaults={"seq_len": 2048, "n_kv_heads": _by_heads, "head_dim": _head_dim,
                     "tie_embeddings": False, "rope_theta": 500_000, "name": "default",
                     "block.name": "default", "block.sequence_mixer.name": "default",
                     "block.sequence_mixer.rope.name": "default",
                     "block.feed_forward.name": "default",
                     "block.feed_forward.activation": "silu", "lm_head.name": "default"},
           int_fields=frozenset({"rope_theta"}), notes=_olmo_notes),
)}


def get_format(fmt: Format | str) -> Format:
    """The Format called ``fmt`` (or ``fmt`` itself); an unknown name is a clean error."""
    if isinstance(fmt, Format):
        return fmt
    if fmt not in FRAMEWORKS:
        raise SettingError(f"{{fmt}} {fmt!r}: choose one of {list(FORMATS)}")
    return FRAMEWORKS[fmt]


def check_expressible(spec: ArchSpec, fmt: Format | str) -> None:
    """Refuse what the format's schema cannot hold, naming the nearest shape it can."""
    fmt = get_format(fmt)
    for name in sorted(fmt.int_fields):
        value = getattr(spec, name)
        if float(value).is_integer():
            continue
        nearest = spec.replace(**{name: float(round(value))})
        change = nearest.params_nonembed / spec.params_nonembed - 1
        raise FormatError(
            f"{fmt.title} cannot express {name}={value}: its {'/'.join(fmt.paths(name))} is an "
            f"integer. Nearest shape it can express: {name}={round(value)} (N "
            f"{nearest.params_nonembed:,}, {change:+.2%} from this shape's N "
            f"{spec.params_nonembed:,})")


def spec_to_fields(spec: ArchSpec, fmt: Format | str) -> dict[str, Any]:
    """The framework's fields (flat paths) describing ``spec``, LLaMA-style marks included."""
    fmt = get_format(fmt)
    check_expressible(spec, fmt)
    flat: dict[str, Any] = dict(fmt.extras)
    for name, paths in FIELD_TABLE.items():
        value = getattr(spec, name)
        value = int(value) if name in fmt.int_fields else value
        for path in paths[fmt.name]:
            flat[path.lstrip("!")] = (not value) if path.startswith("!") else value
    flat.update(fmt.all_marks)
    return fmt.finish(spec, flat) if fmt.finish else flat


def spec_from_fields(flat: Mapping[str, Any], fmt: Format | str) -> ArchSpec:
    """The ArchSpec of a framework config's fields (flat paths; None counts as absent)."""
    fmt = get_format(fmt)
    flat = {k: v for k, v in flat.items() if v is not None}
    if fmt.prepare:
        flat = fmt.prepare(flat)
    wrong = [f"{path}={flat.get(path, fmt.defaults.get(path))!r} (needs {want!r})"
             for path, want in fmt.all_marks.items()
             if flat.get(path, fmt.defaults.get(path)) != want]
    if wrong:
        raise SpecError(f"{fmt.title} config is not a LLaMA-style decoder (pre-RMSNorm, RoPE, "
                        f"SwiGLU, no biases): {'; '.join(wrong)}")
    values: dict[str, Any] = {}
    missing = []
    for spec_field in FIELD_TABLE:
        paths = fmt.paths(spec_field)
        present = [p for p in paths if p.lstrip("!") in flat]
        if present:
            value = flat[present[0].lstrip("!")]
            values[spec_field] = (not value) if present[0].startswith("!") else value
        elif spec_field in fmt.defaults:
            default = fmt.defaults[spec_field]
            if callable(default) and missing:
                continue  # it derives from fields already reported missing
            values[spec_field] = default(values) if callable(default) else default
        else:
            missing.append("/".join(p.lstrip("!") for p in paths) or spec_field)
    if missing:
        raise SpecError(f"{fmt.title} config is missing {missing}")
    kinds = {f.name: getattr(f.type, "__name__", f.type) for f in dataclasses.fields(ArchSpec)}
    try:
        values = {k: float(v) if kinds[k] == "float" else bool(v) if kinds[k] == "bool" else v
                  for k, v in values.items()}
    except (TypeError, ValueError) as err:
        raise SpecError(f"{fmt.title} config has a malformed value: {err}") from None
    return ArchSpec(**values)


def format_notes(spec: ArchSpec, fmt: Format | str) -> list[str]:
    """What a team must know to load ``spec`` from this format's file."""
    fmt = get_format(fmt)
    return fmt.notes(spec) if fmt.notes else []


def shape_record(spec: ArchSpec, fmt: Format, path: Path) -> dict[str, Any]:
    """What the sidecar ``archscale.json`` says about one written config."""
    return {"format": fmt.name, "framework": fmt.title, "file": path.name,
            "loads_with": fmt.loads_with, "checked": fmt.checked, "spec": spec.to_dict(),
            "params_total": spec.params_total, "params_nonembed": spec.params_nonembed,
            "framework_fields": {name: [p.lstrip("!") for p in fmt.paths(name)]
                                 for name in FIELD_TABLE}}


def config_fields(spec: ArchSpec, fmt: Format | str, dtype: str = "bfloat16") -> dict[str, Any]:
    """The flat fields of ``spec``'s config in ``fmt``; an HF config also states ``dtype``."""
    fmt = get_format(fmt)
    flat = spec_to_fields(spec, fmt)
    if fmt.name == "hf":
        flat.update(dtype=dtype, torch_dtype=dtype)  # the transformers 5 and 4 spellings
    return flat


def write_config(spec: ArchSpec, fmt: Format | str, out_dir: str | Path, label: str = "shape",
                 dtype: str = "bfloat16") -> Path:
    """Write ``out_dir/<fmt.filename>`` for ``spec`` (``dtype``: the HF config's); returns its
    path."""
    fmt = get_format(fmt)
    flat = config_fields(spec, fmt, dtype)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SettingError(f"{{out_dir}} {out} is a file: give a directory to hold {fmt.filename}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / fmt.filename
    path.write_text(render(fmt.filename, flat, header=_header(spec, fmt, label)))
    return path


def write_shape(spec: ArchSpec, fmt: Format | str, out_dir: str | Path, label: str = "shape",
                dtype: str = "bfloat16", extra: Mapping[str, Any] | None = None) -> Path:
    """``write_config``, and beside it ``archscale.json``: ``shape_record`` plus ``extra`` (what
    the caller knows of the shape: predictions, laws, provenance); returns the config's path."""
    fmt = get_format(fmt)
    path = write_config(spec, fmt, out_dir, label=label, dtype=dtype)
    record = {**shape_record(spec, fmt, path), **(extra or {})}
    (path.parent / "archscale.json").write_text(json.dumps(record, indent=1) + "\n")
    return path


def _header(spec: ArchSpec, fmt: Format, label: str) -> str:
    return (f"archscale shape {label}: N = {spec.params_nonembed:,} non-embedding parameters, "
            f"{spec.params_total:,} in total.\nLoad: {fmt.loads_with}")


def read_config(path: str | Path) -> ArchSpec:
    """The ArchSpec of a shape file: ArchSpec JSON (or an object with a "spec"), or a config of
    any format in FORMATS, recognised by its extension and content."""
    kind, data = parse(Path(path))
    if kind == "archscale":
        return ArchSpec.from_dict(data)
    return spec_from_fields(data, kind)


def load_spec(spec_or_preset: str) -> ArchSpec:
    """A preset name, or the path of a shape file: ArchSpec JSON (or an object with a "spec"),
    an HF config.json, or a MaxText, torchtitan, Megatron-LM, litgpt or OLMo-core config
    (``read_config`` reads them all)."""
    if spec_or_preset in preset_names():
        return get_preset(spec_or_preset)
    path = Path(spec_or_preset)
    if not path.is_file():
        raise SpecError(
            f"{spec_or_preset!r} is neither a preset ({', '.join(preset_names())}) nor a shape file"
        )
    return read_config(path)

"""Shapes in each training framework's own config, checked by that framework.

Where the framework is installed (megatron-core in the test extra; litgpt, torchtitan and
OLMo-core in the `frameworks` extra), its own parser reads the exported file and builds the model
on the meta device: the parameter count must equal ArchSpec's, in total and non-embedding, for a
GQA shape, an MHA shape and the LLaMA-3.2 presets. Every format is also checked without its
framework, against the schema and configs it publishes, copied into tests/data/frameworks/ (each
file names its source): MaxText (Python >= 3.12 and accelerator dependencies: never installed
here) has only that check.
"""

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_recommend import H100, PAPER, SPACE, fit
from typer.testing import CliRunner

from archscale.arch import ArchSpec, SpecError, get_preset, load_spec, preset_names
from archscale.arch.frameworks import FORMATS, FormatError
from archscale.cli.main import app
from archscale.decide.export import export, load_recipe
from archscale.decide.recommend import recommend, save_recommendation
from archscale.sweeps.recipe import Budget, Recipe

# megatron-core warns at import and build that Transformer Engine and Apex are absent (CPU)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:megatron",
                                        "ignore::DeprecationWarning:megatron")
DATA = Path(__file__).parent / "data" / "frameworks"
GQA = ArchSpec(vocab_size=1000, seq_len=128, n_layers=3, d_model=96, n_heads=6, n_kv_heads=2,
               head_dim=24, d_ff=200, tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-6)
MHA = ArchSpec(vocab_size=512, seq_len=64, n_layers=2, d_model=64, n_heads=4, n_kv_heads=4,
               head_dim=16, d_ff=176, tie_embeddings=True, rope_theta=500000.0, norm_eps=1e-5)
SHAPES = {"gqa": GQA, "mha": MHA, "llama-3.2-1b": get_preset("llama-3.2-1b"),
          "llama-3.2-3b": get_preset("llama-3.2-3b")}


def reference(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def exported(shape: str | ArchSpec, fmt: str, tmp_path: Path) -> Path:
    """`archscale arch export` of SHAPES[shape] (a preset by name) or of a spec; returns the
    written config."""
    spec = SHAPES[shape] if isinstance(shape, str) else shape
    arg = shape if isinstance(shape, str) and shape in preset_names() else None
    if arg is None:
        arg = str(tmp_path / "spec.json")
        Path(arg).write_text(json.dumps(spec.to_dict()))
    out = tmp_path / fmt
    result = CliRunner().invoke(app, ["arch", "export", arg, "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    (path,) = [p for p in out.iterdir() if p.name != "archscale.json"]
    assert json.loads((out / "archscale.json").read_text())["params_total"] == spec.params_total
    return path


def counts(model, embedding: set[str]) -> tuple[int, int]:
    """(total, non-embedding) parameters of a framework's model; shared tensors count once."""
    total = sum(p.numel() for p in model.parameters())
    return total, total - sum(p.numel() for n, p in model.named_parameters() if n in embedding)


# ---- the frameworks' own parse and build (skipped where the framework is not installed) ---------
def megatron_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    for flag in reference("megatron_args.json")["flags"]:
        kwargs = {k: v for k, v in flag.items() if k in ("action", "dest", "default", "choices")}
        if "type" in flag:
            kwargs["type"] = {"int": int, "float": float, "str": str}[flag["type"]]
        parser.add_argument(flag["flag"], **kwargs)
    return parser


def megatron_args(path: Path):
    """The file as bash expands it, parsed with Megatron-LM's own argument definitions."""
    tokens = subprocess.run(["bash", "-c", 'source "$0" && printf "%s\\n" "${MODEL_ARGS[@]}"',
                             str(path)], capture_output=True, text=True, check=True).stdout
    return megatron_parser().parse_args(tokens.splitlines())


@pytest.fixture(scope="module")
def megatron(tmp_path_factory):
    """megatron-core with a one-process model-parallel group (gloo), torn down afterwards."""
    pytest.importorskip("megatron.core", exc_type=ImportError)
    import torch.distributed as dist
    from megatron.core import parallel_state

    store = tmp_path_factory.mktemp("megatron") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel()
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def build_megatron(path: Path, request) -> tuple[int, int]:
    """GPTModel as Megatron-LM's pretrain_gpt.py builds it (core_transformer_config_from_args
    copies every argument named like a TransformerConfig field; --swiglu, --norm-epsilon and
    --group-query-attention are translated; the vocabulary is padded at tensor-parallel size 1)."""
    request.getfixturevalue("megatron")
    import dataclasses

    import torch
    import torch.nn.functional as F
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    args = megatron_args(path)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TransformerConfig)
          if hasattr(args, f.name)}
    kw.update(layernorm_epsilon=args.norm_epsilon,
              num_query_groups=args.num_query_groups if args.group_query_attention else None,
              use_cpu_initialization=True, perform_initialization=False)
    if args.swiglu:
        kw.update(activation_func=F.silu, gated_linear_unit=True)
    multiple = args.make_vocab_size_divisible_by
    with torch.device("meta"):
        model = GPTModel(
            config=TransformerConfig(**kw),
            transformer_layer_spec=get_gpt_layer_local_spec(normalization=args.normalization,
                                                            qk_layernorm=args.qk_layernorm),
            vocab_size=-(-args.vocab_size // multiple) * multiple,
            max_sequence_length=args.max_position_embeddings,
            share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
            position_embedding_type=args.position_embedding_type, rotary_base=args.rotary_base)
    return counts(model, {"embedding.word_embeddings.weight", "output_layer.weight"})


def build_litgpt(path: Path, request) -> tuple[int, int]:
    """`litgpt pretrain --config`'s parser (jsonargparse over pretrain.setup) reads the file; GPT
    is tied as litgpt pretrain ties it."""
    pytest.importorskip("litgpt", exc_type=ImportError)
    import torch
    from jsonargparse import ArgumentParser
    from litgpt.model import GPT
    from litgpt.pretrain import setup

    parser = ArgumentParser()
    parser.add_function_arguments(setup)
    args = parser.instantiate_classes(parser.parse_path(str(path)))
    with torch.device("meta"):
        model = GPT(args.model_config)
    if args.train.tie_embeddings:
        model.transformer.wte.weight = model.lm_head.weight
    return counts(model, {"transformer.wte.weight", "lm_head.weight"})


def build_torchtitan(path: Path, request) -> tuple[int, int]:
    """torchtitan's ConfigManager loads the module as `--module ... --config ...` does."""
    pytest.importorskip("torchtitan.models.llama3", exc_type=ImportError)  # needs triton too
    import torch
    from torchtitan.config.manager import ConfigManager

    sys.modules.pop(path.stem, None)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(path.parent))
        config = ConfigManager().parse_args(["--module", path.stem, "--config", "archscale_shape"])
    with torch.device("meta"):
        model = config.model_spec.model.build()
    return counts(model, {"tok_embeddings.weight", "lm_head.weight"})


def build_olmo(path: Path, request) -> tuple[int, int]:
    """OLMo-core's TransformerConfig.from_json; its own count agrees with the built model."""
    pytest.importorskip("olmo_core", exc_type=ImportError)
    from olmo_core.nn.transformer import TransformerConfig

    config = TransformerConfig.from_json(path)
    model = config.build(init_device="meta")
    total, nonembed = counts(model, {"embeddings.weight", "lm_head.w_out.weight"})
    assert config.num_params == total
    # OLMo-core counts an untied output projection as non-embedding; arch/spec.py does not.
    untied = 0 if config.tie_word_embeddings else config.d_model * config.vocab_size
    assert config.num_non_embedding_params == nonembed + untied
    return total, nonembed


BUILDERS = {"megatron": build_megatron, "litgpt": build_litgpt, "torchtitan": build_torchtitan,
            "olmo-core": build_olmo}


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("fmt", BUILDERS)
def test_the_framework_builds_the_exported_shape_with_its_parameter_count(fmt, name, tmp_path,
                                                                         request):
    spec = SHAPES[name]
    path = exported(name, fmt, tmp_path)
    assert BUILDERS[fmt](path, request) == (spec.params_total, spec.params_nonembed)


# ---- read back: every format, through `arch show` --------------------------------------------
@pytest.mark.parametrize("name", ["gqa", "mha", "llama-3.2-1b"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_to_the_same_shape(fmt, name, tmp_path):
    spec = SHAPES[name]
    path = exported(name, fmt, tmp_path)
    result = CliRunner().invoke(app, ["arch", "show", str(path), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["params_total"], shown["params_nonembed"]) == (spec.params_total,
                                                                 spec.params_nonembed)
    # OLMo-core's model config holds no context length: that one field reads as the default.
    expected = spec.replace(seq_len=2048) if fmt == "olmo-core" else spec
    assert load_spec(str(path)) == expected


# ---- the frameworks' published schemas and configs (no framework needed) ---------------------
def test_megatron_args_are_megatron_lm_arguments(tmp_path):
    args = megatron_args(exported("gqa", "megatron", tmp_path))  # unknown flags exit here
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.kv_channels,
            args.num_query_groups, args.ffn_hidden_size) == (3, 96, 6, 24, 2, 200)
    assert args.group_query_attention and args.swiglu and not args.add_bias_linear
    assert args.untie_embeddings_and_output_weights and args.normalization == "RMSNorm"
    assert args.vocab_size % args.make_vocab_size_divisible_by == 0  # no padding rows


@pytest.mark.parametrize("name", ["gqa", "mha", "llama-3.2-3b"])
def test_maxtext_keys_and_types_are_those_of_its_base_yml(name, tmp_path):
    base = yaml.safe_load((DATA / "maxtext" / "base.yml").read_text())
    path = exported(name, "maxtext", tmp_path)
    written = yaml.safe_load(path.read_text())
    assert written.pop("base_config") == "base.yml"  # pyconfig merges our keys over base.yml
    assert set(written) <= set(base)
    assert {k: type(v) for k, v in written.items()} == {k: type(base[k]) for k in written}
    merged = tmp_path / "merged.yml"  # MaxText's view: base.yml overridden by the file
    merged.write_text(yaml.safe_dump({**base, **written}))
    assert load_spec(str(merged)) == SHAPES[name]


def test_maxtext_own_llama3_8b_config_reads_as_meta_published_size(tmp_path):
    """MaxText's configs/models/llama3-8b.yml; Meta-Llama-3-8B has 8,030,261,248 parameters."""
    source = DATA / "maxtext" / "llama3-8b.yml"
    spec = load_spec(str(source))
    assert spec.params_total == 8_030_261_248
    ours = yaml.safe_load(exported(spec, "maxtext", tmp_path).read_text())
    theirs = yaml.safe_load(source.read_text())
    assert {k: ours[k] for k in theirs} == theirs


def test_litgpt_fields_and_its_own_llama_config(tmp_path):
    ref = reference("litgpt_reference.json")
    written = yaml.safe_load(exported("gqa", "litgpt", tmp_path).read_text())
    assert set(written["model_config"]) <= set(ref["Config"])
    assert set(written["train"]) <= set(ref["TrainArgs"])
    assert ref["Config"]["rope_base"] == "int" and isinstance(written["model_config"]["rope_base"],
                                                              int)
    entry = tmp_path / "model_config.yaml"  # litgpt's own Llama-3.2-1B, as a checkpoint holds it
    entry.write_text(yaml.safe_dump(ref["Llama-3.2-1B"]))
    spec = load_spec(str(entry))
    assert spec.params_total == ref["Llama-3.2-1B_params_total"]  # litgpt's GPT: untied
    assert spec == get_preset("llama-3.2-1b").replace(tie_embeddings=False, seq_len=131072)


def test_olmo_core_fields_and_its_own_llama3_1b(tmp_path):
    ref = reference("olmo_core_reference.json")
    written = json.loads(exported("gqa", "olmo-core", tmp_path).read_text())

    def check(node: dict) -> None:
        assert set(node) - {"_CLASS_"} <= set(ref["config_fields"][node["_CLASS_"]])
        for value in node.values():
            if isinstance(value, dict):
                check(value)

    check(written)
    theirs = tmp_path / "llama3_1B.json"
    theirs.write_text(json.dumps(ref["llama3_1B"]))
    spec = load_spec(str(theirs))
    assert spec.params_total == ref["llama3_1B_num_params"]
    untied_head = spec.d_model * spec.vocab_size  # OLMo-core counts it as non-embedding
    assert spec.params_nonembed == ref["llama3_1B_num_non_embedding_params"] - untied_head


def test_torchtitan_module_uses_torchtitan_0_3_api_and_builds_its_counts(tmp_path):
    ref = reference("torchtitan_api.json")
    tree = ast.parse(exported("gqa", "torchtitan", tmp_path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert {a.name for a in node.names} <= set(ref["imports"][node.module])
        if isinstance(node, ast.Call) and node.keywords:
            allowed = ref["call_parameters"].get(ast.unparse(node.func))
            assert allowed is not None, ast.unparse(node.func)
            assert {k.arg for k in node.keywords} <= set(allowed)
    for preset, built in ref["params_total_built_on_meta"].items():
        assert get_preset(preset).params_total == built


# ---- what a format cannot express -------------------------------------------------------------
@pytest.mark.parametrize("fmt, field", [("maxtext", "rope_max_timescale"),
                                        ("megatron", "--rotary-base"),
                                        ("litgpt", "model_config.rope_base"),
                                        ("olmo-core", "block.sequence_mixer.rope.theta")])
def test_a_fractional_rope_base_is_refused_naming_the_nearest_shape(fmt, field, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(MHA.replace(rope_theta=10000.4).to_dict()))
    result = CliRunner().invoke(app, ["arch", "export", str(path), "--format", fmt,
                                      "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, FormatError)
    message = str(result.exception)
    assert f"cannot express rope_theta=10000.4: its {field} is an integer" in message
    assert (f"Nearest shape it can express: rope_theta=10000 (N {MHA.params_nonembed:,}, +0.00%"
            in message)
    assert not (tmp_path / "out").exists()


def test_the_command_prints_one_error_line(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(MHA.replace(rope_theta=0.5e4 + 0.5).to_dict()))
    script = Path(sys.executable).with_name("archscale")
    done = subprocess.run([str(script), "arch", "export", str(path), "--format", "megatron",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: Megatron-LM cannot express rope_theta=5000.5")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt, edit, match", [
    ("litgpt", ("LLaMAMLP", "GptNeoxMLP"), "model_config.mlp_class_name='GptNeoxMLP'"),
    ("megatron", ("    --swiglu\n", ""), "--swiglu=False (needs True)"),
    ("megatron", ("    --vocab-size 512\n", ""), "missing ['--vocab-size']"),
    ("maxtext", ("decoder_block: llama2", "decoder_block: gemma"), "decoder_block='gemma'"),
])
def test_reading_a_config_that_is_not_an_archspec_shape_says_why(fmt, edit, match, tmp_path):
    path = exported("mha", fmt, tmp_path)
    path.write_text(path.read_text().replace(*edit))
    result = CliRunner().invoke(app, ["arch", "show", str(path)])
    assert match in str(result.exception), result.output


def test_a_config_missing_fields_names_them(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_key_value_heads": 2}))
    with pytest.raises(SpecError, match=r"HuggingFace config is missing \['vocab_size', "
                                        r"'num_hidden_layers', 'num_attention_heads', "
                                        r"'intermediate_size'\]"):
        load_spec(str(path))


# ---- a recommendation, exported with its provenance and training budget -----------------------
@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory):
    rec = recommend(fit(PAPER), SPACE, H100, max_loss_increase=0.005, top=2,
                    provenance={"loss_law_file": {"sha256": "0" * 64, "kind": "conditional"}})
    out = tmp_path_factory.mktemp("rec")
    save_recommendation(rec, out)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_recommendation_exports_config_provenance_and_budget(fmt, rec_dir, tmp_path):
    recipe = Recipe(lr=3e-3, batch_size=8, lr_rule="power_n", lr_exponent=-0.25,
                    batch_rule="power_n", batch_exponent=0.3, batch_multiple=8)
    written = export(rec_dir, tmp_path, fmt, recipe=recipe)
    source = json.loads((rec_dir / "recommendations.json").read_text())
    tokens = source["provenance"]["search"]["tokens"]
    entries = [*source["recommended"], source["loss_optimal"]]
    for path, entry in zip(written, entries, strict=True):
        spec = ArchSpec.from_dict(entry["spec"])
        back = load_spec(str(path))
        assert back == (spec.replace(seq_len=2048) if fmt == "olmo-core" else spec)
        side = json.loads((path.parent / "archscale.json").read_text())
        assert side["format"] == fmt and side["file"] == path.name
        assert side["prediction"]["predicted_loss"] == entry["predicted_loss"]
        assert side["prediction"]["loss_interval_90"] == entry["loss_interval_90"]
        assert side["laws"]["loss_law"]["kind"] == "conditional"
        budget = side["training_budget"]
        n = spec.params_nonembed
        assert budget["tokens"] == tokens and budget["lr_rule"] == "power_n"
        assert budget["peak_lr"] == pytest.approx(3e-3 * (n / 1e6) ** -0.25)
        assert budget["global_batch_sequences"] == max(8, round(8 * (n / 1e6) ** 0.3 / 8) * 8)
        assert budget["steps"] == recipe.resolved(spec).steps_for(spec, Budget(tokens=int(tokens)))
    manifest = json.loads((tmp_path / "recommendations.json").read_text())["export"]
    assert manifest["format"] == fmt and manifest["recipe"] == recipe.to_dict()


def test_cli_export_reads_the_recipe_of_a_sweep_file(rec_dir):
    sweep = Path(__file__).parents[1] / "search" / "examples" / "tiny_grid.yaml"
    result = CliRunner().invoke(app, ["export", str(rec_dir), "--format", "megatron",
                                      "--recipe", str(sweep)])
    assert result.exit_code == 0, result.output
    side = json.loads((rec_dir / "megatron" / "rank-1" / "archscale.json").read_text())
    assert side["training_budget"]["recipe"] == load_recipe(sweep).to_dict()
    assert side["training_budget"]["global_batch_sequences"] == 8  # constant rule
    plain = export(rec_dir, rec_dir / "plain", "litgpt")[0]
    budget = json.loads((plain.parent / "archscale.json").read_text())["training_budget"]
    assert budget["recipe"] is None and "--recipe" in budget["recipe_note"]

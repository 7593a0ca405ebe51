"""`archscale arch export-hf`: the config.json that real transformers loads into the same model.

Every exported shape is rebuilt as LlamaForCausalLM on torch's meta device (no memory, no
init) and its parameter count must equal ArchSpec.params_total; the loaded config maps back
onto the identical ArchSpec.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archscale.arch import ArchSpec, get_preset
from archscale.arch.export import spec_from_hf_config
from archscale.cli.main import app

PRESETS = ["llama-3.2-1b", "llama-3.2-3b", "panda-1b", "surefire-1b"]
UNTIED = ArchSpec(vocab_size=300, seq_len=64, n_layers=2, d_model=48, n_heads=6, n_kv_heads=2,
                  head_dim=12, d_ff=80, tie_embeddings=False, rope_theta=50000.0, norm_eps=1e-6)
# The fields a training framework needs to rebuild the shape exactly.
LLAMA_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "d_model",
                "intermediate_size": "d_ff", "num_hidden_layers": "n_layers",
                "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads",
                "head_dim": "head_dim", "tie_word_embeddings": "tie_embeddings",
                "rms_norm_eps": "norm_eps", "max_position_embeddings": "seq_len"}


@pytest.fixture(scope="module")
def hf():
    """(torch, transformers), imported once per module: the import alone takes seconds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def load_config(transformers, spec: ArchSpec, directory: Path):
    """AutoConfig.from_pretrained(directory), past transformers' stale head-count check.

    huggingface/transformers#46082: LlamaConfig.validate_architecture demands hidden_size %
    num_attention_heads == 0 even when head_dim is explicit, although LlamaAttention sizes every
    projection from num_heads * head_dim. Panda-1B and Surefire-1B (d 2560 with 72 and 36
    heads) hit it. Only that check, and only for such shapes, is skipped; a release that fixes
    the issue loads them directly.
    """
    from huggingface_hub.errors import StrictDataclassClassValidationError

    try:
        return transformers.AutoConfig.from_pretrained(directory)
    except StrictDataclassClassValidationError as err:
        assert spec.d_model % spec.n_heads, f"a divisible shape was rejected: {err}"
        assert "not a multiple of the number of attention heads" in str(err)
    llama = transformers.LlamaConfig
    checks = [v for v in llama.__class_validators__ if v.__name__ != "validate_architecture"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama, "__class_validators__", checks)
        return transformers.AutoConfig.from_pretrained(directory)


def export(spec_arg: str, out: Path) -> dict:
    result = CliRunner().invoke(app, ["arch", "export-hf", spec_arg, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'config.json'}" in result.output
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("name", [*PRESETS, "untied"])
def test_export_loads_into_llama_with_the_same_parameter_count(name, hf, tmp_path):
    torch, transformers = hf
    if name == "untied":
        spec = UNTIED
        spec_arg = str(tmp_path / "spec.json")
        Path(spec_arg).write_text(json.dumps(spec.to_dict()))
    else:
        spec, spec_arg = get_preset(name), name
    out = tmp_path / "hf"
    written = export(spec_arg, out)
    assert written["model_type"] == "llama"
    assert written["architectures"] == ["LlamaForCausalLM"]
    for hf_key, field in LLAMA_FIELDS.items():
        assert written[hf_key] == getattr(spec, field), hf_key
    assert written["rope_parameters"]["rope_theta"] == spec.rope_theta

    config = load_config(transformers, spec, out)
    assert isinstance(config, transformers.LlamaConfig)
    assert (config.head_dim, config.num_key_value_heads) == (spec.head_dim, spec.n_kv_heads)
    assert config.tie_word_embeddings is spec.tie_embeddings
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == spec.params_total
    # Round trip, from the file and from the config transformers built out of it.
    assert spec_from_hf_config(written) == spec
    assert spec_from_hf_config(config.to_dict()) == spec


def test_reference_counts_of_the_llama_presets():
    """DESIGN.md's anchors, which the meta-device models above reproduce."""
    assert get_preset("llama-3.2-1b").params_total == 1_235_814_400
    assert get_preset("llama-3.2-3b").params_total == 3_212_749_824


def test_unknown_preset_is_a_clean_error(tmp_path):
    """Through the installed entry point: exit status 2 and one line, no traceback."""
    script = Path(sys.executable).with_name("archscale")
    done = subprocess.run([str(script), "arch", "export-hf", "llama-9b", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: 'llama-9b' is neither a preset")
    assert "llama-3.2-1b" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "config.json").exists()

"""ArchSpec counts against published models, validation messages, shape-from-budget, `arch show`."""

import json
import math

import pytest
from typer.testing import CliRunner

from archscale.arch import ArchSpec, SpecError, get_preset, load_spec, shape_from_budget
from archscale.cli.main import app


@pytest.mark.parametrize(("preset", "total", "r", "d_over_sqrt_n"), [
    ("llama-3.2-1b", 1_235_814_400, 4.8, 0.066),
    ("llama-3.2-3b", 3_212_749_824, 3.0, None),
    ("panda-1b", None, 1.07, None),
    ("surefire-1b", None, 3.6, None),
])
def test_presets_reproduce_published_counts(preset, total, r, d_over_sqrt_n):
    spec = get_preset(preset)
    if total is not None:
        assert spec.params_total == total
    assert round(spec.r_mlp_attn, 2) == r
    if d_over_sqrt_n is not None:
        assert round(spec.d_over_sqrt_n, 3) == d_over_sqrt_n
    assert spec.vocab_size == 128256 and spec.tie_embeddings


def test_counts_decompose():
    spec = get_preset("llama-3.2-1b")
    assert spec.params_embed == 128256 * 2048
    assert spec.params_nonembed == spec.params_attn + spec.params_mlp + 16 * 2 * 2048 + 2048
    assert spec.gqa_group == 4
    assert spec.replace(tie_embeddings=False).params_total == spec.params_total + 128256 * 2048
    # 2 N + attention over 8192 cached keys, per generated token
    assert spec.inference_flops_per_token(8192) == 2 * spec.params_nonembed + 4 * 16 * 8192 * 32 * 64
    assert spec.kv_cache_bytes(1, 1, "bf16") == 2 * 16 * 8 * 64 * 2


@pytest.mark.parametrize(("changes", "field"), [
    ({"n_heads": 6, "n_kv_heads": 4}, "n_kv_heads"),
    ({"d_model": 0}, "d_model"),
    ({"n_layers": -2}, "n_layers"),
    ({"head_dim": 7}, "head_dim"),
    ({"d_ff": 3.5}, "d_ff"),
    ({"vocab_size": True}, "vocab_size"),
    ({"rope_theta": 0.0}, "rope_theta"),
    ({"norm_eps": -1e-5}, "norm_eps"),
])
def test_invalid_specs_name_the_field(changes, field):
    base = dict(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64)
    with pytest.raises(SpecError, match=field):
        ArchSpec(**{**base, **changes})


def test_from_dict_rejects_unknown_and_missing_keys():
    data = get_preset("tiny").to_dict()
    with pytest.raises(SpecError, match="hidden"):
        ArchSpec.from_dict({**data, "hidden": 3})
    del data["d_ff"]
    with pytest.raises(SpecError, match="d_ff"):
        ArchSpec.from_dict(data)


def test_load_spec_from_file_and_errors(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"spec": get_preset("tiny").to_dict()}))
    assert load_spec(str(path)) == get_preset("tiny")
    with pytest.raises(SpecError, match="neither a preset"):
        load_spec(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(("n_params", "r", "group", "kwargs"), [
    (1e6, 2.0, 2, {"d_model": 128}),
    (5e6, 4.0, 4, {"d_model": 256}),
    (2e7, 1.0, 1, {"d_over_sqrt_n": 0.06}),
    (3e6, 3.0, 4, {"d_model": 192, "n_layers": 6}),
    (1e8, 4.8, 4, {"d_model": 768, "n_layers": 12}),
])
def test_shape_from_budget_lands_near_target(n_params, r, group, kwargs):
    built = shape_from_budget(n_params, r, group, **kwargs)
    spec = built.spec
    assert abs(built.params_rel_error) < 0.05
    assert abs(math.log(spec.r_mlp_attn / r)) < 0.15
    assert spec.n_heads % group == 0 and spec.gqa_group == group
    assert spec.d_ff % 8 == 0
    if "n_layers" in kwargs:
        assert spec.n_layers == kwargs["n_layers"]


def test_shape_from_budget_rejects_bad_targets():
    with pytest.raises(SpecError, match="exactly one of d_model"):
        shape_from_budget(1e6, 2.0, 2)
    with pytest.raises(SpecError, match="r=-1"):
        shape_from_budget(1e6, -1, 2, d_model=64)


def test_arch_show_json_keys():
    result = CliRunner().invoke(app, ["arch", "show", "llama-3.2-1b", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    for key in ("params_total", "params_nonembed", "params_attn", "params_mlp", "r_mlp_attn",
                "gqa_group", "d_over_sqrt_n", "train_flops_per_token", "kv_cache_bytes_per_token"):
        assert key in shown
    assert shown["params_total"] == 1_235_814_400
    assert ArchSpec.from_dict(shown["spec"]) == get_preset("llama-3.2-1b")

"""`archscale export`: one HuggingFace config.json per recommended shape that real transformers
loads into a LlamaForCausalLM of the predicted size, and the provenance beside them."""

import hashlib
import json

import pytest
from test_layout import heavy_modules_after
from test_recommend import H100, PAPER, SPACE, fit
from typer.testing import CliRunner

import archscale
from archscale.arch import get_preset
from archscale.arch.errors import ArchscaleError
from archscale.arch.export import spec_from_hf_config
from archscale.cli.main import app
from archscale.decide.export import export_hf
from archscale.decide.recommend import recommend, save_recommendation
from archscale.decide.recommendation import Recommendation

NAMES = ["rank-1", "rank-2", "rank-3", "loss-optimal"]


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory):
    rec = recommend(fit(PAPER), SPACE, H100, max_loss_increase=0.005, top=3,
                    baseline=get_preset("llama-3.2-1b"),
                    provenance={"loss_law_file": {"sha256": "0" * 64, "kind": "conditional"}})
    out = tmp_path_factory.mktemp("rec")
    save_recommendation(rec, out)
    return out


def test_configs_load_in_transformers_with_the_predicted_parameter_count(rec_dir, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    written = export_hf(rec_dir, tmp_path / "hf")
    assert [p.parent.name for p in written] == NAMES
    source = json.loads((rec_dir / "recommendations.json").read_text())
    shapes = [*source["recommended"], source["loss_optimal"]]
    for path, shape in zip(written, shapes, strict=True):
        config = transformers.AutoConfig.from_pretrained(path.parent)
        assert isinstance(config, transformers.LlamaConfig)
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config)
        assert sum(p.numel() for p in model.parameters()) == shape["params_total"]
        assert spec_from_hf_config(config.to_dict()).to_dict() == shape["spec"]


def test_export_keeps_predictions_and_provenance(rec_dir, tmp_path):
    export_hf(rec_dir / "recommendations.json", tmp_path)
    source = rec_dir / "recommendations.json"
    data = json.loads((tmp_path / "recommendations.json").read_text())
    original = json.loads(source.read_text())
    assert data["recommended"] == original["recommended"]
    assert data["provenance"]["loss_law_file"]["kind"] == "conditional"
    assert data["provenance"]["loss_law"]["provenance"]["n_range"] == [2e7, 7e8]
    export = data["export"]
    assert export["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert export["archscale_version"] == archscale.__version__ and export["format"] == "hf"
    assert list(export["configs"]) == NAMES
    assert export["configs"]["rank-1"]["config"] == "rank-1/config.json"
    assert export["configs"]["rank-1"]["params_total"] == original["recommended"][0]["params_total"]
    assert export["notes"] == []


def test_recommendation_reads_back_what_it_wrote(rec_dir):
    """recommendations.json is read through the dataclass: reading it and writing it again gives
    the same document, missing intervals (JSON null) included."""
    data = json.loads((rec_dir / "recommendations.json").read_text())
    rec = Recommendation.from_dict(data)
    assert rec.to_dict() == data
    assert [s.spec.params_total for s in rec.recommended] == [
        s["params_total"] for s in data["recommended"]]
    with pytest.raises(ArchscaleError, match=r"not a recommendation.*'loss_optimal'"):
        Recommendation.from_dict({k: v for k, v in data.items() if k != "loss_optimal"})


def test_a_shape_transformers_refuses_is_flagged(rec_dir, tmp_path):
    data = json.loads((rec_dir / "recommendations.json").read_text())
    data["recommended"][0]["spec"] = get_preset("panda-1b").to_dict()  # d 2560, 72 heads
    (tmp_path / "recommendations.json").write_text(json.dumps(data))
    export_hf(tmp_path, tmp_path / "hf")
    (note,) = json.loads((tmp_path / "hf" / "recommendations.json").read_text())["export"]["notes"]
    assert note.startswith("rank-1: hidden_size 2560") and "#46082" in note


def test_cli_export_writes_next_to_the_source_by_default(rec_dir):
    result = CliRunner().invoke(app, ["export", str(rec_dir), "--format", "hf"])
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert f"wrote {rec_dir / 'hf' / name / 'config.json'}" in result.output
    assert (rec_dir / "hf" / "recommendations.json").is_file()


def test_cli_export_loads_no_jax(rec_dir, tmp_path):
    out = tmp_path / "out"
    assert heavy_modules_after(["export", str(rec_dir), "--out", str(out), "--format", "litgpt"]) \
        == []
    assert (out / "rank-1" / "litgpt.yaml").is_file()


@pytest.mark.parametrize("make, args, match", [
    (None, ["--format", "gguf"], "choose one of ['hf', 'maxtext'"),
    (None, [], "no recommendations file"),
    ("{", [], "not valid JSON"),
    ('{"recommended": []}', [], "not a recommendation"),
])
def test_cli_export_errors_are_clean(tmp_path, rec_dir, make, args, match):
    source = rec_dir if args else tmp_path
    if make is not None:
        (tmp_path / "recommendations.json").write_text(make)
    result = CliRunner().invoke(app, ["export", str(source), "--out", str(tmp_path / "o"), *args])
    assert isinstance(result.exception, ArchscaleError), result.output
    assert match in str(result.exception)

"""The README's examples work as written: its `arch export-hf` preset gives a config.json that
transformers loads and builds a model from."""

import re

import pytest
from conftest import REPO_ROOT
from typer.testing import CliRunner

from archscale.cli.main import app

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def test_the_readme_export_hf_preset_loads_in_transformers(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    (preset,) = re.findall(r"^archscale arch export-hf (\S+) --out", readme, re.M)
    result = CliRunner().invoke(app, ["arch", "export-hf", preset, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert model.config.hidden_size % model.config.num_attention_heads == 0

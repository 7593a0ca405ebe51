"""`archscale train`: shape flags, budget, recipe flags -> summary and RunResult JSON."""

import json

import pytest
from typer.testing import CliRunner

from archscale.arch import ArchscaleError
from archscale.cli.main import app
from archscale.sweeps.results import RunResult

# The shape, batch and validation size of tests/test_train.py: the compiled step is reused.
SHAPE = ["--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
         "--d-ff", "64", "--seq-len", "32"]
COMMON = [*SHAPE, "--batch-size", "8", "--eval-tokens", "1024", "--no-progress"]


def test_train_writes_the_run_json_with_throughput(tmp_path):
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["train", *COMMON, "--tokens", str(48 * 256), "--lr", "1e-2",
                                      "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "val_loss" in result.output and "tokens/s" in result.output
    data = json.loads(out.read_text())
    for key in ("val_loss", "val_accuracy", "task_accuracy", "tokens", "flops", "tokens_per_s",
                "mfu", "status"):
        assert key in data
    run = RunResult.from_dict(data)
    assert run.status == "complete" and run.tokens == 48 * 256 and run.seed == 3
    assert run.recipe["lr"] == 1e-2 and run.spec["d_model"] == 32
    assert run.throughput["prefill_tokens_per_s"] > 0 and run.throughput["decode_tokens_per_s"] > 0


def test_flops_budget_recipe_file_and_no_throughput(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"lr": 5e-3, "schedule": "wsd", "batch_size": 4}))
    out = tmp_path / "run.json"
    flops = 24 * 256 * 123_840  # 24 steps of 8 x 32 tokens at this shape's FLOPs per token
    result = CliRunner().invoke(app, ["train", *COMMON, "--flops", str(flops), "--recipe",
                                      str(recipe), "--no-throughput", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = RunResult.load(out)
    assert run.arch_spec.train_flops_per_token() == 123_840
    assert run.budget == {"tokens": None, "flops": float(flops)} and run.steps == 24
    assert run.recipe["schedule"] == "wsd" and run.recipe["lr"] == 5e-3
    assert run.recipe["batch_size"] == 8  # the flag overrides the file
    assert run.throughput is None


@pytest.mark.parametrize("args, match", [
    (["--tokens", "1000", "--flops", "1e9"], "exactly one"),
    ([], "exactly one"),
    (["--tokens", "1000", "--recipe", "/nonexistent/recipe.json"], "cannot read a Recipe"),
])
def test_user_errors_are_archscale_errors(args, match):
    result = CliRunner().invoke(app, ["train", *COMMON, "--no-throughput", *args])
    assert isinstance(result.exception, ArchscaleError)
    assert match in str(result.exception)

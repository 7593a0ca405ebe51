"""Answers the CLI can defend: recommendations inside the ranges the user gave, and numbers
that cannot be answered (inf, nan, budgets far past the fitted runs) refused or labelled."""

import json
import math

import pytest
from conftest import VALIDATION_DIR
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app


def _fit(tmp_path, *args):
    out = tmp_path / "law.json"
    result = CliRunner().invoke(app, ["fit", *args, "--n-boot", "0", "--no-progressive",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def morph_law(tmp_path_factory):
    """Bian et al. 2025a's open_lm runs with an aspect term and no r term: the loss does not
    care about r, so throughput pushes every shape to the top of --r, where moving K/V
    parameters into the MLP (the GQA search) took r to 9.84, past --r's 8."""
    return _fit(tmp_path_factory.mktemp("morph"), "--law", "conditional", "--csv",
                str(VALIDATION_DIR / "morph_open_lm.csv"), "--columns",
                "N=n_params,D=train_tokens,loss=final_loss,scale=size_label",
                "--terms", "aspect:u_log_sq")


@pytest.fixture(scope="module")
def chinchilla_law(tmp_path_factory):
    """Epoch's Chinchilla replication data: N up to 1.6e10, D up to 3.2e11."""
    return _fit(tmp_path_factory.mktemp("chin"), "--law", "chinchilla", "--csv",
                str(VALIDATION_DIR / "chinchilla_epoch.csv"), "--columns",
                "N=Model Size,flops=Training FLOP,loss=loss")


def test_recommended_shapes_stay_inside_the_ranges(morph_law, tmp_path):
    result = CliRunner().invoke(app, ["recommend", "--law", str(morph_law), "--params", "1e9",
                                      "--tokens", "2e10", "--max-loss-increase", "1%",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "recommendations.json").read_text())
    shapes = [*data["recommended"], data["loss_optimal"]]
    assert len(data["recommended"]) == 5
    for shape in shapes:  # the defaults: --r 0.5:8, --d-over-sqrt-n 0.03:0.3
        assert 0.5 <= shape["r_mlp_attn"] <= 8, shape
        assert 0.03 <= shape["d_over_sqrt_n"] <= 0.3, shape


@pytest.mark.parametrize("compute", ["inf", "nan", "-inf"])
def test_a_compute_that_is_not_finite_is_refused(chinchilla_law, compute):
    result = CliRunner().invoke(app, ["predict", str(chinchilla_law), "--compute", compute])
    assert isinstance(result.exception, ArchscaleError), result.output
    assert f"--compute {float(compute)} cannot be answered" in str(result.exception)


def test_a_compute_far_past_the_fitted_runs_is_refused_or_labelled(chinchilla_law):
    law = json.loads(chinchilla_law.read_text())["provenance"]
    largest = 6 * law["n_range"][1] * law["d_range"][1]  # no fitted run used more compute
    far = CliRunner().invoke(app, ["predict", str(chinchilla_law), "--compute", "1e40"])
    assert isinstance(far.exception, ArchscaleError), far.output
    assert f"{1e40 / largest:.3g}x the largest compute" in str(far.exception)

    near = CliRunner().invoke(app, ["predict", str(chinchilla_law), "--compute",
                                    f"{100 * largest:g}", "--json"])
    assert near.exit_code == 0, near.output
    shown = json.loads(near.output)
    assert shown["extrapolation"]["compute"] == pytest.approx(100, rel=1e-3)
    assert shown["extrapolation"]["N"] == pytest.approx(shown["N"] / law["n_range"][1])
    inside = CliRunner().invoke(app, ["predict", str(chinchilla_law), "--compute", "1e20",
                                      "--json"])
    assert json.loads(inside.output)["extrapolation"] == {}
    assert math.isfinite(json.loads(inside.output)["D"])


def test_a_recommendation_for_infinite_parameters_is_refused(morph_law, tmp_path):
    result = CliRunner().invoke(app, ["recommend", "--law", str(morph_law), "--params", "inf",
                                      "--tokens", "2e10", "--max-loss-increase", "1%",
                                      "--out", str(tmp_path)])
    assert isinstance(result.exception, ArchscaleError), result.output
    assert "must be finite and positive" in str(result.exception)

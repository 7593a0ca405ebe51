"""`archscale demo` end to end on the session's small finished study: report, laws, export."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
from conftest import PASSK_STUDY_SWEEP, SMALL_STUDY_SWEEP
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.arch.spec import ArchSpec
from archscale.cli.main import app
from archscale.laws import load_law, load_table, spec_table
from archscale.search.study import open_study
from archscale.search.table import trials_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_report(small_study, tmp_path_factory):
    name, url = small_study
    out = tmp_path_factory.mktemp("demo") / "report"
    before = len(open_study(name, url).study.trials)
    result = CliRunner().invoke(app, [
        "demo", "--sweep", str(SMALL_STUDY_SWEEP), "--storage", url, "--out", str(out),
        "--workers", "1", "--n-boot", "40", "--no-progress"])
    # every run of this study has D = 5N: the demo writes its report, then refuses the laws
    # those runs cannot identify (exit 2, one line naming them) unless --allow-degenerate
    assert isinstance(result.exception, ArchscaleError), result.output
    # Chinchilla (refused too) is only reported: the recommendation does not rest on it
    assert "do not identify the conditional law(s)" in str(result.exception)
    assert "collinear" in str(result.exception) and "--allow-degenerate" in str(result.exception)
    return out, result.output, url, name, before


def test_summary_json_holds_the_figures_a_program_checks(demo_report):
    """summary.json's figures against the saved laws read back on their own: coefficients, the
    held-out errors recomputed from the held-out rows, and each shape's loss predicted again."""
    out = demo_report[0]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["laws"]) == {"chinchilla", "conditional", "accuracy", "throughput"}
    for kind, figures in summary["laws"].items():
        law = load_law(out / "laws" / f"{kind}.json")
        assert {k: figures[k] for k in ("alpha", "beta", "E") if k in law.coefficients} == {
            k: law.coefficients[k] for k in ("alpha", "beta", "E") if k in law.coefficients}
        assert figures["identified"] == law.identified
        rows = (law.validation.get("heldout") or {}).get("rows")
        if rows is None:
            continue
        predicted, measured = np.array(rows["predicted"]), np.array(rows["measured"])
        held = figures["heldout"]
        assert held["n"] == len(measured)
        assert held["mse"] == pytest.approx(np.mean((predicted - measured) ** 2))
        assert held["mean_relative_error"] == pytest.approx(
            np.mean(np.abs(predicted - measured) / measured))
        if held["coverage_90"] is None:  # the held-out refit's intervals: none calibrated
            continue
        covered = held["coverage_90"] * len(measured)  # a count of held-out runs
        assert covered == pytest.approx(round(covered)) and 0 <= covered <= len(measured)
    # every run has D = 5N: Chinchilla is fitted as what these runs identify, L(N) along that
    # line (issue 23, defect 1), and refused all the same when that reduced fit is degenerate
    chinchilla = summary["laws"]["chinchilla"]
    assert "d_line" in load_law(out / "laws" / "chinchilla.json").config
    assert chinchilla["identified"] is False and chinchilla["problems"]
    assert summary["laws"]["conditional"]["heldout"]["n"] == 8  # the largest scale's 8 runs
    # no shape of this study was trained twice, so no noise floor was measured
    assert summary["noise_floor_relative"] is None
    names = [r["name"] for r in summary["recommendations"]]
    assert names[-2:] == ["loss-optimal", "baseline"] and names[0] == "#1"
    saved = json.loads((out / "recommendations.json").read_text())
    specs = [s["spec"] for s in (*saved["recommended"], saved["loss_optimal"], saved["baseline"])]
    conditional = load_law(out / "laws" / "conditional.json")
    again = conditional.predict(spec_table([ArchSpec.from_dict(s) for s in specs],
                                           summary["target"]["tokens"]))
    # calibrated or silent: a law whose intervals nothing calibrates gives none, and says why
    calibrated = conditional.error_model.source is not None
    assert calibrated or conditional.error_model.reason
    for rec, loss in zip(summary["recommendations"], again, strict=True):
        assert rec["predicted_loss"] == pytest.approx(loss, rel=1e-12)
        low, high = rec["loss_interval_90"]
        if calibrated:
            assert low < rec["predicted_loss"] < high
        else:
            assert low is None and high is None
        acc_low, acc_high = rec["accuracy_interval_90"]
        assert acc_low <= rec["predicted_accuracy"] <= acc_high
        assert rec["measured_decode_tokens_per_s"] > 0
        assert rec["predicted_decode_tokens_per_s"] > 0
    check = summary["throughput_check"]
    errors = [abs(s["predicted_decode_tokens_per_s"] / s["measured_decode_tokens_per_s"] - 1)
              for s in check["shapes"] if s["measured_decode_tokens_per_s"]]
    assert check["n_measured"] == len(errors) > 0
    assert check["law_median_abs_rel_error"] == pytest.approx(float(np.median(errors)))


def test_a_finished_study_is_continued_not_retrained(demo_report):
    _, output, url, name, before = demo_report
    assert len(open_study(name, url).study.trials) == before
    assert "24 runs complete, 24 planned" in output


def test_report_shows_the_saved_figures(demo_report):
    """report.md states what the saved laws and recommendation hold, and its figures are images
    with something drawn on them."""
    out = demo_report[0]
    text = (out / "report.md").read_text()
    for kind in ("chinchilla", "conditional", "throughput"):
        law = load_law(out / "laws" / f"{kind}.json")
        section = text.split(f"### {kind} (")[1].split("\n### ")[0]
        for name, value in law.coefficients.items():
            assert f"| {name} | {value:.5g} |" in section, (kind, name)
        held = law.validation.get("heldout") or {}
        if "mse" in held:
            assert f"MSE {held['mse']:.3g}" in section, kind
    rec = json.loads((out / "recommendations.json").read_text())
    assert f"Target loss {rec['target_loss']:.4f}" in text
    for shape in rec["recommended"]:
        assert f"{shape['params_nonembed']:,}" in text
    for figure in ("pareto.png", "conditional_u_curves.png", "conditional_heldout.png",
                   "throughput_fit.png"):
        image = matplotlib.image.imread(out / "figures" / figure)
        assert image.ndim == 3 and min(image.shape[:2]) > 200 and image.std() > 0.05, figure
        assert f"figures/{figure}" in text
    assert not (out / "figures" / "conditional").exists()


def test_saved_laws_predict_what_the_fit_reported(demo_report):
    out, _, url, name, _ = demo_report
    table = load_table(trials_table(open_study(name, url).study))
    conditional = load_law(out / "laws" / "conditional.json")
    assert {t["feature"] for t in conditional.config["terms"]} == {"d_over_sqrt_n", "r",
                                                                     "gqa_group"}
    predicted = conditional.predict(table)
    assert np.all(np.isfinite(predicted))
    in_sample = conditional.validation["in_sample"]
    assert np.isclose(np.mean((predicted - table["loss"]) ** 2), in_sample["mse"])
    held = conditional.validation["heldout"]
    # The largest grid scale's runs, each predicted by a refit on the two smaller scales: the
    # rows are those runs, and the reported error is the error of those rows.
    largest = table[table["scale"] == table["scale"].max()]
    rows = held["rows"]
    assert held["n_test"] == len(largest) == 8
    assert sorted(rows["measured"]) == pytest.approx(sorted(largest["loss"]))
    errors = np.array(rows["predicted"]) - np.array(rows["measured"])
    assert held["mse"] == pytest.approx(np.mean(errors**2)) and held["mse"] > in_sample["mse"]
    assert "held out" in (demo_report[0] / "report.md").read_text()


def test_recommendation_meets_its_target_at_ten_times_the_largest_scale(demo_report):
    out = demo_report[0]
    rec = json.loads((out / "recommendations.json").read_text())
    largest = max(load_law(out / "laws" / "conditional.json").provenance["n_range"])
    for shape in rec["recommended"]:
        assert shape["predicted_loss"] <= rec["target_loss"] + 1e-12
        assert shape["predicted_decode_tokens_per_s"] >= (
            rec["loss_optimal"]["predicted_decode_tokens_per_s"] * (1 - 1e-9))
        assert shape["extrapolation"]["N"] == pytest.approx(
            shape["params_nonembed"] / largest)
        assert 5 < shape["extrapolation"]["N"] < 20
    assert rec["baseline"] is not None
    configs = sorted((out / "hf").glob("*/config.json"))
    assert len(configs) >= len(rec["recommended"])
    first = json.loads(configs[0].read_text())
    assert first["model_type"] == "llama" and first["vocab_size"] == 256


def test_verify_without_a_report_is_one_clear_error(tmp_path, small_study):
    _, url = small_study
    result = CliRunner().invoke(app, ["demo", "--verify", "--sweep", str(SMALL_STUDY_SWEEP),
                                      "--storage", url, "--out", str(tmp_path / "none")])
    assert result.exit_code != 0
    assert "run the demo first (same --out and --storage)" in str(result.exception or result.output)


@pytest.mark.parametrize(("value", "message"), [("abc", "is not a number"),
                                                ("150%", "fraction in [0, 1)")])
def test_a_bad_loss_target_is_refused_before_any_training(tmp_path, value, message):
    result = CliRunner().invoke(app, ["demo", "--max-loss-increase", value, "--out",
                                      str(tmp_path / "report"), "--storage",
                                      f"sqlite:///{tmp_path / 'never.db'}"])
    assert result.exit_code != 0
    assert message in result.output + str(result.exception)
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "report").exists()


@pytest.fixture(scope="module")
def passk_demo(passk_study, tmp_path_factory):
    """The demo on a finished study that sampled pass@k (12 runs, 3 scales, 128 problems x 16
    samples): its report answers whether sampling substitutes for parameters."""
    name, url = passk_study
    out = tmp_path_factory.mktemp("passk_demo") / "report"
    result = CliRunner().invoke(app, [
        "demo", "--sweep", str(PASSK_STUDY_SWEEP), "--storage", url, "--out", str(out),
        "--workers", "1", "--n-boot", "20", "--no-progress", "--no-measure",
        "--allow-degenerate"])
    assert result.exit_code == 0, result.output
    return out, url, name


def test_demo_answers_whether_sampling_substitutes_for_parameters(passk_demo):
    from archscale.decide.substitute import passk_table

    out, url, name = passk_demo
    summary = json.loads((out / "summary.json").read_text())
    answer = json.loads((out / "substitution" / "substitution.json").read_text())
    points = summary["substitution"]
    assert points and [p["params"] for p in points] == sorted(p["params"] for p in points)
    for point in points:
        assert set(point) == {"params", "k", "predicted_pass_at_k", "interval_90",
                              "total_cost_flops"}
        low, high = point["interval_90"]
        assert low <= point["predicted_pass_at_k"] <= high
        assert answer["target_pass"] <= point["predicted_pass_at_k"] and 1 <= point["k"] <= 16
    # the target is the largest trained scale's mean measured pass@8 (its 4 runs; --target-k)
    runs = passk_table(open_study(name, url).study)
    largest = runs[(runs["scale"] == runs["scale"].max()) & (runs["k"] == 8)]
    assert len(largest) == 4
    assert answer["target_pass"] == pytest.approx(largest["pass_at_k"].mean())
    # the held-out checks predicted those 4 runs at every k = 1..16
    check = summary["substitution_check"]
    assert check["n_runs"] == 12
    assert check["noise_floor"]["relative"] is None  # no run of this study was repeated
    # each run's coverage laws, fitted on 4 of its 16 samples, forecast pass@5..16
    forecast = check["coverage_forecast"]
    assert (forecast["n_fit"], forecast["n"]) == (4, 16)
    assert forecast["n_runs"] + forecast["skipped_runs"] == 12 and forecast["n_runs"] >= 6
    assert 0 < forecast["beta_median_relative_error"] < 1
    assert 0 < forecast["power_median_relative_error"] < 1
    for name_ in ("passk_law", "end_to_end"):
        assert check[name_]["n"] == 4 * 16
        # held out, the laws rest on 2 scales: no refit of these runs calibrates their error
        # growth beyond the fitted range and no public pass@k sweep is shipped, so their
        # in-sample scatter calibrates inside that range only: no interval at the held-out scale
        assert check[name_]["coverage_90"] is None
        assert check[name_]["calibration"].endswith("inside the fitted range only)")
        assert check[name_]["mean_relative_error"] > 0
        by_k = check[name_]["by_k"]
        assert [row["k"] for row in by_k] == list(range(1, 17))
        assert np.mean([row["mean_relative_error"] for row in by_k]) == pytest.approx(
            check[name_]["mean_relative_error"])  # 4 runs at every k: the mean of the means
    text = (out / "report.md").read_text()
    assert "## Can sampling substitute for parameters?" in text
    assert "![cost against target pass rate](substitution/substitution.png)" in text
    assert (out / "substitution" / "substitution.png").stat().st_size > 5000
    assert (out / "substitution" / "laws" / "passk.json").is_file()
    assert len(list((out / "substitution" / "points").iterdir())) == len(points)


def test_demo_without_passk_has_no_substitution_section(demo_report):
    out = demo_report[0]
    assert "substitution" not in json.loads((out / "summary.json").read_text())
    assert "Can sampling substitute" not in (out / "report.md").read_text()


def test_only_the_laws_the_recommendation_rests_on_stop_the_demo(tmp_path):
    """A refused Chinchilla or accuracy law is reported, not fatal: the recommendation rests on
    the conditional and throughput laws alone (decide/demo.py reads no other)."""
    from dataclasses import replace

    import pandas as pd

    from archscale.arch.errors import SettingError
    from archscale.decide.demo import refuse_unidentified
    from archscale.laws import fit_law
    from archscale.laws.diagnostics import Problem

    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e4, 1e6, 5), np.geomspace(1e6, 1e8, 4)))
    table = pd.DataFrame({"N": n, "D": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28})
    law = fit_law("chinchilla", table, n_boot=0)
    assert law.identified
    refused = replace(law, problems=(Problem("bound", "alpha = 2.7 lies outside 0.02-2.0"),))
    refuse_unidentified({"chinchilla": refused, "conditional": law, "accuracy": refused,
                         "throughput": law}, tmp_path)
    with pytest.raises(SettingError, match=r"identify the conditional law\(s\): conditional: "
                                           r"alpha = 2.7"):
        refuse_unidentified({"chinchilla": refused, "conditional": refused, "throughput": law},
                            tmp_path)

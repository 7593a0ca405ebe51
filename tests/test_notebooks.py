"""The notebooks run top to bottom (nbclient, a real kernel) against a real finished study, the
``small_study`` fixture, and produce the numbers they teach; the committed files hold no outputs.

Each notebook writes a summary JSON to $ARCHSCALE_NOTEBOOK_OUT; the tests check those numbers
against the study itself.
"""

import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
from conftest import PASSK_STUDY_SWEEP
from nbclient import NotebookClient

from archscale.arch.export import spec_from_hf_config
from archscale.arch.spec import ArchSpec
from archscale.search.study import open_study
from archscale.search.sweepfile import load_sweep
from archscale.search.table import trials_table

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 600
"""Per cell: generous, as the machine is shared; a hung kernel still fails the test."""
N_BOOT = 40
"""Bootstrap refits in the notebooks (their default is 200): enough for finite intervals."""


def execute(name: str, study: tuple[str, str], out: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run notebooks/NAME in a fresh python3 kernel pointed at ``study``; the executed notebook."""
    env = {"ARCHSCALE_STUDY": study[0], "ARCHSCALE_STORAGE": study[1],
           "ARCHSCALE_NOTEBOOK_OUT": str(out), "ARCHSCALE_NOTEBOOK_NBOOT": str(N_BOOT)}
    for var, value in env.items():
        monkeypatch.setenv(var, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(out)}}).execute()
    return notebook


def outputs_of(notebook: nbformat.NotebookNode, mime: str) -> list:
    return [o["data"][mime] for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.outputs if mime in o.get("data", {})]


def assert_finite(values) -> None:
    values = list(values)
    assert values and all(v is not None and math.isfinite(v) for v in values), values


def study_table(study: tuple[str, str]):
    return trials_table(open_study(*study).study)


def test_committed_notebooks_have_no_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in paths] == ["01_study_and_laws.ipynb", "02_pareto_and_recommend.ipynb",
                                       "03_test_time_compute.ipynb", "04_design_replay.ipynb"]
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code, path
        assert all(c.execution_count is None and c.outputs == [] for c in code), (
            f"{path.name} holds outputs: clear them (jupyter nbconvert --clear-output --inplace)")


@pytest.mark.slow
def test_study_and_laws_notebook(small_study, tmp_path, monkeypatch):
    notebook = execute("01_study_and_laws.ipynb", small_study, tmp_path, monkeypatch)
    summary = json.loads((tmp_path / "01_study_and_laws.json").read_text())
    table = study_table(small_study)
    assert summary["study"] == small_study[0]
    assert summary["n_runs"] == len(table) == 24
    assert summary["scales"] == ["4e+03", "8e+03", "1.6e+04"]  # the grid's target N
    for kind in ("chinchilla", "conditional"):
        law = summary[kind]
        assert_finite(law["coefficients"].values())
        assert law["intervals"].keys() == law["coefficients"].keys()
        # every run of this study has D = 5N: neither law is identified, and the notebook says why
        # (Chinchilla is the reduced L(N) fit along that line, refused when degenerate)
        assert not law["identified"] and law["problems"]
        assert kind == "chinchilla" or any("collinear" in p for p in law["problems"])
        for low, high in law["intervals"].values():  # NaN where no bootstrap refit converged
            assert (math.isnan(low) and math.isnan(high)) or low <= high
        held = law["heldout"]  # fit on the two smaller scales, predict the 8 runs of the largest
        assert held["rule"] == "largest scale '1.6e+04' held out"
        assert (held["n_train"], held["n_test"]) == (16, 8)
        assert_finite([held["mse"], held["mean_relative_error"]])
        assert held["mse"] > 0
    # The joint fit starts from the Chinchilla fit with flat shape terms and least squares never
    # goes uphill, so its in-sample error is at most Chinchilla's.
    assert (summary["conditional"]["in_sample"]["mse"]
            <= summary["chinchilla"]["in_sample"]["mse"] * (1 + 1e-9))
    # U-curves, two held-out plots and the fit plot, shown inline and saved
    assert len(outputs_of(notebook, "image/png")) == 4
    assert {Path(p).name for p in summary["figures"]} == {
        "u_curves.png", "heldout_chinchilla.png", "heldout_conditional.png", "fit_conditional.png"}
    assert json.loads((tmp_path / "conditional.json").read_text())["law"] == "conditional"


@pytest.mark.slow
def test_pareto_and_recommend_notebook(small_study, tmp_path, monkeypatch):
    notebook = execute("02_pareto_and_recommend.ipynb", small_study, tmp_path, monkeypatch)
    summary = json.loads((tmp_path / "02_pareto_and_recommend.json").read_text())
    table = study_table(small_study)
    assert len(outputs_of(notebook, "image/png")) == 1  # loss vs decode throughput

    coef = summary["throughput_law"]["coefficients"]
    assert_finite(coef.values())
    assert min(coef.values()) >= 0 and max(coef.values()) > 0

    # The Pareto front: measured runs, better loss only at lower throughput, none dominated.
    front = summary["pareto_front"]
    assert front
    losses = [p["loss"] for p in front]
    speeds = [p["decode_tokens_per_s"] for p in front]
    assert losses == sorted(losses) and speeds == sorted(speeds)
    runs = table.set_index("trial_id")
    for point in front:
        run = runs.loc[point["trial_id"]]
        assert (run["loss"], run["decode_tokens_per_s"]) == (point["loss"],
                                                            point["decode_tokens_per_s"])
        beaten = (table["loss"] < point["loss"]) & (
            table["decode_tokens_per_s"] > point["decode_tokens_per_s"])
        assert not beaten.any()

    # Every run of this study trained on about 5 tokens per parameter (whole batches move it
    # 4.3-6.4), so N and D are collinear: the loss law says it is not identified, and no
    # prediction interval is printed for it (calibrated or silent).
    ratio = table["D"] / table["N"]
    assert ratio.max() / ratio.min() < 2
    loss_law = summary["loss_law"]
    assert not loss_law["identified"]
    assert any("collinear" in p for p in loss_law["problems"])
    assert loss_law["calibration"].startswith("no prediction interval")

    # Recommended at 10x the largest trained N: on the target, under the loss target, fastest first.
    assert summary["target_params"] == 10 * table["N"].max()
    recommended, optimal = summary["recommended"], summary["loss_optimal"]
    assert 1 <= len(recommended) <= 5
    assert summary["target_loss"] == pytest.approx(optimal["loss"] * 1.01)
    for shape in [*recommended, optimal]:
        assert abs(shape["N"] / summary["target_params"] - 1) <= 0.05
        assert_finite([shape["loss"], shape["decode_tokens_per_s"]])
        assert shape["loss_interval_90"] is None
    assert all(s["loss"] <= summary["target_loss"] for s in recommended)
    speeds = [s["decode_tokens_per_s"] for s in recommended]
    assert speeds == sorted(speeds, reverse=True)
    assert speeds[0] >= optimal["decode_tokens_per_s"]

    # Exported HF configs describe exactly the recommended shapes.
    shapes = {f"rank-{i}": s for i, s in enumerate(recommended, 1)} | {"loss-optimal": optimal}
    assert summary["hf_configs"].keys() == shapes.keys()
    for name, path in summary["hf_configs"].items():
        config = json.loads(Path(path).read_text())
        assert config["model_type"] == "llama"
        assert spec_from_hf_config(config) == ArchSpec.from_dict(shapes[name]["spec"])
    manifest = json.loads((tmp_path / "hf" / "recommendations.json").read_text())
    assert manifest["export"]["configs"].keys() == shapes.keys()


@pytest.mark.slow
def test_test_time_compute_notebook(passk_study, tmp_path, monkeypatch):
    from archscale.decide.substitution_report import coverage_forecast
    from archscale.sweeps.passk import pass_at_k

    notebook = execute("03_test_time_compute.ipynb", passk_study, tmp_path, monkeypatch)
    summary = json.loads((tmp_path / "03_test_time_compute.json").read_text())
    assert len(outputs_of(notebook, "image/png")) == 4
    assert all(Path(p).is_file() for p in summary["figures"])

    # every run's pass@k is Chen's estimator of its stored per-problem pass counts
    trials = {t.number: t for t in open_study(*passk_study).study.get_trials(deepcopy=False)}
    assert summary["n_runs"] == 12 and summary["k_max"] == 16
    for trial_id, curve in summary["pass_at_k"].items():
        passk = trials[int(trial_id)].user_attrs["result"]["passk"]
        correct = np.array(passk["correct"])
        assert len(correct) == 128 and correct.max() <= 16
        assert curve == pytest.approx([np.mean(pass_at_k(16, correct, k)) for k in range(1, 17)])
        assert np.all(np.diff(curve) >= 0)
    for run in summary["coverage"]:
        assert_finite([run["power b"], run["beta alpha"]])
        assert run["power b"] > 0 and run["beta alpha"] > 0
        # held out in k: both laws refitted on 4 of the 16 samples, scored on pass@5..16
        passk = trials[int(run["trial_id"])].user_attrs["result"]["passk"]
        forecast = coverage_forecast(passk["correct"], 16, 4)
        assert run["power forecast error"] == pytest.approx(
            forecast["power"]["mean_relative_error"])
        assert run["beta forecast error"] == pytest.approx(forecast["beta"]["mean_relative_error"])

    # the pass@k laws predicted the 4 runs of the largest scale at every k. Held out, they are
    # fitted on 2 scales: no refit of these runs calibrates how their error grows beyond the
    # fitted range, and no public pass@k sweep is shipped, so only their in-sample scatter
    # calibrates, inside the fitted range: no interval at the held-out scale, and each says so
    held, chain = summary["heldout"], summary["heldout_chain"]
    assert held["rule"] == "largest scale '15000.0' held out" and held["n_test"] == 4 * 16
    assert len(load_sweep(PASSK_STUDY_SWEEP).grid.scales) == 3
    for check in (held, chain):
        assert [row["k"] for row in check["by_k"]] == list(range(1, 17))
        assert_finite([check["mean_relative_error"]])
        assert check["coverage_90"] is None
        assert all(row["coverage_90"] is None for row in check["by_k"])
        assert check["calibration"].endswith("inside the fitted range only)")
    assert summary["forms"].keys() == {"nd", "compute", "loss"}

    # the answer: larger shapes need fewer samples; the cheapest point is the least total cost
    points = summary["substitution"]
    assert points and all(p["predicted_pass_at_k"] >= summary["target_pass"] for p in points)
    assert [p["k"] for p in points] == sorted((p["k"] for p in points), reverse=True)
    assert summary["cheapest"]["total_cost_flops"] == min(p["total_cost_flops"] for p in points)
    assert summary["table_rows"] == 5 * 16  # 3 trained sizes, 2x and 4x the largest

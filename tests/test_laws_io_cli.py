"""law.json round trip (identical predictions), and the `archscale fit` / `predict` commands."""

import json

import numpy as np
import pandas as pd
import pytest
from test_laws_throughput_accuracy import measured_table
from typer.testing import CliRunner

import archscale
from archscale.arch import get_preset
from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.laws import chinchilla, fit_law, load_law, save_law, spec_features
from archscale.laws.table import file_sha256

CHIN = np.array([400.0, 1500.0, 1.8, 0.34, 0.36])


def runs(seed=0):
    """Known Chinchilla law x a U-term in d/sqrt(N), 4 sizes x 3 token counts x 2 shapes."""
    rng = np.random.default_rng(seed)
    n_params = np.repeat([1e7, 3e7, 1e8, 3e8], 6)
    tokens = n_params * np.tile(np.repeat([10, 20, 40], 2), 4)
    x = np.tile([0.05, 0.12], 12)
    loss = chinchilla.predict(CHIN, n_params, tokens)[0] * (1 + 0.02 * np.log(x) + 0.0014 / x)
    loss = loss * (1 + 0.001 * rng.normal(size=loss.size))
    return pd.DataFrame({"N": n_params, "D": tokens, "d_over_sqrt_n": x, "loss": loss,
                         "study": "s1", "trial_id": np.arange(loss.size)})


@pytest.fixture(scope="module")
def conditional_law():
    return fit_law("conditional", runs(), {"terms": "d_over_sqrt_n:u_log_inv", "lopt": "given",
                                           "chinchilla": CHIN.tolist()}, n_boot=30, seed=3)


def test_law_json_round_trip_gives_identical_predictions(conditional_law, tmp_path):
    path = save_law(conditional_law, tmp_path / "sub" / "law.json")
    loaded = load_law(path)
    table = runs(seed=1).assign(N=lambda t: t.N * 3)
    assert np.array_equal(loaded.predict(table), conditional_law.predict(table))
    for got, want in zip(loaded.mean_interval(table, 0.9),
                         conditional_law.mean_interval(table, 0.9), strict=True):
        assert np.array_equal(got, want)
    assert loaded.coef_names == conditional_law.coef_names
    assert loaded.validation == json.loads(json.dumps(conditional_law.validation))


def test_law_json_holds_form_intervals_samples_and_provenance(conditional_law, tmp_path):
    data = json.loads(save_law(conditional_law, tmp_path / "law.json").read_text())
    assert data["law"] == "conditional" and data["archscale_version"] == archscale.__version__
    assert data["form"]["terms"] == [{"feature": "d_over_sqrt_n", "form": "u_log_inv"}]
    assert data["form"]["predicts"] == "loss"
    assert set(data["coefficients"]) == {"scale", "d_over_sqrt_n.ln", "d_over_sqrt_n.inv"}
    lo, hi = data["intervals"]["d_over_sqrt_n.ln"]
    assert lo < data["coefficients"]["d_over_sqrt_n.ln"] < hi
    assert len(data["bootstrap"]["samples"]) == 30 and data["bootstrap"]["seed"] == 3
    assert data["provenance"]["studies"] == ["s1"]
    assert data["provenance"]["trial_ids"][:3] == [0, 1, 2]
    assert {"in_sample", "heldout", "progressive"} <= set(data["validation"])


@pytest.mark.parametrize("kind, table, options, row", [
    ("throughput", lambda: measured_table("prefill"), {"target": "prefill"},
     {**spec_features(get_preset("tiny"), 0)}),
    ("accuracy", lambda: pd.DataFrame({"loss": np.linspace(3, 4, 12),
                                       "val_accuracy": np.linspace(0.4, 0.2, 12) ** 1.1}),
     {}, {"loss": 3.3}),
])
def test_round_trip_of_every_kind(tmp_path, kind, table, options, row):
    law = fit_law(kind, table(), options, n_boot=10)
    loaded = load_law(save_law(law, tmp_path / "law.json"))
    assert loaded.config == law.config and loaded.target == law.target
    assert np.array_equal(loaded.predict(row), law.predict(row))
    assert np.array_equal(loaded.mean_interval(row)[1], law.mean_interval(row)[1])


def test_bootstrap_is_seeded():
    a = fit_law("accuracy", pd.DataFrame({"loss": np.linspace(3, 4, 12),
                                          "val_accuracy": np.linspace(0.4, 0.2, 12) ** 1.1}),
                n_boot=20, seed=7)
    b = fit_law("accuracy", pd.DataFrame({"loss": np.linspace(3, 4, 12),
                                          "val_accuracy": np.linspace(0.4, 0.2, 12) ** 1.1}),
                n_boot=20, seed=7)
    assert np.array_equal(a.coef_samples, b.coef_samples)


@pytest.mark.parametrize("content, match", [(None, "no law file"), ("{", "not valid JSON"),
                                            ('{"law": "chinchilla"}', "not a valid law file"),
                                            ('{"law": "kaplan"}', "unknown law")])
def test_load_law_refuses_bad_files(tmp_path, content, match):
    path = tmp_path / "law.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ArchscaleError, match=match):
        load_law(path)


# ---- CLI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    """The runs under foreign column names, with FLOPs instead of tokens."""
    table = runs()
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    table.assign(flop=6 * table.N * table.D).rename(columns={"N": "params", "loss": "final"}).drop(
        columns=["D", "study", "trial_id"]).to_csv(path, index=False)
    return path


def test_cli_fit_then_predict(csv_file, tmp_path):
    out = tmp_path / "law.json"
    result = CliRunner().invoke(app, [
        "fit", "--law", "chinchilla", "--csv", str(csv_file), "--columns",
        "N=params,flops=flop,loss=final", "--out", str(out), "--n-boot", "20",
        "--no-progressive", "--plot", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "alpha" in result.output and "held out" in result.output
    data = json.loads(out.read_text())
    assert data["provenance"]["sha256"] == file_sha256(csv_file)
    assert data["provenance"]["columns"] == {"N": "params", "flops": "flop", "loss": "final"}
    assert data["coefficients"]["alpha"] == pytest.approx(0.34, abs=0.05)
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "fit.png", "residuals.png", "heldout.png", "u_curves.png"}

    result = CliRunner().invoke(app, ["predict", str(out), "--spec", "llama-3.2-1b",
                                      "--tokens", "1e11", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    law = load_law(out)
    assert shown["prediction"] == pytest.approx(float(law.predict({"N": 1235814400 - 128256 * 2048,
                                                                   "D": 1e11})[0]))
    assert shown["lower"] < shown["prediction"] < shown["upper"]
    assert shown["mean_lower"] < shown["prediction"] < shown["mean_upper"]
    # each missing input is named (laws/query.py holds which inputs each kind reads)
    for args, match in ((["--spec", "llama-3.2-1b"], "needs the training tokens"),
                        (["--tokens", "1e11"], "needs a shape"),
                        (["--compute", "-1"], "must be positive")):
        result = CliRunner().invoke(app, ["predict", str(out), *args])
        assert isinstance(result.exception, ArchscaleError) and match in str(result.exception)


@pytest.mark.parametrize("args, match", [
    (["fit", "--law", "chinchilla", "--out", "x.json"], "exactly one source"),
    (["fit", "--law", "kaplan", "--csv", "{csv}", "--columns", "N=params,flops=flop,loss=final",
      "--out", "x.json"], "unknown law"),
    (["fit", "--law", "chinchilla", "--csv", "{csv}", "--columns", "N=size", "--out", "x.json"],
     "lacks"),
    (["predict", "missing.json", "--spec", "tiny"], "no law file"),
])
def test_cli_user_errors_are_archscale_errors(csv_file, args, match):
    result = CliRunner().invoke(app, [a.format(csv=csv_file) for a in args])
    assert isinstance(result.exception, ArchscaleError), result.output
    assert match in str(result.exception)


def test_cli_fits_a_study_through_search(monkeypatch, tmp_path):
    """--study reads search's trials_table (search stubbed here: laws never touches Optuna)."""
    import archscale.search.study
    import archscale.search.table

    class Handle:
        study, url = "optuna-study", "sqlite:///runs.db"
        shown_url = url

    monkeypatch.setattr(archscale.search.study, "open_study", lambda name, url: Handle())
    monkeypatch.setattr(archscale.search.table, "trials_table",
                        lambda study: runs().assign(status="complete", study="s1"))
    out = tmp_path / "law.json"
    result = CliRunner().invoke(app, ["fit", "--law", "chinchilla", "--study", "s1", "--out",
                                      str(out), "--n-boot", "0", "--no-progressive"])
    assert result.exit_code == 0, result.output
    provenance = json.loads(out.read_text())["provenance"]
    assert provenance["source"] == "study" and provenance["storage"] == "sqlite:///runs.db"
    assert provenance["trial_ids"] == list(range(24))


def test_a_fit_that_did_not_converge_is_flagged(monkeypatch):
    from scipy.optimize import least_squares

    import archscale.laws.accuracy as accuracy

    monkeypatch.setattr(accuracy, "least_squares",
                        lambda *args, **kwargs: least_squares(*args, **{**kwargs, "max_nfev": 1}))
    table = pd.DataFrame({"loss": np.linspace(3, 4, 12),
                          "val_accuracy": np.linspace(0.4, 0.2, 12) ** 1.1})
    law = fit_law("accuracy", table, n_boot=5)
    assert not law.converged and not law.identified
    assert {"not_converged", "refits_failed"} <= {p.code for p in law.problems}
    assert any("bootstrap refits did not converge" in note for note in law.notes)
    assert np.isnan(law.coef_samples).all()  # no refit that failed enters an interval

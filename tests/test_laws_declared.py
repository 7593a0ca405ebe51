"""User-declared law forms: the expression is parsed safely, JAX's derivatives are right, Chinchilla
declared in YAML reproduces the built-in fit, a Muennighoff data-constrained form fits ScaleBench,
and a user form goes through `archscale fit --form` / `predict --csv` and law.json."""

import json
import shutil
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import VALIDATION_DIR
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.laws import (
    chinchilla,
    declare,
    fit_law,
    get_kind,
    load_form,
    load_law,
    registry,
    save_law,
)
from archscale.laws.declared_fit import compiled, fit_form, predict_form
from archscale.laws.expression import parse
from archscale.laws.table import load_table

FORMS_DIR = VALIDATION_DIR.parent / "forms"
SCALEBENCH = VALIDATION_DIR / "scalebench"


def epoch_table():
    """Hoffmann et al.'s runs as Epoch's replication fits them (5 highest losses dropped)."""
    raw = pd.read_csv(VALIDATION_DIR / "chinchilla_epoch.csv")
    raw = raw.drop(index=raw["loss"].nlargest(5).index).reset_index(drop=True)
    return load_table(raw, "N=Model Size,flops=Training FLOP,loss=loss")


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "N.real", "N[0]",
                                  "(lambda: 1)()", "open('x')", "'a'", "exp(x=N)",
                                  "[N for N in N]", "A if N else B", "unknown * N"])
def test_expression_refuses_anything_but_arithmetic(text):
    with pytest.raises(ArchscaleError, match="expression"):
        parse(text, ["N", "A", "B"])


def test_expression_with_definitions_evaluates_like_python():
    expression = parse("A / N_eff**alpha", ["N", "A", "alpha"], {"N_eff": "2 * N + 1"})
    assert expression({"N": 3.0, "A": 14.0, "alpha": 1.0}) == pytest.approx(2.0)  # 14 / 7
    with pytest.raises(ArchscaleError, match="unknown name"):  # a definition reads only earlier names
        parse("x", ["x"], {"a": "b", "b": "x"})


def test_jax_jacobian_matches_the_hand_derivative():
    """d/dz of log(E + A N^-alpha + B D^-beta) - log L, z = (ln A, ln B, ln E, alpha, beta)."""
    form = load_form(FORMS_DIR / "chinchilla.yaml")
    n, d, loss = np.array([1e8, 1e9]), np.array([2e9, 3e10]), np.array([3.0, 2.5])
    a, b, e, alpha, beta = 400.0, 1500.0, 1.8, 0.34, 0.36
    terms = np.stack([a * n**-alpha, b * d**-beta, np.full(2, e)])
    pred = terms.sum(axis=0)
    hand = np.column_stack([terms[0] / pred, terms[1] / pred, terms[2] / pred,
                            -terms[0] * np.log(n) / pred, -terms[1] * np.log(d) / pred])
    z = np.array([np.log(a), np.log(b), np.log(e), alpha, beta])
    with jax.enable_x64(True):
        jac = np.asarray(compiled(form).jacobian(z, {"N": n, "D": d}, np.log(loss), np.ones(2)))
    np.testing.assert_allclose(jac, hand, rtol=1e-10)


def test_chinchilla_declared_in_yaml_reproduces_the_built_in_fit():
    table = epoch_table()
    built_in = chinchilla.fit_chinchilla(table["N"], table["D"], table["loss"])
    declared = fit_form(load_form(FORMS_DIR / "chinchilla.yaml"), table)
    assert declared.converged
    np.testing.assert_allclose(declared.coef, built_in.coef, rtol=1e-3)


def test_muennighoff_form_fits_the_data_constrained_pool():
    """Fitted on ScaleBench's whole pool, the data-constrained form must predict the target
    region at least as well as the paper's own whole-pool fits do on average over the task's
    forms (R^2 0.79, Li et al. 2026 Table 2 "All Data")."""
    kind = get_kind("scalebench/data_constrained")
    form = load_form(registry.library_forms()["scalebench/data_constrained"])
    assert "Muennighoff" in form.description and kind.name == form.name
    table = load_table(SCALEBENCH / "data_constrained.csv", kind.default_columns)
    pool, target = table[table["split"] == "pool"], table[table["split"] == "target"]
    estimate = fit_form(form, pool)
    predicted = predict_form(form, estimate.coef, target)[0]
    measured = target["loss"].to_numpy()
    r2 = 1 - np.sum((predicted - measured) ** 2) / np.sum((measured - measured.mean()) ** 2)
    assert r2 >= 0.79


USER_FORM = """\
name: moe_power
description: loss falls as a power of the dense size and of the expert count
expression: L_inf + B / (N**alpha * E**beta)
inputs: [N, E]
target: loss
space: log
coefficients:
  L_inf: {bounds: [0, 3], starts: [1.0, 2.0]}
  B: {bounds: [0.1, 1000], log: true, starts: [10, 100]}
  alpha: {bounds: [0, 1.5], starts: [0.1, 0.3]}
  beta: {bounds: [-0.5, 1.5], starts: [0.0, 0.2]}
"""


def test_user_form_through_the_cli_end_to_end(tmp_path):
    """fit --form on a CSV, predict --csv with intervals, and a law.json that predicts after the
    form file is gone (checked against the law's formula evaluated by hand)."""
    (tmp_path / "form.yaml").write_text(USER_FORM)
    raw = pd.read_csv(SCALEBENCH / "moe.csv")
    raw[raw["split"] == "pool"].to_csv(tmp_path / "pool.csv", index=False)
    raw[raw["split"] == "target"].to_csv(tmp_path / "target.csv", index=False)
    columns = "N=dense_parameter_count,E=num_experts,loss=loss_validation"
    runner = CliRunner()
    result = runner.invoke(app, ["fit", "--form", str(tmp_path / "form.yaml"), "--csv",
                                 str(tmp_path / "pool.csv"), "--columns", columns, "--n-boot",
                                 "20", "--out", str(tmp_path / "law.json"),
                                 "--allow-degenerate"])
    assert result.exit_code == 0, result.output
    assert "moe_power law" in result.output
    (tmp_path / "form.yaml").unlink()  # the law file carries the declaration
    saved = json.loads((tmp_path / "law.json").read_text())
    assert saved["form"]["declaration"]["expression"] == "L_inf + B / (N**alpha * E**beta)"
    result = runner.invoke(app, ["predict", str(tmp_path / "law.json"), "--csv",
                                 str(tmp_path / "target.csv"), "--columns", columns, "--out",
                                 str(tmp_path / "scored.csv")])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(tmp_path / "scored.csv")
    c = saved["coefficients"]
    by_hand = c["L_inf"] + c["B"] / (scored["N"] ** c["alpha"] * scored["E"] ** c["beta"])
    np.testing.assert_allclose(scored["prediction"], by_hand, rtol=1e-12)
    assert (scored["lower"] < scored["prediction"]).all()
    assert (scored["prediction"] < scored["upper"]).all()
    assert "coverage" in result.output
    law = load_law(tmp_path / "law.json")
    np.testing.assert_allclose(law.predict(scored), by_hand, rtol=1e-12)
    assert law.error_model is not None and law.coef_samples.shape == (20, 4)


def test_declared_form_in_python_gets_the_general_checks():
    """A form whose two coefficients only enter as a product cannot identify them apart."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"N": np.geomspace(1e7, 1e9, 12)})
    table["loss"] = 2 + 30 * table["N"] ** -0.2 * np.exp(0.001 * rng.normal(size=12))
    form = declare("product", "E + a * b * N**-alpha", inputs=["N"], target="loss",
                   coefficients={"E": {"bounds": [0, 5], "starts": [1.5]},
                                 "a": {"bounds": [0, 100], "starts": [3.0]},
                                 "b": {"bounds": [0, 100], "starts": [5.0]},
                                 "alpha": {"bounds": [0, 1], "starts": [0.3]}})
    law = fit_law(form, table, n_boot=0, progressive=False)
    assert any(p.code == "flat_direction" and "a" in p.message and "b" in p.message
               for p in law.problems)


def test_forms_registered_by_entry_point(tmp_path, monkeypatch):
    """A package registers a form under the archscale.laws entry-point group."""
    from importlib.metadata import EntryPoint

    shutil.copy(FORMS_DIR / "chinchilla.yaml", tmp_path / "form.yaml")
    (tmp_path / "my_laws.py").write_text(f"FORM = {str(tmp_path / 'form.yaml')!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name="mine", value="my_laws:FORM", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point])
    registry._entry_point_kinds.cache_clear()
    try:
        assert "mine" in registry.kind_names()
        assert get_kind("mine").name == "chinchilla_declared"
    finally:
        registry._entry_point_kinds.cache_clear()
        sys.modules.pop("my_laws", None)


@pytest.mark.parametrize("flag", [["--terms", "aspect:log"], ["--lopt-law", "x.json"]])
def test_fit_refuses_options_the_form_does_not_read(tmp_path, flag):
    (tmp_path / "form.yaml").write_text(USER_FORM)
    result = CliRunner().invoke(app, ["fit", "--form", str(tmp_path / "form.yaml"), "--csv",
                                      str(SCALEBENCH / "moe.csv"), "--out",
                                      str(tmp_path / "law.json"), *flag])
    assert isinstance(result.exception, ArchscaleError)
    assert f"takes no {flag[0]}" in str(result.exception)


def test_group_coefficients_are_fitted_per_group(tmp_path):
    """Two corpora share the exponent but not the floor: a form with E per group recovers each
    corpus's E, and its law.json predicts each group with its own."""
    n_params = np.tile(np.geomspace(1e7, 1e9, 6), 2)
    group = np.repeat(["pile", "stack"], 6)
    floor = np.where(group == "pile", 1.8, 0.9)
    table = pd.DataFrame({"N": n_params, "corpus": group,
                          "loss": floor + 40 * n_params**-0.25})
    form = declare("two_floors", "E + A * N**-alpha", inputs=["N"], target="loss",
                   coefficients={"E": {"bounds": [0, 5], "starts": [1.0]},
                                 "A": {"bounds": [1, 1e4], "log": True, "starts": [10, 100]},
                                 "alpha": {"bounds": [0, 1], "starts": [0.2, 0.5]}},
                   group="corpus", per_group=["E"])
    law = fit_law(form, table, n_boot=10, progressive=False)
    assert law.coef_names == ("E_pile", "E_stack", "A", "alpha")
    np.testing.assert_allclose(law.coef, [1.8, 0.9, 40, 0.25], rtol=1e-6)
    loaded = load_law(save_law(law, tmp_path / "law.json"))
    rows = pd.DataFrame({"N": [1e10, 1e10], "corpus": ["stack", "pile"]})
    np.testing.assert_allclose(loaded.predict(rows), [0.9 + 40 * 1e10**-0.25,
                                                      1.8 + 40 * 1e10**-0.25], rtol=1e-6)
    with pytest.raises(ArchscaleError, match="owt"):
        loaded.predict(pd.DataFrame({"N": [1e8], "corpus": ["owt"]}))

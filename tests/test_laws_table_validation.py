"""Run tables (column mapping, derived features, scales) and the validation tasks."""

import numpy as np
import pandas as pd
import pytest
from conftest import VALIDATION_DIR

from archscale.arch.errors import ArchscaleError
from archscale.laws import load_table
from archscale.laws.law import holdout_mask
from archscale.laws.table import group_labels, parse_columns, scale_labels, scale_order
from archscale.laws.validation import heldout, prediction_metrics, progressive


def test_morph_csv_maps_to_canonical_columns():
    table = load_table(VALIDATION_DIR / "morph_open_lm.csv",
                       "N=n_params, D=train_tokens, loss=final_loss, scale=size_label")
    assert len(table) == 76
    first = table.iloc[0]
    assert first["aspect"] == 512 / 8
    assert first["d_over_sqrt_n"] == pytest.approx(512 / np.sqrt(78914048))
    assert scale_order(table)[:3] == ["80M", "86M", "116M"] and scale_order(table)[-1] == "1B"


def test_derived_tokens_shape_features_and_status_filter(tiny_spec):
    spec = tiny_spec.to_dict()
    n_params, per_token = tiny_spec.params_nonembed, tiny_spec.train_flops_per_token()
    raw = pd.DataFrame([
        {**spec, "N": n_params, "flops": per_token * 2e7, "loss": 3.0, "status": "complete"},
        {**spec, "N": n_params, "flops": per_token * 4e7, "loss": 2.0, "status": "diverged"}])
    table = load_table(raw.drop(columns=["tie_embeddings", "rope_theta", "norm_eps"]))
    assert len(table) == 1 and table["D"].iloc[0] == pytest.approx(2e7)
    # without the shape, FLOPs are read as published tables count them: 6 N D
    bare = load_table(pd.DataFrame({"N": [1e6], "flops": [6e6 * 2e7], "loss": [3.0]}))
    assert bare["D"].iloc[0] == pytest.approx(2e7)
    assert table["r"].iloc[0] == tiny_spec.r_mlp_attn
    assert table["gqa_group"].iloc[0] == tiny_spec.gqa_group


@pytest.mark.parametrize("source, columns, match", [
    ("missing.csv", None, "no CSV file"),
    (pd.DataFrame({"a": [1]}), "N=size", "lacks"),
    (pd.DataFrame({"a": [1]}), "N", "CANONICAL=SOURCE"),
])
def test_load_table_refuses_bad_input(source, columns, match):
    with pytest.raises(ArchscaleError, match=match):
        load_table(source, columns)


def test_parse_columns():
    assert parse_columns("N=Model Size,D=tokens") == {"N": "Model Size", "D": "tokens"}
    assert parse_columns(None) == {}


def test_scales_cluster_n_within_ten_percent():
    table = pd.DataFrame({"N": [1.00e8, 1.05e8, 1.12e8, 3e8, 3.1e8, 1e9], "D": 1e9})
    labels = scale_labels(table)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:5])) == 1 and len(set(labels)) == 3
    assert scale_order(table)[-1] == labels[-1]
    assert group_labels(table)[0] == f"{labels[0]}|1e+09"


def test_prediction_metrics_by_group():
    measured = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    predicted = np.array([1.1, 2.1, 2.9, 4.0, 6.0, 5.0, 7.0])
    groups = np.array(["a", "a", "a", "b", "b", "b", "c"])
    out = prediction_metrics(predicted, measured, groups)
    assert out["mse"] == pytest.approx((0.01 + 0.01 + 0.01 + 0 + 1 + 1 + 0) / 7)
    relative = np.abs(predicted - measured) / measured
    assert out["mean_relative_error"] == pytest.approx(np.mean(relative))
    assert out["spearman_by_group"] == {"a": pytest.approx(1.0), "b": pytest.approx(0.5)}
    assert out["spearman_min"] == pytest.approx(0.5)


def _scaled_table():
    n_params = np.repeat([1e7, 3e7, 1e8, 3e8], 3)
    return pd.DataFrame({"N": n_params, "D": 20 * n_params, "loss": 10 / np.log(n_params)})


def _fit_mean(train, test):
    """A stand-in law: the mean training loss (records what it was trained on)."""
    _fit_mean.seen.append(sorted(set(train.N)))
    return np.full(len(test), train.loss.mean())


def test_heldout_largest_scale():
    table = _scaled_table()
    _fit_mean.seen = []
    task = heldout(table, "loss", _fit_mean, min_train=2, axes=("N", "D"), space="log")
    assert task["n_test"] == 3 and _fit_mean.seen[-1] == [1e7, 3e7, 1e8]
    assert task["rows"]["index"] == [9, 10, 11]
    # 3e8 lies log(3) beyond the fitted 1e7..1e8 in N and in D, each a log(10) wide range
    assert task["rows"]["distance"] == pytest.approx([2 * np.log(3) / np.log(10)] * 3)
    assert "skipped" in heldout(table, "loss", _fit_mean, min_train=20, axes=(), space="log")


def test_holdout_mask_by_any_column():
    table = _scaled_table().assign(flops=lambda t: 6 * t.N * t.D)
    assert holdout_mask(table, 5e7, "N").tolist() == [False] * 6 + [True] * 6
    assert holdout_mask(table, 6 * 20 * 3e8**2, "flops").sum() == 3
    with pytest.raises(ArchscaleError, match="no held-out runs"):
        holdout_mask(table, 1e12, "N")
    with pytest.raises(ArchscaleError, match="no column 'tokens'"):
        holdout_mask(table, 1.0, "tokens")


def test_progressive_tasks_grow_the_training_scales():
    _fit_mean.seen = []
    tasks = progressive(_scaled_table(), "loss", _fit_mean, min_train=4, axes=("N",),
                        space="log")
    assert [t["n_train"] for t in tasks] == [6, 9]  # 3 runs of the smallest scale are too few
    assert _fit_mean.seen == [[1e7, 3e7], [1e7, 3e7, 1e8]]
    assert all("mse" in t for t in tasks)


def test_tokens_read_back_from_a_runs_flops_are_the_tokens_it_trained_on(small_study):
    """The trainer counts 6N plus attention per token; D derived from its FLOPs must undo that."""
    from archscale.search.study import open_study
    from archscale.search.table import trials_table

    runs = trials_table(open_study(*small_study).study)
    derived = load_table(runs.drop(columns="D"))
    assert np.allclose(derived["D"], runs["D"], rtol=1e-12)
    # the 6N rule of published tables (no shape columns) would be off by the attention share
    assert not np.allclose(runs["flops"] / (6 * runs["N"]), runs["D"], rtol=1e-3)

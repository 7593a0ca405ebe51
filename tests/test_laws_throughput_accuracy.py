"""Throughput law (roofline features, non-negative efficiencies) and accuracy law (sigmoid)."""

import numpy as np
import pandas as pd
import pytest

from archscale.arch import ArchSpec, get_preset, shape_from_budget
from archscale.arch.errors import ArchscaleError
from archscale.laws import fit_law, spec_features, spec_table
from archscale.laws.accuracy import sigmoid, sigmoid_jacobian
from archscale.laws.throughput import roofline_features

OVERHEAD_S, BANDWIDTH, PEAK = 2e-4, 5e10, 2e12


def measured_table(target, noise=0.02, seed=0):
    """Shapes of several sizes, ratios and GQA groups 'measured' with a known time model."""
    rng = np.random.default_rng(seed)
    specs = [shape_from_budget(n, r, g, d_over_sqrt_n=dn, vocab_size=1024, seq_len=512).spec
             for n in (2e6, 8e6, 3e7) for r, g, dn in ((1, 1, 0.1), (4, 2, 0.08), (2, 4, 0.06))]
    table = spec_table(specs, tokens=1e8)
    table["tp_batch"] = np.tile([4, 16, 8], 3)
    table["tp_context"] = 512
    features, tokens = roofline_features({"target": target, "dtype": "bf16"}, table)
    seconds = features @ np.array([OVERHEAD_S, 1 / BANDWIDTH, 1 / PEAK])
    measured = tokens / seconds * np.exp(noise * rng.normal(size=len(table)))
    column = "decode_tokens_per_s" if target == "decode" else "prefill_tokens_per_s"
    return table.assign(**{column: measured})


@pytest.mark.parametrize("target", ["decode", "prefill"])
def test_throughput_recovers_the_time_model(target):
    table = measured_table(target, noise=0.0)
    law = fit_law("throughput", table, {"target": target}, n_boot=0)
    np.testing.assert_allclose(law.coef, [OVERHEAD_S, 1 / BANDWIDTH, 1 / PEAK], rtol=1e-6)
    assert law.config["batch"] in (4, 8, 16) and law.config["context"] == 512


def test_decode_law_predicts_a_new_spec_with_an_interval():
    table = measured_table("decode")
    law = fit_law("throughput", table, {"target": "decode"}, n_boot=100)
    assert law.validation["in_sample"]["mean_relative_error"] < 0.05
    spec = shape_from_budget(1e8, 3, 4, d_over_sqrt_n=0.05, vocab_size=1024, seq_len=512).spec
    row = spec_features(spec, 1e9, batch=8, context=512)
    features, tokens = roofline_features(law.config, pd.DataFrame([row]))
    truth = tokens / (features @ [OVERHEAD_S, 1 / BANDWIDTH, 1 / PEAK])
    predicted = law.predict(row)
    lo, hi = law.mean_interval(row)
    assert predicted == pytest.approx(truth, rel=0.1)
    assert lo[0] <= predicted[0] <= hi[0]
    # larger GQA groups read less KV cache: faster decoding at equal size
    wide = law.predict([spec_features(spec.replace(n_kv_heads=spec.n_heads), 1e9)])
    assert wide[0] < law.predict([spec_features(spec, 1e9)])[0]


def test_throughput_needs_the_measurement_setting():
    table = measured_table("decode").drop(columns=["tp_batch", "tp_context"])
    with pytest.raises(ArchscaleError, match="tp_batch"):
        fit_law("throughput", table, n_boot=0)
    with pytest.raises(ArchscaleError, match="decode or prefill"):
        fit_law("throughput", measured_table("decode"), {"target": "train"}, n_boot=0)


def test_spec_features_follow_archspec(tiny_spec):
    row = spec_features(tiny_spec, 1e6, batch=2, context=16)
    assert row["N"] == tiny_spec.params_nonembed
    assert row["r"] == tiny_spec.r_mlp_attn
    assert row["d_over_sqrt_n"] == tiny_spec.d_over_sqrt_n
    assert row["aspect"] == 16.0 and row["tp_batch"] == 2
    shape = ("vocab_size", "seq_len", "n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim",
             "d_ff")
    assert ArchSpec(**{k: row[k] for k in shape}) == tiny_spec
    llama = spec_features(get_preset("llama-3.2-1b"), 1e11)
    assert llama["d_over_sqrt_n"] == pytest.approx(0.066, abs=5e-4)


def test_accuracy_sigmoid_recovered_and_monotone():
    rng = np.random.default_rng(0)
    loss = np.linspace(2.5, 5.0, 25)
    truth = np.array([0.45, -2.5, 3.6, 0.05])
    acc = sigmoid(truth, loss)[0] + 0.002 * rng.normal(size=loss.size)
    table = pd.DataFrame({"loss": loss, "val_accuracy": acc, "N": 1e8, "D": 1e9})
    law = fit_law("accuracy", table, n_boot=50)
    np.testing.assert_allclose(law.coef, truth, rtol=0.1)
    predicted = law.predict([{"loss": 3.0}, {"loss": 3.5}, {"loss": 4.0}])
    assert np.all(np.diff(predicted) < 0)
    lo, hi = law.mean_interval([{"loss": 3.5}])
    assert lo[0] < predicted[1] < hi[0]
    assert "heldout" not in law.validation  # one scale: nothing to hold out
    assert "wrong_sign" not in [p.code for p in law.problems]


def test_accuracy_jacobian_matches_finite_differences():
    loss, h = np.linspace(1.5, 4.0, 9), 1e-6
    for theta in (np.array([0.6, -2.0, 2.5, 0.05]), np.array([-0.3, 1.5, 3.2, 0.4])):
        central = np.stack([(sigmoid(theta + h * e, loss)[0] - sigmoid(theta - h * e, loss)[0])
                            / (2 * h) for e in np.eye(4)], axis=1)
        assert np.allclose(sigmoid_jacobian(theta, loss), central, atol=1e-7)


def test_accuracy_rising_with_loss_is_named():
    """Runs whose accuracy rises with the loss give a law that is not identified, whichever of
    the sigmoid's two mirror forms the fit lands on (here a = -0.45, k = -2.5)."""
    loss = np.linspace(2.5, 5.0, 25)
    acc = sigmoid(np.array([0.45, 2.5, 3.6, 0.05]), loss)[0]
    law = fit_law("accuracy", pd.DataFrame({"loss": loss, "val_accuracy": acc, "N": 1e8,
                                            "D": 1e9}), n_boot=0)
    assert law.coefficients["a"] * law.coefficients["k"] > 0
    assert "wrong_sign" in [p.code for p in law.problems] and not law.identified


def test_accuracy_refuses_missing_target():
    table = pd.DataFrame({"loss": np.linspace(3, 4, 10), "val_accuracy": np.nan})
    with pytest.raises(ArchscaleError, match="missing or NaN"):
        fit_law("accuracy", table, n_boot=0)
    with pytest.raises(ArchscaleError, match="task_accuracy"):
        fit_law("accuracy", table, {"target": "top5"}, n_boot=0)


def test_the_law_costs_a_decode_step_as_the_measurement_does():
    """One counting rule: the law's bytes and FLOPs of a decode step are the roofline's, at the
    mean context of the measured steps (context 512 + 32 steps -> 528 cached tokens), worked out
    here by hand for LLaMA-3.2-1B in bf16."""
    from archscale.sweeps.throughput import roofline

    spec = get_preset("llama-3.2-1b")
    row = {**spec_features(spec, 1.0, batch=8, context=512), "tp_decode_tokens": 32}
    features, _ = roofline_features({"target": "decode", "dtype": "bf16"}, pd.DataFrame([row]))
    kv_bytes = 2 * 16 * 8 * 64 * 2 * 8 * 528  # K and V x layers x KV heads x head_dim x bf16
    weights = (spec.params_nonembed + 128256 * 2048) * 2  # N and the output projection
    assert features[0, 1] == weights + kv_bytes
    shown = roofline(spec, batch=8, context=512, decode_tokens=32, dtype="bfloat16",
                     peak=1e12, bandwidth=1e11)
    assert shown["decode_bytes_per_step"] == features[0, 1]
    attention = 4 * 16 * 528 * 32 * 64
    assert features[0, 2] == 8 * (2 * spec.params_nonembed + attention + 2 * 2048 * 128256)

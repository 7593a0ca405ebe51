"""`archscale recommend`: Algorithm 1 over fitted laws (grid, GQA local search, loss-optimal
shape, Pareto set, baseline), its provenance and extrapolation labels, and the command.

Laws are fitted to a synthetic run table made from a known law: Chinchilla x a U-curve in
d/sqrt(N) (optimum 0.07) x a U-curve in r (optimum 2.0), optionally x (1 + c ln GQA group).
"""

import dataclasses
import json
import statistics

import numpy as np
import pandas as pd
import pytest
from test_laws_throughput_accuracy import measured_table
from typer.testing import CliRunner

import archscale
from archscale.arch import ArchSpec, get_preset
from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.decide.recommend import (
    SearchSpace,
    accuracy_at,
    gqa_local_search,
    recommend,
    save_recommendation,
    score,
)
from archscale.decide.throughput_models import (
    MeasureSettings,
    RooflineThroughput,
    measure_bytes,
    throughput_from_law,
)
from archscale.laws import chinchilla, fit_law, save_law, spec_table
from archscale.laws.accuracy import sigmoid
from archscale.laws.table import file_sha256
from archscale.sweeps.hardware import KNOWN_DEVICES

CHIN = [400.0, 1500.0, 1.8, 0.34, 0.36]
SHAPE = {"d_over_sqrt_n": (0.02, 0.0014), "r": (0.01, 0.02)}  # (ln, inv): optimum inv / ln
GQA_COST = 0.004
TRAINED_N = (2e7, 5e7, 1.2e8, 3e8, 7e8)
PAPER = "d_over_sqrt_n:u_log_inv,r:u_log_inv"
H100 = RooflineThroughput(KNOWN_DEVICES["h100"].bf16_flops, KNOWN_DEVICES["h100"].bandwidth, "h100")
SPACE = SearchSpace(1e9, 2e10)


def true_loss(n_params, tokens, x, r, gqa_group):
    """The law the runs are drawn from."""
    l_opt = chinchilla.predict(np.array(CHIN), np.asarray(n_params, float),
                               np.asarray(tokens, float))[0]
    x, r, gqa_group = (np.asarray(v, float) for v in (x, r, gqa_group))
    shape = [1 + a * np.log(v) + b / v for (a, b), v in zip(SHAPE.values(), (x, r), strict=True)]
    return 0.98 * l_opt * shape[0] * shape[1] * (1 + GQA_COST * np.log(gqa_group))


def runs(noise=2e-4, seed=0):
    """5 trained scales x 8 shapes (D = 20 N) with random d/sqrt(N), r and GQA group."""
    rng = np.random.default_rng(seed)
    n_params = np.repeat(TRAINED_N, 8)
    x = np.exp(rng.uniform(np.log(0.03), np.log(0.15), n_params.size))
    r = np.exp(rng.uniform(np.log(0.5), np.log(6.0), n_params.size))
    group = rng.choice([1, 2, 4, 8], n_params.size)
    loss = true_loss(n_params, 20 * n_params, x, r, group)
    return pd.DataFrame({"N": n_params, "D": 20 * n_params, "d_over_sqrt_n": x, "r": r,
                         "gqa_group": group,
                         "loss": loss * (1 + noise * rng.normal(size=loss.size))})


def fit(terms):
    return fit_law("conditional", runs(), {"terms": terms, "lopt": "given", "chinchilla": CHIN},
                   n_boot=20, progressive=False)


@pytest.fixture(scope="module")
def gqa_law():
    return fit(PAPER + ",gqa_group:log")


@pytest.fixture(scope="module")
def paper_law():
    return fit(PAPER)


@pytest.fixture(scope="module")
def rec(paper_law):
    return recommend(paper_law, SPACE, H100, max_loss_increase=0.005,
                     baseline=get_preset("llama-3.2-1b"))


def test_loss_optimal_shape_lands_near_the_true_optimum(rec):
    best = rec.loss_optimal.spec
    assert best.d_over_sqrt_n == pytest.approx(0.07, rel=0.1)
    assert best.r_mlp_attn == pytest.approx(2.0, rel=0.1)
    # the best candidate of the true law at equal N, up to the fit's noise
    specs = SPACE.candidates()
    truth = true_loss(SPACE.params, SPACE.tokens, [s.d_over_sqrt_n for s in specs],
                      [s.r_mlp_attn for s in specs], [s.gqa_group for s in specs])
    chosen = truth[specs.index(best)]
    assert chosen - truth.min() < 2e-4 * truth.min()


def test_recommended_shapes_meet_the_target_and_outrun_the_loss_optimal_shape(rec, paper_law):
    assert rec.target_loss == pytest.approx(rec.loss_optimal.loss * 1.005)
    assert len(rec.recommended) == 5
    speeds = [s.decode_tokens_per_s for s in rec.recommended]
    assert speeds == sorted(speeds, reverse=True)
    assert all(s.loss <= rec.target_loss for s in rec.recommended)
    assert min(speeds) >= rec.loss_optimal.decode_tokens_per_s
    # every reported number is the law's / roofline's for that exact shape
    specs = [s.spec for s in rec.recommended]
    np.testing.assert_allclose([s.loss for s in rec.recommended],
                               paper_law.predict(spec_table(specs, SPACE.tokens)), rtol=1e-12)
    np.testing.assert_allclose(speeds, H100.decode_tokens_per_s(specs, 64, 2048), rtol=1e-12)
    low, high = paper_law.mean_interval(spec_table(specs, SPACE.tokens))
    assert all(lo <= s.loss <= hi for s, lo, hi in zip(rec.recommended, low, high, strict=True))
    # no feasible grid shape is faster than the first recommendation
    grid = SPACE.candidates()
    loss = paper_law.predict(spec_table(grid, SPACE.tokens))
    feasible_speed = H100.decode_tokens_per_s(grid, 64, 2048)[loss <= rec.target_loss]
    assert speeds[0] >= feasible_speed.max()


def test_pareto_set_is_non_dominated_and_covers_the_answers(rec):
    front = rec.pareto
    assert len(front) >= 3
    for a in front:
        for b in front:
            if a is not b:
                assert not (a.loss <= b.loss and a.decode_tokens_per_s >= b.decode_tokens_per_s)
    for s in [*rec.recommended, rec.loss_optimal]:
        assert any(p.loss <= s.loss and p.decode_tokens_per_s >= s.decode_tokens_per_s
                   for p in front)


def _step_after(start, law, kv):
    """The GQA step to ``kv`` KV heads, scored as the search scores it."""
    step = gqa_local_search(start, law, H100, SPACE, 64, 2048, np.inf, 0.95, min_gain=-1.0,
                            min_kv_heads=kv)[-1]
    assert step.spec.n_kv_heads == kv
    return step


def test_gqa_search_stops_at_the_loss_constraint_of_a_gqa_term(rec, gqa_law, paper_law):
    start_spec = rec.loss_optimal.spec  # 32 heads / 8 KV heads, far below the target
    (start,) = score([start_spec], gqa_law, H100, SPACE.tokens, 64, 2048, 0.95)
    # a doubled group costs 0.32% (GQA_COST ln 2 and the r shift), two doublings 0.57%
    target = start.loss * 1.0045
    path = gqa_local_search(start, gqa_law, H100, SPACE, 64, 2048, target, 0.95)
    assert [s.spec.n_kv_heads for s in path] == [8, 4]
    assert all(s.loss <= target for s in path)
    assert path[1].decode_tokens_per_s > 1.01 * path[0].decode_tokens_per_s
    assert path[1].spec.params_nonembed == pytest.approx(start.spec.params_nonembed, rel=0.01)
    assert _step_after(start, gqa_law, 2).loss > target  # the step refused
    # without a GQA term nothing stops it before --min-kv-heads
    (plain,) = score([start_spec], paper_law, H100, SPACE.tokens, 64, 2048, 0.95)
    walk = gqa_local_search(plain, paper_law, H100, SPACE, 64, 2048, target, 0.95)
    assert [s.spec.n_kv_heads for s in walk] == [8, 4, 2, 1]
    bounded = gqa_local_search(plain, paper_law, H100, SPACE, 64, 2048, target, 0.95,
                               min_kv_heads=4)
    assert [s.spec.n_kv_heads for s in bounded] == [8, 4]


def test_notes_say_when_the_law_cannot_see_gqa(rec, gqa_law):
    assert any("no gqa_group term" in n and "--min-kv-heads 1" in n for n in rec.notes)
    with_term = recommend(gqa_law, SPACE, H100, max_loss_increase=0.005, top=2)
    assert not any("gqa_group" in n for n in with_term.notes)
    assert all(s.loss <= with_term.target_loss for s in with_term.recommended)


def test_extrapolation_is_labelled_with_its_factors(rec, paper_law):
    ext = rec.extrapolation["loss_law"]
    assert ext["N"]["factor"] == pytest.approx(1e9 / max(TRAINED_N))
    assert ext["D"]["factor"] == pytest.approx(2e10 / (20 * max(TRAINED_N)))
    assert any("1.43x beyond the largest trained N" in n for n in rec.notes)
    shown = rec.to_dict()["recommended"][0]
    assert shown["extrapolation"]["N"] == pytest.approx(
        rec.recommended[0].spec.params_nonembed / max(TRAINED_N))
    # a law file written before the range was recorded says so instead of guessing
    old = dataclasses.replace(paper_law, provenance={"n_runs": 40})
    old_rec = recommend(old, SPACE, H100, max_loss_increase=0.005, top=1)
    assert old_rec.extrapolation["loss_law"] == {"N": None, "D": None}
    assert any("does not record its trained N range" in n for n in old_rec.notes)


def test_a_law_without_bootstrap_gives_no_interval_and_says_so():
    law = fit_law("conditional", runs(), {"terms": PAPER, "lopt": "given", "chinchilla": CHIN},
                  n_boot=0, progressive=False)
    got = recommend(law, SPACE, H100, max_loss_increase=0.005, top=1)
    assert got.to_dict()["recommended"][0]["loss_mean_interval"] == [None, None]
    assert any("no bootstrap samples" in n for n in got.notes)


def test_baseline_row_with_the_throughput_gain(rec, paper_law):
    base = rec.baseline
    assert base.spec == get_preset("llama-3.2-1b") and base.origin == "baseline"
    assert base.loss == pytest.approx(paper_law.predict(spec_table([base.spec], 2e10))[0])
    for s, shown in zip(rec.recommended, rec.to_dict()["recommended"], strict=True):
        versus = shown["vs_baseline"]
        assert versus["throughput_gain"] == pytest.approx(
            s.decode_tokens_per_s / base.decode_tokens_per_s - 1)
        assert versus["equal_or_better_loss"] == (s.loss <= base.loss)
    # the paper's Table 1: at the baseline's own predicted loss, a faster shape
    equal = recommend(paper_law, SPACE, H100, target_loss=base.loss, top=1,
                      baseline=base.spec).to_dict()["recommended"][0]["vs_baseline"]
    assert equal["equal_or_better_loss"] and equal["gain_at_equal_or_better_loss"] > 0.1


def test_a_fitted_throughput_law_is_the_throughput_model(paper_law):
    tp_law = fit_law("throughput", measured_table("decode"), {"target": "decode"}, n_boot=10)
    model = throughput_from_law(tp_law)
    got = recommend(paper_law, SPACE, model, max_loss_increase=0.005, top=2, batch=8,
                    context=512)
    specs = [s.spec for s in got.recommended]
    np.testing.assert_allclose([s.decode_tokens_per_s for s in got.recommended],
                               tp_law.predict(spec_table(specs, 0, batch=8, context=512)))
    assert "fitted throughput law" in got.methods["predicted_decode_tokens_per_s"]
    assert got.extrapolation["throughput_law"]["N"]["factor"] > 1
    with pytest.raises(ArchscaleError, match="decode throughput law"):
        throughput_from_law(fit_law("throughput", measured_table("prefill"),
                                    {"target": "prefill"}, n_boot=0))
    with pytest.raises(ArchscaleError, match="conditional law"):
        recommend(tp_law, SPACE, H100, max_loss_increase=0.005)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of"),
    ({"target_loss": 2.5, "max_loss_increase": 0.01}, "exactly one of"),
    ({"target_loss": 1.0}, "no shape reaches the target loss 1.0000"),
    ({"max_loss_increase": 5.0}, "fraction in"),
])
def test_bad_targets_are_clean_errors(paper_law, kwargs, match):
    with pytest.raises(ArchscaleError, match=match):
        recommend(paper_law, SPACE, H100, **kwargs)


def test_recommendation_json_round_trips(rec, tmp_path):
    data = json.loads(save_recommendation(rec, tmp_path / "out").read_text())
    assert data["target_loss"] == rec.target_loss
    first = data["recommended"][0]
    assert first["spec"] == rec.recommended[0].spec.to_dict()
    assert first["kv_cache_bytes"] == rec.recommended[0].spec.kv_cache_bytes(64, 2048)
    assert set(first["obtained"]) >= {"predicted_loss", "loss_interval_90", "loss_mean_interval",
                                      "kv_cache_bytes", "predicted_decode_tokens_per_s", "params"}
    assert data["provenance"]["loss_law"]["provenance"]["n_range"] == [2e7, 7e8]
    assert data["provenance"]["archscale_version"] == archscale.__version__


# ---- loss prediction intervals, accuracy, measured throughput --------------------------------
SHAPE_KEYS = {"predicted_loss", "loss_interval_90", "predicted_accuracy", "accuracy_interval_90",
              "measured_decode_tokens_per_s", "predicted_decode_tokens_per_s"}


def test_shapes_carry_the_90_prediction_interval_beside_the_mean_interval(rec, paper_law):
    specs = [s.spec for s in rec.recommended]
    table = spec_table(specs, SPACE.tokens)
    lower, upper = paper_law.prediction_interval(table, 0.9)
    low, high = paper_law.mean_interval(table, 0.95)
    for s, a, b, lo, hi in zip(rec.recommended, lower, upper, low, high, strict=True):
        assert s.loss_interval_90 == pytest.approx((a, b), rel=1e-12)
        assert a < lo <= s.loss <= hi < b  # where a run lands is wider than the law's mean
    shown = rec.to_dict()["recommended"][0]
    assert set(shown) >= SHAPE_KEYS
    assert shown["loss_interval_90"] == pytest.approx(list(rec.recommended[0].loss_interval_90))
    assert shown["predicted_accuracy"] is None and shown["measured_decode_tokens_per_s"] is None
    assert "prediction interval" in rec.methods["loss_interval_90"]
    assert "mean" in rec.methods["loss_mean_interval"]
    _, cells = rec.display_rows()[0]
    assert cells["loss [90% prediction interval]"].startswith(f"{rec.recommended[0].loss:.4f} [")


def test_a_law_without_error_model_shows_the_mean_interval_and_says_so(paper_law):
    old = dataclasses.replace(paper_law, error_model=None)
    got = recommend(old, SPACE, H100, max_loss_increase=0.005, top=1)
    assert got.to_dict()["recommended"][0]["loss_interval_90"] == [None, None]
    assert any("no prediction-interval calibration" in n for n in got.notes)
    _, cells = got.display_rows()[0]
    assert "loss [95% interval of the law's mean]" in cells
    assert got.methods["loss_interval_90"].startswith("not available")


@pytest.fixture(scope="module")
def accuracy_law():
    """A sigmoid loss -> accuracy law over the losses the recommendations predict (and their
    interval ends: beyond its fitted losses no refit calibrates an accuracy interval)."""
    rng = np.random.default_rng(1)
    loss = np.linspace(1.5, 40.0, 60)
    acc = sigmoid(np.array([0.6, -3.0, 2.8, 0.1]), loss)[0] + 0.004 * rng.normal(size=loss.size)
    return fit_law("accuracy", pd.DataFrame({"loss": loss, "val_accuracy": acc}), n_boot=40)


def test_accuracy_interval_contains_the_point_and_takes_in_the_loss_interval(paper_law,
                                                                          accuracy_law):
    got = recommend(paper_law, SPACE, H100, max_loss_increase=0.005, top=2,
                    baseline=get_preset("llama-3.2-1b"), accuracy_law=accuracy_law)
    for s in [*got.recommended, got.loss_optimal, got.baseline]:
        assert s.predicted_accuracy == pytest.approx(accuracy_law.predict({"loss": s.loss})[0])
        low, high = s.accuracy_interval_90
        assert low < s.predicted_accuracy < high
        # independently: the accuracy law's 90% interval at the loss interval's ends and point
        losses = [s.loss_interval_90[0], s.loss, s.loss_interval_90[1]]
        a_low, a_high = accuracy_law.prediction_interval([{"loss": v} for v in losses], 0.9)
        assert (low, high) == pytest.approx((a_low.min(), a_high.max()), rel=1e-12)
        assert low == pytest.approx(a_low[2]) and high == pytest.approx(a_high[0])  # monotone
    shown = got.to_dict()["recommended"][0]
    assert shown["accuracy_interval_90"] == pytest.approx(list(got.recommended[0]
                                                               .accuracy_interval_90))
    _, cells = got.display_rows()[0]
    assert "accuracy [90% prediction interval]" in cells
    assert "monotone" in got.methods["accuracy_interval_90"]
    # a wider loss interval gives a wider accuracy interval that holds the narrower one
    s = got.recommended[0]
    wide = dataclasses.replace(s, loss_interval_90=(s.loss - 0.2, s.loss + 0.2))
    narrow, widened = accuracy_at([s, wide], accuracy_law)
    assert widened.accuracy_interval_90[0] < narrow.accuracy_interval_90[0]
    assert widened.accuracy_interval_90[1] > narrow.accuracy_interval_90[1]
    assert widened.predicted_accuracy == narrow.predicted_accuracy
    with pytest.raises(ArchscaleError, match="accuracy law"):
        recommend(paper_law, SPACE, H100, max_loss_increase=0.005, accuracy_law=paper_law)


TINY = SearchSpace(1e5, 2e6, d_over_sqrt_n=(0.09, 0.21), r=(1.0, 6.0), r_points=8, gqa_group=1,
                   head_dim=16, n_layers=2, vocab_size=256, seq_len=64, d_model_multiple=16,
                   d_ff_multiple=16)
TINY_BASE = ArchSpec(vocab_size=256, seq_len=64, n_layers=2, d_model=128, n_heads=8,
                     n_kv_heads=8, head_dim=16, d_ff=512)
TINY_SETTING = {"target_loss": 1e3, "top": 2, "batch": 2, "context": 64, "baseline": TINY_BASE}


@pytest.fixture(scope="module")
def tiny_throughput_law():
    return fit_law("throughput", measured_table("decode"), {"target": "decode"}, n_boot=10)


def test_measured_throughput_at_the_target_with_the_model_error(paper_law):
    # the GQA search from GQA group 1 makes the roofline's finalists differ
    plain = recommend(paper_law, TINY, H100, **TINY_SETTING)
    finalists = {s.spec for s in [*plain.recommended, plain.loss_optimal]}
    assert len(finalists) == 3 and all(s.d_model <= 64 for s in finalists)
    # memory for the finalists together, not for the (larger) baseline
    sizes = [measure_bytes(s, 2, 64 + 8, "float32") for s in finalists]
    assert measure_bytes(TINY_BASE, 2, 64 + 8, "float32") > sum(sizes)
    settings = MeasureSettings(min_seconds=0.2, repeats=2, decode_tokens=8,
                               memory_bytes=sum(sizes) * 1.01, memory_fraction=1.0)
    got = recommend(paper_law, TINY, H100, measure=settings, **TINY_SETTING)
    # the same three are timed; which two are fastest is the measurement's to say (close
    # speeds swap places between runs, so the loss-optimal shape may be one of them)
    assert got.loss_optimal.spec == plain.loss_optimal.spec
    assert len(got.recommended) == 2 and {s.spec for s in got.recommended} <= finalists
    assert all(s.measured_decode_tokens_per_s > 0 for s in [*got.recommended, got.loss_optimal])
    speeds = [s.measured_decode_tokens_per_s for s in got.recommended]
    assert speeds == sorted(speeds, reverse=True)  # ranked by the measurement
    # the baseline did not fit: it keeps the roofline's value, and the output says so
    assert got.baseline.measured_decode_tokens_per_s is None
    assert got.baseline.decode_tokens_per_s == pytest.approx(
        H100.decode_tokens_per_s([TINY_BASE], 2, 64)[0])
    check = got.to_dict()["throughput_check"]
    assert check["n_measured"] == 3 and check["n_not_measured"] == 1
    assert check["setting"]["groups"] == 1  # the three timed together, interleaved
    # the law's error, computed independently from the two numbers of each measured shape
    data = got.to_dict()
    shapes = {json.dumps(d["spec"]): d for d in [*data["recommended"], data["loss_optimal"]]}
    errors = [abs(d["predicted_decode_tokens_per_s"] / d["measured_decode_tokens_per_s"] - 1)
              for d in shapes.values()]
    assert check["law_median_abs_rel_error"] == pytest.approx(statistics.median(errors))
    assert any(f"{check['law_median_abs_rel_error']:.1%}" in n and "not measured" in n
               for n in got.notes)
    assert data["baseline"]["measured_decode_tokens_per_s"] is None
    assert data["recommended"][0]["decode_tokens_per_s_basis"] == "measured"
    assert data["recommended"][0]["vs_baseline"]["throughput_basis"] == "predicted"
    _, cells = got.display_rows()[-1]
    assert cells["decode tok/s measured"] == "not measured"
    assert "compare_throughput" in got.methods["measured_decode_tokens_per_s"]


def test_nothing_measured_when_nothing_fits(paper_law, tiny_throughput_law):
    got = recommend(paper_law, TINY, throughput_from_law(tiny_throughput_law),
                    measure=MeasureSettings(memory_bytes=1.0), **TINY_SETTING)
    assert all(s.measured_decode_tokens_per_s is None
               for s in [*got.recommended, got.loss_optimal, got.baseline])
    assert got.throughput_check["n_measured"] == 0
    assert got.throughput_check["law_median_abs_rel_error"] is None
    assert any("which no measurement checked" in n for n in got.notes)
    with pytest.raises(ArchscaleError, match="memory_fraction"):
        MeasureSettings(memory_fraction=0)


# ---- CLI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def law_file(paper_law, tmp_path_factory):
    return save_law(paper_law, tmp_path_factory.mktemp("laws") / "law.json")


def test_cli_recommend_measures_and_predicts_accuracy(law_file, accuracy_law, tiny_throughput_law,
                                                      tmp_path):
    acc_file = save_law(accuracy_law, tmp_path / "accuracy.json")
    tp_file = save_law(tiny_throughput_law, tmp_path / "throughput.json")
    result = CliRunner().invoke(app, [
        "recommend", "--law", str(law_file), "--params", "1e5", "--tokens", "2e6",
        "--target-loss", "1000", "--top", "2", "--layers", "2", "--head-dim", "16",
        "--vocab-size", "256", "--seq-len", "64", "--d-model-multiple", "16",
        "--d-ff-multiple", "16", "--d-over-sqrt-n", "0.09:0.21", "--r", "1:6", "--gqa", "1",
        "--batch", "2", "--context", "64", "--throughput-law", str(tp_file),
        "--accuracy-law", str(acc_file), "--measure", "--measure-seconds", "0.2",
        "--measure-repeats", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for header in ("loss [90%", "accuracy [90%", "prediction", "measured"):  # headers wrap
        assert header in result.output
    assert "median |relative error|" in result.output
    data = json.loads((tmp_path / "out" / "recommendations.json").read_text())
    for shape in [*data["recommended"], data["loss_optimal"]]:
        assert set(shape) >= SHAPE_KEYS
        assert shape["measured_decode_tokens_per_s"] > 0
        low, high = shape["accuracy_interval_90"]
        assert low < shape["predicted_accuracy"] < high
        assert shape["loss_interval_90"][0] < shape["predicted_loss"] < shape["loss_interval_90"][1]
    assert data["throughput_check"]["n_measured"] >= 1
    assert data["throughput_check"]["law_median_abs_rel_error"] >= 0
    assert data["provenance"]["accuracy_law_file"]["sha256"] == file_sha256(acc_file)
    assert data["provenance"]["command_settings"]["measure"] is True


def test_cli_recommend_writes_the_json_with_provenance(law_file, tmp_path):
    result = CliRunner().invoke(app, [
        "recommend", "--law", str(law_file), "--params", "1e9", "--tokens", "2e10",
        "--max-loss-increase", "0.5%", "--top", "3", "--baseline", "llama-3.2-1b",
        "--d-over-sqrt-n", "0.05:0.15", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "loss-opt" in result.output and "baseline" in result.output
    assert "no gqa_group term" in result.output and "1.43x beyond" in result.output
    data = json.loads((tmp_path / "recommendations.json").read_text())
    assert len(data["recommended"]) == 3 and data["baseline"]["params_total"] == 1_235_814_400
    assert all(0.05 <= s["d_over_sqrt_n"] * (s["params_nonembed"] / 1e9) ** 0.5 <= 0.15 + 1e-9
               for s in data["recommended"])
    provenance = data["provenance"]
    assert provenance["loss_law_file"] == {"path": str(law_file), "sha256": file_sha256(law_file),
                                           "kind": "conditional"}
    assert "roofline of --device h100" in provenance["throughput_assumption"]
    assert provenance["command_settings"]["max_loss_increase"] == "0.5%"
    assert provenance["target_loss"]["value"] == pytest.approx(
        data["loss_optimal"]["predicted_loss"] * 1.005)


@pytest.mark.parametrize("args, match", [
    (["--target-loss", "2.5", "--max-loss-increase", "1%"], "exactly one of"),
    ([], "exactly one of"),
    (["--target-loss", "1.0"], "no shape reaches"),
    (["--max-loss-increase", "half"], "not a number"),
    (["--max-loss-increase", "1%", "--r", "8:2"], "MIN <= MAX"),
    (["--max-loss-increase", "1%", "--device", "abacus"], "unknown --device"),
    (["--max-loss-increase", "1%", "--law", "missing.json"], "no law file"),
])
def test_cli_user_errors_are_archscale_errors(law_file, tmp_path, args, match):
    base = ["recommend", "--law", str(law_file), "--params", "1e9", "--tokens", "2e10",
            "--out", str(tmp_path)]
    result = CliRunner().invoke(app, base + args)
    assert isinstance(result.exception, ArchscaleError), result.output
    assert match in str(result.exception)
    assert not (tmp_path / "recommendations.json").exists()

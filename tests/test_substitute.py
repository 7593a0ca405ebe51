"""The substitution answer from laws with known coefficients: each shape's least k, the costs by
arch/spec.py's counting, the cheapest point, the floor, the files and the CLI."""

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.arch.spec import ArchSpec
from archscale.decide.recommend import SearchSpace
from archscale.decide.substitute import Demand, candidate_shapes, cost_curves, substitute
from archscale.decide.substitution_report import table, write
from archscale.decide.throughput_models import RooflineThroughput
from archscale.laws import conditional, save_law, spec_table
from archscale.laws.intervals import ErrorModel
from archscale.laws.law import Law
from archscale.laws.passk import coef_names

PASSK_CONFIG = {"covariate": "nd", "terms": [], "floor": True, "ref": {"N": 1e4, "D": 3e5}}
PASSK_COEF = [np.log(0.05), -0.6, 0.0, -0.25, 0.4, 0.05, np.log(0.6), -0.2, 0.3, 0.03]
TOKENS_PER_PARAM = 16.0


def error_model(space: str = "log", **ranges) -> ErrorModel:
    return ErrorModel(space=space, sigma_run=0.03, growth=0.05, ranges=ranges)


@pytest.fixture(scope="module")
def laws() -> tuple[Law, Law]:
    """A conditional loss law (Chinchilla x (1 + 0.02 ln r)) and a pass@k law, both with
    coefficients set by hand, not fitted."""
    loss_config = conditional.configure({"terms": "r:log"})
    loss = Law("conditional", loss_config, conditional.coef_names(loss_config),
               np.array([400.0, 600.0, 1.0, 0.35, 0.3, 0.02]), np.empty((0, 6)), True,
               error_model=error_model(N=[3e3, 2.1e4], D=[5e4, 1e6]),
               provenance={"n_range": [3e3, 2.1e4], "d_range": [5e4, 1e6]})
    passk = Law("passk", PASSK_CONFIG, coef_names(PASSK_CONFIG), np.array(PASSK_COEF),
                np.empty((0, 10)), True,
                error_model=error_model(N=[3e3, 2.1e4], D=[5e4, 1e6], k=[1, 32]),
                provenance={"n_range": [3e3, 2.1e4], "prompt_tokens": 20, "sample_tokens": 4.5})
    return loss, passk


SPACE = SearchSpace(1e4, 1.6e5, d_over_sqrt_n=(0.1, 0.25), r=(1.0, 4.0), r_points=6, gqa_group=1,
                    head_dim=4, vocab_size=256, seq_len=32, d_model_multiple=4, d_ff_multiple=4)
SIZES = [2e3, 4e3, 8e3, 1.6e4, 3.2e4]
ROOFLINE = RooflineThroughput(1e12, 1e11, "test device")
DEMAND = Demand(requests=3e4, prompt_tokens=20, sample_tokens=4.5)


@pytest.fixture(scope="module")
def answer(laws):
    loss, passk = laws
    recs = candidate_shapes(loss, ROOFLINE, SPACE, SIZES, tokens_per_param=TOKENS_PER_PARAM,
                            batch=8, context=64)
    return substitute(recs, passk, target_pass=0.35, demand=DEMAND, max_k=32)


def test_demand_flops_follow_the_counting_rules():
    spec = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=16, n_heads=4, n_kv_heads=2,
                    head_dim=4, d_ff=32)
    prefill, generate = Demand(1, prompt_tokens=10, sample_tokens=3.4).flops(spec)
    # position t attends to t keys: attention FLOPs t x those of one key; 2N per token; the
    # prompt's last position's logits give every sample its first token, so a sample of 3
    # tokens takes 2 decode steps (at cached contexts 11 and 12), each with the output layer
    per_key = spec.attention_flops_per_token(1)
    head = 2 * spec.d_model * spec.vocab_size
    assert prefill == 10 * 2 * spec.params_nonembed + per_key * 55 + head
    assert generate == 2 * (2 * spec.params_nonembed + head) + per_key * (11 + 12)


def test_a_bad_setting_is_named_as_python_knows_it():
    """The library names its keywords; the command line names its flags (test_cli_answers...)."""
    with pytest.raises(SettingError) as caught:
        Demand(0, prompt_tokens=10, sample_tokens=3)
    assert str(caught.value) == "requests 0, prompt_tokens 10 and sample_tokens 3 must be positive"
    assert caught.value.shown_as({"requests": "--requests"}).startswith("--requests 0,")


def test_each_shape_needs_the_least_k_its_predicted_pass_at_k_reaches(laws, answer):
    _, passk = laws
    assert [rec.recommended[0].spec for rec in answer.recommendations] == answer.specs
    reached = {p.shape: p for p in answer.points}
    for i, spec in enumerate(answer.specs):
        rows = spec_table([spec] * 32, answer.tokens[i]).assign(k=np.arange(1, 33))
        curve = passk.predict(rows)
        assert answer.tokens[i] == TOKENS_PER_PARAM * sorted(SIZES)[i]
        if i not in reached:
            assert curve.max() < 0.35
            continue
        point = reached[i]
        assert curve[point.k - 1] >= 0.35 and (point.k == 1 or curve[point.k - 2] < 0.35)
        low, high = passk.prediction_interval(rows.iloc[[point.k - 1]])
        assert point.interval_90 == pytest.approx((low[0], high[0]))
        assert point.k_range[0] <= point.k <= (point.k_range[1] or 33)
    ks = [p.k for p in answer.points]
    assert ks == sorted(ks, reverse=True) and ks[-1] < ks[0]  # larger models need fewer samples


def test_costs_and_the_cheapest_point(answer):
    for point in answer.points:
        spec = answer.specs[point.shape]
        prefill, generate = DEMAND.flops(spec)
        assert point.train_flops == answer.tokens[point.shape] * spec.train_flops_per_token()
        assert point.inference_flops == pytest.approx(3e4 * (prefill + point.k * generate))
        speed = answer.recommendations[point.shape].recommended[0].decode_tokens_per_s
        assert point.inference_seconds == pytest.approx(3e4 * point.k * 4.5 / speed)
    assert answer.cheapest.total_flops == min(p.total_flops for p in answer.points)
    summary = answer.summary()
    assert [s["k"] for s in summary] == [p.k for p in answer.points]
    assert set(summary[0]) == {"params", "k", "predicted_pass_at_k", "interval_90",
                               "total_cost_flops"}
    json.dumps(answer.to_dict(), default=float)


def test_floor_is_where_the_largest_k_just_reaches_the_target(laws, answer):
    _, passk = laws
    floor = answer.floor
    assert floor["found"], floor
    low, high = floor["between_params"]
    assert low < floor["params"] < high
    assert floor["tokens"] == pytest.approx(TOKENS_PER_PARAM * floor["params"], rel=0.05)
    row = {"N": floor["params"], "D": floor["tokens"], "k": 32}
    assert passk.predict(pd.DataFrame([row]))[0] == pytest.approx(0.35, abs=1e-4)
    assert passk.predict(pd.DataFrame([{**row, "k": 1}]))[0] == pytest.approx(floor["pass_at_1"])


def test_cost_curves_rise_with_the_target(answer):
    targets = np.linspace(0.05, 0.95, 50)
    for k, cost in cost_curves(answer, targets, (1, 4, 32)).items():
        reached = cost[np.isfinite(cost)]
        assert reached.size and np.all(np.diff(reached) >= 0), k
    one, many = (cost_curves(answer, targets, (1, 32))[k] for k in (1, 32))
    assert np.isfinite(many).sum() > np.isfinite(one).sum()  # more samples reach further


def test_files_and_points_export_like_recommendations(answer, tmp_path):
    from archscale.decide.export import export_hf

    paths = write(answer, tmp_path)
    frame = pd.read_csv(paths["table"])
    assert list(frame.columns) == list(table(answer).columns) and len(frame) == len(SIZES) * 32
    assert np.allclose(frame["pass_at_k"], answer.pass_SxK.ravel())
    data = json.loads(paths["json"].read_text())
    assert data["cheapest"]["cheapest"] and data["floor"] == answer.floor
    image = matplotlib.image.imread(paths["figure"])  # a PNG with something drawn on it, not an empty file
    assert image.ndim == 3 and min(image.shape[:2]) > 200 and image.std() > 0.05
    cheapest = answer.cheapest
    name = f"N{answer.specs[cheapest.shape].params_nonembed}-k{cheapest.k}"
    configs = export_hf(paths[name], tmp_path / "hf")
    spec = answer.specs[cheapest.shape]
    assert configs == [tmp_path / "hf" / "rank-1" / "config.json", *configs[1:]]
    hf = json.loads(configs[0].read_text())  # HF's LlamaConfig names
    assert (hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"],
            hf["num_key_value_heads"], hf["intermediate_size"]) == (
        spec.d_model, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_ff)
    exported = json.loads((tmp_path / "hf" / "recommendations.json").read_text())
    assert exported["provenance"]["substitution"]["k"] == cheapest.k


def test_cli_answers_from_law_files(laws, tmp_path):
    from archscale.cli.main import app

    loss, passk = laws
    save_law(loss, tmp_path / "loss.json")
    save_law(passk, tmp_path / "passk.json")
    common = ["substitute", "--loss-law", str(tmp_path / "loss.json"), "--passk-law",
              str(tmp_path / "passk.json"), "--target-pass", "0.35", "--requests", "3e4",
              "--params", ",".join(map(str, SIZES)), "--tokens-per-param", "16",
              "--vocab-size", "256", "--seq-len", "32", "--head-dim", "4", "--gqa", "1",
              "--d-over-sqrt-n", "0.1:0.25", "--r", "1:4", "--d-model-multiple", "4",
              "--d-ff-multiple", "4", "--batch", "8", "--context", "64"]
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "floor: below pass@1" in result.output and "* cheapest" in result.output
    assert (tmp_path / "out" / "substitution.json").is_file()
    bad = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "o2"), "--target-pass", "1.5"])
    assert bad.exit_code != 0 and "--target-pass 1.5 must lie in (0, 1)" in str(bad.exception)


def test_a_law_of_the_loss_carries_the_loss_interval_into_pass_at_k():
    from archscale.decide.substitute import predict_pass

    config = {"covariate": "loss", "terms": [], "floor": False, "ref": {"loss": 2.3}}
    law = Law("passk", config, coef_names(config), np.array([1.2, -0.3, 2.7, 0.27]),
              np.empty((0, 4)), True,
              error_model=error_model("neglog", loss=[2.0, 2.9], k=[1, 32]))
    rows = pd.DataFrame({"loss": [2.2, 2.2], "loss_low": [2.1, np.nan],
                         "loss_high": [2.35, np.nan], "k": [4, 4]})
    predicted, low, high = predict_pass(law, rows)
    own_low, own_high = law.prediction_interval(rows)
    # by hand: y = -log pass@4 = exp(1.2 - 0.3 ln 4) (L / 2.3)^kappa, kappa = 2.7 + 0.27 ln 4; the
    # loss's ends move ln y by kappa ln(L_end / 2.2), the law's own 90% half-width in ln y is
    # z sigma_run (inside the fitted ranges), and the two add in quadrature in ln y
    kappa = 2.7 + 0.27 * np.log(4)
    y = np.exp(1.2 - 0.3 * np.log(4)) * (2.2 / 2.3) ** kappa
    own = 1.6448536269514722 * law.error_model.sigma_run
    assert predicted[0] == pytest.approx(np.exp(-y))
    assert low[0] == pytest.approx(np.exp(-y * np.exp(np.hypot(own, kappa * np.log(2.35 / 2.2)))))
    assert high[0] == pytest.approx(np.exp(-y * np.exp(-np.hypot(own, kappa * np.log(2.2 / 2.1)))))
    assert low[0] < own_low[0] < predicted[0] < own_high[0] < high[0]
    assert (low[1], high[1]) == pytest.approx((own_low[1], own_high[1]))  # no loss interval


def test_coverage_forecast_holds_out_the_larger_k():
    """Problems with pass@1 ~ Beta(0.3, 3), 32 samples each: from 8 of them (a hypergeometric
    share of each problem's passing samples) the Beta law forecasts pass@9..32 within 4% of the
    population's E[1 - (1 - p)^k], and the measured curve it is scored on is Chen's on all 32."""
    from scipy.special import betaln

    from archscale.decide.substitution_report import coverage_forecast
    from archscale.sweeps.passk import pass_at_k

    rng = np.random.default_rng(0)
    correct = rng.binomial(32, rng.beta(0.3, 3.0, 4000))
    check = coverage_forecast(correct, 32, 8, seed=1)
    ks = np.arange(9, 33)
    assert check["k"] == ks.tolist() and check["n_fit"] == 8
    assert check["measured"] == pytest.approx([np.mean(pass_at_k(32, correct, k)) for k in ks])
    truth = 1 - np.exp(betaln(0.3, 3.0 + ks) - betaln(0.3, 3.0))
    assert np.abs(np.array(check["beta"]["forecast"]) / truth - 1).max() < 0.04
    for form in ("beta", "power"):
        errors = np.abs(np.array(check[form]["forecast"]) / np.array(check["measured"]) - 1)
        assert check[form]["mean_relative_error"] == pytest.approx(errors.mean())
    with pytest.raises(ArchscaleError, match="2 <= n_fit < n"):
        coverage_forecast(correct, 32, 32)


def test_end_to_end_check_says_why_when_the_runs_below_its_scale_predict_no_loss():
    """A designed demo (tests/data/designed_demo_*.csv: `archscale demo` at 6d300ce, 41 runs,
    pass@k measured on 5 of them, the largest at scale 8,000) trained 26 runs at the 2 scales
    below the pass@k slice's largest. The loss law refitted on them diverges (alpha -795), and
    the check said "column 'loss' has 32 missing values" and the demo dropped its whole
    substitution section; it now skips that one check and says why."""
    from archscale.decide.substitution_report import heldout_chain
    from archscale.laws import fit_law

    data = Path(__file__).parent / "data"
    run_table = pd.read_csv(data / "designed_demo_runs.csv")
    runs = pd.read_csv(data / "designed_demo_passk.csv")
    below = run_table[run_table["scale"] < runs["scale"].max()]
    assert (len(below), below["scale"].nunique()) == (26, 2)  # by hand from the files
    passk = fit_law("passk", runs, {}, n_boot=0)
    terms = {"terms": [{"feature": "d_over_sqrt_n", "form": "u_log_inv"},
                       {"feature": "r", "form": "log"}, {"feature": "gqa_group", "form": "log"}],
             "combine": "product", "robust": "soft_l1"}
    check = heldout_chain(runs, run_table, terms, passk, n_boot=0)
    assert "mean_relative_error" not in check
    assert check["skipped"].startswith("the loss law refitted on the 26 runs below scale 8e+03 "
                                       "(at 2 scales) predicts no loss for its runs")

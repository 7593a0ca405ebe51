"""Throughput: measured prefill/decode tokens/s, roofline estimates, and `archscale bench throughput`.

The measurement and the CLI use one tiny shape and setting, so the second compiles nothing new
(the persistent compilation cache serves it).
"""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from archscale.arch import ArchscaleError, ArchSpec
from archscale.arch.model import Transformer
from archscale.arch.serving import serving_backend
from archscale.cli.main import app
from archscale.sweeps import hardware
from archscale.sweeps.throughput import (
    ThroughputResult,
    compare_throughput,
    compute_dtype,
    measure_throughput,
    paired_ratio,
    roofline,
)

SPEC = ArchSpec(vocab_size=256, seq_len=256, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64)
SETTING = dict(batch=2, context=16, decode_tokens=4, repeats=2, min_seconds=0.3)
SHAPE_FLAGS = ["--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
               "--head-dim", "8", "--d-ff", "64"]


@pytest.fixture(scope="module")
def measured():
    return measure_throughput(SPEC, **SETTING)


def test_measurement_records_its_setting_and_its_roofline(measured):
    r = measured
    assert (r.batch, r.context, r.decode_tokens, r.repeats) == (2, 16, 4, 2)
    assert r.decode_calls >= r.repeats and r.prefill_calls >= r.repeats  # at least `repeats`
    assert r.spec == SPEC.to_dict() and r.dtype == "float32"
    assert r.prefill_tokens_per_s > 0 and r.decode_tokens_per_s > 0
    assert r.peak_flops > 0 and r.memory_bandwidth > 0 and r.compile_seconds > 0
    # the fractions are measured over roofline, the roofline the setting's cost at the peaks
    # (how close a machine gets is a figure for tests/bench/bench_decode.py, not a test)
    assert r.decode_fraction == r.decode_tokens_per_s / r.decode_roofline_tokens_per_s
    step_flops = 2 * (2 * SPEC.params_nonembed + 4 * SPEC.n_layers * 18 * SPEC.n_heads
                      * SPEC.head_dim + 2 * SPEC.d_model * SPEC.vocab_size)
    assert r.decode_roofline_tokens_per_s == pytest.approx(
        2 / max(r.decode_bytes_per_step / r.memory_bandwidth, step_flops / r.peak_flops))
    # One decode step reads N plus the output projection, and the cache at its mean length.
    mean_context = 16 + 4 // 2
    expected_bytes = (SPEC.params_nonembed + SPEC.vocab_size * SPEC.d_model) * 4 + (
        2 * mean_context * 2 * SPEC.n_layers * SPEC.n_kv_heads * SPEC.head_dim * 4)
    assert r.decode_bytes_per_step == expected_bytes
    assert r.decode_bound in ("memory", "compute")
    assert ThroughputResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    # The serving backend decode ran on is recorded; results written before any such field read
    # as XLA alone, and those of the older fields keep their record under the backend's name.
    assert r.backend == serving_backend(jnp.float32).name
    older = {k: v for k, v in r.to_dict().items() if k != "backend"}
    assert ThroughputResult.from_dict(older).backend == "xla"
    assert ThroughputResult.from_dict({**older, "decode_kernels": "archscale-cpu-kernel"}
                                      ).backend == "cpu-kernels"
    attention_only = {**older, "decode_attention": "archscale-cpu-kernel"}
    assert ThroughputResult.from_dict(attention_only).backend == "cpu-kernels (attention only)"
    # unknown keys are refused, as RunResult refuses them
    with pytest.raises(ArchscaleError, match="unknown ThroughputResult keys"):
        ThroughputResult.from_dict({**r.to_dict(), "decode_tokens_per_sec": 1.0})


def test_greedy_decode_continues_like_the_forward_pass():
    """Each token greedy_decode emits is the argmax of the full forward pass at its position."""
    model = Transformer(SPEC, rngs=nnx.Rngs(3), compute_dtype=jnp.float32)
    graphdef, state = nnx.split(model)
    prompt_BxT = jax.random.randint(jax.random.key(4), (2, 6), 0, SPEC.vocab_size)

    @jax.jit
    def generate(state, prompt_BxT):
        model = nnx.merge(graphdef, state)
        logits_Bx1xV, cache = model.prefill(prompt_BxT, model.init_cache(2, 12), last_only=True)
        first_B = jnp.argmax(logits_Bx1xV[:, 0], axis=-1)
        return first_B, *model.greedy_decode(first_B, cache, 5)

    first_B, generated_Bx5, cache = generate(state, prompt_BxT)
    assert generated_Bx5.shape == (2, 5) and int(cache.length) == 11
    sequence_Bx12 = jnp.concatenate([prompt_BxT, first_B[:, None], generated_Bx5], axis=1)
    logits_Bx11xV = np.asarray(model(sequence_Bx12[:, :-1])[:, 5:])
    chosen = np.take_along_axis(logits_Bx11xV, np.asarray(sequence_Bx12[:, 6:, None]), axis=-1)
    # Chosen == row max up to float noise between the cached and uncached paths (near-ties).
    np.testing.assert_allclose(chosen[..., 0], logits_Bx11xV.max(axis=-1), atol=1e-4, rtol=0)


def test_gqa_shrinks_the_cache_and_the_long_context_decode_time():
    mha = SPEC.replace(n_kv_heads=4)
    gqa = SPEC.replace(n_kv_heads=1)
    for spec in (mha, gqa):  # the model allocates exactly the bytes the spec counts
        cache = Transformer(spec, rngs=nnx.Rngs(0)).init_cache(batch=3, max_len=40)
        nbytes = sum(a.nbytes for a in (*cache.k_BxKxSxH, *cache.v_BxKxSxH))
        assert nbytes == spec.kv_cache_bytes(3, 40, "float32")
    assert gqa.kv_cache_bytes(64, 8192) * 4 == mha.kv_cache_bytes(64, 8192)
    # A memory-bound device (bandwidth low against peak): at long context the cache dominates.
    device = dict(batch=64, context=8192, decode_tokens=32, dtype="bfloat16", peak=1e15,
                  bandwidth=1e12)
    r_mha, r_gqa = roofline(mha, **device), roofline(gqa, **device)
    assert r_mha["decode_bound"] == r_gqa["decode_bound"] == "memory"
    assert r_gqa["decode_bytes_per_step"] < r_mha["decode_bytes_per_step"] / 3
    assert r_gqa["decode_roofline_tokens_per_s"] > 3 * r_mha["decode_roofline_tokens_per_s"]


def test_timed_rounds_of_one_function_time_at_least_repeats_calls_and_min_seconds(monkeypatch):
    """A fake clock that each call advances: no real time is measured, so nothing here is timed."""
    now, calls = [0.0], []
    monkeypatch.setattr(hardware, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def call():
        calls.append(now[0])
        now[0] += 0.005 if len(calls) == 3 else 0.02  # the third call is the fastest
        return jnp.zeros(())

    (seconds,) = hardware.timed_rounds([call], repeats=2, min_seconds=0.2)
    # 0.045 s after three calls, then 0.02 s per call until 0.2 s: eleven calls.
    assert len(seconds) == len(calls) == 11
    assert min(seconds) == pytest.approx(0.005)
    calls.clear()
    (seconds,) = hardware.timed_rounds([call], repeats=3)
    assert (min(seconds), len(seconds)) == (pytest.approx(0.005), 3)  # exactly repeats


def test_timed_rounds_alternate_until_every_function_has_its_calls_and_seconds(monkeypatch):
    now, order = [0.0], []
    monkeypatch.setattr(hardware, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def call(name, seconds):
        def fn():
            order.append(name)
            now[0] += seconds
            return jnp.zeros(())
        return fn

    times = hardware.timed_rounds([call("a", 0.05), call("b", 0.02)], repeats=2, min_seconds=0.2)
    # a needs 4 calls for 0.2 s, b 10: a, the first, is called in every round to pair with b.
    assert order == ["a", "b"] * 10
    assert times == [[pytest.approx(0.05)] * 10, [pytest.approx(0.02)] * 10]
    order.clear()
    times = hardware.timed_rounds([call("a", 0.02), call("b", 0.05)], repeats=2, min_seconds=0.2)
    # Now b has its 4 calls first and sits out (None) while a goes on to its 10.
    assert order == ["a", "b"] * 4 + ["a"] * 6
    assert times == [[pytest.approx(0.02)] * 10, [pytest.approx(0.05)] * 4 + [None] * 6]


def test_paired_ratio_cancels_load_that_both_calls_of_a_round_share():
    # B is twice as fast as A; the machine is 1x, 3x and 1.5x loaded in the three rounds, and
    # one B call caught an extra 4x burst that its round's A call did not.
    a = [1.0, 3.0, 1.5]
    b = [0.5, 1.5 * 4, 0.75]
    assert paired_ratio(a, b) == pytest.approx(2.0)  # B's speed relative to A
    assert paired_ratio(a, a) == 1.0
    assert paired_ratio([*a, 9.0], [*b, None]) == pytest.approx(2.0)  # rounds B sat out


def test_compare_throughput_interleaves_shapes_and_reports_paired_ratios(monkeypatch):
    """Real compiled calls; the figures are checked against the call times they came from."""
    recorded = []

    def timed_rounds(fns, repeats, min_seconds=0.0):
        recorded.append(real(fns, repeats, min_seconds))
        return recorded[-1]

    real = hardware.timed_rounds
    monkeypatch.setattr(hardware, "timed_rounds", timed_rounds)
    mha = SPEC.replace(n_kv_heads=4)
    comparison = compare_throughput([SPEC, mha], **SETTING)
    (prefill_times, decode_times) = ([[t for t in ts if t is not None] for ts in rounds]
                                     for rounds in recorded)
    batch, context, decode_tokens = SETTING["batch"], SETTING["context"], SETTING["decode_tokens"]
    assert [r.spec for r in comparison.results] == [SPEC.to_dict(), mha.to_dict()]
    assert min(len(prefill_times[0]), len(prefill_times[1])) >= SETTING["repeats"]
    for result, prefill_s, decode_s in zip(comparison.results, prefill_times, decode_times,
                                           strict=True):
        assert result.decode_calls == len(decode_s) and result.prefill_calls == len(prefill_s)
        assert sum(decode_s) >= SETTING["min_seconds"] and sum(prefill_s) >= SETTING["min_seconds"]
        assert result.decode_tokens_per_s == pytest.approx(batch * decode_tokens / min(decode_s))
        assert result.prefill_tokens_per_s == pytest.approx(batch * context / min(prefill_s))
        assert result.decode_tokens_per_s_median == pytest.approx(
            batch * decode_tokens / np.median(decode_s))
        assert result.prefill_tokens_per_s_median == pytest.approx(
            batch * context / np.median(prefill_s))
    assert comparison.decode_ratios == (1.0, pytest.approx(paired_ratio(*recorded[1])))
    assert comparison.prefill_ratios == (1.0, pytest.approx(paired_ratio(*recorded[0])))
    data = json.loads(json.dumps(comparison.to_dict()))
    assert [ThroughputResult.from_dict(r) for r in data["results"]] == list(comparison.results)
    assert data["decode_ratios"] == list(comparison.decode_ratios)


def test_bench_compare_cli_writes_every_shape_and_its_ratio(tmp_path):
    files = []
    for name, spec in (("gqa", SPEC), ("mha", SPEC.replace(n_kv_heads=4))):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(spec.to_dict()))
    out = tmp_path / "compare.json"
    result = CliRunner().invoke(app, ["bench", "compare", *map(str, files), "--batch", "2",
                                      "--context", "16", "--decode-tokens", "4", "--repeats", "2",
                                      "--min-seconds", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "calls interleaved" in result.output and "relative" in result.output
    assert "mha.json" in result.output  # each shape is named by its file
    data = json.loads(out.read_text())
    assert [r["spec"]["n_kv_heads"] for r in data["results"]] == [2, 4]
    assert data["decode_ratios"][0] == data["prefill_ratios"][0] == 1.0
    assert data["decode_ratios"][1] > 0
    assert [r["decode_calls"] for r in data["results"]] == [2, 2]


@pytest.mark.parametrize("specs, match", [
    (["tiny"], "at least two shapes"),
    (["tiny", "no-such-shape"], "neither a preset"),
])
def test_bench_compare_user_errors(specs, match):
    result = CliRunner().invoke(app, ["bench", "compare", *specs])
    assert isinstance(result.exception, ArchscaleError)
    assert match in str(result.exception)


def test_compute_dtype_names():
    assert compute_dtype("bf16") == jnp.bfloat16 and compute_dtype("fp32") == jnp.float32
    assert compute_dtype(np.float32) == jnp.float32 and compute_dtype("float16") == jnp.float16
    with pytest.raises(ArchscaleError, match="not a floating compute dtype"):
        compute_dtype("int8")


def test_bench_throughput_cli_writes_json_and_prints_a_summary(measured, tmp_path):
    out = tmp_path / "tp" / "throughput.json"
    result = CliRunner().invoke(app, ["bench", "throughput", *SHAPE_FLAGS, "--batch", "2",
                                      "--context", "16", "--decode-tokens", "4", "--repeats", "2",
                                      "--min-seconds", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "prefill" in result.output and "decode" in result.output
    assert "tokens/s" in result.output and f"wrote {out}" in result.output
    assert f"decode backend: {measured.backend}" in result.output
    data = json.loads(out.read_text())
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "prefill_roofline_tokens_per_s",
                "decode_roofline_tokens_per_s", "prefill_fraction", "decode_fraction",
                "decode_bound", "batch", "context", "spec"):
        assert key in data
    assert data["spec"] == SPEC.to_dict()  # the flags built exactly this shape
    assert (data["batch"], data["context"]) == (2, 16)
    assert data["decode_tokens_per_s"] > 0 and data["prefill_tokens_per_s"] > 0
    assert data["decode_bytes_per_step"] == measured.decode_bytes_per_step
    assert data["decode_calls"] == data["prefill_calls"] == 2  # --min-seconds 0: --repeats calls


@pytest.mark.parametrize("changes, match", [
    ({"--dtype": "int8"}, "not a floating compute dtype"),
    ({"--batch": "0"}, "batch=0 must be >= 1"),
    ({"--min-seconds": "-1"}, "min_seconds=-1.0 must be >= 0"),
    ({"--kv-heads": "3"}, "not divisible by n_kv_heads=3"),
    ({"--out": "."}, "is a directory"),
])
def test_bench_throughput_user_errors(changes, match):
    """Caught before anything compiles; cli/main.py prints them as one line with exit status 2."""
    flags = dict(zip(SHAPE_FLAGS[::2], SHAPE_FLAGS[1::2], strict=True)) | changes
    result = CliRunner().invoke(app, ["bench", "throughput", *(x for kv in flags.items() for x in kv)])
    assert isinstance(result.exception, ArchscaleError)
    assert match in str(result.exception)

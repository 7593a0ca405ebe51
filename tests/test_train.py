"""The trainer on a tiny shape: it learns, and every way a run ends is a correct RunResult.

All runs share one shape, batch and chunk length, so the process compiles the train step once
(the module's first run) and every later run reuses it.
"""

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from archscale.arch import ArchscaleError, ArchSpec
from archscale.arch.runtime import default_compute_dtype
from archscale.sweeps import data as data_lib
from archscale.sweeps import hardware
from archscale.sweeps.recipe import Budget, Recipe
from archscale.sweeps.results import RunResult
from archscale.sweeps.tasks import default_task_path, load_task
from archscale.sweeps.trainer import auto_steps_per_dispatch, lr_sweep, train

SPEC = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64)
RECIPE = Recipe(lr=1e-2, batch_size=8, warmup=0.1, eval_interval=0.25, eval_tokens=1024)
STEPS = 96
BUDGET = Budget(tokens=STEPS * 8 * 32)


@pytest.fixture(scope="module")
def data():
    return data_lib.load_data()


@pytest.fixture(scope="module")
def baseline(data):
    return train(SPEC, BUDGET, RECIPE, data, seed=0, progress=False)


def test_a_run_learns_and_records_everything(baseline, data):
    r = baseline
    assert r.status == "complete" and r.message == "" and r.diverged_step is None
    assert r.val_loss < 3.5 < np.log(256)  # from uniform (5.55 nats) to below 3.5 in 96 steps
    assert 0.1 < r.val_accuracy < 1
    assert r.steps == STEPS and r.tokens == STEPS * 8 * 32
    assert r.flops == r.tokens * SPEC.train_flops_per_token()
    # the figures' arithmetic; how fast this machine is: tests/bench/bench_run_timing.py
    assert r.tokens_per_s > 0 and r.wall_time_s > 0 and r.compile_time_s >= 0
    assert r.mfu == pytest.approx(r.tokens_per_s * SPEC.train_flops_per_token(include_lm_head=True)
                                  / hardware.peak_flops(default_compute_dtype()))
    assert r.n_devices == 1 and r.device_kind == jax.devices()[0].device_kind
    assert r.recipe == RECIPE.resolved(SPEC).to_dict() and r.budget == BUDGET.to_dict()
    assert r.data_fingerprint == data.fingerprint and r.seed == 0
    assert r.params_total == SPEC.params_total and r.params_nonembed == SPEC.params_nonembed
    assert r.task_accuracy is None and r.throughput is None
    assert set(r.versions) == {"jax", "flax", "optax", "archscale"}
    evals = [p for p in r.loss_curve if "val_loss" in p]
    assert [p["step"] for p in evals] == [24, 48, 72, 96]
    assert evals[-1]["val_loss"] == r.val_loss
    assert evals[0]["val_loss"] > evals[-1]["val_loss"]
    steps = [p["step"] for p in r.loss_curve]
    assert steps == sorted(steps) and all(p["tokens"] == p["step"] * 256 for p in r.loss_curve)
    assert r.loss_curve[0]["train_loss"] > r.loss_curve[-1]["train_loss"]
    assert RunResult.from_json(r.to_json()) == r


def test_chunk_length_is_sized_to_the_model():
    assert auto_steps_per_dispatch(SPEC, 8, np.float32) == 16
    big = SPEC.replace(d_model=4096, n_layers=32, d_ff=16384, seq_len=4096, n_heads=32,
                       n_kv_heads=8, head_dim=128)
    assert auto_steps_per_dispatch(big, 64, np.float32) == 1


def test_lr_sweep_reuses_the_compiled_step(baseline, data, caplog):
    """LR, schedule and run length are traced: new values neither compile nor change shapes."""
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        best, results = lr_sweep(SPEC, BUDGET, dataclasses.replace(RECIPE, schedule="wsd"),
                                 data, [1e-2, 3e-3])
        again = train(SPEC, BUDGET, RECIPE, data, seed=0, progress=False)
    compiled = [rec.getMessage() for rec in caplog.records if "Compiling" in rec.getMessage()]
    assert not [m for m in compiled if "chunk" in m or "evaluate" in m], compiled
    assert all(r.compile_time_s == 0.0 for r in [*results, again])
    assert [r.recipe["lr"] for r in results] == [1e-2, 3e-3]
    assert best == min(zip([r.val_loss for r in results], [1e-2, 3e-3], strict=True))[1]
    assert results[0].val_loss != baseline.val_loss  # wsd, not cosine
    assert again.val_loss == baseline.val_loss  # deterministic in (seed, recipe)


def test_a_huge_lr_diverges_as_a_result(data):
    r = train(SPEC, BUDGET, dataclasses.replace(RECIPE, lr=1e3), data, progress=False)
    assert r.status == "diverged" and r.val_loss is None and r.val_accuracy is None
    assert 1 <= r.diverged_step < STEPS and r.steps == r.diverged_step
    assert "nan" in r.message or "inf" in r.message
    assert r.loss_curve[-1]["step"] == r.diverged_step
    assert r.loss_curve[-1]["train_loss"] is None
    json.loads(r.to_json())  # standard JSON: no NaN


def test_report_prunes_at_an_evaluation(baseline, data):
    calls = []

    def report(step, tokens, val_loss):
        calls.append((step, tokens, val_loss))
        return step >= 48

    r = train(SPEC, BUDGET, RECIPE, data, report=report, progress=False)
    assert r.status == "pruned" and "48" in r.message
    assert [c[:2] for c in calls] == [(24, 24 * 256), (48, 48 * 256)]
    evals = [p for p in baseline.loss_curve if "val_loss" in p]
    assert [c[2] for c in calls] == [p["val_loss"] for p in evals[:2]]
    assert r.steps == 48 and r.val_loss == evals[1]["val_loss"]


class Killed(Exception):
    pass


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(baseline, data, tmp_path):
    def kill_at_48(step, tokens, val_loss):
        if step == 48:
            raise Killed

    with pytest.raises(Killed):
        train(SPEC, BUDGET, RECIPE, data, checkpoint_dir=tmp_path, report=kill_at_48,
              progress=False)
    resumed = train(SPEC, BUDGET, RECIPE, data, checkpoint_dir=tmp_path, progress=False)
    assert resumed.status == "complete" and resumed.steps == STEPS
    assert resumed.val_loss == pytest.approx(baseline.val_loss, abs=1e-5)
    assert [p["step"] for p in resumed.loss_curve] == [p["step"] for p in baseline.loss_curve]
    np.testing.assert_allclose([p["train_loss"] for p in resumed.loss_curve],
                               [p["train_loss"] for p in baseline.loss_curve], atol=1e-5)
    # A finished checkpoint resumes to the same result without training.
    assert train(SPEC, BUDGET, RECIPE, data, checkpoint_dir=tmp_path,
                 progress=False).val_loss == resumed.val_loss
    with pytest.raises(ArchscaleError, match=r"different run .*seed"):
        train(SPEC, BUDGET, RECIPE, data, seed=1, checkpoint_dir=tmp_path, progress=False)


def test_out_of_memory_is_a_result(data, monkeypatch):
    real = data_lib.train_batch

    def exhausted(data, *, step, **kwargs):
        if step >= 30:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 GiB")
        return real(data, step=step, **kwargs)

    monkeypatch.setattr(data_lib, "train_batch", exhausted)
    r = train(SPEC, BUDGET, RECIPE, data, progress=False)
    assert r.status == "oom" and "RESOURCE_EXHAUSTED" in r.message
    assert r.val_loss == r.loss_curve[-1]["val_loss"]  # the last evaluation before it
    json.loads(r.to_json())


def test_task_accuracy_is_scored_at_the_end(data):
    examples = load_task(default_task_path())[:24]
    r = train(SPEC, BUDGET, RECIPE, data, task=examples, progress=False)
    assert r.status == "complete"
    assert 0.0 <= r.task_accuracy <= 1.0
    assert r.task_accuracy * 24 == round(r.task_accuracy * 24)


def test_bad_inputs_are_user_errors(data):
    with pytest.raises(ArchscaleError, match="vocab_size=256"):
        train(SPEC.replace(vocab_size=100), BUDGET, RECIPE, data, progress=False)
    with pytest.raises(ArchscaleError, match="seed"):
        train(SPEC, BUDGET, RECIPE, data, seed=-1, progress=False)


TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    from archscale.arch import ArchSpec
    from archscale.sweeps.data import load_data
    from archscale.sweeps.recipe import Budget, Recipe
    from archscale.sweeps.trainer import train
    assert jax.device_count() == 2
    spec = ArchSpec.from_dict(json.loads(sys.argv[1]))
    r = train(spec, Budget.from_dict(json.loads(sys.argv[2])),
              Recipe.from_dict(json.loads(sys.argv[3])), load_data(), progress=False)
    print(r.to_json(indent=None))
""")


@pytest.mark.slow
def test_two_devices_give_the_loss_of_one(data):
    """Sharding the batch over 2 devices only reorders float sums: losses agree to 1e-5.

    (A short run: over long runs such 1e-7 differences grow chaotically, on one device too.)
    """
    budget, recipe = Budget(tokens=32 * 8 * 32), dataclasses.replace(RECIPE, eval_interval=0.5)
    one = train(SPEC, budget, recipe, data, progress=False)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, json.dumps(SPEC.to_dict()),
         json.dumps(budget.to_dict()), json.dumps(recipe.to_dict())],
        env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    two = RunResult.from_json(out.stdout.strip().splitlines()[-1])
    assert two.n_devices == 2 and two.status == "complete" and one.n_devices == 1
    assert two.val_loss == pytest.approx(one.val_loss, abs=1e-5)
    assert len(two.loss_curve) == len(one.loss_curve) == 8
    np.testing.assert_allclose([p["train_loss"] for p in two.loss_curve],
                               [p["train_loss"] for p in one.loss_curve], atol=1e-5)

"""Budget, Recipe (scaling rules, schedule), the optimizer and the progress bar: no training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archscale.arch import ArchscaleError, ArchSpec
from archscale.sweeps.optimizer import learning_rate, make_optimizer, schedule_args
from archscale.sweeps.progress import TrainProgress
from archscale.sweeps.recipe import Budget, Recipe

SPEC = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64)


def test_budget_needs_exactly_one_positive_quantity():
    with pytest.raises(ArchscaleError, match="exactly one"):
        Budget()
    with pytest.raises(ArchscaleError, match="exactly one"):
        Budget(tokens=10, flops=1e9)
    with pytest.raises(ArchscaleError, match="positive"):
        Budget(tokens=0)
    assert Budget.from_dict(Budget(flops=2e12).to_dict()) == Budget(flops=2e12)


def test_flops_budget_buys_tokens_through_the_spec():
    per_token = SPEC.train_flops_per_token()
    assert Budget(flops=1000 * per_token).tokens_for(SPEC) == 1000
    assert Budget(flops=1000.5 * per_token).tokens_for(SPEC) == 1000
    assert Budget(tokens=1234).tokens_for(SPEC) == 1234


def test_steps_warmup_and_eval_interval():
    recipe = Recipe(batch_size=8, warmup=0.1, eval_interval=0.25)
    steps = recipe.steps_for(SPEC, Budget(tokens=8 * 32 * 100))
    assert steps == 100
    assert recipe.warmup_steps(SPEC, steps) == 10
    assert recipe.eval_every(SPEC, steps) == 25
    # Values above 1 are tokens: 2560 tokens = 10 steps of 8 x 32.
    tokens = Recipe(batch_size=8, warmup=2560, eval_interval=8 * 32 * 7)
    assert tokens.warmup_steps(SPEC, steps) == 10
    assert tokens.eval_every(SPEC, steps) == 7
    assert Recipe(batch_size=8).steps_for(SPEC, Budget(tokens=5)) == 1


def test_power_law_rules_resolve_per_shape_and_are_idempotent():
    n = SPEC.params_nonembed
    recipe = Recipe(lr=1e-3, lr_rule="power_n", lr_ref_params=n / 16, lr_exponent=-0.5,
                    batch_size=16, batch_rule="power_n", batch_ref_params=n / 4,
                    batch_exponent=0.5, batch_multiple=8)
    resolved = recipe.resolved(SPEC)
    assert resolved.lr == pytest.approx(1e-3 / 4)
    assert resolved.batch_size == 32
    assert (resolved.lr_rule, resolved.batch_rule) == ("constant", "constant")
    assert resolved.resolved(SPEC) == resolved
    assert Recipe(lr=2e-3).resolved(SPEC) == Recipe(lr=2e-3)


def test_mup_scales_hidden_matrices_only():
    recipe = Recipe(lr_rule="mup", mup_base_width=16)
    assert recipe.resolved(SPEC) == recipe
    assert recipe.param_lr_scale(SPEC, "['layers']['wq_LxDxNxH']") == 0.5
    assert recipe.param_lr_scale(SPEC, "['embed_VxD']") == 1.0
    assert recipe.param_lr_scale(SPEC, "['layers']['attn_norm_LxD']") == 1.0
    assert Recipe().param_lr_scale(SPEC, "['layers']['wq_LxDxNxH']") == 1.0


def test_invalid_recipe_names_every_problem():
    with pytest.raises(ArchscaleError) as err:
        Recipe(lr=-1, schedule="linear", batch_size=0)
    assert "lr=-1" in str(err.value) and "schedule" in str(err.value)
    assert "batch_size" in str(err.value)
    with pytest.raises(ArchscaleError, match="unknown Recipe keys"):
        Recipe.from_dict({"lr": 1e-3, "learning_rate": 1e-3})


def _lrs(recipe: Recipe, total: int) -> np.ndarray:
    args = schedule_args(recipe, SPEC, total)
    return np.array([float(learning_rate(jnp.int32(s), args)) for s in range(total)])


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    lrs = _lrs(Recipe(lr=1.0, warmup=0.1, min_lr_ratio=0.1, schedule="cosine"), 100)
    np.testing.assert_allclose(lrs[:10], np.arange(1, 11) / 10, rtol=1e-6)
    assert lrs[10] == pytest.approx(1.0)
    assert np.all(np.diff(lrs[10:]) <= 1e-7)
    # Halfway through the decay the cosine is at the midpoint of peak and floor.
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)), rel=1e-5)
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)), rel=1e-5)


def test_wsd_schedule_is_flat_until_the_final_decay():
    lrs = _lrs(Recipe(lr=2.0, warmup=0.05, min_lr_ratio=0.0, schedule="wsd",
                      decay_fraction=0.2), 100)
    assert lrs[4] == pytest.approx(2.0) and lrs[3] == pytest.approx(1.6)
    np.testing.assert_allclose(lrs[5:80], 2.0, rtol=1e-6)
    np.testing.assert_allclose(lrs[80:], 2.0 * (1 - np.arange(20) / 20), rtol=1e-5, atol=1e-6)


def test_optimizer_clips_decays_and_applies_mup_factors():
    params = {"embed_VxD": jnp.ones((4, 2)), "layers": {"wq_LxDxNxH": jnp.ones((1, 2, 2, 2)),
                                                        "attn_norm_LxD": jnp.ones((1, 2))}}
    grads = jax.tree.map(lambda p: 1e6 * jnp.ones_like(p), params)
    recipe = Recipe(lr_rule="mup", mup_base_width=16, weight_decay=0.5)
    tx = make_optimizer(recipe, SPEC)
    state = tx.init(params)
    state.hyperparams["learning_rate"] = jnp.float32(0.1)
    updates, _ = tx.update(grads, state, params)
    # Adam's first step is sign(g) = 1; decoupled decay adds 0.5 * p except on norms; the hidden
    # matrix is scaled by base width / d_model = 0.5.
    np.testing.assert_allclose(updates["embed_VxD"], -0.1 * 1.5, rtol=1e-5)
    np.testing.assert_allclose(updates["layers"]["wq_LxDxNxH"], -0.1 * 1.5 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(updates["layers"]["attn_norm_LxD"], -0.1, rtol=1e-5)


def test_progress_bar_shows_rate_and_loss_only_when_enabled(capsys):
    bar = TrainProgress(10, delay_s=0.0)
    bar.update(5, 1234.0, 2.5)
    bar.close()
    shown = capsys.readouterr().err
    assert "1,234 tok/s" in shown and "2.5000" in shown and "5/10" in shown
    quiet = TrainProgress(10, enabled=False, delay_s=0.0)
    quiet.update(5, 1234.0, 2.5)
    quiet.close()
    late = TrainProgress(10, delay_s=3600.0)
    late.update(5, 1234.0, 2.5)
    late.close()
    assert capsys.readouterr().err == ""

"""bf16 mixed precision (fp32 weights and optimizer, bf16 matmuls, as on accelerators) trains to
fp32's loss, checked on CPU through the one switch, $ARCHSCALE_COMPUTE_DTYPE (arch/runtime.py).

Tolerance: after 50 steps each seed's bf16 validation loss is within 2% of its fp32 loss, and
the mean gap is below the spread fp32 itself shows across seeds. bf16 keeps 8 significant bits
(relative rounding 2^-9 = 0.2% per matmul operand); its rounding perturbs a short, high-LR run
the way a different seed does, so the gap is judged against the run-to-run scatter. Measured on
this shape: gaps of 1.0%, 0.3% and 0.1% (seeds 0-2) against a 1.9% spread of fp32 over seeds.
"""

import numpy as np
import pytest

from archscale.arch import ArchSpec
from archscale.sweeps import data as data_lib
from archscale.sweeps.recipe import Budget, Recipe
from archscale.sweeps.trainer import train

SPEC = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64)
RECIPE = Recipe(lr=1e-2, batch_size=8, warmup=0.1, eval_interval=1.0, eval_tokens=4096)
STEPS = 50
SEEDS = (0, 1, 2)
RELATIVE_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def losses():
    """{dtype: [final validation loss of each seed]}, both trained on the same batches."""
    data = data_lib.load_data()
    budget = Budget(tokens=STEPS * RECIPE.batch_size * SPEC.seq_len)
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARCHSCALE_PEAK_FLOPS", "1e11")  # MFU is not under test: skip the bf16 probe
        for dtype in ("float32", "bfloat16"):
            patch.setenv("ARCHSCALE_COMPUTE_DTYPE", dtype)
            runs = [train(SPEC, budget, RECIPE, data, seed=seed, progress=False) for seed in SEEDS]
            assert all(r.status == "complete" and r.steps == STEPS for r in runs)
            out[dtype] = np.array([r.val_loss for r in runs])
    return out


def test_bf16_matmuls_train_to_the_fp32_loss(losses):
    fp32, bf16 = losses["float32"], losses["bfloat16"]
    print(f"val loss after {STEPS} steps, seeds {SEEDS}: fp32 {np.round(fp32, 4)}, "
          f"bf16 {np.round(bf16, 4)}")
    assert np.all(fp32 < 0.7 * np.log(SPEC.vocab_size))  # both learned (uniform: 5.55 nats)
    assert not np.array_equal(fp32, bf16)  # the switch took effect
    gap = np.abs(bf16 - fp32) / fp32
    assert np.all(gap < RELATIVE_TOLERANCE), gap
    assert np.mean(np.abs(bf16 - fp32)) < np.ptp(fp32)

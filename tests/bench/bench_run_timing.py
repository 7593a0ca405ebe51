"""Timing figures of one tiny training run (the shape of tests/test_train.py), printed.

    python tests/bench/bench_run_timing.py

Hardware-dependent, so not asserted in the tests: wall time should exceed the training-loop time
(it adds evaluation, checkpoints and setup), and MFU should lie in (0, 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from archscale.arch import ArchSpec
from archscale.sweeps.data import load_data
from archscale.sweeps.recipe import Budget, Recipe
from archscale.sweeps.trainer import train

SPEC = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64)
RECIPE = Recipe(lr=1e-2, batch_size=8, warmup=0.1, eval_interval=0.25, eval_tokens=1024)


def main() -> None:
    r = train(SPEC, Budget(tokens=96 * 8 * 32), RECIPE, load_data(), seed=0, progress=False)
    loop_s = r.tokens / r.tokens_per_s
    print(f"wall {r.wall_time_s:.2f} s, training loop {loop_s:.2f} s "
          f"({'ok' if r.wall_time_s > loop_s else 'UNEXPECTED'}: wall > loop), "
          f"compile {r.compile_time_s:.2f} s")
    print(f"{r.tokens_per_s:,.0f} tokens/s, MFU {r.mfu:.3%} "
          f"({'ok' if 0 < r.mfu < 1 else 'UNEXPECTED'}: in (0, 1))")


if __name__ == "__main__":
    main()

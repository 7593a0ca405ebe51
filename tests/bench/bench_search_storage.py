"""Storage overhead of a study, per storage: enqueueing a grid, one trial's bookkeeping, recovery.

    python tests/bench/bench_search_storage.py        # + PostgreSQL if ARCHSCALE_TEST_POSTGRES_URL

A trial's bookkeeping is what a worker does around training: claim, owner + heartbeat, plan and
result attrs (a ~3 KB RunResult), tell. Nothing is trained; the figures are storage costs only.
"""

import os
import tempfile
import time
import uuid

import optuna

from archscale.search.attrs import OWNER_ATTR
from archscale.search.recovery import Heartbeat, owner_info, recover_stale
from archscale.search.study import create_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.worker import claim

GRID = {
    "seq_len": 64, "budget": {"tokens_per_param": 20}, "shape": {"head_dim": 16},
    "grid": {"scales": [2e4, 5e4, 1e5, 2e5, 5e5], "d_over_sqrt_n": [0.1, 0.15, 0.2, 0.25],
             "r": [1.0, 1.5, 2.0, 3.0], "gqa": [1, 2]},
}
RESULT = {"loss_curve": [{"step": i, "tokens": 512 * i, "train_loss": 4.0, "val_loss": 4.1}
                         for i in range(40)]}


def bench(url: str, label: str, n_trials: int = 30) -> None:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    handle = create_study(parse_sweep({**GRID, "name": name}), url)
    enqueue_s = time.perf_counter() - start
    planned = len(handle.study.trials)
    start = time.perf_counter()
    for _ in range(n_trials):
        trial = claim(handle)
        handle.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner_info())
        with Heartbeat(handle.storage, trial._trial_id, interval_s=60):
            trial.set_user_attr("result", RESULT)
            trial.set_user_attr("status", "complete")
            handle.study.tell(trial, [4.1])
    cycle_ms = (time.perf_counter() - start) / n_trials * 1e3
    start = time.perf_counter()
    recover_stale(handle.study, handle.storage, grace_s=60, max_retries=10)
    scan_ms = (time.perf_counter() - start) * 1e3
    print(f"{label:10s} enqueue {planned} planned runs: {enqueue_s:6.2f} s | per-trial bookkeeping: "
          f"{cycle_ms:6.1f} ms | stale scan over {planned} trials: {scan_ms:6.1f} ms")
    if url.startswith("postgresql"):
        optuna.delete_study(study_name=name, storage=handle.storage)


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        bench(os.path.join(tmp, "s.journal"), "journal")
        bench(f"sqlite:///{tmp}/s.db", "sqlite")
    if os.environ.get("ARCHSCALE_TEST_POSTGRES_URL"):
        bench(os.environ["ARCHSCALE_TEST_POSTGRES_URL"], "postgresql")


if __name__ == "__main__":
    main()

"""Every packaged ScaleBench form fitted on its whole pool and scored on the target split.

Li et al. 2026 ("All Data" column of their Table 2) fit each task's 10 forms on the pool and
report the target region's R^2, clipped to [-1, 1], averaged over the forms. This prints, per
form, that R^2 and the point fit's seconds. The parallel form fits its coefficients per corpus
(its declared group column), as the benchmark fits each group apart. Run: [ARCHSCALE_SCALEBENCH=DIR] python tests/bench/bench_scalebench_forms.py [task ...]
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from archscale.laws.registry import get_kind, library_forms
from archscale.laws.table import load_table

DATA = Path(__file__).resolve().parents[1] / "data" / "validation" / "scalebench"
SHARED = Path(os.environ.get("ARCHSCALE_SCALEBENCH",
                            Path(__file__).resolve().parents[3] / "shared" / "validation" /
                            "scalebench"))
"""Where the tasks not copied into tests/data are (the project's shared validation folder)."""


def target_r2(predicted: np.ndarray, measured: np.ndarray) -> float:
    """R^2 on the target rows, clipped to [-1, 1] as the paper does."""
    sse = float(np.sum((predicted - measured) ** 2))
    sst = float(np.sum((measured - measured.mean()) ** 2))
    return float(np.clip(1 - sse / sst, -1, 1)) if np.isfinite(sse) else -1.0


def score(name: str) -> tuple[float, float]:
    kind = get_kind(name)
    task = name.split("/")[1]
    csv = DATA / f"{task}.csv" if (DATA / f"{task}.csv").is_file() else SHARED / f"{task}.csv"
    table = load_table(pd.read_csv(csv), kind.default_columns)
    pool, target = table[table.split == "pool"], table[table.split == "target"]
    start = time.perf_counter()
    estimate = kind.fit(pool, kind.configure({}))
    seconds = time.perf_counter() - start
    predicted = kind.predict(estimate.config, estimate.coef[None, :], target)[0]
    return target_r2(predicted, target[kind.target(estimate.config)].to_numpy(float)), seconds


def main(tasks: list[str]) -> None:
    by_task: dict[str, list[float]] = {}
    for name in sorted(library_forms(), key=lambda n: (n.rsplit("_", 1)[0], len(n), n)):
        if name.count("/") != 2 or (tasks and name.split("/")[1] not in tasks):
            continue
        r2, seconds = score(name)
        by_task.setdefault(name.split("/")[1], []).append(r2)
        print(f"{name:36s} target R^2 {r2:7.4f}   fit {seconds:6.1f} s", flush=True)
    for task, values in by_task.items():
        print(f"{task}: mean target R^2 over {len(values)} forms {np.mean(values):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])

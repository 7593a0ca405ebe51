"""Seconds the design engine takes to choose the next batch from a pool of 1,000 candidates
(issue 24 item 4: at most 5 s on the 2-core machine).

The pool is a grid of (N, D) points: 40 model sizes log-spaced over 1e7-1e9 non-embedding
parameters, each at 26 token counts log-spaced over 2-200 tokens per parameter (1,040 points,
cost 6 N D). 31 finished runs are drawn from it (1,009 candidates remain), their losses from Chinchilla's law
with the Epoch replication's coefficients (A 482.0, B 2085.4, E 1.82, alpha 0.3478, beta 0.3658)
and 0.5% Gaussian noise, seeded. The target is 8 runs at N = 1e10 (10x the largest candidate), 10-40
tokens per parameter; and, for ``design`` at K = 8, 8 runs at N = 3e8 inside the grid (where the
discrepancy and the fit's bias are modelled), with the variance and the wrong_shape criterion
(two groups of 4 target rows as the decisions). Timed, for each method (design, vopt) and K
(1 and 8):

* ``cold``: ``choose`` with no previous fit (one full ``fit_law`` included: the 4,500-start
  Chinchilla grid fit and its held-out refit, none remembered);
* ``warm``: ``choose`` given the previous choice's fit, after one more finished run (what every
  pick but the first costs in a study or a replay).

Run: ``python tests/bench/bench_design.py`` (``--repeats R``: the median of R timings). Wall
seconds depend on what else the cores run; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd

CHIN = (482.0, 2085.4, 1.82, 0.3478, 0.3658)
NOISE = 0.005


def pool_and_runs(seed: int = 0, inside: bool = False
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(candidate pool, finished runs, target rows) of the module docstring."""
    sizes = np.geomspace(1e7, 1e9, 40)
    ratios = np.geomspace(2, 200, 26)
    grid = pd.DataFrame([(n, n * r) for n in sizes for r in ratios], columns=["N", "D"])
    rng = np.random.default_rng(seed)
    done = rng.choice(len(grid), 31, replace=False)
    A, B, E, alpha, beta = CHIN
    finished = grid.iloc[done].copy()
    finished["loss"] = (E + A / finished.N**alpha + B / finished.D**beta) * (
        1 + NOISE * rng.standard_normal(len(finished)))
    pool = grid.drop(index=grid.index[done])
    size = 3e8 if inside else 1e10
    target = pd.DataFrame({"N": np.full(8, size), "D": size * np.geomspace(10, 40, 8)})
    return pool, finished, target


def time_choice(method: str, k: int, repeats: int, inside: bool = False,
                criterion: str = "variance") -> dict[str, float]:
    from archscale.decide.costs import parse_cost
    from archscale.decide.design import choose
    from archscale.decide.design_law import KindLaw
    from archscale.laws import chinchilla

    pool, finished, target = pool_and_runs(inside=inside)
    law = KindLaw("chinchilla")
    decisions = ["a"] * 4 + ["b"] * 4 if criterion == "wrong_shape" else None
    out = {}
    for mode in ("cold", "warm"):
        seconds = []
        for _ in range(repeats):
            runs = finished.iloc[:30]
            warm = None
            if mode == "warm":
                warm = choose(runs, pool, law, target, costs=parse_cost(None, list(pool))(pool),
                              k=1, method=method).fitted
                runs = finished
            chinchilla._FIT_CACHE.clear()  # a cold choice fits afresh, as a new process would
            start = time.perf_counter()
            choose(runs, pool, law, target, costs=parse_cost(None, list(pool))(pool), k=k,
                   method=method, warm=warm, criterion=criterion, decisions=decisions)
            seconds.append(time.perf_counter() - start)
        out[mode] = float(np.median(seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {}
    cases = [(method, k, False, "variance") for method in ("design", "vopt") for k in (1, 8)]
    cases += [("design", 8, True, "variance"), ("design", 8, True, "wrong_shape")]
    for method, k, inside, criterion in cases:
        name = f"{method} K={k}" + (" target inside" if inside else "") + (
            f" {criterion}" if criterion != "variance" else "")
        results[name] = time_choice(method, k, args.repeats, inside, criterion)
        print(f"{name}: " + ", ".join(f"{m} {s:.2f} s" for m, s in results[name].items()),
              flush=True)
    print(json.dumps({"candidates": 1040 - 31, "load_average": os.getloadavg()[0], **results}))


if __name__ == "__main__":
    main()

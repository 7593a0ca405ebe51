"""Scaling-law figures: the 4,500-start Chinchilla fit, 1,000 bootstrap refits, the per-start
scipy loop it replaces, and the conditional law's held-out error on morph_open_lm.csv.

Run: ``python tests/bench/bench_laws.py`` (about a minute on 2 cores);
``--scipy-starts 4500`` runs the whole per-start scipy L-BFGS-B loop (analytic gradient) and
compares its best optimum with the batched one (minutes).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from test_laws_chinchilla import EPOCH, epoch_runs  # noqa: E402

from archscale.laws import chinchilla, conditional, load_table  # noqa: E402
from archscale.laws.bootstrap import resample_counts  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def scipy_loop(runs, starts, analytic: bool):
    """Epoch's procedure: scipy L-BFGS-B from each start (numerical or analytic gradient)."""
    log_n, log_d, log_loss = (np.log(a) for a in runs)
    objective = chinchilla.HuberLogObjective(log_n, log_d, log_loss)
    rows = np.arange(1)

    def plain(p):
        a, b, e, alpha, beta = p
        pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
        return huber(1e-3, pred - log_loss).sum()

    def with_grad(p):
        f, cache = objective.value(p[None], rows)
        return f[0], objective.derivatives(cache, rows)[0][0]

    best = None
    for start in starts:
        result = (minimize(with_grad, start, jac=True, method="L-BFGS-B") if analytic
                  else minimize(plain, start, method="L-BFGS-B"))
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scipy-starts", type=int, default=45,
                        help="per-start scipy runs to time (4500: all, with the optimum compared)")
    args = parser.parse_args()
    runs = epoch_runs()

    fit, seconds = timed(lambda: chinchilla.fit_chinchilla(*runs))
    coef = dict(zip(chinchilla.COEF_NAMES, fit.coef, strict=True))
    print(f"Chinchilla, Epoch data ({len(runs[0])} runs), {fit.n_starts} starts: {seconds:.2f} s")
    print("  " + ", ".join(f"{k} {v:.5g} (published {EPOCH[k]}, {v / EPOCH[k] - 1:+.3%})"
                           for k, v in coef.items()))
    print(f"  objective {fit.objective:.10g}; {fit.n_at_best} starts reached it; "
          f"converged {fit.converged}")

    counts = resample_counts(len(runs[0]), 1000, seed=0)
    (samples, ok), seconds = timed(lambda: chinchilla.bootstrap_chinchilla(*runs, fit, counts))
    print(f"1000 bootstrap refits (warm: optimum + {chinchilla.N_WARM_GRID_STARTS} grid starts "
          f"each): {seconds:.2f} s, {ok.mean():.1%} converged")
    for i, name in enumerate(chinchilla.COEF_NAMES):
        lo, hi = np.percentile(samples[:, i], [2.5, 97.5])
        print(f"  {name}: 95% ({lo:.4g}, {hi:.4g})")

    grid = chinchilla.grid_starts()
    if args.scipy_starts >= len(grid):
        best, seconds = timed(lambda: scipy_loop(runs, grid, analytic=True))
        print(f"per-start scipy loop, all {len(grid)} starts (analytic gradient): {seconds:.1f} s; "
              f"best objective {best.fun:.10g} vs batched {fit.objective:.10g}; "
              f"max |coef diff| {np.abs(chinchilla.to_natural(best.x)[0] / fit.coef - 1).max():.2e}"
              " (relative)")
    else:
        picked = grid[np.linspace(0, len(grid) - 1, args.scipy_starts).astype(int)]
        _, seconds = timed(lambda: scipy_loop(runs, picked, analytic=False))
        print(f"per-start scipy loop (numerical gradient, as Epoch): {seconds / len(picked):.3f} s "
              f"per start -> about {seconds / len(picked) * len(grid):.0f} s for {len(grid)}")

    table = load_table(REPO.parent / "shared" / "validation" / "morph_open_lm.csv",
                       "N=n_params,D=train_tokens,loss=final_loss,scale=size_label")
    train, test = table[table.N < 3e8], table[table.N >= 3e8].reset_index(drop=True)
    for terms in ("aspect:u_log_sq", "aspect:u_log_inv", "d_over_sqrt_n:u_log_inv"):
        for lopt in ("joint", "chinchilla"):
            config = conditional.configure({"terms": terms, "lopt": lopt})
            estimate, seconds = timed(lambda config=config: conditional.fit(train, config))
            predicted = conditional.predict(estimate.config, estimate.coef, test)[0]
            error = predicted - test.loss.to_numpy()
            relative = np.mean(np.abs(error) / test.loss)
            print(f"morph held-out (16 runs >= 3e8), {terms:24s} lopt={lopt:10s}: MSE "
                  f"{np.mean(error ** 2):.3g}, mean rel. error {relative:.3%} "
                  f"(fit {seconds:.1f} s)")


if __name__ == "__main__":
    main()

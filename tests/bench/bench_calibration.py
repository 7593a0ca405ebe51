"""Prediction-interval calibration on every shipped public sweep (issue 23's table).

For every sweep of laws/public_sweeps.py and every cut, the law is fitted on the runs below the
cut (`fit_law(..., holdout_above=cut)`, progressive refits on) and predicts the runs at or above
it with nominal 90% prediction intervals. The public prior those intervals may fall back on is
learned without every sweep of the same file (leave-one-data-set-out), so no data set calibrates
its own intervals. Per data set: pooled coverage (target 80-98%), per split the mean width over
the oracle width (the narrowest interval symmetric in log around the same predictions that covers
90% of that split; target <= 1.5), the mean relative error, and which calibration held.

    python tests/bench/bench_calibration.py [--n-boot 50] [--sweeps epoch,morph] [--json out.json]

Runs on the code it imports: point PYTHONPATH at another checkout (a folder holding an
``archscale`` link to it) to measure that code ("before" figures); it then runs without the
leave-one-out (that code has no public prior).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from archscale.laws import fit_law
from archscale.laws import table as table_module


def _sweeps_module():
    """laws/public_sweeps.py of the imported code, else this checkout's (for "before" runs on
    code that predates it; its FLOPs rule there is 6 N D, what these tables' trainers used)."""
    try:
        from archscale.laws import public_sweeps
    except ImportError:
        if not hasattr(table_module, "training_flops"):
            table_module.training_flops = lambda t: t["flops"] if "flops" in t else 6 * t.N * t.D
        path = Path(__file__).resolve().parents[2] / "laws" / "public_sweeps.py"
        spec = importlib.util.spec_from_file_location("public_sweeps", path)
        public_sweeps = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = public_sweeps  # dataclasses look their module up
        spec.loader.exec_module(public_sweeps)
        public_sweeps.PUBLIC_DIR = path.parent / "public"
    return public_sweeps


sweeps_module = _sweeps_module()

LEVEL = 0.9


def oracle_half_width(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Narrowest half-width h (log space) with |log(measured / predicted)| <= h for 90% of rows."""
    return float(np.quantile(np.abs(np.log(measured / predicted)), LEVEL, method="higher"))


def leave_out(files: set[str]) -> contextlib.AbstractContextManager:
    try:
        from archscale.laws.calibration import leaving_out
    except ImportError:  # code from before the public prior
        return contextlib.nullcontext()
    names = [s.name for s in sweeps_module.SWEEPS if s.file in files]
    return leaving_out(*names)


def run_split(item: sweeps_module.Sweep, table: pd.DataFrame, cut: float, n_boot: int
              ) -> dict:
    by = item.split_by
    if by == "tokens_per_param":
        table = table.assign(tokens_per_param=table["D"] / table["N"])
    if by == "flops" and "flops" not in table:  # older code cannot derive them
        table = table.assign(flops=sweeps_module.split_values(item, table))
    start = time.perf_counter()
    with leave_out({item.file}):
        law = fit_law(item.law, table, item.options, n_boot=n_boot, holdout_above=cut,
                      holdout_by=by)
    rows = law.validation["heldout"]["rows"]
    predicted, measured = np.asarray(rows["predicted"]), np.asarray(rows["measured"])
    lower, upper = np.asarray(rows["lower"], float), np.asarray(rows["upper"], float)
    model = law.error_model
    label = getattr(model, "label", model.method)
    given = np.all(np.isfinite(lower))
    oracle = 2 * oracle_half_width(predicted, measured)
    width = float(np.mean(np.log(upper / lower))) if given else float("nan")
    return {"sweep": item.name, "law": item.law, "split": f"{by} >= {cut:.3g}",
            "n": len(measured), "inside": int(np.sum((lower <= measured) & (measured <= upper))),
            "given": bool(given), "width": width, "oracle": oracle,
            "ratio": width / oracle if oracle > 0 else float("nan"),
            "mre": float(np.mean(np.abs(predicted - measured) / measured)),
            "calibration": label, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=50)
    parser.add_argument("--sweeps", default=None, help="comma-separated sweep names")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    chosen = None if args.sweeps is None else set(args.sweeps.split(","))
    results = []
    for item in sweeps_module.SWEEPS:
        if chosen is not None and item.name not in chosen:
            continue
        table = sweeps_module.load(item)
        for cut in item.cuts:
            row = run_split(item, table, cut, args.n_boot)
            results.append(row)
            print(f"{row['sweep']:18s} {row['split']:24s} n={row['n']:4d} "
                  f"inside={row['inside']:4d} width={row['width']:.4f} oracle={row['oracle']:.4f} "
                  f"ratio={row['ratio']:.2f} MRE={row['mre']:.2%} [{row['calibration'][:60]}] "
                  f"{row['seconds']:.0f}s", flush=True)
    frame = pd.DataFrame(results)
    print("\n| data set (law) | splits | held-out runs | coverage | width / oracle per split "
          "(max) | MRE | calibration |")
    print("|---|---|---|---|---|---|---|")
    for name, group in frame.groupby("sweep", sort=False):
        given = group[group["given"]]  # a law that gives no interval says why instead
        covered = given["inside"].sum() / given["n"].sum() if len(given) else None
        ratios = ", ".join(f"{r:.2f}" for r in group["ratio"])
        calibrations = "; ".join(sorted(set(c.split(" (")[0] for c in group["calibration"])))
        print(f"| {name} ({group['law'].iloc[0]}) | {len(group)} | {group['n'].sum()} | "
              f"{'none given' if covered is None else f'{covered:.0%} of {given.n.sum()}'} | "
              f"{ratios} "
              f"({group['ratio'].max():.2f}) | {np.average(group['mre'], weights=group['n']):.2%} "
              f"| {calibrations} |")
    if args.json:
        frame.to_json(args.json, orient="records", indent=1)
        print(json.dumps({"wrote": args.json}))


if __name__ == "__main__":
    main()

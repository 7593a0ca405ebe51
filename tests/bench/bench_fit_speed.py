"""Seconds per stage of ``fit_law`` (point fit, bootstrap, held-out fit, progressive refits) on a
realistic 435-row run table, for the Chinchilla law (built in, and declared as a YAML form with
JAX derivatives) and the conditional law (issue 13 item 8: each at most 20 s on 2 cores with
the default bootstrap, validation included).

The table (``speed_table``): 6 model sizes (N = 2e7, 5e7, 1.2e8, 3e8, 7e8, 1.5e9 non-embedding
parameters) with 30, 30, 25, 25, 20 and 15 shapes (more at the cheap sizes, as a sweep has),
each trained at 10, 20 and 40 tokens per parameter: 145 shapes x 3 = 435 runs. A shape draws
d_model / sqrt(N) log-uniformly in [0.03, 0.15] and r log-uniformly in [0.5, 6] and is made
integer by ``arch.shapes.shape_from_budget`` (head_dim 64, GQA group 1 or 4), so N, r, d/sqrt(N)
and aspect are those of real integer shapes. Its loss is the paper's Eq. 3 (Chinchilla
A 400, B 1500, E 1.8, alpha 0.34, beta 0.36 times (1 + f(d/sqrt(N))) (1 + g(r)), the
coefficients of tests/test_laws_conditional.py) with 0.5% Gaussian noise, seeded.

Run: ``python tests/bench/bench_fit_speed.py`` (add ``--laws chinchilla`` to time one law);
``--baseline REV`` also times the laws/ and arch/ of git revision REV (read with ``git archive``,
run in a subprocess on the same table) and prints the before/after ratio of every stage, e.g.
``--baseline 41a1d6f`` for the code before the speed work (about 5 minutes more); ``--csv PATH``
writes the table. Each law starts with no remembered Chinchilla fits, as a fresh process would.
Wall seconds depend on what else the cores run (the load average is printed); "cpu" is the
process's CPU seconds over all its threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]

SCALES = {"20M": 2e7, "50M": 5e7, "120M": 1.2e8, "300M": 3e8, "700M": 7e8, "1.5B": 1.5e9}
SHAPES_PER_SCALE = (30, 30, 25, 25, 20, 15)
TOKENS_PER_PARAM = (10, 20, 40)
CHIN = (400.0, 1500.0, 1.8, 0.34, 0.36)
TERMS = {"d_over_sqrt_n.ln": 0.02, "d_over_sqrt_n.inv": 0.0014, "r.ln": 0.01, "r.inv": 0.02}
NOISE = 0.005
DECLARED_CHINCHILLA = str(REPO / "tests" / "data" / "forms" / "chinchilla.yaml")
"""Chinchilla declared as a form (JAX derivatives, scipy least squares), beside the built-in."""
CASES = {
    "chinchilla": ("chinchilla", {}),
    "chinchilla declared (YAML)": (DECLARED_CHINCHILLA, {}),
    "conditional d/sqrt(N),r": ("conditional", {"terms": "d_over_sqrt_n:u_log_inv,r:u_log_inv"}),
    "conditional aspect": ("conditional", {"terms": "aspect:u_log_sq"}),
}
STAGES = ("point fit", "bootstrap", "held-out", "progressive", "other")


def speed_table(seed: int = 0) -> pd.DataFrame:
    """The 435-row table of the module docstring."""
    from archscale.arch.shapes import shape_from_budget

    rng = np.random.default_rng(seed)
    rows = []
    for (label, target), n_shapes in zip(SCALES.items(), SHAPES_PER_SCALE, strict=True):
        for _ in range(n_shapes):
            x = float(np.exp(rng.uniform(np.log(0.03), np.log(0.15))))
            r = float(np.exp(rng.uniform(np.log(0.5), np.log(6.0))))
            spec = shape_from_budget(target, r, int(rng.choice([1, 4])), d_over_sqrt_n=x,
                                     d_model_multiple=64).spec
            for ratio in TOKENS_PER_PARAM:
                n_params = float(spec.params_nonembed)
                rows.append({"scale": label, "N": n_params, "D": ratio * n_params,
                             "d_model": spec.d_model, "n_layers": spec.n_layers,
                             "r": spec.r_mlp_attn, "d_over_sqrt_n": spec.d_over_sqrt_n,
                             "aspect": spec.d_model / spec.n_layers})
    table = pd.DataFrame(rows)
    A, B, E, alpha, beta = CHIN
    l_opt = E + A * table.N ** -alpha + B * table.D ** -beta
    x, r = table.d_over_sqrt_n, table.r
    f = TERMS["d_over_sqrt_n.ln"] * np.log(x) + TERMS["d_over_sqrt_n.inv"] / x
    g = TERMS["r.ln"] * np.log(r) + TERMS["r.inv"] / r
    loss = l_opt * (1 + f) * (1 + g)
    return table.assign(loss=loss * (1 + NOISE * rng.normal(size=len(table))))


def time_fit_law(kind_name: str, table: pd.DataFrame, options: dict) -> dict[str, float]:
    """Wall seconds of one default ``fit_law`` call, split by stage (wrapping the kind's fit and
    bootstrap and validation's heldout and progressive); "other" is the rest (prediction,
    metrics, checks)."""
    from archscale.laws import law as law_module
    from archscale.laws import validation

    seconds = dict.fromkeys(STAGES, 0.0)
    old_tree = hasattr(law_module, "KINDS")  # revisions before laws/registry.py look kinds up there
    if old_tree:
        kind = law_module.KINDS[kind_name]
    else:
        from archscale.laws.registry import get_kind

        kind = get_kind(kind_name)
    depth = {"validation": 0}

    def timed(stage, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if stage in ("held-out", "progressive") or not depth["validation"]:
                    seconds[stage] += time.perf_counter() - start
        return wrapper

    def validating(stage, fn):
        inner = timed(stage, fn)

        def wrapper(*args, **kwargs):
            depth["validation"] += 1
            try:
                return inner(*args, **kwargs)
            finally:
                depth["validation"] -= 1
        return wrapper

    wrapped = dataclasses.replace(kind, fit=timed("point fit", kind.fit),
                                  bootstrap=timed("bootstrap", kind.bootstrap))
    saved = (validation.heldout, validation.progressive)
    if old_tree:
        law_module.KINDS[kind_name] = wrapped
    validation.heldout = validating("held-out", validation.heldout)
    validation.progressive = validating("progressive", validation.progressive)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        law = law_module.fit_law(kind_name if old_tree else wrapped, table, options)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        validation.heldout, validation.progressive = saved
        if old_tree:
            law_module.KINDS[kind_name] = kind
    seconds["other"] = total - sum(seconds.values())
    seconds["total"], seconds["cpu"] = total, cpu
    held = law.validation.get("heldout") or {}
    seconds["heldout_mre"] = float(held.get("mean_relative_error", float("nan")))
    seconds["coef0"] = float(law.coef[0])
    return seconds


def run_cases(cases: list[str], table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Each case as a fresh process would run it: fits remembered from the last are forgotten
    (a demo that fits several laws on one table does reuse them)."""
    from archscale.laws import chinchilla

    out = {}
    for name in cases:
        getattr(chinchilla, "_FIT_CACHE", {}).clear()
        out[name] = time_fit_law(CASES[name][0], table, CASES[name][1])
    return out


def baseline(rev: str, cases: list[str], table_csv: Path) -> dict[str, dict[str, float]]:
    """Time the same cases with laws/ and arch/ of git revision ``rev`` in a subprocess."""
    archive = subprocess.run(["git", "archive", rev, "__init__.py", "arch", "laws"], cwd=REPO,
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "archscale"
        package.mkdir()
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(package, filter="data")
        env = {**os.environ, "PYTHONPATH": tmp, "ARCHSCALE_BENCH_CHILD": "1"}
        out = subprocess.run([sys.executable, __file__, "--json", "--table", str(table_csv),
                              "--laws", *cases], env=env, check=True, capture_output=True,
                             text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def show(title: str, results: dict[str, dict[str, float]]) -> None:
    print(title)
    print(f"  {'law':26s}" + "".join(f"{s:>12s}" for s in (*STAGES, "total", "cpu"))
          + "  held-out MRE")
    for name, sec in results.items():
        print(f"  {name:26s}" + "".join(f"{sec[s]:11.2f}s" for s in (*STAGES, "total", "cpu"))
              + f"  {sec['heldout_mre']:.4%}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--laws", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--baseline", metavar="REV", help="also time git revision REV's laws/")
    parser.add_argument("--csv", type=Path, help="write the table here")
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if os.environ.get("ARCHSCALE_BENCH_CHILD"):
        import archscale.laws
        assert str(Path(archscale.laws.__file__).resolve()).startswith(tempfile.gettempdir())
    table = pd.read_csv(args.table) if args.table else speed_table()
    if args.json:
        print(json.dumps(run_cases(args.laws, table)))
        return
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(f"{len(table)} runs, {table.scale.nunique()} scales, {table.D.div(table.N).nunique()} "
          f"tokens-per-parameter ratios; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (cpu: process CPU seconds, all threads)")
    after = run_cases(args.laws, table)
    show("this tree:", after)
    print("  (held-out trains on the scales of the last progressive task: fit_chinchilla hands "
          "back that fit)")
    if args.baseline:
        with tempfile.NamedTemporaryFile(suffix=".csv") as handle:
            table.to_csv(handle.name, index=False)
            before = baseline(args.baseline, args.laws, Path(handle.name))
        show(f"revision {args.baseline}:", before)
        print("speed-up (before / after):")
        for name in args.laws:
            print(f"  {name:26s}" + "".join(
                f"{before[name][s] / max(after[name][s], 1e-9):11.1f}x"
                for s in (*STAGES, "total", "cpu")))


if __name__ == "__main__":
    main()

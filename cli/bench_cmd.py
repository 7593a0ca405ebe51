"""`archscale bench ...`: measure how fast a shape runs on this device, or how well the design
engine would have spent a finished sweep's budget (`bench design`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from archscale.arch.errors import ArchscaleError
from archscale.arch.frameworks import load_spec
from archscale.cli.outputs import check_writable, save_or_fallback
from archscale.cli.shape_options import (
    DFF,
    DModel,
    HeadDim,
    Heads,
    KVHeads,
    Layers,
    SpecArg,
    Tie,
    Vocab,
    spec_from_options,
)
from archscale.cli.tables import print_table
from archscale.sweeps.timing import TIMING

app = typer.Typer(help="Measure inference throughput on this device, or replay the design engine "
                       "on a finished sweep.", no_args_is_help=True)

# The measurement setting, shared by `throughput` and `compare`.
Batch = Annotated[int | None, typer.Option(
    help="Sequences decoded together (default 8 on CPU, 64 on accelerators).", show_default=False)]
Context = Annotated[int | None, typer.Option(
    help="Prompt tokens per sequence (default 512 on CPU, 2048 on accelerators).",
    show_default=False)]
DecodeTokens = Annotated[int, typer.Option(help="Generated tokens per timed decode loop.")]
Repeats = Annotated[int, typer.Option(help="Timed calls; the fastest is reported.")]
MinSeconds = Annotated[float, typer.Option(
    help="Time prefill and decode each for at least this long (more calls than --repeats when "
         "they are short).")]
Dtype = Annotated[str | None, typer.Option(
    help="Compute dtype (default bf16 on accelerators, float32 on CPU).", show_default=False)]
Seed = Annotated[int, typer.Option(help="Seed of the random weights and prompts.")]
Out = Annotated[Path | None, typer.Option("--out", help="Write the result as JSON here.")]


def _write(out: Path | None, data: dict) -> None:
    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    if out is not None:
        typer.echo(f"wrote {save_or_fallback(write, out, 'the measurement')}")


@app.command()
def throughput(
    spec: SpecArg = None,
    d_model: DModel = None,
    n_layers: Layers = None,
    n_heads: Heads = None,
    n_kv_heads: KVHeads = None,
    head_dim: HeadDim = None,
    d_ff: DFF = None,
    vocab_size: Vocab = None,
    tie_embeddings: Tie = None,
    batch: Batch = None,
    context: Context = None,
    decode_tokens: DecodeTokens = TIMING.decode_tokens,
    repeats: Repeats = TIMING.repeats,
    min_seconds: MinSeconds = TIMING.min_seconds,
    dtype: Dtype = None,
    seed: Seed = 0,
    out: Out = None,
) -> None:
    """Prefill and decode tokens/s through the KV cache, beside the roofline estimates."""
    arch = spec_from_options(spec, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                             n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff,
                             vocab_size=vocab_size, tie_embeddings=tie_embeddings)
    check_writable(out)
    # Imported here so `archscale --help` and the arch commands do not start JAX.
    from archscale.arch.runtime import configure_jax
    from archscale.sweeps.throughput import measure_throughput

    configure_jax()
    result = measure_throughput(arch, batch=batch, context=context, decode_tokens=decode_tokens,
                                repeats=repeats, min_seconds=min_seconds, dtype=dtype, seed=seed)
    rows = [("prefill", f"{result.prefill_tokens_per_s:,.0f}",
             f"{result.prefill_tokens_per_s_median:,.0f}",
             f"{result.prefill_roofline_tokens_per_s:,.0f}", f"{result.prefill_fraction:.1%}"),
            (f"decode ({result.decode_bound}-bound)", f"{result.decode_tokens_per_s:,.0f}",
             f"{result.decode_tokens_per_s_median:,.0f}",
             f"{result.decode_roofline_tokens_per_s:,.0f}", f"{result.decode_fraction:.1%}")]
    print_table(rows, ["", "tokens/s", "median call", "roofline tokens/s", "fraction"],
                title=f"{spec or 'shape'} on {result.device_kind} ({result.dtype}), batch "
                      f"{result.batch}, context {result.context}",
                caption=f"tokens/s of the fastest of {result.prefill_calls} prefill and "
                        f"{result.decode_calls} decode calls")
    typer.echo(f"decode backend: {result.backend}")
    _write(out, result.to_dict())


@app.command()
def compare(
    specs: Annotated[list[str], typer.Argument(
        help="Two or more presets or spec / HF config JSON files (a run or throughput JSON "
             "works too); speeds are relative to the first.", show_default=False)],
    batch: Batch = None,
    context: Context = None,
    decode_tokens: DecodeTokens = TIMING.decode_tokens,
    repeats: Repeats = TIMING.repeats,
    min_seconds: MinSeconds = TIMING.min_seconds,
    dtype: Dtype = None,
    seed: Seed = 0,
    out: Out = None,
) -> None:
    """Throughput of several shapes measured together, their calls interleaved.

    Each round times one call of every shape; a shape's speed relative to
    the first is the median of its per-round ratios, so load that drifts
    over minutes on a shared machine cancels out of the comparison.
    """
    if len(specs) < 2:
        raise ArchscaleError("bench compare needs at least two shapes: the first is the reference "
                             "the others' speeds are given relative to")
    archs = [load_spec(name) for name in specs]
    check_writable(out)
    from archscale.arch.runtime import configure_jax
    from archscale.sweeps.throughput import compare_throughput

    configure_jax()
    comparison = compare_throughput(archs, batch=batch, context=context,
                                    decode_tokens=decode_tokens, repeats=repeats,
                                    min_seconds=min_seconds, dtype=dtype, seed=seed)
    first = comparison.results[0]
    rows = []
    for name, arch, result, prefill_ratio, decode_ratio in zip(
            specs, archs, comparison.results, comparison.prefill_ratios, comparison.decode_ratios,
            strict=True):
        rows.append((Path(name).name, f"{arch.params_total / 1e6:,.2f}M",
                     f"{result.prefill_tokens_per_s:,.0f}", f"{prefill_ratio:.3f}",
                     f"{result.decode_tokens_per_s:,.0f}", f"{decode_ratio:.3f}",
                     f"{result.decode_fraction:.1%}"))
    print_table(rows, ["shape", "params", "prefill tok/s", "relative", "decode tok/s",
                       "relative", "decode / roofline"],
                title=f"{len(archs)} shapes on {first.device_kind} ({first.dtype}), batch "
                      f"{first.batch}, context {first.context}, calls interleaved",
                caption=f"relative: median of per-round ratios to {Path(specs[0]).name} over "
                        f"{first.decode_calls} decode rounds")
    typer.echo(f"decode backend: {first.backend}")
    _write(out, comparison.to_dict())


@app.command()
def design(
    csv: Annotated[Path, typer.Option(help="Table of finished runs (a CSV).")],
    law: Annotated[str, typer.Option(
        help="Law the picks are fitted with: a --law name (e.g. chinchilla, scalebench/moe) or a "
             "declared form's file.")],
    out: Annotated[Path, typer.Option("--json", help="Write the replay table as JSON here.")],
    columns: Annotated[str | None, typer.Option(
        help="Map CSV columns: N=params,D=tokens,loss=final_loss (default: the declared form's "
             "own mapping).")] = None,
    terms: Annotated[str | None, typer.Option(
        help="Conditional law terms (feature:form,...), as `archscale fit` takes them.")] = None,
    lopt: Annotated[str | None, typer.Option(help="Conditional law's L_opt mode.")] = None,
    target: Annotated[str | None, typer.Option(
        help="pandas query selecting the target rows (e.g. \"split == 'target'\"); the rest "
             "are the pool.")] = None,
    holdout_above: Annotated[float | None, typer.Option(
        help="Target rows: --holdout-by at or above this value.")] = None,
    holdout_by: Annotated[str, typer.Option(help="Column --holdout-above applies to.")] = "N",
    cost: Annotated[str | None, typer.Option(
        help="Cost of a run, arithmetic over columns (default training FLOPs, 6 N D).")] = None,
    budgets: Annotated[str, typer.Option(
        help="Fractions of the pool's cost, comma-separated.")] = "0.01,0.05,0.1,0.2",
    repeats: Annotated[int, typer.Option(help="Seeded repeats of every method.")] = 10,
    methods: Annotated[str, typer.Option(
        help="Comma-separated: design, random, cheapest, cost-random, vopt, all.")] =
        "design,random,cheapest,cost-random,vopt,all",
    by: Annotated[str | None, typer.Option(
        help="Column whose groups each get their own law and budget share.")] = None,
    shapes: Annotated[str | None, typer.Option(
        help="Target column naming shapes: report the regret of the recommended shape.")] = None,
    within: Annotated[str | None, typer.Option(
        help="Target columns (comma-separated) that make one shape decision, e.g. the scale.")]
        = None,
    criterion: Annotated[str, typer.Option(
        help="What the engine's runs make more certain: variance (of the target's predicted "
             "loss) or wrong_shape (the chance of recommending the wrong shape; needs --shapes)."
    )] = "variance",
) -> None:
    """Replay a finished sweep: each method picks runs under each budget; the law fitted to the
    picks is scored on the target rows (R^2 clipped to [-1, 1], MSE, 90% coverage, regret)."""
    if (target is None) == (holdout_above is None):
        raise ArchscaleError("give exactly one target: --target QUERY or --holdout-above X")
    from archscale.decide.costs import parse_cost
    from archscale.decide.design_law import KindLaw
    from archscale.decide.replay import Replay, run_replay, split_target
    from archscale.laws.table import load_table

    options = {k: v for k, v in (("terms", terms), ("lopt", lopt)) if v is not None}
    design_law = KindLaw(law, options)
    table = load_table(csv, columns or design_law.law_kind.default_columns or None)
    pool, target_rows = split_target(table, target, holdout_above, holdout_by)
    spec = Replay(pool=pool, target=target_rows, costs=parse_cost(cost, list(pool.columns))(pool),
                  law=design_law, by=by, shapes=shapes,
                  within=tuple(c.strip() for c in (within or "").split(",") if c.strip()),
                  criterion=criterion)
    fractions = [float(b) for b in budgets.split(",")]
    def progress(i: int, partial: dict) -> None:
        _write(out, partial)  # a long replay leaves its finished repeats behind
        typer.echo(f"repeat {i + 1}/{repeats} done")

    result = run_replay(spec, [m.strip() for m in methods.split(",")], fractions, repeats,
                        on_repeat=progress)
    columns = ["method", *(f"{b:g}" for b in [*fractions, 1.0])]
    rows = [[method, *(f"{per_budget[f'{b:g}']['r2_mean']:.3f} +- "
                       f"{per_budget[f'{b:g}']['r2_sd']:.3f}"
                       if f"{b:g}" in per_budget else "" for b in [*fractions, 1.0])]
            for method, per_budget in result["methods"].items()]
    print_table(rows, columns, title=f"{law} law, {len(pool)} pool runs -> {len(target_rows)} "
                f"target rows, {repeats} repeats", caption="target R^2 (mean +- sd)")
    _write(out, result)

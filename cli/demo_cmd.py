"""`archscale demo`: the whole loop on the embedded corpus (README command 1)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from archscale import environment
from archscale.cli.defaults import field_defaults
from archscale.cli.outputs import check_writable
from archscale.cli.recommend_cmd import parse_fraction
from archscale.decide.options import DemoOptions

DEMO = field_defaults(DemoOptions)
"""The demo's defaults (decide/options.py), which its options take."""


def _percent(text: str) -> float:
    """Checked before any training: recommend() would only refuse it after the whole study."""
    value = parse_fraction(text)
    if not 0 <= value < 1:
        raise typer.BadParameter(f"{text}: give a fraction in [0, 1) such as 1% or 0.01")
    return value


def demo(
    out: Annotated[Path, typer.Option(help="Report folder.")] = DEMO["out"],
    storage: Annotated[str | None, typer.Option(
        help="Study storage (default ./archscale.journal: rerun to continue).",
        envvar=environment.STORAGE)] = None,
    sweep: Annotated[Path, typer.Option(
        help="Grid sweep file (default: the packaged demo grid).", exists=True,
        dir_okay=False)] = DEMO["sweep"],
    workers: Annotated[int, typer.Option(
        help="Local worker processes, each pinned to its own cores.")
    ] = min(DEMO["workers"], os.cpu_count() or 1),
    scale_factor: Annotated[float, typer.Option(
        help="Recommend at this multiple of the largest trained N.")] = DEMO["scale_factor"],
    max_loss_increase: Annotated[str, typer.Option(
        help="Loss target over the loss-optimal shape's prediction (1% or 0.01).")
    ] = f"{DEMO['max_loss_increase']:.0%}",
    top: Annotated[int, typer.Option(help="Recommended shapes to keep.")] = DEMO["top"],
    n_boot: Annotated[int, typer.Option(help="Bootstrap refits per law.")] = DEMO["n_boot"],
    progress: Annotated[bool, typer.Option(help="Show training progress bars.")
                        ] = DEMO["progress"],
    verify_run: Annotated[bool, typer.Option(
        "--verify", help="Train one recommended shape at an affordable scale and compare it with "
        "the laws' predictions (run the demo first).")] = False,
    verify_scale: Annotated[float, typer.Option(
        help="--verify trains at this multiple of the largest trained N.")
    ] = DEMO["verify_scale"],
    measure: Annotated[bool, typer.Option(
        help="Time the finalists at the target size (random weights, interleaved) beside the "
             "throughput law.")] = DEMO["measure"],
    target_k: Annotated[int, typer.Option(
        min=1, help="Where the sweep samples pass@k: the substitution's target is the pass rate "
             "the largest trained scale reaches with this many samples.")] = DEMO["target_k"],
    full_grid: Annotated[bool, typer.Option(
        "--full-grid", help="Train every grid point, not only the runs the sweep's design: "
        "picks.")] = DEMO["full_grid"],
    allow_degenerate: Annotated[bool, typer.Option(
        help="Exit 0 even if the runs do not identify a law (the report says which).")
    ] = DEMO["allow_degenerate"],
) -> None:
    """Grid study on the embedded plays, laws, recommendation at 10x, report/ with figures."""
    check_writable(out, folder=True)
    import optuna

    from archscale.decide.demo import run_demo, verify

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = DemoOptions(sweep=sweep, storage=storage, out=out, workers=max(1, workers),
                          scale_factor=scale_factor, max_loss_increase=_percent(max_loss_increase),
                          top=top, n_boot=n_boot, progress=progress, measure=measure,
                          target_k=target_k, allow_degenerate=allow_degenerate,
                          full_grid=full_grid, verify_scale=verify_scale)
    if verify_run:
        result = verify(options, echo=typer.echo)
        low, high = result["loss_interval_90"]
        typer.echo(
            f"loss: predicted {result['predicted_loss']:.4f} (90% prediction interval "
            f"{low:.4f}-{high:.4f}), measured "
            f"{result['measured_loss']:.4f} ({result['loss_relative_error']:+.2%}; "
            f"{'inside' if result['measured_loss_inside_interval'] else 'outside'} the interval)")
        typer.echo(
            f"decode tokens/s: predicted {result['predicted_decode_tokens_per_s']:,.0f}, measured "
            f"{result['measured_decode_tokens_per_s']:,.0f} "
            f"({result['throughput_relative_error']:+.1%})")
        typer.echo(f"saved {out / 'verify.json'}")
        return
    outcome = run_demo(options, echo=typer.echo)
    rec = outcome.recommendation
    best = rec.recommended[0]
    typer.echo(f"recommended at N={outcome.target_params:,.0f}: d_model {best.spec.d_model}, "
               f"{best.spec.n_layers} layers, {best.spec.n_heads}/{best.spec.n_kv_heads} heads, "
               f"d_ff {best.spec.d_ff}: loss {best.loss:.4f}, {best.throughput:,.0f} decode tok/s "
               f"({best.throughput / rec.loss_optimal.throughput - 1:+.0%} vs the loss-optimal "
               "shape)")
    if outcome.substitution is not None:
        answer = outcome.substitution[0]
        cheapest = answer.cheapest
        typer.echo(f"sampling: pass@k >= {answer.target_pass:.3f} at the least total cost: " + (
            "no candidate reaches it" if cheapest is None else
            f"N={answer.specs[cheapest.shape].params_nonembed:,} with k = {cheapest.k} "
            f"({cheapest.total_flops:.3g} FLOPs; {out / 'substitution'}/)"))
    typer.echo(f"report: {out / 'report.md'}")

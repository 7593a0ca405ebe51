"""`archscale bench ...`: measure how fast a shape runs on this device."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from archscale.arch.errors import ArchscaleError
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

app = typer.Typer(help="Measure inference throughput on this device.", no_args_is_help=True)


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
    batch: int | None = typer.Option(
        None, help="Sequences decoded together (default 8 on CPU, 64 on accelerators).",
        show_default=False),
    context: int | None = typer.Option(
        None, help="Prompt tokens per sequence (default 512 on CPU, 2048 on accelerators).",
        show_default=False),
    decode_tokens: int = typer.Option(32, help="Generated tokens per timed decode loop."),
    repeats: int = typer.Option(5, help="Timed calls; the fastest is reported."),
    min_seconds: float = typer.Option(2.0, help="Time decode for at least this long (more calls "
                                                "than --repeats when they are short)."),
    dtype: str | None = typer.Option(
        None, help="Compute dtype (default bf16 on accelerators, float32 on CPU).",
        show_default=False),
    seed: int = typer.Option(0, help="Seed of the random weights and prompts."),
    out: Path | None = typer.Option(None, "--out", help="Write the result as JSON here."),
) -> None:
    """Prefill and decode tokens/s through the KV cache, beside the roofline estimates."""
    arch = spec_from_options(spec, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                             n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff,
                             vocab_size=vocab_size, tie_embeddings=tie_embeddings)
    if out is not None and out.is_dir():
        raise ArchscaleError(f"--out {out} is a directory: give the path of a JSON file to write")
    # Imported here so `archscale --help` and the arch commands do not start JAX.
    from archscale.arch.runtime import configure_jax
    from archscale.sweeps.throughput import measure_throughput

    configure_jax()
    result = measure_throughput(arch, batch=batch, context=context, decode_tokens=decode_tokens,
                                repeats=repeats, min_seconds=min_seconds, dtype=dtype, seed=seed)
    table = Table(title=f"{spec or 'shape'} on {result.device_kind} ({result.dtype}), batch "
                        f"{result.batch}, context {result.context}",
                  caption=f"decode attention: {result.decode_attention}")
    for column in ("", "tokens/s", "roofline tokens/s", "fraction"):
        table.add_column(column, justify="right")
    table.add_row("prefill", f"{result.prefill_tokens_per_s:,.0f}",
                  f"{result.prefill_roofline_tokens_per_s:,.0f}", f"{result.prefill_fraction:.1%}")
    table.add_row(f"decode ({result.decode_bound}-bound)", f"{result.decode_tokens_per_s:,.0f}",
                  f"{result.decode_roofline_tokens_per_s:,.0f}", f"{result.decode_fraction:.1%}")
    Console().print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        typer.echo(f"wrote {out}")

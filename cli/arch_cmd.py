"""`archscale arch ...`: inspect and export shapes."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from archscale.arch import load_spec
from archscale.arch.export import write_hf_config

app = typer.Typer(help="Inspect and export architecture shapes.", no_args_is_help=True)


@app.command()
def show(
    spec: str = typer.Argument(..., help="Preset name (e.g. llama-3.2-1b) or a spec JSON file."),
    as_json: bool = typer.Option(False, "--json", help="Print the derived table as JSON."),
) -> None:
    """Print the parameter counts, r, GQA, FLOPs and KV-cache bytes of a shape."""
    arch = load_spec(spec)
    summary = arch.summary()
    if as_json:
        typer.echo(json.dumps({"spec": arch.to_dict(), **summary}, indent=2))
        return
    table = Table(title=spec, show_header=False)
    for key, value in {**arch.to_dict(), **summary}.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else (
            f"{value:.4g}" if isinstance(value, float) else str(value))
        table.add_row(key, shown)
    Console().print(table)


@app.command("export-hf")
def export_hf(
    spec: str = typer.Argument(..., help="Preset name (e.g. llama-3.2-1b) or a spec JSON file."),
    out: Path = typer.Option(..., "--out", help="Directory to write config.json into."),
    dtype: str = typer.Option("bfloat16", help="The config's dtype field."),
) -> None:
    """Write a HuggingFace LlamaForCausalLM config.json for a shape."""
    arch = load_spec(spec)
    path = write_hf_config(arch, out, dtype)
    typer.echo(f"wrote {path} ({arch.params_total:,} parameters)")
    if arch.d_model % arch.n_heads:
        # huggingface/transformers#46082: LlamaConfig's validator predates explicit head_dim.
        typer.secho(f"note: hidden_size {arch.d_model} is not a multiple of num_attention_heads "
                    f"{arch.n_heads}; the config is exact (head_dim {arch.head_dim} is explicit) but "
                    "some transformers 5.x releases refuse to load it", err=True,
                    fg=typer.colors.YELLOW)

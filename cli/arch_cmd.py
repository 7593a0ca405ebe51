"""`archscale arch ...`: inspect and export shapes."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from archscale.arch import load_spec

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

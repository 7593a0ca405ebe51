"""`archscale arch ...`: inspect and export shapes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from archscale.arch import load_spec
from archscale.arch.errors import ArchscaleError
from archscale.arch.export import write_hf_config
from archscale.arch.frameworks import (
    FORMATS,
    format_notes,
    get_format,
    write_shape,
)
from archscale.cli.outputs import check_writable
from archscale.cli.tables import print_table

app = typer.Typer(help="Inspect and export architecture shapes.", no_args_is_help=True)


@app.command()
def show(
    spec: str = typer.Argument(..., help="Preset name (e.g. llama-3.2-1b), a spec JSON file, or a "
                               "config of HF, MaxText, torchtitan, Megatron-LM, litgpt or "
                               "OLMo-core."),
    as_json: bool = typer.Option(False, "--json", help="Print the derived table as JSON."),
) -> None:
    """Print the parameter counts, r, GQA, FLOPs and KV-cache bytes of a shape."""
    arch = load_spec(spec)
    summary = arch.summary()
    if as_json:
        typer.echo(json.dumps({"spec": arch.to_dict(), **summary}, indent=2))
        return
    print_table(list({**arch.to_dict(), **summary}.items()), ["", ""], title=spec,
                show_header=False)


@app.command("export")
def export(
    spec: str = typer.Argument(..., help="Preset name (e.g. llama-3.2-1b) or a shape file."),
    fmt: str = typer.Option(..., "--format", help=f"One of {', '.join(FORMATS)}."),
    out: Path = typer.Option(..., "--out", help="Directory for the config and archscale.json."),
) -> None:
    """Write a shape as the config its training framework reads, with archscale.json beside it."""
    check_writable(out, folder=True)
    arch = load_spec(spec)
    form = get_format(fmt)
    path = write_shape(arch, form, out, label=spec)
    typer.echo(f"wrote {path} ({arch.params_total:,} parameters, N = {arch.params_nonembed:,})")
    for note in format_notes(arch, form):
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)


@app.command("export-hf")
def export_hf(
    spec: str | None = typer.Argument(None, help="Preset name (e.g. llama-3.2-1b) or a spec JSON "
                                      "file (not with --checkpoint)."),
    out: Path = typer.Option(..., "--out", help="Directory to write config.json into."),
    dtype: str | None = typer.Option(None, help="The config's dtype field (default bfloat16; "
                                     "float32 with --checkpoint)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A run's --checkpoint-dir: "
                                           "also write its trained weights (model.safetensors)."),
) -> None:
    """Write a HuggingFace LlamaForCausalLM config.json for a shape, or a trained run's folder."""
    check_writable(out, folder=True)
    if checkpoint is not None:
        _export_checkpoint(spec, checkpoint, out, dtype or "float32")
        return
    if spec is None:
        raise ArchscaleError("give a shape (preset or spec JSON) or --checkpoint RUN_DIR")
    dtype = dtype or "bfloat16"
    arch = load_spec(spec)
    path = write_hf_config(arch, out, dtype)
    typer.echo(f"wrote {path} ({arch.params_total:,} parameters)")
    for note in format_notes(arch, "hf"):
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)


def _export_checkpoint(spec: str | None, checkpoint: Path, out: Path, dtype: str) -> None:
    """config.json and model.safetensors of the newest checkpoint in ``checkpoint``."""
    from archscale.arch.hf_weights import save_hf
    from archscale.sweeps.trained import load_trained

    if spec is not None:
        raise ArchscaleError(f"give a shape ({spec}) or --checkpoint, not both: a checkpoint "
                             "holds its own shape")
    model, step = load_trained(checkpoint)
    path = save_hf(model, out, dtype)
    typer.echo(f"wrote {out / 'config.json'} and {path} (step {step}, "
               f"{model.spec.params_total:,} parameters)")

"""`archscale recommend` and `archscale export`: shapes at a target scale from fitted laws, and
the configs training frameworks read for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from archscale.arch.errors import ArchscaleError
from archscale.arch.frameworks import load_spec
from archscale.cli.defaults import field_defaults, range_text
from archscale.cli.outputs import check_writable, save_or_fallback
from archscale.cli.tables import print_table
from archscale.decide.options import SERVING, MeasureSettings
from archscale.decide.space import SearchSpace
from archscale.laws.levels import LEVELS

if TYPE_CHECKING:
    from archscale.decide.recommend import Recommendation
    from archscale.decide.throughput_models import ThroughputModel

DEFAULT_DEVICE = "h100"
SPACE = field_defaults(SearchSpace)
"""The search space's defaults (decide/space.py), which the shape options take."""
MEASURE = field_defaults(MeasureSettings)
"""--measure's defaults (decide/options.py)."""


def parse_fraction(text: str) -> float:
    """``0.5%`` or ``0.005`` -> 0.005."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ArchscaleError(f"--max-loss-increase {text!r} is not a number: write e.g. 0.5% or "
                             "0.005") from None
    return value


def parse_range(text: str, flag: str) -> tuple[float, float]:
    """``MIN:MAX`` -> (min, max), both positive."""
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise ArchscaleError(f"{flag} {text!r}: write MIN:MAX, e.g. 0.03:0.3") from None
    if not 0 < low <= high:
        raise ArchscaleError(f"{flag} {text!r}: need 0 < MIN <= MAX")
    return low, high


def throughput_model(throughput_law: Path | None, device: str) -> ThroughputModel:
    """The throughput a command ranks shapes by: a fitted law (--throughput-law) or the roofline
    of --device."""
    from archscale.decide.throughput_models import RooflineThroughput, throughput_from_law
    from archscale.laws.io import load_law
    from archscale.sweeps.hardware import KNOWN_DEVICES

    if throughput_law is not None:
        return throughput_from_law(load_law(throughput_law))
    if device not in KNOWN_DEVICES:
        raise ArchscaleError(f"unknown --device {device!r}: choose one of {sorted(KNOWN_DEVICES)} "
                             "or give --throughput-law")
    peaks = KNOWN_DEVICES[device]
    return RooflineThroughput(peaks.bf16_flops, peaks.bandwidth, device)


def print_recommendation(rec: Recommendation) -> None:
    rows = rec.display_rows()
    # a rule above the loss-optimal shape and the baseline, shown for comparison
    print_table([[label, *cells.values()] for label, cells in rows], ["shape", *rows[0][1]],
                title=f"recommended shapes: target loss {rec.target_loss:.4f}, decode at batch "
                      f"{rec.batch}, context {rec.context}", sections=[len(rec.recommended)])
    for note in rec.notes:
        typer.echo(f"note: {note}")


def recommend(
    ctx: typer.Context,
    law: Annotated[Path, typer.Option(help="Conditional loss law.json (`archscale fit`).")],
    params: Annotated[float, typer.Option(help="Target non-embedding parameters N, e.g. 1e9.")],
    tokens: Annotated[float, typer.Option(help="Training tokens D, e.g. 1e11.")],
    out: Annotated[Path, typer.Option(help="Folder for recommendations.json.")],
    target_loss: Annotated[float | None, typer.Option(help="Absolute loss target.")] = None,
    max_loss_increase: Annotated[str | None, typer.Option(
        help="Target as a loss increase over the loss-optimal shape: 0.5% or 0.005.")] = None,
    throughput_law: Annotated[Path | None, typer.Option(
        help="Fitted decode throughput law.json (default: the --device roofline).")] = None,
    device: Annotated[str, typer.Option(
        help="Roofline device without --throughput-law (sweeps/hardware.py names).")] = DEFAULT_DEVICE,
    baseline: Annotated[str | None, typer.Option(
        help="Preset or spec JSON to compare with, e.g. llama-3.2-1b.")] = None,
    top: Annotated[int, typer.Option(help="Recommended shapes to keep.")] = 5,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary of the target model.")
                          ] = SPACE["vocab_size"],
    seq_len: Annotated[int, typer.Option(help="Training context of the target model.")
                       ] = SPACE["seq_len"],
    head_dim: Annotated[int, typer.Option(help="Head width.")] = SPACE["head_dim"],
    layers: Annotated[int | None, typer.Option(
        help="Fixed depth (default: what the budget affords at n_heads near d / head_dim).")] = None,
    gqa: Annotated[int, typer.Option(help="GQA group of the grid; the GQA search starts here.")
                   ] = SPACE["gqa_group"],
    min_kv_heads: Annotated[int, typer.Option(help="Fewest KV heads the GQA search goes to.")] = 1,
    d_over_sqrt_n: Annotated[str, typer.Option(help="Width range MIN:MAX as d/sqrt(N).")
                             ] = range_text(SPACE["d_over_sqrt_n"]),
    r: Annotated[str, typer.Option(help="MLP/attention ratio range MIN:MAX.")
                 ] = range_text(SPACE["r"]),
    any_heads: Annotated[bool, typer.Option(
        "--any-heads", help="Allow d_model not divisible by n_heads (transformers 5.x refuses "
                            "such configs).")] = not SPACE["heads_divide_d_model"],
    d_model_multiple: Annotated[int, typer.Option(help="d_model rounding.")
                                ] = SPACE["d_model_multiple"],
    d_ff_multiple: Annotated[int, typer.Option(help="d_ff rounding.")] = SPACE["d_ff_multiple"],
    batch: Annotated[int, typer.Option(help="Decode batch of the throughput predictions.")
                     ] = SERVING.batch,
    context: Annotated[int, typer.Option(help="Cached context of the throughput predictions.")
                       ] = SERVING.context,
    level: Annotated[float, typer.Option(
        help="Level of the interval of the law's mean (the table prints the 90% prediction "
             "interval).")] = LEVELS.mean,
    accuracy_law: Annotated[Path | None, typer.Option(
        help="Accuracy law.json (`archscale fit --law accuracy`): adds each shape's predicted "
             "accuracy with its 90% interval.")] = None,
    measure: Annotated[bool, typer.Option(
        "--measure/--no-measure", help="Time the recommended shapes, the loss-optimal shape and "
                                       "the baseline at the target size (random weights, "
                                       "interleaved) on this machine's device, where they fit "
                                       "in memory; rank by the measurement.")] = False,
    measure_seconds: Annotated[float, typer.Option(
        help="With --measure: seconds each shape's prefill and decode are timed for, at least.")
    ] = MEASURE["min_seconds"],
    measure_repeats: Annotated[int, typer.Option(
        help="With --measure: timed calls per shape, at least.")] = MEASURE["repeats"],
) -> None:
    """Recommend shapes: highest decode throughput (predicted, or measured with --measure) under
    a loss target at N, D."""
    check_writable(out, folder=True)
    # every option as parsed, for the provenance of the output
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in ctx.params.items()}
    from archscale.decide.recommend import recommend as run_recommend
    from archscale.decide.recommend import save_recommendation
    from archscale.laws.io import load_law
    from archscale.laws.table import file_sha256

    loss_law = load_law(law)
    acc_law = None if accuracy_law is None else load_law(accuracy_law)
    model = throughput_model(throughput_law, device)
    measure_settings = (MeasureSettings(min_seconds=measure_seconds, repeats=measure_repeats)
                        if measure else None)
    space = SearchSpace(params, tokens, d_over_sqrt_n=parse_range(d_over_sqrt_n, "--d-over-sqrt-n"),
                        r=parse_range(r, "--r"), gqa_group=gqa, head_dim=head_dim, n_layers=layers,
                        vocab_size=vocab_size, seq_len=seq_len, d_model_multiple=d_model_multiple,
                        d_ff_multiple=d_ff_multiple, heads_divide_d_model=not any_heads)
    files = {"loss_law_file": {"path": str(law), "sha256": file_sha256(law), "kind": loss_law.kind}}
    if accuracy_law is not None:
        files["accuracy_law_file"] = {"path": str(accuracy_law),
                                      "sha256": file_sha256(accuracy_law), "kind": acc_law.kind}
    if throughput_law is not None:
        files["throughput_law_file"] = {"path": str(throughput_law),
                                        "sha256": file_sha256(throughput_law), "kind": "throughput"}
    else:
        files["throughput_assumption"] = (f"no --throughput-law: decode throughput is the roofline "
                                          f"of --device {device}")
    increase = None if max_loss_increase is None else parse_fraction(max_loss_increase)
    rec = run_recommend(
        loss_law, space, model, target_loss=target_loss, max_loss_increase=increase, top=top,
        batch=batch, context=context, level=level,
        baseline=None if baseline is None else load_spec(baseline), min_kv_heads=min_kv_heads,
        accuracy_law=acc_law, measure=measure_settings,
        provenance={**files, "command_settings": settings})
    print_recommendation(rec)
    saved = save_or_fallback(lambda folder: save_recommendation(rec, folder), out,
                             "the recommendation")
    typer.echo(f"wrote {saved}")


def export(
    source: Annotated[Path, typer.Argument(help="Folder of `archscale recommend --out`, or its "
                                                "recommendations.json.")],
    fmt: Annotated[str, typer.Option(
        "--format", help="hf, maxtext, torchtitan, megatron, litgpt or olmo-core.")] = "hf",
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: SOURCE folder/FORMAT).")] = None,
    dtype: Annotated[str, typer.Option(help="The HF configs' dtype field.")] = "bfloat16",
    recipe: Annotated[Path | None, typer.Option(
        help="The study's sweep YAML, a run JSON or Recipe fields: adds the batch size and "
             "learning rate its scaling rules give at each shape's N.")] = None,
) -> None:
    """Write one config per recommended shape in a training framework's format, each with
    archscale.json beside it (predictions, intervals, laws, training budget), and
    recommendations.json (any database password in it hidden)."""
    from archscale.decide.export import export as run_export
    from archscale.decide.export import load_recipe, recommendation_path

    out = out if out is not None else recommendation_path(source).parent / fmt
    check_writable(out, folder=True)
    recipe_obj = None if recipe is None else load_recipe(recipe)
    for path in save_or_fallback(lambda folder: run_export(source, folder, fmt, dtype, recipe_obj),
                                 out, f"the {fmt} configs"):
        typer.echo(f"wrote {path}")
    manifest = out / "recommendations.json"
    typer.echo(f"wrote {manifest}")
    exported = json.loads(manifest.read_text())["export"]
    for note in exported["notes"]:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    hidden = exported.get("passwords_hidden") or {}
    if hidden:
        places = "; ".join(f"{place}: {shown}" for place, shown in hidden.items())
        typer.secho(
            f"password hidden: {exported['source']} holds a database URL with its password "
            f"(written before archscale hid passwords), so the export shows it as *** ({places}). "
            "The source file and the law files it came from still hold it: do not share them; "
            "refit the laws (`archscale fit`) and recommend again to replace them.",
            err=True, fg=typer.colors.YELLOW)

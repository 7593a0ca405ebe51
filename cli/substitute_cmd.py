"""`archscale substitute`: the cheapest (shape, k) reaching a target pass@k at a demand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from archscale import environment
from archscale.arch.errors import ArchscaleError
from archscale.cli.defaults import range_text
from archscale.cli.outputs import check_writable, save_or_fallback
from archscale.cli.recommend_cmd import (
    DEFAULT_DEVICE,
    SPACE,
    parse_fraction,
    parse_range,
    throughput_model,
)
from archscale.cli.tables import print_table
from archscale.decide.options import SERVING

if TYPE_CHECKING:
    from archscale.laws.law import Law


def _passk_law(passk_law: Path | None, study: str | None, storage: str | None, out: Path,
               n_boot: int, covariate: str) -> tuple[Law, dict]:
    """The pass@k law of --passk-law, or one fitted now on --study's runs (saved in --out)."""
    if (passk_law is None) == (study is None):
        raise ArchscaleError("give exactly one of --passk-law FILE or --study NAME (whose runs "
                             "measured pass@k: a passk: key in its sweep file)")
    from archscale.laws.io import load_law, save_law
    from archscale.laws.table import file_sha256

    if passk_law is not None:
        return load_law(passk_law), {"path": str(passk_law), "sha256": file_sha256(passk_law)}
    from archscale.decide.substitute import passk_table
    from archscale.decide.substitution_report import fit_study_law
    from archscale.search.study import open_study

    handle = open_study(study, storage)
    runs = passk_table(handle.study)
    law = fit_study_law(handle, runs, n_boot, covariate=covariate)
    path = save_law(law, out / "laws" / "passk.json")
    runs.to_csv(out / "laws" / "passk_runs.csv", index=False)
    typer.echo(f"fitted the pass@k law on {len(runs)} (run, k) rows of study {study!r}: {path}")
    held = law.validation.get("heldout") or {}
    if "mean_relative_error" in held:
        typer.echo(f"held out ({held['rule']}): mean relative error "
                   f"{held['mean_relative_error']:.1%}, 90% prediction intervals cover "
                   f"{held.get('coverage_90', float('nan')):.0%}")
    return law, {"path": str(path), "fitted_from_study": study}


def _print(sub) -> None:
    rows = []
    for point in sub.points:
        d = sub.point_dict(point)
        spec = sub.specs[point.shape]
        low, high = point.k_range
        rows.append((f"{d['params']:,}" + (" *" if d["cheapest"] else ""),
                      f"d{spec.d_model} L{spec.n_layers} h{spec.n_heads}/{spec.n_kv_heads} "
                      f"ff{spec.d_ff}",
                      f"{point.k} ({low or '-'}..{high or f'>{sub.ks[-1]}'})",
                      f"{point.pass_at_k:.3f} [{point.interval_90[0]:.3f}, "
                      f"{point.interval_90[1]:.3f}]",
                      f"{point.train_flops:.3g}", f"{point.inference_flops:.3g}",
                      f"{point.total_flops:.3g}", f"{point.inference_seconds:.3g}"))
    print_table(rows, ["N", "shape", "k (90% range)", "pass@k [90% prediction interval]",
                       "train FLOPs", "inference FLOPs", "total FLOPs", "generation device-s"],
                title=f"pass@k >= {sub.target_pass:.3g} at {sub.demand.requests:.3g} requests")
    typer.echo("* cheapest" if sub.points else "no candidate reaches the target")
    typer.echo(f"floor: {sub.floor['reason']}")
    for note in sub.notes:
        typer.echo(f"note: {note}")


def substitute(
    ctx: typer.Context,
    loss_law: Annotated[Path, typer.Option(help="Conditional loss law.json: picks each size's "
                                                "shape, as `archscale recommend` does.")],
    target_pass: Annotated[float, typer.Option(help="Pass rate a request must reach, e.g. 0.3.")],
    requests: Annotated[float, typer.Option(help="Requests served over the model's life, R.")],
    params: Annotated[str, typer.Option(help="Candidate sizes N, comma-separated, e.g. "
                                             "1e8,3e8,1e9.")],
    out: Annotated[Path, typer.Option(help="Folder for substitution.csv/.json/.png and points/.")],
    passk_law: Annotated[Path | None, typer.Option(
        help="pass@k law.json (`archscale fit --law passk`).")] = None,
    study: Annotated[str | None, typer.Option(
        help="Fit the pass@k law on this study's runs instead (saved in --out/laws).")] = None,
    storage: Annotated[str | None, typer.Option(help="Study storage URL.",
                                                envvar=environment.STORAGE)] = None,
    tokens_per_param: Annotated[float | None, typer.Option(
        help="Training tokens D / N (default: the study's budget with --study, else 20).")
    ] = None,
    prompt_tokens: Annotated[int | None, typer.Option(
        help="Prompt tokens per request (default: the study's pass@k prompts).")] = None,
    sample_tokens: Annotated[float | None, typer.Option(
        help="Generated tokens per sample (default: the study's mean completion).")] = None,
    max_k: Annotated[int | None, typer.Option(
        help="Largest k considered (default: the largest measured).")] = None,
    max_loss_increase: Annotated[str, typer.Option(
        help="Each size's shape: fastest within this of the loss-optimal loss.")] = "1%",
    throughput_law: Annotated[Path | None, typer.Option(
        help="Decode throughput law.json (default: the --device roofline).")] = None,
    device: Annotated[str, typer.Option(help="Roofline device without --throughput-law.")
                      ] = DEFAULT_DEVICE,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help=(
        "Time each candidate's decode at its size on this machine (random weights).")
    )] = False,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary of the models.")
                          ] = SPACE["vocab_size"],
    seq_len: Annotated[int, typer.Option(help="Training context.")] = SPACE["seq_len"],
    head_dim: Annotated[int, typer.Option(help="Head width.")] = SPACE["head_dim"],
    gqa: Annotated[int, typer.Option(help="GQA group the shape search starts from.")
                   ] = SPACE["gqa_group"],
    d_over_sqrt_n: Annotated[str, typer.Option(help="Width range MIN:MAX.")
                             ] = range_text(SPACE["d_over_sqrt_n"]),
    r: Annotated[str, typer.Option(help="MLP/attention ratio range MIN:MAX.")
                 ] = range_text(SPACE["r"]),
    d_model_multiple: Annotated[int, typer.Option(help="d_model rounding.")
                                ] = SPACE["d_model_multiple"],
    d_ff_multiple: Annotated[int, typer.Option(help="d_ff rounding.")] = SPACE["d_ff_multiple"],
    batch: Annotated[int, typer.Option(help="Decode batch of the throughput.")] = SERVING.batch,
    context: Annotated[int, typer.Option(help="Cached context of the throughput.")
                       ] = SERVING.context,
    n_boot: Annotated[int, typer.Option(help="Bootstrap refits when fitting from --study.")] = 100,
    covariate: Annotated[str, typer.Option(
        help="Form of the law fitted from --study: loss, nd or compute (laws/passk.py).")
    ] = "loss",
    allow_degenerate: Annotated[bool, typer.Option(
        help="Answer even if the pass@k law is not identified (the output says so).")] = False,
) -> None:
    """The cheapest (shape, samples per request k) whose predicted pass@k reaches the target:
    training FLOPs + R x (prefill + k x one sample), each size's shape from the loss law."""
    check_writable(out, folder=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in ctx.params.items()}
    from archscale.decide.options import MeasureSettings
    from archscale.decide.space import SearchSpace
    from archscale.decide.substitute import Demand, candidate_shapes
    from archscale.decide.substitute import substitute as run_substitute
    from archscale.decide.substitution_report import write
    from archscale.laws.io import load_law
    from archscale.laws.table import file_sha256

    try:
        sizes = [float(p) for p in params.split(",") if p.strip()]
    except ValueError:
        raise ArchscaleError(f"--params {params!r}: write sizes separated by commas, e.g. "
                             "1e8,3e8,1e9") from None
    law, law_file = _passk_law(passk_law, study, storage, out, n_boot, covariate)
    tokens_per_param = tokens_per_param or law.provenance.get("tokens_per_param") or 20.0
    if law.problems and not allow_degenerate:
        raise ArchscaleError(f"the pass@k law is not identified: {law.problems[0].message} "
                             "(pass --allow-degenerate to answer anyway, marked)")
    recorded = law.provenance
    prompt = prompt_tokens or recorded.get("prompt_tokens")
    sample = sample_tokens or recorded.get("sample_tokens")
    if prompt is None or sample is None:
        raise ArchscaleError("give --prompt-tokens and --sample-tokens: this pass@k law does not "
                             "record the task's prompt and completion lengths")
    space = SearchSpace(sizes[0], tokens_per_param * sizes[0],
                        d_over_sqrt_n=parse_range(d_over_sqrt_n, "--d-over-sqrt-n"),
                        r=parse_range(r, "--r"), gqa_group=gqa, head_dim=head_dim,
                        vocab_size=vocab_size, seq_len=seq_len,
                        d_model_multiple=d_model_multiple, d_ff_multiple=d_ff_multiple)
    recs = candidate_shapes(load_law(loss_law), throughput_model(throughput_law, device), space,
                            sizes, tokens_per_param=tokens_per_param,
                            max_loss_increase=parse_fraction(max_loss_increase), batch=batch,
                            context=context, measure=MeasureSettings() if measure else None)
    fitted_k = int(law.error_model.ranges["k"][1]) if law.error_model else None
    sub = run_substitute(recs, law, target_pass=target_pass,
                         demand=Demand(requests, int(prompt), float(sample)),
                         max_k=max_k or fitted_k or 32,
                         provenance={"passk_law_file": law_file, "command_settings": settings,
                                     "loss_law_file": {"path": str(loss_law),
                                                       "sha256": file_sha256(loss_law)}})
    _print(sub)
    for path in save_or_fallback(lambda folder: write(sub, folder), out,
                                 "the substitution").values():
        typer.echo(f"wrote {path}")

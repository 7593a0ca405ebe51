"""`archscale train`: train one shape under a token or FLOP budget and write its RunResult."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from archscale.arch.errors import ArchscaleError
from archscale.cli.failures import Interrupted
from archscale.cli.outputs import check_writable, fallback_path, save_or_fallback
from archscale.cli.shape_options import (
    DFF,
    DModel,
    HeadDim,
    Heads,
    KVHeads,
    Layers,
    SeqLen,
    SpecArg,
    Tie,
    Vocab,
    spec_from_options,
)
from archscale.cli.tables import print_table


def _opt(flag: str, help: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(flag, help=help, show_default=False, **kwargs)


Tokens = Annotated[float | None, _opt("--tokens", "Budget in training tokens.")]
Flops = Annotated[float | None, _opt(
    "--flops", "Budget in training FLOPs (6N + attention per token, see arch/spec.py).")]
Corpus = Annotated[str | None, _opt(
    "--corpus", "Any UTF-8 text file or folder (code, Markdown, ...), .jsonl/.parquet records, "
    "each optionally .gz/.zst; token shards (.bin/.npy) or a HF dataset folder (default: the "
    "embedded Shakespeare).")]
Include = Annotated[list[str] | None, _opt(
    "--include", "Corpus folder: read only files matching this glob, e.g. '*.py' (repeat it for more).")]
Exclude = Annotated[list[str] | None, _opt(
    "--exclude", "Corpus folder: leave out files matching this glob (repeat it for more).")]
TextField = Annotated[str, _opt(
    "--text-field", "The text field of .jsonl/.parquet records and HF datasets (default 'text').")]
TokenizerOpt = Annotated[str, _opt("--tokenizer", "'byte' (default) or 'bpe:N'.")]
Seed = Annotated[int, _opt("--seed", "Seed of initialisation and data order (default 0).")]
RecipeFile = Annotated[Path | None, _opt(
    "--recipe", "Recipe JSON (the fields of Recipe in sweeps/recipe.py); flags override it.")]
LR = Annotated[float | None, _opt("--lr", "Peak learning rate (default 3e-3).")]
BatchSize = Annotated[int | None, _opt("--batch-size", "Sequences per step (default 16).")]
Schedule = Annotated[str | None, _opt("--schedule", "'cosine' (default) or 'wsd'.")]
EvalTokens = Annotated[int | None, _opt("--eval-tokens", "Validation tokens (default 65536).")]
Task = Annotated[str | None, _opt(
    "--task", "Multiple-choice task JSONL scored at the end ('default': the shipped task).")]
Out = Annotated[Path | None, _opt("--out", "Write the RunResult JSON here.")]
CheckpointDir = Annotated[Path | None, _opt(
    "--checkpoint-dir", "Checkpoint here at every evaluation; resume from it if present.")]
Throughput = Annotated[bool, _opt("--throughput/--no-throughput",
                                  "Measure inference throughput after training (default on).")]
Progress = Annotated[bool, _opt("--progress/--no-progress", "Show a progress bar (default on).")]
MeshOpt = Annotated[str | None, _opt(
    "--mesh", "Devices as data=D,fsdp=F: D data-parallel replicas, parameters and optimizer state "
    "split over F (D x F = the device count; default: data parallel over every device).")]


def train(
    spec: SpecArg = None,
    d_model: DModel = None,
    n_layers: Layers = None,
    n_heads: Heads = None,
    n_kv_heads: KVHeads = None,
    head_dim: HeadDim = None,
    d_ff: DFF = None,
    vocab_size: Vocab = None,
    seq_len: SeqLen = None,
    tie_embeddings: Tie = None,
    tokens: Tokens = None,
    flops: Flops = None,
    corpus: Corpus = None,
    include: Include = None,
    exclude: Exclude = None,
    text_field: TextField = "text",
    tokenizer: TokenizerOpt = "byte",
    seed: Seed = 0,
    recipe_file: RecipeFile = None,
    lr: LR = None,
    batch_size: BatchSize = None,
    schedule: Schedule = None,
    eval_tokens: EvalTokens = None,
    task: Task = None,
    out: Out = None,
    checkpoint_dir: CheckpointDir = None,
    throughput: Throughput = True,
    progress: Progress = True,
    mesh: MeshOpt = None,
) -> None:
    """Train a shape under a fixed budget; print a summary and write the run's JSON.

    Several hosts: start the same command on each, with JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under srun / mpirun, which JAX detects).
    """
    check_writable(out)
    check_writable(checkpoint_dir, "--checkpoint-dir", folder=True)
    arch = spec_from_options(spec, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                             n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff,
                             vocab_size=vocab_size, seq_len=seq_len,
                             tie_embeddings=tie_embeddings)
    # Imported here so `archscale --help` does not start JAX.
    import jax

    from archscale.sweeps.corpus import CorpusSource
    from archscale.sweeps.data import load_data
    from archscale.sweeps.recipe import Budget
    from archscale.sweeps.sharding import MeshShape, initialize_distributed
    from archscale.sweeps.tasks import default_task_path
    from archscale.sweeps.trainer import RunInterrupted
    from archscale.sweeps.trainer import train as train_run

    mesh_shape = MeshShape() if mesh is None else MeshShape.parse(mesh)
    initialize_distributed()  # before anything asks JAX for its devices
    budget = Budget(tokens=None if tokens is None else int(tokens), flops=flops)
    recipe = _recipe(recipe_file, lr=lr, batch_size=batch_size, schedule=schedule,
                     eval_tokens=eval_tokens)
    data = load_data(CorpusSource(corpus, tuple(include or ()), tuple(exclude or ()), text_field),
                     tokenizer)
    typer.echo(f"corpus: {data.source}", err=True)
    if vocab_size is None and arch.vocab_size != data.vocab_size:
        typer.echo(f"vocab_size {arch.vocab_size} -> {data.vocab_size} (the {data.tokenizer} "
                   "tokenizer's)", err=True)
        arch = arch.replace(vocab_size=data.vocab_size)
    task_path = default_task_path() if task == "default" else task
    try:
        result = train_run(arch, budget, recipe, data, seed, checkpoint_dir=checkpoint_dir,
                           task=task_path, progress=progress, mesh=mesh_shape)
    except RunInterrupted as stop:
        raise _interrupted(stop.result, out, checkpoint_dir) from None
    if throughput and result.status == "complete":
        from archscale.sweeps.throughput import measure_throughput

        result = result.replace(throughput=measure_throughput(arch, seed=seed).to_dict())
    _print_summary(result, spec or "shape")
    if out is not None and jax.process_index() == 0:  # every host holds the same result
        typer.echo(f"wrote {save_or_fallback(result.save, out, 'the run result')}")
    if result.status != "complete":
        raise typer.Exit(1)


def _interrupted(result, out: Path | None, checkpoint_dir: Path | None) -> Interrupted:
    """Save the partial result (to --out, else a fallback path) and say how to go on."""
    path = result.save(out) if out is not None else result.save(fallback_path("run.json"))
    kept = f"the partial result after {result.steps:,} steps in {path} (status interrupted)"
    if checkpoint_dir is None:
        return Interrupted(kept, resumes=False,
                           note=" (add --checkpoint-dir DIR to make a run resumable)")
    return Interrupted(f"{kept}, checkpoints in {checkpoint_dir}", resumes=True)


def _recipe(path: Path | None, **flags):
    from archscale.sweeps.recipe import Recipe

    base = Recipe()
    if path is not None:
        try:
            base = Recipe.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ArchscaleError(f"cannot read a Recipe from {path}: {err}") from None
    return dataclasses.replace(base, **{k: v for k, v in flags.items() if v is not None})


def _print_summary(result, name: str) -> None:
    def show(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    state = result.state_bytes_per_device
    rows = [
        ("val_loss", show(result.val_loss, ".4f")),
        ("val_accuracy", show(result.val_accuracy, ".2%")),
        ("task_accuracy", show(result.task_accuracy, ".2%")),
        ("tokens", f"{result.tokens:,}"), ("steps", f"{result.steps:,}"),
        ("flops", f"{result.flops:.3e}"), ("lr", f"{result.recipe['lr']:.3g}"),
        ("tokens/s", f"{result.tokens_per_s:,.0f}"), ("mfu", show(result.mfu, ".1%")),
        ("compile_s", f"{result.compile_time_s:.1f}"), ("wall_s", f"{result.wall_time_s:.1f}"),
        ("mesh", ",".join(f"{k}={v}" for k, v in (result.mesh or {}).items())),
        ("state MiB/device", show(None if state is None else state / 2**20, ".1f")),
    ]
    if result.throughput:
        rows += [("prefill tokens/s", f"{result.throughput['prefill_tokens_per_s']:,.0f}"),
                 ("decode tokens/s", f"{result.throughput['decode_tokens_per_s']:,.0f}")]
    if result.message:
        rows.append(("message", result.message))
    print_table(rows, ["", ""], show_header=False,
                title=f"{name}: {result.status} on {result.device_kind} x{result.n_devices}")

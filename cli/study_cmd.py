"""`archscale study ...`: create, run, work on, inspect and export Optuna studies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from archscale import environment
from archscale.cli.outputs import check_writable, save_or_fallback
from archscale.cli.tables import print_table
from archscale.search.defaults import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STORAGE,
    DEFAULT_STORAGE_WAIT_S,
)

# Optuna, JAX and the search modules load inside the commands: `--help` stays fast

app = typer.Typer(help="Optuna studies: grids and searches of shapes, run by workers.",
                  no_args_is_help=True)

STORAGE_HELP = (f"Storage: a journal file (default ./{DEFAULT_STORAGE}), "
                "sqlite:///FILE (one worker) or postgresql://USER@HOST/DB (many machines; the "
                "password from PGPASSWORD or ~/.pgpass).")
StorageOpt = typer.Option(None, "--storage", "-s", help=STORAGE_HELP,
                          envvar=environment.STORAGE)
HeartbeatOpt = typer.Option(DEFAULT_HEARTBEAT_S, "--heartbeat",
                            help="Seconds between heartbeats of a running trial.")
GraceOpt = typer.Option(None, "--grace", help="Seconds of silence after which a trial's worker "
                        "counts as dead (default 2 x heartbeat + 10).")
ArtifactsOpt = typer.Option(None, "--artifacts", help="Artifact folder (loss curves, checkpoints); "
                            "default beside the storage file, or ./archscale.artifacts.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show training progress bars.")
MaxRetriesOpt = typer.Option(DEFAULT_MAX_RETRIES, "--max-retries", min=0,
                             help="Times a config whose worker died is re-queued before the run "
                                  "gives up on it (and exits non-zero, naming it).")
StorageWaitOpt = typer.Option(DEFAULT_STORAGE_WAIT_S, "--storage-wait", min=0,
                              help="Seconds a worker rides out an unreachable database storage "
                                   "before it stops (finished results are kept locally and "
                                   "recorded on resume).")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@app.command()
def create(
    file: Annotated[Path, typer.Argument(help="Sweep file (YAML).", exists=True, dir_okay=False)],
    storage: str | None = StorageOpt,
) -> None:
    """Validate a sweep file and create its study (enqueueing every grid run once)."""
    from archscale.search import storage as storage_lib
    from archscale.search.study import create_study, progress_counts
    from archscale.search.sweepfile import load_sweep

    _quiet_optuna()
    sweep = load_sweep(file)
    if sweep.design is not None:
        from archscale.decide.design_study import design_law

        design_law(sweep)  # an unknown law or form fails before the study exists
    handle = create_study(sweep, storage)
    counts = progress_counts(handle)
    planned = ("a design over the grid (runs picked as it goes)" if sweep.design is not None
               else f"{counts['planned']} planned runs" if handle.is_grid
               else f"a search of {counts['n_trials']} trials")
    shown = handle.shown_url
    typer.echo(f"study {handle.name!r} in {shown}: {planned}, {counts['COMPLETE']} complete, "
               f"{counts['WAITING']} waiting")
    typer.echo(f"run it:   archscale study run {handle.name} --storage {shown}")
    typer.echo(f"watch it: optuna-dashboard {shown} --artifact-dir "
               f"{storage_lib.artifact_dir(handle.url)}")
    if storage_lib.has_password(handle.url):
        typer.echo(f"(password hidden: put it in PGPASSWORD or ~/.pgpass, and the URL in "
                   f"${environment.STORAGE}, rather than on a command line)")


@app.command()
def run(
    name: str = typer.Argument(..., help="Study name (or a sweep file: created first if needed)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Local worker processes, each pinned "
                                "to its own cores."),
    storage: str | None = StorageOpt,
    heartbeat: int = HeartbeatOpt,
    grace: int | None = GraceOpt,
    artifacts: str | None = ArtifactsOpt,
    progress: bool = ProgressOpt,
    max_retries: int = MaxRetriesOpt,
    storage_wait: float = StorageWaitOpt,
) -> None:
    """Run (or continue) a study to its end; finished trials are never retrained."""
    check_writable(Path(artifacts) if artifacts else None, "--artifacts", folder=True)
    from archscale.search.study import create_study
    from archscale.search.worker import GaveUpError, WorkerOptions, run_study

    _quiet_optuna()
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        name = create_study(name, storage).name
    options = WorkerOptions(heartbeat_s=heartbeat, grace_s=grace, artifacts=artifacts,
                            progress=progress and workers == 1, max_retries=max_retries,
                            storage_wait_s=storage_wait, proposer=_proposer())
    try:
        run_study(name, storage, workers=workers, options=options, echo=typer.echo)
    except GaveUpError:
        _print_status(name, storage)
        raise
    _print_status(name, storage)


@app.command()
def worker(
    name: str = typer.Argument(..., help="Study name."),
    storage: str | None = StorageOpt,
    cores: str | None = typer.Option(None, "--cores", help="Pin to these cores, e.g. 0,1,2."),
    heartbeat: int = HeartbeatOpt,
    grace: int | None = GraceOpt,
    artifacts: str | None = ArtifactsOpt,
    max_trials: int | None = typer.Option(None, "--max-trials", help="Stop after this many."),
    progress: bool = ProgressOpt,
    max_retries: int = MaxRetriesOpt,
    storage_wait: float = StorageWaitOpt,
) -> None:
    """One worker (per accelerator or machine): runs trials until the study is done."""
    check_writable(Path(artifacts) if artifacts else None, "--artifacts", folder=True)
    from archscale.search.worker import WorkerOptions, run_worker

    _quiet_optuna()
    options = WorkerOptions(heartbeat_s=heartbeat, grace_s=grace, artifacts=artifacts,
                            max_trials=max_trials, progress=progress, max_retries=max_retries,
                            storage_wait_s=storage_wait, proposer=_proposer())
    pinned = [int(c) for c in cores.split(",")] if cores else None
    run_worker(name, storage, options, echo=typer.echo, cores=pinned)


STATUS_COLUMNS = {"trial": "trial", "status": "status", "N": "N", "d_model": "d",
                  "n_layers": "L", "heads": "heads", "r": "r", "loss": "loss",
                  "decode_tokens_per_s": "decode tok/s", "seconds": "s"}
PARETO_COLUMNS = {"trial_id": "trial", "N": "N", "d_model": "d", "n_layers": "L", "r": "r",
                  "gqa_group": "GQA", "loss": "loss", "decode_tokens_per_s": "decode tok/s"}


def _records(table) -> list[dict]:
    """DataFrame rows as JSON-ready dicts (NaN -> None)."""
    return json.loads(table.to_json(orient="records"))


def _proposer() -> str:
    """The design engine, as workers of a designed study load it."""
    from archscale.decide.design_study import PROPOSER

    return PROPOSER


def _print_design(status: dict) -> None:
    """A designed study's spend, target interval and top shapes (``designed.live_status``)."""
    spent, budget = status["spent_flops"], status["budget_flops"]
    typer.echo(f"design: {spent:.3g} of {budget:.3g} FLOPs spent or committed "
               f"({spent / budget:.0%} of the budget, {spent / status['grid_flops']:.0%} of the "
               f"grid's), {status['runs']} runs finished; at step {status['step']} the law "
               f"was in stage {status.get('stage')}")
    if status.get("target_interval_90"):
        low, high = status["target_interval_90"]
        typer.echo(f"target: loss {status['target_loss']:.4f}, 90% interval of the law's mean "
                   f"{low:.4f}-{high:.4f}")
    if status.get("p_settled") is not None:
        typer.echo(f"settled: the top shape is best within {status['tolerance']:.1%} with "
                   f"probability {status['p_settled']:.2f}")
    for shape in status.get("top_shapes", []):
        best = ("" if shape.get("p_best") is None
                else f", best with probability {shape['p_best']:.2f}")
        typer.echo(f"  d/sqrt(N) {shape.get('d_over_sqrt_n')}, r {shape.get('r')}, GQA "
                   f"{shape.get('gqa_group')}: loss {shape['loss']:.4f}{best}")
    for problem in status.get("problems", []):
        typer.echo(f"  not identified yet: {problem}")
    if status.get("stopped_because"):
        typer.echo(f"stopped: {status['stopped_because']}")


def _print_status(name: str, storage: str | None, as_json: bool = False) -> None:
    from archscale.search.designed import STEP_STATUS, live_status
    from archscale.search.study import open_study, progress_counts
    from archscale.search.table import pareto_front, status_counts, status_table, trials_table

    handle = open_study(name, storage)
    table = status_table(handle.study)
    counts = status_counts(table)
    planned = {k: v for k, v in progress_counts(handle).items() if k in ("planned", "n_trials")}
    front = pareto_front(trials_table(handle.study))
    retries = _retry_lines(handle.study)
    design = live_status(handle)
    if as_json:
        typer.echo(json.dumps({"study": name, "storage": handle.shown_url, "counts": counts,
                               **planned, "retries": retries, "design": design,
                               "trials": _records(table),
                               "pareto": _records(front[list(PARETO_COLUMNS)])}, indent=1))
        return
    print_table(table.to_dict("records"), STATUS_COLUMNS,
                title=f"study {name} ({handle.shown_url})")
    for row in table.to_dict("records"):
        if row["message"] and row["status"] not in ("complete", STEP_STATUS):
            typer.echo(f"trial {row['trial']} {row['status']}: {row['message']}")
    for line in retries:
        typer.echo(line)
    typer.echo(", ".join(f"{k}: {v}" for k, v in {**counts, **planned}.items()))
    if design is not None:
        _print_design(design)
    if len(front):
        print_table(front.to_dict("records"), PARETO_COLUMNS,
                    title="Pareto front: lower loss vs higher decode throughput")


def _retry_lines(study) -> list[str]:
    """Per config that was retried or given up on: its tries and why each stopped."""
    from archscale.search.recovery import given_up, retried_configs

    lines = []
    for config in retried_configs(study):
        now = config.latest.state.name.lower()
        lines.append(f"config {config.config_key}: try {len(config.tries) + 1} is trial "
                     f"{config.latest.number} ({now}); earlier: "
                     + "; ".join(f"trial {t['trial']}: {t['reason']}" for t in config.tries))
    for config in given_up(study):
        lines.append(f"config {config.config_key}: given up after {len(config.tries)} tries ("
                     + "; ".join(f"trial {t['trial']}: {t['reason']}" for t in config.tries)
                     + "): re-queue it with `archscale study requeue`")
    return lines


@app.command()
def requeue(
    name: str = typer.Argument(..., help="Study name."),
    configs: list[str] = typer.Argument(..., help="Config keys (or unique prefixes) that the run "
                                        "gave up on."),
    storage: str | None = StorageOpt,
) -> None:
    """Queue another try of configs a run gave up on (their retry count starts again)."""
    from archscale.arch.errors import ArchscaleError
    from archscale.search.recovery import requeue as requeue_configs
    from archscale.search.study import open_study

    _quiet_optuna()
    handle = open_study(name, storage)
    missing = requeue_configs(handle.study, configs)
    if missing:
        raise ArchscaleError(f"no given-up config of study {name!r} matches {', '.join(missing)}:"
                             f" `archscale study status {name}` lists them")
    typer.echo(f"re-queued {len(configs)} config(s): continue with {handle.resume_command}")


@app.command()
def status(name: str = typer.Argument(..., help="Study name."),
           storage: str | None = StorageOpt,
           as_json: bool = typer.Option(False, "--json", help="Print the trials, counts and "
                                        "Pareto front as JSON (for scripts).")) -> None:
    """Table of trials (state, outcome, shape, loss, throughput) and the Pareto front."""
    _quiet_optuna()
    _print_status(name, storage, as_json)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Study name.")],
    csv: Annotated[Path, typer.Option("--csv", help="Write the run table (canonical columns) here.")],
    storage: str | None = StorageOpt,
    include_failed: bool = typer.Option(False, "--include-failed",
                                        help="Add diverged, failed and pruned runs (see status)."),
    remeasure: bool = typer.Option(
        False, "--remeasure-throughput",
        help="Time every shape's throughput again, all together with their calls interleaved, "
             "instead of the figures each trial measured alone (minutes apart, under different "
             "load)."),
    min_seconds: float | None = typer.Option(
        None, help="With --remeasure-throughput: prefill and decode seconds per shape (default: "
                   "the sweep's throughput.min_seconds).", show_default=False),
) -> None:
    """Export the run table that laws fit (one row per complete trial) as CSV."""
    from archscale.search.study import open_study
    from archscale.search.table import trials_table

    check_writable(csv, "--csv")
    _quiet_optuna()
    handle = open_study(name, storage)
    table = trials_table(handle.study, include_failed=include_failed)
    if remeasure:
        from archscale.arch.runtime import configure_jax
        from archscale.search.remeasure import remeasure_table

        configure_jax()
        table = remeasure_table(handle, table, min_seconds=min_seconds)
    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
        return path

    csv = save_or_fallback(write, csv, "the run table")
    how = " (throughput re-measured, all shapes interleaved)" if remeasure else ""
    typer.echo(f"wrote {len(table)} runs to {csv}{how}")

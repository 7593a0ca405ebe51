"""Workers: claim trials, run them, recover the trials of dead workers; K local workers on cores.

A worker loops: recover stale trials (``search.recovery``), record results kept while the storage
was down (``search.spool``), claim one trial, and have its trial process run it
(``search.trial_process``: a crash there fails and re-queues the trial, the worker lives on). A
grid worker only claims enqueued (WAITING) trials, by atomically moving one to RUNNING, so no
trial without a planned run is ever created; a search worker asks the sampler while the study has
fewer than ``n_trials`` trials (retries of crashed trials first). With nothing left to claim, a
worker waits while other workers' trials still run (one of them may die and need a retry) and
stops when none is RUNNING: every planned run has then finished or was given up on after
``max_retries`` retries, which ``run_study`` then reports (``GaveUpError``). A database storage
rides out outages of up to ``storage_wait_s`` (``search.outages``).

``run_study(..., workers=K)`` starts K ``archscale study worker`` processes, each owning its own
devices (``search.devices``): a disjoint share of the host's GPUs or TPU chips, or of its cores
on a CPU. Workers on other machines are started by hand, one per host or accelerator (e.g.
``CUDA_VISIBLE_DEVICES=i ARCHSCALE_STORAGE=URL archscale study worker NAME``). The storage URL
reaches worker processes through their environment (``ARCHSCALE_STORAGE``), never their command
line, where any user of the machine would read its password (``ps``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from archscale import environment
from archscale.arch.errors import ArchscaleError, SettingError
from archscale.search import designed
from archscale.search import storage as storage_lib
from archscale.search.attrs import (
    CONFIG_KEY_ATTR,
    DECODE_ATTR,
    MESSAGE_ATTR,
    N_ATTR,
    SPEC_ATTR,
    STATUS_ATTR,
    VAL_LOSS_ATTR,
)
from archscale.search.devices import (
    assign_devices,
    local_devices,
    pin_to_cores,
    worker_environ,
)
from archscale.search.outages import StorageUnavailable
from archscale.search.recovery import (
    ConfigTries,
    fail_and_retry,
    given_up,
    owner_info,
    recover_stale,
)
from archscale.search.spool import Spool
from archscale.search.study import StudyHandle, enqueue_missing, open_study
from archscale.search.trial_process import TrialProcess, TrialProcessDied
from archscale.search.worker_options import STORAGE_LOST
from archscale.search.worker_options import WorkerOptions as WorkerOptions  # its home


def _counted(trial: FrozenTrial) -> bool:
    """Whether a trial uses up the search budget (crashed ones do not: their retry does)."""
    return trial.state != TrialState.FAIL or STATUS_ATTR in trial.user_attrs


def claim(handle: StudyHandle, config_key: str | None = None) -> optuna.Trial | None:
    """Move one trial of the study (of ``config_key`` only, if given) to RUNNING for this worker,
    or None if there is none to run."""
    study, storage = handle.study, handle.storage
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if config_key is not None:
        waiting = [t for t in waiting if t.user_attrs.get(CONFIG_KEY_ATTR) == config_key]
    if handle.is_grid or config_key is not None:
        for trial in waiting:
            try:
                if storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                    return optuna.Trial(study, trial._trial_id)
            except UpdateFinishedTrialError:
                continue
        return None
    used = sum(_counted(t) for t in study.get_trials(deepcopy=False))
    if not waiting and used >= handle.sweep.search.n_trials:
        return None
    with warnings.catch_warnings():
        # We beat for the trial ourselves (recovery.Heartbeat), as optimize() would.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def describe(trial: FrozenTrial) -> str:
    """One line about a finished trial."""
    attrs, spec = trial.user_attrs, trial.user_attrs.get(SPEC_ATTR) or {}
    shape = (f"N={attrs[N_ATTR]:,} d={spec['d_model']} L={spec['n_layers']} "
             f"h={spec['n_heads']}/{spec['n_kv_heads']} ff={spec['d_ff']}") if N_ATTR in attrs else ""
    loss = f" loss={attrs[VAL_LOSS_ATTR]:.4f}" if attrs.get(VAL_LOSS_ATTR) is not None else ""
    decode = (f" decode={attrs[DECODE_ATTR]:,.0f} tok/s"
              if attrs.get(DECODE_ATTR) is not None else "")
    took = (trial.datetime_complete - trial.datetime_start).total_seconds() if (
        trial.datetime_complete and trial.datetime_start) else 0.0
    status = attrs.get(STATUS_ATTR, trial.state.name.lower())
    message = (f" ({attrs[MESSAGE_ATTR]})" if attrs.get(MESSAGE_ATTR) and status != "complete"
               else "")
    return (f"trial {trial.number} {status}: {shape}{loss}{decode} [{took:.1f} s, "
            f"pid {os.getpid()}]{message}")


def run_worker(name: str, url: str | None = None, options: WorkerOptions = WorkerOptions(),
               *, echo: Callable[[str], None] | None = None,
               cores: list[int] | None = None) -> list[int]:
    """Run trials of a study, each in this worker's trial process, until the study is done (or
    ``options.max_trials``); their numbers. A storage outage longer than
    ``options.storage_wait_s`` stops it with ``StorageUnavailable`` saying how to resume."""
    if cores:
        pin_to_cores(cores)
    handle = open_study(name, url, wait_s=options.storage_wait_s)
    spool = Spool(storage_lib.artifact_dir(handle.url, options.artifacts) / "spool" / name)
    say = echo or (lambda line: None)
    proposer = _proposer(handle, options)
    ran: list[int] = []
    try:
        with TrialProcess(name, handle.url, options, owner_info()) as child:
            while options.max_trials is None or len(ran) < options.max_trials:
                for recovered in recover_stale(handle.study, handle.storage, options.grace,
                                               options.max_retries):
                    say(recovered.describe(options.max_retries))
                _record_spooled(handle, spool, child, say)
                trial = claim(handle)
                if trial is None:
                    if handle.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                        time.sleep(options.poll_s)  # others still run; one may die: its retry
                        continue
                    break
                if designed.is_step(trial):  # the engine refits in this process, not the child
                    designed.run_step(handle, trial, proposer, options.heartbeat_s)
                    continue
                try:
                    child.run(trial._trial_id)
                except TrialProcessDied as died:
                    recovered = fail_and_retry(handle.study, handle.storage, trial._trial_id,
                                               died.reason, options.max_retries)
                    if recovered:  # else another worker judged it first
                        say(recovered.describe(options.max_retries))
                    continue
                ran.append(trial.number)
                say(describe(handle.storage.get_trial(trial._trial_id)))
    except StorageUnavailable as err:
        kept = f"; finished results are kept in {spool.folder}" if spool.pending() else ""
        raise StorageUnavailable(f"{err.what}{kept}: resume with `{handle.resume_command}` once "
                                 "it is back", err.driver) from None
    return ran


def _record_spooled(handle: StudyHandle, spool: Spool, child: TrialProcess,
                    say: Callable[[str], None]) -> None:
    """Record the results kept while the storage was down, each on a waiting try of its config
    (once the stopped trial is recovered); drop those whose config completed anyway."""
    for kept in spool.pending():
        done = handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if any(t.user_attrs.get(CONFIG_KEY_ATTR) == kept.config_key for t in done):
            kept.path.unlink(missing_ok=True)
            continue
        trial = claim(handle, kept.config_key)
        if trial is None:
            continue  # its trial still counts as running: once recovered, its retry waits
        child.record(trial._trial_id, kept.result)
        kept.path.unlink(missing_ok=True)
        say(f"trial {trial.number}: recorded the result trial {kept.trial} finished while the "
            f"storage was down ({kept.path.name})")


def _storage_lost(handle: StudyHandle, options: WorkerOptions) -> None:
    """Raise what the workers stopped for: the storage, unreachable past their wait."""
    try:
        storage_lib.open_storage(handle.url)
        driver = "(it answers again now)"
    except ArchscaleError as err:
        driver = str(err).splitlines()[-1]
    spool = storage_lib.artifact_dir(handle.url, options.artifacts) / "spool" / handle.name
    kept = f"; finished results are kept in {spool}" if any(spool.glob("*.json")) else ""
    raise StorageUnavailable(
        f"storage {handle.shown_url} stayed unreachable for {options.storage_wait_s:.0f} s"
        f"{kept}: resume with `{handle.resume_command}` once it is back", driver)


def _proposer(handle: StudyHandle, options: WorkerOptions) -> designed.Proposer | None:
    """A designed study's proposer (an error without one), else None."""
    if handle.sweep.design is None:
        return None
    if options.proposer is None:
        raise ArchscaleError(f"study {handle.name!r} is designed (design: in its sweep file): run "
                             "its workers with `archscale study run` or `archscale study worker`, "
                             "which load the design engine")
    return designed.load_proposer(options.proposer)


def _cores_args(cores: tuple[int, ...]) -> list[str]:
    return ["--cores", ",".join(map(str, cores))] if cores else []


def run_study(name: str, url: str | None = None, *, workers: int = 1,
              options: WorkerOptions = WorkerOptions(),
              echo: Callable[[str], None] | None = None) -> None:
    """Continue a study to its end with ``workers`` local processes (1: in this process)."""
    handle = open_study(name, url, wait_s=options.storage_wait_s)
    with storage_lib.creation_lock(handle.storage, handle.url, name):
        enqueue_missing(handle, handle.planned_runs())  # an interrupted `study create`
        if handle.sweep.design is not None:
            designed.ensure_step(handle)
    if workers > 1 and storage_lib.storage_kind(handle.url) == "sqlite":
        raise SettingError("SQLite storage takes one worker: use the default journal file "
                           "({url} archscale.journal) or PostgreSQL for {workers} > 1")
    if workers == 1:
        run_worker(name, handle.url, options, echo=echo)
    else:
        _run_processes(handle, options, workers, echo)
    gone = given_up(handle.study)
    if gone:
        raise GaveUpError(_gave_up_message(handle, gone, options.max_retries))


class GaveUpError(SettingError):
    """Configs of a study were tried ``1 + max_retries`` times, their worker dying each time."""


def _gave_up_message(handle: StudyHandle, gone: list[ConfigTries], max_retries: int) -> str:
    lines = [f"{len(gone)} planned run(s) of study {handle.name!r} never finished: the worker "
             f"died on every try ({{max_retries}} {max_retries})"]
    for config in gone:
        lines.append(f"config {config.config_key}:")
        lines += [f"  try {i} (trial {t['trial']}): {t['reason']}"
                  for i, t in enumerate(config.tries, 1)]
    keys = " ".join(c.config_key for c in gone)
    lines.append(f"re-queue: archscale study requeue {handle.name} {keys} --storage "
                 f"{handle.shown_url}, then {handle.resume_command}")
    return "\n".join(lines)


def _run_processes(handle: StudyHandle, options: WorkerOptions, workers: int,
                   echo: Callable[[str], None] | None) -> None:
    """Run ``workers`` local worker processes to their end."""
    name = handle.name
    plan = assign_devices(local_devices(), workers)
    if echo:
        echo("workers: " + "; ".join(f"{i} on {w.label}" for i, w in enumerate(plan.workers)))
    if plan.note and echo:
        echo(f"note: {plan.note}")
    elif plan.note:
        warnings.warn(plan.note, stacklevel=2)
    command = [sys.executable, "-m", "archscale.search.worker_process", name,
               *options.process_args()]
    env = {**os.environ, environment.STORAGE: handle.url}  # not argv: `ps` shows argv
    procs = [subprocess.Popen([*command, *_cores_args(w.cores)], env=worker_environ(env, w))
             for w in plan.workers]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    if any(codes) and all(code in (0, STORAGE_LOST) for code in codes):
        _storage_lost(handle, options)
    failed = [f"worker {i} (pid {p.pid}) exited with {code}"
              for i, (p, code) in enumerate(zip(procs, codes, strict=True)) if code]
    if failed:
        raise ArchscaleError("; ".join(failed) + ": see its output above, then rerun "
                             f"`{handle.resume_command}` to continue")

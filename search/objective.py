"""One trial: plan the run, refuse a duplicate, train, measure throughput, record, tell.

What a trial holds when it ends (the layout laws/ and ``search.table`` read):

* user attrs ``config_key``, ``spec``, ``budget`` (and ``seed`` on a ``noise:`` repeat): the
  planned run;
* ``result``: the whole RunResult (``RunResult.to_dict()``, loss curve, throughput and, with a
  ``passk:`` key, pass@k included;
  a shape is timed once per study: a later run of it, at another budget or seed, copies the
  measurement and names its trial in ``throughput_of_trial``);
* ``status`` and ``message``, plus ``N``, ``D``, ``val_loss``, ``decode_tokens_per_s`` flat, for
  optuna-dashboard's tables;
* the loss curve as a JSON artifact (``loss_curve_artifact`` is its id) in the artifact store;
* with ``checkpoints: true``, the run's checkpoints in ``<artifacts>/checkpoints/<study>/<key>``:
  a retried trial resumes from them.

The trial's state follows ``search.study``'s rules: COMPLETE with values, PRUNED, or FAIL with a
``status`` naming the run's outcome.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from archscale.arch.errors import ArchscaleError
from archscale.search.attrs import (
    CONFIG_KEY_ATTR,
    D_ATTR,
    DECODE_ATTR,
    DUPLICATE_OF_ATTR,
    LOSS_CURVE_ATTR,
    MESSAGE_ATTR,
    N_ATTR,
    OWNER_ATTR,
    RESULT_ATTR,
    STATUS_ATTR,
    THROUGHPUT_OF_ATTR,
    VAL_LOSS_ATTR,
)
from archscale.search.outages import StorageUnavailable
from archscale.search.plan import PlannedRun, planned_from_attrs, suggest_grid_params, suggest_run
from archscale.search.recovery import Heartbeat, fail_and_retry, owner_info
from archscale.search.spool import Spool
from archscale.search.study import StudyHandle
from archscale.sweeps.data import TokenData
from archscale.sweeps.passk import PasskSettings, run_passk, weights_folder
from archscale.sweeps.results import RunResult
from archscale.sweeps.tasks import default_task_path
from archscale.sweeps.throughput import measure_throughput
from archscale.sweeps.trainer import train

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRunner:
    """Runs claimed trials of one study in this process."""

    handle: StudyHandle
    """The opened study."""
    data: TokenData
    """The study's data (already checked against its fingerprint)."""
    artifacts: FileSystemArtifactStore
    """Where loss curves go."""
    artifact_dir: Path
    """The artifact store's folder (checkpoints live under it)."""
    heartbeat_s: float
    """Seconds between heartbeats of a running trial."""
    spool: Spool
    """Where a finished result goes when the storage is down (recorded on resume)."""
    progress: bool = True
    """Show the trainer's progress bar."""
    owner: dict[str, Any] | None = None
    """Whom trials are recorded as run by: the worker that supervises this trial process
    (``search.trial_process``), which outlives a crash of it; None: this process."""

    def run(self, trial: optuna.Trial) -> TrialState:
        """Run a trial this worker claimed (RUNNING) to its end; its final state."""
        storage = self.handle.storage
        storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, self.owner or owner_info())
        with Heartbeat(storage, trial._trial_id, self.heartbeat_s) as beat:
            try:
                return self._run(trial, beat)
            except UpdateFinishedTrialError:
                _log.warning("trial %d was taken over by another worker (this one looked dead): "
                             "its result is discarded, the retry counts", trial.number)
                return storage.get_trial(trial._trial_id).state
            except KeyboardInterrupt:
                # abandoned: re-queued as for a dead worker (interrupts are not limited)
                fail_and_retry(self.handle.study, storage, trial._trial_id, "interrupted", None)
                raise
            except StorageUnavailable:
                raise  # the worker stops; the trial is recovered (its result spooled) on resume
            except Exception as err:  # a bug in one run must not stop the worker: record it
                _log.exception("trial %d failed", trial.number)
                self._set_attrs(trial, **{STATUS_ATTR: "failed",
                                           MESSAGE_ATTR: f"{type(err).__name__}: {err}"})
                self.handle.study.tell(trial, state=TrialState.FAIL)
                return TrialState.FAIL

    # ---- the steps -------------------------------------------------------------------------------
    def _run(self, trial: optuna.Trial, beat: Heartbeat) -> TrialState:
        sweep = self.handle.sweep
        try:
            planned = self._plan(trial)
        except ArchscaleError as err:
            self._set_attrs(trial, **{STATUS_ATTR: "failed", MESSAGE_ATTR: str(err)})
            self.handle.study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL
        twin = self._completed_twin(planned.key, trial.number)
        if twin is not None:
            return self._finish_duplicate(trial, twin)
        task = None if sweep.task is None else (
            default_task_path() if sweep.task == "default" else sweep.task)
        checkpoint_dir = (self.artifact_dir / "checkpoints" / self.handle.name / planned.key
                          if sweep.checkpoints else None)
        passk = sweep.passk_settings
        passk = passk if passk is not None and passk.samples_run(planned.params) else None
        with weights_folder(checkpoint_dir, passk is not None) as checkpoint_dir:
            result = train(planned.spec, planned.budget, sweep.recipe_obj, self.data,
                           planned.run_seed(sweep.seed),
                           checkpoint_dir=checkpoint_dir, report=self._reporter(trial, beat),
                           task=task, progress=self.progress, mesh=sweep.mesh)
            if result.status == "complete" and passk is not None:
                result = result.replace(passk=self._passk(trial, result, checkpoint_dir, passk))
        if result.status == "complete" and sweep.throughput.enabled:
            result = result.replace(throughput=self._throughput(trial, planned))
        try:
            return self._finish(trial, planned, result)
        except StorageUnavailable:
            path = self.spool.keep(trial.number, planned.key, result.to_dict())
            _log.warning("trial %d finished while the storage is down: its result is kept in %s "
                         "and recorded when the study resumes", trial.number, path)
            raise

    def record(self, trial: optuna.Trial, result: RunResult) -> TrialState:
        """Record a result kept in the spool on a trial this worker claimed (a try of the same
        config), as if it had just been run there."""
        self.handle.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR,
                                                  self.owner or owner_info())
        return self._finish(trial, self._plan(trial), result)

    def _passk(self, trial: optuna.Trial, result: RunResult, checkpoint_dir: Path | None,
               settings: PasskSettings) -> dict[str, Any]:
        """The run's pass@k; if sampling fails after training, the trained run is kept and its
        pass@k says why it is missing (passk_table leaves it out), rather than the whole run
        being lost to a retry."""
        try:
            return run_passk(result, checkpoint_dir, self.data, settings)
        except ArchscaleError as err:
            _log.warning("trial %d: pass@k failed after training, the run is kept without it: %s",
                         trial.number, err)
            return {"error": str(err)}

    def _throughput(self, trial: optuna.Trial, planned: PlannedRun) -> dict[str, Any]:
        """The shape's throughput: measured now, or taken from the COMPLETE trial that measured
        this shape before (another budget or seed of it; random weights are timed, so the
        figure is the shape's own), which ``throughput_of_trial`` then names."""
        spec = planned.spec.to_dict()
        for other in self.handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            earlier = other.user_attrs.get(RESULT_ATTR) or {}
            if earlier.get("spec") == spec and earlier.get("throughput"):
                trial.set_user_attr(THROUGHPUT_OF_ATTR,
                                    other.user_attrs.get(THROUGHPUT_OF_ATTR, other.number))
                return earlier["throughput"]
        sweep = self.handle.sweep
        return measure_throughput(planned.spec, **sweep.throughput_options(),
                                  seed=sweep.seed).to_dict()

    def _plan(self, trial: optuna.Trial) -> PlannedRun:
        """The run a trial stands for: enqueued/retried (in its attrs) or suggested now."""
        if self.handle.is_grid:
            suggest_grid_params(trial, self.handle.sweep)
        planned = planned_from_attrs(trial)
        if planned is None:
            if self.handle.is_grid:
                raise ArchscaleError(f"grid trial {trial.number} carries no planned run")
            planned = suggest_run(trial, self.handle.sweep, self.handle.vocab_size)
            for key, value in planned.user_attrs().items():
                trial.set_user_attr(key, value)
        return planned

    def _completed_twin(self, key: str, number: int) -> int | None:
        """The number of a COMPLETE trial with this config key (other than ``number``)."""
        for other in self.handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.number != number and other.user_attrs.get(CONFIG_KEY_ATTR) == key:
                return other.number
        return None

    def _reporter(self, trial: optuna.Trial, beat: Heartbeat):
        single = len(self.handle.sweep.directions) == 1
        storage_down = False

        def report(step: int, tokens: int, val_loss: float) -> bool:
            nonlocal storage_down
            # Optuna's intermediate values and pruners are single-objective only.
            if single and not storage_down:
                try:
                    trial.report(val_loss, step)
                    if trial.should_prune():
                        return True
                except StorageUnavailable:  # train on: the result is kept, and recorded later
                    storage_down = True
            return beat.lost

        return report

    # ---- recording -------------------------------------------------------------------------------
    def _set_attrs(self, trial: optuna.Trial, **attrs: Any) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _finish_duplicate(self, trial: optuna.Trial, twin: int) -> TrialState:
        self._set_attrs(trial, **{STATUS_ATTR: "duplicate", DUPLICATE_OF_ATTR: twin, MESSAGE_ATTR:
                                   f"same shape and budget as COMPLETE trial {twin}: not retrained"})
        self.handle.study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED

    def _finish(self, trial: optuna.Trial, planned: PlannedRun, result: RunResult) -> TrialState:
        study, sweep = self.handle.study, self.handle.sweep
        throughput = result.throughput or {}
        self._set_attrs(trial, **{RESULT_ATTR: result.to_dict(), STATUS_ATTR: result.status,
                                   MESSAGE_ATTR: result.message, N_ATTR: planned.spec.params_nonembed,
                                   D_ATTR: result.tokens, VAL_LOSS_ATTR: result.val_loss,
                                   DECODE_ATTR: throughput.get("decode_tokens_per_s")})
        self._upload_curve(trial, result)
        target = sweep.search.target_loss if sweep.search is not None else None
        if target is not None and result.val_loss is not None:  # pruned runs: the last loss
            trial.set_constraint("target_loss", result.val_loss - target)
        if result.status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        if result.status != "complete" or result.val_loss is None:
            study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL
        twin = self._completed_twin(planned.key, trial.number)  # a twin may have finished meanwhile
        if twin is not None:
            return self._finish_duplicate(trial, twin)
        values = {"loss": result.val_loss, "decode_throughput": throughput.get("decode_tokens_per_s")}
        objectives = sweep.search.objectives if sweep.search is not None else ["loss"]
        study.tell(trial, [values[name] for name in objectives])
        return TrialState.COMPLETE

    def _upload_curve(self, trial: optuna.Trial, result: RunResult) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"loss_curve_trial{trial.number}.json"
            path.write_text(json.dumps(result.loss_curve))
            artifact_id = upload_artifact(artifact_store=self.artifacts, file_path=str(path),
                                          study_or_trial=trial, mimetype="application/json")
        trial.set_user_attr(LOSS_CURVE_ATTR, artifact_id)


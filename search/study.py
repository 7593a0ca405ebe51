"""Create and open studies: the study name and storage are enough to reconstruct everything.

``create_study`` validates the sweep file, loads the data (for its vocabulary and fingerprint),
plans every grid run, and only then creates the Optuna study, stores the validated sweep and the
data fingerprint in the study's user attrs and enqueues each planned run once (a fixed trial
carrying its config key, spec and budget). Creating it again with the same file continues it:
nothing is enqueued twice, and runs missing from an interrupted creation are added.

How trials end (what laws/ and ``search.table`` rely on):

* COMPLETE: the run finished; values are [loss] or [loss, decode tokens/s].
* PRUNED: stopped on intermediate loss (user attr ``status`` "pruned"), or a duplicate of a
  config key that already has a COMPLETE trial (``status`` "duplicate", ``duplicate_of``).
* FAIL with user attr ``status`` (diverged, oom, failed) and ``message``: the run's own outcome,
  recorded with its RunResult, never retried.
* FAIL without ``status`` (system attr ``archscale:stale``, or Optuna's heartbeat): its worker
  died; a WAITING copy was enqueued and runs again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.search import designed
from archscale.search import storage as storage_lib
from archscale.search.attrs import (
    CONFIG_KEY_ATTR,
    DATA_SOURCE_ATTR,
    FINGERPRINT_ATTR,
    KIND_ATTR,
    SWEEP_ATTR,
    VOCAB_ATTR,
)
from archscale.search.plan import PlannedRun, check_search, plan_grid
from archscale.search.samplers import make_pruner, make_sampler
from archscale.search.sweepfile import SweepFile, load_sweep, parse_sweep
from archscale.sweeps.data import TokenData, load_data

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyHandle:
    """An opened study with what it was created from."""

    study: optuna.Study
    """The Optuna study (its sampler and pruner come from the sweep)."""
    storage: BaseStorage
    """The storage object itself (heartbeats and trial states go through it)."""
    url: str
    """The storage URL as the user gave it (``storage.locate``), password included: show or
    save ``shown_url`` instead."""
    sweep: SweepFile
    """The validated sweep file the study was created from."""

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def shown_url(self) -> str:
        """The storage URL as it may be shown, logged or saved: its password hidden."""
        return storage_lib.display_url(self.url)

    @property
    def resume_command(self) -> str:
        """The command that continues this study, its storage included."""
        return f"archscale study run {self.name} --storage {self.shown_url}"

    @property
    def vocab_size(self) -> int:
        return int(self.study.user_attrs[VOCAB_ATTR])

    @property
    def is_grid(self) -> bool:
        return self.sweep.grid is not None

    def load_data(self) -> TokenData:
        """The study's data, refusing a corpus or tokenizer that changed since creation."""
        data = load_data(self.sweep.corpus, self.sweep.tokenizer)
        expected = self.study.user_attrs[FINGERPRINT_ATTR]
        if data.fingerprint != expected:
            raise ArchscaleError(
                f"the data of study {self.name!r} changed since it was created (fingerprint "
                f"{data.fingerprint[:12]} != {expected[:12]}): restore corpus {self.sweep.corpus!r}"
                " or create a new study")
        return data

    def planned_runs(self) -> list[PlannedRun]:
        """The runs enqueued up front: a grid's (a designed study's are picked as it goes)."""
        return plan_grid(self.sweep, self.vocab_size) if self.is_grid and not self.sweep.design else []


def study_names(storage: BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


def _sweep_of(storage: BaseStorage, name: str, url: str) -> SweepFile:
    try:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:
        known = ", ".join(study_names(storage)) or "none"
        raise SettingError(f"no study {name!r} in {storage_lib.display_url(url)} (studies there: "
                           f"{known}): create it with `archscale study create FILE`, or point "
                           "{url} at the storage that holds it") from None
    if SWEEP_ATTR not in attrs:
        raise ArchscaleError(f"study {name!r} in {storage_lib.display_url(url)} was not created by archscale (no sweep in "
                             "its user attrs)")
    return parse_sweep(attrs[SWEEP_ATTR], source=f"the sweep stored in study {name!r}")


def open_study(name: str, url: str | None = None, *, wait_s: float = 0) -> StudyHandle:
    """Open an existing study by name (its sweep, sampler and pruner come from its user attrs);
    ``wait_s``: ride out storage outages that long (``storage.open_storage``)."""
    url = storage_lib.locate(url)
    if storage_lib.storage_kind(url) == "journal" and not Path(url).is_file():
        raise SettingError(f"no study storage at {url}: create a study first "
                           "(`archscale study create FILE`) or point {url} at one")
    storage = storage_lib.open_storage(url, wait_s=wait_s)
    return _handle(storage, url, name)


def _handle(storage: BaseStorage, url: str, name: str) -> StudyHandle:
    sweep = _sweep_of(storage, name, url)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(sweep),
                              pruner=make_pruner(sweep))
    return StudyHandle(study, storage, url, sweep)


def _validate(sweep: SweepFile) -> tuple[TokenData, list[PlannedRun]]:
    """Everything that can be checked before a study exists: data, shapes, search space, the
    pass@k task."""
    if sweep.task is not None and sweep.task != "default" and not Path(sweep.task).is_file():
        raise ArchscaleError(f"task: {sweep.task} is not a file: give a .jsonl task, 'default' "
                             "or null")
    make_sampler(sweep)  # e.g. gp without torch
    if sweep.passk_settings is not None:  # its task and context, before any run trains
        sweep.passk_settings.check(sweep.seq_len)
    data = load_data(sweep.corpus, sweep.tokenizer)
    if sweep.grid is not None:
        runs = plan_grid(sweep, data.vocab_size)  # a designed study's candidates: checked too
        return data, [] if sweep.design else runs
    check_search(sweep, data.vocab_size)
    return data, []


def create_study(sweep: SweepFile | str | Path, url: str | None = None) -> StudyHandle:
    """Validate, create (or continue) and enqueue the study a sweep file describes."""
    if not isinstance(sweep, SweepFile):
        sweep = load_sweep(sweep)
    data, runs = _validate(sweep)
    url = storage_lib.locate(url)
    storage = storage_lib.open_storage(url)
    with storage_lib.creation_lock(storage, url, sweep.name):
        handle = _create_or_check(sweep, data, storage, url)
        enqueue_missing(handle, runs)
        if sweep.design is not None:
            designed.ensure_step(handle)
    return handle


def _create_or_check(sweep: SweepFile, data: TokenData, storage: BaseStorage, url: str
                     ) -> StudyHandle:
    """The study of ``sweep``: created, or found with the same sweep and data."""
    if sweep.name in study_names(storage):
        stored = _sweep_of(storage, sweep.name, url)
        if stored != sweep:
            raise SettingError(
                f"study {sweep.name!r} already exists in {storage_lib.display_url(url)} with a "
                "different sweep file: give the new sweep another name:, or use another {url}")
        handle = _handle(storage, url, sweep.name)
        if handle.study.user_attrs[FINGERPRINT_ATTR] != data.fingerprint:
            raise ArchscaleError(f"study {sweep.name!r} was created on different data: restore "
                                 "the corpus or rename the study")
    else:
        study = optuna.create_study(study_name=sweep.name, storage=storage,
                                    directions=sweep.directions, sampler=make_sampler(sweep),
                                    pruner=make_pruner(sweep))
        attrs: dict[str, Any] = {VOCAB_ATTR: data.vocab_size, FINGERPRINT_ATTR: data.fingerprint,
                                 DATA_SOURCE_ATTR: data.source, KIND_ATTR: "grid" if sweep.grid else "search",
                                 SWEEP_ATTR: sweep.to_dict()}
        # The sweep goes last: a study interrupted before it is visibly incomplete (open refuses).
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        handle = StudyHandle(study, storage, url, sweep)
    return handle


def enqueue_missing(handle: StudyHandle, runs: list[PlannedRun]) -> int:
    """Enqueue each planned run that no trial of the study carries yet; how many were added.
    Call it holding ``storage.creation_lock``."""
    present = {t.user_attrs.get(CONFIG_KEY_ATTR) for t in handle.study.get_trials(deepcopy=False)}
    added = 0
    for run in runs:
        if run.key not in present:
            handle.study.enqueue_trial(run.params, user_attrs=run.user_attrs())
            added += 1
    if added:
        _log.info("study %s: enqueued %d planned runs", handle.name, added)
    return added


def progress_counts(handle: StudyHandle) -> dict[str, int]:
    """Trials by state name, and 'planned' (grid runs) or 'n_trials' (search budget)."""
    counts: dict[str, int] = {s.name: 0 for s in TrialState}
    for trial in handle.study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    if handle.sweep.design is not None:
        counts["picked"] = sum(designed.DESIGN_PICK_ATTR in t.user_attrs
                               for t in handle.study.get_trials(deepcopy=False))
    elif handle.is_grid:
        counts["planned"] = len(handle.planned_runs())
    else:
        counts["n_trials"] = handle.sweep.search.n_trials
    return counts

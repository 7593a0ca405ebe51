"""Crash recovery: heartbeats of running trials, finding trials whose worker died, retrying them.

Every running trial records its owner (host, pid, process start time) and beats while it trains:

* RDB storages (SQLite, PostgreSQL): Optuna's own heartbeat (``storage.record_heartbeat``); a
  trial silent for the grace period is failed by ``optuna.storages.fail_stale_trials`` and
  re-enqueued by ``RetryStaleTrial``, the storage's heartbeat-stale callback.
* the journal file, where Optuna has no heartbeat: the beat is a system attr, and a RUNNING trial
  is stale when its owner runs on this host and is gone (checked at once: pid, start time,
  zombie), or when its last beat (or its start) is older than the grace period (other hosts).
  The first worker to mark it FAIL wins (the journal rejects a second finish) and re-enqueues it.

The retried copy keeps the trial's parameters and its planned run (``attrs.PLAN_ATTRS``), never the
dead worker's owner, heartbeat or partial results, so the retry starts clean. A planned run
therefore is never lost while any worker lives; that none completes twice is the worker's check
(no COMPLETE trial may share a config key) and the journal's refusal to finish a trial twice.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from archscale.search.attrs import HEARTBEAT_ATTR, OWNER_ATTR, PLAN_ATTRS, STALE_ATTR

MAX_RETRIES = 3
"""A trial whose worker dies this many times is left failed instead of retried again."""
_log = logging.getLogger(__name__)


@cache
def host_id() -> str:
    """This machine: hostname plus boot id (two containers may share a hostname, not a boot)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, from /proc (Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def owner_info() -> dict[str, Any]:
    """Who runs a trial: this process, identified beyond its pid (pids are reused)."""
    stat = _proc_stat(os.getpid())
    return {"host": host_id(), "pid": os.getpid(), "start": stat[1] if stat else None}


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """True/False for an owner on this host; None when it runs elsewhere (ask the heartbeat)."""
    if owner.get("host") != host_id():
        return None
    pid = int(owner["pid"])
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        # A SIGKILLed child its parent has not reaped yet is a zombie: dead for our purpose.
        return state not in ("Z", "X") and owner.get("start") in (None, start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_optuna_heartbeat(storage: BaseStorage) -> bool:
    """Whether Optuna itself tracks heartbeats on this (unwrapped) storage."""
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


class Heartbeat:
    """Beats for one running trial from a background thread until closed.

    ``lost`` turns True when the storage refuses a beat because another worker finished the
    trial (it judged this worker dead): the run should stop, its result would be refused anyway.
    """

    def __init__(self, storage: BaseStorage, trial_id: int, interval_s: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.lost = False
        self._beat()
        self._thread = threading.Thread(target=self._run, name="archscale-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        try:
            if has_optuna_heartbeat(self._storage):
                self._storage.record_heartbeat(self._trial_id)
            else:
                self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            self.lost = True
        if not self.lost and self._storage.get_trial(self._trial_id).state.is_finished():
            self.lost = True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s) and not self.lost:
            try:
                self._beat()
            except Exception as err:  # a storage hiccup must not kill the run; the next beat retries
                _log.warning("heartbeat of trial id %s failed: %s", self._trial_id, err)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Re-enqueue a trial whose worker died: same parameters and planned run, nothing else."""

    def __init__(self, max_retry: int | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in PLAN_ATTRS}
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items()
                              if not k.startswith(("archscale:", "constraints"))}
        super().__call__(study, clean)


def stale_reason(trial: FrozenTrial, grace_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING journal trial is stale, or None while its worker may still be at work."""
    owner = trial.system_attrs.get(OWNER_ATTR)
    if owner is not None:
        alive = owner_alive(owner)
        if alive is not None:
            return None if alive else f"worker pid {owner['pid']} on {owner['host']} is gone"
    beats = [trial.system_attrs.get(HEARTBEAT_ATTR) or 0.0]
    if trial.datetime_start is not None:
        beats.append(trial.datetime_start.timestamp())
    silent = (time.time() if now is None else now) - max(beats)
    return f"no heartbeat for {silent:.0f} s" if silent > grace_s else None


def recover_stale(study: optuna.Study, storage: BaseStorage, grace_s: float) -> list[int]:
    """Fail and re-enqueue the study's trials whose worker died; their numbers.

    RDB: Optuna's ``fail_stale_trials`` (which calls the storage's RetryStaleTrial). Journal: the
    owner/heartbeat rule above, with the same retry.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if has_optuna_heartbeat(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return [t.number for t in running if storage.get_trial(t._trial_id).state == TrialState.FAIL]
    recovered = []
    retry = RetryStaleTrial(MAX_RETRIES)
    for trial in running:
        reason = stale_reason(trial, grace_s)
        if reason is None:
            continue
        try:
            storage.set_trial_system_attr(trial._trial_id, STALE_ATTR, reason)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker recovered it first (or it just finished)
        retry(study, storage.get_trial(trial._trial_id))
        recovered.append(trial.number)
    return recovered



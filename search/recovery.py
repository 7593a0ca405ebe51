from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from archscale.search.attrs import (
    CONFIG_KEY_ATTR,
    HEARTBEAT_ATTR,
    OWNER_ATTR,
    PLAN_ATTRS,
    STALE_ATTR,
    STATUS_ATTR,
    TRIES_ATTR,
)

_log = logging.getLogger(__name__)


def default_grace(heartbeat_s: float) -> int:
    """Silence after which a trial on another host counts as dead: two missed beats and 10 s."""
    return int(2 * heartbeat_s + 10)


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
            self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
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


def stale_reason(trial: FrozenTrial, grace_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial is stale, or None while its worker may still be at work."""
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


def tries_of(trial: FrozenTrial) -> list[dict[str, Any]]:
    """Every try of a stopped trial's config so far, this one last: ``{"trial", "reason"}``."""
    reason = trial.system_attrs.get(STALE_ATTR) or f"ended {trial.state.name}"
    return [*trial.system_attrs.get(TRIES_ATTR, []), {"trial": trial.number, "reason": reason}]


def retry(study: optuna.Study, trial: FrozenTrial, max_retries: int | None,
          tries: list[dict[str, Any]] | None = None) -> bool:
    """Enqueue a clean copy of a stopped trial: same parameters and planned run, no owner,
    heartbeat or partial results, and ``tries`` (default: its config's tries so far). False, and
    nothing enqueued, when those tries already exceed ``max_retries`` retries (None: no limit)."""
    tries = tries_of(trial) if tries is None else tries
    if max_retries is not None and len(tries) > max_retries:
        return False
    system_attrs = {k: v for k, v in trial.system_attrs.items()
                    if not k.startswith(("archscale:", "constraints"))}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k in PLAN_ATTRS},
        system_attrs={**system_attrs, TRIES_ATTR: tries}))
    return True


def mark_stale(storage: BaseStorage, trial_id: int, reason: str) -> bool:
    """Fail a RUNNING trial whose worker stopped, recording why; False when another worker did it
    first (or the trial just finished)."""
    try:
        storage.set_trial_system_attr(trial_id, STALE_ATTR, reason)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


@dataclass(frozen=True)
class Recovered:
    """A trial this worker found stale, failed and (within the limit) re-queued."""

    number: int
    """The stale trial's number."""
    reason: str
    """Why it was stale."""
    tries: int
    """Tries of its config so far, this one included."""
    retried: bool
    """Whether a retry was enqueued (False: the retry limit is reached)."""

    def describe(self, max_retries: int | None) -> str:
        """One line for the worker's output."""
        limit = "" if max_retries is None else f" of {max_retries + 1}"
        then = (f"it runs again (try {self.tries + 1}{limit})" if self.retried else
                f"not retried: its config was tried {self.tries} times (--max-retries "
                f"{max_retries})")
        return f"trial {self.number}: {self.reason}; {then}"


def fail_and_retry(study: optuna.Study, storage: BaseStorage, trial_id: int, reason: str,
                   max_retries: int | None) -> Recovered | None:
    """Fail a RUNNING trial that stopped for ``reason`` and re-queue it (up to ``max_retries``
    retries); None when another worker did so first (or it just finished)."""
    if not mark_stale(storage, trial_id, reason):
        return None
    failed = storage.get_trial(trial_id)
    retried = retry(study, failed, max_retries)
    return Recovered(failed.number, reason, len(tries_of(failed)), retried)


def recover_stale(study: optuna.Study, storage: BaseStorage, grace_s: float,
                  max_retries: int | None) -> list[Recovered]:
    """Fail the study's trials whose worker died and re-queue them (up to ``max_retries``
    retries); those this worker recovered (another worker's recoveries are not repeated)."""
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial, grace_s)
        if reason is not None:
            done = fail_and_retry(study, storage, trial._trial_id, reason, max_retries)
            recovered += [done] if done else []
    return recovered


def _stopped(trial: FrozenTrial) -> bool:
    """Whether a trial was stopped by its worker's death (FAIL without a run outcome)."""
    return trial.state == TrialState.FAIL and STATUS_ATTR not in trial.user_attrs


@dataclass(frozen=True)
class ConfigTries:
    """The tries of one config that was retried, or given up on."""

    config_key: str
    """The config."""
    latest: FrozenTrial
    """Its latest trial (a given-up config's last failed one)."""
    tries: list[dict[str, Any]]
    """Its earlier tries, oldest first (a given-up config's include the last)."""


def retried_configs(study: optuna.Study) -> list[ConfigTries]:
    """Configs tried more than once, by their latest trial (for ``study status``)."""
    return [ConfigTries(t.user_attrs.get(CONFIG_KEY_ATTR, "?"), t, t.system_attrs[TRIES_ATTR])
            for t in study.get_trials(deepcopy=False)
            if t.system_attrs.get(TRIES_ATTR) and not _stopped(t)]


def given_up(study: optuna.Study) -> list[ConfigTries]:
    """Configs whose last try was stopped by a dead worker and not re-queued (the retry limit),
    and that no trial completed or still runs or waits to run."""
    trials = study.get_trials(deepcopy=False)
    retried = {t["trial"] for trial in trials for t in trial.system_attrs.get(TRIES_ATTR, [])}
    alive = {t.user_attrs.get(CONFIG_KEY_ATTR) for t in trials if not _stopped(t)}
    return [ConfigTries(t.user_attrs.get(CONFIG_KEY_ATTR, "?"), t, tries_of(t)) for t in trials
            if _stopped(t) and t.number not in retried
            and t.user_attrs.get(CONFIG_KEY_ATTR) not in alive]


def requeue(study: optuna.Study, config_keys: list[str]) -> list[str]:
    """Enqueue a fresh try (its retry count starts again) of each given-up config named; the keys
    (or unique prefixes) that matched none."""
    gone = given_up(study)
    missing = []
    for key in config_keys:
        matches = [c for c in gone if c.config_key.startswith(key)]
        if len(matches) != 1:
            missing.append(key)
            continue
        retry(study, matches[0].latest, None, tries=[])
    return missing

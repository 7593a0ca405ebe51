"""Riding out an outage of a database storage: its calls are retried with backoff for a while.

A worker's storage (``open_storage(url, wait_s=...)``) retries every call that fails because the
server cannot be reached (a restart, a network cut, a failover): 1 s, 2 s, 4 s ... up to 30 s
apart, for ``wait_s`` seconds in all, saying once that it waits and once that the server is back.
Then it raises ``StorageUnavailable``, and later calls try once each, until one succeeds. Only
connection failures are retried: a query the server refuses fails at once, as before.

A call whose connection broke mid-commit may have been applied; each retried call is one of
Optuna's own operations, and the ones a worker repeats are safe to repeat: attrs are overwritten,
and a second finish of a trial is refused (``UpdateFinishedTrialError``), which a worker handles.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from archscale.arch.errors import ArchscaleError

MAX_BACKOFF_S = 30.0
"""The longest pause between two tries."""
T = TypeVar("T")
_log = logging.getLogger(__name__)


class StorageUnavailable(ArchscaleError):
    """The storage stayed unreachable for the whole wait: ``what`` happened, and the driver's
    last message on a line of its own."""

    def __init__(self, what: str, driver: str) -> None:
        super().__init__(f"{what}\n{driver}")
        self.what = what
        self.driver = driver


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the server could not be reached (rather than refusing a query)."""
    cause = err.__cause__ if isinstance(err, StorageInternalError) else err
    return isinstance(cause, OperationalError | InterfaceError) or (
        isinstance(cause, DBAPIError) and cause.connection_invalidated)


def driver_message(err: BaseException) -> str:
    """The database driver's own message, on one line."""
    cause = err.__cause__ if isinstance(err, StorageInternalError) and err.__cause__ else err
    orig = getattr(cause, "orig", None) or cause
    text = " ".join(line.strip() for line in str(orig).splitlines() if line.strip())
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__


class Patience:
    """Retries calls to one storage through an outage of up to ``wait_s`` seconds."""

    def __init__(self, shown: str, wait_s: float, hide: Callable[[str], str]) -> None:
        self.shown = shown
        """The storage's URL as it may be shown."""
        self.wait_s = wait_s
        """Seconds to keep retrying one call."""
        self._hide = hide
        self._spent = False  # the last call gave up: try once until the server answers again

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start: float | None = None
        delay = 1.0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as err:
                if not is_outage(err):
                    raise
                now = time.monotonic()
                if start is None:
                    start = now
                    if not self._spent:
                        _log.warning("storage %s is unreachable; retrying for up to %.0f s (%s)",
                                     self.shown, self.wait_s, self._hide(driver_message(err)))
                if self._spent or now - start + delay > self.wait_s:
                    self._spent = True
                    raise StorageUnavailable(
                        f"storage {self.shown} stayed unreachable for {self.wait_s:.0f} s",
                        self._hide(driver_message(err))) from None
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            if start is not None or self._spent:
                _log.warning("storage %s answers again", self.shown)
            self._spent = False
            return result


class PatientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every call (opening it too) rides out an outage: ``Patience``."""

    def __init__(self, url: str, patience: Patience, **kwargs: Any) -> None:
        self._patience = patience
        patience.call(super().__init__, url, **kwargs)


def _patient(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> T:
        return self._patience.call(method, self, *args, **kwargs)

    return call


_CACHE_CALLS = ("_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param")
"""RDBStorage's private operations that Optuna's cache in front of it (_CachedStorage) calls."""
# Every storage operation RDBStorage implements (BaseStorage's others are built on these).
for _name, _method in list(vars(RDBStorage).items()):
    if _name in _CACHE_CALLS or (not _name.startswith("_")
                                 and callable(getattr(BaseStorage, _name, None))):
        setattr(PatientRDBStorage, _name, _patient(_method))

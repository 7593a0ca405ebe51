"""The journal file, safe against a crash mid-write: Optuna's JournalFileBackend and lock, plus a
check of the file's tail whenever the lock is taken.

Optuna appends each batch of records as one write under its lock. A process killed inside that
write leaves a last line without its newline. Optuna's reader skips such a line, but its next
append would start on it, gluing a new record to the torn one: one invalid line that makes the
whole journal unreadable from then on.

So whoever takes the lock first (a process opening the journal, or the next writer) moves a torn
tail to the sidecar ``<journal>.torn``, truncates the journal back to its last newline and says so
in one warning line. Records before the tear are untouched; the trial the torn record described
is left RUNNING by a dead process, so ``search.recovery`` fails and retries it like any other
trial of a dead worker. A journal corrupted in the middle (by an older writer) is refused with
the line to move out, rather than Optuna's bare JSONDecodeError.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from archscale.arch.errors import ArchscaleError

LOCK_GRACE_S = 30
"""Seconds after which a lock left by a killed writer is broken (Optuna's default): a write holds
it for milliseconds."""
TORN_SUFFIX = ".torn"
"""Suffix of the sidecar file that keeps torn records, one per line."""
_TAIL_CHUNK = 1 << 16
_log = logging.getLogger(__name__)


def torn_tail_start(path: Path) -> int | None:
    """Where the journal's torn last record begins (after its last newline), or None when the
    file is empty or ends with a newline."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return None
        pos = end
        while pos > 0:
            step = min(_TAIL_CHUNK, pos)
            f.seek(pos - step)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                return pos - step + newline + 1
            pos -= step
        return 0


def set_aside_torn_tail(path: Path) -> Path | None:
    """Move a torn last record to the sidecar and truncate the journal before it; the sidecar, or
    None when the tail was whole. Call it holding the journal's lock."""
    start = torn_tail_start(path)
    if start is None:
        return None
    sidecar = path.with_name(path.name + TORN_SUFFIX)
    with open(path, "r+b") as journal:
        journal.seek(start)
        torn = journal.read()
        with open(sidecar, "ab") as aside:  # kept first: the bytes are never only in memory
            aside.write(torn + b"\n")
            aside.flush()
            os.fsync(aside.fileno())
        journal.truncate(start)
        journal.flush()
        os.fsync(journal.fileno())
    _log.warning("%s: its last record was cut off by a crash mid-write; its %d bytes are set "
                 "aside in %s, and the trial it described runs again", path, len(torn), sidecar)
    return sidecar


class TailCheckingLock(JournalFileSymlinkLock):
    """Optuna's symlink lock on the journal; on every acquire it sets aside a torn tail, so a
    write can never start on a partial line."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), grace_period=LOCK_GRACE_S)
        self._path = path

    def acquire(self) -> bool:
        super().acquire()
        try:
            set_aside_torn_tail(self._path)
        except BaseException:
            self.release()
            raise
        return True


class JournalFile(JournalFileBackend):
    """Optuna's journal file backend with ``TailCheckingLock``; a torn tail is set aside as the
    file is opened, before Optuna reads it."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        super().__init__(str(self._path), lock_obj=TailCheckingLock(self._path))
        try:
            self._lock.acquire()
        except (OSError, RuntimeError):  # a folder we may not write in: read only (as Optuna
            return                       # does, skipping a torn tail); a write would fail anyway
        self._lock.release()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        number = log_number_from
        try:
            for log in super().read_logs(log_number_from):
                yield log
                number += 1
        except ValueError as err:  # json.JSONDecodeError, or Optuna's "Invalid log format"
            raise ArchscaleError(
                f"{self._path}: line {number + 1} is not a whole record ({err}), so no record "
                f"after it can be read: move that line into another file and open the study "
                f"again (its trial then runs again)") from None

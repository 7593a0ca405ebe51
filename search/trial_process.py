"""Each worker runs its trials in a child process, so a trial that crashes the interpreter (a
segfault in a kernel, the kernel's out-of-memory kill) leaves the worker alive.

The worker (the parent) claims trials and supervises; the child (started with ``spawn``, once, and
again after a crash) opens the study, loads its data and runs each trial it is sent with
``objective.TrialRunner``: training, heartbeats and recording all happen there, and only the
parent's identity is recorded as the trial's owner. When the child dies, the parent records the
trial FAIL with the reason (the signal that killed it) and re-queues it under the retry limit
(``search.recovery``). When the parent dies, the kernel kills the child too (Linux
``PR_SET_PDEATHSIG``), and other workers recover the trial as any dead worker's.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from archscale.arch.errors import ArchscaleError
from archscale.interrupts import ctrl_c_after
from archscale.search.outages import StorageUnavailable

if TYPE_CHECKING:
    from archscale.search.objective import TrialRunner
    from archscale.search.study import StudyHandle
    from archscale.search.worker_options import WorkerOptions

_CAUSES = {
    signal.SIGKILL: "killed by SIGKILL (the kernel's out-of-memory killer, or kill -9)",
    signal.SIGSEGV: "crashed with SIGSEGV (a fault in native code)",
    signal.SIGABRT: "aborted (SIGABRT, a failed check in native code)",
    signal.SIGBUS: "crashed with SIGBUS (a fault in native code)",
}


class TrialProcessDied(Exception):
    """The trial process ended without finishing its trial; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def death_reason(exitcode: int | None, pid: int | None) -> str:
    """How a trial process ended, in words, from its exit code."""
    if exitcode is not None and exitcode < 0:
        sig = signal.Signals(-exitcode)
        how = _CAUSES.get(sig, f"killed by {sig.name}")
    else:
        how = f"exited with status {exitcode}"
    return f"its trial process (pid {pid}) {how}"


class TrialProcess:
    """The child process that runs one worker's trials (started on first use)."""

    def __init__(self, name: str, url: str, options: WorkerOptions, owner: dict[str, Any]) -> None:
        self._args = (name, url, options, owner)
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def run(self, trial_id: int) -> str:
        """Run a claimed trial to its end; its final state's name."""
        return self._ask(("run", trial_id))

    def record(self, trial_id: int, result: dict[str, Any]) -> str:
        """Record a spooled result on a claimed trial; its final state's name."""
        return self._ask(("record", trial_id, result))

    def _ask(self, message: tuple) -> str:
        if self._proc is None:
            context = multiprocessing.get_context("spawn")  # no JAX state forked
            self._conn, child_end = context.Pipe()
            self._proc = context.Process(target=serve, args=(child_end, *self._args),
                                         name="archscale-trial")
            with ctrl_c_after():  # a start cut by Ctrl-C printed a traceback, not one line
                self._proc.start()
            child_end.close()  # the child's death then reads as EOF here
        assert self._conn is not None
        try:
            self._conn.send(message)
            reply = self._conn.recv()
        except (EOFError, OSError):  # the pipe closed or reset: the child is gone
            self._proc.join()
            reason = death_reason(self._proc.exitcode, self._proc.pid)
            self._proc = self._conn = None
            raise TrialProcessDied(reason) from None
        if reply[0] == "storage":
            self.close()
            raise StorageUnavailable(reply[1], reply[2])
        if reply[0] == "error":
            self.close()
            raise ArchscaleError(reply[1])
        return reply[1]

    def close(self, timeout_s: float = 60) -> None:
        """Let the child finish what it does (after Ctrl-C: re-queue its trial) and stop."""
        if self._proc is None:
            return
        with contextlib.suppress(OSError, ValueError):  # it may have died already
            self._conn.send(None)
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._proc = self._conn = None

    def __enter__(self) -> TrialProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def make_runner(handle: StudyHandle, options: WorkerOptions,
                owner: dict[str, Any] | None = None) -> TrialRunner:
    """The TrialRunner a trial process runs the study's trials with (loads its data)."""
    from archscale.search import storage as storage_lib
    from archscale.search.objective import TrialRunner
    from archscale.search.spool import Spool

    folder = storage_lib.artifact_dir(handle.url, options.artifacts)
    return TrialRunner(handle, handle.load_data(),
                       storage_lib.artifact_store(handle.url, options.artifacts), folder,
                       heartbeat_s=options.heartbeat_s,
                       spool=Spool(folder / "spool" / handle.name), progress=options.progress,
                       owner=owner)


def serve(conn: Connection, name: str, url: str, options: WorkerOptions,
          owner: dict[str, Any]) -> None:
    """The child's loop: run (or record) each trial it is sent until told to stop."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return
    import optuna

    from archscale.search.study import open_study
    from archscale.sweeps.results import RunResult

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        handle = open_study(name, url, wait_s=options.storage_wait_s)
        runner = make_runner(handle, options, owner)
        while (message := conn.recv()) is not None:
            handle.study.get_trials(deepcopy=False)  # Optuna's cache of a database learns it
            trial = optuna.Trial(handle.study, message[1])
            state = (runner.run(trial) if message[0] == "run" else
                     runner.record(trial, RunResult.from_dict(message[2])))
            conn.send(("done", state.name))
    except StorageUnavailable as err:
        conn.send(("storage", err.what, err.driver))
    except ArchscaleError as err:
        conn.send(("error", str(err)))
    except KeyboardInterrupt:  # the trial was re-queued; the parent says what happened
        sys.exit(130)
    except EOFError:  # the parent is gone
        pass

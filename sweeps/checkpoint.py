"""Orbax checkpoints of one run: train state (params, optimizer state, step) plus JSON progress.

The data position needs no saving: ``train_batch`` is pure in (seed, step), and the step is in
the state. The JSON part holds the run's identity (spec, recipe, budget, seed, data fingerprint),
so resuming a directory written by a different run is refused, and the progress so far (loss
curve, timings), so a resumed run reports the same result an uninterrupted one would.

The state is saved as its pytree, each array under its key path (``params.layers.wqkv_LxJxHxD``,
``opt.inner_state...``), and restored by those names, not by position, into the shardings of
the run that resumes (which may use another mesh). A checkpoint whose names differ (another
layout of the state) is refused, listing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.interrupts import ctrl_c_after


class Checkpointer:
    """Saves and restores one run's checkpoints in ``directory`` (the newest ``keep`` kept)."""

    def __init__(self, directory: str | Path, identity: dict[str, Any], keep: int = 2) -> None:
        self.directory = Path(directory).resolve()
        self.identity = identity
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, progress: dict[str, Any]) -> None:
        """Write ``state`` (any pytree of arrays) and the JSON ``progress`` as checkpoint ``step``;
        a Ctrl-C meanwhile stops the run once the step is whole (orbax runs the save's asyncio
        loop in this thread: cut inside it, its threads print tracebacks at exit)."""
        with ctrl_c_after():
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave({"identity": self.identity, "progress": progress})),
                force=True)

    def restore(self, like: Any) -> tuple[Any, dict[str, Any]]:
        """The newest checkpoint as a pytree named, shaped and sharded like ``like`` (arrays or
        ShapeDtypeStructs), and its progress."""
        step = self.latest_step()
        if step is None:
            raise ArchscaleError(f"no checkpoint in {self.directory}")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        saved = meta["meta"]["identity"]
        if saved != self.identity:
            differing = sorted(k for k in set(saved) | set(self.identity)
                               if saved.get(k) != self.identity.get(k))
            raise SettingError(
                f"{self.directory} holds checkpoints of a different run (differs in "
                f"{', '.join(differing)}): give another {{checkpoint_dir}}, or delete this one "
                "to start over")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=x.sharding), like)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))
        except ValueError as err:  # orbax lists the names on either side that have no match
            raise ArchscaleError(
                f"{self.directory} holds a state whose arrays do not match this run's by name "
                f"(written by another archscale version?): delete it to start over\n{err}"
            ) from None
        return restored["state"], meta["meta"]["progress"]

    def close(self) -> None:
        with ctrl_c_after():
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

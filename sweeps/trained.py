"""The trained model of a run directory: the newest checkpoint ``train(checkpoint_dir=...)`` wrote.

A checkpoint holds the train state's leaves ({"params", "opt", "step"}: sweeps/train_step.py
``fresh_state``) and the run's identity (spec, recipe, ...). The state's structure is rebuilt
abstractly (``eval_shape``: no weights are initialised) from that identity, then restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from archscale.arch.errors import ArchscaleError
from archscale.arch.model import Transformer
from archscale.arch.spec import ArchSpec
from archscale.sweeps.checkpoint import Checkpointer
from archscale.sweeps.optimizer import make_optimizer
from archscale.sweeps.recipe import Recipe
from archscale.sweeps.train_step import fresh_state


def run_identity(directory: str | Path) -> dict[str, Any]:
    """The identity (spec, recipe, budget, seed, data fingerprint) saved with a run's checkpoints."""
    path = Path(directory).resolve()
    if not path.is_dir():
        raise ArchscaleError(f"{directory} is not a folder: give the folder a run saved its "
                             "checkpoints in")
    with ocp.CheckpointManager(path) as manager:
        step = manager.latest_step()
        if step is None:
            raise ArchscaleError(f"no checkpoint in {directory}: give the folder a run saved its "
                                 "checkpoints in")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return meta["meta"]["identity"]


def load_trained(directory: str | Path, compute_dtype=None) -> tuple[Transformer, int]:
    """The model with the newest checkpoint's weights in ``directory``, and that step."""
    identity = run_identity(directory)
    spec, recipe = ArchSpec.from_dict(identity["spec"]), Recipe.from_dict(identity["recipe"])
    abstract = nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0),
                                                  compute_dtype=compute_dtype))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    like = jax.eval_shape(lambda p: fresh_state(p, make_optimizer(recipe, spec)), params)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
    with Checkpointer(directory, identity) as checkpointer:
        state, _ = checkpointer.restore(like)
    return nnx.merge(graphdef, state["params"], rest), int(state["step"])

"""Train one ArchSpec under a fixed budget and recipe; the result is a RunResult.

The run loop dispatches chunks of optimizer steps (sweeps/train_step.py) and reads each chunk's
losses back only after the next chunk is queued, so the host never starves the device. Every
``recipe.eval_every`` steps (and at the last step) it evaluates the shared validation windows,
writes a checkpoint when asked, and calls ``report``. A non-finite training or validation loss
ends the run as "diverged", an out-of-memory error as "oom": results, not crashes.

Timing: ``compile_time_s`` is the ahead-of-time compilation; ``tokens_per_s`` counts only the
training loop (evaluation and checkpoints excluded); ``wall_time_s`` is everything.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from archscale.arch.errors import ArchscaleError
from archscale.arch.runtime import configure_jax, default_compute_dtype
from archscale.arch.spec import ArchSpec
from archscale.sweeps import data as data_lib
from archscale.sweeps import hardware
from archscale.sweeps.checkpoint import Checkpointer
from archscale.sweeps.optimizer import schedule_args
from archscale.sweeps.progress import TrainProgress
from archscale.sweeps.recipe import Budget, Recipe
from archscale.sweeps.results import RunResult, finite_or_none, git_commit, software_versions
from archscale.sweeps.sharding import (
    MeshShape,
    batch_sharded,
    bytes_per_device,
    check_batch,
    make_mesh,
    mesh_sizes,
    put_batch,
    put_replicated,
)
from archscale.sweeps.train_step import init_state, step_functions

Report = Callable[[int, int, float], bool]
"""report(step, tokens, val_loss) -> True to stop the run (status "pruned")."""

POINTS_PER_EVAL = 4
"""Training-loss points in the loss curve per evaluation interval."""
DISPATCH_TARGET_S = 0.1
"""Aim for this much estimated device time per dispatch when choosing steps per dispatch."""
MAX_STEPS_PER_DISPATCH = 16


def auto_steps_per_dispatch(spec: ArchSpec, batch_size: int, compute_dtype) -> int:
    """A power of two k so that k steps take about DISPATCH_TARGET_S at peak FLOP/s."""
    step_s = (batch_size * spec.seq_len * spec.train_flops_per_token(include_lm_head=True)
              / hardware.peak_flops(compute_dtype))
    k = 2 ** max(0, round(math.log2(max(1.0, DISPATCH_TARGET_S / step_s))))
    return min(MAX_STEPS_PER_DISPATCH, k)


class _Run:
    """The mutable state of one run's loop (built by ``train``)."""

    def __init__(self, spec: ArchSpec, budget: Budget, recipe: Recipe, data: data_lib.TokenData,
                 seed: int, mesh: Mesh, k: int, checkpointer: Checkpointer | None,
                 report: Report | None, progress: bool) -> None:
        self.spec, self.budget, self.recipe, self.data, self.seed = spec, budget, recipe, data, seed
        self.mesh, self.k, self.checkpointer, self.report = mesh, k, checkpointer, report
        self.started = time.perf_counter()
        self.total_steps = recipe.steps_for(spec, budget)
        self.eval_every = recipe.eval_every(spec, self.total_steps)
        self.log_every = max(1, self.eval_every // POINTS_PER_EVAL)
        self.tokens_per_step = recipe.batch_size * spec.seq_len
        self.compute_dtype = default_compute_dtype()
        self.graphdef, self.state, self.rest = init_state(spec, recipe, seed, self.compute_dtype,
                                                          mesh)
        self.state_bytes = bytes_per_device(self.state)
        windows, weights = self._validation_batches()
        self.fns = step_functions(spec, recipe, k=k, eval_batches=windows.shape[0], mesh=mesh,
                                  compute_dtype=self.compute_dtype, graphdef=self.graphdef,
                                  state=self.state, rest=self.rest)
        self.windows, self.weights = put_batch(windows, mesh, 1), put_batch(weights, mesh, 1)
        self.n_windows = int(weights.sum())
        self.sched = put_replicated(schedule_args(recipe, spec, self.total_steps), mesh)
        self.step, self.curve, self.pending_losses = 0, [], []
        self.status, self.message, self.diverged_step = "complete", "", None
        self.train_time_s, self.prior_wall_s, self.compile_time_s = 0.0, 0.0, self.fns.compile_time_s
        self.bar = TrainProgress(self.total_steps, enabled=progress)
        if checkpointer is not None and checkpointer.latest_step() is not None:
            self.state, saved = checkpointer.restore(self.state)
            self.step = int(self.state["step"])
            self.curve, self.train_time_s = saved["curve"], saved["train_time_s"]
            self.prior_wall_s, self.compile_time_s = saved["wall_time_s"], (
                saved["compile_time_s"] + self.compile_time_s)

    def _validation_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """The shared validation windows as [M, B, T+1] with weights [M, B] (0 for padding)."""
        windows = data_lib.validation_windows(self.data, self.spec.seq_len, self.recipe.eval_tokens)
        B, n = self.recipe.batch_size, len(windows)
        m = -(-n // B)
        padded = np.zeros((m * B, windows.shape[1]), np.int32)
        padded[:n] = windows
        weights = np.zeros(m * B, np.float32)
        weights[:n] = 1.0
        return padded.reshape(m, B, -1), weights.reshape(m, B)

    def _batches(self, start: int, n: int) -> jax.Array:
        batches = np.zeros((self.k, self.recipe.batch_size, self.spec.seq_len + 1), np.int32)
        for i in range(n):
            batches[i] = data_lib.train_batch(self.data, step=start + i,
                                              batch_size=self.recipe.batch_size,
                                              seq_len=self.spec.seq_len, seed=self.seed)
        return put_batch(batches, self.mesh, batch_axis=1)

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        pending = None
        segment_start = time.perf_counter()
        while self.step < self.total_steps and self.status == "complete":
            boundary = min(self.total_steps, (self.step // self.eval_every + 1) * self.eval_every)
            n = min(self.k, boundary - self.step)
            self.state, losses = self.fns.chunk(self.state, self.rest, self._batches(self.step, n),
                                                self.sched, np.int32(n))
            if pending is not None:
                self._absorb(*pending, segment_start)
            pending, self.step = (self.step, n, losses), self.step + n
            if self.step == boundary and self.status == "complete":
                self._absorb(*pending, segment_start)
                pending = None
                self.train_time_s += time.perf_counter() - segment_start
                if self.status == "complete":
                    self._evaluate()
                segment_start = time.perf_counter()
        if pending is not None:  # stopped by divergence inside an evaluation interval
            self.train_time_s += time.perf_counter() - segment_start

    def _absorb(self, start: int, n: int, losses: jax.Array, segment_start: float) -> None:
        """Read a finished chunk's losses: curve points, divergence, progress bar."""
        for i, loss in enumerate(np.asarray(losses)[:n].tolist()):
            step = start + i + 1
            self.pending_losses.append(loss)
            if not math.isfinite(loss):
                self.status, self.diverged_step = "diverged", step
                self.message = f"training loss became {loss} at step {step}"
                self._point(step)
                return
            if step % self.log_every == 0 or step % self.eval_every == 0 or step == self.total_steps:
                self._point(step)
        elapsed = self.train_time_s + time.perf_counter() - segment_start
        last = self.curve[-1]["train_loss"] if self.curve else None
        self.bar.update(start + n, (start + n) * self.tokens_per_step / elapsed, last)

    def _point(self, step: int) -> None:
        mean = float(np.mean(self.pending_losses))
        self.curve.append({"step": step, "tokens": step * self.tokens_per_step,
                           "train_loss": finite_or_none(mean)})
        self.pending_losses = []

    def _evaluate(self) -> None:
        loss_sum, acc_sum = self.fns.evaluate(self.state["params"], self.rest, self.windows,
                                              self.weights)
        val_loss = float(loss_sum) / self.n_windows
        point = self.curve[-1]
        point.update(val_loss=finite_or_none(val_loss),
                     val_accuracy=float(acc_sum) / self.n_windows)
        if not math.isfinite(val_loss):
            self.status, self.diverged_step = "diverged", self.step
            self.message = f"validation loss became {val_loss} at step {self.step}"
            return
        if self.checkpointer is not None:
            self.checkpointer.save(self.step, self.state, {
                "curve": self.curve, "train_time_s": self.train_time_s,
                "wall_time_s": self.wall_time_s(), "compile_time_s": self.compile_time_s})
        if self.report is not None and self.report(self.step, self.step * self.tokens_per_step,
                                                   val_loss):
            self.status, self.message = "pruned", f"stopped by report() at step {self.step}"

    # ---- the result -------------------------------------------------------------------------
    def wall_time_s(self) -> float:
        return self.prior_wall_s + time.perf_counter() - self.started

    def tokens_per_s(self) -> float:
        """Training tokens per second of training-loop time (all sessions of a resumed run)."""
        seconds = self.train_time_s
        return self.step * self.tokens_per_step / seconds if seconds > 0 else 0.0

    def final_metrics(self) -> dict[str, Any]:
        evaluated = [p for p in self.curve if "val_loss" in p]
        if self.status == "diverged" or not evaluated:
            return {"val_loss": None, "val_accuracy": None}
        return {"val_loss": evaluated[-1]["val_loss"], "val_accuracy": evaluated[-1]["val_accuracy"]}

    def logits_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        """Forward pass with the final parameters (batch sharded), for the multiple-choice task."""
        sharding = batch_sharded(self.mesh)
        return lambda tokens_BxT: np.asarray(_forward(
            self.graphdef, self.state["params"], self.rest, jax.device_put(tokens_BxT, sharding)))

    def result(self, task_accuracy: float | None = None) -> RunResult:
        steps = self.diverged_step if self.diverged_step is not None else self.step
        tokens = steps * self.tokens_per_step
        tokens_per_s = self.tokens_per_s()
        peak = hardware.peak_flops(self.compute_dtype)
        # Forced CPU "devices" share one processor; real accelerators each bring their own peak.
        n_peak = 1 if jax.default_backend() == "cpu" else self.mesh.devices.size
        mfu = tokens_per_s * self.spec.train_flops_per_token(include_lm_head=True) / (peak * n_peak)
        return RunResult(
            spec=self.spec.to_dict(), status=self.status, message=self.message,
            **self.final_metrics(), task_accuracy=task_accuracy, loss_curve=self.curve,
            tokens=tokens, flops=float(tokens * self.spec.train_flops_per_token()), steps=steps,
            wall_time_s=self.wall_time_s(), tokens_per_s=tokens_per_s,
            mfu=mfu if tokens_per_s > 0 else None, compile_time_s=self.compile_time_s,
            device_kind=hardware.device_kind(), n_devices=int(self.mesh.devices.size),
            mesh=mesh_sizes(self.mesh), state_bytes_per_device=self.state_bytes,
            seed=self.seed, recipe=self.recipe.to_dict(), budget=self.budget.to_dict(),
            data_fingerprint=self.data.fingerprint, corpus=self.data.corpus,
            diverged_step=self.diverged_step,
            versions=software_versions(), git_commit=git_commit(),
            params_total=self.spec.params_total, params_nonembed=self.spec.params_nonembed)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, rest, tokens_BxT: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params, rest)(tokens_BxT)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, carrying the partial result (status "interrupted"). A
    KeyboardInterrupt still, so whatever stops on Ctrl-C (a study worker) stops on it."""

    def __init__(self, result: RunResult):
        super().__init__(result.message)
        self.result = result
        """The run up to the interrupt: its curve, steps and tokens so far."""


def _check(spec: ArchSpec, data: data_lib.TokenData, seed: int) -> None:
    if spec.vocab_size < data.vocab_size:
        raise ArchscaleError(f"the data's tokenizer ({data.tokenizer}) has {data.vocab_size} ids but "
                             f"the shape's vocab_size is {spec.vocab_size}: set vocab_size="
                             f"{data.vocab_size}")
    if not 0 <= seed < 2**32:
        raise ArchscaleError(f"seed={seed} must be in [0, 2**32)")


def train(spec: ArchSpec, budget: Budget, recipe: Recipe, data: data_lib.TokenData, seed: int = 0,
          *, checkpoint_dir: str | Path | None = None, report: Report | None = None,
          task: str | Path | Sequence | None = None, tokenizer=None, progress: bool = True,
          mesh: MeshShape | Mesh | None = None, steps_per_dispatch: int | None = None
          ) -> RunResult:
    """Train ``spec`` on ``data`` for ``budget`` with ``recipe`` (resolved for the shape).

    checkpoint_dir: save there at every evaluation and resume from its newest checkpoint.
    report(step, tokens, val_loss) -> bool: called at each evaluation; True prunes the run.
    task: a multiple-choice task (path or loaded examples) scored at the end with ``tokenizer``
    (default: the data's). mesh: a ``MeshShape`` over every device, or a ``Mesh`` over chosen
    ones (default: data parallelism over every device; ``sharding.make_mesh``).
    steps_per_dispatch: optimizer steps per compiled call (default: sized to the model).
    """
    configure_jax()
    recipe = recipe.resolved(spec)
    _check(spec, data, seed)
    mesh = mesh if isinstance(mesh, Mesh) else make_mesh(mesh)
    check_batch(recipe.batch_size, mesh)
    compute_dtype = default_compute_dtype()
    k = steps_per_dispatch or auto_steps_per_dispatch(spec, recipe.batch_size, compute_dtype)
    identity = {"spec": spec.to_dict(), "recipe": recipe.to_dict(), "budget": budget.to_dict(),
                "seed": seed, "data_fingerprint": data.fingerprint}
    checkpointer = Checkpointer(checkpoint_dir, identity) if checkpoint_dir is not None else None
    run = None
    try:
        run = _Run(spec, budget, recipe, data, seed, mesh, k, checkpointer, report, progress)
        run.run()
        run.bar.close()
        task_accuracy = None
        if task is not None and run.status == "complete":
            task_accuracy = _score_task(task, tokenizer, run)
        return run.result(task_accuracy)
    except KeyboardInterrupt:
        if run is None:
            raise
        run.bar.close()
        run.status, run.message = "interrupted", f"interrupted (Ctrl-C) at step {run.step}"
        raise RunInterrupted(run.result()) from None
    except jax.errors.JaxRuntimeError as err:
        if run is None:
            raise
        run.bar.close()
        run.status = "oom" if "RESOURCE_EXHAUSTED" in str(err) else "failed"
        run.message = str(err)[:2000]
        return run.result()
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _score_task(task, tokenizer, run: _Run) -> float:
    from archscale.sweeps.tasks import load_task, score_multiple_choice

    examples = load_task(task) if isinstance(task, str | Path) else task
    tokenizer = data_lib.tokenizer_for(run.data) if tokenizer is None else tokenizer
    scores = score_multiple_choice(run.logits_fn(), tokenizer, examples, seq_len=run.spec.seq_len,
                                   batch_size=run.recipe.batch_size)
    return float(scores["acc"])


def lr_sweep(spec: ArchSpec, budget: Budget, recipe: Recipe, data: data_lib.TokenData,
             lrs: Sequence[float], seed: int = 0, **train_options) -> tuple[float, list[RunResult]]:
    """Train ``spec`` once per LR (same budget, one compilation); the best LR and every result.

    Each result's ``recipe["lr"]`` records the LR the shape trained with (after the recipe's
    scaling rule); the returned LR is the swept value with the lowest final validation loss.
    """
    if not lrs:
        raise ArchscaleError("lr_sweep needs at least one learning rate")
    train_options.setdefault("progress", False)
    results = [train(spec, budget, dataclasses.replace(recipe, lr=float(lr)), data, seed,
                     **train_options) for lr in lrs]
    complete = [(r.val_loss, lr) for r, lr in zip(results, lrs, strict=True)
                if r.status == "complete" and r.val_loss is not None]
    if not complete:
        statuses = ", ".join(f"lr={lr:g}: {r.status}" for r, lr in zip(results, lrs, strict=True))
        raise ArchscaleError(f"no learning rate completed ({statuses}): try smaller LRs")
    return float(min(complete)[1]), results

"""RunResult: everything one training run produced, with lossless JSON round trip.

A run that diverges, runs out of memory or is pruned is still a result (``status``), so a
study records it instead of crashing. Floats stay finite (a non-finite loss is stored as None
and the step in ``diverged_step``), so the JSON is standard and ``from_json(to_json(r)) == r``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from archscale.arch.errors import ArchscaleError, reject_unknown_keys
from archscale.arch.spec import TABLE_COLUMNS, ArchSpec

Status = Literal["complete", "diverged", "oom", "pruned", "failed", "interrupted"]
STATUSES: tuple[str, ...] = ("complete", "diverged", "oom", "pruned", "failed", "interrupted")


@dataclass(frozen=True)
class RunResult:
    """One training run of one shape under one budget and recipe."""

    spec: dict[str, Any]
    """The ArchSpec trained (``ArchSpec.to_dict()``)."""
    status: Status
    """complete, diverged (non-finite loss), oom, pruned (``report`` asked to stop), failed, or
    interrupted (Ctrl-C: the partial result ``train`` saves)."""
    message: str
    """Why the run stopped early ('' when complete)."""
    val_loss: float | None
    """Final mean next-token loss (nats) on the shared validation windows; None if diverged."""
    val_accuracy: float | None
    """Final next-token (argmax) accuracy on the validation windows."""
    task_accuracy: float | None
    """Zero-shot multiple-choice accuracy on the task (None without a task)."""
    loss_curve: list[dict[str, Any]]
    """Points {step, tokens, train_loss[, val_loss, val_accuracy]}; train_loss averages the
    steps since the previous point."""
    tokens: int
    """Training tokens consumed (steps x batch x seq_len)."""
    flops: float
    """Training FLOPs spent, ``tokens * spec.train_flops_per_token()`` (the budget convention)."""
    steps: int
    """Optimizer steps taken."""
    wall_time_s: float
    """Wall time of the whole run: compile, train, evaluate, checkpoint (summed over resumes)."""
    tokens_per_s: float
    """Training throughput, compile and evaluation time excluded."""
    mfu: float | None
    """Model FLOPs utilization: tokens/s x train FLOPs per token (LM head included) / peak."""
    compile_time_s: float
    """Time spent compiling the train and eval steps (0 when reused within the process)."""
    device_kind: str
    """Accelerator (or CPU) the run used."""
    n_devices: int
    """Devices the batch was sharded over."""
    seed: int
    """Seed of initialisation and data order."""
    recipe: dict[str, Any]
    """The resolved Recipe (``Recipe.to_dict()``): the LR and batch this shape actually got."""
    budget: dict[str, Any]
    """The Budget as given (``Budget.to_dict()``)."""
    data_fingerprint: str | None
    """Fingerprint of the corpus, tokenizer and split (TokenData.fingerprint)."""
    diverged_step: int | None
    """1-based step whose training loss was first non-finite (None if none)."""
    versions: dict[str, str]
    """Versions of jax, flax, optax and archscale."""
    git_commit: str | None
    """Commit of the archscale checkout (None outside a git checkout)."""
    params_total: int
    """All parameters."""
    params_nonembed: int
    """N, non-embedding parameters (arch/spec.py's convention)."""
    throughput: dict[str, Any] | None = None
    """Inference throughput measured afterwards (sweeps.throughput), or None."""
    mesh: dict[str, int] | None = None
    """Devices per mesh axis, {"data": D, "fsdp": F} (sweeps.sharding); None in run JSON
    written before meshes."""
    state_bytes_per_device: int | None = None
    """Bytes of parameters and optimizer state held by the fullest device (the arrays'
    addressable shards); about 1/F of their total with fsdp=F."""
    passk: dict[str, Any] | None = None
    """pass@k of sampled completions on a verifiable task, with its cost (sweeps.passk);
    ``{"error": message}`` where sampling failed after training; None when not sampled."""
    corpus: dict[str, Any] | None = None
    """The corpus read: {path, size_bytes, content_hash} (TokenData.corpus); None in run JSON
    written before it was recorded."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ArchscaleError(f"RunResult status {self.status!r} must be one of {STATUSES}")

    @property
    def arch_spec(self) -> ArchSpec:
        return ArchSpec.from_dict(self.spec)

    def replace(self, **changes: Any) -> RunResult:
        return dataclasses.replace(self, **changes)

    # ---- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        reject_unknown_keys(cls, data, hint="is this a run JSON written by a newer archscale?")
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ArchscaleError(f"cannot read a run result from {path}: {err}") from None

    # ---- the run table (RUN_COLUMNS) ----------------------------------------------------------
    def row(self) -> dict[str, Any]:
        """This run as one row of the canonical run table that laws fit, in RUN_COLUMNS order."""
        spec = self.arch_spec
        throughput = self.throughput or {}
        values = {
            **spec.table_row(), "D": self.tokens, "loss": self.val_loss,
            "flops": self.flops, "val_accuracy": self.val_accuracy,
            "task_accuracy": self.task_accuracy,
            "prefill_tokens_per_s": throughput.get("prefill_tokens_per_s"),
            "decode_tokens_per_s": throughput.get("decode_tokens_per_s"),
            "tp_batch": throughput.get("batch"), "tp_context": throughput.get("context"),
            "tp_decode_tokens": throughput.get("decode_tokens"),
            "status": self.status,
        }
        return {column: values[column] for column in RUN_COLUMNS}


RUN_COLUMNS: dict[str, str] = {
    **{column: meaning for column, (_, meaning) in TABLE_COLUMNS.items()},  # the shape's
    "D": "training tokens",
    "loss": "final validation loss on the study's shared validation tokens",
    "flops": "training FLOPs spent (6N plus attention per token, arch/spec.py)",
    "val_accuracy": "next-token accuracy on the validation tokens",
    "task_accuracy": "multiple-choice task accuracy",
    "prefill_tokens_per_s": "measured prefill throughput",
    "decode_tokens_per_s": "measured decode throughput",
    "tp_batch": "batch of the throughput measurement",
    "tp_context": "context of the throughput measurement",
    "tp_decode_tokens": "decode steps per timed call (decode is costed at the mean context)",
    "status": "complete, diverged, pruned, failed or duplicate",
}
"""The run table's columns a run gives (``RunResult.row``), with their meanings, in order; a study
adds its trial columns (search/table.py), and docs/CONTRIBUTING.md lists both (a test holds it)."""


def finite_or_none(value: float | None) -> float | None:
    """The value as a Python float, or None when it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def software_versions() -> dict[str, str]:
    import flax
    import jax
    import optax

    import archscale

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "archscale": archscale.__version__}


@functools.cache
def git_commit() -> str | None:
    """HEAD of the git checkout archscale runs from, or None (installed package, no git).

    Only a checkout that holds this very file counts, not an unrelated repository around a venv.
    """
    here = Path(__file__).resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here.parent, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if (top / here.parent.name / here.name).resolve() != here:
            return None
        return git("rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None

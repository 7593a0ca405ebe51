"""What a recommendation holds: each shape with its predictions and intervals (``Scored``), the
answer as a whole (``Recommendation``), the one table the CLI prints and the demo report shows,
and recommendations.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.arch.spec import ArchSpec
from archscale.laws.levels import LEVELS
from archscale.search.passwords import hide_passwords

PREDICTION_LEVEL = LEVELS.prediction
"""Level of the prediction intervals of loss and accuracy (``*_interval_90``)."""
NAN_PAIR = (math.nan, math.nan)


@dataclass(frozen=True)
class Scored:
    """One shape with its predictions."""

    spec: ArchSpec
    """The shape."""
    loss: float
    """Predicted loss of this exact shape (its own N) at the target tokens."""
    loss_low: float
    """Lower end of the interval of the law's mean (bootstrap; NaN when the law has no
    bootstrap samples). Not where a run lands: see ``loss_interval_90``."""
    loss_high: float
    """Upper end of the interval of the law's mean."""
    decode_tokens_per_s: float
    """Predicted decode throughput (law or roofline) at the recommendation's (batch, context)."""
    origin: str = "grid"
    """Where the shape came from: the step-1 grid, a GQA step, or the baseline."""
    loss_interval_90: tuple[float, float] = NAN_PAIR
    """90% prediction interval of the loss: where a run of this shape lands (NaN: the law has
    no error model)."""
    predicted_accuracy: float | None = None
    """The accuracy law at the predicted loss (None: no accuracy law)."""
    accuracy_interval_90: tuple[float, float] | None = None
    """90% interval of the accuracy, the loss's uncertainty included (None: no accuracy law)."""
    measured_decode_tokens_per_s: float | None = None
    """Decode tokens/s timed at the target size with random weights (None: not measured)."""

    @property
    def throughput(self) -> float:
        """Measured decode tokens/s where measured, else the predicted."""
        measured = self.measured_decode_tokens_per_s
        return self.decode_tokens_per_s if measured is None else measured

    def to_dict(self, batch: int, context: int, dtype: str = "bf16") -> dict[str, Any]:
        accuracy = self.accuracy_interval_90
        return {
            "spec": self.spec.to_dict(), "origin": self.origin,
            "params_total": self.spec.params_total, "params_nonembed": self.spec.params_nonembed,
            "r_mlp_attn": self.spec.r_mlp_attn, "d_over_sqrt_n": self.spec.d_over_sqrt_n,
            "gqa_group": self.spec.gqa_group,
            "predicted_loss": self.loss,
            "loss_interval_90": [_finite(v) for v in self.loss_interval_90],
            "loss_mean_interval": [_finite(self.loss_low), _finite(self.loss_high)],
            "predicted_accuracy": self.predicted_accuracy,
            "accuracy_interval_90": None if accuracy is None else [_finite(v) for v in accuracy],
            "predicted_decode_tokens_per_s": self.decode_tokens_per_s,
            "measured_decode_tokens_per_s": self.measured_decode_tokens_per_s,
            "decode_tokens_per_s": self.throughput,
            "decode_tokens_per_s_basis": ("predicted" if self.measured_decode_tokens_per_s is None
                                          else "measured"),
            "kv_cache_bytes": self.spec.kv_cache_bytes(batch, context, dtype),
            "kv_cache_bytes_per_token": self.spec.kv_cache_bytes_per_token(dtype),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scored:
        """The shape ``to_dict`` wrote (its derived keys are recomputed, not read)."""
        accuracy = data.get("accuracy_interval_90")
        return cls(
            spec=ArchSpec.from_dict(data["spec"]), origin=data["origin"],
            loss=float(data["predicted_loss"]),
            loss_low=_float(data["loss_mean_interval"][0]),
            loss_high=_float(data["loss_mean_interval"][1]),
            decode_tokens_per_s=float(data["predicted_decode_tokens_per_s"]),
            loss_interval_90=_pair(data["loss_interval_90"]),
            predicted_accuracy=data.get("predicted_accuracy"),
            accuracy_interval_90=None if accuracy is None else _pair(accuracy),
            measured_decode_tokens_per_s=data.get("measured_decode_tokens_per_s"))


@dataclass(frozen=True)
class Recommendation:
    """The answer: recommended shapes, the loss-optimal shape, the Pareto set, a baseline."""

    recommended: list[Scored]
    """Best shapes by throughput under the target loss, fastest first (by measured throughput
    where measured)."""
    loss_optimal: Scored
    """The shape of lowest loss at equal N (the paper's Panda)."""
    pareto: list[Scored]
    """Shapes no other shape beats on both loss and throughput, by loss."""
    baseline: Scored | None
    """A reference shape predicted with the same laws, or None."""
    target_loss: float
    """The loss constraint every recommended shape meets."""
    batch: int
    """Decode batch of the throughput predictions."""
    context: int
    """Cached context of the throughput predictions."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Laws, search settings, versions and command settings behind the numbers."""
    dtype: str = "bf16"
    """Serving dtype of the throughput predictions and KV-cache bytes."""
    extrapolation: dict[str, Any] = field(default_factory=dict)
    """Per law (loss_law, throughput_law): target / largest trained N and D."""
    methods: dict[str, str] = field(default_factory=dict)
    """How each reported number is obtained, by output key."""
    notes: tuple[str, ...] = ()
    """What the user must know to read the numbers."""
    throughput_check: dict[str, Any] | None = None
    """With ``measure``: shapes measured, the throughput model's median absolute relative
    error on them, and the measurement's setting; None when nothing was measured."""

    def shape_dict(self, s: Scored) -> dict[str, Any]:
        out = s.to_dict(self.batch, self.context, self.dtype)
        law = self.extrapolation.get("loss_law") or {}
        out["extrapolation"] = {
            "N": None if law.get("N") is None else s.spec.params_nonembed / law["N"]["trained_max"],
            "D": None if law.get("D") is None else law["D"]["factor"]}
        if self.baseline is not None:
            out["vs_baseline"] = _versus(s, self.baseline)
        out["obtained"] = self.methods
        return out

    def display_rows(self) -> list[tuple[str, dict[str, str]]]:
        """(label, column -> text) for the recommended shapes by rank, the loss-optimal shape and
        the baseline: the one table ``archscale recommend`` prints and the demo report shows."""
        level = self.provenance["search"]["interval_level"]
        rows = [(f"#{rank}", s) for rank, s in enumerate(self.recommended, 1)]
        rows.append(("loss-optimal", self.loss_optimal))
        if self.baseline is not None:
            rows.append(("baseline", self.baseline))
        shown = [s for _, s in rows]
        columns = _Columns(
            level=level, dtype=self.dtype,
            prediction=any(math.isfinite(v) for s in shown for v in s.loss_interval_90),
            accuracy=any(s.predicted_accuracy is not None for s in shown),
            measured=self.throughput_check is not None)
        return [(label, _display_cells(s, self.baseline, columns)) for label, s in rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_loss": self.target_loss,
            "throughput_setting": {"batch": self.batch, "context": self.context,
                                   "dtype": self.dtype},
            "extrapolation": self.extrapolation,
            "recommended": [self.shape_dict(s) for s in self.recommended],
            "loss_optimal": self.shape_dict(self.loss_optimal),
            "pareto": [self.shape_dict(s) for s in self.pareto],
            "baseline": None if self.baseline is None else self.shape_dict(self.baseline),
            "throughput_check": self.throughput_check,
            "notes": list(self.notes),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        """The recommendation ``to_dict`` wrote (recommendations.json); a file that is not one is
        an ArchscaleError naming the key it lacks."""
        try:
            setting = data["throughput_setting"]
            baseline = data["baseline"]
            return cls(
                recommended=[Scored.from_dict(s) for s in data["recommended"]],
                loss_optimal=Scored.from_dict(data["loss_optimal"]),
                pareto=[Scored.from_dict(s) for s in data["pareto"]],
                baseline=None if baseline is None else Scored.from_dict(baseline),
                target_loss=float(data["target_loss"]), batch=int(setting["batch"]),
                context=int(setting["context"]), dtype=setting["dtype"],
                provenance=data["provenance"], extrapolation=data["extrapolation"],
                methods=data["loss_optimal"]["obtained"], notes=tuple(data["notes"]),
                throughput_check=data["throughput_check"])
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise ArchscaleError(f"not a recommendation ({type(err).__name__}: {err}): write one "
                                 "with `archscale recommend`") from None


@dataclass(frozen=True)
class _Columns:
    """Which columns the table shows."""

    level: float
    dtype: str
    prediction: bool
    """Loss prediction intervals exist (else the interval of the law's mean is shown)."""
    accuracy: bool
    measured: bool


def _with_interval(value: float, interval: tuple[float, float] | None) -> str:
    text = f"{value:.4f}"
    if interval is not None and all(math.isfinite(v) for v in interval):
        text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
    return text


def _display_cells(s: Scored, baseline: Scored | None, columns: _Columns) -> dict[str, str]:
    spec = s.spec
    cells = {"d_model": str(spec.d_model), "layers": str(spec.n_layers),
             "heads/kv": f"{spec.n_heads}/{spec.n_kv_heads}", "d_ff": str(spec.d_ff),
             "r": f"{spec.r_mlp_attn:.2f}", "d/sqrt(N)": f"{spec.d_over_sqrt_n:.4f}",
             "N": f"{spec.params_nonembed:,}"}
    if columns.prediction:
        cells[f"loss [{PREDICTION_LEVEL:.0%} prediction interval]"] = _with_interval(
            s.loss, s.loss_interval_90)
    else:
        cells[f"loss [{columns.level:.0%} interval of the law's mean]"] = _with_interval(
            s.loss, (s.loss_low, s.loss_high))
    if columns.accuracy:
        cells[f"accuracy [{PREDICTION_LEVEL:.0%} prediction interval]"] = (
            "" if s.predicted_accuracy is None
            else _with_interval(s.predicted_accuracy, s.accuracy_interval_90))
    cells["decode tok/s predicted"] = f"{s.decode_tokens_per_s:,.0f}"
    if columns.measured:
        measured = s.measured_decode_tokens_per_s
        cells["decode tok/s measured"] = "not measured" if measured is None else f"{measured:,.0f}"
    gain = ""
    if baseline is not None and s is not baseline:
        versus = _versus(s, baseline)
        gain = f"{versus['throughput_gain']:+.1%}" + ("" if versus["equal_or_better_loss"]
                                                       else " (worse loss)")
        if columns.measured and versus["throughput_basis"] != "measured":
            gain += " (predicted)"
    cells["vs baseline"] = gain
    cells["KV bytes/token"] = f"{spec.kv_cache_bytes_per_token(columns.dtype):,}"
    return cells


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _float(x: float | None) -> float:
    """``_finite``'s inverse: None (a NaN written as JSON null) back to NaN."""
    return math.nan if x is None else float(x)


def _pair(values: list[float | None]) -> tuple[float, float]:
    low, high = values
    return _float(low), _float(high)


def _versus(s: Scored, base: Scored) -> dict[str, Any]:
    """Throughput gain over the baseline, which counts as a gain at equal-or-better loss only;
    measured against measured when both were measured, else predicted against predicted."""
    both = s.measured_decode_tokens_per_s is not None and \
        base.measured_decode_tokens_per_s is not None
    gain = (s.throughput / base.throughput if both
            else s.decode_tokens_per_s / base.decode_tokens_per_s) - 1
    better = s.loss <= base.loss
    return {"throughput_gain": gain, "throughput_basis": "measured" if both else "predicted",
            "loss_delta": s.loss - base.loss, "equal_or_better_loss": better,
            "gain_at_equal_or_better_loss": gain if better else None}


def save_recommendation(rec: Recommendation, out_dir: str | Path) -> Path:
    """Write ``out_dir/recommendations.json``; returns its path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SettingError(f"{{out_dir}} {out} is a file: give a directory for "
                           "recommendations.json")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recommendations.json"
    data, _ = hide_passwords(rec.to_dict())  # a law fitted before URLs were saved without them
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return path

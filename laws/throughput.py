"""Throughput law: prefill or decode tokens/s of any shape from roofline features.

The time of one step is modelled as fixed overhead plus memory traffic plus compute,

    seconds = c0 + c_byte * bytes + c_flop * FLOPs,   c >= 0,

with the coefficients (1 / c_byte is an effective bandwidth, 1 / c_flop an effective FLOP/s)
fitted by non-negative least squares on relative time errors of measured trials. The features
come from the ArchSpec of each row (arch/spec.py's counting conventions) at the measurement
setting (tp_batch sequences, tp_context tokens), as sweeps/throughput.py measures them:

* decode (one step of ``batch`` new tokens with ``context`` cached): bytes = decode weights +
  the KV cache at ``context``; FLOPs = batch * (2N + attention to ``context`` keys + output
  projection); tokens/s = batch / seconds.
* prefill (``batch`` prompts of ``context`` tokens): bytes = all weights + the KV cache written;
  FLOPs = batch * (2N per token + causal attention summed over 1..context keys + one output
  projection per prompt); tokens/s = batch * context / seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from archscale.arch.errors import ArchscaleError
from archscale.arch.spec import dtype_bytes, mean_decode_context
from archscale.laws.bootstrap import refit_each
from archscale.laws.kind import Estimate, LawKind
from archscale.laws.table import positive_values, row_specs

TARGETS = {"decode": "decode_tokens_per_s", "prefill": "prefill_tokens_per_s"}
COEF_NAMES = ("c0_s", "c_byte_s", "c_flop_s")


def configure(options: dict[str, Any]) -> dict[str, Any]:
    target = options.get("target") or "decode"
    if target in TARGETS.values():
        target = next(k for k, v in TARGETS.items() if v == target)
    if target not in TARGETS:
        raise ArchscaleError(f"throughput target {target!r}: choose decode or prefill")
    dtype = options.get("dtype") or "bf16"
    dtype_bytes(dtype)  # refuses unknown names
    config: dict[str, Any] = {"target": target, "dtype": dtype}
    for key in ("batch", "context"):
        if options.get(key) is not None:
            config[key] = int(options[key])
    return config


def roofline_features(config: dict[str, Any], table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row: [1, bytes, FLOPs] of one step (n x 3) and the tokens that step produces (n)."""
    n_rows = len(table)
    setting = {}
    for key, column in (("batch", "tp_batch"), ("context", "tp_context")):
        if column in table.columns:
            setting[key] = positive_values(table, [column], "the throughput law")[column]
        elif key in config:
            setting[key] = np.full(n_rows, float(config[key]))
        else:
            raise ArchscaleError(f"the throughput law needs the measurement setting: add a "
                                 f"{column} column, or fit on trials that have one")
    # decode steps measured per call: costed at their mean context, as sweeps/throughput.py does
    if "tp_decode_tokens" in table.columns and table["tp_decode_tokens"].notna().all():
        setting["decode_tokens"] = table["tp_decode_tokens"].to_numpy(dtype=float)
    else:
        setting["decode_tokens"] = np.full(n_rows, float(config.get("decode_tokens", 0)))
    dtype = config["dtype"]
    features = np.empty((n_rows, 3))
    tokens = np.empty(n_rows)
    for i, spec in enumerate(row_specs(table)):
        batch, context = int(setting["batch"][i]), int(setting["context"][i])
        if config["target"] == "decode":
            flops, step_bytes = spec.decode_step_cost(
                batch, mean_decode_context(context, int(setting["decode_tokens"][i])), dtype)
            tokens[i] = batch
        else:
            flops, step_bytes = spec.prefill_cost(batch, context, dtype)
            tokens[i] = batch * context
        features[i] = (1.0, step_bytes, flops)
    return features, tokens


def _nnls_relative(features_Nx3: np.ndarray, seconds: np.ndarray,
                   weights: np.ndarray) -> tuple[np.ndarray, bool]:
    """min sum w ((X c - t) / t)^2 over c >= 0, on unit-scaled columns for conditioning."""
    rows = np.sqrt(weights) / seconds
    design = features_Nx3 * rows[:, None]
    norms = np.linalg.norm(design, axis=0)
    norms[norms == 0] = 1.0
    coef, _ = nnls(design / norms, seconds * rows)
    coef = coef / norms
    return coef, bool(np.all(np.isfinite(coef)))


def _data(config: dict[str, Any], table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    column = TARGETS[config["target"]]
    measured = positive_values(table, [column], "the throughput law")[column]
    features, tokens = roofline_features(config, table)
    return features, tokens / measured


def _most_common(table: pd.DataFrame, column: str) -> int | None:
    if column not in table.columns or table[column].dropna().empty:
        return None
    return int(table[column].dropna().mode().iloc[0])


def fit(table: pd.DataFrame, config: dict[str, Any]) -> Estimate:
    config = dict(config)
    # the setting a prediction without tp_batch / tp_context columns uses
    for key, column in (("batch", "tp_batch"), ("context", "tp_context"),
                        ("decode_tokens", "tp_decode_tokens")):
        if key not in config and _most_common(table, column) is not None:
            config[key] = _most_common(table, column)
    features, seconds = _data(config, table)
    coef, ok = _nnls_relative(features, seconds, np.ones(len(seconds)))
    notes = []
    if coef[1] > 0:
        notes.append(f"effective bandwidth {1 / coef[1]:.4g} bytes/s")
    if coef[2] > 0:
        notes.append(f"effective compute {1 / coef[2]:.4g} FLOP/s")
    return Estimate(coef=coef, names=COEF_NAMES, converged=ok, config=config, notes=tuple(notes))


def bootstrap(table: pd.DataFrame, config: dict[str, Any], estimate: Estimate,
              counts_SxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features, seconds = _data(config, table)
    return refit_each(counts_SxN, lambda w: _nnls_relative(features, seconds, w))


def predict(config: dict[str, Any], coef_SxP: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    features, tokens = roofline_features(config, table)
    seconds_SxN = np.atleast_2d(coef_SxP) @ features.T
    with np.errstate(divide="ignore"):
        return tokens[None, :] / seconds_SxN


KIND = LawKind(name="throughput", configure=configure,
               target=lambda config: TARGETS[config["target"]], n_params=lambda config: 3,
               min_scales=1, fit=fit, bootstrap=bootstrap, predict=predict, axes=("N",),
               needs=lambda config: ("shape",), options=("target", "dtype", "batch", "context"))

"""law.json: save and load fitted laws; loading gives identical predictions.

Floats are written with Python's shortest round-trip repr, so coefficients and bootstrap samples
come back bit for bit. The file holds the form (kind and declared config), coefficients, their
95% intervals, whether the law is identified (and why not), the bootstrap samples that intervals
of the mean are recomputed from, the error model behind prediction intervals, validation metrics
(held-out rows with their intervals), what N counted, data provenance and the archscale version.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from archscale.arch.errors import ArchscaleError
from archscale.laws.diagnostics import Problem
from archscale.laws.intervals import ErrorModel
from archscale.laws.law import N_DEFINITIONS, Law
from archscale.laws.registry import get_kind

FORMAT_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON-able copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def law_to_dict(law: Law) -> dict[str, Any]:
    intervals = law.coef_intervals(0.95)
    return _clean({
        "format": FORMAT_VERSION,
        "archscale_version": law.version,
        "law": law.kind,
        "form": {**law.config, "predicts": law.target},
        "coefficients": law.coefficients,
        "intervals": {"level": 0.95, **{k: list(v) for k, v in intervals.items()}},
        "converged": law.converged,
        "identified": law.identified,
        "problems": [p.to_dict() for p in law.problems],
        "n_definition": law.n_definition,
        "prediction_interval": None if law.error_model is None else law.error_model.to_dict(),
        "notes": list(law.notes),
        "bootstrap": {**law.bootstrap, "coef_names": list(law.coef_names),
                      "samples": law.coef_samples},
        "validation": law.validation,
        "provenance": law.provenance,
    })


def save_law(law: Law, path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    path.write_text(json.dumps(law_to_dict(law), indent=1) + "\n")
    return path


def law_from_dict(data: dict[str, Any]) -> Law:
    try:
        config = {k: v for k, v in data.get("form", {}).items() if k != "predicts"}
        kind = get_kind(data["law"], config)  # a declared form rebuilds from its declaration
        names = tuple(data["bootstrap"]["coef_names"])
        coef = np.array([data["coefficients"][n] for n in names], dtype=np.float64)
        samples = np.array([[np.nan if v is None else v for v in row]
                            for row in data["bootstrap"]["samples"]], dtype=np.float64)
        bootstrap = {k: v for k, v in data["bootstrap"].items()
                     if k not in ("coef_names", "samples")}
        error_model = data.get("prediction_interval")
        n_definition = data.get("n_definition", "non_embedding")
        if n_definition not in N_DEFINITIONS:
            raise ValueError(f"n_definition {n_definition!r} is not one of {N_DEFINITIONS}")
        return Law(kind=kind.name, config=config, coef_names=names, coef=coef,
                   coef_samples=samples.reshape(-1, len(names)), converged=bool(data["converged"]),
                   validation=data.get("validation", {}), provenance=data.get("provenance", {}),
                   bootstrap=bootstrap, notes=tuple(data.get("notes", ())),
                   problems=tuple(Problem(**p) for p in data.get("problems", ())),
                   error_model=None if error_model is None else ErrorModel.from_dict(error_model),
                   n_definition=n_definition,
                   version=data.get("archscale_version", "unknown"))
    except (KeyError, TypeError, ValueError) as err:
        raise ArchscaleError(f"not a valid law file ({type(err).__name__}: {err}): write one with "
                             "`archscale fit ... --out law.json`") from None


def load_law(path: str | Path) -> Law:
    """The law saved at ``path`` (``law.predict``, ``law.prediction_interval`` work at once)."""
    path = Path(path)
    if not path.is_file():
        raise ArchscaleError(f"no law file at {path}: fit one with "
                             f"`archscale fit ... --out {path}`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArchscaleError(f"{path} is not valid JSON: {err}") from None
    return law_from_dict(data)

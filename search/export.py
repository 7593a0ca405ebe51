"""Export a recommendation for a training team: one HuggingFace ``config.json`` per shape.

``export_hf`` reads the ``recommendations.json`` that ``archscale recommend`` writes and, under
the output folder, writes ``rank-1/config.json`` ... for the recommended shapes and
``loss-optimal/config.json``, plus a ``recommendations.json`` that keeps every prediction and its
provenance and adds where each config went and what it was exported from. A database URL's
password in the source (files written before passwords were hidden at their source) is hidden in
the export and listed under ``export.passwords_hidden``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import archscale
from archscale.arch.errors import ArchscaleError
from archscale.arch.export import write_hf_config
from archscale.arch.spec import ArchSpec
from archscale.search.storage import hide_passwords

FORMATS = ("hf",)
"""Export formats: HuggingFace LlamaForCausalLM config.json."""


def recommendation_path(source: str | Path) -> Path:
    """The recommendations.json of a folder, or the JSON file itself."""
    path = Path(source)
    if path.is_dir():
        path = path / "recommendations.json"
    if not path.is_file():
        raise ArchscaleError(f"no recommendations file at {path}: write one with "
                             "`archscale recommend ... --out DIR` and pass DIR")
    return path


def load_recommendation(source: str | Path) -> dict[str, Any]:
    """The recommendation JSON of ``source`` (a folder or the file), checked for its shapes."""
    path = recommendation_path(source)
    try:
        data = json.loads(path.read_text())
        for shape in _shapes(data).values():
            ArchSpec.from_dict(shape["spec"])
    except json.JSONDecodeError as err:
        raise ArchscaleError(f"{path} is not valid JSON: {err}") from None
    except (KeyError, TypeError) as err:
        raise ArchscaleError(f"{path} is not a recommendation ({type(err).__name__}: {err}): "
                             "write one with `archscale recommend`") from None
    return data


def _shapes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Folder name -> shape entry: the recommended shapes by rank, then the loss-optimal one."""
    shapes = {f"rank-{i}": s for i, s in enumerate(data["recommended"], 1)}
    shapes["loss-optimal"] = data["loss_optimal"]
    return shapes


def export_hf(source: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> list[Path]:
    """Write one HF config.json per recommended shape (and the loss-optimal one) under
    ``out_dir``, and ``out_dir/recommendations.json``; returns the config paths."""
    path = recommendation_path(source)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    data, hidden = hide_passwords(load_recommendation(path))
    out = Path(out_dir)
    written, configs, notes = [], {}, []
    for name, shape in _shapes(data).items():
        spec = ArchSpec.from_dict(shape["spec"])
        config_path = write_hf_config(spec, out / name, dtype)
        written.append(config_path)
        configs[name] = {"config": str(config_path.relative_to(out)),
                         "params_total": spec.params_total,
                         "predicted_loss": shape.get("predicted_loss"),
                         "predicted_decode_tokens_per_s": shape.get("predicted_decode_tokens_per_s")}
        if spec.d_model % spec.n_heads:
            notes.append(f"{name}: hidden_size {spec.d_model} is not a multiple of "
                         f"num_attention_heads {spec.n_heads}; the config is exact (head_dim is "
                         "explicit) but transformers 5.x refuses it (huggingface/transformers"
                         "#46082)")
    manifest = {**data, "export": {
        "format": "hf", "dtype": dtype, "source": str(path), "source_sha256": sha256,
        "archscale_version": archscale.__version__, "configs": configs, "notes": notes,
        **({"passwords_hidden": hidden} if hidden else {})}}
    (out / "recommendations.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return written

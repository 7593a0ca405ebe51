"""Export a recommendation for a training team, in their framework's config.

``export`` reads the ``recommendations.json`` that ``archscale recommend`` writes and, under the
output folder, writes one folder per shape (``rank-1`` ... and ``loss-optimal``) holding the
framework's config (arch/frameworks.py: hf, maxtext, torchtitan, megatron, litgpt, olmo-core) and
``archscale.json`` beside it: the shape's predictions with their intervals, the laws and
provenance behind them, and the training budget the law assumed (its tokens, and with a recipe
the batch size and learning rate the recipe's scaling rules give at this shape's N). The output's
``recommendations.json`` keeps every prediction and adds where each config went and what it was
exported from. A database URL's password in the source (files written before passwords were
hidden at their source) is hidden in the export and listed under ``export.passwords_hidden``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

import archscale
from archscale.arch.errors import ArchscaleError, SettingError
from archscale.arch.frameworks import (
    FORMATS,
    check_expressible,
    format_notes,
    get_format,
    write_shape,
)
from archscale.arch.spec import ArchSpec
from archscale.decide.recommendation import Recommendation, Scored
from archscale.search.passwords import hide_passwords
from archscale.sweeps.recipe import Budget, Recipe

__all__ = ["FORMATS", "export", "export_hf", "load_recipe", "load_recommendation",
           "recommendation_path", "training_budget"]


def recommendation_path(source: str | Path) -> Path:
    """The recommendations.json of a folder, or the JSON file itself."""
    path = Path(source)
    if path.is_dir():
        path = path / "recommendations.json"
    if not path.is_file():
        raise ArchscaleError(f"no recommendations file at {path}: write one with "
                             "`archscale recommend ... --out DIR` and pass DIR")
    return path


def load_recommendation(source: str | Path) -> Recommendation:
    """The Recommendation of ``source`` (a folder or its recommendations.json)."""
    return _read(recommendation_path(source))[0]


def _read(path: Path) -> tuple[Recommendation, dict[str, str]]:
    """The Recommendation in ``path``, any database password in it hidden, and where one was."""
    try:
        data, hidden = hide_passwords(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ArchscaleError(f"{path} is not valid JSON: {err}") from None
    try:
        rec = Recommendation.from_dict(data)
        float(rec.provenance["search"]["tokens"])
    except (ArchscaleError, KeyError, TypeError) as err:
        raise ArchscaleError(f"{path}: {err}") from None
    return rec, hidden


def load_recipe(path: str | Path) -> Recipe:
    """The Recipe of a sweep YAML (its ``recipe:``), a run JSON (its ``recipe``) or a file of
    Recipe fields."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())  # YAML reads JSON too
    except (OSError, yaml.YAMLError) as err:
        raise SettingError(f"{{recipe}} {path}: cannot read it ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
        data = data["recipe"]
    if not isinstance(data, dict):
        raise SettingError(f"{{recipe}} {path}: give a sweep YAML, a run JSON or Recipe fields")
    return Recipe.from_dict(data)


def training_budget(spec: ArchSpec, tokens: float, recipe: Recipe | None) -> dict[str, Any]:
    """The budget the law predicts for: tokens, and with ``recipe`` the batch size, steps and
    learning rate its scaling rules give at ``spec``'s N (``Recipe.resolved``)."""
    budget = {"tokens": tokens, "tokens_per_parameter": tokens / spec.params_nonembed,
              "train_flops": tokens * spec.train_flops_per_token(), "seq_len": spec.seq_len}
    if recipe is None:
        return {**budget, "recipe": None, "recipe_note": (
            "the recommendation does not record the study's recipe: pass --recipe (the sweep "
            "YAML, a run JSON or Recipe fields) for the batch size and learning rate its "
            "scaling rules give at this N")}
    resolved = recipe.resolved(spec)
    steps = resolved.steps_for(spec, Budget(tokens=int(tokens)))
    budget.update(
        global_batch_sequences=resolved.batch_size,
        global_batch_tokens=resolved.batch_size * spec.seq_len, steps=steps,
        warmup_steps=resolved.warmup_steps(spec, steps), peak_lr=resolved.lr,
        min_lr=resolved.lr * resolved.min_lr_ratio, schedule=resolved.schedule,
        lr_rule=recipe.lr_rule, batch_rule=recipe.batch_rule, recipe=recipe.to_dict())
    if recipe.lr_rule == "mup":  # the optimizer scales the hidden matrices' (e.g. mlp) LR by width
        budget["hidden_matrix_lr"] = resolved.lr * resolved.param_lr_scale(spec, "mlp")
    return budget


def _shapes(rec: Recommendation) -> dict[str, Scored]:
    """Folder name -> shape: the recommended shapes by rank, then the loss-optimal one."""
    shapes = {f"rank-{i}": s for i, s in enumerate(rec.recommended, 1)}
    shapes["loss-optimal"] = rec.loss_optimal
    return shapes


def export(source: str | Path, out_dir: str | Path, fmt: str = "hf", dtype: str = "bfloat16",
           recipe: Recipe | None = None) -> list[Path]:
    """Write one ``fmt`` config per recommended shape (and the loss-optimal one) under
    ``out_dir``, each with archscale.json beside it, and ``out_dir/recommendations.json``;
    returns the config paths. A shape the format cannot express is a FormatError."""
    form = get_format(fmt)
    path = recommendation_path(source)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    rec, hidden = _read(path)
    data = rec.to_dict()
    shapes = _shapes(rec)
    for scored in shapes.values():  # refuse before writing anything
        check_expressible(scored.spec, form)
    out = Path(out_dir)
    written, configs, notes = [], {}, []
    provenance = rec.provenance
    origin = {"path": str(path), "sha256": sha256, "archscale_version": archscale.__version__}
    for name, scored in shapes.items():
        spec, shape = scored.spec, rec.shape_dict(scored)
        config_path = write_shape(spec, form, out / name, label=name, dtype=dtype, extra={
            "label": name, "prediction": {k: v for k, v in shape.items() if k != "spec"},
            "target_loss": data["target_loss"],
            "throughput_setting": data["throughput_setting"],
            "laws": {k: provenance[k] for k in ("loss_law", "accuracy_law", "throughput")
                     if k in provenance},
            "training_budget": training_budget(spec, provenance["search"]["tokens"], recipe),
            "exported_from": origin})
        written.append(config_path)
        configs[name] = {"config": str(config_path.relative_to(out)),
                         "provenance": f"{name}/archscale.json",
                         "params_total": spec.params_total,
                         "predicted_loss": scored.loss,
                         "predicted_decode_tokens_per_s": scored.decode_tokens_per_s}
        notes += [f"{name}: {note}" for note in format_notes(spec, form)]
    manifest = {**data, "export": {
        "format": form.name, **({"dtype": dtype} if form.name == "hf" else {}),
        "source": str(path), "source_sha256": sha256,
        "archscale_version": archscale.__version__, "configs": configs, "notes": notes,
        "recipe": None if recipe is None else recipe.to_dict(),
        **({"passwords_hidden": hidden} if hidden else {})}}
    (out / "recommendations.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return written


def export_hf(source: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> list[Path]:
    """``export`` in the HuggingFace format: one config.json per shape."""
    return export(source, out_dir, "hf", dtype)

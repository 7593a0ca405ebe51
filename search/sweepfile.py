"""The sweep file: one YAML document that describes a study, validated before anything runs.

A sweep file names the study, the data (corpus + tokenizer), the sequence length, the training
recipe (``archscale.sweeps.recipe.Recipe`` fields), the budget rule, how throughput is measured,
the shape rules and a seed, and then either a ``grid:`` (every combination is enqueued as a fixed
trial; ``noise:`` adds repeats of a few of them with other seeds; ``design:`` makes them
candidates, of which the design engine trains those worth their FLOPs) or a ``search:`` (a sampler
proposes shapes at one fixed N). The problems of a file are
reported together, in one ``SweepFileError``, each line naming the key path (rules that relate
several keys of a section, such as "exactly one of", are checked once its keys are valid)::

    name: tiny-grid
    corpus: null            # the embedded Shakespeare plays (or a path)
    tokenizer: byte
    seq_len: 64
    recipe: {lr: 3.0e-3, batch_size: 8, eval_interval: 0.25}
    mesh: {data: 1, fsdp: 2}  # optional; default: data parallel over every device
    budget: {tokens_per_param: 20}
    throughput: {batch: 4, context: 64}
    shape: {head_dim: 8}
    seed: 0
    grid:
      scales: [2.0e4, 5.0e4]          # non-embedding N
      d_over_sqrt_n: [0.15, 0.3]
      r: [1.0, 4.0]
      gqa: [1, 2]
      tokens_per_param: [10, 40]      # optional: every shape at two token budgets
    noise: {seeds: [1], runs: 2}      # optional: 2 grid runs trained again with seed 1

Token budgets: ``budget.tokens_per_param`` is the study's ratio D/N, the one a recommendation
or verification at a new N trains for (``plan.budget_for``). A grid trains every shape at it,
unless the grid lists its own budgets, as ratios (``grid.tokens_per_param``: D = k x N) or as
token counts (``grid.tokens``: the same D at every scale). Two or more budgets per scale keep N
and D apart, which a Chinchilla fit needs. Ratios give every scale its own D values (two ratios
over five scales: ten distinct D); token counts give N and D independent, but only as many
distinct D as counts, so list three or more for the exponent of D to be identified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from archscale.arch.errors import ArchscaleError
from archscale.search.ranges import FloatRange, IntRange
from archscale.sweeps.corpus import CorpusSource
from archscale.sweeps.passk import PasskSettings
from archscale.sweeps.recipe import Recipe
from archscale.sweeps.sharding import MeshShape
from archscale.sweeps.timing import TIMING

OBJECTIVES = {"loss": "minimize", "decode_throughput": "maximize"}
"""Objective names a search may use, with their direction."""


class SweepFileError(ArchscaleError):
    """A sweep file with problems; the message lists every one, by key path."""


def _corpus_mapping(value: Any) -> Any:
    """A corpus path alone is short for {path: PATH}."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        return {"path": value}
    raise ValueError(f"got {value!r}: give a path, or {{path: P, include: [globs], exclude: "
                     "[globs], text_field: F}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class BudgetRule(_Section):
    """How much each run trains: tokens = k x N (the scale's target N), or a FLOPs budget."""

    tokens_per_param: float | None = Field(default=None, gt=0)
    """k in D = k x N, N the target non-embedding parameters of the scale (20 is Chinchilla): the
    ratio of every grid run (unless the grid lists its own budgets) and of the target a
    recommendation or verification trains for."""
    flops: float | list[float] | None = None
    """Training FLOPs per run: one number, or one per grid scale."""

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetRule:
        if (self.tokens_per_param is None) == (self.flops is None):
            raise ValueError("give exactly one of tokens_per_param or flops")
        flops = self.flops if isinstance(self.flops, list) else [self.flops]
        if self.flops is not None and not all(f is not None and f > 0 for f in flops):
            raise ValueError(f"flops must be positive (got {self.flops})")
        return self


class ThroughputSettings(_Section):
    """The inference throughput measured after each completed run."""

    enabled: bool = True
    """Measure prefill and decode throughput (needed for the decode_throughput objective)."""
    batch: int = Field(default=TIMING.batch, ge=1)
    """Sequences decoded together."""
    context: int | None = Field(default=None, ge=1)
    """Cached prompt length of the measurement; default: the study's seq_len."""
    decode_tokens: int = Field(default=TIMING.decode_tokens, ge=1)
    """Tokens generated per timed decode call."""
    repeats: int = Field(default=TIMING.repeats, ge=1)
    """Timed calls; the fastest counts (other processes only add time)."""
    min_seconds: float = Field(default=TIMING.min_seconds, ge=0)
    """Prefill and decode are each timed for at least this long (more calls than repeats when
    they are short)."""


class ShapeRules(_Section):
    """How (N, d, r, GQA) targets become integer shapes (``arch.shapes.shape_from_budget``)."""

    head_dim: int = Field(default=64, ge=2)
    """Width of every attention head."""
    d_model_multiple: int = Field(default=8, ge=1)
    """d_model is rounded to a multiple of this."""
    d_ff_multiple: int = Field(default=8, ge=1)
    """d_ff is rounded to a multiple of this."""
    tie_embeddings: bool = True
    """Share the input embedding and the output projection."""
    max_params_error: float = Field(default=0.25, gt=0)
    """A target whose nearest shape misses N by more than this fraction is an error."""


class GridSection(_Section):
    """Scales x widths x ratios x GQA groups, each combination enqueued once as a fixed trial."""

    scales: list[PositiveFloat] = Field(min_length=1)
    """Target non-embedding parameter counts N."""
    d_over_sqrt_n: list[PositiveFloat] | None = Field(default=None, min_length=1)
    """Widths as d_model / sqrt(N) (give this or d_model)."""
    d_model: list[PositiveInt] | None = Field(default=None, min_length=1)
    """Widths as d_model (give this or d_over_sqrt_n)."""
    r: list[PositiveFloat] = Field(min_length=1)
    """MLP-to-attention parameter ratios."""
    gqa: list[PositiveInt] = Field(default=[1], min_length=1)
    """GQA group sizes (query heads per KV head)."""
    n_layers: list[PositiveInt] | None = None
    """Depth per scale (same length as scales); default: the depth the budget affords."""
    tokens_per_param: list[PositiveFloat] | None = Field(default=None, min_length=1)
    """Token budgets as ratios D/N (N the scale's target): every shape trains once at each
    (needs a ``budget.tokens_per_param``, which stays the target's ratio); default: the budget's
    one ratio."""
    tokens: list[PositiveFloat] | None = Field(default=None, min_length=1)
    """Token budgets as training tokens D, the same at every scale: every shape trains once on
    each (give this or tokens_per_param; needs a ``budget.tokens_per_param`` for the target)."""

    @property
    def budget_axis(self) -> str | None:
        """The grid's budget axis: "tokens_per_param", "tokens", or None (the budget rule's)."""
        return next((name for name in ("tokens_per_param", "tokens")
                     if getattr(self, name) is not None), None)

    @model_validator(mode="after")
    def _check(self) -> GridSection:
        problems = _width_problem(self.d_over_sqrt_n, self.d_model)
        if self.n_layers is not None and len(self.n_layers) != len(self.scales):
            problems.append(f"n_layers has {len(self.n_layers)} entries: give one per scale "
                            f"({len(self.scales)})")
        if self.tokens_per_param is not None and self.tokens is not None:
            problems.append("give at most one of tokens_per_param or tokens")
        for name in ("tokens_per_param", "tokens"):
            values = getattr(self, name) or []
            if len(set(values)) != len(values):
                problems.append(f"{name} {values} repeat a value")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class NoiseSection(_Section):
    """Repeats of a few grid runs with other seeds, to measure the run-to-run scatter of the loss
    (``search.noise.noise_floor``). The repeated runs are ``runs`` grid runs spread evenly over
    the plan (``plan.noise_points``: budgets, then scales ascending, then shapes), each trained
    once more per seed; a repeat differs from its grid run only in its seed (initialisation and
    data order), which enters its config key."""

    seeds: list[int] = Field(min_length=1)
    """Seeds of the repeats (each >= 0, none the study's ``seed``)."""
    runs: int = Field(ge=1)
    """Grid runs to repeat."""

    @model_validator(mode="after")
    def _check(self) -> NoiseSection:
        if any(seed < 0 for seed in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} must be distinct and >= 0")
        return self


class DesignBudget(_Section):
    """What a ``design:`` study may spend on training: FLOPs, or a fraction of its grid's."""

    flops: float | None = Field(default=None, gt=0)
    """Training FLOPs (each run's ``6N + attention`` per token times its tokens, arch/spec.py)."""
    fraction: float | None = Field(default=None, gt=0, le=1)
    """A fraction of what training every grid point (noise repeats excluded) would cost."""

    @model_validator(mode="after")
    def _exactly_one(self) -> DesignBudget:
        if (self.flops is None) == (self.fraction is None):
            raise ValueError("give exactly one of flops or fraction")
        return self


class DesignTarget(_Section):
    """Where the decision is made: a scale beyond the grid and the shapes compared there."""

    scale_factor: float | None = Field(default=None, gt=0)
    """N at the target as a multiple of the grid's largest scale (give this or n_params)."""
    n_params: float | None = Field(default=None, gt=0)
    """N at the target (give this or scale_factor)."""
    tokens_per_param: float | None = Field(default=None, gt=0)
    """D/N at the target; default: the study's ``budget.tokens_per_param``."""
    d_over_sqrt_n: list[PositiveFloat] | None = Field(default=None, min_length=1)
    """Widths compared at the target; default: the grid's (needed when the grid gives d_model)."""
    r: list[PositiveFloat] | None = Field(default=None, min_length=1)
    """MLP-to-attention ratios compared at the target; default: the grid's."""
    gqa: list[PositiveInt] | None = Field(default=None, min_length=1)
    """GQA groups compared at the target; default: the grid's."""

    @model_validator(mode="after")
    def _exactly_one(self) -> DesignTarget:
        if (self.scale_factor is None) == (self.n_params is None):
            raise ValueError("give exactly one of scale_factor or n_params")
        return self


class DesignSection(_Section):
    """The design engine picks which grid points to train, batch by batch, until the target's
    best shape is settled or the budget is spent (search/designed.py)."""

    budget: DesignBudget
    """Training FLOPs the study may spend (runs queued or running count as spent)."""
    target: DesignTarget
    """The scale and shapes the study decides between."""
    batch: int = Field(default=2, ge=1)
    """Runs proposed per refit of the law (about the number of workers)."""
    law: str = "conditional"
    """The law kind (``archscale fit --law`` names, declared forms included)."""
    form: dict[str, Any] | None = None
    """The law's options (e.g. conditional terms); default: what the grid's values identify."""
    stop_probability: float = Field(default=0.9, gt=0, lt=1)
    """Stop once the top shape is the best, up to ``tolerance``, with at least this probability."""
    tolerance: float = Field(default=0.01, ge=0, lt=1)
    """Loss (relative) within which a shape counts as the best: shapes that close cannot be told
    apart by training them either, and the recommendation treats them alike (its default loss
    budget is 1%). 0: the top shape must be strictly best."""
    criterion: Literal["variance", "wrong_shape"] = "variance"
    """What each run should make more certain: ``variance``, the target shapes' predicted loss;
    ``wrong_shape``, the chance that the shape ranked first at the target is not the best."""


class SearchSection(_Section):
    """A sampler proposes (width, r, GQA) at one fixed N and budget."""

    n_params: float = Field(gt=0)
    """Target non-embedding parameters N of every proposed shape."""
    d_model: IntRange | None = None
    """Width range as d_model (give this or d_over_sqrt_n)."""
    d_over_sqrt_n: FloatRange | None = None
    """Width range as d_model / sqrt(N)."""
    r: FloatRange
    """MLP-to-attention ratio range."""
    gqa: list[PositiveInt] = Field(default=[1], min_length=1)
    """GQA group sizes to choose from."""
    n_layers: int | None = Field(default=None, ge=1)
    """Fixed depth; default: the depth the budget affords."""
    sampler: Literal["tpe", "nsga2", "gp"] = "tpe"
    """tpe (multivariate TPE), nsga2 (NSGA-II) or gp (Gaussian process; needs torch)."""
    objectives: list[Literal["loss", "decode_throughput"]] = Field(default=["loss"], min_length=1)
    """loss (minimized) and optionally decode_throughput (maximized)."""
    target_loss: float | None = Field(default=None, gt=0)
    """Constraint: shapes with a final loss above this are infeasible (trial.set_constraint)."""
    pruner: Literal["none", "median"] = "none"
    """Stop runs early on intermediate validation loss (single objective only)."""
    n_trials: int = Field(ge=1)
    """Trials to run (finished or failed; duplicates of a finished shape count too)."""
    n_startup_trials: int = Field(default=10, ge=1)
    """Random trials before the model-based proposals (NSGA-II: the population size, >= 2)."""

    @model_validator(mode="after")
    def _check(self) -> SearchSection:
        problems = _width_problem(self.d_over_sqrt_n, self.d_model)
        if len(set(self.objectives)) != len(self.objectives):
            problems.append(f"objectives {self.objectives} repeat a name")
        if self.objectives[0] != "loss":
            problems.append("the first objective must be loss")
        if self.pruner != "none" and len(self.objectives) > 1:
            problems.append("Optuna's pruners need a single objective: set pruner: none or use "
                            "objectives: [loss]")
        if self.sampler == "nsga2" and self.n_startup_trials < 2:
            problems.append("nsga2 needs n_startup_trials (its population size) >= 2")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SweepFile(_Section):
    """A whole study: data, recipe, budget, measurements, and a grid or a search."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    """Study name (letters, digits, '_', '.', '-')."""
    corpus: Annotated[CorpusSource | None, BeforeValidator(_corpus_mapping)] = None
    """Corpus source for ``sweeps.data.load_data``: null for the embedded plays, a path (any
    UTF-8 text file or folder, .jsonl/.parquet records, .gz/.zst, token shards, a HF dataset
    folder), or {path: ..., include: [globs], exclude: [globs], text_field: text}."""
    tokenizer: str = "byte"
    """byte or bpe:N."""
    seq_len: int = Field(ge=2)
    """Training context of every run."""
    recipe: dict[str, Any] = {}
    """Recipe fields shared by every run (``archscale.sweeps.recipe.Recipe``)."""
    mesh: MeshShape = MeshShape()
    """Each run's device mesh, {data: D, fsdp: F} (``archscale.sweeps.sharding.MeshShape``):
    D x F must be the devices a worker sees, and the batch a multiple of D x F."""
    budget: BudgetRule
    """Training budget rule."""
    throughput: ThroughputSettings = ThroughputSettings()
    """Throughput measurement settings."""
    shape: ShapeRules = ShapeRules()
    """Shape construction rules."""
    task: str | None = None
    """Multiple-choice task scored after each complete run: a .jsonl path, 'default' for the
    shipped one (sweeps/tasks), or null for none."""
    checkpoints: bool = False
    """Checkpoint every evaluation (in the artifact folder), so a retried trial resumes."""
    passk: dict[str, Any] | None = None
    """pass@k of sampled completions on a verifiable task after each complete run
    (``archscale.sweeps.passk.PasskSettings`` keys, e.g. {task: verse-word-rest, samples: 32,
    temperature: 1.0}); null for none."""
    seed: int = Field(default=0, ge=0)
    """Seed of initialisation, data order and the sampler."""
    grid: GridSection | None = None
    """A grid of fixed trials."""
    noise: NoiseSection | None = None
    """Grid only: repeats of a few grid runs with other seeds (the run-to-run noise floor)."""
    search: SearchSection | None = None
    """A sampler-driven search."""
    design: DesignSection | None = None
    """Grid only: train the grid points the design engine picks, not all of them."""

    @model_validator(mode="after")
    def _check(self) -> SweepFile:
        problems = []
        if (self.grid is None) == (self.search is None):
            problems.append("give exactly one of grid: or search:")
        if self.noise is not None and self.grid is None:
            problems.append("noise: repeats grid runs: it needs a grid:")
        if self.noise is not None and self.seed in self.noise.seeds:
            problems.append(f"noise.seeds {self.noise.seeds} include the study's seed {self.seed}: "
                            "a repeat needs another seed")
        problems += _design_problems(self)
        axis = self.grid.budget_axis if self.grid is not None else None
        if axis is not None and self.budget.tokens_per_param is None:
            problems.append(f"grid.{axis} needs a tokens_per_param budget (budget: "
                            "{tokens_per_param: K}, K the ratio recommendations train for)")
        flops = self.budget.flops
        if isinstance(flops, list):
            if self.search is not None:
                problems.append("budget.flops must be one number for a search")
            elif self.grid is not None and len(flops) != len(self.grid.scales):
                problems.append(f"budget.flops has {len(flops)} entries: give one per grid scale "
                                f"({len(self.grid.scales)}) or a single number")
        if (self.search is not None and "decode_throughput" in self.search.objectives
                and not self.throughput.enabled):
            problems.append("the decode_throughput objective needs throughput.enabled: true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def recipe_obj(self) -> Recipe:
        return Recipe.from_dict(self.recipe)

    @property
    def passk_settings(self) -> PasskSettings | None:
        return None if self.passk is None else PasskSettings.from_dict(self.passk)

    @property
    def tp_context(self) -> int:
        return self.throughput.context or self.seq_len

    def throughput_options(self) -> dict[str, Any]:
        """``measure_throughput`` keyword arguments of this sweep's throughput setting."""
        tp = self.throughput
        return {"batch": tp.batch, "context": self.tp_context, "decode_tokens": tp.decode_tokens,
                "repeats": tp.repeats, "min_seconds": tp.min_seconds}

    @property
    def directions(self) -> list[str]:
        objectives = self.search.objectives if self.search is not None else ["loss"]
        return [OBJECTIVES[name] for name in objectives]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _design_problems(sweep: SweepFile) -> list[str]:
    """A design chooses among grid points, and its target needs a width and a D/N."""
    design = sweep.design
    if design is None:
        return []
    if sweep.grid is None:
        return ["design: chooses among grid points: it needs a grid:"]
    problems = []
    if design.target.d_over_sqrt_n is None and sweep.grid.d_over_sqrt_n is None:
        problems.append("design.target.d_over_sqrt_n is needed when the grid gives d_model")
    if design.target.tokens_per_param is None and sweep.budget.tokens_per_param is None:
        problems.append("design.target.tokens_per_param is needed without a tokens_per_param "
                        "budget")
    return problems


def _width_problem(d_over_sqrt_n: object, d_model: object) -> list[str]:
    if (d_over_sqrt_n is None) == (d_model is None):
        return ["give exactly one of d_over_sqrt_n or d_model"]
    return []


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section at ``loc`` (for 'unknown key' messages); a section may be a
    pydantic model or a dataclass (``mesh``)."""
    def fields(section: type) -> dict[str, Any]:
        return section.model_fields if issubclass(section, BaseModel) else section.__dataclass_fields__

    for part in loc:
        field = fields(model).get(part) if isinstance(part, str) else None
        inner = getattr(field, "annotation", None) or getattr(field, "type", None)
        candidates = [inner, *getattr(inner, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type)
                      and (issubclass(c, BaseModel) or dataclasses.is_dataclass(c))), None)
        if model is None:
            return []
    return sorted(fields(model))


def _format(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        keys = _valid_keys(SweepFile, loc[:-1])
        return f"{where}: unknown key (valid keys here: {', '.join(keys)})"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    if err["type"] in ("model_type", "dataclass_type", "dict_type", "model_attributes_type"):
        keys = _valid_keys(SweepFile, loc)
        return f"{where}: got {err['input']!r}, expected a mapping" + (
            f" of keys ({', '.join(keys)})" if keys else "")
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def parse_sweep(data: Any, source: str = "sweep file") -> SweepFile:
    """Validate a sweep document (a dict), raising one SweepFileError that lists every problem."""
    if not isinstance(data, dict):
        raise SweepFileError(f"{source} must be a YAML mapping of keys (name:, seq_len:, ...)")
    problems: list[str] = []
    try:
        sweep = SweepFile.model_validate(data)
    except ValidationError as err:
        problems = [_format(e) for e in err.errors()]
        sweep = None
    # The recipe and passk keys are checked by their own dataclasses, so their fields live in
    # one place.
    for key, parse in (("recipe", Recipe.from_dict), ("passk", PasskSettings.from_dict)):
        if isinstance(data.get(key), dict):
            try:
                parse(data[key])
            except (ArchscaleError, TypeError) as err:
                problems.append(f"{key}: {err}")
    if problems:
        raise SweepFileError(f"{source} has {len(problems)} problem(s):\n  - "
                             + "\n  - ".join(problems))
    assert sweep is not None
    return sweep


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping gives one key twice (YAML would keep the last value silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # a complex key: SafeLoader refuses it with its own message
            if key in first:
                raise _DuplicateKey(problem=f"key {key!r} is given twice (first on line "
                                    f"{first[key]}): keep one",
                                    problem_mark=key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a YAML sweep file (a key given twice in a mapping is an error)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except OSError as err:
        raise SweepFileError(f"cannot read sweep file {path}: {err.strerror}") from None
    except _DuplicateKey as err:
        raise SweepFileError(f"{path}:{err.problem_mark.line + 1}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise SweepFileError(f"{path} is not valid YAML: {err}") from None
    return parse_sweep(data, source=str(path))

"""Fitting a declared form (laws/declared.py): JAX derivatives, scipy least squares, a LawKind.

The expression is compiled once per form (``_compiled``, cached): its residuals in the form's
space, their Jacobian (``jax.jacfwd``) and a batched objective, all jitted and run in float64.
A fit evaluates the loss at every start of the form's grid in one batched call, runs
``scipy.optimize.least_squares`` (trust-region reflective, within the bounds; loss ``huber``
with ``f_scale`` = the Huber threshold, which is Huber's loss exactly) from the ``local_starts``
best, and keeps the best end point. A bootstrap refit resamples runs (rows repeated by their
counts, so the arrays keep one shape and nothing recompiles) and starts from the full fit.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from scipy.stats import qmc

from archscale.arch.errors import ArchscaleError
from archscale.laws.declared import DeclaredForm, form_from_dict, indicator, ungrouped
from archscale.laws.diagnostics import Problem
from archscale.laws.expression import parse
from archscale.laws.kind import Estimate, LawKind
from archscale.laws.table import positive_values, require_columns

TOLERANCE = 1e-12
"""ftol, xtol and gtol of every local least-squares fit."""
AT_BOUND = 1e-6
"""A coefficient within this (relative) of a finite bound sits at it."""
MIN_ROWS = 16
"""Fewest rows the compiled functions see (shorter tables are padded)."""


@dataclass(frozen=True)
class Compiled:
    """A form's jitted functions; ``z`` is the optimizer's vector (log of log coefficients)."""

    residuals: Callable[..., Any]
    """(z, inputs, target in space, weight) -> weighted residuals (n)."""
    jacobian: Callable[..., Any]
    """(z, inputs, target in space, weight) -> d residuals / dz (n x P)."""
    residuals_batch: Callable[..., Any]
    """(Z, inputs, target in space, weight) -> residuals of every row of Z (B x n)."""
    predict_batch: Callable[..., Any]
    """(coefficients S x P in natural units, inputs) -> predictions (S x n)."""


@functools.lru_cache(maxsize=64)
def _compiled(expression: str, definitions: tuple[tuple[str, str], ...], inputs: tuple[str, ...],
              names: tuple[str, ...], logs: tuple[bool, ...], space: str) -> Compiled:
    parsed = parse(expression, [*inputs, *names], dict(definitions))
    is_log = np.array(logs)

    def predict(coef: Any, data: dict[str, Any]) -> Any:
        return parsed({**data, **{n: coef[i] for i, n in enumerate(names)}})

    def residuals(z: Any, data: dict[str, Any], target: Any, weight: Any) -> Any:
        value = predict(jnp.where(is_log, jnp.exp(z), z), data)
        return weight * ((jnp.log(value) if space == "log" else value) - target)

    return Compiled(residuals=jax.jit(residuals), jacobian=jax.jit(jax.jacfwd(residuals)),
                    residuals_batch=jax.jit(jax.vmap(residuals, in_axes=(0, None, None, None))),
                    predict_batch=jax.jit(jax.vmap(predict, in_axes=(0, None))))


def padded_length(n: int) -> int:
    """Rows the arrays are padded to: the next power of two (at least MIN_ROWS), so the fits of
    the many subsets that validation, bootstrap and design pass share a few compiled shapes."""
    return max(MIN_ROWS, 1 << max(0, n - 1).bit_length())


def _padded(inputs: dict[str, np.ndarray], target: np.ndarray, rows: np.ndarray | None = None
            ) -> tuple[dict[str, Any], Any, Any]:
    """Inputs, target and 0/1 weights of ``rows`` (default all), padded with weight-0 copies of
    the first row (so every residual stays finite and the padding adds exactly 0)."""
    rows = np.arange(len(target)) if rows is None else rows
    index = np.zeros(padded_length(len(rows)), dtype=int)
    index[:len(rows)] = rows
    weight = (np.arange(len(index)) < len(rows)).astype(np.float64)
    return ({k: jnp.asarray(v[index]) for k, v in inputs.items()}, jnp.asarray(target[index]),
            jnp.asarray(weight))


def compiled(form: DeclaredForm) -> Compiled:
    return _compiled(form.expression, tuple(form.definitions.items()), form.inputs,
                     form.coef_names, tuple(c.log for c in form.coefficients), form.space)


def _to_z(form: DeclaredForm, coef: np.ndarray) -> np.ndarray:
    logs = np.array([c.log for c in form.coefficients])
    with np.errstate(divide="ignore"):
        return np.where(logs, np.log(np.where(logs, coef, 1.0)), coef)


def _to_coef(form: DeclaredForm, z: np.ndarray) -> np.ndarray:
    logs = np.array([c.log for c in form.coefficients])
    return np.where(logs, np.exp(np.where(logs, z, 0.0)), z)


def z_bounds(form: DeclaredForm) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([c.bounds[0] for c in form.coefficients], dtype=float)
    hi = np.array([c.bounds[1] for c in form.coefficients], dtype=float)
    with np.errstate(divide="ignore"):
        return _to_z(form, lo), _to_z(form, hi)


def start_grid(form: DeclaredForm, seed: int = 0) -> np.ndarray:
    """Every start (z units): the product of the declared start lists, times ``n_starts``
    scrambled-Sobol draws within the bounds of the coefficients that declare none (log-uniform
    for log coefficients)."""
    declared = [i for i, c in enumerate(form.coefficients) if c.starts]
    drawn = [i for i, c in enumerate(form.coefficients) if not c.starts]
    lo, hi = z_bounds(form)
    listed = [[_to_z(form, np.full(len(form.coefficients), s))[i]
               for s in form.coefficients[i].starts] for i in declared]
    product = np.array(list(itertools.product(*listed)), dtype=float).reshape(
        math.prod(len(values) for values in listed), len(declared))
    if drawn:
        unit = qmc.Sobol(len(drawn), scramble=True, seed=seed).random(form.n_starts)
        sample = lo[drawn] + unit * (hi[drawn] - lo[drawn])
    else:
        sample = np.zeros((1, 0))
    grid = np.empty((len(product) * len(sample), len(form.coefficients)))
    grid[:, declared] = np.repeat(product, len(sample), axis=0)
    grid[:, drawn] = np.tile(sample, (len(product), 1))
    return grid


def columns(form: DeclaredForm, table: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The inputs (refusing missing or non-finite values) and the target in the form's space."""
    values = positive_values(table, [*form.inputs, form.target], f"the {form.name} law",
                             positive=False)
    target = values[form.target]
    if form.space == "log":
        if np.any(target <= 0):
            raise ArchscaleError(f"the {form.name} law measures residuals in log space but "
                                 f"{form.target} has non-positive values: declare space absolute")
        target = np.log(target)
    return {n: values[n] for n in form.inputs}, target


def _loss(form: DeclaredForm, resid: np.ndarray) -> np.ndarray:
    """The fitting loss of residual rows (B x n) -> B, in least_squares' cost units."""
    if form.loss == "squares":
        out = 0.5 * np.sum(resid**2, axis=-1)
    else:
        delta = form.huber_delta
        a = np.abs(resid)
        out = np.sum(np.where(a <= delta, 0.5 * resid**2, delta * a - 0.5 * delta**2), axis=-1)
    return np.where(np.isfinite(out), out, np.inf)


def _local(form: DeclaredForm, fns: Compiled, arrays: tuple[dict[str, Any], Any, Any],
           z0: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, float, bool]:
    """One least-squares fit from ``z0``: (z, cost, converged); a start whose steps leave the
    expression's domain ends unconverged at infinite cost."""

    def jacobian(z: np.ndarray) -> np.ndarray:
        # a derivative JAX cannot form (0 * inf where a clamp is active) is 0, as it is there
        return np.nan_to_num(np.asarray(fns.jacobian(z, *arrays)), nan=0.0, posinf=0.0,
                             neginf=0.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = least_squares(
                lambda z: np.asarray(fns.residuals(z, *arrays)), np.clip(z0, *bounds),
                jac=jacobian, bounds=bounds, method="trf", x_scale="jac",
                loss="huber" if form.loss == "huber" else "linear", f_scale=form.huber_delta,
                ftol=TOLERANCE, xtol=TOLERANCE, gtol=TOLERANCE)
        except (ValueError, np.linalg.LinAlgError):
            return z0, math.inf, False
    cost = float(result.cost) if np.isfinite(result.cost) else math.inf
    return result.x, cost, bool(result.status > 0 and np.isfinite(cost))


def fit_form(form: DeclaredForm, table: pd.DataFrame,
             warm: np.ndarray | None = None) -> Estimate:
    """The best local fit from the form's start grid (see the module docstring); ``warm``
    (coefficient rows, natural units: e.g. a fit on fewer runs) joins the grid's starts."""
    inputs, target = columns(form, table)
    fns, bounds = compiled(form), z_bounds(form)
    with jax.enable_x64(True):
        arrays = _padded(inputs, target)
        grid = start_grid(form)
        if warm is not None:
            grid = np.vstack([_to_z(form, np.atleast_2d(warm)), grid])
        screened = _loss(form, np.asarray(fns.residuals_batch(jnp.asarray(grid), *arrays)))
        order = np.argsort(screened, kind="stable")[:form.local_starts]
        ends = [_local(form, fns, arrays, grid[i], bounds)
                for i in order if np.isfinite(screened[i])]
    if not ends:
        raise ArchscaleError(f"the {form.name} law cannot be evaluated at any of its "
                             f"{len(grid)} starts (non-finite predictions): check its expression, "
                             "bounds and starts against the data")
    z, cost, converged = min(ends, key=lambda e: e[1])
    at_best = sum(e[1] <= cost * (1 + 1e-6) + 1e-15 for e in ends)
    note = (f"{at_best} of {len(ends)} local fits (best of {len(grid)} starts) reached the best "
            f"objective {cost:.6g}")
    return Estimate(coef=_to_coef(form, z), names=form.coef_names, converged=converged,
                    config={"declaration": form.to_dict()}, notes=(note,), state=z)


def bootstrap_form(form: DeclaredForm, table: pd.DataFrame, estimate: Estimate,
                   counts_SxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refits on resampled runs, each warm-started at the full fit: (samples S x P, converged)."""
    inputs, target = columns(form, table)
    fns, bounds = compiled(form), z_bounds(form)
    samples = np.full((len(counts_SxN), len(form.coefficients)), np.nan)
    ok = np.zeros(len(counts_SxN), dtype=bool)
    with jax.enable_x64(True):
        for s, counts in enumerate(counts_SxN):
            arrays = _padded(inputs, target, np.repeat(np.arange(len(counts)), counts))
            z, _, ok[s] = _local(form, fns, arrays, estimate.state, bounds)
            samples[s] = _to_coef(form, z)
    return samples, ok


def predict_form(form: DeclaredForm, coef_SxP: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    values = positive_values(table, list(form.inputs), f"predicting with the {form.name} law",
                             positive=False)
    n_rows = len(table)
    if n_rows == 0:
        return np.empty((len(np.atleast_2d(coef_SxP)), 0))
    with jax.enable_x64(True):
        data, _, _ = _padded(values, np.zeros(n_rows))
        out = compiled(form).predict_batch(jnp.asarray(np.atleast_2d(coef_SxP), dtype=jnp.float64),
                                           data)
        return np.asarray(out, dtype=np.float64)[:, :n_rows]


def bound_problems(form: DeclaredForm, coef: dict[str, float]) -> list[Problem]:
    """A coefficient at a finite declared bound: the data push it past the range the form allows."""
    problems = []
    for c in form.coefficients:
        value = coef[c.name]
        for bound in c.bounds:
            if math.isfinite(bound) and abs(value - bound) <= AT_BOUND * max(1.0, abs(bound)):
                problems.append(Problem("at_bound", (
                    f"coefficient {c.name} = {value:.4g} sits at its declared bound {bound:g}: "
                    f"the runs push it past the range the {form.name} form allows; widen the "
                    "bound if it was a guess, or add runs that spread the inputs it scales")))
    return problems


def _levels(form: DeclaredForm, config: dict[str, Any], table: pd.DataFrame) -> list[str]:
    """The group's values: those the fit saw (in ``config``), else the table's."""
    if not form.group:
        return []
    if "levels" in config:
        return list(config["levels"])
    require_columns(table, [form.group], f"the {form.name} law's groups")
    return sorted(set(table[form.group].astype(str)))


def _flat(form: DeclaredForm, levels: list[str], table: pd.DataFrame
          ) -> tuple[DeclaredForm, pd.DataFrame]:
    """The ungrouped form (laws/declared.py ``ungrouped``) and the table with its indicators."""
    if not form.group:
        return form, table
    require_columns(table, [form.group], f"the {form.name} law's groups")
    values = table[form.group].astype(str)
    unknown = sorted(set(values) - set(levels))
    if unknown:
        raise ArchscaleError(f"the {form.name} law was fitted on {form.group} {levels}; rows have "
                             f"{unknown}: refit with runs of those, or predict known ones")
    marks = {indicator(form, level): (values == level).astype(float) for level in levels}
    return ungrouped(form, levels), table.assign(**marks)


def kind_for(form: DeclaredForm) -> LawKind:
    """The LawKind of a declared form: fit_law, intervals, validation and law.json treat it as
    they treat the built-in kinds; its config is the declaration itself (and the group's values
    once fitted)."""

    def fit(table: pd.DataFrame, config: dict[str, Any]) -> Estimate:
        levels = _levels(form, config, table)
        estimate = fit_form(*_flat(form, levels, table))
        return dataclasses.replace(estimate, config={**config, **(
            {"levels": levels} if form.group else {})})

    def bootstrap(table: pd.DataFrame, config: dict[str, Any], estimate: Estimate,
                  counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat, rows = _flat(form, _levels(form, config, table), table)
        return bootstrap_form(flat, rows, estimate, counts)

    def predict(config: dict[str, Any], coef: np.ndarray, table: pd.DataFrame) -> np.ndarray:
        flat, rows = _flat(form, _levels(form, config, table), table)
        return predict_form(flat, coef, rows)

    return LawKind(
        name=form.name, configure=lambda options: {"declaration": form.to_dict()},
        target=lambda config: form.target,
        n_params=lambda config: len(ungrouped(form, config.get("levels", [""])).coefficients),
        min_scales=form.min_scales, fit=fit, bootstrap=bootstrap, predict=predict,
        axes=form.extrapolation_axes, space=form.space,
        problems=lambda config, coef, table: bound_problems(
            ungrouped(form, _levels(form, config, table)), coef),
        default_n_boot=form.n_boot, scales=lambda config: tuple(
            c.name for c in ungrouped(form, config.get("levels", [])).coefficients
            if c.bounds[0] >= 0),
        columns=lambda config: (*form.inputs, *([form.group] if form.group else []), form.target),
        default_columns=dict(form.columns))


@functools.lru_cache(maxsize=64)
def _kind_from_json(declaration: str) -> LawKind:
    return kind_for(form_from_dict(json.loads(declaration)))


def kind_from_config(config: dict[str, Any]) -> LawKind:
    """The kind a saved declared law's config (its embedded declaration) rebuilds."""
    return _kind_from_json(json.dumps(config["declaration"]))  # key order is coefficient order

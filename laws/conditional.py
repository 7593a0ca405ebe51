"""Architecture-conditional law (Bian et al. 2025, arXiv:2510.18245, Eq. 3) with declared terms.

    product:  L = L_opt(N, D) * s * prod_k (1 + sum_i c_ki phi_i(x_k))
    additive: L = L_opt(N, D) + s + sum_k sum_i c_ki phi_i(x_k)

Each term k is a declared (feature, form) (laws/forms.py); the paper's Eq. 3 is the product with
u_log_inv terms in d/sqrt(N) and r, its free scale between f and g removed by fixing each term's
constant and fitting one scale s. L_opt comes from (``lopt``):

* ``joint``: a Chinchilla law fitted together with the terms (E, A, B then carry the scale, so
  s is dropped), started from the Huber grid fit on the same runs;
* ``chinchilla``: the Huber grid fit on the same runs, held fixed (refitted in each bootstrap);
* ``given``: the coefficients of a Chinchilla law fitted elsewhere, held fixed;
* ``measured``: the best measured run of each (scale, tokens) group, as the paper allows; a
  prediction then needs that group in the fitted data or an ``L_opt`` column.

Least squares by Levenberg-Marquardt (scipy ``least_squares`` method "lm"); a robust loss
(``robust``: soft_l1, huber, cauchy, arctan, with ``f_scale`` in loss units) uses "trf".

Measured on morph_open_lm.csv (fit the 60 runs with N < 3e8, predict the 16 larger ones; N is
the file's n_params): lopt=joint with ``aspect:u_log_sq`` reaches MSE 1.65e-4 (mean relative
error 0.31%, Spearman 1.0 in each (size, tokens) group of 3+); ``aspect:u_log_inv`` 2.36e-4
(0.40%); ``d_over_sqrt_n:u_log_inv`` 6.3e-4 (0.69%). With L_opt held at a separate Huber
Chinchilla fit (lopt=chinchilla) the same terms give 2.3e-3: that fit of 60 runs extrapolates
poorly, which is why joint is the default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from archscale.arch.errors import SettingError
from archscale.laws import chinchilla, diagnostics
from archscale.laws.diagnostics import VANISHED_TERM, Problem
from archscale.laws.forms import Term, parse_terms
from archscale.laws.kind import Estimate, LawKind
from archscale.laws.table import SCALE_GAP, group_labels, positive_values, scale_labels

LOPT_MODES = ("joint", "chinchilla", "given", "measured")
COMBINE = ("product", "additive")
ROBUST_LOSSES = ("soft_l1", "huber", "cauchy", "arctan")


def configure(options: dict[str, Any]) -> dict[str, Any]:
    """Validate options into the config a law file stores."""
    terms = parse_terms(options.get("terms"))
    config = {
        "terms": [t.to_dict() for t in terms],
        "combine": options.get("combine") or "product",
        "lopt": options.get("lopt") or "joint",
        "robust": options.get("robust") or None,
        "f_scale": float(options.get("f_scale") or 0.01),
    }
    if config["combine"] not in COMBINE:
        raise SettingError(f"{{combine}} {config['combine']!r}: choose one of {COMBINE}")
    if config["lopt"] not in LOPT_MODES:
        raise SettingError(f"{{lopt}} {config['lopt']!r}: choose one of {LOPT_MODES}")
    if config["robust"] is not None and config["robust"] not in ROBUST_LOSSES:
        raise SettingError(f"{{robust}} {config['robust']!r}: choose one of {ROBUST_LOSSES} "
                           "(or none for plain least squares)")
    if config["lopt"] == "given":
        coef = np.asarray(options.get("chinchilla", []), dtype=np.float64)
        if coef.shape != (5,) or not np.all(np.isfinite(coef)) or np.any(coef[:3] <= 0):
            raise SettingError("{lopt}=given needs a fitted Chinchilla law's coefficients (A, B, "
                               "E, alpha, beta): give its law.json as {chinchilla}")
        config["chinchilla"] = coef.tolist()
    return config


def _terms(config: dict[str, Any]) -> tuple[Term, ...]:
    return tuple(Term(**t) for t in config["terms"])


def coef_names(config: dict[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    if config["lopt"] in ("joint", "chinchilla"):
        names += chinchilla.COEF_NAMES
    if config["lopt"] != "joint":
        names.append("scale")
    for term in _terms(config):
        names += term.coef_names
    return tuple(names)


def _inputs(config: dict[str, Any], table: pd.DataFrame, what: str,
            with_lopt: bool = True) -> dict[str, Any]:
    """Arrays a prediction reads: term bases, N and D, and (``with_lopt``) the fixed L_opt of the
    given and measured modes; fits pass their own L_opt instead."""
    terms = _terms(config)
    features = positive_values(table, [t.feature for t in terms], what)
    values = positive_values(table, ["N", "D"], what)
    inputs: dict[str, Any] = {"design": [t.basis(features[t.feature]) for t in terms], **values}
    if with_lopt and config["lopt"] == "given":
        inputs["l_opt"] = chinchilla.predict(np.array(config["chinchilla"]), values["N"],
                                             values["D"])[0]
    elif with_lopt and config["lopt"] == "measured":
        inputs["l_opt"] = _measured_lopt(config, table, values)
    return inputs


def _measured_lopt(config: dict[str, Any], table: pd.DataFrame,
                   values: dict[str, np.ndarray]) -> np.ndarray:
    """Best measured loss of each row's (scale, tokens) group, from the fitted data."""
    if "L_opt" in table.columns:
        return positive_values(table, ["L_opt"], "the measured L_opt")["L_opt"]
    out = np.full(len(table), np.nan)
    distance = np.full(len(table), np.inf)
    for group in config.get("lopt_groups", []):
        # log-distance of N to the group's N range; the nearest group within SCALE_GAP wins
        gap = np.abs(np.log(np.clip(values["N"], group["N_min"], group["N_max"]) / values["N"]))
        match = ((np.abs(values["D"] / group["D"] - 1) < 1e-6) & (gap <= np.log1p(SCALE_GAP))
                 & (gap < distance))
        out[match], distance[match] = group["loss"], gap[match]
    if np.isnan(out).any():
        row = int(np.flatnonzero(np.isnan(out))[0])
        raise SettingError(
            f"no measured L_opt for N={values['N'][row]:.4g}, D={values['D'][row]:.4g}: a law "
            "with lopt=measured predicts only the (scale, tokens) groups it was fitted on; add an "
            "L_opt column, or fit with {lopt} joint or chinchilla to predict new scales")
    return out


def _evaluate(config: dict[str, Any], coef_SxP: np.ndarray, inputs: dict[str, Any],
              fixed_lopt: np.ndarray | None = None) -> np.ndarray:
    """S x n predictions; with ``fixed_lopt`` the coefficients hold no Chinchilla part."""
    product = config["combine"] == "product"
    joint = config["lopt"] == "joint" and fixed_lopt is None
    if fixed_lopt is not None:
        l_opt, rest = fixed_lopt[None, :], coef_SxP
    elif config["lopt"] in ("joint", "chinchilla"):
        l_opt = chinchilla.predict(coef_SxP[:, :5], inputs["N"], inputs["D"])
        rest = coef_SxP[:, 5:]
    else:
        l_opt, rest = inputs["l_opt"][None, :], coef_SxP
    if joint:
        shape = np.full((len(coef_SxP), 1), 1.0 if product else 0.0)
    else:
        shape, rest = rest[:, :1], rest[:, 1:]
    start = 0
    for basis_NxK in inputs["design"]:
        k = basis_NxK.shape[1]
        term = rest[:, start:start + k] @ basis_NxK.T
        shape = shape * (1.0 + term) if product else shape + term
        start += k
    return l_opt * shape if product else l_opt + shape


def predict(config: dict[str, Any], coef_SxP: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    inputs = _inputs(config, table, "predicting with the conditional law")
    return _evaluate(config, np.atleast_2d(coef_SxP), inputs)


# ---- fitting ---------------------------------------------------------------------------------
def _least_squares(config: dict[str, Any], inputs: dict[str, Any], loss: np.ndarray,
                   l_opt: np.ndarray | None, theta0: np.ndarray,
                   weights: np.ndarray) -> tuple[np.ndarray, bool]:
    """Fit theta (log Chinchilla params first when joint); returns coefficients and success.

    With a fixed ``l_opt`` (every mode but joint) the coefficients are (scale, terms...). The
    solver gets the analytic Jacobian (``_jacobian``), not finite differences.
    """
    joint = l_opt is None
    sqrt_w = np.sqrt(weights)

    def coef_of(theta: np.ndarray) -> np.ndarray:
        if not joint:
            return theta
        return np.concatenate([chinchilla.to_natural(theta[:5])[0], theta[5:]])

    def residuals(theta: np.ndarray) -> np.ndarray:
        return (_evaluate(config, coef_of(theta)[None], inputs, l_opt)[0] - loss) * sqrt_w

    def jacobian(theta: np.ndarray) -> np.ndarray:
        return _jacobian(config, inputs, theta, l_opt) * sqrt_w[:, None]

    robust = config["robust"]
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            result = least_squares(residuals, theta0, jac=jacobian,
                                   method="lm" if robust is None else "trf",
                                   loss=robust or "linear", f_scale=config["f_scale"],
                                   x_scale="jac")
        except ValueError:  # a start where the law overflows (residuals not finite): a failed fit
            return coef_of(theta0), False
    ok = bool(result.success) and bool(np.all(np.isfinite(result.x)))
    return coef_of(result.x), ok


def _jacobian(config: dict[str, Any], inputs: dict[str, Any], theta: np.ndarray,
              l_opt: np.ndarray | None) -> np.ndarray:
    """d prediction / d theta (n x P) for the parameters ``_least_squares`` fits: the log
    Chinchilla parameters (a, b, e, alpha, beta) then the term coefficients when ``l_opt`` is
    None (joint), else the scale then the term coefficients."""
    product = config["combine"] == "product"
    design = inputs["design"]
    if l_opt is None:
        a, b, e, alpha, beta = theta[:5]
        log_n, log_d = np.log(inputs["N"]), np.log(inputs["D"])
        n_term, d_term = np.exp(a - alpha * log_n), np.exp(b - beta * log_d)  # A/N^alpha, B/D^beta
        base = np.exp(e) + n_term + d_term
        d_base = np.column_stack([n_term, d_term, np.full_like(base, np.exp(e)),
                                  -n_term * log_n, -d_term * log_d])
        coef = theta[5:]
    else:  # product: l_opt * s * prod(terms); additive: l_opt + s + sum(terms)
        base = l_opt * theta[0] if product else l_opt
        d_base = l_opt[:, None] if product else np.ones((len(l_opt), 1))
        coef = theta[1:]
    if not product:
        return np.column_stack([d_base, *design])
    splits = np.cumsum([basis.shape[1] for basis in design])[:-1]
    factors = [1.0 + basis @ c for basis, c in zip(design, np.split(coef, splits), strict=True)]
    columns = [d_base * np.prod(factors, axis=0)[:, None]]
    for i, basis_NxK in enumerate(design):
        others = np.prod(factors[:i] + factors[i + 1:], axis=0)  # 1.0 when there is one term
        columns.append(basis_NxK * (base * others)[:, None])
    return np.column_stack(columns)


def _theta0(config: dict[str, Any], chin_coef: np.ndarray | None, loss: np.ndarray,
            l_opt: np.ndarray | None, n_term_coef: int) -> np.ndarray:
    zeros = np.zeros(n_term_coef)
    if l_opt is None:
        return np.concatenate([chinchilla.to_log(chin_coef)[0], zeros])
    product = config["combine"] == "product"
    scale = float(np.median(loss / l_opt)) if product else float(np.median(loss - l_opt))
    return np.concatenate([[scale], zeros])


def _group_minimum(groups: np.ndarray, loss: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Each run's best loss among the present runs of its group (NaN where none is present)."""
    series = pd.Series(np.where(present, loss, np.nan))
    return series.groupby(groups).transform("min").to_numpy()


def group_best(table: pd.DataFrame) -> np.ndarray:
    """Each run's best measured loss in its (scale, tokens) group: the measured L_opt."""
    loss = positive_values(table, ["loss"], "the measured L_opt")["loss"]
    return _group_minimum(group_labels(table), loss, np.ones(len(loss), dtype=bool))


def fit(table: pd.DataFrame, config: dict[str, Any]) -> Estimate:
    values = positive_values(table, ["N", "D", "loss"], "the conditional law")
    n_params, tokens, loss = values["N"], values["D"], values["loss"]
    n_term_coef = sum(len(t.coef_names) for t in _terms(config))
    config = dict(config)
    chin_fit, l_opt, notes = None, None, []
    if config["lopt"] in ("joint", "chinchilla"):
        chin_fit = chinchilla.fit_chinchilla(n_params, tokens, loss)
        notes.append(f"Chinchilla Huber grid fit on the same runs (objective "
                     f"{chin_fit.objective:.4g}, converged={chin_fit.converged})")
        if config["lopt"] == "chinchilla":
            l_opt = chinchilla.predict(chin_fit.coef, n_params, tokens)[0]
    elif config["lopt"] == "given":
        l_opt = chinchilla.predict(np.array(config["chinchilla"]), n_params, tokens)[0]
    else:
        groups = group_labels(table)
        l_opt = group_best(table)
        scales = scale_labels(table)
        config["lopt_groups"] = [
            {"scale": str(scales[idx[0]]), "D": float(tokens[idx[0]]),
             "N_min": float(n_params[idx].min()), "N_max": float(n_params[idx].max()),
             "loss": float(loss[idx].min())}
            for idx in (np.flatnonzero(groups == g) for g in dict.fromkeys(groups))]
    inputs = _inputs(config, table, "the conditional law", with_lopt=False)
    theta0 = _theta0(config, None if chin_fit is None else chin_fit.coef, loss, l_opt, n_term_coef)
    coef, ok = _least_squares(config, inputs, loss, l_opt, theta0, np.ones(len(loss)))
    if config["lopt"] == "chinchilla":
        coef = np.concatenate([chin_fit.coef, coef])
        ok = ok and chin_fit.converged
    return Estimate(coef=coef, names=coef_names(config), converged=ok, config=config,
                    notes=tuple(notes), state=chin_fit)


def bootstrap(table: pd.DataFrame, config: dict[str, Any], estimate: Estimate,
              counts_SxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = positive_values(table, ["N", "D", "loss"], "the conditional law")
    n_params, tokens, loss = values["N"], values["D"], values["loss"]
    n_term_coef = sum(len(t.coef_names) for t in _terms(config))
    mode = config["lopt"]
    if mode == "chinchilla":
        chin_samples, chin_ok = chinchilla.bootstrap_chinchilla(n_params, tokens, loss,
                                                                estimate.state, counts_SxN)
    groups = group_labels(table) if mode == "measured" else None
    theta_full = (np.concatenate([chinchilla.to_log(estimate.coef[:5])[0], estimate.coef[5:]])
                  if mode == "joint" else None)
    inputs = _inputs(config, table, "the conditional law", with_lopt=False)
    given_lopt = (chinchilla.predict(np.array(config["chinchilla"]), n_params, tokens)[0]
                  if mode == "given" else None)
    samples, converged = [], []
    for s, counts in enumerate(counts_SxN):
        weights = counts.astype(np.float64)
        l_opt = None
        if mode == "chinchilla":
            l_opt = chinchilla.predict(chin_samples[s], n_params, tokens)[0]
        elif mode == "given":
            l_opt = given_lopt
        elif mode == "measured":
            l_opt = _group_minimum(groups, loss, weights > 0)
            l_opt = np.where(np.isnan(l_opt), loss, l_opt)  # absent runs carry zero weight
        theta0 = theta_full if mode == "joint" else _theta0(config, None, loss, l_opt, n_term_coef)
        coef, ok = _least_squares(config, inputs, loss, l_opt, theta0, weights)
        if mode == "chinchilla":
            coef, ok = np.concatenate([chin_samples[s], coef]), ok and bool(chin_ok[s])
        samples.append(coef)
        converged.append(ok)
    return np.array(samples).reshape(len(counts_SxN), -1), np.array(converged, dtype=bool)


def heldout_rows(config: dict[str, Any], rows: pd.DataFrame) -> pd.DataFrame:
    """The paper's protocol for a measured L_opt: held-out runs bring a reference run per group."""
    return rows.assign(L_opt=group_best(rows)) if config["lopt"] == "measured" else rows


def design_problems(config: dict[str, Any], table: pd.DataFrame) -> list[diagnostics.Problem]:
    """N and D apart where the law fits its own L_opt(N, D), and enough values of each term's
    feature."""
    collinear = (diagnostics.collinear_problem(table, "conditional")
                 if config["lopt"] in ("joint", "chinchilla") else None)
    return ([] if collinear is None else [collinear]) + diagnostics.term_problems(
        table, config["terms"])


def vanished_terms(config: dict[str, Any], coef: dict[str, float], table: pd.DataFrame
             ) -> list[Problem]:
    """A shape term that moves no fitted run's loss by VANISHED_TERM (of the loss) has vanished:
    the fit says loss does not depend on that feature, which the design was built to measure."""
    loss = positive_values(table, ["loss"], "the conditional law")["loss"]
    out = []
    for term in _terms(config):
        values = positive_values(table, [term.feature], "the conditional law")[term.feature]
        c = np.array([coef[name] for name in term.coef_names])
        with np.errstate(all="ignore"):
            moved = np.abs(term.basis(values) @ c)
        if config["combine"] == "additive":
            moved = moved / loss
        if np.all(np.nan_to_num(moved, nan=0.0) < VANISHED_TERM):
            out.append(Problem("term_at_bound", (
                f"the shape term {term.feature}:{term.form} vanished (coefficients "
                f"{', '.join(f'{n} = {coef[n]:.3g}' for n in term.coef_names)}: it moves no "
                f"run's loss by {VANISHED_TERM:g}), so the fit says loss does not depend on "
                f"{term.feature}; add runs that vary {term.feature} at fixed N and D, or drop the "
                "term")))
    return out


KIND = LawKind(name="conditional", configure=configure, target=lambda config: "loss",
               n_params=lambda config: len(coef_names(config)),
               min_scales=2, fit=fit, bootstrap=bootstrap, predict=predict, axes=("N", "D"),
               problems=lambda config, coef, table: diagnostics.loss_problems(
                   coef, table, product_form=True) + vanished_terms(config, coef, table),
               design_problems=design_problems, needs=lambda config: ("shape", "tokens"),
               options=("terms", "combine", "lopt", "robust", "f_scale", "chinchilla"),
               law_options={"chinchilla": "chinchilla"}, heldout_rows=heldout_rows)

"""The design engine: which runs to train next, for the most certainty at the target per FLOP.

``choose`` is a pure function of (finished runs, candidate pool, costs, law, target) that returns
the next batch of K picks, each with the reason it was picked. It goes through three stages:

* **seed**: fewer finished runs than the law has coefficients (times SEED_PER_COEF): a
  space-filling design. scikit-learn's KMeans splits the candidates (in standardized log inputs)
  into that many strata, and the cheapest run of each stratum not yet covered is proposed.
* **identify**: the law cannot be fitted, or its fit is refused for a reason runs can fix
  (RUNS_FIX): the refusal's advice becomes runs (laws/diagnostics.py says what is missing: "train some runs longer", "add
  runs at more values of r", "N and D are collinear", or, for the rest, runs that spread the
  inputs).
* **reduce**: the law is identified. The target's uncertainty is a Gaussian over the predictions
  (in the law's residual space) at candidates and target rows, Cov = G M G^T. A candidate c with
  sensitivity row g_c, observed with the law's calibrated run scatter sigma, lowers the mean
  predictive variance at the target by

      gain(c) = g_c^T M Q M g_c / (g_c^T M g_c + noise_c),     Q = G_t^T G_t / n_target,

  noise_c the run scatter sigma^2 (plus, for ``design``, discrepancy the features miss): the
  V-optimal criterion; the pick maximizes (gain + bias drop) / cost^COST_POWER among the runs
  the budget still affords (the bias drop: below; 0 for ``vopt``). A batch of K is greedy:
  after each pick, M <- M - M g g^T M / (g^T M g + noise_c) (the rank-one posterior update), so
  the next pick is valued given the earlier ones.
  ``vopt`` builds G from the law's linearisation at its fit (G = J chol(Sigma), Sigma the inverse
  Fisher information with a weak prior). ``design`` hedges against a wrong form: the truth is
  law + a smooth discrepancy (decide/discrepancy.py), whose features join J before the
  posterior is formed, and whose variance the features miss is added to each run's noise. The
  discrepancy is modelled only at target rows inside the ranges of the runs (finished and
  candidates): there nearby runs can correct the form; beyond every run the form is the only
  bridge to the target, and the engine trusts it (measured: notes/engine.md). Where delta is
  modelled, the score also counts the squared bias delta leaves in the law's own least-squares
  fit at the target (``discrepancy.FitBias``): the kriging variance values runs as if delta were
  fitted too, but the law is fitted alone, and far runs that share one delta bias it (measured
  on ScaleBench lr_bsz: notes/engine3.md). ``design`` also adds the disagreement of bootstrap
  refits (warm-started from the fit) as further columns of G: where the refits disagree at the
  target the linearisation understates the uncertainty, and the runs that tell the refits apart
  are the ones worth training.

What a run should make more certain is the ``criterion``: ``variance`` (above), or, where the
target rows name shapes, ``wrong_shape``: the expected fall of the chance that the shape ranked
first is not the best (decide/wrong_shape.py), on the same Gaussian.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin_min
from sklearn.preprocessing import StandardScaler

from archscale.arch.errors import ArchscaleError
from archscale.decide import discrepancy
from archscale.decide.design_law import DesignLaw, Fitted, sensitivity, to_space
from archscale.decide.discrepancy import Discrepancy, FitBias
from archscale.decide.wrong_shape import WrongShape
from archscale.laws.bootstrap import resample_counts
from archscale.laws.diagnostics import Problem, collinear_nd

METHODS = ("design", "vopt")
"""The engine's models of the truth (module docstring)."""
CRITERIA = ("variance", "wrong_shape")
"""What a run should make more certain: the mean predictive variance at the target rows, or the
chance of recommending the wrong shape among them (decide/wrong_shape.py; where no run changes
that chance, variance decides)."""
SEED_PER_COEF = 1.5
"""Seed runs per law coefficient (the design needs a few more runs than coefficients before a
fit is worth trusting; the cheapest per stratum keeps the seed a small part of the budget)."""
COST_POWER = 0.7
"""Gain is divided by cost to this power (1: gain per FLOP, myopic: it spends a small budget on
dozens of the cheapest runs, far from the target). Chosen on replays of ScaleBench moe among 0.2,
0.4 and 0.7 (notes/design.md); Li et al. 2026 tuned 0.3-0.4 for their criteria."""
PRIOR_SD = 3.0
"""Prior sd of each coefficient's relative change (a weak prior that keeps the Fisher matrix
invertible while the runs identify some directions barely)."""
RUNS_FIX = ("fit_failed", "collinear", "few_values", "E_zero")
"""Refusals that runs can answer (laws/diagnostics.py says which runs). Others (a flat direction
of an over-parametrised form, an exponent or term at its bound) may never lift whatever is
trained; the engine then goes on reducing the variance of the fit it has (the weak prior holds
the flat directions) and reports the problems with its choice."""
N_ENSEMBLE = 16
"""Bootstrap refits behind ``design``'s disagreement term."""
SIGMA_FLOOR = 1e-4
"""Least run scatter (relative) the update assumes: a fit that passes through its few runs
exactly must not make one more run look infinitely informative."""


@dataclass(frozen=True)
class Pick:
    """One proposed run."""

    index: Hashable
    """Its label in the candidate pool's index."""
    cost: float
    """What it costs (the pool's cost)."""
    gain: float
    """Expected reduction of what the criterion makes more certain: the target's mean predictive
    variance (law space), or P(wrong shape); 0 outside the reduce stage."""
    reason: str
    """Why it was picked, in one line."""


@dataclass(frozen=True)
class Choice:
    """The next batch, and where the design stands."""

    picks: tuple[Pick, ...]
    """The runs to train, best first (fewer than asked when the budget or the pool runs out)."""
    stage: str
    """``seed``, ``identify`` or ``reduce`` (module docstring)."""
    target_sd: float
    """RMS predictive sd of the law's mean at the target now (law space; NaN before a fit;
    without ``design``'s discrepancy, which the law's mean does not carry)."""
    target_sd_after: float
    """The same once the picks are in, as the linearised update expects."""
    fitted: Fitted | None
    """The fit the choice rests on; pass it back as ``warm`` with the next call."""
    problems: tuple[Problem, ...] = ()
    """Why the law is refused (in the reduce stage: refusals no run is known to fix)."""


def seed_size(law: DesignLaw) -> int:
    return math.ceil(SEED_PER_COEF * law.n_coef) + 1


def features(table: pd.DataFrame, exclude: Sequence[str]) -> list[str]:
    """Numeric input columns that vary (the space a seed fills): all but ``exclude``."""
    numeric = table.select_dtypes("number")
    return [c for c in numeric.columns
            if c not in exclude and numeric[c].nunique() > 1 and numeric[c].notna().all()]


def _embed(frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> list[np.ndarray]:
    """Standardized inputs (log of positive columns) of several tables, on one scale."""
    stacked = pd.concat([f[list(columns)] for f in frames], ignore_index=True).astype(float)
    for c in columns:
        if (stacked[c] > 0).all():
            stacked[c] = np.log(stacked[c])
    values = StandardScaler().fit_transform(stacked.to_numpy())
    return np.split(values, np.cumsum([len(f) for f in frames])[:-1])


def choose(finished: pd.DataFrame, pool: pd.DataFrame, law: DesignLaw, target: pd.DataFrame, *,
           costs: np.ndarray, k: int = 1, budget: float = math.inf, method: str = "design",
           warm: Fitted | None = None, seed: int = 0, inputs: Sequence[str] | None = None,
           cost_power: float = COST_POWER, criterion: str = "variance",
           decisions: Sequence[Hashable] | None = None) -> Choice:
    """The next ``k`` runs from ``pool`` (candidates, ``costs`` aligned with its rows), given the
    ``finished`` runs (with the law's target column), for the law's predictions at ``target``
    rows, spending at most ``budget``. ``warm``: the previous Choice's fit. ``inputs``: the
    columns a seed spreads over (default: every varying numeric column but the law's target).
    ``cost_power``: gain is divided by cost to this power. ``criterion``: what a run should make
    more certain (CRITERIA); ``wrong_shape`` needs ``decisions``, a label per target row (rows
    with one label are one choice among shapes)."""
    if method not in METHODS:
        raise ArchscaleError(f"design method {method!r}: choose one of {METHODS}")
    if criterion not in CRITERIA:
        raise ArchscaleError(f"design criterion {criterion!r}: choose one of {CRITERIA}")
    if criterion == "wrong_shape" and (decisions is None or len(decisions) != len(target)):
        raise ArchscaleError("the wrong_shape criterion needs the target rows' shapes: one "
                             "decision label per target row (bench design: --shapes, --within)")
    costs = np.asarray(costs, dtype=float)
    if len(costs) != len(pool):
        raise ArchscaleError(f"got {len(costs)} costs for {len(pool)} candidates")
    columns = list(inputs) if inputs is not None else features(pool, [law.target])
    affordable = costs <= budget
    if len(finished) < seed_size(law):
        picks = _seed(finished, pool, costs, affordable, columns, k, budget, seed_size(law), seed,
                      law.n_coef + 1, target=target if method == "design" else None)
        return Choice(picks, "seed", math.nan, math.nan, None)
    try:
        fitted = law.fit(finished, warm)
        problems = fitted.problems
    except ArchscaleError as err:
        fitted, problems = None, (Problem("fit_failed", str(err)),)
    blocking = [p for p in problems if p.code in RUNS_FIX or fitted is None]
    if blocking:
        picks = _identify(blocking, finished, pool, costs ** cost_power, affordable, columns, k,
                          budget, costs)
        return Choice(picks, "identify", math.nan, math.nan, fitted, problems)
    choice = _reduce(fitted, finished, pool, law, target, costs, k, budget, method, seed,
                     cost_power, columns, decisions if criterion == "wrong_shape" else None)
    return replace(choice, problems=problems)


# ---- seed --------------------------------------------------------------------------------------
def _surrounded(runs: pd.DataFrame, target: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Which target rows lie inside the ranges of ``runs`` in every input column (a row that
    does not name a column, such as a study's target shape without its layer count, is not)."""
    values = runs[list(columns)].to_numpy(float)
    at = target.reindex(columns=list(columns)).to_numpy(float)
    return ((at >= values.min(axis=0)) & (at <= values.max(axis=0))).all(axis=1)


def _seed(finished: pd.DataFrame, pool: pd.DataFrame, costs: np.ndarray, affordable: np.ndarray,
          columns: Sequence[str], k: int, budget: float, size: int, seed: int, fittable: int,
          *, target: pd.DataFrame | None = None) -> tuple[Pick, ...]:
    """Cheapest candidate of each KMeans stratum (of finished and candidate runs together) that
    no finished run covers, strata taken cheapest first, within the budget. Where the budget
    cannot buy the strata's runs, the cheapest runs left make up the ``fittable`` count (a
    law with P coefficients needs P + 1 runs before any fit).

    Where ``target`` rows lie inside the runs' ranges, the law serves as a local surface there
    and runs far from them bias its fit (``discrepancy.FitBias``): each run then weighs in the
    KMeans by delta's correlation with the nearest such row, so the strata, and the seed, gather
    where a run informs the target (each stratum's cheapest run: picking by weight per cost
    instead measured worse on ScaleBench lr_bsz, R^2 0.36 vs 0.46 over seeds 0-2). Beyond every
    run the form is the only bridge and the seed spreads evenly (the exponents need the whole
    range)."""
    runs = pd.concat([finished, pool])
    inside = None if target is None else target[_surrounded(runs, target, columns)]
    if inside is None or inside.empty:
        done, cand = _embed([finished, pool], columns)
        weight = None
    else:
        done, cand, at = _embed([finished, pool, inside], columns)
        _, near = pairwise_distances_argmin_min(np.vstack([done, cand]), at)
        weight = np.exp(-0.5 * (near / discrepancy.DISCREPANCY_LENGTH) ** 2)
    n_clusters = min(size, len(done) + len(cand))
    labels = KMeans(n_clusters, n_init=4, random_state=seed).fit_predict(
        np.vstack([done, cand]), sample_weight=weight)
    covered = set(labels[: len(done)].tolist())
    cand_labels = labels[len(done):]
    best = {}
    for i in np.flatnonzero(affordable):
        c = int(cand_labels[i])
        if c not in covered and (c not in best or costs[i] < costs[best[c]]):
            best[c] = i
    order = np.argsort(costs, kind="stable")
    picks, spent = [], 0.0
    for c, i in sorted(best.items(), key=lambda item: costs[item[1]]):
        if len(picks) == k or not _leaves_fittable(i, order, costs, affordable, budget - spent,
                                                   fittable - len(finished) - len(picks)):
            continue
        spent += costs[i]
        picks.append(Pick(pool.index[i], float(costs[i]), 0.0,
                          f"seed: cheapest run of stratum {c + 1} of {n_clusters} (KMeans on "
                          f"{', '.join(columns)})"))
    taken = {p.index for p in picks}
    for i in order:
        if len(picks) >= k or len(finished) + len(picks) >= fittable:
            break
        if affordable[i] and pool.index[i] not in taken and spent + costs[i] <= budget:
            spent += costs[i]
            picks.append(Pick(pool.index[i], float(costs[i]), 0.0,
                              f"seed: cheapest run left, so the {fittable - 1} coefficients can "
                              "be fitted within the budget"))
    return tuple(picks)


def _leaves_fittable(i: int, order: np.ndarray, costs: np.ndarray, affordable: np.ndarray,
                     left: float, need: int) -> bool:
    """Whether run ``i`` fits in ``left`` and still leaves room for the ``need - 1`` cheapest
    other runs (so a seed pick never makes the law unfittable within the budget; ``need`` <= 0:
    the law is fittable already)."""
    if costs[i] > left:
        return False
    others = [j for j in order[: need] if j != i and affordable[j]][: max(need - 1, 0)]
    return costs[i] + float(costs[others].sum()) <= left


# ---- identify ----------------------------------------------------------------------------------
def _preference(problem: Problem, finished: pd.DataFrame, pool: pd.DataFrame, done: np.ndarray,
                cand: np.ndarray) -> tuple[np.ndarray, str]:
    """How much each candidate does what the refusal asks (0: nothing), and what that is."""
    has_nd = {"N", "D"} <= set(pool.columns) and {"N", "D"} <= set(finished.columns)
    if problem.code == "E_zero" and has_nd:  # "train some runs longer ... or at larger sizes"
        ratio = np.log(pool["D"] / pool["N"]).to_numpy()
        size = np.log(pool["N"]).to_numpy()
        longer = ratio - np.log(finished["D"] / finished["N"]).max()
        larger = size - np.log(finished["N"]).max()
        return np.maximum(np.maximum(longer, larger), 0.0), "more tokens per parameter or larger"
    if problem.code == "collinear" and has_nd:  # "add runs at a second tokens-per-parameter"
        line = collinear_nd(finished)
        if line is not None:
            off = np.log(pool["D"]).to_numpy() - (line[0] + line[1] * np.log(pool["N"]).to_numpy())
            return np.abs(off), "off the N-D line the finished runs lie on"
    match = re.search(r"term (\S+?):", problem.message)
    if problem.code == "few_values" and match and match.group(1) in pool.columns:
        feature = match.group(1)  # "add runs at k more value(s) of FEATURE"
        seen = set(np.round(finished[feature].to_numpy(dtype=float), 6).tolist())
        new = ~np.isin(np.round(pool[feature].to_numpy(dtype=float), 6), list(seen))
        return new.astype(float), f"at a new value of {feature}"
    # "add runs that spread the inputs": the candidate farthest from every finished run
    if len(done) == 0:
        return np.ones(len(cand)), "spreading the inputs"
    distance = np.min(np.linalg.norm(cand[:, None, :] - done[None, :, :], axis=2), axis=1)
    return distance, "far from every finished run (spreading the inputs)"


def _identify(problems: Sequence[Problem], finished: pd.DataFrame, pool: pd.DataFrame,
              weight: np.ndarray, affordable: np.ndarray, columns: Sequence[str], k: int,
              budget: float, costs: np.ndarray) -> tuple[Pick, ...]:
    """Greedy: each pick answers the first refusal that some affordable candidate helps with,
    preferring help per ``weight`` (cost to a power); the finished runs grow by each pick before
    the next."""
    picks, spent = [], 0.0
    taken = np.zeros(len(pool), dtype=bool)
    done_rows = finished
    for _ in range(k):
        open_ = affordable & ~taken & (costs <= budget - spent)
        if not open_.any():
            break
        done, cand = _embed([done_rows, pool], columns)
        for problem in [*problems, Problem("spread", "")]:
            # a collinear or flat-E design stays refused until refitted: every pick of the batch
            # answers it against the runs the refusal saw
            seen = finished if problem.code in ("E_zero", "collinear") else done_rows
            preference, what = _preference(problem, seen, pool, done, cand)
            score = np.where(open_ & (preference > 1e-9), preference / weight, -1.0)
            if score.max() > 0:
                break
        i = int(np.argmax(score))
        taken[i] = True
        spent += costs[i]
        label = problems[0].code if problem.code == "spread" else problem.code
        picks.append(Pick(pool.index[i], float(costs[i]), 0.0,
                          f"identify ({label}): {what}; the fit was refused: "
                          f"{problems[0].message}"))
        done_rows = pd.concat([done_rows, pool.iloc[[i]]])
    return tuple(picks)


# ---- reduce ------------------------------------------------------------------------------------
def _factors(fitted: Fitted, finished: pd.DataFrame, rows: pd.DataFrame, n_target: int,
             law: DesignLaw, sigma2: float, method: str, seed: int, columns: Sequence[str]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, FitBias | None]:
    """(G, G_law, noise, bias): G (rows x r) with Cov(truth at rows) = G G^T given the finished
    runs; G_law the same for the law's mean alone (G without the discrepancy, in G's columns);
    noise the variance of a new run at each row about G's part (the run scatter, and for
    ``design`` the discrepancy the features miss); bias the squared bias delta leaves in the
    law's fit at the target (``design`` with a discrepancy, else None). The last ``n_target``
    rows are the target."""
    jac_f = sensitivity(law, fitted, finished)
    jac = sensitivity(law, fitted, rows)
    jac_law = jac
    prior = np.full(jac.shape[1], 1 / PRIOR_SD**2)
    noise_f, noise = np.full(len(finished), sigma2), np.full(len(rows), sigma2)
    bias = None
    surrounded = _surrounded(pd.concat([finished, rows.iloc[: len(rows) - n_target]]),
                             rows.iloc[len(rows) - n_target:], columns)
    if method == "design" and surrounded.any():  # law + delta (decide/discrepancy.py)
        done, at = _embed([finished, rows], columns)
        prior_delta = Discrepancy(discrepancy.DISCREPANCY * math.sqrt(sigma2))
        n_cand = len(rows) - n_target
        cov = np.linalg.inv(jac_f.T @ jac_f / sigma2 + np.diag(prior))  # the law's fit alone
        bias = FitBias(jac_f, jac[:n_cand], jac[n_cand:], done, at[:n_cand], at[n_cand:], cov,
                       sigma2, prior_delta)
        delta = discrepancy.features(np.vstack([done, at]), at[n_cand:][surrounded], prior_delta,
                                     seed)
        jac_f = np.hstack([jac_f, delta.phi[: len(finished)]])
        jac = np.hstack([jac, delta.phi[len(finished):]])
        jac_law = np.hstack([jac_law, np.zeros_like(delta.phi[len(finished):])])
        prior = np.r_[prior, np.ones(delta.phi.shape[1])]
        noise_f, noise = noise_f + delta.extra[: len(finished)], noise + delta.extra[len(finished):]
    precision = jac_f.T @ (jac_f / noise_f[:, None]) + np.diag(prior)
    w, v = np.linalg.eigh(precision)
    root = v / np.sqrt(np.maximum(w, 1e-12 * w.max()))  # Sigma^(1/2)
    linear, linear_law = jac @ root, jac_law @ root
    if method == "vopt":
        return linear, linear_law, noise, bias
    draws = law.refit(fitted, finished, resample_counts(len(finished), N_ENSEMBLE, seed))
    draws = draws[np.isfinite(draws).all(axis=1)]
    if len(draws) < 2:
        return linear, linear_law, noise, bias
    with np.errstate(all="ignore"):  # a refit off the law's domain at a row says nothing there
        values = to_space(law.predict(fitted, draws, rows), law.space)
    finite = np.isfinite(values)
    mean = np.where(finite, values, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)
    centered = np.where(finite, values - mean, 0.0)
    ensemble = centered.T / np.sqrt(len(draws) - 1)
    return np.hstack([linear, ensemble]), np.hstack([linear_law, ensemble]), noise, bias


def _reduce(fitted: Fitted, finished: pd.DataFrame, pool: pd.DataFrame, law: DesignLaw,
            target: pd.DataFrame, costs: np.ndarray, k: int, budget: float, method: str,
            seed: int, cost_power: float, columns: Sequence[str],
            decisions: Sequence[Hashable] | None) -> Choice:
    sigma2 = max(fitted.sigma, SIGMA_FLOOR) ** 2
    rows = pd.concat([pool, target], ignore_index=True)
    g_all, g_law, noise, bias = _factors(fitted, finished, rows, len(target), law, sigma2, method,
                                   seed, columns)
    g_c, g_t, noise = g_all[: len(pool)], g_all[len(pool):], noise[: len(pool)]
    q_law = g_law[len(pool):].T @ g_law[len(pool):] / len(target)  # what target_sd reports
    m = np.eye(g_all.shape[1])
    q = g_t.T @ g_t / len(target)
    sd_before = math.sqrt(max(float(np.trace(q_law @ m)), 0.0))
    shape = None
    if decisions is not None:
        mean_t = to_space(law.predict(fitted, fitted.coef[None, :], target), law.space)[0]
        shape = WrongShape(mean_t, g_c, g_t, noise, decisions, seed)
    picks, spent = [], 0.0
    taken = np.zeros(len(pool), dtype=bool)
    for _ in range(k):
        open_ = ~taken & (costs <= budget - spent)
        if not open_.any():
            break
        gm = g_c @ m
        gain = np.einsum("ij,jk,ik->i", gm, q, gm) / (np.einsum("ij,ij->i", gm, g_c) + noise)
        bias_drop = bias.drop(open_) if bias is not None else np.zeros(len(pool))
        score, value = (gain + bias_drop) / costs**cost_power, gain
        what = "lowers the target's mean predictive variance by {:.3g} ({:.1%} of it)"
        total = max(float(np.trace(q @ m)), 1e-300)
        if shape is not None:
            drop = shape.drop(open_)
            if (drop[open_] > 0).any():  # else no run changes the ranking: variance decides
                score, value, total = drop / costs**cost_power, drop, max(shape.now(), 1e-300)
                what = "lowers P(wrong shape) by {:.3g} ({:.1%} of it)"
        i = int(np.argmax(np.where(open_, score, -np.inf)))
        taken[i] = True
        spent += costs[i]
        extra = f"; the fit's squared bias by {bias_drop[i]:.3g}" if bias is not None else ""
        picks.append(Pick(pool.index[i], float(costs[i]), float(value[i]),
                          f"reduce ({method}): {what.format(value[i], value[i] / total)}{extra} "
                          f"for {costs[i]:.3g} cost"))
        mg = m @ g_c[i]
        m = m - np.outer(mg, mg) / (g_c[i] @ mg + noise[i])
        for tracker in (bias, shape):
            if tracker is not None:
                tracker.add(i)
    sd_after = math.sqrt(max(float(np.trace(q_law @ m)), 0.0))
    return Choice(tuple(picks), "reduce", sd_before, sd_after, fitted)

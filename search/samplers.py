"""Samplers and pruners of a study, seeded per trial so proposals never depend on the process.

Optuna seeds a sampler once per process; a study resumed by a new process (or run by several)
would then replay the first proposals. ``PerTrialSeedSampler`` builds a fresh sampler for each
trial, seeded by (study seed, trial number): the configs a study proposes depend only on its seed
and its history, so a rerun with the same seed proposes the same configs, in any process.
Constraints (``target_loss``) reach the samplers through ``trial.set_constraint``, which TPE,
NSGA-II and GP read in Optuna 5 (their ``constraints_func`` is deprecated).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from archscale.arch.errors import ArchscaleError
from archscale.search.sweepfile import SweepFile


def trial_seed(seed: int, number: int) -> int:
    """A well-mixed 31-bit seed for trial ``number`` of a study seeded ``seed``."""
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


class PerTrialSeedSampler(BaseSampler):
    """Delegates each trial to ``factory(trial_seed(seed, trial.number))``."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._inner = factory(trial_seed(seed, -1))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._factory(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _factory(sweep: SweepFile) -> Callable[[int], BaseSampler]:
    search = sweep.search
    if search is None:  # a grid only runs enqueued trials
        return lambda seed: optuna.samplers.RandomSampler(seed=seed)
    startup = search.n_startup_trials
    if search.sampler == "tpe":
        return lambda seed: optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, group=False,
            constant_liar=True)
    if search.sampler == "nsga2":
        return lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=startup)
    if importlib.util.find_spec("torch") is None:
        raise ArchscaleError("sampler: gp needs PyTorch (pip install torch): or use tpe or nsga2")
    return lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup,
                                                  warn_independent_sampling=False)


def make_sampler(sweep: SweepFile) -> BaseSampler:
    """The study's sampler, seeded per trial from ``sweep.seed``."""
    return PerTrialSeedSampler(_factory(sweep), sweep.seed)


def make_pruner(sweep: SweepFile) -> optuna.pruners.BasePruner:
    """Median pruning on intermediate validation loss, or none."""
    if sweep.search is not None and sweep.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, sweep.search.n_startup_trials),
                                           n_warmup_steps=0)
    return optuna.pruners.NopPruner()

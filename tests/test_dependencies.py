"""The declared dependencies cover what the code calls."""

import tomllib
from pathlib import Path

import optuna
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirement(name: str) -> Requirement:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def test_the_minimum_optuna_has_trial_set_constraint():
    """search/objective.py records constraints with trial.set_constraint, added in Optuna 5:
    on 4.x every constrained trial would train fully and then be recorded as failed."""
    requirement = _requirement("optuna")
    minimum = min(Version(s.version) for s in requirement.specifier if s.operator == ">=")
    assert minimum >= Version("5.0")
    assert Version(optuna.__version__) in requirement.specifier
    assert callable(getattr(optuna.trial.Trial, "set_constraint", None))

"""Declared shape terms of the architecture-conditional law.

A term is a (feature, form) pair, e.g. {"feature": "d_over_sqrt_n", "form": "u_log_inv"}: the
feature is any positive column of the run table (``d_over_sqrt_n``, ``r``, ``aspect`` =
d_model / n_layers, ``gqa_group``, ...), the form a curve linear in its coefficients. A law file
or one ``--terms`` argument lists them, so a U-shaped term in a new feature needs no code.

Every form is c0 + sum_i c_i phi_i(x). The constant c0 is not fitted per term: the law fixes it
(1 in the product, 0 in the sum) and carries one overall scale instead, which removes the free
scale between f and g of Bian et al.'s Eq. 3 (only their product is identifiable).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archscale.arch.errors import ArchscaleError, SettingError


@dataclass(frozen=True)
class Form:
    """A curve c0 + sum_i c_i phi_i(x)."""

    formula: str
    """Human-readable formula (a0 is the fixed constant)."""
    basis: tuple[Callable[[np.ndarray], np.ndarray], ...]
    """The non-constant basis functions phi_i."""
    suffixes: tuple[str, ...]
    """Coefficient-name suffix of each basis function."""


FORMS: dict[str, Form] = {
    "u_log_inv": Form("a0 + a1 ln x + a2 / x  (Bian et al. 2025, Eq. 3)",
                      (np.log, np.reciprocal), ("ln", "inv")),
    "u_log_sq": Form("a0 + a1 ln x + a2 (ln x)^2  (a parabola in ln x)",
                     (np.log, lambda x: np.log(x) ** 2), ("ln", "ln2")),
    "log": Form("a0 + a1 ln x", (np.log,), ("ln",)),
    "linear": Form("a0 + a1 x", (lambda x: x,), ("x",)),
}
"""Available forms, by the name a term declares."""


@dataclass(frozen=True)
class Term:
    """One declared factor (or summand) of the conditional law."""

    feature: str
    """Run-table column the term is a function of; must be positive."""
    form: str
    """Key of FORMS."""

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ArchscaleError(f"term on {self.feature!r}: unknown form {self.form!r}; forms are "
                                 + "; ".join(f"{k}: {v.formula}" for k, v in FORMS.items()))

    @property
    def coef_names(self) -> tuple[str, ...]:
        return tuple(f"{self.feature}.{s}" for s in FORMS[self.form].suffixes)

    def basis(self, x_N: np.ndarray) -> np.ndarray:
        """phi_i(x) for every run (n x k)."""
        return np.column_stack([phi(x_N) for phi in FORMS[self.form].basis])

    def to_dict(self) -> dict[str, str]:
        return {"feature": self.feature, "form": self.form}


PAPER_TERMS = (Term("d_over_sqrt_n", "u_log_inv"), Term("r", "u_log_inv"))
"""Bian et al. 2025, Eq. 3: f(d / sqrt(N)) * g(r)."""


def parse_terms(spec: str | Sequence[Any] | None) -> tuple[Term, ...]:
    """Terms from a list of dicts/Terms, JSON text, a JSON file, or ``feature:form,...`` text.

    A JSON file may be a list of terms or an object with a ``terms`` list (a law file).
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return PAPER_TERMS
    if isinstance(spec, str):
        text = spec.strip()
        if Path(text).is_file():
            text = Path(text).read_text()
        if text.startswith(("[", "{")):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise ArchscaleError(f"terms are not valid JSON ({err}): write e.g. "
                                     '[{"feature": "aspect", "form": "u_log_sq"}]') from None
            if isinstance(spec, dict):
                spec = spec.get("terms", spec.get("form", {}).get("terms"))
        else:
            spec = [dict(zip(("feature", "form"), item.split(":", 1), strict=False))
                    for item in text.split(",")]
    terms = []
    for item in spec or []:
        if isinstance(item, Term):
            terms.append(item)
        elif isinstance(item, dict) and set(item) == {"feature", "form"}:
            terms.append(Term(str(item["feature"]).strip(), str(item["form"]).strip()))
        else:
            raise ArchscaleError(f"bad term {item!r}: declare terms as feature:form (e.g. "
                                 "aspect:u_log_sq) or {\"feature\": ..., \"form\": ...}")
    if not terms:
        raise SettingError("no terms declared: give at least one in {terms}, e.g. "
                           "aspect:u_log_sq")
    features = [t.feature for t in terms]
    if len(set(features)) != len(features):
        raise ArchscaleError(f"terms repeat a feature ({features}): declare each feature once")
    return tuple(terms)

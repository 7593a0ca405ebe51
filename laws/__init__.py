"""archscale.laws: scaling-law forms, fitting, bootstrap, held-out validation, serialization.

Depends on archscale.arch only. Fit a run table (a DataFrame from ``search`` or a CSV)::

    table = load_table("runs.csv", "N=n_params,D=train_tokens,loss=final_loss")
    law = fit_law("conditional", table, {"terms": "aspect:u_log_sq"})
    save_law(law, "law.json")
    load_law("law.json").predict(spec_table(specs, tokens=1e11))

or a form of your own (laws/declared.py), from Python or a YAML file::

    law = fit_law(load_form("myform.yaml"), table)

The public names load on first use (``archscale.lazy``): importing the package costs no numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from archscale.lazy import lazy_exports

_EXPORTS = {"FORMS": "forms", "PAPER_TERMS": "forms", "Term": "forms", "parse_terms": "forms",
            "load_law": "io", "save_law": "io", "Law": "law", "fit_law": "law",
            "load_table": "table", "spec_features": "table", "spec_table": "table",
            "DeclaredForm": "declared", "declare": "declared", "load_form": "declared",
            "get_kind": "registry", "kind_names": "registry", "BUILTIN_KINDS": "registry"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from archscale.laws.declared import DeclaredForm, declare, load_form
    from archscale.laws.forms import FORMS, PAPER_TERMS, Term, parse_terms
    from archscale.laws.io import load_law, save_law
    from archscale.laws.law import Law, fit_law
    from archscale.laws.registry import BUILTIN_KINDS, get_kind, kind_names
    from archscale.laws.table import load_table, spec_features, spec_table

__all__ = ["BUILTIN_KINDS", "FORMS", "PAPER_TERMS", "DeclaredForm", "Law", "Term", "declare",
           "fit_law", "get_kind", "kind_names", "load_form", "load_law", "load_table",
           "parse_terms", "save_law", "spec_features", "spec_table"]

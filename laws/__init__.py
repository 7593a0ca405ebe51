"""archscale.laws: scaling-law forms, fitting, bootstrap, held-out validation, serialization.

Depends on archscale.arch only. Fit a run table (a DataFrame from ``search`` or a CSV)::

    table = load_table("runs.csv", "N=n_params,D=train_tokens,loss=final_loss")
    law = fit_law("conditional", table, {"terms": "aspect:u_log_sq"})
    save_law(law, "law.json")
    load_law("law.json").predict(spec_table(specs, tokens=1e11))

The public names load on first use (``archscale.lazy``): importing the package costs no numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from archscale.lazy import lazy_exports

KIND_NAMES = ("chinchilla", "conditional", "throughput", "accuracy", "passk")
"""The --law names, for command-line help without loading the laws (tests hold it to KINDS)."""

_EXPORTS = {"FORMS": "forms", "PAPER_TERMS": "forms", "Term": "forms", "parse_terms": "forms",
            "load_law": "io", "save_law": "io", "Law": "law", "fit_law": "law",
            "load_table": "table", "spec_features": "table", "spec_table": "table",
            "KINDS": "law"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from archscale.laws.forms import FORMS, PAPER_TERMS, Term, parse_terms
    from archscale.laws.io import load_law, save_law
    from archscale.laws.law import KINDS, Law, fit_law
    from archscale.laws.table import load_table, spec_features, spec_table

__all__ = ["FORMS", "KINDS", "KIND_NAMES", "PAPER_TERMS", "Law", "Term", "fit_law", "load_law",
           "load_table", "parse_terms", "save_law", "spec_features", "spec_table"]

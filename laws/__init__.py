"""archscale.laws: scaling-law forms, fitting, bootstrap, held-out validation, serialization.

Depends on archscale.arch only. Fit a run table (a DataFrame from ``search`` or a CSV)::

    table = load_table("runs.csv", "N=n_params,D=train_tokens,loss=final_loss")
    law = fit_law("conditional", table, {"terms": "aspect:u_log_sq"})
    save_law(law, "law.json")
    load_law("law.json").predict(spec_table(specs, tokens=1e11))
"""

from archscale.laws.forms import FORMS, PAPER_TERMS, Term, parse_terms
from archscale.laws.io import load_law, save_law
from archscale.laws.law import KINDS, Law, fit_law
from archscale.laws.table import load_table, spec_features, spec_table

__all__ = ["FORMS", "KINDS", "PAPER_TERMS", "Law", "Term", "fit_law", "load_law", "load_table",
           "parse_terms", "save_law", "spec_features", "spec_table"]

"""Public scaling sweeps shipped with the package, and the fit-small/predict-large records that
calibrate prediction intervals where a user's own runs cannot (laws/calibration.py).

Each ``Sweep`` names a file under laws/public/ (sources in laws/public/README.md), the column
mapping, the law fitted and how it is split: by compute budget for isoFLOP designs, by tokens
per parameter for over-training designs, by model size otherwise. A split fits the runs below a
cut and predicts the runs at or above it; ``split_records`` keeps, for every predicted run, its
extrapolation distance (laws/intervals.py), its residual in log space and the in-sample scatter
of the fit that predicted it (laws/public_records.py makes them and writes laws/public/records.csv,
which the package ships, so a fit never refits the sweeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError
from archscale.laws.table import load_table, training_flops

PUBLIC_DIR = Path(__file__).resolve().parent / "public"
RECORDS = PUBLIC_DIR / "records.csv"
"""The shipped calibration records (``public_records.build_records`` writes them)."""
RECORD_COLUMNS = ("sweep", "law", "split", "distance", "residual", "scatter")


@dataclass(frozen=True)
class Sweep:
    """One public sweep and one law fitted to it."""

    name: str
    """Short name, unique per (sweep, law)."""
    file: str
    """CSV under laws/public/."""
    columns: str
    """--columns mapping to the canonical N, D, loss (and shape features)."""
    law: str
    """Law kind fitted."""
    split_by: str
    """``flops`` (isoFLOP designs), ``tokens_per_param`` (over-training designs) or ``N``."""
    cuts: tuple[float, ...]
    """Cuts of ``split_by``: each split fits the runs below one and predicts those at or above."""
    options: dict[str, Any] = field(default_factory=dict)
    """Law options (terms, ...)."""
    constant_d: float | None = None
    """Tokens of every run where the file has no token column (all runs trained alike)."""
    tuned: bool = False
    """Keep the best run of each (N, D) only: the file sweeps hyperparameters (learning rate,
    batch) the law does not model, and a loss law in N and D is the tuned envelope."""
    rows: str | None = None
    """pandas query selecting this sweep's runs where the file holds several sweeps (one law is
    fitted per training corpus, so each corpus is its own sweep)."""


SWEEPS: tuple[Sweep, ...] = (
    Sweep("epoch", "chinchilla_epoch.csv", "N=Model Size,flops=Training FLOP",
          "chinchilla", "flops", (1e20, 3e20, 6e20, 1e21)),
    Sweep("morph", "morph_open_lm.csv", "N=n_params,D=train_tokens,loss=final_loss",
          "chinchilla", "N", (1.2e8, 1.7e8, 2e8, 3e8)),
    Sweep("morph-aspect", "morph_open_lm.csv",
          "N=n_params,D=train_tokens,loss=final_loss,scale=size_label",
          "conditional", "N", (1.2e8, 1.7e8, 2e8, 3e8), {"terms": "aspect:u_log_sq"}),
    Sweep("morph-overtrain", "morph_open_lm.csv", "N=n_params,D=train_tokens,loss=final_loss",
          "chinchilla", "tokens_per_param", (100.0,)),
    Sweep("data-constrained", "data_constrained.csv", "N=params,D=tokens",
          "chinchilla", "flops", (3e18, 1e19, 3e19, 1e20)),
    Sweep("lr-bsz", "lr_bsz.csv", "N=non_embedding_param_size,D=data_size,loss=lm_loss",
          "chinchilla", "flops", (3e19, 6e19, 1.2e20, 2.4e20), tuned=True),
    Sweep("moe", "moe.csv", "N=dense_parameter_count,loss=loss_validation",
          "chinchilla", "N", (5e7, 1e8, 3e8), constant_d=1.0),
    *(Sweep(f"gadre-{name}", "overtrain_gadre.csv", "N=params,D=tokens,loss=c4_val_loss",
            "chinchilla", "tokens_per_param", (40.0, 80.0, 160.0, 320.0),
            rows=f"corpus == '{corpus}'")
      for name, corpus in (("c4", "c4_original"), ("rpj", "rpj"), ("rw", "rw_original"))),
)
"""The shipped sweeps (laws/public/README.md cites each). ScaleBench's vocab pool (a negative,
unigram-normalised loss) and parallel pool (extrapolation in the parallel width P, not N or D) fit
no loss law of this package and are left out."""


def sweep(name: str) -> Sweep:
    for item in SWEEPS:
        if item.name == name:
            return item
    raise ArchscaleError(f"no public sweep {name!r}: choose one of {[s.name for s in SWEEPS]}")


def load(item: Sweep) -> pd.DataFrame:
    """The sweep's runs with canonical columns (ScaleBench's pool and target splits together)."""
    raw = pd.read_csv(PUBLIC_DIR / item.file)
    if item.rows is not None:
        raw = raw.query(item.rows).reset_index(drop=True)
    if item.constant_d is not None:
        raw = raw.assign(D=item.constant_d)
    table = load_table(raw, item.columns)
    if "loss" not in table.columns:
        table["loss"] = raw["loss"].to_numpy()
    if "D" not in table.columns and "flops" in table.columns:
        table["D"] = table["flops"] / (6.0 * table["N"])
    if item.tuned:
        best = table.groupby(["N", "D"])["loss"].idxmin()
        table = table.loc[np.sort(best.to_numpy())].reset_index(drop=True)
    return table


def split_values(item: Sweep, table: pd.DataFrame) -> pd.Series:
    """What a split cuts on: training FLOPs, tokens per parameter or N."""
    if item.split_by == "flops":
        return training_flops(table)
    if item.split_by == "tokens_per_param":
        return table["D"] / table["N"]
    return table[item.split_by]


def load_records(path: Path = RECORDS) -> pd.DataFrame:
    """The shipped records (empty if absent: nothing public calibrates then)."""
    if not path.is_file():
        return pd.DataFrame(columns=list(RECORD_COLUMNS))
    return pd.read_csv(path)

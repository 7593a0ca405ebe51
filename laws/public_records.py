"""Make the fit-small/predict-large records of the public sweeps (laws/public_sweeps.py) that the
package ships in laws/public/records.csv: ``python -m archscale.laws.public_records``.

Apart from public_sweeps because it fits laws: laws/law.py reads the records (through
laws/calibration.py), so the module that reads them must not import the fitter.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from archscale.laws import intervals
from archscale.laws.law import fit_law
from archscale.laws.public_sweeps import RECORDS, SWEEPS, Sweep, load, split_values


def split_records(item: Sweep) -> pd.DataFrame:
    """(distance, residual, scatter) of every run predicted by a fit on the runs below a cut."""
    table = load(item)
    values = split_values(item, table).to_numpy(dtype=float)
    frames = []
    for cut in item.cuts:
        train, test = table[values < cut], table[values >= cut]
        law = fit_law(item.law, train, item.options, n_boot=0, progressive=False)
        predicted = law.predict(test)
        frames.append(pd.DataFrame({
            "sweep": item.name, "law": item.law, "split": f"{item.split_by} >= {cut:.3g}",
            "distance": intervals.distance(test, law.error_model.ranges),
            "residual": intervals.residuals(predicted, test["loss"].to_numpy(float), "log"),
            "scatter": law.error_model.sigma_run}))
    return pd.concat(frames, ignore_index=True)


def build_records(path: Path = RECORDS) -> pd.DataFrame:
    """Refit every sweep's splits and write the records the package ships."""
    frames = []
    for item in SWEEPS:
        frames.append(split_records(item))
        print(f"{item.name}: {len(frames[-1])} records", flush=True)
    records = pd.concat(frames, ignore_index=True)
    records.to_csv(path, index=False, float_format="%.6g")
    return records


if __name__ == "__main__":
    built = build_records()
    print(built.groupby(["sweep", "split"]).size().to_string())
    print(f"wrote {len(built)} records to {RECORDS}")

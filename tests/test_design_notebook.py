"""Notebook 04 runs top to bottom (nbclient, a real kernel) on the ScaleBench moe pool the tests
carry (tests/data/validation/scalebench/moe.csv) and teaches what it measures: the engine's
uncertainty of the law's mean at the target narrows as it adds runs, within its budget."""

import json
import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_design_replay.ipynb"
MOE = Path(__file__).parent / "data" / "validation" / "scalebench" / "moe.csv"


@pytest.mark.slow
def test_design_replay_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_DESIGN_CSV", str(MOE))
    monkeypatch.setenv("ARCHSCALE_NOTEBOOK_OUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    summary = json.loads((tmp_path / "04_design_replay.json").read_text())
    assert (summary["pool"], summary["target"]) == (193, 28)  # the task's train / test split
    trace = summary["trace"]
    fractions = [t["cost_fraction"] for t in trace]
    assert fractions == sorted(fractions) and fractions[-1] <= 0.10 + 1e-12
    assert trace[0]["stage"] == "seed" and trace[-1]["stage"] == "reduce"
    reducing = [t["engine_sd"] for t in trace if t["stage"] == "reduce"]
    assert len(reducing) >= 3 and reducing[-1] < reducing[0]
    # calibrated or silent: a refit whose intervals nothing calibrates has none (width NaN)
    calibrated = [t for t in trace if not math.isnan(t["width_90"])]
    assert calibrated and all(0 <= t["coverage_90"] <= 1 and t["width_90"] > 0
                              for t in calibrated)
    assert set(summary["r2"]) == {"design", "random", "all"}
    assert all(-1 <= r <= 1 for per in summary["r2"].values() for r in per.values())

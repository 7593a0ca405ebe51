"""`archscale study export --remeasure-throughput`: every shape of a finished study timed again,
together, and the run table's throughput columns rewritten from one shared reference."""

import dataclasses
import io

import pandas as pd
import pytest
from typer.testing import CliRunner

from archscale.arch import ArchscaleError
from archscale.cli.main import app
from archscale.search import remeasure
from archscale.search.study import open_study
from archscale.search.table import trials_table

THROUGHPUT = ["prefill_tokens_per_s", "decode_tokens_per_s", "tp_batch", "tp_context"]


def test_export_remeasures_every_shape_interleaved(small_study, tmp_path, monkeypatch):
    name, url = small_study
    comparisons = []

    def spy(specs, **setting):  # the real measurement, kept to check the table's arithmetic
        comparisons.append((specs, setting, real(specs, **setting)))
        return comparisons[-1][2]

    real = remeasure.compare_throughput
    monkeypatch.setattr(remeasure, "compare_throughput", spy)
    csv = tmp_path / "runs.csv"
    result = CliRunner().invoke(app, ["study", "export", name, "--storage", url, "--csv", str(csv),
                                      "--remeasure-throughput", "--min-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "throughput re-measured, all shapes interleaved" in result.output
    table = pd.read_csv(csv)
    stored = pd.read_csv(io.StringIO(trials_table(open_study(name, url).study).to_csv(index=False)))
    # Everything but the throughput columns is the plain export's.
    pd.testing.assert_frame_equal(table.drop(columns=THROUGHPUT), stored.drop(columns=THROUGHPUT))
    ((specs, setting, comparison),) = comparisons  # one interleaved measurement of all shapes
    assert len(specs) == len(set(specs)) == len(table)  # the small study's shapes are distinct
    assert (setting["batch"], setting["context"], setting["min_seconds"]) == (4, 32, 0)
    assert (table["tp_batch"] == 4).all() and (table["tp_context"] == 32).all()
    reference = comparison.results[0]
    for row, spec, ratio in zip(table.itertuples(), specs, comparison.decode_ratios, strict=True):
        assert row.d_model == spec.d_model and row.n_kv_heads == spec.n_kv_heads
        assert row.decode_tokens_per_s == pytest.approx(ratio * reference.decode_tokens_per_s)
    assert table["prefill_tokens_per_s"].iloc[0] == pytest.approx(reference.prefill_tokens_per_s)
    assert (table["decode_tokens_per_s"] != stored["decode_tokens_per_s"]).all()


def test_a_study_without_throughput_cannot_be_remeasured(small_study):
    name, url = small_study
    handle = open_study(name, url)
    off = handle.sweep.model_copy(update={
        "throughput": handle.sweep.throughput.model_copy(update={"enabled": False})})
    with pytest.raises(ArchscaleError, match="measures no throughput"):
        remeasure.remeasure_table(dataclasses.replace(handle, sweep=off),
                                  trials_table(handle.study))

"""The shipped public sweeps hold what their sources publish (laws/public/README.md).

Gadre et al. 2024's over-training runs (laws/public/overtrain_gadre.csv) against values read by
hand from the repository's JSON files (mlfoundations/scaling, exp_data/models/*.json).
"""

from __future__ import annotations

import pandas as pd
import pytest

from archscale.laws import public_sweeps

GADRE = public_sweeps.PUBLIC_DIR / "overtrain_gadre.csv"


def test_gadre_file_holds_the_104_published_runs():
    """mlfoundations/scaling's exp_data/models/ holds 104 JSON files (one per run) over three
    corpora: every one is shipped."""
    table = pd.read_csv(GADRE)
    assert len(table) == 104
    assert table["corpus"].value_counts().to_dict() == {"rpj": 35, "rw_original": 35,
                                                       "c4_original": 34}
    assert not table.duplicated(["corpus", "params", "tokens"]).any()


@pytest.mark.parametrize("path, params, tokens, loss", [
    # "hyperparameters": {"tokens": 211386240, ... "params": 10569312, ...}; the c4_val result
    ("exp_data/models/rpj-d=96_l=8_h=4-1.0.json", 10569312, 211386240, 5.38702091510821),
    # "tokens": 131717201920, "params": 411616256; c4_val loss 2.688088583583547
    ("exp_data/models/c4_original-d=1024_l=24_h=8-16.0.json", 411616256, 131717201920,
     2.688088583583547),
    # "params": 6889410560, "tokens": 137788211200; c4_val loss 2.454721561962622
    ("exp_data/models/rw_original-open_lm_7b-1.0.json", 6889410560, 137788211200,
     2.454721561962622),
])
def test_gadre_rows_match_the_json_files(path, params, tokens, loss):
    row = pd.read_csv(GADRE).set_index("path").loc[path]
    assert (row["params"], row["tokens"]) == (params, tokens)
    assert row["c4_val_loss"] == pytest.approx(loss, rel=1e-12)
    assert row["tokens_per_param"] == pytest.approx(tokens / params)


def test_each_gadre_corpus_is_its_own_sweep_split_by_tokens_per_parameter():
    """One law per training corpus, held out by tokens per parameter, over at least 3 cuts."""
    sweeps = [s for s in public_sweeps.SWEEPS if s.file == GADRE.name]
    assert sorted(s.name for s in sweeps) == ["gadre-c4", "gadre-rpj", "gadre-rw"]
    for item in sweeps:
        table = public_sweeps.load(item)
        assert len(table) in (34, 35)
        assert item.split_by == "tokens_per_param" and len(item.cuts) >= 3
        values = public_sweeps.split_values(item, table)
        assert all((values < cut).any() and (values >= cut).any() for cut in item.cuts)

"""RunResult: lossless JSON round trip, validation, the run-table row; provenance helpers."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from archscale.arch import ArchscaleError, ArchSpec
from archscale.sweeps.recipe import Budget, Recipe
from archscale.sweeps.results import RunResult, finite_or_none, git_commit, software_versions

SPEC = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                head_dim=8, d_ff=64)


def make_result(**changes) -> RunResult:
    fields = dict(
        spec=SPEC.to_dict(), status="complete", message="", val_loss=0.1 + 0.2,
        val_accuracy=1 / 3, task_accuracy=0.25,
        loss_curve=[{"step": 1, "tokens": 256, "train_loss": 5.551115123125783e-17},
                    {"step": 2, "tokens": 512, "train_loss": 3.25, "val_loss": 3.5,
                     "val_accuracy": 0.125}],
        tokens=512, flops=512 * SPEC.train_flops_per_token() * 1.0, steps=2,
        wall_time_s=1.2345678901234567, tokens_per_s=98765.4321, mfu=0.4123456789,
        compile_time_s=3.0, device_kind="cpu", n_devices=1, seed=7,
        recipe=Recipe().to_dict(), budget=Budget(flops=1.5e12).to_dict(),
        data_fingerprint="ab" * 32, diverged_step=None, versions=software_versions(),
        git_commit=None, params_total=SPEC.params_total, params_nonembed=SPEC.params_nonembed,
        throughput={"prefill_tokens_per_s": 1e5, "decode_tokens_per_s": 2e3, "batch": 8,
                    "context": 512})
    fields.update(changes)
    return RunResult(**fields)


def test_json_round_trip_is_lossless(tmp_path):
    result = make_result()
    again = RunResult.from_json(result.to_json())
    assert again == result
    assert again.val_loss == 0.1 + 0.2  # every float bit survives
    assert RunResult.load(result.save(tmp_path / "runs" / "r.json")) == result
    assert RunResult.from_json(make_result(throughput=None, task_accuracy=None,
                                           status="diverged", diverged_step=2).to_json(indent=None)
                               ).diverged_step == 2


def test_non_finite_floats_are_refused_not_written_as_nan():
    with pytest.raises(ValueError):
        make_result(val_loss=float("nan")).to_json()
    assert finite_or_none(float("nan")) is None
    assert finite_or_none(float("-inf")) is None
    assert finite_or_none(None) is None
    assert finite_or_none(2) == 2.0


def test_bad_status_and_unknown_keys_are_user_errors(tmp_path):
    with pytest.raises(ArchscaleError, match="status"):
        make_result(status="crashed")
    data = make_result().to_dict() | {"loss": 1.0}
    with pytest.raises(ArchscaleError, match="unknown RunResult keys"):
        RunResult.from_dict(data)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArchscaleError, match="cannot read"):
        RunResult.load(tmp_path / "bad.json")



def test_row_maps_a_result_onto_the_run_table_columns():
    """The counts are worked out by hand for SPEC (README conventions): N is the decoder blocks
    plus the final norm; r is SwiGLU's three matrices over Q, K, V, O."""
    data = json.loads(make_result().to_json())
    for key in ("val_loss", "val_accuracy", "task_accuracy", "tokens", "flops", "tokens_per_s",
                "mfu", "status"):
        assert key in data
    attention = 32 * 32 + 2 * 32 * (2 * 8) + 32 * 32  # Q, K and V of 2 KV heads, O
    mlp = 3 * 32 * 64
    n_params = 2 * (attention + mlp + 2 * 32) + 32
    row = make_result().row()
    assert row["N"] == n_params == 18_592
    assert row["params_total"] == n_params + 256 * 32  # tied embedding
    assert row["D"] == 512 and row["loss"] == 0.1 + 0.2
    assert row["r"] == pytest.approx(mlp / attention) and row["gqa_group"] == 2
    assert row["d_over_sqrt_n"] == pytest.approx(32 / n_params**0.5)
    assert row["decode_tokens_per_s"] == 2e3 and row["tp_context"] == 512
    assert row["prefill_tokens_per_s"] == 1e5 and row["tp_batch"] == 8
    assert row["d_model"] == 32 and row["seq_len"] == 32
    assert make_result(throughput=None).row()["decode_tokens_per_s"] is None
    assert make_result().arch_spec == SPEC


def test_provenance():
    versions = software_versions()
    assert set(versions) == {"jax", "flax", "optax", "archscale"}
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        pytest.skip("not a git checkout: there is no commit to record")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert git_commit() == head


def test_the_documented_run_table_is_the_defined_one():
    """docs/CONTRIBUTING.md lists exactly the columns RUN_COLUMNS and TRIAL_COLUMNS define, in the
    export's order, with the same meanings; a run's row has exactly the run columns."""
    from archscale.search.table import COLUMNS, TRIAL_COLUMNS
    from archscale.sweeps.results import RUN_COLUMNS

    text = (Path(__file__).resolve().parents[1] / "docs" / "CONTRIBUTING.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", text, flags=re.M))
    assert list(documented) == COLUMNS
    assert documented == {**RUN_COLUMNS, **TRIAL_COLUMNS}
    assert list(make_result().row()) == list(RUN_COLUMNS)

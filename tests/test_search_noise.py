"""The run-to-run noise floor of a table with seed repeats, against a hand computation."""

import math

import pandas as pd
import pytest

from archscale.arch import ArchscaleError
from archscale.search.noise import noise_floor, seed_groups

SHAPE_A = {"d_model": 16, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "head_dim": 8, "d_ff": 32,
           "vocab_size": 256, "seq_len": 32}
SHAPE_B = {**SHAPE_A, "d_model": 24}


def row(shape, tokens, loss, seed, status="complete"):
    return {**shape, "D": tokens, "loss": loss, "seed": seed, "status": status}


def test_pooled_relative_scatter_of_the_seed_groups():
    table = pd.DataFrame([
        row(SHAPE_A, 1000, 2.0, 0), row(SHAPE_A, 1000, 2.2, 1),            # group 1: mean 2.1
        row(SHAPE_B, 1000, 3.0, 0), row(SHAPE_B, 1000, 3.0, 1), row(SHAPE_B, 1000, 3.3, 2),
        row(SHAPE_A, 3000, 1.5, 0),                        # another budget: a run of its own
        row(SHAPE_B, 3000, 2.5, 0), row(SHAPE_B, 3000, 9.9, 1, "diverged"),  # not complete
    ])
    # By hand: deviations from the group means, relative to them; 1 + 2 degrees of freedom.
    squares = 2 * (0.1 / 2.1) ** 2 + 2 * (0.1 / 3.1) ** 2 + (0.2 / 3.1) ** 2
    assert noise_floor(table) == pytest.approx(math.sqrt(squares / 3), rel=1e-12)
    assert noise_floor(table) == pytest.approx(0.05994, abs=1e-5)
    assert sorted(len(g) for g in seed_groups(table)) == [2, 3]


def test_no_repeats_no_floor_and_missing_columns_are_named():
    table = pd.DataFrame([row(SHAPE_A, 1000, 2.0, 0), row(SHAPE_B, 1000, 2.2, 0)])
    assert math.isnan(noise_floor(table))
    with pytest.raises(ArchscaleError, match="'D'"):
        noise_floor(table.drop(columns="D"))


def test_pass_at_k_scatter_at_each_k_by_hand():
    """pass@k of one shape trained with 3 seeds: the pooled relative scatter at each k, as for the
    loss (2 degrees of freedom); a table without repeats has none."""
    from archscale.decide.substitution_report import passk_noise_floor

    measured = {1: [0.04, 0.02, 0.06], 8: [0.30, 0.27, 0.33]}
    table = pd.DataFrame([{**row(SHAPE_A, 1000, 2.0 + seed / 100, seed), "k": k,
                           "pass_at_k": values[seed]}
                          for k, values in measured.items() for seed in range(3)])
    floor = passk_noise_floor(table)
    assert floor["k"] == [1, 8] and (floor["n_groups"], floor["dof"]) == (1, 2)
    # k = 1: mean 0.04, deviations -50%, 0, +50%; k = 8: mean 0.30, -10%, 0, +10%
    assert floor["relative"] == pytest.approx([math.sqrt(0.5 / 2), math.sqrt(0.02 / 2)])
    assert passk_noise_floor(table[table["seed"] == 0])["relative"] is None

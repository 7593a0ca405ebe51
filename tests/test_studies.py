"""Studies through the design engine: the demo's full-grid table against the demo grid it stands
for, and the engine asking for the runs a refused law needs. The packaged design example end to
end is tests/test_design_example.py (minutes of training, slow)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from archscale.decide.design_report import GRID_TABLE, matches_grid
from archscale.decide.design_study import propose
from archscale.search import designed
from archscale.search.defaults import DEMO_SWEEP
from archscale.search.plan import plan_grid
from archscale.search.sweepfile import load_sweep

EXAMPLE = Path(__file__).resolve().parents[1] / "search" / "examples" / "design_grid.yaml"


def test_the_shipped_full_grid_table_is_the_demo_grid():
    """Refresh search/examples/demo_full_grid.csv (GRID_TABLE says how) when the demo grid
    changes: a designed demo's regret_vs_grid is measured against it."""
    table = pd.read_csv(GRID_TABLE)
    assert matches_grid(table, load_sweep(DEMO_SWEEP), int(table["vocab_size"].iloc[0]))


def synthetic_state(sweep, ratio_done: float):
    """The demo grid's candidates; the runs at ``ratio_done`` tokens per parameter finished,
    with losses of a Chinchilla-like law times a U in d/sqrt(N) and r (1% scatter)."""
    runs = [r for r in plan_grid(sweep, 256) if r.seed is None]
    pool = designed.candidate_rows(runs)
    ratio = pool["D"] / pool["N"]
    done = pool[np.isclose(ratio, ratio_done, rtol=0.1)].copy()
    rng = np.random.default_rng(0)
    done["loss"] = ((1.6 + 40 / done["N"] ** 0.35 + 60 / done["D"] ** 0.3)
                    * (1 + 0.05 * np.log(done["d_over_sqrt_n"] / 0.16) ** 2
                       + 0.03 * np.log(done["r"] / 2.5) ** 2)
                    * np.exp(rng.normal(0, 0.01, len(done))))
    open_ = pool.drop(done.index)
    return designed.DesignState(
        finished=done, candidates=open_, pending=open_.iloc[:0],
        grid_flops=float(pool["flops"].sum()), spent_flops=float(done["flops"].sum()),
        budget_flops=float(pool["flops"].sum()), batch=2, step=5)


@pytest.mark.slow
def test_where_the_runs_do_not_identify_the_law_the_engine_asks_for_the_runs_that_would():
    """Every finished run at 16 tokens per parameter: N and D are collinear, the law is refused,
    and the picks are the runs off that line (48 per parameter) that the refusal asks for."""
    sweep = load_sweep(DEMO_SWEEP)  # the demo grid, with design:
    state = synthetic_state(sweep, 16)
    proposal = propose(sweep, state)
    assert proposal.stop is None and proposal.status["stage"] == "identify"
    assert proposal.status["problems"]
    first = state.candidates.loc[proposal.picks[0].key]
    assert first["D"] / first["N"] > 40  # off the line: the run the refusal asks for
    assert all(p.reason.startswith("identify") for p in proposal.picks)


@pytest.mark.slow
def test_a_settled_design_stops_only_on_every_run_it_trained():
    """Settled with runs still training, the step waits for them (at most one run) instead of
    stopping: they could move the fit, even out of identification, and the laws the study's
    users fit see them. With none left training, it stops and says why."""
    from dataclasses import replace

    sweep = load_sweep(DEMO_SWEEP)
    long, short = synthetic_state(sweep, 48), synthetic_state(sweep, 16).finished
    state = replace(long, finished=pd.concat([long.finished, short.iloc[:-3]]),
                    candidates=short.iloc[-2:].drop(columns="loss"),
                    pending=short.iloc[-3:-2].drop(columns="loss"), step=9)
    waiting = propose(sweep, state)
    assert waiting.status["p_settled"] >= sweep.design.stop_probability
    assert waiting.wait and waiting.stop is None and not waiting.picks
    done = replace(state, finished=pd.concat([state.finished, short.iloc[-3:-2]]),
                   pending=state.pending.iloc[:0])
    stopped = propose(sweep, done)
    assert not stopped.wait and stopped.stop.startswith("settled")


@pytest.mark.slow
def test_a_sweep_can_ask_the_engine_to_lower_the_chance_of_the_wrong_shape():
    """``design: {criterion: wrong_shape}`` scores runs by the fall of P(the top shape is not
    the best) (decide/wrong_shape.py), the engine's CRITERIA spelled the same in sweep files."""
    from typing import get_args

    from archscale.decide.design import CRITERIA
    from archscale.search.sweepfile import DesignSection

    assert get_args(DesignSection.model_fields["criterion"].annotation) == CRITERIA
    sweep = load_sweep(DEMO_SWEEP)
    # never settled: the picks are what the criterion asks for
    sweep = sweep.model_copy(update={"design": sweep.design.model_copy(
        update={"criterion": "wrong_shape", "stop_probability": 1 - 1e-9, "tolerance": 0.0})})
    from dataclasses import replace

    long, short = synthetic_state(sweep, 48), synthetic_state(sweep, 16).finished
    state = replace(long, finished=pd.concat([long.finished.iloc[::2], short.iloc[::6]]),
                    candidates=pd.concat([long.finished.iloc[1::2], short.drop(
                        short.index[::6])]).drop(columns="loss"))
    proposal = propose(sweep, state)
    assert proposal.status["stage"] == "reduce" and proposal.picks
    assert all("P(wrong shape)" in p.reason for p in proposal.picks)

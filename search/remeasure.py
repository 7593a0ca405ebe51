"""Re-time the throughput of a study's runs together, so that the run table compares shapes fairly.

Each trial measures its shape's throughput on its own, when its training ends. On a shared
machine the load drifts by 20-30% over minutes, so two trials' tokens/s differ by that much
more than their shapes do, and the throughput law fits the drift. ``remeasure_table`` times
every distinct shape of the table in one process with ``compare_throughput`` (one call of each
shape per round, in the study's throughput setting) and rewrites the throughput columns: each
shape's tokens/s is its median per-round ratio to the first shape times the first shape's
fastest call, so every row shares one reference and one stretch of time.
"""

from __future__ import annotations

import json

import pandas as pd

from archscale.arch.errors import ArchscaleError
from archscale.arch.spec import ArchSpec
from archscale.search.attrs import RESULT_ATTR
from archscale.search.study import StudyHandle
from archscale.sweeps.results import RunResult
from archscale.sweeps.throughput import compare_throughput


def remeasure_table(handle: StudyHandle, table: pd.DataFrame, *,
                    min_seconds: float | None = None) -> pd.DataFrame:
    """``table`` (rows of ``handle``'s trials, from ``trials_table``) with its
    ``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``tp_batch`` and ``tp_context`` measured
    anew, interleaved, in the sweep's throughput setting. ``min_seconds`` (default: the sweep's)
    is the prefill and the decode time per shape. Rows of runs that did not complete are left as
    they are."""
    sweep = handle.sweep
    if not sweep.throughput.enabled:
        raise ArchscaleError(f"study {handle.name!r} measures no throughput (throughput.enabled is "
                             "false in its sweep file): there is nothing to re-measure")
    complete = table["status"] == "complete"
    trials = {trial.number: trial for trial in handle.study.get_trials(deepcopy=False)}
    keys = {}  # row index -> the canonical JSON of its shape
    for index, trial_id in table.loc[complete, "trial_id"].items():
        spec = RunResult.from_dict(trials[int(trial_id)].user_attrs[RESULT_ATTR]).arch_spec
        keys[index] = json.dumps(spec.to_dict(), sort_keys=True)
    remeasured = table.copy()
    if not keys:
        return remeasured
    shapes = list(dict.fromkeys(keys.values()))  # distinct, in table order
    options = sweep.throughput_options()
    if min_seconds is not None:
        options["min_seconds"] = min_seconds
    comparison = compare_throughput([ArchSpec.from_dict(json.loads(s)) for s in shapes],
                                    **options, seed=sweep.seed)
    reference = comparison.results[0]
    speeds = {shape: (prefill * reference.prefill_tokens_per_s,
                      decode * reference.decode_tokens_per_s)
              for shape, prefill, decode in zip(shapes, comparison.prefill_ratios,
                                                comparison.decode_ratios, strict=True)}
    for index, shape in keys.items():
        prefill, decode = speeds[shape]
        remeasured.loc[index, ["prefill_tokens_per_s", "decode_tokens_per_s", "tp_batch",
                               "tp_context"]] = [prefill, decode, reference.batch, reference.context]
    return remeasured

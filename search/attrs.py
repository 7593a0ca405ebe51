"""The names of everything a study records about itself and its trials, in one module that imports
nothing, so reading a study (search/table.py, decide/, notebooks) never loads the trainer.

Trial user attrs (what optuna-dashboard shows), trial system attrs (``archscale:`` bookkeeping of
workers and retries) and study user attrs. ``search.study`` says how a trial ends and which of
these it then holds.
"""

# ---- trial user attrs: the planned run (kept when a crashed trial is retried) ---------------------
CONFIG_KEY_ATTR = "config_key"
"""The run's config key (``plan.config_key``): a hash of its spec, budget and own seed."""
SPEC_ATTR = "spec"
"""The run's ``ArchSpec.to_dict()``."""
BUDGET_ATTR = "budget"
"""The run's ``Budget.to_dict()``."""
SEED_ATTR = "seed"
"""The run's own seed, only on the repeats of ``noise:``."""
DESIGN_PICK_ATTR = "design"
"""On a run the design engine picked (search/designed.py): its step, why it was picked and the
target interval before and after it (``designed.Pick.attrs``); optuna-dashboard shows it."""
DESIGN_STEP_ATTR = "design_step"
"""On a designed study's step trial (search/designed.py): the step's number."""
PLAN_ATTRS = (CONFIG_KEY_ATTR, SPEC_ATTR, BUDGET_ATTR, SEED_ATTR, DESIGN_PICK_ATTR, DESIGN_STEP_ATTR)
"""User attrs that describe the planned run (kept when a crashed trial is retried); ``seed`` only
on the repeats of ``noise:``, the design's on a designed study's picks and steps."""

# ---- trial user attrs: the run's outcome ---------------------------------------------------------
RESULT_ATTR = "result"
"""The run's ``RunResult.to_dict()``."""
STATUS_ATTR = "status"
"""The run's outcome (complete, pruned, diverged, oom, failed, duplicate); absent while it runs and
on a trial whose worker died."""
MESSAGE_ATTR = "message"
"""Why a run did not complete, in words."""
DUPLICATE_OF_ATTR = "duplicate_of"
"""On a duplicate: the number of the COMPLETE trial of the same config key."""
THROUGHPUT_OF_ATTR = "throughput_of_trial"
"""The trial whose throughput measurement of the same shape this run copies."""
LOSS_CURVE_ATTR = "loss_curve_artifact"
"""The artifact id of the run's loss curve (JSON)."""
N_ATTR = "N"
"""Non-embedding parameters, flat for optuna-dashboard's tables."""
D_ATTR = "D"
"""Training tokens, flat."""
VAL_LOSS_ATTR = "val_loss"
"""Validation loss, flat."""
DECODE_ATTR = "decode_tokens_per_s"
"""Decode throughput (tokens/s), flat."""

# ---- trial system attrs: workers and retries -----------------------------------------------------
OWNER_ATTR = "archscale:owner"
"""Who runs the trial: host, pid and process start time (``recovery.owner_info``)."""
HEARTBEAT_ATTR = "archscale:heartbeat"
"""Unix time of the running trial's last heartbeat."""
STALE_ATTR = "archscale:stale"
"""Why a trial was found stale (its worker or trial process died) and re-queued."""
TRIES_ATTR = "archscale:tries"
"""On a retried trial: the earlier tries of its config, oldest first, each ``{"trial": number,
"reason": why it stopped}``; the retry limit counts them."""

# ---- study user attrs ----------------------------------------------------------------------------
SWEEP_ATTR = "sweep"
"""The validated sweep file (``SweepFile.to_dict()``)."""
FINGERPRINT_ATTR = "data_fingerprint"
"""The fingerprint of the data every run must see."""
VOCAB_ATTR = "vocab_size"
"""The tokenizer's vocabulary size (every spec's vocab_size)."""
DATA_SOURCE_ATTR = "data_source"
"""Where the study's data came from, in words."""
KIND_ATTR = "kind"
"""'grid' or 'search'."""

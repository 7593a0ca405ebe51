"""Names of the trial attributes that readers of a study need, in a module that imports nothing, so
reading a study (search/table.py, notebooks) never loads the trainer."""

RESULT_ATTR = "result"
"""User attribute holding the run's ``RunResult.to_dict()``."""
STALE_ATTR = "archscale:stale"
"""System attribute saying why a trial was found stale (its worker died) and re-queued."""

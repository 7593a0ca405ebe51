"""Names of the trial attributes that readers of a study need, in a module that imports nothing, so
reading a study (search/table.py, notebooks) never loads the trainer."""

RESULT_ATTR = "result"
"""User attribute holding the run's ``RunResult.to_dict()``."""
STALE_ATTR = "archscale:stale"
"""System attribute saying why a trial was found stale (its worker died) and re-queued."""
DESIGN_STEP_ATTR = "design_step"
"""User attribute of a designed study's step trial (search/designed.py): the step's number."""
DESIGN_PICK_ATTR = "design"
"""User attribute of a run the design engine picked: its step, why it was picked and the target
interval before and after it (``designed.Pick.attrs``); optuna-dashboard shows it."""

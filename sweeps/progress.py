"""A progress bar (rich, on stderr) with tokens/s and loss that appears only for runs that last.

Runs shorter than ``delay_s`` print nothing, so a sweep of tiny runs stays quiet.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """Call ``update`` after each dispatch; ``close`` at the end. A no-op when disabled."""

    def __init__(self, total_steps: int, *, enabled: bool = True, delay_s: float = 3.0,
                 description: str = "train") -> None:
        self.total_steps = total_steps
        self.enabled = enabled
        self.delay_s = delay_s
        self.description = description
        self._started = time.perf_counter()
        self._bar: Progress | None = None
        self._task = None

    def update(self, step: int, tokens_per_s: float, loss: float | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            if time.perf_counter() - self._started < self.delay_s:
                return
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("steps  {task.fields[rate]} tok/s  loss {task.fields[loss]}"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task(self.description, total=self.total_steps, rate="-",
                                            loss="-")
            self._bar.start()
        shown = "-" if loss is None else f"{loss:.4f}"
        self._bar.update(self._task, completed=step, rate=f"{tokens_per_s:,.0f}", loss=shown)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

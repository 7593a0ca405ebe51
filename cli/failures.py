"""How a failure reaches the user: one line on stderr, never a traceback.

Typer turns a KeyboardInterrupt into a silent exit 130 inside its own ``main``, before any
``try`` around ``app()`` sees it, and lets other exceptions print tracebacks; so the handling
sits one level deeper, in the command group's ``invoke`` (``cli.group``), which every command
runs inside:

* Ctrl-C: ``interrupted: <command>; kept: <what is kept>; resume: <command>``, exit 130.
  What is kept and how to resume is the command's to say (raise ``Interrupted``); otherwise it
  follows from the command (``KEPT``);
* ``OSError`` (a disk, a permission, a vanished file) becomes an ``ArchscaleError`` naming the
  path, which ``cli.main.main`` prints as ``error: <message>`` (exit 2) like every other.
"""

from __future__ import annotations

import shlex

EXIT_INTERRUPTED = 130

_TRIALS_KEPT = ("finished trials are kept in the study's storage (the trial cut short goes back "
                "to the queue)")
KEPT: dict[str, str] = {
    "study run": _TRIALS_KEPT,
    "study worker": _TRIALS_KEPT,
    "demo": _TRIALS_KEPT,
    "study create": "the study as far as it was created (create or run continues it)",
}
"""What an interrupted command keeps, by its command words; others keep nothing."""
RESUMES = {"study run", "study worker", "demo", "study create"}
"""Commands that continue where they stopped when run again (others start over)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the interrupted command kept and the command that resumes it."""

    def __init__(self, kept: str, resumes: bool, note: str = ""):
        super().__init__(kept)
        self.kept = kept
        """What is kept, e.g. 'partial result in run.json (status interrupted)'."""
        self.resumes = resumes
        """Whether running the same command again continues (else it starts over)."""
        self.note = note
        """Said after the command, e.g. how to make the next run resumable."""


def command_line(argv: list[str]) -> str:
    """The command as the user could type it again."""
    return shlex.join(["archscale", *argv])


def interrupted_line(words: str, argv: list[str], err: KeyboardInterrupt) -> str:
    """The one line printed on Ctrl-C in command ``words`` (e.g. "study run") run as ``argv``."""
    again = command_line(argv)
    if isinstance(err, Interrupted):
        kept, resumes, note = err.kept, err.resumes, err.note
    else:
        kept, resumes, note = KEPT.get(words, "nothing was written"), words in RESUMES, ""
    return (f"interrupted: archscale {words or '(no command)'}; kept: {kept}; "
            f"{'resume' if resumes else 'start over'}: {again}{note}")


def os_error_text(err: OSError) -> str:
    """An OSError as one line naming its path(s) (what ``cli.group`` raises it as)."""
    paths = " -> ".join(str(name) for name in (err.filename, err.filename2) if name)
    return f"{err.strerror or err}{f' ({paths})' if paths else ''}: check the path and its " \
           "permissions, then rerun"

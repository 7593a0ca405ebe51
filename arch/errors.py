"""The one exception type the CLI turns into a clean message (no traceback)."""


class ArchscaleError(ValueError):
    """Bad user input or an impossible request; the message says what is wrong and how to fix it.

    Every package raises this (or a subclass) for anything the user can correct; the CLI prints
    the message and exits with status 2.
    """

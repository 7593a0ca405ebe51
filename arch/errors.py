"""The one exception type the CLI turns into a clean message (no traceback)."""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any


class ArchscaleError(ValueError):
    """Bad user input or an impossible request; the message says what is wrong and how to fix it.

    Every package raises this (or a subclass) for anything the user can correct; the CLI prints
    the message and exits with status 2.
    """


class SettingError(ArchscaleError):
    """A setting out of range, named as the library knows it (a config field or keyword).

    ``template`` writes each setting's name as ``{name}``: ``str()`` shows the names, and the
    command line shows its own flags instead (``shown_as``; cli/main.py maps them).
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.shown_as({}))

    @property
    def names(self) -> list[str]:
        """The settings the message names."""
        return [name for _, name, _, _ in string.Formatter().parse(self.template) if name]

    def shown_as(self, labels: Mapping[str, str]) -> str:
        """The message with each setting shown by its label (its own name where none is given)."""
        return self.template.format_map({name: labels.get(name, name) for name in self.names})


def reject_unknown_keys(cls: type, data: Mapping[str, Any], *, error: type[ArchscaleError] = ArchscaleError,
                        hint: str | None = None) -> None:
    """Refuse keys of ``data`` that are not fields of dataclass ``cls``, naming the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {cls.__name__} keys {unknown}: "
                    + (hint or f"valid keys are {sorted(known)}"))

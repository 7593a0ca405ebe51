"""The one exception type the CLI turns into a clean message (no traceback)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any


class ArchscaleError(ValueError):
    """Bad user input or an impossible request; the message says what is wrong and how to fix it.

    Every package raises this (or a subclass) for anything the user can correct; the CLI prints
    the message and exits with status 2.
    """


SETTING = re.compile(r"\{([A-Za-z_]\w*)\}")
"""A setting's name in a SettingError template."""


class SettingError(ArchscaleError):
    """A setting out of range, named as the library knows it (a config field or keyword).

    ``template`` writes each setting's name as ``{name}`` (an identifier in braces; other
    braces, as in a dict or a YAML example, are text): ``str()`` shows the names, and the command
    line shows its own flags instead (``shown_as``; cli/main.py maps them). A value written into
    the template is text too, unless it holds an identifier in braces itself.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.shown_as({}))

    @property
    def names(self) -> list[str]:
        """The settings the message names, each once."""
        return list(dict.fromkeys(SETTING.findall(self.template)))

    def shown_as(self, labels: Mapping[str, str]) -> str:
        """The message with each setting shown by its label (its own name where none is given)."""
        return SETTING.sub(lambda found: labels.get(found[1], found[1]), self.template)


def reject_unknown_keys(cls: type, data: Mapping[str, Any], *, error: type[ArchscaleError] = ArchscaleError,
                        hint: str | None = None) -> None:
    """Refuse keys of ``data`` that are not fields of dataclass ``cls``, naming the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {cls.__name__} keys {unknown}: "
                    + (hint or f"valid keys are {sorted(known)}"))

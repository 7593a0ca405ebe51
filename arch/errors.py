"""The one exception type the CLI turns into a clean message (no traceback)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class ArchscaleError(ValueError):
    """Bad user input or an impossible request; the message says what is wrong and how to fix it.

    Every package raises this (or a subclass) for anything the user can correct; the CLI prints
    the message and exits with status 2.
    """


def reject_unknown_keys(cls: type, data: Mapping[str, Any], *, error: type[ArchscaleError] = ArchscaleError,
                        hint: str | None = None) -> None:
    """Refuse keys of ``data`` that are not fields of dataclass ``cls``, naming the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {cls.__name__} keys {unknown}: "
                    + (hint or f"valid keys are {sorted(known)}"))

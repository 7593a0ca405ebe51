"""Readable option types in every --help: words instead of Python annotations.

Typer prints each option's annotation as its type (``<bool>`` beside every on/off flag,
``<list[str]>``, a dotted class path cut to the column's width). ``readable_types`` sets each
option's metavar (an argument's shown type) once, when the command tree is built: flags show no
type, and the rest a word.
"""

from __future__ import annotations

import typer
from typer.core import TyperArgument, TyperOption

LABELS = {"int": "INTEGER", "int range": "INTEGER", "float": "NUMBER", "float range": "NUMBER",
          "str": "TEXT", "path": "PATH", "file": "FILE", "directory": "FOLDER", "bool": "BOOLEAN"}
"""Typer's type label -> the word shown."""


def _label(option: TyperOption | TyperArgument, ctx: typer.Context) -> str | None:
    if getattr(option, "is_flag", False):
        return ""  # --x/--no-x says it all
    if option.type_descriptor.is_choice:
        return None  # typer lists the choices themselves
    raw = option.display_type(ctx).strip("<>")
    repeated = raw.startswith("list[")
    inner = raw.removeprefix("list[").removesuffix("]") if repeated else raw
    word = LABELS.get(inner, inner.rsplit(".", 1)[-1].upper())
    return f"{word} ..." if repeated else word


def readable_types(command: typer.core.TyperCommand | typer.core.TyperGroup) -> None:
    """Set a readable metavar on every option of ``command`` and its subcommands."""
    ctx = typer.Context(command)
    for param in command.params:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = _label(param, ctx)
        elif isinstance(param, TyperArgument) and param.metavar is None:
            # an argument's metavar would also rename it in the usage line: only its help
            # record's type changes
            label = _label(param, ctx)
            param.display_type_rich = lambda ctx=None, label=label: label
    help_option = command.get_help_option(ctx)  # click caches this object
    if help_option is not None:
        help_option.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        readable_types(sub)

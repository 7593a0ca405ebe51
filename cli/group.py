"""The `archscale` command groups: failures as one line, --help that cuts nothing, first
steps first.

Every command runs inside the top group's ``invoke``, the one place below Typer's own handling
where a KeyboardInterrupt can still be caught (cli/failures.py says what is printed). Help is
click's plain text (the app sets no rich markup): rich's tables cut long option names and words
to ``--drop-highest-lo…`` at 80 columns, click wraps them; and the command list shows each
command's first sentence whole, wrapped, where click would cut it to the line with "...".
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from archscale.arch.errors import ArchscaleError
from archscale.cli.failures import EXIT_INTERRUPTED, interrupted_line, os_error_text
from archscale.cli.help import readable_types

FIRST_STEPS = ("demo", "study", "recommend")
"""Listed first in --help: what a first-time user runs, in order."""


def _command_words(ctx: typer.Context, argv: list[str]) -> str:
    """The command names at the start of ``argv`` ("study run"), walked from the root group."""
    command, words = ctx.find_root().command, []
    for arg in argv:
        if not isinstance(command, TyperGroup) or arg not in command.commands:
            break
        words.append(arg)
        command = command.commands[arg]
    return " ".join(words)


class ArchscaleGroup(TyperGroup):
    """The top command group (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        readable_types(self)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in FIRST_STEPS if n in names] + [n for n in names if n not in FIRST_STEPS]

    def format_commands(self, ctx: typer.Context, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                text = " ".join((command.short_help or command.help or "").split())
                rows.append((name, text.split(". ")[0].rstrip(".") + "."))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> typer.Context:
        ctx = super().make_context(info_name, list(args), parent, **extra)
        # as typed, at the top group: the command line an interrupt repeats
        ctx.meta.setdefault("argv", list(args))
        return ctx

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            argv = ctx.meta.get("argv", [])
            typer.secho(interrupted_line(_command_words(ctx, argv), argv, err), err=True,
                        fg=typer.colors.YELLOW)
            raise typer.Exit(EXIT_INTERRUPTED) from err
        except BrokenPipeError:
            raise  # `archscale ... | head`: Typer exits quietly
        except OSError as err:
            raise ArchscaleError(os_error_text(err)) from None

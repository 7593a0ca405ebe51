"""The `archscale` command. Thin: parses arguments, calls the packages, prints."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.cli import (
    arch_cmd,
    bench_cmd,
    demo_cmd,
    laws_cmd,
    recommend_cmd,
    study_cmd,
    substitute_cmd,
    train_cmd,
)

FLAGS = {"gqa_group": "--gqa", "n_layers": "--layers", "fmt": "--format", "out_dir": "--out"}
"""Settings whose flag is not ``--`` + the name with dashes (``flag``)."""


def flag(name: str) -> str:
    """The command line's flag of the library setting ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def with_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with a SettingError's settings shown as this command line's flags."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SettingError as err:
            raise ArchscaleError(err.shown_as({n: flag(n) for n in err.names})) from None

    return run


app = typer.Typer(
    name="archscale",
    help="Architecture search and scaling-law fitting for inference-efficient language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for name, group in (("arch", arch_cmd.app), ("bench", bench_cmd.app), ("study", study_cmd.app)):
    for info in group.registered_commands:
        info.callback = with_flags(info.callback)
    app.add_typer(group, name=name)
for name, command in (("train", train_cmd.train), ("fit", laws_cmd.fit),
                      ("predict", laws_cmd.predict), ("demo", demo_cmd.demo),
                      ("recommend", recommend_cmd.recommend), ("export", recommend_cmd.export),
                      ("substitute", substitute_cmd.substitute)):
    app.command(name)(with_flags(command))


def main() -> None:
    """Entry point: user errors become one message on stderr and exit status 2, no traceback.

    Typer's standalone mode already reports usage errors cleanly and exits; what reaches here is
    an ArchscaleError raised by a package, or an interrupt.
    """
    try:
        app()
    except ArchscaleError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: finished results are kept; rerun the command to continue", err=True)
        sys.exit(130)

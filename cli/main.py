"""The `archscale` command. Thin: parses arguments, calls the packages, prints."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

import typer

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.cli import (
    arch_cmd,
    bench_cmd,
    demo_cmd,
    group,
    laws_cmd,
    recommend_cmd,
    study_cmd,
    substitute_cmd,
    train_cmd,
)

FLAGS = {"gqa_group": "--gqa", "n_layers": "--layers", "fmt": "--format", "out_dir": "--out",
         "url": "--storage", "chinchilla": "--lopt-law"}
"""Settings whose flag is not ``--`` + the name with dashes (``flag``)."""

RENAMES = {"substitute": {"law": "--loss-law"}}
"""Per command ("study run" for a subcommand), settings whose flag there differs from
``flag``'s: substitute's loss law, recommend's ``law``, is its --loss-law (beside --passk-law)."""


def flag(name: str) -> str:
    """The command line's flag of the library setting ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def command_flags(command: Callable[..., Any]) -> set[str]:
    """The long flags Typer makes of ``command``'s parameters."""
    alone = typer.Typer(add_completion=False)
    alone.command()(command)
    params = typer.main.get_command(alone).params
    return {name for param in params for name in param.opts if name.startswith("--")}


def with_flags(command: Callable[..., Any], renames: Mapping[str, str] | None = None
               ) -> Callable[..., Any]:
    """``command`` with a SettingError's settings shown as this command's flags: ``renames``
    (setting -> flag, where this command's flag differs from ``flag``'s), else ``flag``. A
    setting the command has no flag for (one read from a sweep file, say) keeps its name."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SettingError as err:
            own = command_flags(command)
            shown = {n: (renames or {}).get(n, flag(n)) for n in err.names}
            raise ArchscaleError(err.shown_as({n: f for n, f in shown.items() if f in own})
                                 ) from None

    return run


app = typer.Typer(
    name="archscale",
    help="Architecture search and scaling-law fitting for inference-efficient language models.\n\n"
         "Start here:\n\n"
         "1. archscale demo: the whole loop on the embedded corpus, minutes on a laptop.\n\n"
         "2. archscale study create SWEEP.yaml, then archscale study run NAME: your own study "
         "(search/examples/ has sweep files).\n\n"
         "3. archscale recommend --law LAW.json --params N --tokens D --out DIR: shapes at your "
         "target size, from a law `archscale fit` saved.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=group.ArchscaleGroup,
    # click's plain help wraps long option names and words; rich's tables cut them at 80 columns
    rich_markup_mode=None,
)
for name, commands in (("arch", arch_cmd.app), ("bench", bench_cmd.app), ("study", study_cmd.app)):
    for info in commands.registered_commands:
        words = f"{name} {info.name or typer.main.get_command_name(info.callback.__name__)}"
        info.callback = with_flags(info.callback, RENAMES.get(words))
    app.add_typer(commands, name=name, cls=group.ArchscaleGroup)
for name, command in (("train", train_cmd.train), ("fit", laws_cmd.fit),
                      ("predict", laws_cmd.predict), ("demo", demo_cmd.demo),
                      ("recommend", recommend_cmd.recommend), ("export", recommend_cmd.export),
                      ("substitute", substitute_cmd.substitute)):
    app.command(name)(with_flags(command, RENAMES.get(name)))


def main() -> None:
    """Entry point: user errors become one message on stderr and exit status 2, no traceback.

    Typer's standalone mode already reports usage errors cleanly and exits; Ctrl-C and OSErrors
    are handled inside the command group (cli/group.py); what reaches here is an
    ArchscaleError raised by a package or made from an OSError.
    """
    try:
        app()
    except ArchscaleError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)

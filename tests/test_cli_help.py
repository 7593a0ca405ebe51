"""--help reads well: it opens with what to run first, option types are words (no stray <bool>
beside on/off flags, no Python annotations), and nothing is cut in 80 columns."""

import re

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from archscale.cli.main import app


def _commands(group: TyperGroup, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, TyperGroup):
            yield from _commands(command, (*prefix, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_top_level_help_opens_with_the_first_three_commands():
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"}).output
    start = shown.index("Start here")
    steps = [shown.index(text, start) for text in ("archscale demo", "archscale study create",
                                                    "archscale study run", "archscale recommend")]
    assert steps == sorted(steps) and steps[-1] < shown.index("Commands")
    listed = re.findall(r"^  (\w[\w-]*) ", shown[shown.index("Commands"):], re.M)
    assert listed[:3] == ["demo", "study", "recommend"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_option_types_are_words_and_nothing_is_cut(command):
    shown = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"}).output
    assert "<bool>" not in shown
    assert not re.search(r"<(int|float|str|path|list\[str\])>", shown), shown
    assert "…" not in shown and not re.search(r"\w\.\.\.$", shown, re.M), shown

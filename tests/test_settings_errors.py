"""A bad setting is named as its caller wrote it: by its library name for Python callers and
sweep files, by its flag on the command line (exit status 2, one line, no traceback).

The library names come from the functions' own keywords and config fields; the flags from the
commands' own Typer parameters (click's ``opts``), so neither side is copied from the mapping
under test.
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import REPO_ROOT, VALIDATION_DIR

from archscale.arch.errors import SettingError
from archscale.arch.frameworks import get_format, write_config
from archscale.arch.spec import get_preset
from archscale.cli import main as cli
from archscale.decide.replay import split_target
from archscale.decide.space import SearchSpace
from archscale.laws.table import load_table
from archscale.search.devices import LocalDevices, assign_devices
from archscale.search.storage import open_storage
from archscale.sweeps.data import load_data

PACKAGES = ("arch", "sweeps", "search", "laws", "decide")
SETTING = re.compile(r"\{([A-Za-z_]\w*)\}")
EPOCH = VALIDATION_DIR / "chinchilla_epoch.csv"


def _records_without_text(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"body": f"line {i}", "id": i}) + "\n" for i in range(40)))
    return path


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("")
    return path


def _sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "study.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(100))
    return path


def _cli_error(monkeypatch, capsys, *argv: str) -> str:
    """The one line `archscale ARGV` prints, after checking it exits with status 2."""
    monkeypatch.setattr(sys, "argv", ["archscale", *argv])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


COLUMNS = "N=Model Size,flops=Training FLOP,loss=loss"

# (what the library is asked, the settings it must name, the same request on the command line,
#  the flags it must show there): one case per package or more
CASES = {
    "arch": (lambda tmp: get_format("bogus"), ["fmt"],
             lambda tmp: ["arch", "export", "tiny", "--format", "bogus", "--out", str(tmp / "o")],
             ["--format"]),
    "arch-folder": (lambda tmp: write_config(get_preset("tiny"), "hf", _a_file(tmp)), ["out_dir"],
                    None, None),
    "sweeps": (lambda tmp: load_data(str(_records_without_text(tmp)), text_field="text"),
               ["text_field"],
               lambda tmp: ["train", "tiny", "--tokens", "1024", "--no-throughput",
                            "--corpus", str(_records_without_text(tmp))],
               ["--text-field"]),
    "search": (lambda tmp: open_storage(str(_sqlite_file(tmp))), ["url"],
               lambda tmp: ["study", "status", "x", "--storage", str(_sqlite_file(tmp))],
               ["--storage"]),
    "search-workers": (lambda tmp: assign_devices(LocalDevices("cpu", ("0", "1")), 0), ["workers"],
                       None, None),
    "laws": (lambda tmp: load_table(EPOCH, "N=Model Size,D"), ["columns"],
             lambda tmp: ["fit", "--law", "chinchilla", "--csv", str(EPOCH), "--columns",
                          "N=Model Size,D", "--out", str(tmp / "law.json")],
             ["--columns"]),
    "decide": (lambda tmp: split_target(load_table(EPOCH, COLUMNS), "experts > 1", None),
               ["target"],
               lambda tmp: ["bench", "design", "--csv", str(EPOCH), "--law", "chinchilla",
                            "--columns", COLUMNS, "--target", "experts > 1",
                            "--json", str(tmp / "replay.json")],
               ["--target"]),
    "decide-space": (lambda tmp: SearchSpace(1e9, 1e11, gqa_group=0), ["gqa_group"], None, None),
}


@pytest.mark.parametrize("case", CASES)
def test_the_library_names_the_setting_and_the_command_line_its_flag(
        case, tmp_path, monkeypatch, capsys):
    ask, names, argv, flags = CASES[case]
    with pytest.raises(SettingError) as caught:
        ask(tmp_path)
    message = str(caught.value)
    for name in names:
        assert re.search(rf"(?<![\w-]){name}(?!\w)", message), message
    assert "--" not in message, message
    if argv is None:
        return
    shown = _cli_error(monkeypatch, capsys, *argv(tmp_path))
    # the same message, each setting shown as the command's own flag
    labels = dict(zip(names, flags, strict=True))
    assert shown == "error: " + caught.value.shown_as(labels)
    assert all(flag in shown for flag in flags), shown


def test_the_installed_command_prints_the_flag_on_one_line(tmp_path):
    script = Path(sys.executable).with_name("archscale")
    done = subprocess.run([str(script), "study", "status", "x", "--storage",
                           str(_sqlite_file(tmp_path))], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "give --storage as sqlite:///" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_setting_the_command_has_no_flag_for_keeps_its_name(tmp_path, monkeypatch, capsys):
    """A sweep file's corpus: {text_field: ...} reaches `study create`, which has no
    --text-field: the message names the sweep file's key, not another command's flag."""
    sweep = (REPO_ROOT / "tests" / "data" / "small_study.yaml").read_text()
    records = _records_without_text(tmp_path)
    path = tmp_path / "sweep.yaml"
    path.write_text(sweep.replace("corpus: null", f"corpus: {records}"))
    shown = _cli_error(monkeypatch, capsys, "study", "create", str(path),
                       "--storage", str(tmp_path / "s.journal"))
    assert "name the field with text_field (in a sweep file: corpus: {path: ..." in shown


def test_braces_that_are_not_a_setting_stay_text():
    err = SettingError("{workers} 3 on {'gpu': 2} devices; corpus: {path: ..., text_field: x}")
    assert err.names == ["workers"]
    assert err.shown_as({"workers": "--workers"}) == (
        "--workers 3 on {'gpu': 2} devices; corpus: {path: ..., text_field: x}")


def _demo_command(law: Path | None = None, loss_law: Path | None = None,
                  out: Path = typer.Option(...)) -> None:
    """A stand-in command: a library SettingError naming three settings."""
    raise SettingError("{law}, {out_dir} and {tokens} are bad")


def test_with_flags_shows_own_flags_renames_and_keeps_other_names():
    shown = cli.with_flags(_demo_command)
    with pytest.raises(Exception) as caught:
        shown(law=None, loss_law=None, out=Path("x"))
    assert str(caught.value) == "--law, --out and tokens are bad"
    renamed = cli.with_flags(_demo_command, {"law": "--loss-law"})
    with pytest.raises(Exception) as caught:
        renamed(law=None, loss_law=None, out=Path("x"))
    assert str(caught.value) == "--loss-law, --out and tokens are bad"
    assert not isinstance(caught.value, SettingError)


def _setting_error_classes(trees: list[ast.Module]) -> set[str]:
    """SettingError and the classes that derive from it, by name (to a fixed point)."""
    family, grew = {"SettingError"}, True
    while grew:
        grew = False
        for tree in trees:
            for node in ast.walk(tree):
                if (isinstance(node, ast.ClassDef) and node.name not in family
                        and any(isinstance(b, ast.Name) and b.id in family for b in node.bases)):
                    family.add(node.name)
                    grew = True
    return family


def template_settings() -> dict[str, list[str]]:
    """Every ``{name}`` of a SettingError template in the packages -> where it is written.

    A template is the literal text of an f-string (an f-string writes ``{name}`` as text only
    by escaping it, ``{{name}}``: no other f-string in the packages does) or a plain string
    given to a SettingError class (directly or in a concatenation)."""
    files = [p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))]
    trees = [ast.parse(p.read_text()) for p in files]
    family = _setting_error_classes(trees)
    found: dict[str, list[str]] = {}
    for path, tree in zip(files, trees, strict=True):
        texts = []
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                texts += [(v.value, v) for v in node.values if isinstance(v, ast.Constant)]
            elif isinstance(node, ast.Call) and node.args and getattr(
                    node.func, "id", getattr(node.func, "attr", None)) in family:
                texts += [(c.value, c) for c in ast.walk(node.args[0])
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        for text, where in texts:
            for name in SETTING.findall(text):
                place = f"{path.relative_to(REPO_ROOT)}:{where.lineno}"
                found.setdefault(name, []).append(place)
    return found


def _command_flags() -> dict[str, set[str]]:
    """Every command of `archscale` ("study run") -> its long flags."""
    out: dict[str, set[str]] = {}

    def walk(command, words):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])
        if not hasattr(command, "commands"):
            out[" ".join(words)] = {o for p in command.params for o in p.opts
                                    if o.startswith("--")}

    walk(typer.main.get_command(cli.app), [])
    return out


def test_every_setting_an_error_names_is_a_flag_of_some_command():
    settings = template_settings()
    # the collector sees the templates of every package (a broken one would find none)
    assert {"out_dir", "text_field", "url", "columns", "d_over_sqrt_n", "max_retries",
            "chinchilla", "lopt"} <= set(settings)
    commands = _command_flags()
    every_flag = set().union(*commands.values())
    renamed = {name for renames in cli.RENAMES.values() for name in renames}
    missing = {name: places for name, places in settings.items()
               if cli.flag(name) not in every_flag and name not in renamed}
    assert not missing, f"settings with no flag on any command (add them to FLAGS): {missing}"
    for command, renames in cli.RENAMES.items():
        assert set(renames.values()) <= commands[command], (command, renames)

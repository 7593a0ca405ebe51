"""Sweep files through `archscale study create`: ranges as [low, high] or {low:, high:} (with
log), refusals that say the accepted spellings, and a key given twice named by its line."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.search.study import open_study

SEARCH_EXAMPLE = Path(__file__).resolve().parents[1] / "search" / "examples" / "tiny_search.yaml"


def _create(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    storage = str(tmp_path / "s.journal")
    return CliRunner().invoke(app, ["study", "create", str(path), "--storage", storage]), storage


def _with(replacements):
    text = SEARCH_EXAMPLE.read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("width, r", [
    ("[0.2, 0.45]", "[1.0, 4.0]"),
    ("{low: 0.2, high: 0.45}", "{low: 1.0, high: 4.0, log: true}"),
    ("[0.2, 0.45, log]", "{low: 1.0, high: 4.0}"),
])
def test_both_range_spellings_make_the_same_search(tmp_path, width, r):
    result, storage = _create(tmp_path, _with({
        "d_over_sqrt_n: [0.2, 0.45]": f"d_over_sqrt_n: {width}",
        "r: {low: 1.0, high: 4.0, log: true}": f"r: {r}"}))
    assert result.exit_code == 0, result.output
    search = open_study("tiny-search", storage).sweep.search
    assert (search.d_over_sqrt_n.low, search.d_over_sqrt_n.high) == (0.2, 0.45)
    assert (search.r.low, search.r.high) == (1.0, 4.0)
    assert search.d_over_sqrt_n.log == ("log" in width)
    assert search.r.log == ("log: true" in r)


@pytest.mark.parametrize("r, expected", [
    ("[1.0]", "search.r: got [1.0]: write a range as [low, high] or {low: L, high: H}"),
    ("4.0", "search.r: got 4.0: write a range as [low, high] or {low: L, high: H}"),
    ("[4.0, 1.0]", "search.r: low=4.0 must be below high=1.0"),
])
def test_a_bad_range_says_the_accepted_spellings(tmp_path, r, expected):
    result, _ = _create(tmp_path, _with({"r: {low: 1.0, high: 4.0, log: true}": f"r: {r}"}))
    assert isinstance(result.exception, ArchscaleError), result.output
    assert expected in str(result.exception)
    assert "Input should be" not in str(result.exception)


def test_a_section_of_the_wrong_type_names_its_keys(tmp_path):
    result, _ = _create(tmp_path, _with({"shape: {head_dim: 8}": "shape: 8"}))
    assert isinstance(result.exception, ArchscaleError), result.output
    assert ("shape: got 8, expected a mapping of keys (d_ff_multiple, d_model_multiple, "
            "head_dim, max_params_error, tie_embeddings)") in str(result.exception)


def test_a_key_given_twice_is_an_error_naming_its_line(tmp_path):
    text = _with({"seq_len: 32\n": "seq_len: 32\nrecipe: {lr: 3.0e-3}\n"})
    first = text.splitlines().index("recipe: {lr: 3.0e-3}") + 1
    second = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("recipe:")
                  and i != first)
    result, _ = _create(tmp_path, text)
    assert isinstance(result.exception, ArchscaleError), result.output
    assert str(result.exception) == (f"{tmp_path / 'sweep.yaml'}:{max(first, second)}: key "
                                     f"'recipe' is given twice (first on line "
                                     f"{min(first, second)}): keep one")


def test_a_nested_key_given_twice_is_an_error_too(tmp_path):
    result, _ = _create(tmp_path, _with({"  n_trials: 3\n": "  n_trials: 3\n  n_trials: 5\n"}))
    assert isinstance(result.exception, ArchscaleError), result.output
    assert "key 'n_trials' is given twice" in str(result.exception)

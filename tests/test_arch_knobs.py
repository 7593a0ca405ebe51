"""An architecture knob is declared once: every list of ArchSpec's fields derives from the
dataclass, and a new field reaches each of them (proved on a copy of ArchSpec with one more)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from archscale.arch.frameworks import FIELD_TABLE, FIXED_TABLE, FORMATS
from archscale.arch.spec import SHAPE_COLUMNS, TABLE_COLUMNS, ArchSpec, get_preset
from archscale.search.noise import GROUP_COLUMNS
from archscale.sweeps.results import RUN_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(ArchSpec)]
INTEGER_FIELDS = [f.name for f in dataclasses.fields(ArchSpec) if f.type == "int"]


def test_every_integer_field_is_a_run_table_column_and_a_seed_group_key():
    assert list(SHAPE_COLUMNS) == INTEGER_FIELDS
    assert set(INTEGER_FIELDS) <= set(TABLE_COLUMNS) <= set(RUN_COLUMNS)
    assert set(INTEGER_FIELDS) | {"D"} == set(GROUP_COLUMNS)


def test_every_field_maps_to_every_framework():
    assert list(FIELD_TABLE) == FIELDS
    for name, row in FIELD_TABLE.items():
        assert tuple(row) == FORMATS, name
    assert {fmt for row in FIXED_TABLE.values() for fmt in row} <= set(FORMATS)


def test_derived_quantities_are_properties_matching_the_design_doc():
    """LLaMA-3.2-1B: r = 4.8 and d/sqrt(N) = 0.066 (shared DESIGN.md's check), aspect 2048/16."""
    spec = get_preset("llama-3.2-1b")
    row = spec.table_row()
    assert row["r"] == pytest.approx(4.8) and round(row["d_over_sqrt_n"], 3) == 0.066
    assert spec.aspect == 128.0 and row["N"] == 1_235_814_400 - 128256 * 2048


NEW_FIELD = '''    n_experts: int = field(default=1, metadata={"column": "experts per MLP"})
    """Experts of each MLP (1: dense)."""
'''
ANCHOR = '''    """RMSNorm epsilon."""
'''
PROBE = f'''
import dataclasses, importlib.abc, importlib.machinery, importlib.util, json, pathlib, sys

PATH = {str(ROOT / "arch" / "spec.py")!r}


class Loader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):
        source = pathlib.Path(self.path).read_text()
        assert {ANCHOR!r} in source
        return compile(source.replace({ANCHOR!r}, {ANCHOR!r} + {NEW_FIELD!r}), self.path, "exec")


class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "archscale.arch.spec":
            return importlib.util.spec_from_file_location(name, PATH, loader=Loader(name, PATH))
        return None


sys.meta_path.insert(0, Finder())
import pandas as pd
from archscale.arch import frameworks
from archscale.arch.spec import SHAPE_COLUMNS, ArchSpec, SpecError
from archscale.laws.table import row_specs
from archscale.search.noise import GROUP_COLUMNS
from archscale.sweeps.results import RUN_COLUMNS

spec = ArchSpec(vocab_size=256, seq_len=64, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                head_dim=16, d_ff=128, n_experts=4)
try:
    spec.replace(n_experts=0)
    refused = False
except SpecError:
    refused = True
print(json.dumps({{
    "shape_columns": list(SHAPE_COLUMNS), "run_columns": list(RUN_COLUMNS),
    "group_columns": list(GROUP_COLUMNS), "row": spec.table_row()["n_experts"],
    "rebuilt": row_specs(pd.DataFrame([spec.table_row()]))[0] == spec,
    "validated": refused,
    "unmapped": sorted({{f.name for f in dataclasses.fields(ArchSpec)}} - set(frameworks.FIELD_TABLE)),
}}))
'''


def test_a_new_field_reaches_every_derived_list():
    """ArchSpec's source with one more integer knob, imported in a fresh interpreter: the knob
    is validated, becomes a run-table column, a seed-group key and rebuilds from a table row;
    the framework table, the one place that must list it by hand, is found lacking it."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["shape_columns"] == [*INTEGER_FIELDS, "n_experts"]
    assert "n_experts" in found["run_columns"] and "n_experts" in found["group_columns"]
    assert found["row"] == 4 and found["rebuilt"] and found["validated"]
    assert found["unmapped"] == ["n_experts"]  # test_every_field_maps_to_every_framework's job

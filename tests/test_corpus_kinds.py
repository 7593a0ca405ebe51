"""Any corpus a user has: code and Markdown folders, JSONL and Parquet records, .gz/.zst files,
include/exclude globs, binary files skipped and counted, and the run JSON naming the corpus."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from typer.testing import CliRunner

from archscale.cli.main import app
from archscale.sweeps.data import load_data
from archscale.sweeps.results import RunResult

SHAPE = ["--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
         "--d-ff", "64", "--seq-len", "32", "--batch-size", "8", "--eval-tokens", "256",
         "--no-progress", "--no-throughput"]
LINES = [f"record number {i:03d} says hello\n" for i in range(60)]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path / "cache"))


def _records(lines, field="text"):
    return "".join(json.dumps({field: line.rstrip("\n"), "id": i}) + "\n"
                   for i, line in enumerate(lines))


def _mixed_folder(root):
    """A folder of every kind: .py, .md, .jsonl.gz, .parquet, .txt.zst, a PNG, a hidden file."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("def f(x):\n    return x + 1\n" * 40)
    (root / "README.md").write_text("# Title\n\nSome *Markdown* text.\n" * 40)
    (root / "rows.jsonl.gz").write_bytes(gzip.compress(_records(LINES).encode()))
    pq.write_table(pa.table({"text": [line.rstrip("\n") for line in LINES]}), root / "rows.parquet")
    (root / "notes.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"zstd text\n" * 50))
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / ".hidden").write_text("never read\n")
    return root


def test_records_files_read_their_text_field(tmp_path):
    """A .jsonl and a .parquet file give the same text: their records' text field, one line each
    (the split holds out the tail of the document at a line start)."""
    (tmp_path / "a.jsonl").write_text(_records(LINES, field="body"))
    pq.write_table(pa.table({"body": [line.rstrip("\n") for line in LINES]}),
                   tmp_path / "b.parquet")
    jsonl = load_data(str(tmp_path / "a.jsonl"), text_field="body", val_fraction=0.1)
    parquet = load_data(str(tmp_path / "b.parquet"), text_field="body", val_fraction=0.1)
    expected = "".join(LINES)
    cut = expected.index(LINES[54])  # ceil(0.9 * len) falls inside line 53: the next line starts
    assert bytes(jsonl.train).decode() == expected[:cut]
    assert bytes(jsonl.val).decode() == expected[cut:]
    assert jsonl.fingerprint != parquet.fingerprint  # file names are part of the content hash
    assert bytes(parquet.val).decode() == expected[cut:]


def test_compressed_text_equals_the_plain_file(tmp_path):
    text = "".join(LINES).encode()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "c.txt").write_bytes(text)
    (tmp_path / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text))
    plain = load_data(str(tmp_path / "plain" / "c.txt"), val_fraction=0.1)
    for name in ("c.txt.zst", "c.txt.gz"):
        packed = load_data(str(tmp_path / name), val_fraction=0.1)
        assert bytes(packed.train) == bytes(plain.train) and bytes(packed.val) == bytes(plain.val)


@pytest.mark.slow
def test_train_on_a_mixed_folder_records_the_corpus(tmp_path):
    root = _mixed_folder(tmp_path / "corpus")
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["train", *SHAPE, "--tokens", "2048", "--corpus", str(root),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "(5 files, 1 binary files skipped)" in result.output
    run = RunResult.load(out)
    read = ["pkg/mod.py", "README.md", "rows.jsonl.gz", "rows.parquet", "notes.txt.zst"]
    assert run.corpus["path"] == str(root)
    assert run.corpus["size_bytes"] == sum((root / name).stat().st_size for name in read)
    assert len(run.corpus["content_hash"]) == 64
    # include/exclude globs pick files; the hash follows the content read
    only_code = load_data(str(root), include=("*.py",))
    assert "(1 files)" in only_code.source
    assert only_code.corpus["content_hash"] != run.corpus["content_hash"]
    no_code = load_data(str(root), exclude=("pkg/*",))
    assert "(4 files, 1 binary files skipped)" in no_code.source


@pytest.mark.parametrize("make, flags, message", [
    (lambda p: p.write_text(_records(LINES, field="body")), [],
     "has no text field 'text' (fields: ['body', 'id']): name the field with --text-field"),
    (lambda p: p.write_text("{not json\n"), [], ":1 is not a JSON record"),
])
def test_records_errors_are_one_line(tmp_path, make, flags, message):
    path = tmp_path / "rows.jsonl"
    make(path)
    result = CliRunner().invoke(app, ["train", *SHAPE, "--tokens", "1024", "--corpus", str(path),
                                      *flags])
    assert result.exit_code != 0 and message in str(result.exception)

"""Text documents from files: plain UTF-8 text of any kind, JSONL and Parquet records, each
optionally compressed (.gz, .zst), one file or a folder filtered by globs.

What a file is follows from its name, after a compression suffix is taken off:

* ``.jsonl`` / ``.parquet``: records; each record's ``text_field`` (a string) is one line of
  text, and a file's records joined by newlines are one document;
* anything else: UTF-8 text, one document (source code, Markdown, logs, ...).

In a folder (walked recursively, sorted by relative path), hidden files and folders (a name
starting with ".") are left out, ``include`` / ``exclude`` globs (fnmatch, against the relative
path or the file name) pick files, and files that are not UTF-8 text (a NUL byte, or bytes that
do not decode) are skipped and counted. A single file that is not UTF-8 text is an error.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from archscale.arch.errors import ArchscaleError, SettingError

COMPRESSED = (".gz", ".zst")
RECORD_SUFFIXES = (".jsonl", ".parquet")
DEFAULT_TEXT_FIELD = "text"


@dataclass(frozen=True)
class Documents:
    """The documents of a file or folder, with what was left out."""

    named: tuple[tuple[str, str], ...]
    """(relative path, text) of every document, sorted by path."""
    size_bytes: int
    """Bytes on disk of the files read (compressed size where compressed)."""
    skipped_binary: int
    """Files of a folder skipped as not UTF-8 text."""


class _NotText(Exception):
    """A file's bytes are not UTF-8 text."""


def _inner_suffix(path: Path) -> str:
    """The suffix that says what a file holds: 'a.jsonl.gz' -> '.jsonl'."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1].lower() if suffixes else ""


_SNIFF = 8192
"""Leading bytes checked for a NUL, which no UTF-8 text holds: a binary file is skipped unread."""


def _raw_bytes(path: Path, sniff: bool) -> bytes:
    """The file's bytes, decompressed; with ``sniff``, _NotText as soon as the first bytes of an
    uncompressed file hold a NUL (a large binary file is not read whole)."""
    if path.suffix == ".gz":
        try:
            return gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as err:
            raise ArchscaleError(f"{path} is not a readable gzip file ({err})") from None
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise ArchscaleError(f"{path} is zstd-compressed, which needs the 'zstandard' "
                                 "package: pip install zstandard") from None
        try:
            with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as reader:
                return reader.read()
        except zstandard.ZstdError as err:
            raise ArchscaleError(f"{path} is not a readable zstd file ({err})") from None
    with path.open("rb") as fh:
        head = fh.read(_SNIFF)
        if sniff and b"\x00" in head:
            raise _NotText
        return head + fh.read()


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:_SNIFF]:
        raise _NotText
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _NotText from None


def _jsonl_texts(path: Path, text: str, field: str) -> list[str]:
    texts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ArchscaleError(f"{path}:{number} is not a JSON record ({err.msg}): a .jsonl "
                                 "corpus holds one JSON object per line") from None
        texts.append(_field(record, field, f"{path}:{number}"))
    return texts


def _field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise SettingError(f"{where} has no text field {field!r} (fields: {keys}): name the "
                           "field with {text_field} (in a sweep file: corpus: {path: ..., "
                           "text_field: ...})")
    value = record[field]
    if not isinstance(value, str):
        raise SettingError(f"{where}: field {field!r} holds a {type(value).__name__}, not text: "
                           "name a text field with {text_field}")
    return value


def _parquet_texts(path: Path, raw: bytes, field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ArchscaleError(f"{path} is Parquet, which needs the 'pyarrow' package: "
                             "pip install pyarrow") from None
    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as err:  # pyarrow raises its own error types for a damaged file
        raise ArchscaleError(f"{path} is not a readable Parquet file ({err})") from None
    if field not in table.column_names:
        raise SettingError(f"{path} has no text column {field!r} (columns: "
                           f"{table.column_names}): name it with {{text_field}}")
    values = table.column(field).to_pylist()
    return [_field({field: v}, field, f"{path} row {i}") for i, v in enumerate(values)
            if v is not None]


def read_document(path: Path, text_field: str = DEFAULT_TEXT_FIELD) -> str:
    """One file's text (see the module docstring); raises _NotText for binary content."""
    kind = _inner_suffix(path)
    raw = _raw_bytes(path, sniff=kind != ".parquet")
    if kind == ".parquet":
        texts = _parquet_texts(path, raw, text_field)
    elif kind == ".jsonl":
        texts = _jsonl_texts(path, _decode(raw), text_field)
    else:
        return _decode(raw)
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts)


def _selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    def matches(patterns: Sequence[str]) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)

    if any(part.startswith(".") for part in rel.split("/")):
        return False
    return (not include or matches(include)) and not matches(exclude)


def read_documents(path: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
                   text_field: str = DEFAULT_TEXT_FIELD) -> Documents:
    """The documents of a file, or of every selected file under a folder."""
    if path.is_file():
        if include or exclude:
            raise ArchscaleError(f"include/exclude globs select files in a folder; {path} is "
                                 "one file: drop them or point the corpus at its folder")
        try:
            text = read_document(path, text_field)
        except _NotText:
            raise ArchscaleError(f"{path} is not UTF-8 text: re-encode it as UTF-8, or give "
                                 "token shards (.bin/.npy) or a HF dataset folder") from None
        return Documents(((path.name, text),), path.stat().st_size, 0)
    files = sorted((p for p in path.rglob("*") if p.is_file()),
                   key=lambda p: p.relative_to(path).as_posix())
    named, size, skipped = [], 0, 0
    for file in files:
        rel = file.relative_to(path).as_posix()
        if not _selected(rel, include, exclude):
            continue
        try:
            named.append((rel, read_document(file, text_field)))
        except _NotText:
            skipped += 1
            continue
        size += file.stat().st_size
    if not named:
        globs = f" matching include {list(include)} / exclude {list(exclude)}" if (
            include or exclude) else ""
        binary = f" ({skipped} binary files skipped)" if skipped else ""
        raise ArchscaleError(f"no text files under {path}{globs}{binary}: point the corpus at a "
                             "folder of UTF-8 text, .jsonl or .parquet files, or change the globs")
    return Documents(tuple(named), size, skipped)

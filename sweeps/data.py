"""Token data for training and validation: load a corpus, tokenize it once, sample windows.

``load_data`` reads a source (see ``archscale.sweeps.corpus`` for the sources and the documented
train/validation split), tokenizes it and caches the ids on disk (``$ARCHSCALE_CACHE/data``,
default ``~/.cache/archscale/data``) keyed by the fingerprint, so a second load is a memmap.

Every run of a study must see the same validation tokens and a reproducible training stream:

* ``validation_windows`` is a pure function of (data, seq_len, n_tokens): windows spread evenly
  over the held-out stream, never overlapping;
* ``train_batch`` is a pure function of (data, seed, step): a resumed run needs only the step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archscale import environment
from archscale.arch.errors import ArchscaleError
from archscale.sweeps.corpus import (
    SPLIT_RULE,
    CorpusSource,
    TextCorpus,
    TokenCorpus,
    read_source,
)
from archscale.sweeps.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    bpe_cache_path,
    get_tokenizer,
    parse_tokenizer,
)

VAL_FRACTION = 0.05
"""Default share of each document held out for validation."""
PRETOKENIZED = "pretokenized"


@dataclass(frozen=True)
class TokenData:
    """A tokenized corpus split into training and held-out id streams."""

    train: np.ndarray
    """1-D training token ids (a read-only memmap when loaded from cache), integer dtype."""
    val: np.ndarray
    """1-D held-out token ids, disjoint from training by the split rule."""
    vocab_size: int
    """Every id is below this; the model's embedding rows."""
    tokenizer: str
    """"byte", "bpe:N", or "pretokenized"."""
    source: str
    """Human description of where the text came from."""
    fingerprint: str
    """sha256 over source content + tokenizer + split rule; runs are comparable iff it matches."""
    tokenizer_file: str | None = None
    """The trained BPE's JSON for "bpe:N" (None otherwise), so tasks can tokenize text alike."""
    corpus: dict[str, Any] | None = None
    """What was read: {path, size_bytes, content_hash} (path and size None for the embedded
    plays); a run JSON records it (RunResult.corpus)."""


def _fingerprint(**parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _ids_dtype(vocab_size: int) -> np.dtype:
    return np.min_scalar_type(vocab_size - 1)


def _tokenize(tok: Tokenizer, texts: tuple[str, ...], dtype: np.dtype) -> np.ndarray:
    # Documents are joined by a newline when they do not end with one.
    texts = [t if t.endswith("\n") else t + "\n" for t in texts]
    encoded = tok.encode_batch(texts) if isinstance(tok, BPETokenizer) else [tok.encode(t) for t in texts]
    return np.concatenate(encoded).astype(dtype) if encoded else np.zeros(0, dtype)


def _cached_ids(fingerprint: str, build) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) from the cache folder of a fingerprint, building and saving them if absent."""
    folder = environment.cache_root() / "data" / fingerprint[:32]
    if not (folder / "val.npy").exists():
        train, val = build()
        # Save into a private folder, then rename: concurrent workers never read half a file.
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process got there first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return np.load(folder / "train.npy", mmap_mode="r"), np.load(folder / "val.npy", mmap_mode="r")


def _from_tokens(corpus: TokenCorpus, tokenizer: str, val_fraction: float) -> TokenData:
    if tokenizer not in ("byte", PRETOKENIZED):
        raise ArchscaleError(f"{corpus.description} are already tokenized: drop tokenizer={tokenizer!r}")
    fingerprint = _fingerprint(content=corpus.content_hash, tokenizer=PRETOKENIZED,
                               vocab_size=corpus.vocab_size, split=SPLIT_RULE, val_fraction=val_fraction)
    return TokenData(corpus.train, corpus.val, corpus.vocab_size, PRETOKENIZED, corpus.description,
                     fingerprint)


def _from_text(corpus: TextCorpus, tokenizer: str, val_fraction: float) -> TokenData:
    kind, vocab_size = parse_tokenizer(tokenizer)
    # The training texts are fixed by (content, split rule, fraction): hashing those is enough.
    train_hash = _fingerprint(content=corpus.content_hash, split=SPLIT_RULE, val_fraction=val_fraction)
    needs_training = kind == "bpe" and not bpe_cache_path(train_hash, vocab_size).exists()
    tok = get_tokenizer(tokenizer, corpus.split()[0] if needs_training else (), corpus_hash=train_hash)
    fingerprint = _fingerprint(content=corpus.content_hash, tokenizer=tok.identity,
                               vocab_size=tok.vocab_size, split=SPLIT_RULE, val_fraction=val_fraction)

    def build() -> tuple[np.ndarray, np.ndarray]:
        dtype = _ids_dtype(tok.vocab_size)
        train_texts, val_texts = corpus.split()
        return _tokenize(tok, train_texts, dtype), _tokenize(tok, val_texts, dtype)

    train, val = _cached_ids(fingerprint, build)
    path = str(tok.path) if isinstance(tok, BPETokenizer) else None
    return TokenData(train, val, tok.vocab_size, tok.name, corpus.description, fingerprint, path)


def _corpus_record(corpus: TextCorpus | TokenCorpus) -> dict[str, Any]:
    return {"path": corpus.path, "size_bytes": corpus.size_bytes,
            "content_hash": corpus.content_hash}


def load_data(source: str | CorpusSource | None = None, tokenizer: str = "byte", *,
              val_fraction: float = VAL_FRACTION, **source_options) -> TokenData:
    """Load, split and tokenize a corpus (cached on disk by fingerprint).

    source: None or "shakespeare" (embedded plays), or a path (or a ``CorpusSource``): a text,
    .jsonl or .parquet file or folder, .bin/.npy token shards or a folder of them, or a HF
    save_to_disk folder. tokenizer: "byte" or "bpe:N" (pre-tokenized sources keep their own
    ids). source_options: ``dtype`` and ``vocab_size`` for shards, ``include`` / ``exclude``
    for text folders, ``text_field`` for records and HF datasets (None values are ignored).
    """
    corpus = read_source(source, val_fraction, **source_options)
    data = (_from_tokens(corpus, tokenizer, val_fraction) if isinstance(corpus, TokenCorpus)
            else _from_text(corpus, tokenizer, val_fraction))
    data = dataclasses.replace(data, corpus=_corpus_record(corpus))
    if len(data.train) < 2 or len(data.val) < 2:
        raise ArchscaleError(f"{data.source} gives {len(data.train)} training and {len(data.val)} "
                             "held-out tokens: use a larger corpus or change val_fraction")
    return data


def tokenizer_for(data: TokenData) -> ByteTokenizer | BPETokenizer:
    """The tokenizer that produced the data (to tokenize task text the same way)."""
    if data.tokenizer == PRETOKENIZED:
        raise ArchscaleError("pre-tokenized data has no text tokenizer: text tasks need a text "
                             "corpus (or skip the multiple-choice task)")
    if data.tokenizer == "byte":
        return ByteTokenizer()
    return BPETokenizer(Path(data.tokenizer_file), data.vocab_size)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ArchscaleError(f"{name} must be a positive integer, got {value}")


def validation_windows(data: TokenData, seq_len: int, n_tokens: int) -> np.ndarray:
    """Fixed held-out windows [n, seq_len + 1] (int32) scoring at least n_tokens targets.

    n = ceil(n_tokens / seq_len) windows, their starts spread evenly from the first to the last
    possible position of the held-out stream (so every play contributes), never overlapping.
    Deterministic: the same data, seq_len and n_tokens always give the same array.
    """
    _check_positive(seq_len=seq_len, n_tokens=n_tokens)
    n = math.ceil(n_tokens / seq_len)
    span = len(data.val) - (seq_len + 1)
    if span < 0 or (n - 1) * seq_len > span:
        raise ArchscaleError(
            f"the held-out split has {len(data.val)} tokens; {n} windows of {seq_len + 1} need "
            f"{n * seq_len + 1}: lower the validation tokens or raise val_fraction"
        )
    starts = np.arange(n, dtype=np.int64) * span // max(n - 1, 1)
    return np.asarray(data.val[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)


def train_batch(data: TokenData, *, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
    """Training windows [batch_size, seq_len + 1] (int32): a pure function of (seed, step).

    Window starts are drawn uniformly from the training stream by a numpy Generator seeded with
    (seed, step), so a resumed run reproduces its data from the step number alone.
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if step < 0 or seed < 0:
        raise ArchscaleError(f"step and seed must be non-negative, got step={step}, seed={seed}")
    n_starts = len(data.train) - seq_len
    if n_starts < 1:
        raise ArchscaleError(f"the training split has {len(data.train)} tokens, fewer than one "
                             f"window of {seq_len + 1}: use a larger corpus or a shorter seq_len")
    starts = np.random.default_rng([seed, step]).integers(0, n_starts, size=batch_size)
    return np.asarray(data.train[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)

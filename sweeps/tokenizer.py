"""Tokenizers: byte-level (the default, vocab 256) and a ByteLevel BPE trained locally.

A tokenizer is named by a spec string: ``"byte"`` or ``"bpe:N"`` (N > 256 tokens). A BPE is
trained with HF `tokenizers` on the training split of a corpus and cached on disk, keyed by
(corpus hash, vocab size), under ``$ARCHSCALE_CACHE/tokenizers`` (default
``~/.cache/archscale/tokenizers``), so every run of a study reuses the same merges.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from archscale import environment
from archscale.arch.errors import ArchscaleError

BYTE_VOCAB = 256


class Tokenizer(Protocol):
    """What the data and task code need from a tokenizer."""

    name: str
    """The spec string: "byte" or "bpe:N"."""
    vocab_size: int
    """Rows of the model's embedding table (every id is below it)."""
    identity: str
    """What fixes the mapping text -> ids (hashed into data fingerprints)."""

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


def text_hash(texts: Iterable[str]) -> str:
    """sha256 over documents (each length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255: no training, exact round trip on any text."""

    name = "byte"
    vocab_size = BYTE_VOCAB
    identity = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return np.asarray(ids, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")


class BPETokenizer:
    """A ByteLevel BPE from HF `tokenizers`: exact round trip on UTF-8 text."""

    def __init__(self, json_path: Path, vocab_size: int):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(json_path)
        """The serialized tokenizer (tokenizers' JSON)."""
        self._hf = HFTokenizer.from_file(str(self.path))
        self.vocab_size = vocab_size
        self.name = f"bpe:{vocab_size}"
        self.identity = "bpe:" + hashlib.sha256(self.path.read_bytes()).hexdigest()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode many documents at once (tokenizers parallelizes across them)."""
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)


def parse_tokenizer(name: str) -> tuple[str, int]:
    """Split a spec string into (kind, vocab size): "byte" -> ("byte", 256), "bpe:N" -> ("bpe", N)."""
    text = str(name).strip().lower()
    if text == "byte":
        return "byte", BYTE_VOCAB
    kind, _, size = text.partition(":")
    if kind == "bpe" and size.isdigit() and BYTE_VOCAB < int(size) < 2**31:
        return "bpe", int(size)
    raise ArchscaleError(
        f"unknown tokenizer {name!r}: use 'byte' (256 ids) or 'bpe:N' with N > {BYTE_VOCAB} "
        "(e.g. 'bpe:4096'; the 256 byte symbols come first)"
    )


def bpe_cache_path(corpus_hash: str, vocab_size: int) -> Path:
    """Where the BPE trained on a corpus with this hash and vocab size lives."""
    return environment.cache_root() / "tokenizers" / f"bpe{vocab_size}-{corpus_hash[:24]}.json"


def _train_bpe(texts: Sequence[str], vocab_size: int, path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer, length=len(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: concurrent workers training the same BPE never see half a file.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    hf.save(str(tmp))
    os.replace(tmp, path)


def get_tokenizer(name: str, texts: Sequence[str] = (), *,
                  corpus_hash: str | None = None) -> ByteTokenizer | BPETokenizer:
    """The tokenizer named by a spec string, training (and caching) a BPE when needed.

    texts: the training documents a BPE learns from (ignored for "byte"). corpus_hash: their
    hash when the caller already has it (default: ``text_hash(texts)``); with a hash and a cached
    BPE, texts may be empty.
    """
    kind, vocab_size = parse_tokenizer(name)
    if kind == "byte":
        return ByteTokenizer()
    if corpus_hash is None:
        if not texts:
            raise ArchscaleError(f"tokenizer {name!r} must be trained: pass the training texts")
        corpus_hash = text_hash(texts)
    path = bpe_cache_path(corpus_hash, vocab_size)
    if not path.exists():
        if not texts:
            raise ArchscaleError(
                f"no cached {name!r} for this corpus ({path} is missing): pass the training texts"
            )
        _train_bpe(texts, vocab_size, path)
    return BPETokenizer(path, vocab_size)

"""Byte and BPE tokenizers: exact round trips, the on-disk BPE cache, spec strings."""

import numpy as np
import pytest

from archscale.arch.errors import ArchscaleError
from archscale.sweeps import corpus
from archscale.sweeps.data import VAL_FRACTION, load_data, tokenizer_for
from archscale.sweeps.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    bpe_cache_path,
    get_tokenizer,
    parse_tokenizer,
    text_hash,
)

UNSEEN = "Naïve café — “quoted” 😀 tabs\tand\r\nCRLF, 日本語, and trailing spaces   "


@pytest.fixture(scope="module")
def texts():
    """Three plays' worth of training text (about 400 kB) keeps BPE training to a second."""
    return [text for _, text in corpus.shakespeare_documents()[:3]]


@pytest.fixture(scope="module")
def bpe(cache, texts):
    return get_tokenizer("bpe:512", texts)


def test_byte_round_trip_is_exact():
    tok = ByteTokenizer()
    ids = tok.encode(UNSEEN)
    assert tok.vocab_size == 256 and ids.dtype == np.int32
    assert len(ids) == len(UNSEEN.encode("utf-8")) and ids.max() < 256
    assert tok.decode(ids) == UNSEEN
    assert tok.decode(tok.encode("")) == ""


def test_parse_tokenizer_specs():
    assert parse_tokenizer("byte") == ("byte", 256)
    assert parse_tokenizer("BPE:4096") == ("bpe", 4096)
    for bad in ("bpe:256", "bpe:x", "bpe", "wordpiece:1000"):
        with pytest.raises(ArchscaleError, match=r"'byte'.*'bpe:N'"):
            parse_tokenizer(bad)


def test_bpe_round_trips_and_compresses(bpe, texts):
    assert bpe.name == "bpe:512" and bpe.vocab_size == 512
    sample = texts[0][:20_000]
    ids = bpe.encode(sample)
    assert ids.max() < 512 and bpe.decode(ids) == sample
    assert len(ids) < 0.55 * len(sample.encode())  # merges happened
    assert bpe.decode(bpe.encode(UNSEEN)) == UNSEEN  # bytes never seen in training still round trip


def test_bpe_is_cached_by_corpus_hash_and_vocab(bpe, texts, cache):
    path = bpe_cache_path(text_hash(texts), 512)
    assert path.exists() and path.parent == cache / "tokenizers"
    again = get_tokenizer("bpe:512", corpus_hash=text_hash(texts))  # no texts: from the cache
    assert again.identity == bpe.identity
    assert np.array_equal(again.encode(UNSEEN), bpe.encode(UNSEEN))
    with pytest.raises(ArchscaleError, match="no cached 'bpe:600'"):
        get_tokenizer("bpe:600", corpus_hash=text_hash(texts))


def test_load_data_with_bpe_and_tokenizer_for(cache, tmp_path, texts):
    root = tmp_path / "texts"
    root.mkdir()
    for i, text in enumerate(texts):
        (root / f"{i}.txt").write_text(text, encoding="utf-8")
    data = load_data(str(root), tokenizer="bpe:300")
    assert data.tokenizer == "bpe:300" and data.vocab_size == 300 and data.train.dtype == np.uint16
    tok = tokenizer_for(data)
    assert isinstance(tok, BPETokenizer)
    held_out = "".join(corpus.split_document(text, VAL_FRACTION)[1] for text in texts)
    assert tok.decode(data.val) == held_out
    byte = load_data(str(root))
    assert byte.fingerprint != data.fingerprint
    assert isinstance(tokenizer_for(byte), ByteTokenizer)

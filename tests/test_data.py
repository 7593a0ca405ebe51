"""The embedded corpus, the split, validation windows and reproducible training batches."""

import numpy as np
import pytest

from archscale.arch.errors import ArchscaleError
from archscale.sweeps import corpus
from archscale.sweeps.data import (
    VAL_FRACTION,
    TokenData,
    load_data,
    train_batch,
    validation_windows,
)
from archscale.sweeps.tokenizer import text_hash


@pytest.fixture(scope="module")
def plays():
    return corpus.shakespeare_documents()


@pytest.fixture(scope="module")
def shakespeare(cache):
    return load_data()


def _counting_data(n_train=1000, n_val=500) -> TokenData:
    """Ids equal to their positions, so a window's start is its first id."""
    return TokenData(np.arange(n_train, dtype=np.int32), np.arange(n_val, dtype=np.int32) + n_train,
                     n_train + n_val, "pretokenized", "counting", "f" * 64)


def test_plays_become_plain_text(plays):
    assert len(plays) == 38
    names = [name for name, _ in plays]
    assert "hamlet" in names and names == [n for n, _ in plays]
    hamlet = dict(plays)["hamlet"]
    assert hamlet.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n\n"
                             "[FRANCISCO at his post. Enter to him BERNARDO]\n\nBERNARDO:\nWho's there?\n")
    assert "To be, or not to be: that is the question:\n" in hamlet
    # Markdown marks and escapes are gone; multi-line stage directions are one line.
    text = "".join(t for _, t in plays)
    for mark in ("**", "_", "\\", "#", "  \n"):
        assert mark not in text
    dream = dict(plays)["a-midsummer-night-s-dream"]
    assert ("[Enter, from one side, OBERON, with his train; from the other, TITANIA, with hers]\n"
            in dream)


def test_converter_output_is_pinned(plays):
    # A change here changes the shipped task and the token caches: bump PLAIN_TEXT_VERSION,
    # rebuild the task (build_next_line_task) and update this digest.
    assert text_hash(part for play in plays for part in play)[:16] == "3b2c5b3b89cfddd7"


def test_split_document_cuts_at_a_line_start():
    text = "".join(f"line {i:02d}\n" for i in range(20))
    train, val = corpus.split_document(text, 0.25)
    assert train + val == text
    assert val.startswith("line 15\n") and train.endswith("line 14\n")
    assert corpus.split_document("no newline at all", 0.25) == ("no newline at", " all")


def test_shakespeare_split_is_the_tail_of_every_play(shakespeare, plays):
    assert shakespeare.vocab_size == 256 and shakespeare.tokenizer == "byte"
    assert np.issubdtype(shakespeare.train.dtype, np.integer)
    parts = [corpus.split_document(text, VAL_FRACTION) for _, text in plays]
    train_text, val_text = "".join(p[0] for p in parts), "".join(p[1] for p in parts)
    assert bytes(shakespeare.train).decode() == train_text
    assert bytes(shakespeare.val).decode() == val_text
    assert 0.045 < len(shakespeare.val) / (len(shakespeare.train) + len(shakespeare.val)) < 0.055
    for (_, text), (train, val) in zip(plays, parts, strict=True):
        assert train + val == text and train.endswith("\n") and len(val) > 1000


def test_load_is_cached_and_fingerprinted(shakespeare, cache):
    again = load_data("shakespeare")
    assert again.fingerprint == shakespeare.fingerprint
    assert isinstance(again.train, np.memmap)
    assert np.array_equal(again.val, shakespeare.val)
    assert len(list((cache / "data").iterdir())) == 1
    other = load_data(val_fraction=0.1)
    assert other.fingerprint != shakespeare.fingerprint
    assert len(other.val) > 1.9 * len(shakespeare.val)


def test_train_batch_is_a_pure_function_of_seed_and_step(shakespeare):
    a = train_batch(shakespeare, step=7, batch_size=8, seq_len=64, seed=3)
    assert a.shape == (8, 65) and a.dtype == np.int32
    assert np.array_equal(a, train_batch(shakespeare, step=7, batch_size=8, seq_len=64, seed=3))
    assert not np.array_equal(a, train_batch(shakespeare, step=8, batch_size=8, seq_len=64, seed=3))
    assert not np.array_equal(a, train_batch(shakespeare, step=7, batch_size=8, seq_len=64, seed=4))


def test_train_batch_windows_are_contiguous_and_cover_the_stream():
    data = _counting_data()
    starts = np.concatenate([train_batch(data, step=s, batch_size=16, seq_len=9, seed=0)[:, 0]
                             for s in range(200)])
    batch = train_batch(data, step=0, batch_size=16, seq_len=9, seed=0)
    assert np.array_equal(batch, batch[:, :1] + np.arange(10))
    assert starts.min() == 0 and starts.max() == 1000 - 10  # every window fits in training ids
    assert len(np.unique(starts)) > 900


def test_validation_windows_are_fixed_spread_and_disjoint():
    data = _counting_data()
    windows = validation_windows(data, seq_len=16, n_tokens=100)
    assert windows.shape == (7, 17) and windows.dtype == np.int32
    assert np.array_equal(windows, validation_windows(data, seq_len=16, n_tokens=100))
    assert np.array_equal(windows, windows[:, :1] + np.arange(17))
    starts = windows[:, 0] - 1000
    assert starts[0] == 0 and starts[-1] == 500 - 17
    assert np.all(np.diff(starts) >= 16)  # no target is scored twice
    assert validation_windows(data, seq_len=16, n_tokens=31 * 16).shape == (31, 17)
    with pytest.raises(ArchscaleError, match="held-out split has 500 tokens"):
        validation_windows(data, seq_len=16, n_tokens=32 * 16)


def test_bad_arguments_are_user_errors(shakespeare):
    with pytest.raises(ArchscaleError, match="neither 'shakespeare' nor an existing path"):
        load_data("/no/such/corpus")
    with pytest.raises(ArchscaleError, match="unknown tokenizer"):
        load_data(tokenizer="wordpiece")
    with pytest.raises(ArchscaleError, match="val_fraction"):
        load_data(val_fraction=1.5)
    with pytest.raises(ArchscaleError, match="do not apply"):
        load_data(dtype="uint32")
    with pytest.raises(ArchscaleError, match="non-negative"):
        train_batch(shakespeare, step=-1, batch_size=2, seq_len=8, seed=0)
    with pytest.raises(ArchscaleError, match="fewer than one window"):
        train_batch(_counting_data(n_train=10), step=0, batch_size=2, seq_len=10, seed=0)

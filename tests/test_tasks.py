"""Multiple-choice scoring against models whose answers are known, and the shipped task."""

import itertools
import json
from collections import Counter

import numpy as np
import pytest

from archscale.arch.errors import ArchscaleError
from archscale.sweeps import corpus
from archscale.sweeps.data import VAL_FRACTION
from archscale.sweeps.tasks import (
    MCExample,
    build_next_line_task,
    choice_log_likelihoods,
    default_task_path,
    load_task,
    score_multiple_choice,
    write_task,
)
from archscale.sweeps.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()


def bigram_model(table_VxV, calls=None):
    """logits_fn whose next-token logits depend only on the current token."""

    def logits_fn(tokens_BxT):
        if calls is not None:
            calls.append((tokens_BxT.shape, tokens_BxT.dtype))
        return table_VxV[tokens_BxT]

    return logits_fn


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def chain_table(*texts, strength=10.0):
    """Bigram logits that strongly favour each byte transition inside the given texts."""
    table = np.zeros((256, 256), np.float32)
    for text in texts:
        raw = text.encode()
        for a, b in itertools.pairwise(raw):
            table[a, b] = strength
    return table


@pytest.fixture(scope="module")
def shipped():
    return load_task(default_task_path())


def test_load_task_names_the_bad_line(tmp_path):
    good = {"context": "Q:", "choices": [" a", " b"], "gold": 1}
    cases = [("{not json", "not valid JSON"),
             (json.dumps({**good, "gold": 2}), "'gold' must be an index"),
             (json.dumps({**good, "gold": True}), "'gold' must be an index"),
             (json.dumps({**good, "choices": [" a"]}), "'choices' must be a list of at least two"),
             (json.dumps({**good, "context": ""}), "'context' must be a non-empty"),
             ("[1, 2]", "expected an object")]
    for line, message in cases:
        path = tmp_path / "task.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + line + "\n")
        with pytest.raises(ArchscaleError, match=f"task.jsonl:3: {message}"):
            load_task(path)
    with pytest.raises(ArchscaleError, match="does not exist"):
        load_task(tmp_path / "missing.jsonl")
    write_task([MCExample("Q:", (" a", " b"), 1)], path)
    assert load_task(path) == [MCExample("Q:", (" a", " b"), 1)]


def test_gold_favoured_by_a_bigram_model_scores_one():
    examples = [MCExample("ab", ("xyz", "cde", "qrs"), 1), MCExample("mn", ("op", "uv", "wx"), 0),
                MCExample("ab", ("qrs", "xyz", "cde"), 2)]
    model = bigram_model(chain_table("abcde", "mnop"))
    assert score_multiple_choice(model, BYTE, examples, seq_len=8, batch_size=4) == {
        "acc": 1.0, "acc_norm": 1.0, "n": 3}


def test_log_likelihood_is_exact_across_windows_and_truncation():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(256, 256)).astype(np.float32)
    logp = log_softmax(table.astype(np.float64))
    examples = [MCExample("a long context" * 9, ("a choice longer than one window of eight", "b"), 0),
                MCExample("x", ("yz", "zy", "a moderately long choice"), 2)]
    calls = []
    short = choice_log_likelihoods(bigram_model(table, calls), BYTE, examples, seq_len=8, batch_size=3)
    long = choice_log_likelihoods(bigram_model(table), BYTE, examples, seq_len=256, batch_size=2)
    for example, s, lo in zip(examples, short, long, strict=True):
        for choice, got_short, got_long in zip(example.choices, s, lo, strict=True):
            raw = (example.context[-1] + choice).encode()
            expected = sum(logp[a, b] for a, b in itertools.pairwise(raw))
            assert got_short == pytest.approx(expected, abs=1e-4)
            assert got_long == pytest.approx(expected, abs=1e-4)
    assert set(calls) == {((3, 8), np.dtype(np.int32))}  # one shape: the forward compiles once
    assert len(calls) == 4  # 40 + 1 + 2 + 2 + 24 targets: 5 + 1 + 1 + 1 + 3 windows, batches of 3


def test_uniform_model_picks_the_shortest_and_ties_go_first():
    examples = [MCExample("c", ("aaa", "a", "aa"), 1), MCExample("c", ("aaa", "a", "aa"), 0),
                MCExample("c", ("bb", "bbbb"), 0), MCExample("c", ("bb", "bbbb"), 1)]
    uniform = bigram_model(np.zeros((256, 256), np.float32))
    # acc: the shortest choice has the highest likelihood; acc_norm: every choice ties at
    # -log(256) per byte, and the first choice wins ties (as numpy's argmax, like lm-eval).
    assert score_multiple_choice(uniform, BYTE, examples, seq_len=4) == {
        "acc": 0.5, "acc_norm": 0.5, "n": 4}
    lls = choice_log_likelihoods(uniform, BYTE, examples[:1], seq_len=4)
    assert lls[0] == pytest.approx(-np.log(256) * np.array([3, 1, 2]))


def test_acc_norm_corrects_for_length():
    # Unigram model: 'a' has probability 1/2, 'z' 1/20 (the other bytes share what is left).
    probs = np.full(256, 0.45 / 254)
    probs[ord("a")], probs[ord("z")] = 0.5, 0.05
    table = np.tile(np.log(probs).astype(np.float32), (256, 1))
    # Summed, 12 log(1/2) = -8.3 loses to 2 log(1/20) = -6.0; per byte, -0.69 beats -3.0.
    examples = [MCExample("c", ("zz", "a" * 12), 1)]
    assert score_multiple_choice(bigram_model(table), BYTE, examples, seq_len=16) == {
        "acc": 0.0, "acc_norm": 1.0, "n": 1}


def test_trailing_context_spaces_move_to_the_choice():
    uniform = bigram_model(np.zeros((256, 256), np.float32))
    ll = choice_log_likelihoods(uniform, BYTE, [MCExample("Answer: ", ("yes", "no"), 0)], seq_len=16)
    assert ll[0] == pytest.approx(-np.log(256) * np.array([4, 3]))


def test_shipped_task_equals_a_fresh_build(shipped):
    assert shipped == build_next_line_task()


def test_shipped_task_comes_from_held_out_lines(shipped):
    parts = [corpus.split_document(text, VAL_FRACTION) for _, text in corpus.shakespeare_documents()]
    held_out = "".join(val for _, val in parts)
    train = "".join(tr for tr, _ in parts)
    assert len(shipped) == 400 and all(len(e.choices) == 4 for e in shipped)
    assert min(Counter(e.gold for e in shipped).values()) >= 80
    for e in shipped:
        speaker, *shown = e.context.rstrip("\n").split("\n")
        assert speaker.endswith(":") and 1 <= len(shown) <= 3
        pair = f"\n{shown[-1]}\n{e.choices[e.gold]}\n"
        assert pair in held_out
        assert pair not in train
        assert all(f"\n{c}\n" in held_out for c in e.choices)
        assert len(set(e.choices)) == 4

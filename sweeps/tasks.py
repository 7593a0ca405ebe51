"""Zero-shot multiple-choice accuracy, scored as lm-evaluation-harness does.

A task file is JSONL, one example a line: ``{"context": str, "choices": [str, ...], "gold": int}``.
Each choice is scored by the summed log-likelihood of its tokens given the context (``acc``) and
by that sum divided by the choice's UTF-8 byte length (``acc_norm``); the highest score wins,
ties going to the first choice.

One task ships (``default_task_path``): which of four lines truly follows a line of a speech,
built deterministically by ``build_next_line_task`` from the HELD-OUT part of the embedded plays,
so a model trained on the training split has never seen its lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TypeVar

import numpy as np

from archscale.arch.errors import ArchscaleError
from archscale.sweeps.corpus import shakespeare_documents, split_document
from archscale.sweeps.data import VAL_FRACTION
from archscale.sweeps.tokenizer import Tokenizer

T = TypeVar("T")

LogitsFn = Callable[[np.ndarray], np.ndarray]
"""tokens_BxT (int32) -> logits_BxTxV; called with one fixed shape so it compiles once."""


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice question."""

    context: str
    """Text the choices continue (non-empty)."""
    choices: tuple[str, ...]
    """Candidate continuations (at least two, non-empty)."""
    gold: int
    """Index of the correct choice."""


def default_task_path() -> Path:
    """The shipped task: Shakespeare next line, four choices, from held-out text."""
    return Path(str(files("archscale.sweeps").joinpath("tasks", "shakespeare_next_line.jsonl")))


def _parse_example(line: str, where: str) -> MCExample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ArchscaleError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ArchscaleError(f"{where}: expected an object with context, choices, gold")
    context, choices, gold = row.get("context"), row.get("choices"), row.get("gold")
    if not isinstance(context, str) or not context:
        raise ArchscaleError(f"{where}: 'context' must be a non-empty string")
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)):
        raise ArchscaleError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ArchscaleError(f"{where}: 'gold' must be an index into choices (0..{len(choices) - 1}), "
                             f"got {gold!r}")
    return MCExample(context, tuple(choices), gold)


def load_task(path: str | Path) -> list[MCExample]:
    """Read a JSONL task file; a malformed line raises ArchscaleError naming its line number."""
    return read_jsonl(path, _parse_example, '{"context": ..., "choices": [...], "gold": i} lines')


def read_jsonl(path: str | Path, parse: Callable[[str, str], T], expected: str) -> list[T]:
    """One ``parse(line, "file:line")`` per non-empty line of a JSONL task file; a missing or
    empty file is one error that says what the file should hold (``expected``)."""
    path = Path(path)
    if not path.is_file():
        raise ArchscaleError(f"task file {path} does not exist: give a JSONL file of {expected}")
    examples = [parse(line, f"{path}:{number}")
                for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1)
                if line.strip()]
    if not examples:
        raise ArchscaleError(f"task file {path} has no problems")
    return examples


def write_task(examples: Sequence[MCExample], path: str | Path) -> None:
    """Write examples as JSONL (one object a line, keys in a fixed order)."""
    lines = [json.dumps({"context": e.context, "choices": list(e.choices), "gold": e.gold},
                        ensure_ascii=False) for e in examples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- scoring

def _encode_pair(tokenizer: Tokenizer, context: str, choice: str) -> tuple[np.ndarray, int]:
    """(context + choice ids, index of the first choice token), split as lm-eval splits it."""
    # Trailing spaces of the context belong to the continuation (lm-eval's _encode_pair).
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces and n_spaces < len(context):
        context, choice = context[:-n_spaces], context[-n_spaces:] + choice
    whole = np.asarray(tokenizer.encode(context + choice), dtype=np.int32)
    first = min(len(tokenizer.encode(context)), len(whole) - 1)
    return whole, max(first, 1)


def _windows(whole: np.ndarray, first: int, seq_len: int):
    """Windows (inputs, targets, mask) of seq_len that together score targets first..end once.

    Each chunk of at most seq_len targets is scored with as much preceding text as fits;
    windows are right-padded with 0, which a causal model never attends to.
    """
    end = len(whole)
    while end > first:
        lo = max(first, end - seq_len)
        start = max(0, end - seq_len - 1)
        inputs, targets = whole[start:end - 1], whole[start + 1:end]
        mask = np.zeros(seq_len, bool)
        mask[lo - start - 1:end - start - 1] = True
        pad = seq_len - len(inputs)
        yield np.pad(inputs, (0, pad)), np.pad(targets, (0, pad)), mask
        end = lo


def _log_likelihoods(logits_fn: LogitsFn, requests: list[tuple[np.ndarray, int]], seq_len: int,
                     batch_size: int) -> np.ndarray:
    """Summed log-likelihood of each request's targets, batching windows at one fixed shape."""
    owner, inputs, targets, masks = [], [], [], []
    for i, (whole, first) in enumerate(requests):
        for x, y, m in _windows(whole, first, seq_len):
            owner.append(i)
            inputs.append(x)
            targets.append(y)
            masks.append(m)
    n_pad = -len(owner) % batch_size
    owner += [0] * n_pad
    inputs += [np.zeros(seq_len, np.int32)] * n_pad
    targets += [np.zeros(seq_len, np.int32)] * n_pad
    masks += [np.zeros(seq_len, bool)] * n_pad
    x_NxT, y_NxT, m_NxT = np.stack(inputs), np.stack(targets), np.stack(masks)
    sums = np.zeros(len(owner))
    for lo in range(0, len(owner), batch_size):
        logits_BxTxV = np.asarray(logits_fn(x_NxT[lo:lo + batch_size]), dtype=np.float32)
        peak_BxT = logits_BxTxV.max(axis=-1)
        lse_BxT = peak_BxT + np.log(np.exp(logits_BxTxV - peak_BxT[..., None]).sum(axis=-1))
        target_BxT = np.take_along_axis(logits_BxTxV, y_NxT[lo:lo + batch_size, :, None], -1)[..., 0]
        logp_BxT = (target_BxT - lse_BxT).astype(np.float64)
        sums[lo:lo + batch_size] = np.where(m_NxT[lo:lo + batch_size], logp_BxT, 0.0).sum(axis=1)
    ll = np.zeros(len(requests))
    np.add.at(ll, np.asarray(owner[:len(owner) - n_pad], dtype=np.int64), sums[:len(owner) - n_pad])
    return ll


def _check_scoring_args(examples: Sequence[MCExample], seq_len: int, batch_size: int) -> None:
    if not examples:
        raise ArchscaleError("no examples to score: check the task file")
    if seq_len < 1 or batch_size < 1:
        raise ArchscaleError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")


def choice_log_likelihoods(logits_fn: LogitsFn, tokenizer: Tokenizer, examples: Sequence[MCExample],
                           *, seq_len: int, batch_size: int = 16) -> list[np.ndarray]:
    """Summed log-likelihood of every choice given its context (float64, one array an example).

    Contexts are truncated from the left to fit seq_len; a choice longer than seq_len is scored
    over several windows. logits_fn always receives int32 [batch_size, seq_len].
    """
    _check_scoring_args(examples, seq_len, batch_size)
    requests = [_encode_pair(tokenizer, e.context, c) for e in examples for c in e.choices]
    ll = _log_likelihoods(logits_fn, requests, seq_len, batch_size)
    bounds = np.cumsum([len(e.choices) for e in examples])[:-1]
    return np.split(ll, bounds)


def score_multiple_choice(logits_fn: LogitsFn, tokenizer: Tokenizer, examples: Sequence[MCExample],
                          *, seq_len: int, batch_size: int = 16) -> dict[str, float]:
    """Zero-shot accuracy {"acc", "acc_norm", "n"} (see choice_log_likelihoods for the windows)."""
    lls = choice_log_likelihoods(logits_fn, tokenizer, examples, seq_len=seq_len,
                                 batch_size=batch_size)
    correct = correct_norm = 0
    for e, ll in zip(examples, lls, strict=True):
        n_bytes = np.array([len(c.encode("utf-8")) for c in e.choices], dtype=np.float64)
        correct += int(np.argmax(ll)) == e.gold
        correct_norm += int(np.argmax(ll / n_bytes)) == e.gold
    n = len(examples)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}


# ---------------------------------------------------------------- the shipped task

_SPEAKER = re.compile(r"[A-Z][A-Z0-9 ,.'&-]*:")
NEXT_LINE_MIN_CHARS = 20
"""Lines shorter than this ("He.", "Ay, my lord.") carry too little to choose between."""
NEXT_LINE_CONTEXT_LINES = 3
"""The context is the speaker and up to this many lines of the speech, ending at the given line."""


def hash_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def held_out_speeches() -> list[tuple[str, str, list[str]]]:
    """(key, speaker, spoken lines) of every speech in the held-out part of every play."""
    speeches = []
    for play, text in shakespeare_documents():
        held_out = split_document(text, VAL_FRACTION)[1]
        for b, block in enumerate(held_out.split("\n\n")):
            head, *lines = block.strip("\n").split("\n")
            if _SPEAKER.fullmatch(head):
                speeches.append((f"{play}/{b}", head[:-1], [ln for ln in lines if not ln.startswith("[")]))
    return speeches


def build_next_line_task(n_examples: int = 400, n_choices: int = 4) -> list[MCExample]:
    """Which of n_choices lines truly follows a line of a speech, from held-out text only.

    The context is the speaker and the speech's last NEXT_LINE_CONTEXT_LINES lines up to the
    given line (stage directions dropped).

    Deterministic without a random generator: questions are the n_examples adjacent line pairs
    (both at least NEXT_LINE_MIN_CHARS long, neither a stage direction) with the smallest
    sha256 of their position, kept in corpus order; distractors are other held-out lines of
    similar length (0.8x to 1.25x the true line, from other speeches) picked by sha256 too, and
    the gold position is sha256 modulo n_choices.
    """
    speeches = held_out_speeches()
    pool = sorted({(len(ln), ln, key) for key, _, lines in speeches for ln in lines
                   if len(ln) >= NEXT_LINE_MIN_CHARS})
    lengths = np.array([p[0] for p in pool])
    pairs = [(f"{key}/{i}", speaker, lines[max(0, i + 1 - NEXT_LINE_CONTEXT_LINES):i + 1], lines[i + 1])
             for key, speaker, lines in speeches for i in range(len(lines) - 1)
             if min(len(lines[i]), len(lines[i + 1])) >= NEXT_LINE_MIN_CHARS]
    chosen = sorted(sorted(range(len(pairs)), key=lambda j: hash_int(pairs[j][0]))[:n_examples])
    examples = []
    for j in chosen:
        key, speaker, shown, true_next = pairs[j]
        speech = key.rsplit("/", 1)[0]
        lo = int(np.searchsorted(lengths, 0.8 * len(true_next)))
        hi = int(np.searchsorted(lengths, 1.25 * len(true_next), side="right"))
        distractors: list[str] = []
        for k in range(10 * n_choices * (hi - lo)):  # no candidates of this length: no question
            _, text, owner = pool[lo + hash_int(f"{key}|{k}") % (hi - lo)]
            if owner != speech and text not in (true_next, *shown, *distractors):
                distractors.append(text)
            if len(distractors) == n_choices - 1:
                break
        if len(distractors) < n_choices - 1:
            continue
        gold = hash_int(f"{key}|gold") % n_choices
        choices = (*distractors[:gold], true_next, *distractors[gold:])
        examples.append(MCExample(f"{speaker}:\n" + "".join(f"{ln}\n" for ln in shown), choices, gold))
    return examples


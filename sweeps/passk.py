"""pass@k on a generative task with an automatic verifier: sampled completions, checked.

A task is a list of problems: a prompt, a reference and a verifier. A completion is the
generated text cut at the first of the problem's ``stop`` strings; the verifier then says
whether it solves the problem:

* ``exact``: the completion equals the reference;
* ``prefix``: the completion starts with the reference.

A task file is JSONL, one problem a line: ``{"prompt": str, "reference": str, "verifier":
"exact", "stop": ["\\n"]}`` (``verifier`` and ``stop`` optional, defaults as shown). Two tasks
are built from the HELD-OUT part of the embedded plays (the split the multiple-choice task uses,
sweeps/tasks.py), so a model trained on the training split has never seen their text:
``verse-word`` (the next word of a speech, stopped at whitespace), ``verse-word-rest`` (the rest
of the next word, its first letter given) and ``verse-line`` (the rest of a line from its middle,
stopped at the line's end). Problems are chosen by sha256 of their position, without a random
generator. The models of the demo's size (3k to 21k parameters, byte-level) rarely write a whole
word right: sampled at temperature 1, pass@1 of ``verse-word`` is 0.1% to 0.7% (pass@32 4% to
16%), too few passing samples to fit a law to; with the first letter given (``verse-word-rest``,
the default) pass@1 is 2% to 8% and pass@32 26% to 45%.

Each problem is sampled ``samples`` times (sweeps/sampling.py). pass@k for k = 1..``k_max`` is
Chen et al.'s (2021) unbiased estimator averaged over problems: with n samples of which c pass,
pass@k = 1 - C(n - c, k) / C(n, k). Majority vote: a problem counts as solved when its most
frequent completion (ties: the first drawn) passes.

A sweep runs this after training when its ``passk:`` key is set (on every run, or on the slice of
the grid that ``only`` names, e.g. ``only: {gqa: [1]}``): the trainer does not hand back
its weights, so the run checkpoints (to a temporary folder unless the sweep keeps checkpoints) and
the final checkpoint is read back (``sweeps.trained.load_trained``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from archscale.arch.errors import ArchscaleError
from archscale.arch.model import Transformer
from archscale.sweeps.data import TokenData, tokenizer_for
from archscale.sweeps.results import RunResult
from archscale.sweeps.sampling import SamplingSettings, sample
from archscale.sweeps.tasks import hash_int, held_out_speeches, read_jsonl
from archscale.sweeps.tokenizer import Tokenizer
from archscale.sweeps.trained import load_trained

VERIFIERS = ("exact", "prefix")
BUILT_IN = {"verse-word": ((" ", "\n"), 10), "verse-word-rest": ((" ", "\n"), 9),
            "verse-line": (("\n",), 24)}
"""Built-in tasks: their stop strings and the longest reference (characters) they ask for."""


@dataclass(frozen=True)
class GenExample:
    """One problem of a generative task."""

    prompt: str
    """Text the model continues (non-empty)."""
    reference: str
    """What a passing completion is checked against (non-empty)."""
    verifier: str = "exact"
    """How: ``exact`` or ``prefix`` (VERIFIERS)."""
    stop: tuple[str, ...] = ("\n",)
    """The completion ends before the first of these strings."""

    def completion(self, generated: str) -> str:
        """The generated text up to the first stop string."""
        ends = [i for i in (generated.find(s) for s in self.stop) if i >= 0]
        return generated[:min(ends)] if ends else generated

    def passes(self, completion: str) -> bool:
        if self.verifier == "exact":
            return completion == self.reference
        return completion.startswith(self.reference)


def _parse(line: str, where: str) -> GenExample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ArchscaleError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(row, dict) or set(row) - {"prompt", "reference", "verifier", "stop"}:
        raise ArchscaleError(f"{where}: expected an object with prompt, reference and optionally "
                             "verifier and stop")
    prompt, reference = row.get("prompt"), row.get("reference")
    verifier, stop = row.get("verifier", "exact"), row.get("stop", ["\n"])
    if not (isinstance(prompt, str) and prompt and isinstance(reference, str) and reference):
        raise ArchscaleError(f"{where}: 'prompt' and 'reference' must be non-empty strings")
    if verifier not in VERIFIERS:
        raise ArchscaleError(f"{where}: verifier {verifier!r} must be one of {VERIFIERS}")
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise ArchscaleError(f"{where}: 'stop' must be a list of non-empty strings")
    return GenExample(prompt, reference, verifier, tuple(stop))


def load_gen_task(path: str | Path) -> list[GenExample]:
    """Read a JSONL task; a malformed line raises ArchscaleError naming its line number."""
    return read_jsonl(path, _parse, '{"prompt": ..., "reference": ..., "verifier": "exact"} '
                      f"lines, or one of the built-in tasks {sorted(BUILT_IN)}")


PROMPT_CHARS = 256
"""A built-in problem's prompt: at most this much of the held-out text before the asked part."""
MIN_PROMPT_CHARS = 64
"""Positions with less held-out text before them are not asked (their prompts would be short)."""


def build_verse_task(unit: str = "verse-word-rest", n_examples: int = 256) -> list[GenExample]:
    """Problems from the held-out speeches of the plays (speaker line, then spoken lines; stage
    directions dropped): ``verse-word`` asks for the word after a whitespace,
    ``verse-word-rest`` for the rest of that word after its first letter (which ends the
    prompt), ``verse-line`` for the rest of a line after its middle word boundary; references of
    1 to BUILT_IN's length characters (2+ for a line's rest). The prompt is the held-out text of the play up to the
    asked part (its last PROMPT_CHARS characters); the n_examples positions with the smallest
    sha256 of their place are kept, in corpus order."""
    if unit not in BUILT_IN:
        raise ArchscaleError(f"unknown built-in task {unit!r}: choose one of {sorted(BUILT_IN)} "
                             "or give a JSONL file")
    stop, longest = BUILT_IN[unit]
    candidates, texts = [], {}
    for key, speaker, lines in held_out_speeches():
        play = key.rsplit("/", 1)[0]
        text = texts.get(play, "") + f"{speaker}:\n"
        for i, line in enumerate(lines):
            if unit != "verse-line":
                hint = unit == "verse-word-rest"  # the first letter goes to the prompt
                starts = np.cumsum([0] + [len(w) + 1 for w in line.split(" ")[:-1]])
                asked = [(at + hint, word[hint:]) for at, word in zip(
                    starts, line.split(" "), strict=True) if 0 < len(word) - hint <= longest]
            else:
                middle = line.find(" ", len(line) // 2)
                rest = line[middle + 1:] if middle >= 0 else ""
                asked = [(middle + 1, rest)] if 2 <= len(rest) <= longest else []
            for at, reference in asked:
                prompt = text + line[:at]
                if len(prompt) >= MIN_PROMPT_CHARS:
                    candidates.append((f"{key}/{i}/{at}", prompt[-PROMPT_CHARS:], reference))
            text += line + "\n"
        texts[play] = text + "\n"
    chosen = sorted(sorted(range(len(candidates)), key=lambda j: hash_int(candidates[j][0]))
                    [:n_examples])
    return [GenExample(candidates[j][1], candidates[j][2], "exact", stop) for j in chosen]


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Chen et al.'s unbiased pass@k of problems with ``c`` of ``n`` samples passing:
    1 - C(n - c, k) / C(n, k), as the product prod_{i=n-c+1}^{n} (1 - k / i), which neither
    overflows nor loses precision."""
    c = np.asarray(c, dtype=np.int64)
    if not 1 <= k <= n or np.any((c < 0) | (c > n)):
        raise ArchscaleError(f"pass@{k} needs 1 <= k <= n = {n} samples and 0 <= c <= n")
    i = np.arange(1, n + 1)
    factors_CxN = np.where(i[None, :] > (n - c)[:, None], 1.0 - k / i[None, :], 1.0)
    return np.where(n - c < k, 1.0, 1.0 - np.prod(factors_CxN, axis=1))


@dataclass(frozen=True)
class PasskSettings:
    """What a run's pass@k evaluation samples (the sweep file's ``passk:`` key, flat)."""

    task: str = "verse-word-rest"
    """A built-in task (BUILT_IN) or a JSONL file."""
    problems: int = 256
    """Problems sampled (the first of the task's)."""
    samples: int = 32
    """Samples per problem, n of Chen's estimator."""
    k_max: int = 32
    """pass@k is reported for k = 1..k_max (<= samples)."""
    prompt_tokens: int | None = None
    """Prompts are cut from the left to this many tokens; default: seq_len - max_new_tokens, so
    prompt and completion fit the trained context."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Temperature, top-p, new tokens, batch and seed (flat keys in the sweep file)."""
    only: dict[str, list[Any]] | None = None
    """Sample only the runs whose trial parameters take one of these values each, e.g.
    ``{d_over_sqrt_n: [0.16], gqa: [1]}`` (a slice of a grid: sampling costs seconds a run);
    None: every run."""

    def __post_init__(self) -> None:
        if not 1 <= self.k_max <= self.samples or self.problems < 1:
            raise ArchscaleError(f"passk: need 1 <= k_max ({self.k_max}) <= samples "
                                 f"({self.samples}) and problems ({self.problems}) >= 1")
        if self.only is not None and not (
                isinstance(self.only, dict) and self.only
                and all(isinstance(v, list) and v for v in self.only.values())):
            raise ArchscaleError(f"passk: only {self.only!r} must map trial parameters to "
                                 "non-empty lists of values, e.g. {gqa: [1]}")
        if self.prompt_tokens is not None and self.prompt_tokens < 1:
            raise ArchscaleError(f"passk: prompt_tokens {self.prompt_tokens} must be >= 1")

    def samples_run(self, params: dict[str, Any]) -> bool:
        """Whether a run with these trial parameters is sampled (``only``)."""
        return self.only is None or all(params.get(name) in values
                                        for name, values in self.only.items())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PasskSettings:
        own = {f.name for f in fields(cls)} - {"sampling"}
        draw = {f.name for f in fields(SamplingSettings)}
        unknown = sorted(set(data) - own - draw)
        if unknown:
            raise ArchscaleError(f"unknown passk keys {unknown}: valid keys are "
                                 f"{sorted(own | draw)}")
        return cls(**{k: v for k, v in data.items() if k in own},
                   sampling=SamplingSettings(**{k: v for k, v in data.items() if k in draw}))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        sampling = out.pop("sampling")
        return {**out, **sampling}

    def examples(self) -> list[GenExample]:
        if self.task in BUILT_IN:
            return build_verse_task(self.task, self.problems)
        return load_gen_task(self.task)[:self.problems]

    def prompt_length(self, seq_len: int) -> int:
        """Tokens of prompt a model of context ``seq_len`` is given, leaving room for the
        completion; one error where none is left."""
        length = self.prompt_tokens or seq_len - self.sampling.max_new_tokens
        if length < 1:
            raise ArchscaleError(f"pass@k: {self.sampling.max_new_tokens} new tokens leave no room "
                                 f"for a prompt in the trained context {seq_len}: lower "
                                 "max_new_tokens")
        return length

    def check(self, seq_len: int) -> None:
        """What would fail after training, refused before it: a task that does not load or has
        no problems, or a context with no room for a prompt."""
        if not self.examples():
            raise ArchscaleError(f"pass@k: the task {self.task!r} has no problems")
        self.prompt_length(seq_len)


def _groups(tokenizer: Tokenizer, examples: Sequence[GenExample],
            length: int) -> dict[int, list[int]]:
    """Problem indices by prompt length in tokens (prompts cut from the left to ``length``)."""
    groups: dict[int, list[int]] = {}
    for i, example in enumerate(examples):
        n_tokens = min(len(tokenizer.encode(example.prompt)), length)
        groups.setdefault(n_tokens, []).append(i)
    return groups


def evaluate_passk(model: Transformer, tokenizer: Tokenizer, examples: Sequence[GenExample],
                   settings: PasskSettings) -> dict[str, Any]:
    """pass@k for k = 1..k_max, majority-vote accuracy, per-problem pass counts and the cost."""
    draw = settings.sampling
    if not examples:
        raise ArchscaleError("pass@k: the task has no problems")
    length = settings.prompt_length(model.spec.seq_len)
    correct = np.zeros(len(examples), dtype=np.int64)
    majority = np.zeros(len(examples), dtype=bool)
    seconds = compile_seconds = 0.0
    rows = completion_tokens = 0
    for stream, (n_tokens, members) in enumerate(sorted(_groups(tokenizer, examples,
                                                                length).items())):
        prompts = np.stack([np.asarray(tokenizer.encode(examples[i].prompt))[-n_tokens:]
                            for i in members])
        drawn = sample(model, prompts, settings.samples, draw, stream)
        seconds, compile_seconds = seconds + drawn.seconds, compile_seconds + drawn.compile_seconds
        rows += drawn.rows
        for i, tokens_SxN in zip(members, drawn.tokens_PxSxN, strict=True):
            example = examples[i]
            completions = [example.completion(tokenizer.decode(t)) for t in tokens_SxN]
            correct[i] = sum(example.passes(c) for c in completions)
            majority[i] = example.passes(Counter(completions).most_common(1)[0][0])
            # tokens a server generates: the completion and its stop token
            completion_tokens += sum(min(len(tokenizer.encode(c)) + 1, draw.max_new_tokens)
                                     for c in completions)
    n = settings.samples
    ks = list(range(1, settings.k_max + 1))
    n_samples = len(examples) * n
    return {
        "k": ks, "pass_at_k": [float(np.mean(pass_at_k(n, correct, k))) for k in ks],
        "majority_vote": float(np.mean(majority)), "correct": correct.tolist(),
        "n_problems": len(examples), "settings": settings.to_dict(),
        "task_sha256": hashlib.sha256(json.dumps([asdict(e) for e in examples]).encode()
                                      ).hexdigest(),
        "prompt_tokens": length, "seconds": seconds, "compile_seconds": compile_seconds,
        "tokens_generated": rows * draw.max_new_tokens,
        "mean_completion_tokens": completion_tokens / n_samples,
    }


@contextlib.contextmanager
def weights_folder(checkpoint_dir: str | Path | None, needed: bool) -> Iterator[Path | None]:
    """Where a run checkpoints: ``checkpoint_dir``, else a temporary folder when pass@k needs
    the final weights (removed afterwards), else None."""
    if checkpoint_dir is not None or not needed:
        yield None if checkpoint_dir is None else Path(checkpoint_dir)
        return
    with tempfile.TemporaryDirectory(prefix="archscale-passk-") as folder:
        yield Path(folder)


def run_passk(result: RunResult, checkpoint_dir: str | Path, data: TokenData,
              settings: PasskSettings) -> dict[str, Any]:
    """``evaluate_passk`` of a finished run (its final checkpoint in ``checkpoint_dir``) on its
    data's tokenizer: the run's ``RunResult.passk``."""
    model, step = load_trained(checkpoint_dir)
    if step != result.steps:
        raise ArchscaleError(f"the newest checkpoint in {checkpoint_dir} is of step {step}, not the "
                             f"run's last ({result.steps}): pass@k needs the final weights")
    return evaluate_passk(model, tokenizer_for(data), settings.examples(), settings)

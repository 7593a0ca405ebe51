"""pass@k measurement: Chen et al.'s estimator against enumeration of every subset, the verifiers,
the tasks, nucleus sampling against a sorted reference, and evaluate_passk against greedy
decoding."""

import itertools
import json
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from archscale.arch.errors import ArchscaleError
from archscale.arch.model import Transformer
from archscale.search.sweepfile import SweepFileError, parse_sweep
from archscale.sweeps.corpus import shakespeare_documents, split_document
from archscale.sweeps.data import VAL_FRACTION
from archscale.sweeps.passk import (
    GenExample,
    PasskSettings,
    build_verse_task,
    evaluate_passk,
    load_gen_task,
    pass_at_k,
)
from archscale.sweeps.sampling import SamplingSettings, next_tokens, sample
from archscale.sweeps.tokenizer import ByteTokenizer


@pytest.mark.parametrize("n", [1, 4, 7])
def test_chen_estimator_is_the_fraction_of_k_subsets_holding_a_pass(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert len(subsets) == comb(n, k)
            assert pass_at_k(n, np.array([c]), k)[0] == pytest.approx(brute, abs=1e-12)


def test_chen_estimator_stays_exact_where_binomials_overflow_floats():
    # C(2000, 1000) overflows a float; the product form does not
    n, c, k = 2000, 3, 1000
    exact = 1 - comb(n - c, k) / comb(n, k)  # Python integers: exact
    assert pass_at_k(n, np.array([c]), k)[0] == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ArchscaleError, match="k <= n"):
        pass_at_k(4, np.array([1]), 5)


def test_completion_is_cut_at_the_first_stop_and_verified():
    word = GenExample("x", "lord", "exact", (" ", "\n"))
    assert word.completion("lord, and") == "lord,"
    assert word.completion("lord\nthen") == "lord"
    assert word.passes(word.completion("lord then")) and not word.passes("lords")
    prefix = GenExample("x", "lo", "prefix")
    assert prefix.passes("lord") and not prefix.passes("l")


def test_task_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"prompt": "2+2=", "reference": "4"}) + "\n\n"
                    + json.dumps({"prompt": "a", "reference": "b", "verifier": "prefix",
                                  "stop": [" "]}) + "\n")
    assert load_gen_task(path) == [GenExample("2+2=", "4"), GenExample("a", "b", "prefix", (" ",))]
    path.write_text(json.dumps({"prompt": "a", "reference": "b", "verifier": "regex"}) + "\n")
    with pytest.raises(ArchscaleError, match=r"task.jsonl:1: verifier 'regex'"):
        load_gen_task(path)


def test_built_in_tasks_come_from_held_out_text_only():
    held_out = "".join(split_document(text, VAL_FRACTION)[1] for _, text in
                       shakespeare_documents())
    for unit in ("verse-word", "verse-word-rest", "verse-line"):
        examples = build_verse_task(unit, 64)
        assert len(examples) == 64 and examples == build_verse_task(unit, 64)  # deterministic
        for e in examples:
            # the prompt's last line and the reference continue each other in held-out text
            tail = e.prompt.rsplit("\n", 1)[-1] + e.reference
            assert tail in held_out, (unit, tail)
            assert e.stop == (("\n",) if unit == "verse-line" else (" ", "\n"))
    rest = build_verse_task("verse-word-rest", 64)
    assert all(e.prompt[-1] not in " \n" and " " not in e.reference for e in rest)


def test_sweep_file_passk_key_is_validated():
    base = {"name": "p", "seq_len": 32, "budget": {"tokens_per_param": 5},
            "grid": {"scales": [4e3], "d_over_sqrt_n": [0.2], "r": [1.0]}}
    sweep = parse_sweep({**base, "passk": {"samples": 16, "k_max": 8, "temperature": 0.7}})
    settings = sweep.passk_settings
    assert (settings.samples, settings.k_max, settings.sampling.temperature) == (16, 8, 0.7)
    assert PasskSettings.from_dict(settings.to_dict()) == settings
    assert parse_sweep(base).passk_settings is None
    with pytest.raises(SweepFileError, match=r"passk: .*k_max \(64\) <= samples \(32\)"):
        parse_sweep({**base, "passk": {"k_max": 64}})
    with pytest.raises(SweepFileError, match=r"unknown passk keys \['temp'\]"):
        parse_sweep({**base, "passk": {"temp": 1.0}})


def test_passk_only_samples_a_slice_of_the_grid():
    """`only` keeps the grid points whose parameters take the listed values (2 scales x 2 widths
    x 2 ratios = 8 runs, 2 of them at width 0.2 and r 4); a name that is not an axis, or values
    that select nothing, are refused before any training."""
    from archscale.search.plan import plan_grid

    base = {"name": "p", "seq_len": 32, "budget": {"tokens_per_param": 5},
            "shape": {"head_dim": 4, "d_model_multiple": 4, "d_ff_multiple": 4},
            "grid": {"scales": [6e3, 1.2e4], "d_over_sqrt_n": [0.16, 0.2], "r": [1.0, 4.0]}}
    sweep = parse_sweep({**base, "passk": {"only": {"d_over_sqrt_n": [0.2], "r": [4]}}})
    runs = plan_grid(sweep, 256)
    sampled = [r.params for r in runs if sweep.passk_settings.samples_run(r.params)]
    assert len(runs) == 8 and len(sampled) == 2
    assert all(p["d_over_sqrt_n"] == 0.2 and p["r"] == 4.0 for p in sampled)
    assert {p["N"] for p in sampled} == {6e3, 1.2e4}
    with pytest.raises(SweepFileError, match=r"passk.only names \['width'\], which are not grid"):
        plan_grid(parse_sweep({**base, "passk": {"only": {"width": [0.2]}}}), 256)
    with pytest.raises(SweepFileError, match="selects none of the grid's runs"):
        plan_grid(parse_sweep({**base, "passk": {"only": {"r": [2.0]}}}), 256)
    with pytest.raises(SweepFileError, match="must map trial parameters to non-empty lists"):
        parse_sweep({**base, "passk": {"only": {"r": 4.0}}})


def _nucleus(probs_V: np.ndarray, top_p: float) -> set[int]:
    """The textbook nucleus: the most likely tokens, by sorting, until their mass reaches
    top_p."""
    order = np.argsort(-probs_V, kind="stable")
    n = int(np.searchsorted(np.cumsum(probs_V[order]), top_p)) + 1
    return set(order[:n].tolist())


def test_draws_follow_the_tempered_nucleus_distribution():
    rng = np.random.default_rng(0)
    logits_BxV = jnp.asarray(rng.normal(size=(4, 12)).astype(np.float32) * 2)
    draw = jax.jit(next_tokens)
    temperature, top_p, n = 0.8, 0.9, 4000
    draws = np.stack([draw(logits_BxV, jax.random.key(i), jnp.float32(temperature),
                           jnp.float32(top_p)) for i in range(n)])
    for row in range(4):
        probs = np.asarray(jax.nn.softmax(logits_BxV[row] / temperature), dtype=np.float64)
        nucleus = sorted(_nucleus(probs, top_p))
        expected = np.zeros(12)
        expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
        observed = np.bincount(draws[:, row], minlength=12) / n
        assert set(np.flatnonzero(observed)) <= set(nucleus)
        assert np.abs(observed - expected).max() < 4 * np.sqrt(0.25 / n)
    greedy = draw(logits_BxV, jax.random.key(0), jnp.float32(0.0), jnp.float32(top_p))
    assert np.array_equal(greedy, np.argmax(logits_BxV, axis=-1))


@pytest.fixture(scope="module")
def model():
    from archscale.arch.spec import ArchSpec

    spec = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                    head_dim=8, d_ff=64)
    return Transformer(spec, rngs=nnx.Rngs(1))


def _greedy(model: Transformer, prompts_PxT: np.ndarray, steps: int) -> np.ndarray:
    cache = model.init_cache(len(prompts_PxT), prompts_PxT.shape[1] + steps)
    logits, cache = model.prefill(jnp.asarray(prompts_PxT), cache, last_only=True)
    first = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
    rest, _ = model.greedy_decode(first, cache, steps - 1)
    return np.concatenate([np.asarray(first)[:, None], np.asarray(rest)], axis=1)


def test_temperature_zero_samples_are_the_greedy_decode(model):
    prompts = np.random.default_rng(0).integers(0, 256, (3, 9)).astype(np.int32)
    drawn = sample(model, prompts, 5, SamplingSettings(temperature=0.0, max_new_tokens=6,
                                                       batch_size=4))
    assert drawn.tokens_PxSxN.shape == (3, 5, 6) and drawn.rows == 16  # 15 rows padded to 4s
    expected = _greedy(model, prompts, 6)
    assert all(np.array_equal(drawn.tokens_PxSxN[:, s], expected) for s in range(5))
    again = sample(model, prompts, 5, SamplingSettings(max_new_tokens=6, batch_size=4, seed=3))
    assert np.array_equal(again.tokens_PxSxN,
                          sample(model, prompts, 5, SamplingSettings(max_new_tokens=6,
                                                                     batch_size=4,
                                                                     seed=3)).tokens_PxSxN)


def test_evaluate_passk_counts_what_the_verifier_accepts(model):
    """Greedy samples all agree, so a problem whose reference is the model's own greedy
    completion passes at every k and one with another reference never does."""
    tokenizer = ByteTokenizer()
    prompts = ["ROMEO:\nBut soft, what light through", "JULIET:\nO Romeo, Romeo, wherefore",
               "HAMLET:\nTo be, or not to be, that", "LEAR:\nBlow, winds, and crack your"]
    settings = PasskSettings.from_dict({"task": "unused", "samples": 4, "k_max": 3,
                                        "temperature": 0.0, "max_new_tokens": 5,
                                        "prompt_tokens": 12})
    examples = []
    for i, prompt in enumerate(prompts):
        ids = np.asarray(tokenizer.encode(prompt))[-12:][None, :]
        text = tokenizer.decode(_greedy(model, ids, 5)[0])
        own = GenExample(prompt, text, "exact", ("\x00",))  # no stop: the whole 5 tokens
        examples.append(own if i % 2 == 0 else GenExample(prompt, text + "!", "exact", ("\x00",)))
    out = evaluate_passk(model, tokenizer, examples, settings)
    assert out["correct"] == [4, 0, 4, 0]
    assert out["pass_at_k"] == [0.5, 0.5, 0.5] and out["majority_vote"] == 0.5
    assert out["k"] == [1, 2, 3] and out["prompt_tokens"] == 12
    assert out["tokens_generated"] == 16 * 5 and out["mean_completion_tokens"] == 5


def test_a_passk_task_that_would_fail_after_training_is_refused_before(tmp_path):
    """A context with no room for a prompt, or a task file with a bad line, would fail every run
    after its training: create_study refuses them before the storage is opened."""
    from archscale.search.study import create_study
    from archscale.search.sweepfile import SweepFile

    base = {"name": "p", "seq_len": 32, "budget": {"tokens_per_param": 5},
            "shape": {"head_dim": 4, "d_model_multiple": 4, "d_ff_multiple": 4},
            "grid": {"scales": [6e3], "d_over_sqrt_n": [0.16], "r": [1.0]}}
    url = str(tmp_path / "study.journal")
    with pytest.raises(ArchscaleError, match="32 new tokens leave no room for a prompt in the "
                                             "trained context 32"):
        create_study(SweepFile.model_validate({**base, "passk": {"max_new_tokens": 32}}), url)
    task = tmp_path / "task.jsonl"
    task.write_text('{"prompt": "to be", "reference": "or"}\n{"prompt": ""}\n')
    with pytest.raises(ArchscaleError, match=r"task.jsonl:2: 'prompt' and 'reference' must be"):
        create_study(SweepFile.model_validate({**base, "passk": {"task": str(task)}}), url)
    assert not (tmp_path / "study.journal").exists()


def test_a_run_whose_sampling_fails_after_training_is_kept(tmp_path, monkeypatch):
    """pass@k failing after training (here: made to fail) leaves the trained run COMPLETE with
    its loss, and its pass@k says why it is missing; passk_table leaves it out."""
    import archscale.search.objective as objective
    from archscale.decide.substitute import passk_results, passk_table
    from archscale.search.study import create_study
    from archscale.search.table import trials_table
    from archscale.search.trial_process import make_runner
    from archscale.search.worker import WorkerOptions, claim

    def fail(*args, **kwargs):
        raise ArchscaleError("pass@k: the newest checkpoint is of step 3, not the run's last")

    monkeypatch.setattr(objective, "run_passk", fail)
    sweep = parse_sweep({"name": "p", "seq_len": 32, "budget": {"tokens_per_param": 2},
                         "shape": {"head_dim": 4, "d_model_multiple": 4, "d_ff_multiple": 4},
                         "throughput": {"enabled": False},
                         "grid": {"scales": [6e3], "d_over_sqrt_n": [0.16], "r": [1.0]},
                         "passk": {"problems": 8, "samples": 2, "k_max": 2}})
    url = str(tmp_path / "study.journal")
    handle = create_study(sweep, url)
    # the trial as its trial process runs it, but in this process, where run_passk is patched
    make_runner(handle, WorkerOptions(progress=False)).run(claim(handle))
    table = trials_table(handle.study)
    assert len(table) == 1 and table["status"].tolist() == ["complete"]
    assert 2.0 < table["loss"].iloc[0] < 6.0
    result = handle.study.trials[0].user_attrs["result"]
    assert result["passk"] == {"error": "pass@k: the newest checkpoint is of step 3, not the "
                                        "run's last"}
    assert passk_results(handle.study) == {} and passk_table(handle.study).empty

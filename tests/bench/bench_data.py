"""Data pipeline figures: corpus load (cold / cached), batch sampling, BPE, task scoring.

Run: ``python tests/bench/bench_data.py`` (uses a fresh temporary cache; about a minute on 2 cores).
"""

import os
import tempfile
import time
from itertools import pairwise

import numpy as np


def timed(fn, repeat=1):
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - start) / repeat


def main() -> None:
    os.environ["ARCHSCALE_CACHE"] = tempfile.mkdtemp(prefix="archscale-bench-")
    from archscale.sweeps.data import load_data, train_batch, validation_windows
    from archscale.sweeps.tasks import default_task_path, load_task, score_multiple_choice
    from archscale.sweeps.tokenizer import ByteTokenizer

    data, cold = timed(load_data)
    _, warm = timed(load_data, repeat=5)
    print(f"shakespeare byte: {len(data.train):,} train / {len(data.val):,} val tokens; "
          f"load cold {cold:.2f} s, cached {warm * 1e3:.1f} ms")
    _, per_batch = timed(lambda: train_batch(data, step=1, batch_size=16, seq_len=256, seed=0), 200)
    print(f"train_batch 16x257: {per_batch * 1e6:.0f} us")
    _, per_val = timed(lambda: validation_windows(data, 256, 65_536), 20)
    print(f"validation_windows 65,536 tokens at seq 256: {per_val * 1e3:.2f} ms")

    bpe, bpe_cold = timed(lambda: load_data(tokenizer="bpe:4096"))
    _, bpe_warm = timed(lambda: load_data(tokenizer="bpe:4096"))
    print(f"shakespeare bpe:4096: {len(bpe.train):,} train tokens "
          f"({(len(data.train) / len(bpe.train)):.2f} bytes/token); train+tokenize {bpe_cold:.1f} s, "
          f"cached {bpe_warm * 1e3:.1f} ms")

    # Byte-bigram language model counted on the training split: a floor any trained model should beat.
    counts = np.ones((256, 256))
    np.add.at(counts, (np.asarray(data.train[:-1]), np.asarray(data.train[1:])), 1.0)
    table = np.log(counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)
    held_out_nll = -np.mean([table[a, b] for a, b in pairwise(np.asarray(data.val[:100_000]))])
    print(f"byte bigram held-out loss: {held_out_nll:.3f} nats/byte")
    examples = load_task(default_task_path())
    for name, table_VxV in (("uniform", np.zeros_like(table)), ("bigram", table)):
        scores, seconds = timed(lambda t=table_VxV: score_multiple_choice(
            lambda x: t[x], ByteTokenizer(), examples, seq_len=128, batch_size=32))
        print(f"next-line task, {name} model: acc {scores['acc']:.3f}, acc_norm "
              f"{scores['acc_norm']:.3f} (n={scores['n']}, chance 0.25), {seconds:.2f} s")


if __name__ == "__main__":
    main()

"""Ctrl-C, sent as a real SIGINT to a real `archscale` process: one line says what was
interrupted, what is kept and the command that resumes it; `train` keeps its partial result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from archscale.sweeps.results import RunResult

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from archscale.cli.main import main; main()"]
SHAPE = ["--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
         "--d-ff", "64", "--seq-len", "32", "--batch-size", "8", "--eval-tokens", "256"]


def _start(args, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ARCHSCALE_CACHE": str(tmp_path / "cache"),
           "ARCHSCALE_KEEP_ALLOCATOR": "1"}
    # Ctrl-C as a terminal delivers it, however the suite was started: a shell's background job
    # (`.ci/run &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    return subprocess.Popen([*CLI, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt_when(proc, ready, limit_s=240):
    """SIGINT once ``ready()`` holds (the work has begun); the process's (code, stdout, stderr)."""
    deadline = time.monotonic() + limit_s
    try:
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never got going"
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        raise
    proc.send_signal(signal.SIGINT)
    # a bound on a hang, not a speed check: signalled alone (not its process group, as a
    # terminal's Ctrl-C is), a worker gives its trial process up to 60 s to end before it kills
    # it, and under load with cold caches teardown took over 120 s in a CI run
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_train_keeps_an_interrupted_partial_result(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"eval_interval": 1024}))  # evaluate and checkpoint every 4 steps
    out, ckpt = tmp_path / "run.json", tmp_path / "ckpt"
    args = ["train", *SHAPE, "--tokens", "1e9", "--recipe", str(recipe), "--no-progress",
            "--no-throughput", "--out", str(out), "--checkpoint-dir", str(ckpt)]
    proc = _start(args, tmp_path)
    code, _, err = _interrupt_when(proc, lambda: ckpt.is_dir() and any(
        p.name.isdigit() for p in ckpt.iterdir()))
    assert code == 130
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith("interrupted: archscale train; kept: the partial result after ")
    assert f"in {out} (status interrupted), checkpoints in {ckpt}" in line
    assert line.endswith("; resume: archscale train " + " ".join(args[1:]))
    partial = RunResult.load(out)
    assert partial.status == "interrupted" and 0 < partial.steps < 1e9 / 256
    assert partial.loss_curve and partial.message.startswith("interrupted (Ctrl-C) at step")


def test_study_run_says_finished_trials_are_kept_and_how_to_resume(tmp_path):
    sweep = tmp_path / "long.yaml"
    sweep.write_text("""name: long
seq_len: 32
recipe: {batch_size: 8, eval_interval: 0.05, eval_tokens: 256}
budget: {flops: 1.0e+15}
throughput: {enabled: false}
shape: {head_dim: 8}
grid: {scales: [4.0e3, 8.0e3], d_over_sqrt_n: [0.3], r: [1.0], n_layers: [1, 1]}
""")
    journal = tmp_path / "s.journal"
    args = ["study", "run", str(sweep), "--storage", str(journal), "--no-progress"]
    proc = _start(args, tmp_path)
    # the first trial is running once the journal holds its RUNNING state (TrialState 0)
    code, _, err = _interrupt_when(proc, lambda: journal.is_file()
                                   and '"state":0' in journal.read_text())
    assert code == 130 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert lines == ["interrupted: archscale study run; kept: finished trials are kept in the "
                     "study's storage (the trial cut short goes back to the queue); resume: "
                     "archscale study run " + " ".join(args[2:])]

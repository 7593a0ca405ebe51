"""`checkpoints: true` in a study: each run's checkpoints land in
<artifacts>/checkpoints/<study>/<key>, restore to the model the trial's val_loss was measured on,
and an interrupted run resumes from them to the same end as an uninterrupted one."""

import jax.numpy as jnp
import numpy as np
import pytest
from optuna.trial import TrialState

from archscale.search import objective
from archscale.search.storage import artifact_dir
from archscale.search.study import create_study
from archscale.search.sweepfile import parse_sweep
from archscale.search.trial_process import make_runner
from archscale.search.worker import WorkerOptions, claim, run_study
from archscale.sweeps import data as data_lib
from archscale.sweeps.train_step import token_losses
from archscale.sweeps.trained import load_trained

EVAL_TOKENS = 2048
REAL_TRAIN = objective.train


def sweep(name: str) -> dict:
    """One tiny grid run, evaluated (and checkpointed) four times."""
    return {"name": name, "tokenizer": "byte", "seq_len": 32, "checkpoints": True,
            "recipe": {"lr": 1.0e-2, "batch_size": 4, "eval_interval": 0.25,
                       "eval_tokens": EVAL_TOKENS},
            "budget": {"tokens_per_param": 2}, "throughput": {"enabled": False},
            "shape": {"head_dim": 8}, "seed": 0,
            "grid": {"scales": [4.0e3], "d_over_sqrt_n": [0.2], "r": [1.0], "gqa": [1],
                     "n_layers": [1]}}


def run(tmp_path, name: str):
    handle = create_study(parse_sweep(sweep(name)), str(tmp_path / "study.journal"))
    run_study(handle.name, handle.url, options=WorkerOptions(progress=False))
    return handle


def run_here(tmp_path, name: str):
    """The study's trials run the way its trial process runs them, but in this process, so that
    `train` can be spied on."""
    handle = create_study(parse_sweep(sweep(name)), str(tmp_path / "study.journal"))
    runner = make_runner(handle, WorkerOptions(progress=False))
    while (trial := claim(handle)) is not None:
        runner.run(trial)
    return handle


def complete_trial(handle):
    (trial,) = handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return trial


def spy_train(monkeypatch, reported: list[int], stop_after_first: bool = False):
    """objective.train, recording the steps its evaluations report; optionally the worker is
    interrupted (Ctrl-C) right after the first evaluation, its checkpoint written."""
    def train(*args, report, **kwargs):
        def spy(step, tokens, val_loss):
            reported.append(step)
            if stop_after_first:
                raise KeyboardInterrupt
            return report(step, tokens, val_loss)

        return REAL_TRAIN(*args, report=spy, **kwargs)

    monkeypatch.setattr(objective, "train", train)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return run(tmp_path_factory.mktemp("checkpoints"), "checkpoints")


def test_a_trials_checkpoint_restores_the_model_its_val_loss_was_measured_on(finished):
    handle = finished
    trial = complete_trial(handle)
    key = trial.user_attrs["config_key"]
    folder = artifact_dir(handle.url) / "checkpoints" / handle.name / key
    assert folder.is_dir()
    model, step = load_trained(folder, compute_dtype=jnp.float32)
    result = trial.user_attrs["result"]
    assert step == result["steps"]
    # the trainer's validation loss: mean token cross-entropy over the shared validation windows
    windows = data_lib.validation_windows(handle.load_data(), model.spec.seq_len, EVAL_TOKENS)
    nll, _ = token_losses(model(jnp.asarray(windows[:, :-1])), jnp.asarray(windows[:, 1:]))
    assert float(np.mean(nll)) == pytest.approx(trial.user_attrs["val_loss"], abs=1e-4)


def test_an_interrupted_trial_resumes_from_its_checkpoint(finished, tmp_path, monkeypatch):
    whole = complete_trial(finished).user_attrs["result"]
    first: list[int] = []
    spy_train(monkeypatch, first, stop_after_first=True)
    with pytest.raises(KeyboardInterrupt):
        run_here(tmp_path, "interrupted")
    second: list[int] = []
    spy_train(monkeypatch, second)
    handle = run_here(tmp_path, "interrupted")  # the requeued retry of the interrupted trial
    resumed = complete_trial(handle).user_attrs["result"]
    # the retry did not start over: its first evaluation is the one after the checkpointed one
    assert len(first) == 1 and second[0] > first[0]
    assert second[-1] == resumed["steps"] == whole["steps"]
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-5)

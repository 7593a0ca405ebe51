"""Our weights in transformers' LlamaForCausalLM give our logits: the export is the same model.

transformers' own forward pass (CPU torch, fp32, built from the config arch/export.py writes) is
the independent truth. Random weights are scaled up from their init (matrices x5, norm scales
1 +- 0.3) so logits are O(1) and a swapped matrix, norm or head order cannot hide in 1e-4.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from archscale.arch import ArchSpec
from archscale.arch.export import spec_to_hf_config
from archscale.arch.hf_weights import WEIGHTS_FILE, hf_state_dict
from archscale.arch.model import Transformer
from archscale.cli.main import app
from archscale.sweeps import data as data_lib
from archscale.sweeps.recipe import Budget, Recipe
from archscale.sweeps.trained import load_trained
from archscale.sweeps.trainer import train

TOLERANCE = 1e-4
MHA = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=64, n_heads=4, n_kv_heads=4,
               head_dim=16, d_ff=128)
# GQA group 3, head_dim != d_model / n_heads, untied head, non-default RoPE base and eps.
GQA = ArchSpec(vocab_size=300, seq_len=40, n_layers=2, d_model=48, n_heads=6, n_kv_heads=2,
               head_dim=12, d_ff=80, tie_embeddings=False, rope_theta=50000.0, norm_eps=1e-6)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def random_model(spec: ArchSpec, seed: int) -> Transformer:
    """A model whose every weight is random: matrices at 5x init scale, norm scales 1 +- 0.3."""
    model = Transformer(spec, rngs=nnx.Rngs(seed), compute_dtype=jnp.float32)
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [1 + 0.3 * jax.random.normal(k, w.shape) if _is_norm(w, spec) else 5 * w
              for w, k in zip(leaves, keys, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


def _is_norm(w, spec: ArchSpec) -> bool:
    return w.shape in ((spec.d_model,), (spec.n_layers, spec.d_model))


def hf_model(torch, transformers, spec: ArchSpec, state: dict[str, np.ndarray]):
    """LlamaForCausalLM of the exported config with ``state`` loaded, fp32, eval mode."""
    config = transformers.LlamaConfig(**spec_to_hf_config(spec, dtype="float32"))
    model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(
        {name: torch.tensor(w) for name, w in state.items()}, strict=False)
    assert not unexpected, unexpected
    assert missing == (["lm_head.weight"] if spec.tie_embeddings else []), missing
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == spec.tie_embeddings
    return model


def hf_logits(torch, model, tokens_BxT: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens_BxT, np.int64))).logits.numpy()


@pytest.mark.parametrize("spec", [MHA, GQA], ids=["mha", "gqa"])
def test_random_weights_give_transformers_logits(spec, torch, transformers):
    ours = random_model(spec, seed=3)
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, (2, spec.seq_len))
    expected = hf_logits(torch, hf_model(torch, transformers, spec, hf_state_dict(ours)), tokens)
    got = np.asarray(ours(jnp.asarray(tokens, jnp.int32)))
    assert expected.std() > 0.5  # logits far from zero: the comparison can fail
    diff = np.abs(got - expected).max()
    print(f"{spec.n_heads}/{spec.n_kv_heads} heads: max |logit diff| = {diff:.2e}")
    assert diff < TOLERANCE


RECIPE = Recipe(lr=1e-2, batch_size=8, warmup=0.1, eval_interval=0.5, eval_tokens=1024)


def test_a_trained_run_exports_to_a_folder_transformers_loads(torch, transformers, tmp_path):
    """train -> checkpoint -> `arch export-hf --checkpoint` -> from_pretrained: our forward's
    logits, and the run's own validation loss recomputed by transformers."""
    spec = GQA.replace(vocab_size=256, seq_len=32)
    data = data_lib.load_data()
    steps = 24
    run = train(spec, Budget(tokens=steps * RECIPE.batch_size * spec.seq_len), RECIPE, data,
                checkpoint_dir=tmp_path / "run", progress=False)
    assert run.status == "complete" and run.steps == steps
    out = tmp_path / "hf"
    result = CliRunner().invoke(app, ["arch", "export-hf", "--checkpoint", str(tmp_path / "run"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"step {steps}" in result.output
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert (out / WEIGHTS_FILE).is_file()

    hf = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert next(hf.parameters()).dtype == torch.float32
    ours, step = load_trained(tmp_path / "run", compute_dtype=jnp.float32)
    assert step == steps
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, (2, spec.seq_len))
    diff = np.abs(np.asarray(ours(jnp.asarray(tokens, jnp.int32)))
                  - hf_logits(torch, hf, tokens)).max()
    print(f"trained checkpoint: max |logit diff| = {diff:.2e}")
    assert diff < TOLERANCE

    # The trainer's final validation loss, recomputed from the exported weights alone.
    windows = data_lib.validation_windows(data, spec.seq_len, RECIPE.eval_tokens)
    logits = torch.from_numpy(hf_logits(torch, hf, windows[:, :-1]))
    nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), torch.from_numpy(windows[:, 1:].astype(np.int64)), reduction="none")
    assert float(nll.mean(dim=1).mean()) == pytest.approx(run.val_loss, abs=TOLERANCE)


def test_export_hf_needs_a_shape_or_a_checkpoint(tmp_path):
    result = CliRunner().invoke(app, ["arch", "export-hf", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--checkpoint" in str(result.exception)
    result = CliRunner().invoke(app, ["arch", "export-hf", "--checkpoint", str(tmp_path),
                                      "--out", str(tmp_path / "hf")])
    assert "no checkpoint in" in str(result.exception)
